"""The dummy agent's simulated Langfuse traces: determinism, coverage of the test splits, error profile, shape."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from ray_app.data.rows import read_split
from ray_app.data.xlam import build_xlam_splits
from ray_app.dummy_agent import DummyAgentConfig, ErrorProfile, simulate_traces, write_dummy_traces
from ray_app.dummy_agent.config import LLM_LATENCY_MEDIAN_S, STRUCTURED_ERROR_RATES, TOOLCALL_ERROR_RATES
from ray_app.dummy_agent.error_profile import error_count
from ray_app.json_text import canonical_json
from ray_app.paths import PROJECT_ROOT
from ray_app.prompts import (
    chat_messages,
    format_tool_call,
    openai_safe_tool_names,
    parse_gold_tool_call,
    parse_toolcall_prompt,
    tool_signature,
    toolcall_prompt,
)

AGENT = "dummy-agent"
TRACE_FIELDS = [
    "id", "timestamp", "name", "userId", "sessionId", "tags", "metadata",
    "input", "output", "release", "version", "observations",
]  # fmt: skip
OBSERVATION_FIELDS = [
    "id", "traceId", "type", "name", "startTime", "endTime", "completionStartTime", "parentObservationId",
    "model", "modelParameters", "input", "output", "usage", "usageDetails", "metadata", "level",
    "statusMessage", "latency",
]  # fmt: skip


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("splits")
    build_xlam_splits(root)
    return root


@pytest.fixture(scope="module")
def test_rows(dataset_root):
    return {track: read_split(dataset_root / track / "test.jsonl", track) for track in ("toolcall", "structured")}


@pytest.fixture(scope="module")
def traces(dataset_root, test_rows) -> list[dict]:
    config = DummyAgentConfig(dataset_root=dataset_root)
    return simulate_traces(config, test_rows["toolcall"], test_rows["structured"])


def belongs_to(trace: dict, agent_id: str) -> bool:
    """The converter's membership rule."""
    metadata = trace["metadata"]
    return (
        agent_id in (metadata.get("agentId"), metadata.get("agent_id"))
        or f"agent:{agent_id}" in trace["tags"]
        or trace["name"] == agent_id
    )


def generations(traces: list[dict], kind: str) -> list[dict]:
    return [
        observation
        for trace in traces
        if belongs_to(trace, AGENT)
        for observation in trace["observations"]
        if observation["type"] == "GENERATION" and observation["metadata"]["kind"] == kind
    ]


def structured_messages(generation: dict) -> list[dict]:
    return generation["input"] if isinstance(generation["input"], list) else generation["input"]["messages"]


def answer_text(generation: dict) -> str:
    output = generation["output"]
    return output if isinstance(output, str) else output["content"]


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_same_seed_gives_same_bytes_and_another_seed_differs(dataset_root, tmp_path):
    outputs = []
    for name, seed in (("first", 42), ("second", 42), ("other_seed", 7)):
        config = DummyAgentConfig(out_json=tmp_path / f"{name}.jsonl", seed=seed, dataset_root=dataset_root)
        write_dummy_traces(config)
        outputs.append((tmp_path / f"{name}.jsonl").read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]
    assert len(outputs[0].decode().splitlines()) >= 36  # several dozen traces, one per line


def test_every_toolcall_test_prompt_is_one_teacher_generation(traces, test_rows):
    rebuilt = []
    for generation in generations(traces, "teacher_toolcall"):
        system, user = generation["input"]["messages"]
        assert system["role"] == "system" and user["role"] == "user"
        signatures = [tool_signature(tool) for tool in generation["input"]["tools"]]
        rebuilt.append(toolcall_prompt(signatures, user["content"]))
    assert Counter(rebuilt) == Counter(row.prompt for row in test_rows["toolcall"])
    assert max(Counter(rebuilt).values()) == 1


