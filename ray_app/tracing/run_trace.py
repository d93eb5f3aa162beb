"""`start_run_trace`: one eval/decide/train/pipeline run = one trace, on Langfuse or in a local file."""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from ray_app.paths import EVAL_ROOT
from ray_app.tracing.langfuse_backend import DEFAULT_BASE_URL, langfuse_client, start_langfuse_trace, trace_url
from ray_app.tracing.local_file import start_local_trace
from ray_app.tracing.redaction import safe_value

DEFAULT_LOCAL_DIR = EVAL_ROOT / "traces"
REQUIRE_LANGFUSE_ENV = "SLM_SWAP_REQUIRE_LANGFUSE"
LEVELS = ("DEBUG", "DEFAULT", "WARNING", "ERROR")
STATUSES = ("ok", "error")


class LangfuseRequiredError(RuntimeError):
    pass


_PARENT_RUN: ContextVar[RunTrace | None] = ContextVar("slm_swap_parent_run", default=None)


@contextmanager
def runs_nest_under(parent: RunTrace) -> Iterator[RunTrace]:
    """Inside this block every run started without an explicit parent is a child of `parent`
    (the pipeline's one trace holds each step's eval/train/decide run)."""
    token = _PARENT_RUN.set(parent)
    try:
        yield parent
    finally:
        _PARENT_RUN.reset(token)


def langfuse_required(require_langfuse: bool | None, environ: Mapping[str, str]) -> bool:
    if require_langfuse is not None:
        return require_langfuse
    return environ.get(REQUIRE_LANGFUSE_ENV, "").strip().lower() in ("1", "true", "yes")


def missing_langfuse_keys(environ: Mapping[str, str]) -> list[str]:
    return [name for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY") if not environ.get(name, "").strip()]


def safe_file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:200] or "run"


def default_run_id(kind: str, name: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    prefix = name if name.startswith(kind) else f"{kind}-{name}"  # "eval toolcall/slm" → eval-toolcall-slm-…
    return safe_file_name(f"{prefix}-{stamp}-{secrets.token_hex(3)}")


def _metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"trace metadata must be a dict, got {type(metadata).__name__}")
    return safe_value(metadata)


def _describe(error: BaseException) -> str:
    return safe_value(f"{type(error).__name__}: {error}")


@contextmanager
def _child_span(observation: Any, name: str, input: Any, metadata: Mapping[str, Any] | None) -> Iterator[Span]:
    child = observation.child(safe_value(str(name)), safe_value(input), _metadata(metadata))
    try:
        yield Span(child)
    except BaseException as error:
        child.end("error", _describe(error))
        raise
    child.end("ok", None)


def _event(
    observation: Any, name: str, input: Any, output: Any, metadata: Mapping[str, Any] | None, level: str
) -> None:
    if level not in LEVELS:
        raise ValueError(f"event level must be one of {', '.join(LEVELS)}, got {level!r}")
    observation.event(safe_value(str(name)), safe_value(input), safe_value(output), _metadata(metadata), level)


class _Parent:
    """What a run and a span share: child spans and events under `self._observation`."""

    _observation: Any

    def span(
        self, name: str, input: Any = None, metadata: Mapping[str, Any] | None = None
    ) -> AbstractContextManager[Span]:
        """`with run.span("generate", input=...) as span:`; an exception marks the span as an error."""
        return _child_span(self._observation, name, input, metadata)

    def event(
        self,
        name: str,
        input: Any = None,
        output: Any = None,
        metadata: Mapping[str, Any] | None = None,
        level: str = "DEFAULT",
    ) -> None:
        """A point-in-time observation, e.g. the fine-tune decision of one track."""
        _event(self._observation, name, input, output, metadata, level)


class Span(_Parent):
    """One step inside a run; nests (`span.span(...)`). Open it with `run.span(...)`."""

    def __init__(self, observation: Any) -> None:
        self._observation = observation

    def update(self, output: Any = None, metadata: Mapping[str, Any] | None = None) -> None:
        """Set the output (replaces) and add metadata keys (merges)."""
        self._observation.update(safe_value(output), _metadata(metadata))


