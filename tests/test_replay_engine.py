"""Replaying the teacher's recorded answers: the dummy agent's traces over the committed test splits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ray_app.data.rows import read_split
from ray_app.data.trace_splits import read_trace_jsonl
from ray_app.data.traces import convert_traces, generations_of
from ray_app.dummy_agent import DummyAgentConfig, write_dummy_traces
from ray_app.dummy_agent.config import AGENT_SYSTEM_PROMPT, TEACHER_MODEL
from ray_app.dummy_agent.turns import CHITCHAT_ANSWERS, CHITCHAT_QUERIES
from ray_app.engines.base import EngineRequest
from ray_app.engines.replay import ReplayEngine, ReplayMissingError
from ray_app.metrics import score_rows
from ray_app.paths import DATASET_ROOT
from ray_app.prompts import (
    chat_messages,
    format_tool_call,
    parse_gold_tool_call,
    parse_toolcall_prompt,
    structured_prompt_from_instruction,
    tool_calls_text,
    toolcall_prompt,
)

AGENT = "dummy-agent"
TEACHER_KINDS = {"toolcall": "teacher_toolcall", "structured": "teacher_structured"}


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory) -> Path:
    out_json = tmp_path_factory.mktemp("traces") / "dummy_langfuse_traces.jsonl"
    write_dummy_traces(DummyAgentConfig(out_json=out_json, dataset_root=DATASET_ROOT))
    return out_json


@pytest.fixture(scope="module")
def engine(trace_path) -> ReplayEngine:
    return ReplayEngine(trace_path, AGENT)


@pytest.fixture(scope="module")
def teacher_generations(trace_path) -> dict[str, dict[str, dict]]:
    """Per track, the simulated teacher's generation for each user request (read straight from the traces)."""
    by_track: dict[str, dict[str, dict]] = {"toolcall": {}, "structured": {}}
    for trace in read_trace_jsonl(trace_path):
        for generation in generations_of(trace):
            for track, kind in TEACHER_KINDS.items():
                if generation["metadata"].get("kind") == kind:
                    inputs = generation["input"]
                    messages = inputs["messages"] if isinstance(inputs, dict) else inputs
                    by_track[track][messages[-1]["content"]] = generation
    return by_track


def user_text(track: str, prompt: str) -> str:
    return parse_toolcall_prompt(prompt).query if track == "toolcall" else prompt


@pytest.mark.parametrize("track", ["structured", "toolcall"])
def test_every_test_prompt_is_answered_and_scores_one_minus_the_injected_errors(engine, teacher_generations, track):
    rows = read_split(DATASET_ROOT / track / "test.jsonl", track)
    generations = engine.generate([EngineRequest(i, track, row.prompt) for i, row in enumerate(rows)])
    assert len(generations) == len(rows) == 50
    errors = [teacher_generations[track][user_text(track, row.prompt)]["metadata"]["injected_error"] for row in rows]
    error_counts = Counter(error for error in errors if error)
    assert error_counts.total() >= 3  # the replay really contains the teacher's mistakes
    texts = [generation.text for generation in generations]
    metrics = score_rows(track, [row.completion for row in rows], texts, [row.prompt for row in rows])
    n = len(rows)
    if track == "structured":  # every injected kind breaks the exact match; prose and fences break the JSON
        assert metrics["exact_match_rate"] == 1 - error_counts.total() / n
        assert (
            metrics["json_valid_rate"] == 1 - (error_counts["prose_around_json"] + error_counts["markdown_fence"]) / n
        )
    else:  # wrong_tool may keep the gold arguments when both tools take the same ones
        assert metrics["valid_call_rate"] == 1 - error_counts["two_tool_calls"] / n
        assert metrics["name_match_rate"] == 1 - (error_counts["two_tool_calls"] + error_counts["wrong_tool"]) / n
        wrong_args = error_counts["two_tool_calls"] + error_counts["wrong_argument_value"]
        assert 1 - error_counts.total() / n <= metrics["args_exact_rate"] <= 1 - wrong_args / n
    # Error-free recordings replay the gold completion byte for byte; every injected error shows.
    for row, text, error in zip(rows, texts, errors, strict=True):
        assert (text == row.completion) == (error is None), (error, text)


def test_two_tool_calls_become_two_wrappers(engine, teacher_generations):
    rows = read_split(DATASET_ROOT / "toolcall" / "test.jsonl", "toolcall")
    recorded = teacher_generations["toolcall"]
    two_call_rows = [
        row
        for row in rows
        if recorded[user_text("toolcall", row.prompt)]["metadata"]["injected_error"] == "two_tool_calls"
    ]
    assert two_call_rows
    generations = engine.generate([EngineRequest(i, "toolcall", row.prompt) for i, row in enumerate(two_call_rows)])
    for generation, row in zip(generations, two_call_rows, strict=True):
        first, second = generation.text.split("\n")
        assert first == row.completion
        assert parse_gold_tool_call(second).name == parse_gold_tool_call(row.completion).name


def test_recorded_latency_and_usage_come_through(engine, teacher_generations):
    rows = read_split(DATASET_ROOT / "structured" / "test.jsonl", "structured")[:5]
    generations = engine.generate([EngineRequest(i, "structured", row.prompt) for i, row in enumerate(rows)])
    for row, generation in zip(rows, generations, strict=True):
        recorded = teacher_generations["structured"][row.prompt]
        assert generation.latency_s == recorded["latency"] > 0
        assert generation.prompt_tokens == recorded["usageDetails"]["input"] > 0
        assert generation.completion_tokens == recorded["usageDetails"]["output"] > 0


