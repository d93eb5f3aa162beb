"""Prompt building, parsing back, the wrapper format and OpenAI-safe tool names."""

import json

import pytest

from ray_app.prompts import (
    PromptFormatError,
    ToolCallFormatError,
    chat_messages,
    format_tool_call,
    load_templates,
    openai_safe_tool_names,
    parameter_types,
    parse_gold_tool_call,
    parse_model_tool_call,
    parse_toolcall_prompt,
    render_template,
    structured_prompt,
    tool_signature,
    toolcall_prompt,
)

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "default": 1}},
        "required": ["city"],
    },
}


def test_structured_prompt_names_the_tool_and_typed_parameters():
    prompt = structured_prompt(WEATHER, "Weather in Oslo?")
    assert prompt == (
        'Return the arguments for the tool "get_weather" as one JSON object and nothing else.\n'
        'Parameters (name: JSON type): {"city":"string","days":"integer (optional)"}\n\n'
        "Request: Weather in Oslo?"
    )


def test_toolcall_prompt_round_trips_signatures_and_query():
    other = {"name": "x.y", "description": "", "parameters": {"type": "object", "properties": {}}}
    query = "Line one\n\nRequest: tricky line with {{query}} inside"
    prompt = toolcall_prompt([WEATHER, other], query)
    parsed = parse_toolcall_prompt(prompt)
    assert parsed.signatures == [WEATHER, other]
    assert parsed.query == query


def test_parse_toolcall_prompt_rejects_other_text():
    with pytest.raises(PromptFormatError):
        parse_toolcall_prompt("Return the arguments for ...")


def test_tool_signature_accepts_openai_tool_and_bare_function():
    assert tool_signature({"type": "function", "function": WEATHER}) == WEATHER
    assert tool_signature(WEATHER) == WEATHER
    with pytest.raises(PromptFormatError):
        tool_signature({"type": "function", "function": {"description": "no name"}})


def test_parameter_types_describe_arrays_and_unions():
    signature = {
        "name": "f",
        "parameters": {
            "type": "object",
            "properties": {"xs": {"type": "array", "items": {"type": "number"}}, "u": {"anyOf": [{"type": "string"}]}},
            "required": ["xs", "u"],
        },
    }
    assert parameter_types(signature) == {"xs": "array of number", "u": "string"}


def test_wrapper_format_and_gold_parse():
    text = format_tool_call("get_weather", {"city": "Zürich", "days": 2})
    assert text == '<tool_call name="get_weather">{"city": "Zürich", "days": 2}</tool_call>'
    call = parse_gold_tool_call(text)
    assert call.name == "get_weather" and call.arguments == {"city": "Zürich", "days": 2}


@pytest.mark.parametrize(
    "completion",
    [
        'Sure: <tool_call name="f">{}</tool_call>',  # prose outside is not allowed in gold
        '<tool_call name="f">{}</tool_call><tool_call name="f">{}</tool_call>',
        '<tool_call name="f">[1, 2]</tool_call>',  # args must be an object
        '<tool_call name="f">{"a": NaN}</tool_call>',
        "<tool_call>{}</tool_call>",
        "",
    ],
)
def test_gold_parse_rejects(completion):
    with pytest.raises(ToolCallFormatError):
        parse_gold_tool_call(completion)


def test_model_parse_tolerates_text_outside_but_not_two_calls():
    assert parse_model_tool_call('I will call it.\n<tool_call name="f">{"a": 1}</tool_call> done').arguments == {"a": 1}
    with pytest.raises(ToolCallFormatError, match="exactly one"):
        parse_model_tool_call('<tool_call name="f">{}</tool_call>\n<tool_call name="g">{}</tool_call>')
    with pytest.raises(ToolCallFormatError, match="exactly one"):
        parse_model_tool_call('<tool_call name="f">{}</tool_call> <tool_call name="g">{')


def test_openai_safe_names_are_valid_unique_and_stable():
    names = ["crm.lookup", "crm_lookup", "crm/lookup", "plain"]
    aliases = openai_safe_tool_names(names)
    assert aliases["plain"] == "plain" and aliases["crm_lookup"] == "crm_lookup"
    assert aliases["crm.lookup"] == "crm_lookup_2" and aliases["crm/lookup"] == "crm_lookup_3"
    assert len(set(aliases.values())) == len(names)
    assert openai_safe_tool_names(names) == aliases


def test_chat_messages_use_the_template_system_message():
    messages = chat_messages("hello")
    assert messages == [{"role": "system", "content": load_templates()["system"]}, {"role": "user", "content": "hello"}]


def test_render_template_checks_placeholders():
    with pytest.raises(KeyError):
        render_template("structured", tool_name="f", query="q")  # parameters missing
    assert json.loads(json.dumps(load_templates()))["version"] == 1