class RunTrace(_Parent):
    """A run being traced. `backend` is "langfuse" or "local-file"; `location` a URL or a file path."""

    def __init__(
        self,
        *,
        name: str,
        kind: str,
        run_id: str,
        backend: str,
        trace_id: str,
        location: str,
        root: Any,
        langfuse: tuple[Any, str] | None = None,
        local_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.run_id = run_id
        self.backend = backend
        self.trace_id = trace_id
        self.location = location
        self.status: str | None = None  # "ok" or "error" once ended
        self._observation = root  # the run's root observation
        self._langfuse = langfuse  # (client, base URL) on the Langfuse backend
        self._local_dir = local_dir

    def __repr__(self) -> str:
        return f"RunTrace({self.kind} {self.name!r}, backend={self.backend}, location={self.location})"

    def end(self, output: Mapping[str, Any] | None = None, status: str = "ok", error: str | None = None) -> None:
        """Record the output and status, then flush; a second call does nothing."""
        if status not in STATUSES:
            raise ValueError(f"run status must be one of {', '.join(STATUSES)}, got {status!r}")
        if self.status is not None:
            return
        self.status = status
        self._observation.update(safe_value(output), {"status": status})
        self._observation.end(status, safe_value(error))
        if self._langfuse is not None:
            self._langfuse[0].flush()  # the process may exit right after the run

    def __enter__(self) -> RunTrace:
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc is not None:
            self.end(status="error", error=_describe(exc))
        else:
            self.end()
        return False  # re-raise


def start_run_trace(
    name: str,
    kind: str,
    input: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    parent: RunTrace | None = None,
    require_langfuse: bool | None = None,
    local_dir: Path | None = None,
    run_id: str | None = None,
) -> RunTrace:
    """Start a run's trace: on Langfuse when LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY are set,
    else in `<local_dir>/<run_id>.json` (one stderr line says so).

    `require_langfuse` (default: env SLM_SWAP_REQUIRE_LANGFUSE=1) makes missing keys an error.
    A `parent` run makes this run's root a child in the parent's trace, on the parent's backend.
    """
    environ = os.environ
    parent = parent if parent is not None else _PARENT_RUN.get()
    missing = missing_langfuse_keys(environ)
    if missing and langfuse_required(require_langfuse, environ):
        raise LangfuseRequiredError(
            f"Langfuse is required (require_langfuse=True or {REQUIRE_LANGFUSE_ENV}=1) but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set: set them (and LANGFUSE_BASE_URL or LANGFUSE_HOST), "
            f"or unset {REQUIRE_LANGFUSE_ENV} to write local trace files"
        )
    run_id = safe_file_name(run_id) if run_id else default_run_id(kind, name)
    name, input, metadata = safe_value(str(name)), safe_value(input), _metadata(metadata)
    use_langfuse = parent.backend == "langfuse" if parent is not None else not missing
    common = {"name": name, "kind": kind, "run_id": run_id}

    if use_langfuse:
        if parent is not None:
            client, base_url = parent._langfuse
        else:
            base_url = environ.get("LANGFUSE_BASE_URL") or environ.get("LANGFUSE_HOST") or DEFAULT_BASE_URL
            client = langfuse_client(environ["LANGFUSE_PUBLIC_KEY"], environ["LANGFUSE_SECRET_KEY"], base_url)
        root = start_langfuse_trace(
            client, **common, input=input, metadata=metadata, parent=parent._observation if parent else None
        )
        trace_id = root.span.trace_id
        location = trace_url(base_url, trace_id, root.span.id if parent else None)
        return RunTrace(
            **common, backend="langfuse", trace_id=trace_id, location=location, root=root, langfuse=(client, base_url)
        )

    local_dir = Path(local_dir or (parent._local_dir if parent else None) or DEFAULT_LOCAL_DIR)
    path = local_dir / f"{run_id}.json"
    trace_id = parent.trace_id if parent else uuid.uuid4().hex
    parent_ids = {"trace_id": parent.trace_id, "run_id": parent.run_id} if parent else None
    root = start_local_trace(path, trace_id=trace_id, **common, input=input, metadata=metadata, parent=parent_ids)
    if parent is not None:
        parent._observation.add_child_run({**common, "file": str(path)})
    else:
        print(
            f"tracing: Langfuse keys are not set ({', '.join(missing)}); the {kind} run's trace is in {path}",
            file=sys.stderr,
        )
    return RunTrace(
        **common, backend="local-file", trace_id=trace_id, location=str(path), root=root, local_dir=local_dir
    )
