"""Serve's guard and request checks without Ray: keys, exposure, body and JSON limits, the admission bound,
and every probe users found against the protocol (each gets its 4xx or its right answer).

The ASGI middleware is driven directly (a receive that counts what it is asked for) and through
Starlette's TestClient around a small app; the live versions are in tests/test_serve_production.py.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from ray_app.prompts import chat_messages, load_templates
from ray_app.serve.guard import (
    API_KEY_ENV,
    AdmissionBound,
    ApiKeys,
    RequestGuard,
    access_notes,
    check_exposure,
    keys_from_env,
    keys_from_text,
    parse_json_body,
    read_key_file,
)
from ray_app.serve.openai_protocol import OpenAiError, RequestLimits, parse_chat_request

MODELS = ["slm", "slm-toolcall"]
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def chat(**fields) -> dict:
    return {"model": "slm", "messages": USER, **fields}


def refusal(body: dict, limits: RequestLimits = RequestLimits()) -> OpenAiError:
    with pytest.raises(OpenAiError) as refused:
        parse_chat_request(body, MODELS, 512, limits)
    assert refused.value.body()["error"]["message"]
    return refused.value


# --- keys -----------------------------------------------------------------------------------------


def test_keys_come_from_commas_or_spaces_and_must_be_header_safe():
    assert keys_from_text("key-one, key-two  key-three", "--api-key") == ("key-one", "key-two", "key-three")
    assert keys_from_env({API_KEY_ENV: "sk-a,sk-b"}) == ("sk-a", "sk-b") and keys_from_env({}) == ()
    with pytest.raises(ValueError, match=r"^SLM_SWAP_API_KEY: an API key must be printable ASCII"):
        keys_from_env({API_KEY_ENV: "clé"})


def test_a_key_file_holds_one_key_a_line_with_comments_and_names_the_line_it_refuses(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("# rotated 2026-12-01\nsk-new\n\nsk-old  # remove after the move\n", encoding="utf-8")
    assert read_key_file(path) == ("sk-new", "sk-old")
    path.write_text("sk-new\nsk with space\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{path}:2: an API key must be printable ASCII"):
        read_key_file(path)
    path.write_text("# nothing yet\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no key"):
        read_key_file(path)
    with pytest.raises(ValueError, match="cannot read the API key file"):
        ApiKeys(key_file=tmp_path / "missing.txt")


@pytest.mark.parametrize(
    ("authorization", "accepted"),
    [
        (b"Bearer sk-first", True),
        (b"bearer   sk-second ", True),
        (b"Bearer sk-firs", False),
        (b"Bearer sk-first-and-more", False),
        (b"Basic sk-first", False),
        (b"sk-first", False),
        (b"Bearer ", False),
        (None, False),
    ],
)
def test_a_bearer_token_is_accepted_only_when_it_is_one_of_the_keys(authorization, accepted):
    assert ApiKeys(["sk-first", "sk-second"]).accepts(authorization) is accepted


def test_every_key_is_compared_in_constant_time_even_after_a_match(monkeypatch):
    compared, compare_digest = [], hmac.compare_digest

    def counting_compare(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return compare_digest(a, b)

    monkeypatch.setattr("ray_app.serve.guard.hmac.compare_digest", counting_compare)
    assert ApiKeys(["sk-first", "sk-second-longer", "k3"]).accepts(b"Bearer sk-first")
    assert compared == [(32, 32)] * 3  # sha256 digests: the lengths of the keys do not show either


def test_keys_never_show_in_a_repr_or_the_banner(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("sk-from-file\n", encoding="utf-8")
    keys = ApiKeys(["sk-secret-value"], path)
    shown = repr(keys) + "\n".join(access_notes("0.0.0.0", 8000, keys))
    assert "sk-secret-value" not in shown and "sk-from-file" not in shown
    assert "API key required on every route but /health (2 keys, key file" in shown


def test_a_rewritten_key_file_rotates_the_keys_without_a_restart(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("sk-old\n", encoding="utf-8")
    keys = ApiKeys(key_file=path)
    assert keys.accepts(b"Bearer sk-old") and not keys.accepts(b"Bearer sk-new")
    replacement = tmp_path / "keys.tmp"
    replacement.write_text("sk-old\nsk-new\n", encoding="utf-8")
    os.replace(replacement, path)  # as an atomic rotation writes it
    assert keys.accepts(b"Bearer sk-old") and keys.accepts(b"Bearer sk-new")
    path.write_text("sk-new\n", encoding="utf-8")
    assert not keys.accepts(b"Bearer sk-old") and keys.accepts(b"Bearer sk-new")
    path.write_text("", encoding="utf-8")  # emptied (a half-done edit): keep the last keys read
    assert keys.accepts(b"Bearer sk-new") and not keys.accepts(b"Bearer sk-old")


# --- exposure -------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_needs_no_key(host):
    check_exposure(host, keys_required=False, allow_unauthenticated=False)
    assert access_notes(host, 8000, ApiKeys()) == ["no API key: only this machine can reach it"]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "serve.internal"])
def test_binding_beyond_loopback_without_a_key_is_refused_unless_allowed(host):
    with pytest.raises(ValueError, match=r"exposes the endpoint.*SLM_SWAP_API_KEY.*--allow-unauthenticated"):
        check_exposure(host, keys_required=False, allow_unauthenticated=False)
    check_exposure(host, keys_required=True, allow_unauthenticated=False)
    check_exposure(host, keys_required=False, allow_unauthenticated=True)
    assert access_notes(host, 8000, ApiKeys())[-1].startswith("warning: no API key")


def test_the_banner_says_every_interface_for_0_0_0_0():
    assert access_notes("0.0.0.0", 8001, ApiKeys(["sk-a"])) == [
        "bound to 0.0.0.0:8001: every interface of this machine",
        "API key required on every route but /health (1 key)",
    ]


# --- JSON body ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "nests deeper than 200 levels"),  # was a RecursionError (500)
        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "lone UTF-16 surrogate"),
        (b'{"messages": [{"role": "user", "content": "\\udc00 x"}]}', "lone UTF-16 surrogate"),
        (b'{"model": "slm", "note": "\xff\xfe"}', "invalid unicode code point"),  # malformed UTF-8
        (b'{"temperature": NaN}', "expected value"),
        (b'{"max_tokens": ' + b"9" * 5000 + b"}", "number out of range"),
        (b"{not json", "key must be a string"),
        (b'{"model": "slm"} trailing', "trailing characters"),
    ],
)
def test_bad_json_bodies_are_400_naming_what_is_wrong(raw, reason):
    with pytest.raises(OpenAiError) as refused:
        parse_json_body(raw)
    assert refused.value.status == 400 and refused.value.code == "invalid_json"
    assert reason in refused.value.message


def test_a_json_body_must_be_an_object_and_nesting_up_to_the_limit_parses():
    assert parse_json_body(b'{"a": ' + b"[" * 150 + b"]" * 150 + b"}")["a"]
    with pytest.raises(OpenAiError, match="must be a JSON object"):
        parse_json_body(b"[1, 2]")


# --- the guard middleware -------------------------------------------------------------------------


async def echo_length(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


INNER = Starlette(routes=[Route("/v1/echo", echo_length, methods=["POST"]), Route("/health", echo_length)])


def guarded_client(keys: ApiKeys, limit: int = 1000) -> TestClient:
    return TestClient(RequestGuard(INNER, keys, limit), raise_server_exceptions=False)


def assert_openai_error(response, status: int, code: str | None) -> dict:
    assert response.status_code == status and response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error


def test_without_the_right_key_every_route_but_health_is_401():
    client = guarded_client(ApiKeys(["sk-right"]))
    missing = client.post("/v1/echo", content=b"{}")
    assert "Authorization: Bearer" in assert_openai_error(missing, 401, "invalid_api_key")["message"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = client.post("/v1/echo", content=b"{}", headers={"authorization": "Bearer sk-wrong"})
    assert "sk-wrong" not in assert_openai_error(wrong, 401, "invalid_api_key")["message"]
    assert assert_openai_error(client.get("/v1/nope"), 401, "invalid_api_key")  # unknown routes are no hint
    right = client.post("/v1/echo", content=b"{}", headers={"authorization": "Bearer sk-right"})
    assert right.status_code == 200 and right.json() == {"bytes": 2}
    assert client.get("/health").status_code == 200


def test_a_body_over_the_limit_is_413_and_one_at_the_limit_passes():
    client = guarded_client(ApiKeys(), limit=1000)
    assert client.post("/v1/echo", content=b"x" * 1000).json() == {"bytes": 1000}
    assert_openai_error(client.post("/v1/echo", content=b"x" * 1001), 413, "request_too_large")
    chunked = client.post("/v1/echo", content=iter([b"x" * 600, b"x" * 600]))  # no Content-Length
    assert_openai_error(chunked, 413, "request_too_large")


def test_an_exception_that_escapes_the_app_is_an_openai_500_not_plain_text():
    async def broken_app(scope, receive, send):
        raise RuntimeError("boom")

    client = TestClient(RequestGuard(broken_app, ApiKeys(), 1000), raise_server_exceptions=False)
    error = assert_openai_error(client.get("/v1/anything"), 500, "internal_error")
    assert "RuntimeError" in error["message"] and error["type"] == "server_error"


def test_the_serve_app_answers_404_405_and_route_errors_in_the_openai_shape():
    """The FastAPI app's own handlers (Starlette would send {"detail": ...} or plain text)."""
    from fastapi import FastAPI

    from ray_app.serve.app import fastapi_app

    client = TestClient(fastapi_app, raise_server_exceptions=False)
    assert "POST /v1/chat/completions" in assert_openai_error(client.get("/v1/nope"), 404, "unknown_url")["message"]
    not_allowed = client.get("/v1/chat/completions")
    assert_openai_error(not_allowed, 405, "method_not_allowed")
    assert not_allowed.headers["allow"] == "POST"

    broken = FastAPI()
    broken.exception_handlers.update(fastapi_app.exception_handlers)

    @broken.get("/v1/fail")
    async def fail():
        raise RuntimeError("boom")

    error = assert_openai_error(TestClient(broken, raise_server_exceptions=False).get("/v1/fail"), 500,
                                "internal_error")  # fmt: skip
    assert "RuntimeError" in error["message"]


