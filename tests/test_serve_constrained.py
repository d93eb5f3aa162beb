"""Serve's constrained decoding: which grammar a request gets (pure), and what comes back (live).

The live half starts one Serve with the tiny random-weights model: free, it answers noise; under a
grammar every tool call names an offered tool with arguments that fit its schema, and every
`response_format` answer parses as JSON that fits. Called with the real `openai` client on 127.0.0.1.
"""

from __future__ import annotations

import json

import pytest

from ray_app.engines.constrained import JsonConstraint, ToolCallConstraint
from ray_app.serve.openai_protocol import OpenAiError, parse_chat_request
from tests.local_ports import free_port

MODELS = ["slm"]
USER = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}  # fmt: skip
SEARCH = {
    "type": "function",
    "function": {"name": "search", "parameters": {"type": "object", "required": ["query"],
                                                  "properties": {"query": {"type": "string", "maxLength": 12}}}},
}  # fmt: skip
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12},
                   "temperature": {"type": "integer", "minimum": -50, "maximum": 50},
                   "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2}},
    "required": ["city", "temperature"],
}  # fmt: skip


def constraint_of(mode: str = "auto", **fields):
    return parse_chat_request({"model": "slm", "messages": USER, **fields}, MODELS, 64, constrained=mode).constraint


def test_tools_under_auto_get_the_lazy_wrapper_and_off_leaves_them_free():
    auto = constraint_of(tools=[WEATHER, SEARCH])
    assert isinstance(auto, ToolCallConstraint) and (auto.choice, auto.name) == ("auto", None)
    assert [tool.name for tool in auto.tools] == ["get_weather", "search"]
    assert constraint_of("off", tools=[WEATHER, SEARCH]) is None
    assert constraint_of(tools=[WEATHER], tool_choice="none") is None  # no tools in the prompt: nothing to call


def test_what_a_request_asks_is_honoured_in_both_modes():
    for mode in ("auto", "off"):
        required = constraint_of(mode, tools=[WEATHER, SEARCH], tool_choice="required")
        assert (required.choice, required.name) == ("required", None)
        named = constraint_of(mode, tools=[WEATHER, SEARCH], tool_choice={"type": "function",
                                                                           "function": {"name": "search"}})  # fmt: skip
        assert named.name == "search" and [tool.name for tool in named.tools] == ["search"]
        strict = {**WEATHER, "function": {**WEATHER["function"], "strict": True}}
        assert constraint_of(mode, tools=[strict, SEARCH]).choice == "auto"
        assert constraint_of(mode, response_format={"type": "json_object"}) == JsonConstraint(None)
        schema = constraint_of(mode, response_format={"type": "json_schema", "json_schema": {"name": "answer",
                               "schema": ANSWER_SCHEMA, "strict": True}})  # fmt: skip
        assert isinstance(schema, JsonConstraint) and schema.schema == ANSWER_SCHEMA
        assert constraint_of(mode, response_format={"type": "text"}) is None
    assert constraint_of() is None  # a structured request without response_format decodes free


@pytest.mark.parametrize(
    "fields, param",
    [({"response_format": {"type": "json_object"}, "tools": [WEATHER]}, "response_format"),
     ({"response_format": {"type": "json_schema", "json_schema": {"schema": []}}}, "response_format.json_schema"),
     ({"response_format": {"type": "yaml"}}, "response_format.type")],
)  # fmt: skip
def test_a_constraint_that_cannot_be_honoured_is_a_400_naming_the_field(fields, param):
    with pytest.raises(OpenAiError) as refused:
        constraint_of(**fields)
    assert (refused.value.status, refused.value.param) == (400, param)


# ---- live: one Serve, the tiny random model ----


@pytest.fixture(scope="module")
def client(ray_session, tiny_model_dir, tmp_path_factory):
    from openai import OpenAI
    from ray import serve

    from ray_app.serve.app import ServeSettings, start_server

    settings = ServeSettings(
        model_path=str(tiny_model_dir),
        adapter_root=tmp_path_factory.mktemp("constrained") / "no-adapters",
        precision="fp32",
        cpus_per_replica=0.5,
        default_max_tokens=96,
        port=free_port(),
    )
    server = start_server(settings)
    yield OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=120)
    serve.shutdown()


def fits(value, schema: dict) -> bool:
    import jsonschema

    return jsonschema.Draft202012Validator(schema).is_valid(value)


@pytest.mark.slow
def test_a_required_tool_call_from_a_random_model_names_an_offered_tool_with_arguments_that_fit(client):
    answer = client.chat.completions.create(model="slm", messages=USER, tools=[WEATHER, SEARCH],
                                            tool_choice="required", max_tokens=96)  # fmt: skip
    [call] = answer.choices[0].message.tool_calls
    schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in (WEATHER, SEARCH)}
    assert answer.choices[0].finish_reason == "tool_calls"
    assert call.function.name in schemas and fits(json.loads(call.function.arguments), schemas[call.function.name])
    named = client.chat.completions.create(
        model="slm", messages=USER, tools=[WEATHER, SEARCH], max_tokens=96,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    [call] = named.choices[0].message.tool_calls
    arguments = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and fits(arguments, schemas["get_weather"])
    assert arguments["unit"] in ("celsius", "fahrenheit")


@pytest.mark.slow
def test_a_streamed_constrained_call_leaves_as_tool_call_deltas_equal_to_the_unstreamed_one(client):
    request = {"model": "slm", "messages": USER, "tools": [WEATHER, SEARCH], "tool_choice": "required",
               "max_tokens": 96}  # fmt: skip
    whole = client.chat.completions.create(**request).choices[0].message.tool_calls[0]
    name, arguments, finish = None, "", None
    for chunk in client.chat.completions.create(**request, stream=True):
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            name = delta.function.name or name
            arguments += delta.function.arguments or ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert (name, json.loads(arguments), finish) == (whole.function.name, json.loads(whole.function.arguments),
                                                      "tool_calls")  # fmt: skip


@pytest.mark.slow
def test_a_response_format_json_schema_answer_parses_and_fits(client):
    plain = client.chat.completions.create(model="slm", messages=USER, max_tokens=96)
    with pytest.raises(json.JSONDecodeError):  # free, the random model's words are no JSON
        json.loads(plain.choices[0].message.content)
    # json_object (any object) is not asked of the random model here: nothing bounds its first key's length.
    as_schema = client.chat.completions.create(
        model="slm", messages=USER, max_tokens=96,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}},
    )  # fmt: skip
    text = as_schema.choices[0].message.content
    assert as_schema.choices[0].finish_reason == "stop", text
    assert fits(json.loads(text), ANSWER_SCHEMA)
