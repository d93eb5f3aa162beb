"""The Langfuse backend: one run = one trace (a root span), steps = child spans, decisions = EVENTs.

Uses the langfuse 5 SDK, imported only here and only when keys are set (it starts OpenTelemetry
machinery on import). The SDK sends OTLP spans to `<base_url>/api/public/otel/v1/traces`.

- Trace name, tags (the run's kind) and trace metadata (kind, run_id) are set with the SDK's
  `propagate_attributes` around every observation this module creates; the trace's input and
  output are the root span's.
- Each client gets its own OpenTelemetry TracerProvider, so importing this never replaces a
  global provider that Ray or another library set.
- The SDK keeps one client state per public key: if another part of the process first created a
  read-only client (`tracing_enabled=False`, as `ray_app.data.langfuse_pull` does) with the same key,
  every later client would silently drop its spans; that state is replaced here.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

DEFAULT_BASE_URL = "https://cloud.langfuse.com"  # the SDK's own default
_CLIENTS: dict[tuple[str, str, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def langfuse_client(public_key: str, secret_key: str, base_url: str) -> Any:
    """One tracing client per (keys, URL) for the whole process."""
    cache_key = (public_key, secret_key, base_url)
    with _CLIENTS_LOCK:
        if cache_key not in _CLIENTS:
            from langfuse import Langfuse
            from opentelemetry.sdk.trace import TracerProvider

            _forget_read_only_client_state(public_key)
            # shutdown_on_exit=False: the SDK's own exit hook flushes this provider.
            provider = TracerProvider(shutdown_on_exit=False)
            _CLIENTS[cache_key] = Langfuse(
                public_key=public_key, secret_key=secret_key, base_url=base_url, tracer_provider=provider
            )
        return _CLIENTS[cache_key]


def _forget_read_only_client_state(public_key: str) -> None:
    # Private SDK state (langfuse 5.0): the per-public-key singleton registry.
    from langfuse._client.resource_manager import LangfuseResourceManager

    with LangfuseResourceManager._lock:
        existing = LangfuseResourceManager._instances.get(public_key)
        if existing is not None and not existing.tracing_enabled:
            del LangfuseResourceManager._instances[public_key]


def close_langfuse_clients() -> None:
    """Flush and stop every client this module made, and forget them (tests; long-lived processes)."""
    from langfuse._client.resource_manager import LangfuseResourceManager

    with _CLIENTS_LOCK:
        clients = list(_CLIENTS.items())
        _CLIENTS.clear()
    for (public_key, _, _), client in clients:
        resources = client._resources
        client.shutdown()
        if resources is not None and resources.tracer_provider is not None:
            resources.tracer_provider.shutdown()
        with LangfuseResourceManager._lock:
            if LangfuseResourceManager._instances.get(public_key) is resources:
                del LangfuseResourceManager._instances[public_key]


def _propagating(trace_attributes: dict[str, Any]):
    if not trace_attributes:
        return nullcontext()
    from langfuse import propagate_attributes

    return propagate_attributes(**trace_attributes)


@dataclass
class LangfuseObservation:
    """A Langfuse span (the run's root or a step) plus the trace attributes its children carry."""

    span: Any
    trace_attributes: dict[str, Any]

    def child(self, name: str, input: Any, metadata: dict[str, Any]) -> LangfuseObservation:
        with _propagating(self.trace_attributes):
            span = self.span.start_observation(name=name, as_type="span", input=input, metadata=metadata)
        return LangfuseObservation(span, self.trace_attributes)

    def update(self, output: Any, metadata: dict[str, Any]) -> None:
        self.span.update(output=output, metadata=metadata)

    def event(self, name: str, input: Any, output: Any, metadata: dict[str, Any], level: str) -> None:
        # span.create_event parents the event on this span; span.start_observation(as_type="event")
        # in langfuse 5.0 does not (it would float to the top of the trace).
        with _propagating(self.trace_attributes):
            self.span.create_event(name=name, input=input, output=output, metadata=metadata, level=level)

    def end(self, status: str, error: str | None) -> None:
        if status == "error":
            self.span.update(level="ERROR", status_message=error)
        self.span.end()


def start_langfuse_trace(
    client: Any,
    *,
    name: str,
    kind: str,
    run_id: str,
    input: Any,
    metadata: dict[str, Any],
    parent: LangfuseObservation | None,
) -> LangfuseObservation:
    """The run's root span: a new trace, or a child of the parent run's root span (same trace)."""
    if parent is not None:
        return parent.child(name, input, {**metadata, "kind": kind, "run_id": run_id})
    trace_attributes = {"trace_name": name, "tags": [kind], "metadata": {"kind": kind, "run_id": run_id}}
    with _propagating(trace_attributes):
        span = client.start_observation(name=name, as_type="span", input=input, metadata=metadata)
    return LangfuseObservation(span, trace_attributes)


def trace_url(base_url: str, trace_id: str, observation_id: str | None = None) -> str:
    # /trace/<id> redirects to the project's trace page; get_trace_url would cost an API call per run.
    url = f"{base_url.rstrip('/')}/trace/{trace_id}"
    return f"{url}?observation={observation_id}" if observation_id else url