def drive(guard: RequestGuard, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[list, int]:
    """Call the guard as a server would; returns (messages sent, chunks the guard asked for)."""
    asked, sent = [], []

    async def receive():
        asked.append(1)
        index = len(asked) - 1
        return {"type": "http.request", "body": chunks[index], "more_body": index < len(chunks) - 1}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/echo", "headers": headers}
    asyncio.run(guard(scope, receive, send))
    return sent, len(asked)


def test_a_declared_length_over_the_limit_is_refused_before_a_byte_is_read():
    sent, asked = drive(RequestGuard(INNER, ApiKeys(), 1000), [(b"content-length", b"10485760")], [b"x" * 1000])
    assert sent[0]["status"] == 413 and asked == 0


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit():
    sent, asked = drive(RequestGuard(INNER, ApiKeys(), 1000), [], [b"x" * 400] * 100)  # 40 KB in 100 chunks
    assert sent[0]["status"] == 413 and asked == 3


def test_an_unauthenticated_body_is_not_read_at_all():
    sent, asked = drive(RequestGuard(INNER, ApiKeys(["sk-right"]), 1000), [], [b"{}"])
    assert sent[0]["status"] == 401 and asked == 0


# --- admission ------------------------------------------------------------------------------------


def test_the_admission_bound_refuses_with_429_and_retry_after_and_frees_a_place_when_a_request_ends():
    bound = AdmissionBound(limit=2, retry_after_s=3)

    async def request(hold: asyncio.Event) -> int:
        try:
            bound.admit()
        except OpenAiError as error:
            assert error.headers == {"retry-after": "3"} and error.code == "server_busy"
            return error.status
        await hold.wait()
        return 200

    async def scenario() -> tuple[list[int], int]:
        hold = asyncio.Event()
        requests = [asyncio.create_task(request(hold)) for _ in range(3)]
        await asyncio.sleep(0)
        held = bound.ongoing
        hold.set()
        statuses = await asyncio.gather(*requests)
        await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
        return statuses, held

    statuses, held = asyncio.run(scenario())
    assert sorted(statuses) == [200, 200, 429] and held == 2
    assert bound.stats() == {"ongoing": 0, "limit": 2, "refused": 1}


# --- the protocol: the probes users found -----------------------------------------------------------


def test_tool_choice_with_a_string_where_the_function_object_belongs_is_400():
    error = refusal(chat(tools=[WEATHER], tool_choice={"type": "function", "function": "get_weather"}))
    assert (error.status, error.param) == (400, "tool_choice")  # was a plain-text 500


def test_project_format_messages_with_a_nameless_tool_are_400():
    messages = chat_messages("What is the weather in Paris?")
    error = refusal(chat(messages=messages, tools=[{"type": "function", "function": {"parameters": {}}}]))
    assert (error.status, error.param) == (400, "tools[0]") and "function.name" in error.message
    assert messages[0]["content"] == load_templates()["system"]


def test_max_completion_tokens_null_means_not_given():
    assert parse_chat_request(chat(max_tokens=4, max_completion_tokens=None), MODELS, 512).max_tokens == 4
    assert parse_chat_request(chat(max_tokens=4, max_completion_tokens=7), MODELS, 512).max_tokens == 7
    assert parse_chat_request(chat(max_tokens=None), MODELS, 512).max_tokens == 512
    assert refusal(chat(max_completion_tokens="7")).param == "max_completion_tokens"


@pytest.mark.parametrize(
    "response_format, param",
    [({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema"),
     ({"type": "json_schema", "json_schema": {"name": "x", "schema": "object"}}, "response_format.json_schema"),
     ({"type": "xml"}, "response_format.type"), ("json", "response_format.type")],
)  # fmt: skip
def test_a_response_format_that_cannot_be_honoured_is_refused_naming_it(response_format, param):
    error = refusal(chat(response_format=response_format))
    assert (error.status, error.param) == (400, param)


def test_plain_text_response_format_and_unknown_fields_are_accepted():
    request = parse_chat_request(
        chat(response_format={"type": "text"}, top_p=0.5, seed=3, user="u-1", metadata={"a": "b"}, n=None),
        MODELS,
        512,
    )
    assert request.max_tokens == 512 and request.stream is False


def test_too_many_messages_or_tools_are_400():
    assert refusal(chat(messages=USER * 1000)).param == "messages"
    assert refusal(chat(tools=[WEATHER] * 3), RequestLimits(max_tools=2)).param == "tools"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": {}}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
        ({"messages": [*USER, {"role": "assistant", "tool_calls": 5}]}, "messages[1].tool_calls"),
        ({"messages": [*USER, {"role": "assistant", "tool_calls": ["x"]}]}, "messages[1].tool_calls[0]"),
        ({"messages": [*USER, {"role": "tool", "name": 5, "content": "x"}]}, "messages[1].name"),
        ({"tools": {"get_weather": WEATHER}}, "tools"),
        ({"tools": ["get_weather"]}, "tools[0]"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "none"}}]}, "tools[0]"),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
        ({"model": 5}, "model"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": 5}, "stream_options"),
        ({"stop": 5}, "stop"),
        ({"n": "2"}, "n"),
    ],
)  # fmt: skip
def test_a_wrong_type_in_a_field_is_a_400_naming_the_field(fields, param):
    error = refusal(chat(**fields))
    assert (error.status, error.param) == (400, param)


