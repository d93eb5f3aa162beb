"""Agent requests → the project's prompts: what Serve builds equals what the traces became."""

from __future__ import annotations

import json

import pytest

from ray_app.data.traces import SkipGeneration, generation_messages_and_tools, generation_row, generations_of
from ray_app.dummy_agent.config import DummyAgentConfig
from ray_app.dummy_agent.workflow import load_test_rows, simulate_traces
from ray_app.prompts import chat_messages, load_templates, tool_signature, toolcall_prompt
from ray_app.prompts.agent_requests import AgentRequestError, agent_request_prompt
from ray_app.serve.openai_protocol import AnswerStream, assistant_answer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def test_served_messages_equal_the_rows_the_agents_traces_became():
    """For every generation of the dummy agent's traces that becomes a row, Serve builds that row's messages."""
    config = DummyAgentConfig()
    toolcall_rows, structured_rows = load_test_rows(config.dataset_root)
    checked = {"toolcall": 0, "structured": 0}
    for trace in simulate_traces(config, toolcall_rows, structured_rows):
        for generation in generations_of(trace):
            try:
                track, candidate = generation_row(generation)
            except SkipGeneration:
                continue
            messages, tools = generation_messages_and_tools(generation["input"])
            served = agent_request_prompt(messages, tools, "auto")
            assert served.messages == chat_messages(candidate.row.prompt), generation["id"]
            checked[track] += 1
    assert checked["toolcall"] >= 20 and checked["structured"] >= 20


def test_project_format_messages_are_served_as_they_are():
    messages = chat_messages(toolcall_prompt([tool_signature(WEATHER)], "weather in Oslo"))
    served = agent_request_prompt(messages, [WEATHER], "auto")
    assert served.messages == messages and served.source == "project-format"


def test_tool_choice_names_one_tool_and_none_offers_no_tools():
    messages = [{"role": "user", "content": "what time is it"}]
    one = agent_request_prompt(messages, [WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}})
    assert one.offered_tool_names == ("get_time",) and "get_weather" not in one.messages[1]["content"]
    none = agent_request_prompt(messages, [WEATHER, TIME], "none")
    assert none.offered_tool_names == () and none.messages == chat_messages("what time is it")
    with pytest.raises(AgentRequestError) as error:
        agent_request_prompt(messages, [WEATHER], {"type": "function", "function": {"name": "nope"}})
    assert error.value.param == "tool_choice"


def test_tool_results_are_appended_to_the_request_text():
    messages = [
        {"role": "system", "content": "You are a weather agent."},
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 3}'},
    ]  # fmt: skip
    served = agent_request_prompt(messages, [WEATHER], "auto")
    expected_text = 'weather in Oslo?\n\n<tool_result name="get_weather">{"temp": 3}</tool_result>'
    assert served.messages == chat_messages(toolcall_prompt([tool_signature(WEATHER)], expected_text))


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
         "messages[2]"),
        ([{"role": "system", "content": "only a system"}], "messages"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content[0]"),
        ([{"role": "user", "content": "  "}], "messages[0].content"),
        ("not a list", "messages"),
    ],
)  # fmt: skip
def test_unservable_conversations_name_the_field(messages, param):
    with pytest.raises(AgentRequestError) as error:
        agent_request_prompt(messages)
    assert error.value.param == param


