"""Langfuse trace and observation records (the `GET /api/public/traces/{id}` shape), seeded ids and time.

Nothing here reads the wall clock or uuid4: ids come from a seeded RNG and times from a
millisecond counter that starts at BASE_TIME, so the same seed gives the same bytes.
"""

from __future__ import annotations

import math
import random
import string
from datetime import timedelta
from typing import Any

from ray_app.dummy_agent.config import (
    BASE_TIME,
    CHARS_PER_TOKEN,
    LLM_LATENCY_MEDIAN_S,
    LLM_LATENCY_SIGMA,
    STEP_GAP_MS,
    TOOL_LATENCY_MEDIAN_S,
    TOOL_LATENCY_SIGMA,
)
from ray_app.json_text import compact_json

ALPHANUMERIC = string.ascii_letters + string.digits


def iso_time(offset_ms: int) -> str:
    """ISO-8601 UTC with milliseconds and `Z`, `offset_ms` after BASE_TIME."""
    moment = BASE_TIME + timedelta(milliseconds=offset_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def estimated_tokens(value: Any) -> int:
    """About one token per CHARS_PER_TOKEN characters of the text (or compact JSON) sent or received."""
    text = value if isinstance(value, str) else compact_json(value)
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


class IdSource:
    """Langfuse-style ids (32-hex trace, 16-hex observation, `call_…` tool call) from a seeded RNG."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"dummy-agent/ids/{seed}")

    def hex(self, digits: int) -> str:
        return f"{self._rng.getrandbits(4 * digits):0{digits}x}"

    def tool_call(self) -> str:
        return "call_" + "".join(self._rng.choice(ALPHANUMERIC) for _ in range(24))


class TraceRecorder:
    """Collects one trace's observations in time order; `clock_ms` is shared across traces."""

    def __init__(self, ids: IdSource, rng: random.Random, start_ms: int) -> None:
        self.ids, self.rng = ids, rng
        self.trace_id = ids.hex(32)
        self.start_ms = self.clock_ms = start_ms
        self.observations: list[dict[str, Any]] = []
        self._span_start_ms: dict[str, int] = {}

    def _gap(self) -> None:
        self.clock_ms += self.rng.randint(*STEP_GAP_MS)

    def _record(self, kind: str, name: str, parent: dict[str, Any] | None, **fields: Any) -> dict[str, Any]:
        observation = {
            "id": self.ids.hex(16),
            "traceId": self.trace_id,
            "type": kind,
            "name": name,
            "startTime": iso_time(self.clock_ms),
            "endTime": None,
            "completionStartTime": None,
            "parentObservationId": parent["id"] if parent else None,
            "model": None,
            "modelParameters": None,
            "input": None,
            "output": None,
            "usage": None,
            "usageDetails": None,
            "metadata": {},
            "level": "DEFAULT",
            "statusMessage": None,
            "latency": None,
        }
        observation.update(fields)
        self.observations.append(observation)
        return observation

    def _finish(self, observation: dict[str, Any], start_ms: int, end_ms: int) -> None:
        observation["endTime"] = iso_time(end_ms)
        observation["latency"] = (end_ms - start_ms) / 1000

    def open_span(self, name: str, parent: dict[str, Any] | None, input: Any, metadata: dict[str, Any]) -> dict:
        if parent is not None:  # the root span starts with the trace
            self._gap()
        span = self._record("SPAN", name, parent, input=input, metadata=metadata)
        self._span_start_ms[span["id"]] = self.clock_ms
        return span

    def close_span(self, span: dict[str, Any], output: Any) -> None:
        self._gap()
        span["output"] = output
        self._finish(span, self._span_start_ms.pop(span["id"]), self.clock_ms)

    def tool_span(self, name: str, parent: dict[str, Any], input: Any, output: Any, metadata: dict[str, Any]) -> dict:
        span = self.open_span(name, parent, input, metadata)
        self.clock_ms += round(1000 * self.rng.lognormvariate(math.log(TOOL_LATENCY_MEDIAN_S), TOOL_LATENCY_SIGMA))
        self.close_span(span, output)
        return span

    def generation(
        self,
        name: str,
        parent: dict[str, Any],
        *,
        model: str,
        model_parameters: dict[str, Any],
        input: Any,
        output: Any,
        metadata: dict[str, Any],
    ) -> dict[str, Any]:
        """A hosted-LLM call: lognormal latency, first token part-way through, usage from text length."""
        self._gap()
        start_ms = self.clock_ms
        latency_ms = max(120, round(1000 * self.rng.lognormvariate(math.log(LLM_LATENCY_MEDIAN_S), LLM_LATENCY_SIGMA)))
        first_token_ms = start_ms + round(latency_ms * self.rng.uniform(0.35, 0.8))
        input_tokens = estimated_tokens(input)
        answer = (output.get("tool_calls") or output.get("content")) if isinstance(output, dict) else output
        output_tokens = estimated_tokens(answer or "")
        total = input_tokens + output_tokens
        generation = self._record(
            "GENERATION",
            name,
            parent,
            completionStartTime=iso_time(first_token_ms),
            model=model,
            modelParameters=dict(model_parameters),
            input=input,
            output=output,
            usage={"input": input_tokens, "output": output_tokens, "total": total, "unit": "TOKENS"},
            usageDetails={"input": input_tokens, "output": output_tokens, "total": total},
            metadata=metadata,
        )
        self.clock_ms = start_ms + latency_ms
        self._finish(generation, start_ms, self.clock_ms)
        return generation

    def event(self, name: str, parent: dict[str, Any], input: Any, metadata: dict[str, Any]) -> dict[str, Any]:
        self._gap()
        event = self._record("EVENT", name, parent, input=input, metadata=metadata)
        self._finish(event, self.clock_ms, self.clock_ms)
        return event


def langfuse_trace(
    recorder: TraceRecorder,
    *,
    name: str,
    user_id: str,
    session_id: str,
    tags: list[str],
    metadata: dict[str, Any],
    input: Any,
    output: Any,
    release: str,
    version: str,
) -> dict[str, Any]:
    """The trace record with its observations, as `GET /api/public/traces/{id}` returns it."""
    return {
        "id": recorder.trace_id,
        "timestamp": iso_time(recorder.start_ms),
        "name": name,
        "userId": user_id,
        "sessionId": session_id,
        "tags": tags,
        "metadata": metadata,
        "input": input,
        "output": output,
        "release": release,
        "version": version,
        "observations": recorder.observations,
    }