def test_every_probe_body_through_json_and_the_protocol_is_a_4xx_never_an_exception():
    """What a raw client can send, end to end through the pure layers (the HTTP status they map to)."""
    probes = [
        json.dumps(chat(tools=[WEATHER], tool_choice={"type": "function", "function": "f"})).encode(),
        b'{"model": "slm", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b"[" * 10_000 + b"]" * 10_000,
        json.dumps(chat(messages=[{"role": "user", "content": "x"}] * 1000)).encode(),
        json.dumps(chat(response_format={"type": "xml"})).encode(),
    ]
    for raw in probes:
        with pytest.raises(OpenAiError) as refused:
            parse_chat_request(parse_json_body(raw), MODELS, 512)
        assert 400 <= refused.value.status < 500


def test_slm_swap_serve_on_every_interface_without_a_key_refuses_before_starting_anything(monkeypatch):
    from typer.testing import CliRunner

    from ray_app.cli import app

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.delenv("SLM_SWAP_API_KEY_FILE", raising=False)
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--gpus-per-replica", "0"])
    assert result.exit_code == 2
    assert "exposes the endpoint" in result.output and "--allow-unauthenticated" in result.output
    result = CliRunner().invoke(app, ["serve", "--api-key", "clé", "--gpus-per-replica", "0"])
    assert result.exit_code == 2 and "--api-key: an API key must be printable ASCII" in result.output
