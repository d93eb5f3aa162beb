"""Plan the simulated agent's traces, record them, write the JSONL (one trace per line) and a summary."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_app.atomic_files import atomic_write_json, atomic_write_text
from ray_app.data.rows import Row, read_split
from ray_app.dummy_agent.config import (
    MEMBERSHIP_FORMS,
    OTHER_AGENT_ID,
    RELEASE,
    STRUCTURED_MESSAGE_OUTPUT_RATE,
    STRUCTURED_WRAPPED_INPUT_RATE,
    TRACE_GAP_S,
    TRACE_VERSION,
    DummyAgentConfig,
)
from ray_app.dummy_agent.error_profile import assign_errors, pick_exact
from ray_app.dummy_agent.langfuse_shapes import IdSource, TraceRecorder, langfuse_trace
from ray_app.dummy_agent.synthetic_requests import ToolRequest, dotted_tool_requests, other_agent_requests
from ray_app.dummy_agent.turns import (
    CHITCHAT_ANSWERS,
    CHITCHAT_QUERIES,
    ChitchatTurn,
    StructuredTurn,
    ToolcallTurn,
    Turn,
    record_turn,
    turn_query,
)
from ray_app.prompts import parse_gold_tool_call, parse_toolcall_prompt

CHANNELS = ("web", "slack", "email")


@dataclass(frozen=True)
class TracePlan:
    agent_id: str
    turns: list[Turn]


@dataclass
class DummyAgentSummary:
    out_path: Path
    config_path: Path
    traces: int = 0
    traces_by_agent: Counter = field(default_factory=Counter)
    generations_by_kind: Counter = field(default_factory=Counter)
    injected_errors: Counter = field(default_factory=Counter)
    events: int = 0

    def describe(self) -> str:
        by_agent = ", ".join(f"{count} for {agent}" for agent, count in sorted(self.traces_by_agent.items()))
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.generations_by_kind.items()))
        errors = ", ".join(f"{count} {kind}" for kind, count in sorted(self.injected_errors.items())) or "none"
        return (
            f"Wrote {self.traces} simulated Langfuse traces ({by_agent}) to {self.out_path}. "
            f"Generations by kind: {kinds}; {self.events} EVENT observations. "
            f"Injected teacher errors: {errors}. Resolved config: {self.config_path}."
        )


def load_test_rows(dataset_root: Path) -> tuple[list[Row], list[Row]]:
    """The toolcall and structured test rows the simulated teacher answers."""
    paths = {track: Path(dataset_root) / track / "test.jsonl" for track in ("toolcall", "structured")}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: test split not found; build the splits with build_xlam_splits (ray_app/data/xlam.py) "
                "or pass --dataset-root"
            )
    return read_split(paths["toolcall"], "toolcall"), read_split(paths["structured"], "structured")


def xlam_toolcall_request(row: Row) -> ToolRequest:
    prompt, gold = parse_toolcall_prompt(row.prompt), parse_gold_tool_call(row.completion)
    return ToolRequest(prompt.signatures, prompt.query, gold.name, gold.arguments)


def plan_traces(
    config: DummyAgentConfig, rng: random.Random, toolcall_rows: list[Row], structured_rows: list[Row]
) -> list[TracePlan]:
    """Every test row as one teacher turn, grouped 1..max turns per trace, plus the extra traces, shuffled."""
    requests = [xlam_toolcall_request(row) for row in toolcall_rows]
    multi_tool = {index for index, request in enumerate(requests) if len(request.signatures) > 1}
    toolcall_errors = assign_errors(
        rng, len(requests), config.error_profile.toolcall, {"wrong_tool": multi_tool.__contains__}
    )
    structured_errors = assign_errors(rng, len(structured_rows), config.error_profile.structured)
    wrapped = pick_exact(rng, len(structured_rows), STRUCTURED_WRAPPED_INPUT_RATE)
    message_output = pick_exact(rng, len(structured_rows), STRUCTURED_MESSAGE_OUTPUT_RATE)

    turns: list[Turn] = [
        ToolcallTurn(request, "teacher_toolcall", error)
        for request, error in zip(requests, toolcall_errors, strict=True)
    ]
    turns += [
        StructuredTurn(row, error, index in wrapped, index in message_output)
        for index, (row, error) in enumerate(zip(structured_rows, structured_errors, strict=True))
    ]
    rng.shuffle(turns)
    groups: list[list[Turn]] = []
    while turns:
        size = rng.randint(1, config.max_turns_per_trace)
        groups.append(turns[:size])
        turns = turns[size:]
    for number, group in enumerate(rng.sample(groups, min(len(groups), config.prose_noise_generations))):
        chitchat = number % len(CHITCHAT_QUERIES)
        group.append(ChitchatTurn(CHITCHAT_QUERIES[chitchat], CHITCHAT_ANSWERS[chitchat]))

    plans = [TracePlan(config.agent_id, group) for group in groups]
    plans += [
        TracePlan(config.agent_id, [ToolcallTurn(request, "dotted_toolcall")])
        for request in dotted_tool_requests(rng, config.dotted_tool_traces)
    ]
    plans += [
        TracePlan(OTHER_AGENT_ID, [ToolcallTurn(request, "other_agent_toolcall")])
        for request in other_agent_requests(rng, config.other_agent_traces)
    ]
    rng.shuffle(plans)
    return plans


def membership(agent_id: str, form: str) -> tuple[str, list[str], dict[str, Any]]:
    """Trace name, extra tags and extra metadata that say "this trace belongs to agent_id" in `form`."""
    if form == "metadata.agentId":
        return "agent-run", [], {"agentId": agent_id}
    if form == "metadata.agent_id":
        return "agent-run", [], {"agent_id": agent_id}
    if form == "tag":
        return "agent-run", [f"agent:{agent_id}"], {}
    return agent_id, [], {}


def simulate_traces(config: DummyAgentConfig, toolcall_rows: list[Row], structured_rows: list[Row]) -> list[dict]:
    """All trace records, in time order; the same config and rows give the same records."""
    rng = random.Random(config.seed)
    ids = IdSource(config.seed)
    plans = plan_traces(config, rng, toolcall_rows, structured_rows)
    traces_seen: Counter = Counter()
    current_session: dict[str, str] = {}
    traces, clock_ms = [], 0
    for plan in plans:
        form = MEMBERSHIP_FORMS[traces_seen[plan.agent_id] % len(MEMBERSHIP_FORMS)]
        traces_seen[plan.agent_id] += 1
        user_prefix = "user" if plan.agent_id == config.agent_id else "ops"
        user_id = f"{user_prefix}-{rng.randint(1, 12):03d}"
        if user_id not in current_session or rng.random() < 0.5:
            current_session[user_id] = f"session-{ids.hex(12)}"

        recorder = TraceRecorder(ids, rng, clock_ms)
        requests = {"requests": [turn_query(turn) for turn in plan.turns]}
        root = recorder.open_span("agent.run", None, requests, {"turns": len(plan.turns)})
        if rng.random() < config.event_rate:
            recorder.event("guardrail.input_check", root, {"check": "pii", "passed": True}, {"simulated": True})
        answers = {"answers": [record_turn(recorder, root, turn) for turn in plan.turns]}
        recorder.close_span(root, answers)

        name, agent_tags, agent_metadata = membership(plan.agent_id, form)
        traces.append(
            langfuse_trace(
                recorder,
                name=name,
                user_id=user_id,
                session_id=current_session[user_id],
                tags=["simulated", f"channel:{rng.choice(CHANNELS)}", *agent_tags],
                metadata={"simulated": True, "generator": "ray_app.dummy_agent", "seed": config.seed, **agent_metadata},
                input=requests,
                output=answers,
                release=RELEASE,
                version=TRACE_VERSION,
            )
        )
        clock_ms = recorder.clock_ms + round(1000 * rng.expovariate(1 / TRACE_GAP_S))
    return traces


def traces_jsonl(traces: list[dict]) -> str:
    return "".join(json.dumps(trace, ensure_ascii=False) + "\n" for trace in traces)


def trace_agent_id(trace: dict) -> str | None:
    metadata = trace["metadata"]
    tagged = [tag.removeprefix("agent:") for tag in trace["tags"] if tag.startswith("agent:")]
    return metadata.get("agentId") or metadata.get("agent_id") or (tagged[0] if tagged else trace["name"])


def summarize(traces: list[dict], out_path: Path, config_path: Path) -> DummyAgentSummary:
    summary = DummyAgentSummary(out_path=out_path, config_path=config_path, traces=len(traces))
    for trace in traces:
        summary.traces_by_agent[trace_agent_id(trace)] += 1
        for observation in trace["observations"]:
            summary.events += observation["type"] == "EVENT"
            if observation["type"] == "GENERATION":
                summary.generations_by_kind[observation["metadata"]["kind"]] += 1
                if observation["metadata"]["injected_error"]:
                    summary.injected_errors[observation["metadata"]["injected_error"]] += 1
    return summary


def write_dummy_traces(config: DummyAgentConfig) -> DummyAgentSummary:
    """Simulate the agent on the test splits; write the traces JSONL and `<name>.config.json` beside it."""
    toolcall_rows, structured_rows = load_test_rows(config.dataset_root)
    traces = simulate_traces(config, toolcall_rows, structured_rows)
    out_path = atomic_write_text(config.out_json, traces_jsonl(traces))
    config_path = atomic_write_json(out_path.with_name(out_path.stem + ".config.json"), config.to_json())
    return summarize(traces, out_path, config_path)