def test_every_converted_row_replays_its_completion_and_prose_stays_prose(engine, trace_path):
    conversion = convert_traces(read_trace_jsonl(trace_path), AGENT)
    for track, candidates in conversion.candidates.items():
        requests = [EngineRequest(i, track, c.row.prompt) for i, c in enumerate(candidates)]
        texts = [generation.text for generation in engine.generate(requests)]
        assert texts == [candidate.row.completion for candidate in candidates]
    dotted = [c.row.completion for c in conversion.candidates["toolcall"] if 'name="crm.' in c.row.completion]
    assert dotted  # recorded under the alias crm_lookup_customer, replayed under the real name
    chitchat = [structured_prompt_from_instruction(AGENT_SYSTEM_PROMPT, query) for query in CHITCHAT_QUERIES]
    texts = [g.text for g in engine.generate([EngineRequest(i, "structured", p) for i, p in enumerate(chitchat)])]
    assert texts == list(CHITCHAT_ANSWERS)


def test_describe_counts_what_was_recorded(engine):
    described, config = engine.describe(), DummyAgentConfig()
    assert described["kind"] == "replay" and described["agent_id"] == AGENT
    # 50 + 50 test rows, the dotted-tool traces and the prose (chitchat) generations
    assert described["recorded_prompts"] == 100 + config.dotted_tool_traces + config.prose_noise_generations
    assert described["models_seen"] == [TEACHER_MODEL]
    assert described["simulated"] is True
    assert list(described["skipped"]) == ["multi-turn input (assistant or tool messages)"]


def test_missing_prompt_names_the_prompt_and_the_file(engine, trace_path):
    prompt = "Return the arguments for a request nobody ever made: " + "x" * 200
    with pytest.raises(ReplayMissingError) as caught:
        engine.generate([EngineRequest(7, "structured", prompt)])
    message = str(caught.value)
    assert str(trace_path) in message and "row 7" in message
    assert prompt[:120] in message and prompt[:121] not in message


WEATHER = {
    "name": "get_weather",
    "description": "",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def generation(gen_id, start, end, query, output, **fields):
    return {
        "id": gen_id,
        "type": "GENERATION",
        "startTime": start,
        "endTime": end,
        "input": chat_messages(query),
        "output": output,
        **fields,
    }


def write_traces(path: Path, *traces: list[dict]) -> Path:
    """One trace of agent "bot" per observation list, in file order."""
    lines = [json.dumps({"id": f"t{n}", "name": "bot", "observations": obs}) for n, obs in enumerate(traces)]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_latest_recording_wins_and_times_and_usage_fall_back(tmp_path):
    tool_call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    late = generation(
        "late", "2026-11-01T09:00:05+00:00", "2026-11-01T09:00:06.5Z", "Weather?", "late answer",
        usage={"promptTokens": 12, "completionTokens": 3}, model="gpt-4o",
    )  # fmt: skip
    early = generation("early", "2026-11-01T09:00:01Z", "2026-11-01T09:00:02Z", "Weather?", "early", latency=1.0)
    failed = generation("failed", "2026-11-01T09:00:09Z", None, "Weather?", None, level="ERROR")
    answer = {"role": "assistant", "content": None, "tool_calls": [tool_call]}
    offered = {"messages": chat_messages("Oslo?"), "tools": [{"type": "function", "function": WEATHER}]}
    with_tools = generation("tools", "2026-11-01T09:00:03Z", None, "Oslo?", answer, input=offered, latency=0.5)
    # The later recording sits in the earlier line of the file: time decides, not file order.
    trace_path = write_traces(tmp_path / "traces.jsonl", [late, with_tools], [early, failed])
    engine = ReplayEngine(trace_path, "bot")
    answered = engine.generate(
        [EngineRequest(0, "structured", "Weather?"), EngineRequest(1, "toolcall", toolcall_prompt([WEATHER], "Oslo?"))]
    )
    assert answered[0].text == "late answer"
    assert (answered[0].latency_s, answered[0].prompt_tokens, answered[0].completion_tokens) == (1.5, 12, 3)
    assert answered[1].text == format_tool_call("get_weather", {"city": "Oslo"})
    assert (answered[1].latency_s, answered[1].prompt_tokens) == (0.5, 0)
    described = engine.describe()
    assert described["recorded_prompts"] == 2 and described["duplicate_recordings"] == 1
    assert described["skipped"] == {"generation failed (level ERROR)": 1}
    assert described["models_seen"] == ["gpt-4o"] and described["simulated"] is False
    with pytest.raises(ReplayMissingError, match="agent 'another-bot'"):
        ReplayEngine(trace_path, "another-bot").generate([EngineRequest(0, "structured", "Weather?")])


def test_tool_calls_text_keeps_bad_arguments_raw():
    calls = [{"function": {"name": "crm_search", "arguments": '{"q": '}}]
    assert tool_calls_text(calls, ["crm.search"]) == '<tool_call name="crm.search">{"q": </tool_call>'
    assert (
        tool_calls_text([{"function": {"name": "f", "arguments": "[1]"}}], ["f"])
        == '<tool_call name="f">[1]</tool_call>'
    )
    assert tool_calls_text([{"function": {"name": "f", "arguments": ""}}], ["f"]) == format_tool_call("f", {})
