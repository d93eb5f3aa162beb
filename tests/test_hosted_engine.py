"""The hosted teacher engine through the real openai SDK against a chat-completions server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from ray_app.engines.base import EngineRequest
from ray_app.engines.hosted import HostedLlmEngine, TeacherRequestError
from ray_app.engines.teacher_settings import TeacherConfigError, teacher_settings_from_env
from ray_app.metrics import score_rows
from ray_app.prompts import format_tool_call, load_templates, structured_prompt, toolcall_prompt
from tests.recording_server import RecordingServer

AZURE_KEY = "azure-test-key-0123"
CRM_LOOKUP = {
    "name": "crm.lookup_customer",
    "description": "Find a customer.",
    "parameters": {"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]},
}
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
QUERY = "Look up the customer ana@example.com"
TOOLCALL = EngineRequest(0, "toolcall", toolcall_prompt([CRM_LOOKUP, WEATHER], QUERY))
STRUCTURED = EngineRequest(1, "structured", structured_prompt(WEATHER, "Weather in Oslo?"))


def completion(content=None, tool_calls=None, prompt_tokens=31, completion_tokens=7):
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": arguments}}
            for n, (name, arguments) in enumerate(tool_calls)
        ]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def answers(*responses):
    """A handler that gives the responses in turn (the last one again once they run out)."""
    queue = list(responses)

    def handler(request):
        status, body, headers = queue.pop(0) if len(queue) > 1 else queue[0]
        return status, body, dict(headers)

    return handler


def azure_engine(server, **overrides):
    environ = {"AZURE_ENDPOINT": f"{server.url}/openai/deployments/gpt-4o-mini", "AZURE_API_KEY": AZURE_KEY}
    return HostedLlmEngine(teacher_settings_from_env(environ, **overrides))


def compatible_engine(server, **overrides):
    environ = {
        "SLM_SWAP_TEACHER_BASE_URL": f"{server.url}/v1",
        "SLM_SWAP_TEACHER_MODEL": "qwen2.5-7b-instruct",
        "SLM_SWAP_TEACHER_API_KEY": "sk-local",
    }
    return HostedLlmEngine(teacher_settings_from_env(environ, **overrides))


def test_azure_toolcall_sends_tools_under_aliases_and_wraps_the_real_name():
    call = ("crm_lookup_customer", json.dumps({"email": "ana@example.com"}))
    with RecordingServer(answers((200, completion(tool_calls=[call]), {}))) as server:
        engine = azure_engine(server)
        [generation] = engine.generate([TOOLCALL])
    [sent] = server.requests
    assert sent.method == "POST" and sent.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert sent.query["api-version"] == ["2024-10-21"]
    assert sent.headers["api-key"] == AZURE_KEY and "authorization" not in sent.headers
    body = sent.json()
    assert (body["model"], body["temperature"], body["seed"], body["max_tokens"]) == ("gpt-4o-mini", 0, 42, 512)
    assert [tool["function"]["name"] for tool in body["tools"]] == ["crm_lookup_customer", "get_weather"]
    assert body["tools"][0]["function"]["parameters"] == CRM_LOOKUP["parameters"]
    assert body["tool_choice"] == "auto"
    assert body["messages"] == [
        {"role": "system", "content": load_templates()["toolcall_native_system"]},
        {"role": "user", "content": QUERY},
    ]
    assert generation.text == format_tool_call("crm.lookup_customer", {"email": "ana@example.com"})
    assert (generation.prompt_tokens, generation.completion_tokens) == (31, 7)
    assert generation.latency_s > 0
    assert engine.kind == "azure"
    described = engine.describe()
    assert described["deployment"] == "gpt-4o-mini" and described["endpoint_host"] == server.url.split("//")[1]
    assert (described["temperature"], described["seed"], described["simulated"]) == (0, 42, False)
    assert AZURE_KEY not in json.dumps(described) and AZURE_KEY not in repr(engine.settings)


def test_compatible_structured_sends_the_project_messages_with_bearer_auth():
    prose = 'Sure! Here it is:\n{"city": "Oslo"}'
    with RecordingServer(answers((200, completion(content=prose), {}))) as server:
        engine = compatible_engine(server, tool_choice="required")
        [generation] = engine.generate([STRUCTURED])
    [sent] = server.requests
    assert sent.path == "/v1/chat/completions" and not sent.query
    assert sent.headers["authorization"] == "Bearer sk-local"
    body = sent.json()
    assert body["model"] == "qwen2.5-7b-instruct" and (body["temperature"], body["seed"]) == (0, 42)
    assert body["messages"] == STRUCTURED.messages and "tools" not in body and "tool_choice" not in body
    assert generation.text == prose  # the answer as-is: the metric decides it is invalid
    assert engine.kind == "openai-compatible" and engine.describe()["model"] == "qwen2.5-7b-instruct"


def test_prompt_mode_sends_the_toolcall_prompt_as_text():
    wrapper = format_tool_call("get_weather", {"city": "Oslo"})
    with RecordingServer(answers((200, completion(content=wrapper), {}))) as server:
        [generation] = compatible_engine(server, toolcall_mode="prompt").generate([TOOLCALL])
    body = server.requests[0].json()
    assert body["messages"] == TOOLCALL.messages and "tools" not in body
    assert generation.text == wrapper


def test_native_tool_choice_required_is_sent():
    call = ("get_weather", '{"city": "Oslo"}')
    with RecordingServer(answers((200, completion(tool_calls=[call]), {}))) as server:
        compatible_engine(server, tool_choice="required").generate([TOOLCALL])
    assert server.requests[0].json()["tool_choice"] == "required"


def test_two_tool_calls_and_unparseable_arguments_stay_invalid():
    two_calls = [("crm_lookup_customer", '{"email": "ana@example.com"}'), ("get_weather", '{"city": "Oslo"}')]
    broken = [("get_weather", '{"city": "Oslo"')]
    with RecordingServer(
        answers((200, completion(tool_calls=two_calls), {}), (200, completion(tool_calls=broken), {}))
    ) as server:
        two, raw = compatible_engine(server, concurrency=1).generate([TOOLCALL, TOOLCALL])
    assert two.text.split("\n") == [
        format_tool_call("crm.lookup_customer", {"email": "ana@example.com"}),
        format_tool_call("get_weather", {"city": "Oslo"}),
    ]
    assert raw.text == '<tool_call name="get_weather">{"city": "Oslo"</tool_call>'
    gold = format_tool_call("crm.lookup_customer", {"email": "ana@example.com"})
    metrics = score_rows("toolcall", [gold, gold], [two.text, raw.text], [TOOLCALL.prompt] * 2)
    assert metrics["valid_call"] == 0


def test_429_with_retry_after_is_retried_once_by_the_sdk():
    with RecordingServer(
        answers((429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"}), (200, completion("{}"), {}))
    ) as server:
        [generation] = azure_engine(server).generate([STRUCTURED])
    assert generation.text == "{}" and generation.prompt_tokens == 31
    assert len(server.requests) == 2
    assert server.requests[1].headers["x-stainless-retry-count"] == "1"
    assert server.requests[0].json() == server.requests[1].json()


def test_500_is_retried_and_latency_includes_the_wait():
    started = time.monotonic()
    with RecordingServer(
        answers((500, {"error": {"message": "boom"}}, {"retry-after-ms": "200"}), (200, completion("[]"), {}))
    ) as server:
        [generation] = compatible_engine(server).generate([STRUCTURED])
    assert generation.text == "[]" and len(server.requests) == 2
    assert 0.2 <= generation.latency_s <= time.monotonic() - started


def test_retries_exhausted_raise_a_request_error_naming_the_row():
    overloaded = (503, {"error": {"message": "overloaded"}}, {"retry-after-ms": "1"})
    with (
        RecordingServer(answers(overloaded)) as server,
        pytest.raises(TeacherRequestError, match=r"row 1 failed with HTTP 503 after up to 2 retries"),
    ):
        compatible_engine(server, max_retries=2).generate([STRUCTURED])
    assert len(server.requests) == 3


def test_401_names_the_key_variable_without_retrying():
    denied = (401, {"error": {"message": "Access denied: invalid key"}}, {})
    with RecordingServer(answers(denied)) as server, pytest.raises(TeacherConfigError, match="AZURE_API_KEY") as caught:
        azure_engine(server).generate([STRUCTURED])
    assert len(server.requests) == 1
    assert AZURE_KEY not in str(caught.value)


def test_404_names_the_deployment_or_the_model():
    not_found = (404, {"error": {"code": "DeploymentNotFound", "message": "no such deployment"}}, {})
    with RecordingServer(answers(not_found)) as server:
        with pytest.raises(TeacherConfigError, match=r"deployment 'gpt-4o-mini' at the end of AZURE_ENDPOINT"):
            azure_engine(server).generate([STRUCTURED])
        with pytest.raises(TeacherConfigError, match=r"SLM_SWAP_TEACHER_MODEL='qwen2.5-7b-instruct'"):
            compatible_engine(server).generate([STRUCTURED])
    assert len(server.requests) == 2


def test_unreachable_server_names_the_base_url_variable():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = {"SLM_SWAP_TEACHER_BASE_URL": f"http://127.0.0.1:{port}/v1", "SLM_SWAP_TEACHER_MODEL": "m"}
    engine = HostedLlmEngine(teacher_settings_from_env(environ, max_retries=0))
    with pytest.raises(TeacherConfigError, match="SLM_SWAP_TEACHER_BASE_URL"):
        engine.generate([STRUCTURED])


def test_concurrency_is_bounded_and_results_keep_input_order():
    in_flight, peak, lock = 0, 0, threading.Lock()

    def handler(request):
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        query = request.json()["messages"][-1]["content"]
        index = int(query.rpartition("#")[2])
        time.sleep(0.02 * (6 - index))  # early rows answer last
        with lock:
            in_flight -= 1
        return 200, completion(content=f'{{"row": {index}}}', prompt_tokens=index), {}

    requests = [EngineRequest(i, "structured", structured_prompt(WEATHER, f"row #{i}")) for i in range(6)]
    with RecordingServer(handler) as server:
        generations = compatible_engine(server, concurrency=2).generate(requests)
    assert [g.text for g in generations] == [f'{{"row": {i}}}' for i in range(6)]
    assert [g.prompt_tokens for g in generations] == list(range(6))
    assert peak == 2 and len(server.requests) == 6


def test_bad_toolcall_prompt_fails_before_any_call():
    with RecordingServer(answers((200, completion("{}"), {}))) as server:
        engine = compatible_engine(server)
        with pytest.raises(ValueError, match="row 5 \\(toolcall\\)"):
            engine.generate([STRUCTURED, EngineRequest(5, "toolcall", "not a toolcall prompt")])
    assert server.requests == []


def test_mode_selection_and_settings_errors():
    azure = {"AZURE_ENDPOINT": "https://res.openai.azure.com/openai/deployments/gpt-4o-mini/", "AZURE_API_KEY": "k"}
    compatible = {"SLM_SWAP_TEACHER_BASE_URL": "http://127.0.0.1:8000/v1", "SLM_SWAP_TEACHER_MODEL": "m"}
    settings = teacher_settings_from_env({**azure, **compatible})
    assert (settings.mode, settings.model, settings.api_version) == ("azure", "gpt-4o-mini", "2024-10-21")
    assert settings.base_url == "https://res.openai.azure.com/openai/deployments/gpt-4o-mini"
    settings = teacher_settings_from_env({**azure, **compatible}, mode="openai-compatible", concurrency=8)
    assert (settings.mode, settings.model, settings.api_key, settings.concurrency) == (
        "openai-compatible", "m", "not-needed", 8
    )  # fmt: skip
    assert "api_key" not in settings.to_json()
    with pytest.raises(TeacherConfigError, match="AZURE_ENDPOINT.*SLM_SWAP_TEACHER_BASE_URL.*replay"):
        teacher_settings_from_env({})
    with pytest.raises(TeacherConfigError, match="AZURE_ENDPOINT must look like"):
        teacher_settings_from_env({**azure, "AZURE_ENDPOINT": "https://res.openai.azure.com"})
    with pytest.raises(TeacherConfigError, match="AZURE_API_KEY"):
        teacher_settings_from_env({**azure, "AZURE_API_KEY": ""})
    with pytest.raises(TeacherConfigError, match="SLM_SWAP_TEACHER_MODEL"):
        teacher_settings_from_env({"SLM_SWAP_TEACHER_BASE_URL": "http://127.0.0.1:8000/v1"})
    with pytest.raises(TeacherConfigError, match="concurrency must be a positive integer"):
        teacher_settings_from_env(compatible, concurrency=0)
    with pytest.raises(TeacherConfigError, match="unknown teacher setting"):
        teacher_settings_from_env(compatible, temperature=0.7)