def test_every_structured_test_prompt_is_one_teacher_generation(traces, test_rows):
    teacher = generations(traces, "teacher_structured")
    prompts = [structured_messages(generation)[1]["content"] for generation in teacher]
    assert Counter(prompts) == Counter(row.prompt for row in test_rows["structured"])
    assert max(Counter(prompts).values()) == 1
    for generation in teacher:
        assert structured_messages(generation) == chat_messages(structured_messages(generation)[1]["content"])
    # Both recorded shapes of input and output occur.
    assert {type(generation["input"]).__name__ for generation in teacher} == {"list", "dict"}
    assert {type(generation["output"]).__name__ for generation in teacher} == {"str", "dict"}


def test_toolcall_error_rates_and_gold_answers(traces, test_rows):
    gold_by_query = {parse_toolcall_prompt(row.prompt).query: row.completion for row in test_rows["toolcall"]}
    teacher = generations(traces, "teacher_toolcall")
    errors = Counter(generation["metadata"]["injected_error"] for generation in teacher)
    for kind, rate in TOOLCALL_ERROR_RATES.items():
        assert errors[kind] == error_count(rate, len(teacher))
        assert abs(errors[kind] / len(teacher) - rate) <= 1 / len(teacher)
    for generation in teacher:
        gold = parse_gold_tool_call(gold_by_query[generation["input"]["messages"][1]["content"]])
        calls = [
            (call["function"]["name"], json.loads(call["function"]["arguments"]))
            for call in generation["output"]["tool_calls"]
        ]
        offered = [tool["function"]["name"] for tool in generation["input"]["tools"]]
        error = generation["metadata"]["injected_error"]
        if error is None:
            assert calls == [(gold.name, gold.arguments)]
            assert format_tool_call(*calls[0]) == gold_by_query[generation["input"]["messages"][1]["content"]]
        elif error == "wrong_argument_value":
            assert calls[0][0] == gold.name and canonical_json(calls[0][1]) != canonical_json(gold.arguments)
        elif error == "wrong_tool":
            assert calls[0][0] != gold.name and calls[0][0] in offered
        else:
            assert error == "two_tool_calls" and len(calls) == 2 and calls[0] == (gold.name, gold.arguments)


def test_structured_error_rates_and_gold_answers(traces, test_rows):
    gold_by_prompt = {row.prompt: row.completion for row in test_rows["structured"]}
    teacher = generations(traces, "teacher_structured")
    errors = Counter(generation["metadata"]["injected_error"] for generation in teacher)
    for kind, rate in STRUCTURED_ERROR_RATES.items():
        assert errors[kind] == error_count(rate, len(teacher))
        assert abs(errors[kind] / len(teacher) - rate) <= 1 / len(teacher)
    for generation in teacher:
        gold, text = gold_by_prompt[structured_messages(generation)[1]["content"]], answer_text(generation)
        error = generation["metadata"]["injected_error"]
        if error is None:
            assert text == gold
        elif error == "wrong_value":
            assert canonical_json(json.loads(text)) != canonical_json(json.loads(gold))
        elif error == "prose_around_json":
            assert gold in text and text != gold
        else:
            assert error == "markdown_fence" and text == f"```json\n{gold}\n```"


def test_error_profile_overrides(dataset_root, test_rows):
    profile = ErrorProfile().with_overrides("wrong_tool=0, markdown_fence=0.1")
    assert profile.toolcall["wrong_tool"] == 0 and profile.structured["markdown_fence"] == 0.1
    config = DummyAgentConfig(dataset_root=dataset_root, error_profile=profile)
    traces = simulate_traces(config, test_rows["toolcall"], test_rows["structured"])
    toolcall_errors = Counter(g["metadata"]["injected_error"] for g in generations(traces, "teacher_toolcall"))
    structured_errors = Counter(g["metadata"]["injected_error"] for g in generations(traces, "teacher_structured"))
    assert toolcall_errors["wrong_tool"] == 0
    assert structured_errors["markdown_fence"] == error_count(0.1, len(test_rows["structured"]))
    with pytest.raises(ValueError, match="KIND=RATE"):
        ErrorProfile().with_overrides("no_such_error=0.1")
    with pytest.raises(ValueError, match="between 0 and 1"):
        ErrorProfile().with_overrides("wrong_tool=2")


