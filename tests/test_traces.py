"""Trace exports → rows: both input shapes, tool_calls → wrapper, agent filter, every skip reason."""

import json

import pytest

from ray_app.data.rows import read_split
from ray_app.data.trace_splits import TraceFileError, build_trace_splits, read_trace_jsonl
from ray_app.data.traces import convert_traces, trace_belongs_to_agent
from ray_app.prompts import chat_messages, format_tool_call, openai_tool, toolcall_prompt

SEARCH = {
    "name": "crm.search",
    "description": "Find a customer.",
    "parameters": {"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]},
}
WEATHER = {
    "name": "get_weather",
    "description": "Weather.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def generation(observation_id, input_value, output_value, start="2026-11-01T09:00:00Z", **extra):
    return {
        "id": observation_id,
        "type": "GENERATION",
        "startTime": start,
        "input": input_value,
        "output": output_value,
        **extra,
    }


def tool_call_message(*calls):
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
            for i, (name, arguments) in enumerate(calls)
        ],
    }


def openai_input(user_text, tools, system="You are the CRM agent."):
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user_text}], "tools": tools}


def agent_trace(trace_id, observations, **fields):
    return {
        "id": trace_id,
        "timestamp": "2026-11-01T09:00:00Z",
        "metadata": {"agentId": "crm"},
        "observations": observations,
        **fields,
    }


def test_agent_membership_forms():
    assert trace_belongs_to_agent({"metadata": {"agentId": "crm"}}, "crm")
    assert trace_belongs_to_agent({"metadata": {"agent_id": "crm"}}, "crm")
    assert trace_belongs_to_agent({"tags": ["prod", "agent:crm"]}, "crm")
    assert trace_belongs_to_agent({"name": "crm"}, "crm")
    assert not trace_belongs_to_agent({"name": "crm-2", "tags": ["agent:crm-2"], "metadata": {"agentId": "x"}}, "crm")


def test_toolcall_from_openai_integration_shape_with_dotted_name_alias():
    tools = [openai_tool(SEARCH), openai_tool(WEATHER)]
    # The agent sent the OpenAI-safe alias and recorded the call under it.
    output = tool_call_message(("crm_search", '{"email": "a@b.c"}'))
    conversion = convert_traces(
        [agent_trace("t1", [generation("g1", openai_input("Find a@b.c", tools), output)])], "crm"
    )
    (candidate,) = conversion.candidates["toolcall"]
    assert candidate.row.prompt == toolcall_prompt([SEARCH, WEATHER], "Find a@b.c")
    assert candidate.row.completion == format_tool_call("crm.search", {"email": "a@b.c"})
    assert candidate.split_key == "Find a@b.c"


def test_structured_from_message_list_shapes():
    project_messages = chat_messages("Return the arguments ... Request: x")
    agent_messages = [
        {"role": "system", "content": "Extract the order as JSON."},
        {"role": "user", "content": [{"type": "text", "text": "Two lattes to go"}]},
    ]
    traces = [
        agent_trace(
            "t1",
            [
                generation("g1", project_messages, '{"b": 1, "a": "é"}'),
                generation(
                    "g2",
                    agent_messages,
                    {"role": "assistant", "content": ' {"items": ["latte"]}\n'},
                    "2026-11-01T09:00:01Z",
                ),
                generation("g3", json.dumps({"messages": agent_messages}), "[1, 2]", "2026-11-01T09:00:02Z"),
            ],
        )
    ]
    rows = [c.row for c in convert_traces(traces, "crm").candidates["structured"]]
    assert rows[0].prompt == "Return the arguments ... Request: x"  # the project's system message is dropped
    assert rows[0].completion == '{"b": 1, "a": "é"}'
    assert rows[1].prompt == "Extract the order as JSON.\n\nRequest: Two lattes to go"
    assert rows[1].completion == '{"items": ["latte"]}'
    assert rows[2].completion == "[1, 2]"


