"""Where trajectory traces go: a local JSONL file, Langfuse (the real SDK), and the filter score.

- `LocalTrajectoryTraceFile(path).write(trajectories)`: appends one trace record per line
  (`trajectory_trace.trajectory_observations`), all lines of one call in a single `write` to a file
  opened for appending, so a reader or a second writer never sees half a group; readable by
  `read_trace_jsonl` and `slm-swap data trajectories --traces`.
- `LangfuseTrajectoryWriter(client).write(trajectories)`: replays the same record through the SDK: the
  AGENT as the root (in the trace whose id the record names, so file and Langfuse agree), GENERATION and
  TOOL observations as its children, the final-answer EVENT with `create_event` on it; trace name, tags
  and metadata via `propagate_attributes`. Langfuse timestamps are replay times; the recorded latencies
  are in each observation's metadata. Call `flush()` before the process exits.
- `trajectory_trace_writers(local_path)`: the file, plus Langfuse when LANGFUSE_* keys are set.
- `record_filter_score(client, trace_id, verdict)`: the filter verdict as a BOOLEAN score
  "codeact_filter" (comment: the reason code); its id is derived from the trace id, so scoring again
  replaces the score instead of adding one.
- `pull_trajectory_traces(client)`: trajectory traces pulled back from Langfuse.

Values of secret environment variables (API keys) are replaced by "[redacted]" before anything is
written; keys of tool arguments are left alone (they are training data, not credentials).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_app.codeact.records import Trajectory
from ray_app.codeact.trajectory_trace import OBSERVATION_METADATA_KEYS, is_trajectory_trace, trajectory_observations
from ray_app.tracing.redaction import REDACTED, secret_env_values

if TYPE_CHECKING:
    from ray_app.codeact.trajectory_filter import FilterVerdict

FILTER_SCORE_NAME = "codeact_filter"


def trace_record_line(trajectory: Trajectory) -> str:
    """One trajectory's trace record as one JSON line, secret environment values redacted."""
    try:
        line = json.dumps(trajectory_observations(trajectory), ensure_ascii=False, allow_nan=False)
    except ValueError as error:  # NaN or infinity somewhere in the record
        raise ValueError(f"trajectory {trajectory.trajectory_id}: not JSON-able ({error})") from None
    for secret in secret_env_values():
        line = line.replace(json.dumps(secret, ensure_ascii=False)[1:-1], REDACTED)
    return line + "\n"


class LocalTrajectoryTraceFile:
    """A JSONL file of trajectory traces, appended to (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, trajectories: Iterable[Trajectory]) -> list[str]:
        """Append the trajectories' traces in one write; return their trace ids."""
        trajectories = list(trajectories)
        payload = "".join(trace_record_line(trajectory) for trajectory in trajectories).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(handle).st_size
            written = os.write(handle, payload)
            if written != len(payload):  # disk full: cut the partial lines off again
                os.ftruncate(handle, start)
                raise OSError(f"{self.path}: only {written} of {len(payload)} bytes written; nothing appended")
            os.fsync(handle)
        finally:
            os.close(handle)
        return [json.loads(line)["id"] for line in payload.decode("utf-8").splitlines()]


class LangfuseTrajectoryWriter:
    """Trajectory traces sent through the langfuse SDK client (see the module docstring)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def write(self, trajectories: Iterable[Trajectory]) -> list[str]:
        return [self._send(json.loads(trace_record_line(trajectory))) for trajectory in trajectories]

    def flush(self) -> None:
        self.client.flush()

    def _send(self, record: dict[str, Any]) -> str:
        from langfuse import propagate_attributes

        agent, *children = record["observations"]
        trace_attributes = {"trace_name": record["name"], "tags": record["tags"], "metadata": record["metadata"]}
        with propagate_attributes(**trace_attributes):
            root = self.client.start_observation(
                trace_context={"trace_id": record["id"]},
                name=agent["name"],
                as_type="agent",
                input=agent["input"],
                metadata=agent["metadata"],
            )
            for child in children:
                common = {"name": child["name"], "input": child["input"], "output": child["output"]}
                common |= {"metadata": child["metadata"], "level": child["level"]}
                if child["type"] == "EVENT":
                    root.create_event(**common)
                    continue
                extra = {"status_message": child["statusMessage"]}
                if child["type"] == "GENERATION":
                    extra = {"model": child["model"], "usage_details": child["usageDetails"]}
                root.start_observation(as_type=child["type"].lower(), **common, **extra).end()
            root.update(output=agent["output"])
            root.end()
        return record["id"]


def langfuse_writer_from_env() -> LangfuseTrajectoryWriter | None:
    """A Langfuse writer when LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY are set, else None."""
    from ray_app.tracing.langfuse_backend import DEFAULT_BASE_URL, langfuse_client

    public_key, secret_key = os.environ.get("LANGFUSE_PUBLIC_KEY"), os.environ.get("LANGFUSE_SECRET_KEY")
    if not (public_key and secret_key):
        return None
    base_url = os.environ.get("LANGFUSE_BASE_URL") or os.environ.get("LANGFUSE_HOST") or DEFAULT_BASE_URL
    return LangfuseTrajectoryWriter(langfuse_client(public_key, secret_key, base_url))


def trajectory_trace_writers(local_path: str | Path) -> list[LocalTrajectoryTraceFile | LangfuseTrajectoryWriter]:
    """The local file always (resume and offline builds read it), Langfuse too when its keys are set."""
    langfuse = langfuse_writer_from_env()
    return [LocalTrajectoryTraceFile(local_path), *([langfuse] if langfuse else [])]


def filter_score_id(trace_id: str) -> str:
    return hashlib.sha256(f"{trace_id}/{FILTER_SCORE_NAME}".encode()).hexdigest()[:32]


def record_filter_score(client: Any, trace_id: str, verdict: FilterVerdict) -> None:
    """The verdict as a BOOLEAN score on the trace (1 accepted, 0 rejected); the comment is the reason code."""
    client.create_score(
        trace_id=trace_id,
        score_id=filter_score_id(trace_id),
        name=FILTER_SCORE_NAME,
        value=1.0 if verdict.accepted else 0.0,
        data_type="BOOLEAN",
        comment=verdict.reason,
        metadata={"reason": verdict.reason, "detail": verdict.detail, "recovered": verdict.recovered},
    )


def pull_trajectory_traces(
    client: Any,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    on_page: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Trajectory traces in the window, regrouped from `GET /api/public/v2/observations` pages.

    Unlike `data.langfuse_pull.pull_observations`, every metadata key this project writes is asked for
    untruncated (tool calls and thoughts are longer than the API's 200-character cut).
    """
    from ray_app.data.langfuse_pull import OBSERVATION_FIELDS, PAGE_SIZE, traces_from_observations

    observations: list[dict[str, Any]] = []
    cursor, page = None, 0
    while True:
        response = client.api.observations.get_many(
            fields=OBSERVATION_FIELDS,
            expand_metadata=",".join(OBSERVATION_METADATA_KEYS),
            limit=PAGE_SIZE,
            cursor=cursor,
            from_start_time=since,
            to_start_time=until,
        )
        page += 1
        observations.extend(o if isinstance(o, dict) else o.dict(by_alias=True) for o in response.data)
        if on_page:
            on_page(page, len(observations))
        cursor = response.meta.cursor if response.meta else None
        if not cursor or not response.data:
            break
    return [trace for trace in traces_from_observations(observations) if is_trajectory_trace(trace)]
