"""OTLP trace exports → traces shaped like Langfuse's `GET /api/public/traces/{id}`.

An OpenTelemetry exporter pointed at Langfuse posts OTLP/JSON `ExportTraceServiceRequest` bodies to
`/api/public/otel/v1/traces` (the JavaScript SDK's `@langfuse/otel`, and so `@mastra/langfuse`, send
JSON). A file of such bodies, one per line, is read here and grouped by trace id into the same shape
as an export pulled back from Langfuse, so one converter reads both. The mapping follows Langfuse's
OTLP ingestion for the fields the converters use:

- observation `type`: `langfuse.observation.type`, else `gen_ai.operation.name` (chat → GENERATION,
  invoke_agent → AGENT, execute_tool → TOOL, embeddings → EMBEDDING), else SPAN;
- `input` / `output`: `langfuse.observation.input/output`, else `gen_ai.input.messages/output.messages`,
  else `gen_ai.tool.call.arguments/result`, kept as the strings sent (readers decode JSON, as they
  must for Langfuse's API too);
- `model`: `gen_ai.request.model`, else `gen_ai.response.model`; `usageDetails` from
  `gen_ai.usage.input_tokens/output_tokens`;
- `level` ERROR when the span's status code is 2 (ERROR), its message as `statusMessage`;
- `metadata`: the `langfuse.observation.metadata.*` keys, and every other attribute under `attributes`;
- the trace's `name`, `input`, `output`, `metadata` and `tags` from its root span's `langfuse.trace.*`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ray_app.data.trace_splits import TraceFileError

OPERATION_TYPES = {
    "chat": "GENERATION", "text_completion": "GENERATION", "generate_content": "GENERATION",
    "embeddings": "EMBEDDING", "invoke_agent": "AGENT", "create_agent": "AGENT", "execute_tool": "TOOL",
}  # fmt: skip
INPUT_KEYS = ("langfuse.observation.input", "gen_ai.input.messages", "gen_ai.tool.call.arguments")
OUTPUT_KEYS = ("langfuse.observation.output", "gen_ai.output.messages", "gen_ai.tool.call.result")
OBSERVATION_METADATA = "langfuse.observation.metadata."
TRACE_METADATA = "langfuse.trace.metadata."
STATUS_ERROR = 2


def read_otlp_traces(path: Path) -> list[dict[str, Any]]:
    """The traces in a file of OTLP/JSON export bodies (one per line); a bad line raises `file:line: reason`."""
    bodies = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                body = json.loads(line)
            except json.JSONDecodeError as error:
                raise TraceFileError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
            bodies.append((f"{path}:{line_number}", body))
    return traces_from_otlp(bodies)


def traces_from_otlp(bodies: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
    """(where, body) pairs → traces in first-seen order, observations by start time."""
    traces: dict[str, dict[str, Any]] = {}
    for where, resource_attributes, span in _spans(bodies):
        attributes = _attributes(span.get("attributes"), where)
        observation = _observation(span, attributes, where)
        trace = traces.setdefault(
            observation["traceId"],
            {"id": observation["traceId"], "name": None, "timestamp": None, "input": None, "output": None,
             "metadata": {}, "tags": [], "observations": []},
        )  # fmt: skip
        trace["observations"].append(observation)
        if observation["parentObservationId"] is None:  # the root span carries the trace's own fields
            trace.update(_trace_fields(span, attributes, observation))
            trace["metadata"]["resourceAttributes"] = resource_attributes
    for trace in traces.values():
        trace["observations"].sort(key=lambda observation: (observation["startTime"], observation["id"]))
    return list(traces.values())


def _spans(bodies: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for where, body in bodies:
        if not isinstance(body, dict) or not isinstance(body.get("resourceSpans"), list):
            raise TraceFileError(f"{where}: not an OTLP export body (expected an object with a 'resourceSpans' list)")
        for resource_spans in body["resourceSpans"]:
            resource_attributes = _attributes((resource_spans.get("resource") or {}).get("attributes"), where)
            for scope_spans in resource_spans.get("scopeSpans") or []:
                for span in scope_spans.get("spans") or []:
                    for field in ("traceId", "spanId", "name"):
                        if not isinstance(span.get(field), str) or not span[field]:
                            raise TraceFileError(f"{where}: a span has no '{field}' string")
                    yield where, resource_attributes, span


def attribute_value(value: Any, where: str = "OTLP body") -> Any:
    """An OTLP/JSON `AnyValue` as a plain value (64-bit ints arrive as strings in OTLP/JSON)."""
    if not isinstance(value, dict):
        raise TraceFileError(f"{where}: an attribute value must be an object, got {value!r}")
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [attribute_value(item, where) for item in (value["arrayValue"] or {}).get("values") or []]
    if "kvlistValue" in value:
        return _attributes((value["kvlistValue"] or {}).get("values"), where)
    if "bytesValue" in value:
        return value["bytesValue"]  # base64 text, as OTLP/JSON writes bytes
    return None  # an empty AnyValue


def _attributes(items: Any, where: str) -> dict[str, Any]:
    if items is None:
        return {}
    if not isinstance(items, list) or not all(isinstance(item, dict) and "key" in item for item in items):
        raise TraceFileError(f"{where}: attributes must be a list of {{'key', 'value'}} objects")
    return {item["key"]: attribute_value(item.get("value"), where) for item in items}


def _iso_time(unix_nano: Any, where: str) -> str | None:
    if unix_nano in (None, "", 0, "0"):
        return None
    try:
        nanoseconds = int(unix_nano)
    except (TypeError, ValueError):
        raise TraceFileError(f"{where}: a span time must be unix nanoseconds, got {unix_nano!r}") from None
    moment = dt.datetime.fromtimestamp(nanoseconds / 1e9, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _observation_type(attributes: dict[str, Any]) -> str:
    explicit = attributes.get("langfuse.observation.type")
    if isinstance(explicit, str) and explicit:
        return explicit.upper()
    return OPERATION_TYPES.get(attributes.get("gen_ai.operation.name"), "SPAN")


def _first(attributes: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((attributes[key] for key in keys if attributes.get(key) not in (None, "")), None)


def _observation(span: dict[str, Any], attributes: dict[str, Any], where: str) -> dict[str, Any]:
    status = span.get("status") or {}
    usage = {
        name: attributes[key]
        for name, key in (("input", "gen_ai.usage.input_tokens"), ("output", "gen_ai.usage.output_tokens"))
        if isinstance(attributes.get(key), int)
    }
    metadata: dict[str, Any] = {
        key[len(OBSERVATION_METADATA) :]: value
        for key, value in attributes.items()
        if key.startswith(OBSERVATION_METADATA)
    }
    used = {*INPUT_KEYS, *OUTPUT_KEYS}
    metadata["attributes"] = {
        key: value
        for key, value in attributes.items()
        if key not in used and not key.startswith((OBSERVATION_METADATA, "langfuse.trace."))
    }
    return {
        "id": span["spanId"],
        "traceId": span["traceId"],
        "parentObservationId": span.get("parentSpanId") or None,
        "type": _observation_type(attributes),
        "name": span["name"],
        "startTime": _iso_time(span.get("startTimeUnixNano"), where),
        "endTime": _iso_time(span.get("endTimeUnixNano"), where),
        "input": _first(attributes, INPUT_KEYS),
        "output": _first(attributes, OUTPUT_KEYS),
        "model": _first(attributes, ("gen_ai.request.model", "gen_ai.response.model")),
        "usageDetails": usage,
        "level": "ERROR" if status.get("code") == STATUS_ERROR else "DEFAULT",
        "statusMessage": status.get("message") or None,
        "metadata": metadata,
    }


def _trace_fields(span: dict[str, Any], attributes: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    tags = attributes.get("langfuse.trace.tags") or []
    if isinstance(tags, str):  # some SDKs send the list as JSON text
        try:
            tags = json.loads(tags)
        except json.JSONDecodeError:
            tags = [tags]
    return {
        "name": attributes.get("langfuse.trace.name") or span["name"],
        "timestamp": root["startTime"],
        "input": attributes.get("langfuse.trace.input", root["input"]),
        "output": attributes.get("langfuse.trace.output", root["output"]),
        "metadata": {
            key[len(TRACE_METADATA) :]: value for key, value in attributes.items() if key.startswith(TRACE_METADATA)
        },
        "tags": tags,
    }