def test_every_skip_reason_is_counted():
    tools = [openai_tool(WEATHER)]
    multi_turn = [
        {"role": "user", "content": "Weather?"},
        tool_call_message(("get_weather", "{}")),
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
    ]
    observations = [
        generation(
            "a",
            openai_input("Weather in Rome and Oslo?", tools),
            tool_call_message(("get_weather", '{"city": "Rome"}'), ("get_weather", '{"city": "Oslo"}')),
        ),
        generation("b", openai_input("Hi", tools), "Hello! How can I help?"),
        generation("c", multi_turn, "It is sunny."),
        generation("d", openai_input("Weather?", tools), tool_call_message(("get_forecast", '{"city": "Rome"}'))),
        generation("e", openai_input("Weather?", tools), tool_call_message(("get_weather", '{"city": '))),
        generation("f", openai_input("Weather?", tools), tool_call_message(("get_weather", '["Rome"]'))),
        generation("g", [{"role": "user", "content": "x"}], "```json\n{}\n```"),
        generation("h", [{"role": "user", "content": "x"}], "42"),
        generation("i", "just a string prompt", "{}"),
        generation("j", [{"role": "system", "content": "s"}], "{}"),
        generation("k", [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "{}"),
        generation("l", [{"role": "user", "content": "x"}], None),
        generation("m", [{"role": "user", "content": "x"}], "{}", level="ERROR"),
        generation("n", {"messages": [{"role": "user", "content": "x"}]}, tool_call_message(("get_weather", "{}"))),
        {"id": "span", "type": "SPAN", "input": "ignored"},
    ]
    conversion = convert_traces([agent_trace("t", observations)], "crm")
    assert conversion.generations_seen == 14
    assert dict(conversion.skipped) == {
        "more than one tool call": 1,
        "answer is not JSON (prose, markdown fence or empty)": 2,
        "multi-turn input (assistant or tool messages)": 1,
        "tool call names a tool that was not offered": 1,
        "tool call arguments are not valid JSON": 1,
        "tool call arguments are not a JSON object": 1,
        "answer is JSON but not an object or array": 1,
        "input is not chat messages": 1,
        "no user message": 1,
        "non-text message content (images, audio, files)": 1,
        "no output": 1,
        "generation failed (level ERROR)": 1,
        "tool call but no tools in the input": 1,
    }
    assert not conversion.candidates["structured"] and not conversion.candidates["toolcall"]


def test_other_agents_are_filtered_and_splits_written(tmp_path):
    tools = [openai_tool(WEATHER)]
    ours = [
        agent_trace(
            f"t{i}",
            [
                generation(
                    f"g{i}",
                    openai_input(f"Weather in city {i}?", tools),
                    tool_call_message(("get_weather", json.dumps({"city": f"c{i}"}))),
                )
            ],
        )
        for i in range(12)
    ]
    duplicate = agent_trace(
        "dup",
        [
            generation(
                "gd", openai_input("Weather in city 0?", tools), tool_call_message(("get_weather", '{"city": "other"}'))
            )
        ],
    )
    theirs = agent_trace(
        "x",
        [generation("gx", openai_input("Other agent", tools), tool_call_message(("get_weather", "{}")))],
        metadata={"agentId": "other"},
    )
    export = tmp_path / "traces.jsonl"
    export.write_text("".join(json.dumps(t) + "\n" for t in [*ours, duplicate, theirs]), encoding="utf-8")
    summary = build_trace_splits(read_trace_jsonl(export), "crm", tmp_path / "out")
    facts = summary.as_dict()
    assert facts["traces_read"] == 14 and facts["traces_matched"] == 13
    assert facts["rows_written"] == {"toolcall": {"train": 8, "val": 2, "test": 2}}
    assert facts["duplicate_prompts_dropped"] == {"structured": 0, "toolcall": 1}
    rows = [
        row
        for split in ("train", "val", "test")
        for row in read_split(tmp_path / "out" / "toolcall" / f"{split}.jsonl")
    ]
    assert len({row.prompt for row in rows}) == 12
    assert not (tmp_path / "out" / "structured").exists()
    again = tmp_path / "again"
    build_trace_splits(list(reversed(read_trace_jsonl(export))), "crm", again)
    for split in ("train", "val", "test"):
        assert (again / "toolcall" / f"{split}.jsonl").read_bytes() == (
            tmp_path / "out" / "toolcall" / f"{split}.jsonl"
        ).read_bytes()


def test_bad_trace_file_names_line(tmp_path):
    export = tmp_path / "traces.jsonl"
    export.write_text('{"id": "a", "observations": []}\n\n{"id": "b", "observations": {}}\n', encoding="utf-8")
    with pytest.raises(TraceFileError, match=r"traces.jsonl:3: field 'observations' must be a list"):
        read_trace_jsonl(export)