def test_wrapper_becomes_a_tool_call_and_other_text_stays_content():
    answer = assistant_answer('<tool_call name="get_weather">{"city": "Oslo"}</tool_call>', stopped=True)
    assert answer.finish_reason == "tool_calls" and answer.content is None
    assert json.loads(answer.tool_calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    with_words = assistant_answer('Checking. <tool_call name="get_weather">{"city": "Oslo"}</tool_call> done', True)
    assert with_words.content == "Checking. " and with_words.tool_calls[0]["function"]["name"] == "get_weather"
    spaced = assistant_answer(' \n<tool_call name="get_weather">{"city": "Oslo"}</tool_call>', stopped=True)
    assert spaced.content is None and spaced.finish_reason == "tool_calls"
    broken = assistant_answer('<tool_call name="get_weather">{"city": </tool_call>', stopped=True)
    assert broken.tool_calls == [] and broken.content.startswith("<tool_call") and broken.finish_reason == "stop"
    assert assistant_answer("cut off", stopped=False).finish_reason == "length"


def character_tokens(text: str) -> list[int]:
    return [ord(character) for character in text]


def decode_characters(token_ids: list[int]) -> str:
    return "".join(chr(token_id) for token_id in token_ids)


def stream_text(text: str, stopped: bool = True) -> tuple[list[list[dict]], list[dict]]:
    """(the chunks sent after each token, the chunks of the finish), one character per token."""
    stream = AnswerStream("slm", "fp", include_usage=True, decode=decode_characters)
    assert stream.opening()[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    per_token = [stream.add(token) for token in character_tokens(text)]
    return per_token, stream.finish(text, stopped, 10, len(text))


def streamed_message(chunks: list[dict]) -> tuple[str, list[dict], str | None]:
    deltas = [chunk["choices"][0] for chunk in chunks if chunk["choices"]]
    content = "".join(delta["delta"].get("content") or "" for delta in deltas)
    calls = [call for delta in deltas for call in delta["delta"].get("tool_calls", [])]
    finish = [delta["finish_reason"] for delta in deltas if delta["finish_reason"]]
    return content, calls, finish[-1] if finish else None


@pytest.mark.parametrize(
    "text",
    [
        "Plain words, streamed as they come.",
        '<tool_call name="get_weather">{"city": "Oslo"}</tool_call>',
        'Let me check. <tool_call name="get_weather">{"city": "Oslo"}</tool_call>',
        '  \n<tool_call name="get_weather">{"city": "Oslo"}</tool_call>\n',
        '<tool_call name="get_weather">{"city": </tool_call>',  # broken: content after all
        "a < b and c <tool",  # ends in what might have become a wrapper
        '<tool_call name="a">{}</tool_call><tool_call name="b">{}</tool_call>',  # two calls: content
        "   ",
    ],
)
def test_streamed_deltas_join_to_the_unstreamed_message(text):
    per_token, finish = stream_text(text)
    content, calls, finish_reason = streamed_message([chunk for chunks in per_token for chunk in chunks] + finish)
    message = assistant_answer(text, stopped=True)
    assert content == (message.content or "") and finish_reason == message.finish_reason
    if message.tool_calls:
        [expected] = message.tool_calls
        assert calls[0]["id"] == expected["id"] and calls[0]["function"] == {
            "name": expected["function"]["name"],
            "arguments": "",
        }
        assert "".join(call["function"]["arguments"] for call in calls) == expected["function"]["arguments"]
    else:
        assert calls == []
    assert finish[-1]["choices"] == [] and finish[-1]["usage"]["total_tokens"] == 10 + len(text)


def test_plain_text_goes_out_token_by_token_and_a_wrapper_is_held_until_it_closes():
    per_token, _ = stream_text("Hello there")
    assert all(len(chunks) == 1 for chunks in per_token[1:])  # every character after the first word start
    per_token, finish = stream_text('Sure. <tool_call name="get_weather">{"city": "Oslo"}</tool_call>')
    sent_before_finish = "".join(chunk["choices"][0]["delta"]["content"] for chunks in per_token for chunk in chunks)
    assert sent_before_finish == "Sure. "  # never a piece of the wrapper
    assert any("tool_calls" in chunk["choices"][0]["delta"] for chunk in finish if chunk["choices"])


def test_a_character_split_across_tokens_waits_for_its_last_byte():
    pieces = {1: "caf", 2: "caf\ufffd", 3: "café"}  # what decoding the first n tokens gives
    stream = AnswerStream("slm", "fp", include_usage=False, decode=lambda ids: pieces[len(ids)])
    sent = [stream.add(token) for token in (1, 2, 3)]
    assert [[chunk["choices"][0]["delta"]["content"] for chunk in chunks] for chunks in sent] == [["caf"], [], ["é"]]


def test_system_text_of_the_project_is_not_repeated_as_an_agent_instruction():
    project_system = load_templates()["system"]
    messages = [
        {"role": "system", "content": project_system},
        {"role": "user", "content": "a"},
    ]
    messages.append({"role": "developer", "content": "Answer in JSON."})
    served = agent_request_prompt(messages)
    assert (
        served.messages[1]["content"].startswith("Answer in JSON.")
        and project_system not in served.messages[1]["content"]
    )


def test_a_stream_with_stop_texts_never_sends_a_stop_text_or_what_follows_it():
    """The engine cuts the answer before the stop text; a stream holds back any tail that may be one."""
    text = "Thought: look it up\n<code>\nprint(1)\n</code> and more"
    stream = AnswerStream("slm", "fp", include_usage=False, decode=decode_characters, stop=("</code>",))
    per_token = [stream.add(token) for token in character_tokens(text)]
    sent = "".join(chunk["choices"][0]["delta"]["content"] for chunks in per_token for chunk in chunks)
    answer = text[: text.index("</code>")]  # what the engine answers for this stop text
    assert answer.startswith(sent) and "</" not in sent
    finish = stream.finish(answer, True, 10, 20)
    content, calls, finish_reason = streamed_message([chunk for chunks in per_token for chunk in chunks] + finish)
    assert (content, calls, finish_reason) == (answer, [], "stop")


@pytest.mark.parametrize(
    ("stop", "expected"),
    [(None, ()), ("</code>", ("</code>",)), (["a", "b"], ("a", "b"))],
)
def test_stop_is_null_a_string_or_up_to_four_strings(stop, expected):
    from ray_app.serve.openai_protocol import parse_stop

    assert parse_stop(stop) == expected


@pytest.mark.parametrize("stop", [[], ["a", "b", "c", "d", "e"], [""], 7, ["a", 1]])
def test_a_bad_stop_is_a_400_naming_stop(stop):
    from ray_app.serve.openai_protocol import OpenAiError, parse_stop

    with pytest.raises(OpenAiError) as raised:
        parse_stop(stop)
    assert (raised.value.status, raised.value.param) == (400, "stop")


def test_a_codeact_conversation_is_served_as_it_is_multi_turn_included():
    system = load_templates()["codeact_system"].replace("{{tools}}", "def f(x: int) -> dict: ...")
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": "Call f with 2."},
        {"role": "assistant", "content": "Thought: call it\n<code>\nf(x=2)\n</code>"},
        {"role": "user", "content": "Observation: {'ok': True}"},
    ]
    served = agent_request_prompt(messages)
    assert served.source == "codeact" and served.messages == messages
    with pytest.raises(AgentRequestError):  # the same turns under another system text: multi-turn, refused
        agent_request_prompt([{"role": "system", "content": "Be brief."}, *messages[1:]])
