"""Replay engine: the teacher's real answers, read back from an agent's recorded traces.

Every GENERATION of the agent's traces that the trace converter can read (a single-turn chat
input, an output) is indexed under the prompt the converter builds from its input: the toolcall
prompt over the offered tools when the input offers tools, the structured prompt (agent
instruction + user text) when the answer has no tool call. The answer is kept as it was, valid or
not, so the teacher's recorded mistakes count against it: text content as-is, `tool_calls` as the
project's wrapper(s) under the tools' real names. When one prompt was recorded more than once, the
latest generation (by startTime) wins.

Latency is the recorded one (the observation's `latency`, else endTime - startTime); tokens come
from `usageDetails` or `usage`, 0 when the trace has none.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray_app.data.trace_splits import read_trace_jsonl
from ray_app.data.traces import (
    SkipGeneration,
    generation_answer,
    generation_messages_and_tools,
    generations_of,
    instruction_and_user_text,
    trace_belongs_to_agent,
)
from ray_app.engines.base import EngineKind, EngineRequest, Generation
from ray_app.prompts import (
    PromptFormatError,
    answer_text,
    structured_prompt_from_instruction,
    tool_signature,
    toolcall_prompt,
)

PROMPT_PREVIEW_CHARS = 120


class ReplayMissingError(LookupError):
    """A request's prompt was never recorded in the trace file."""


@dataclass(frozen=True)
class RecordedAnswer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    start_time: datetime | None
    model: str | None
    simulated: bool


def _parse_time(value: Any) -> datetime | None:
    """An ISO-8601 time; one without a zone is taken as UTC (so aware and naive times compare)."""
    try:
        moment = datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment


def _latency_s(generation: dict[str, Any]) -> float:
    if isinstance(generation.get("latency"), int | float):
        return float(generation["latency"])
    start, end = _parse_time(generation.get("startTime")), _parse_time(generation.get("endTime"))
    return (end - start).total_seconds() if start and end else 0.0


def _token_counts(generation: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens from `usageDetails` {input, output} or `usage` (either naming)."""
    for usage, keys in (
        (generation.get("usageDetails"), ("input", "output")),
        (generation.get("usage"), ("input", "output")),
        (generation.get("usage"), ("promptTokens", "completionTokens")),
    ):
        if isinstance(usage, dict) and any(isinstance(usage.get(key), int) for key in keys):
            prompt_key, completion_key = keys
            return int(usage.get(prompt_key) or 0), int(usage.get(completion_key) or 0)
    return 0, 0


def recorded_prompts(generation: dict[str, Any]) -> tuple[list[str], RecordedAnswer]:
    """The prompts the converter can build from one generation, and its answer; SkipGeneration if unreadable.

    Whatever the answer, the input alone decides the toolcall prompt; the structured prompt is
    added when the answer has no tool call, as the converter would make a structured row of it.
    """
    if generation.get("level") == "ERROR":
        raise SkipGeneration("generation failed (level ERROR)")
    messages, tools = generation_messages_and_tools(generation.get("input"))
    instruction, user_text = instruction_and_user_text(messages)
    content, calls = generation_answer(generation.get("output"))
    try:
        signatures = [tool_signature(tool) for tool in tools]
    except PromptFormatError:
        raise SkipGeneration("a tool is not an OpenAI function spec") from None
    prompts = [toolcall_prompt(signatures, user_text)] if signatures else []
    if not calls:
        prompts.append(structured_prompt_from_instruction(instruction, user_text))
    prompt_tokens, completion_tokens = _token_counts(generation)
    metadata = generation.get("metadata") if isinstance(generation.get("metadata"), dict) else {}
    answer = RecordedAnswer(
        text=answer_text(content, calls, [signature["name"] for signature in signatures]),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        latency_s=_latency_s(generation),
        start_time=_parse_time(generation.get("startTime")),
        model=generation.get("model"),
        simulated=bool(metadata.get("simulated")),
    )
    return prompts, answer


@dataclass
class Recordings:
    answers: dict[str, RecordedAnswer] = field(default_factory=dict)
    traces_matched: int = 0
    generations_seen: int = 0
    duplicate_recordings: int = 0  # recordings of an already-recorded prompt (only the latest is kept)
    skipped: Counter = field(default_factory=Counter)
    simulated: bool = False


def _is_later(new: RecordedAnswer, old: RecordedAnswer) -> bool:
    """Later startTime wins; a recording without a time never replaces one with a time; ties: file order."""
    if new.start_time is None or old.start_time is None:
        return old.start_time is None
    return new.start_time >= old.start_time


def index_recordings(traces: list[dict[str, Any]], agent_id: str) -> Recordings:
    """Every readable generation of the agent's traces, by prompt (the latest recording per prompt)."""
    recordings = Recordings()
    for trace in traces:
        if not trace_belongs_to_agent(trace, agent_id):
            continue
        recordings.traces_matched += 1
        metadata = trace.get("metadata") if isinstance(trace.get("metadata"), dict) else {}
        recordings.simulated |= bool(metadata.get("simulated"))
        for generation in generations_of(trace):
            recordings.generations_seen += 1
            try:
                prompts, answer = recorded_prompts(generation)
            except SkipGeneration as reason:
                recordings.skipped[str(reason)] += 1
                continue
            recordings.simulated |= answer.simulated
            for prompt in prompts:
                previous = recordings.answers.get(prompt)
                if previous is None or _is_later(answer, previous):
                    recordings.answers[prompt] = answer
                recordings.duplicate_recordings += previous is not None
    return recordings


class ReplayEngine:
    """Answers each prompt with the teacher's latest recorded answer in `trace_path` (agent `agent_id`)."""

    kind: EngineKind = "replay"

    def __init__(self, trace_path: Path, agent_id: str) -> None:
        self.trace_path, self.agent_id = Path(trace_path), agent_id
        self.recordings = index_recordings(read_trace_jsonl(self.trace_path), agent_id)

    def generate(self, requests: list[EngineRequest]) -> list[Generation]:
        missing = [request for request in requests if request.prompt not in self.recordings.answers]
        if missing:
            first = missing[0]
            raise ReplayMissingError(
                f"{self.trace_path}: {len(missing)} of {len(requests)} prompts have no recorded generation of "
                f"agent {self.agent_id!r}; first, row {first.index} ({first.track}): "
                f"{first.prompt[:PROMPT_PREVIEW_CHARS]!r}. Replay needs the trace export the split was built "
                "from (same agent id); otherwise evaluate the teacher with a hosted engine"
            )
        answers = [self.recordings.answers[request.prompt] for request in requests]
        return [
            Generation(answer.text, answer.prompt_tokens, answer.completion_tokens, answer.latency_s)
            for answer in answers
        ]

    def describe(self) -> dict[str, object]:
        models = {answer.model for answer in self.recordings.answers.values() if answer.model}
        return {
            "kind": self.kind,
            "trace_path": str(self.trace_path),
            "agent_id": self.agent_id,
            "recorded_prompts": len(self.recordings.answers),
            "traces_matched": self.recordings.traces_matched,
            "generations_seen": self.recordings.generations_seen,
            "duplicate_recordings": self.recordings.duplicate_recordings,
            "skipped": dict(sorted(self.recordings.skipped.items())),
            "models_seen": sorted(models),
            "simulated": self.recordings.simulated,
        }
