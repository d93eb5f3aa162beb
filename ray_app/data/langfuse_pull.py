"""Pull an agent's observations from Langfuse with the SDK and regroup them into traces.

langfuse 5 has no trace list or trace get in its SDK; `api.observations.get_many` pages
`GET /api/public/v2/observations` with a cursor. Observations are regrouped by trace id into the
same shape as a `--trace-json` export (`{"id", "name", "tags", "metadata", "observations"}`), so one
converter serves both sources. Trace metadata is not part of that API: the agent id is looked for in
the observations' own metadata (where `propagate_attributes` puts it), the trace tags and trace name.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import Any

OBSERVATION_FIELDS = "core,basic,io,metadata,model,usage,metrics,trace_context,time"
PAGE_SIZE = 500


class LangfuseSettingsError(RuntimeError):
    pass


def langfuse_client_from_env():
    """A Langfuse client for reading (keys and URL from LANGFUSE_* variables; no tracing)."""
    public_key = os.environ.get("LANGFUSE_PUBLIC_KEY")
    secret_key = os.environ.get("LANGFUSE_SECRET_KEY")
    base_url = os.environ.get("LANGFUSE_BASE_URL") or os.environ.get("LANGFUSE_HOST")
    missing = [
        name for name, value in (("LANGFUSE_PUBLIC_KEY", public_key), ("LANGFUSE_SECRET_KEY", secret_key)) if not value
    ]
    if missing:
        raise LangfuseSettingsError(
            f"set {' and '.join(missing)} (and LANGFUSE_BASE_URL or LANGFUSE_HOST) to pull traces from Langfuse, "
            "or pass --trace-json FILE with an export"
        )
    from langfuse import Langfuse  # imported here: the SDK starts OpenTelemetry machinery on import

    return Langfuse(public_key=public_key, secret_key=secret_key, base_url=base_url, tracing_enabled=False)


def _observation_dict(observation: Any) -> dict[str, Any]:
    if isinstance(observation, dict):
        return observation
    return observation.dict(by_alias=True, exclude_none=False)


def pull_observations(
    client: Any,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    on_page: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Every observation in the window, following the cursor until the last page."""
    observations: list[dict[str, Any]] = []
    cursor = None
    page = 0
    while True:
        response = client.api.observations.get_many(
            fields=OBSERVATION_FIELDS,
            expand_metadata="agentId,agent_id",
            limit=PAGE_SIZE,
            cursor=cursor,
            from_start_time=since,
            to_start_time=until,
        )
        page += 1
        observations.extend(_observation_dict(observation) for observation in response.data)
        if on_page:
            on_page(page, len(observations))
        cursor = response.meta.cursor if response.meta else None
        if not cursor or not response.data:
            return observations


def traces_from_observations(observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group observations by trace id into export-shaped traces."""
    traces: dict[str, dict[str, Any]] = {}
    for observation in observations:
        trace_id = observation.get("traceId") or "(no trace id)"
        trace = traces.setdefault(
            trace_id, {"id": trace_id, "name": None, "tags": [], "metadata": {}, "timestamp": None, "observations": []}
        )
        trace["observations"].append(observation)
        trace["name"] = trace["name"] or observation.get("traceName")
        for tag in observation.get("tags") or []:
            if tag not in trace["tags"]:
                trace["tags"].append(tag)
        metadata = observation.get("metadata") if isinstance(observation.get("metadata"), dict) else {}
        for key in ("agentId", "agent_id"):
            if key in metadata and key not in trace["metadata"]:
                trace["metadata"][key] = metadata[key]
        start = str(observation.get("startTime") or "")
        if start and (trace["timestamp"] is None or start < trace["timestamp"]):
            trace["timestamp"] = start
    return list(traces.values())