def test_agent_membership_forms_and_other_agent(traces):
    ours = [trace for trace in traces if belongs_to(trace, AGENT)]
    others = [trace for trace in traces if not belongs_to(trace, AGENT)]
    assert others and all(belongs_to(trace, "other-agent") for trace in others)
    forms = Counter()
    for trace in ours:
        forms["agentId"] += trace["metadata"].get("agentId") == AGENT
        forms["agent_id"] += trace["metadata"].get("agent_id") == AGENT
        forms["tag"] += f"agent:{AGENT}" in trace["tags"]
        forms["name"] += trace["name"] == AGENT
        assert sum(1 for key in ("agentId", "agent_id") if key in trace["metadata"]) <= 1
    assert all(forms[form] >= 5 for form in ("agentId", "agent_id", "tag", "name"))


def test_dotted_tool_traces_record_the_openai_alias(traces):
    dotted = generations(traces, "dotted_toolcall")
    assert len(dotted) >= 3
    for generation in dotted:
        offered = [tool["function"]["name"] for tool in generation["input"]["tools"]]
        aliases = openai_safe_tool_names(offered)
        (call,) = generation["output"]["tool_calls"]
        recorded = call["function"]["name"]
        dotted_name = {alias: name for name, alias in aliases.items()}[recorded]
        assert "." in dotted_name and "." not in recorded and recorded not in offered


def test_noise_generations_are_present(traces):
    respond = generations(traces, "multi_turn_respond")
    assert respond and all(
        [message["role"] for message in g["input"]["messages"]][:3] == ["system", "user", "assistant"]
        and g["input"]["messages"][-1]["role"] == "tool"
        and isinstance(g["output"]["content"], str)
        for g in respond
    )
    prose = generations(traces, "prose_answer")
    assert prose and all(not answer_text(g).lstrip().startswith(("{", "[")) for g in prose)
    assert any(o["type"] == "EVENT" for trace in traces for o in trace["observations"])


def test_trace_and_observation_shape(traces):
    previous_end = None
    for trace in traces:
        assert list(trace) == TRACE_FIELDS and trace["metadata"]["simulated"] is True
        assert trace["timestamp"].endswith("Z")
        start = parse_time(trace["timestamp"])
        assert previous_end is None or start > previous_end
        by_id = {observation["id"]: observation for observation in trace["observations"]}
        assert len(by_id) == len(trace["observations"])
        for observation in trace["observations"]:
            assert list(observation) == OBSERVATION_FIELDS and observation["traceId"] == trace["id"]
            begin, end = parse_time(observation["startTime"]), parse_time(observation["endTime"])
            assert begin >= start and observation["latency"] == pytest.approx((end - begin).total_seconds())
            parent = by_id.get(observation["parentObservationId"])
            if observation["parentObservationId"] is not None:
                assert parent is not None and parse_time(parent["startTime"]) <= begin
                assert end <= parse_time(parent["endTime"])
            if observation["type"] == "GENERATION":
                usage = observation["usage"]
                assert usage["total"] == usage["input"] + usage["output"] and usage["unit"] == "TOKENS"
                assert begin <= parse_time(observation["completionStartTime"]) <= end
                assert "simulated" in observation["model"]
            else:
                assert observation["model"] is None and observation["usage"] is None
        previous_end = max(parse_time(o["endTime"]) for o in trace["observations"])


def test_llm_latency_is_lognormal_around_the_documented_median(traces):
    latencies = sorted(
        observation["latency"]
        for trace in traces
        for observation in trace["observations"]
        if observation["type"] == "GENERATION"
    )
    median = latencies[len(latencies) // 2]
    assert 0.7 * LLM_LATENCY_MEDIAN_S <= median <= 1.3 * LLM_LATENCY_MEDIAN_S
    assert max(latencies) > 2 * median  # a long right tail


def test_script_runs_with_the_documented_command_line(tmp_path):
    out = tmp_path / "storage" / "dummy_langfuse_traces.jsonl"
    command = [sys.executable, "slm_swap/dummy_agent_workflow.py", "--out-json", str(out), "--agent-id", AGENT]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    assert f"Wrote {len(lines)} simulated Langfuse traces" in result.stdout
    assert all(json.loads(line)["observations"] for line in lines)
