"""Defaults of the dummy agent simulation in one place: error rates, timing, sizes, names."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from ray_app.paths import DATASET_ROOT, PROJECT_ROOT

# Share of the teacher's answers that get each injected error, per track (see error_profile.py).
TOOLCALL_ERROR_RATES = {"wrong_argument_value": 0.04, "wrong_tool": 0.02, "two_tool_calls": 0.02}
STRUCTURED_ERROR_RATES = {"wrong_value": 0.04, "prose_around_json": 0.03, "markdown_fence": 0.02}

# Shares of structured generations recorded in the second shape the OpenAI integration produces.
STRUCTURED_WRAPPED_INPUT_RATE = 0.3  # input `{"messages": [...]}` instead of the bare message list
STRUCTURED_MESSAGE_OUTPUT_RATE = 0.25  # output `{"role": "assistant", "content": ...}` instead of a string

# Hosted-LLM latency is lognormal: median 0.9 s, 95th percentile 2.5 s (z(0.95) = 1.645).
LLM_LATENCY_MEDIAN_S = 0.9
LLM_LATENCY_P95_S = 2.5
LLM_LATENCY_SIGMA = math.log(LLM_LATENCY_P95_S / LLM_LATENCY_MEDIAN_S) / 1.645
TOOL_LATENCY_MEDIAN_S = 0.12
TOOL_LATENCY_SIGMA = 0.5
STEP_GAP_MS = (3, 40)  # agent overhead between two observations, milliseconds
TRACE_GAP_S = 75.0  # mean seconds between the starts of two traces (exponential)
CHARS_PER_TOKEN = 4

BASE_TIME = datetime(2026, 11, 1, 9, 0, 0, tzinfo=UTC)
TEACHER_MODEL = "gpt-4o-mini (simulated)"
TEACHER_MODEL_PARAMETERS = {"temperature": 0, "seed": 42}
RELEASE = "dummy-agent-2026.11.0"
TRACE_VERSION = "1"
OTHER_AGENT_ID = "other-agent"

AGENT_SYSTEM_PROMPT = (
    "You are Dummy Agent, an assistant that answers each user request by calling exactly one of the "
    "provided tools with correct arguments. Do not guess values the user did not give."
)

# How a trace says which agent it belongs to; the converter accepts any of them.
MembershipForm = Literal["metadata.agentId", "metadata.agent_id", "tag", "name"]
MEMBERSHIP_FORMS: tuple[MembershipForm, ...] = ("metadata.agentId", "metadata.agent_id", "tag", "name")


@dataclass(frozen=True)
class ErrorProfile:
    """Injected-error rate per kind and track; each kind hits round(rate × rows) rows (≥ 1 if rate > 0)."""

    toolcall: dict[str, float] = field(default_factory=lambda: dict(TOOLCALL_ERROR_RATES))
    structured: dict[str, float] = field(default_factory=lambda: dict(STRUCTURED_ERROR_RATES))

    def with_overrides(self, text: str) -> ErrorProfile:
        """`"wrong_tool=0.1,markdown_fence=0"` → a profile with those rates replaced."""
        toolcall, structured = dict(self.toolcall), dict(self.structured)
        for item in filter(None, (part.strip() for part in text.split(","))):
            kind, separator, value = item.partition("=")
            kind = kind.strip()
            target = toolcall if kind in toolcall else structured if kind in structured else None
            if not separator or target is None:
                known = ", ".join([*toolcall, *structured])
                raise ValueError(f"--error-profile item {item!r}: expected KIND=RATE with KIND one of {known}")
            try:
                rate = float(value)
            except ValueError:
                raise ValueError(f"--error-profile item {item!r}: rate {value!r} is not a number") from None
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"--error-profile item {item!r}: rate must be between 0 and 1")
            target[kind] = rate
        for name, rates in (("toolcall", toolcall), ("structured", structured)):
            if sum(rates.values()) > 1.0:
                raise ValueError(f"--error-profile: {name} error rates add up to more than 1: {rates}")
        return ErrorProfile(toolcall=toolcall, structured=structured)


@dataclass(frozen=True)
class DummyAgentConfig:
    """Resolved settings of one simulation run (written beside the traces as JSON)."""

    out_json: Path = PROJECT_ROOT / "storage" / "dummy_langfuse_traces.jsonl"
    agent_id: str = "dummy-agent"
    seed: int = 42
    dataset_root: Path = DATASET_ROOT
    error_profile: ErrorProfile = field(default_factory=ErrorProfile)
    dotted_tool_traces: int = 4  # extra traces whose tools have dotted names (crm.lookup_customer)
    other_agent_traces: int = 3  # traces of OTHER_AGENT_ID that the converter must filter out
    prose_noise_generations: int = 3  # single-turn generations whose answer is prose, not JSON
    event_rate: float = 0.3  # share of traces with a guardrail EVENT observation
    max_turns_per_trace: int = 3

    def to_json(self) -> dict[str, object]:
        resolved = {item.name: getattr(self, item.name) for item in fields(self)}
        resolved["out_json"], resolved["dataset_root"] = str(self.out_json), str(self.dataset_root)
        resolved["error_profile"] = {
            "toolcall": self.error_profile.toolcall,
            "structured": self.error_profile.structured,
        }
        return resolved
