"""Serve in production, live: keys, limits and hostile requests against one Serve on 127.0.0.1.

One module-scoped Serve with the tiny random model, two keys given directly and one in a key file,
a small admission bound (4 requests) and a short request timeout, called with the real `openai`
client and raw HTTP (http.client). Every probe is followed by a normal request that still answers.
The pure versions of these checks are in tests/test_serve_guard.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import secrets
import threading
import time
from pathlib import Path

import pytest

from tests.local_ports import free_port

MAX_ONGOING = 4  # the replica's admission bound: the overload test sends 4× as many
REQUEST_TIMEOUT_S = 2.0  # short, so a long answer runs into it; normal answers here take well under a second
TEN_MB = 10 * 1024 * 1024
RIGHT_KEY = "sk-right-" + secrets.token_urlsafe(12)  # random: a key found in a log can only come from here
OTHER_KEY = "sk-other-" + secrets.token_urlsafe(12)
FILE_KEY = "sk-file-" + secrets.token_urlsafe(12)
WRONG_KEY = "sk-wrong-" + secrets.token_urlsafe(12)
USER = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def served(ray_session, tiny_model_dir, tmp_path_factory):
    from ray import serve

    from ray_app.serve.app import ServeSettings, start_server

    root = tmp_path_factory.mktemp("serve-production")
    key_file = root / "keys.txt"
    key_file.write_text(f"# rotated by the test\n{FILE_KEY}\n", encoding="utf-8")
    settings = ServeSettings(
        model_path=str(tiny_model_dir),
        adapter_root=root / "no-adapters",
        precision="fp32",
        cpus_per_replica=0.5,
        default_max_tokens=16,
        max_batch_size=2,
        max_ongoing_requests=MAX_ONGOING,
        request_timeout_s=REQUEST_TIMEOUT_S,
        api_key_file=str(key_file),
        port=free_port(),
    )
    server = start_server(settings, (RIGHT_KEY, OTHER_KEY))
    yield server, key_file
    serve.shutdown()


def openai_client(served, api_key: str = RIGHT_KEY, **options):
    from openai import OpenAI

    server, _ = served
    return OpenAI(base_url=f"{server.url}/v1", api_key=api_key, **{"max_retries": 0, "timeout": 60, **options})


@pytest.fixture()
def client(served):
    return openai_client(served)


def still_answers(client) -> None:
    answer = client.chat.completions.create(model="slm", messages=USER, max_tokens=3)
    assert answer.choices[0].message.content is not None and answer.usage.completion_tokens <= 3


def raw(served, method: str, path: str, body: bytes | None = None, key: str | None = RIGHT_KEY,
        headers: dict[str, str] | None = None, **request) -> tuple[int, dict[str, str], dict]:  # fmt: skip
    """One HTTP request with http.client: (status, lower-cased headers, JSON body)."""
    server, _ = served
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    sent = {"content-type": "application/json", **(headers or {})}
    if key is not None:
        sent["authorization"] = f"Bearer {key}"
    try:
        connection.request(method, path, body=body, headers=sent, **request)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    answered = {name.lower(): value for name, value in response.getheaders()}
    assert answered["content-type"].startswith("application/json"), (response.status, data[:200])
    return response.status, answered, json.loads(data)


def assert_openai_error(body: dict, code: str | None = None, param: str | None = None) -> str:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] == code and error["param"] == param, error
    return error["message"]


def post_chat(served, body: dict | bytes, **options) -> tuple[int, dict[str, str], dict]:
    raw_body = json.dumps(body).encode() if isinstance(body, dict) else body  # bytes, or chunks to send chunked
    return raw(served, "POST", "/v1/chat/completions", raw_body, **options)


# --- keys -----------------------------------------------------------------------------------------


def test_the_openai_client_needs_one_of_the_keys(served):
    import openai

    no_key = {"extra_headers": {"Authorization": openai.Omit()}}  # the SDK sends no Authorization at all
    for api_key, options in [(RIGHT_KEY, no_key), (WRONG_KEY, {})]:
        with pytest.raises(openai.AuthenticationError) as refused:
            openai_client(served, api_key=api_key).models.list(**options)
        assert refused.value.code == "invalid_api_key" and WRONG_KEY not in str(refused.value)
    for key in (RIGHT_KEY, OTHER_KEY, FILE_KEY):
        assert [model.id for model in openai_client(served, api_key=key).models.list().data] == ["slm"]
        still_answers(openai_client(served, api_key=key))


def test_every_route_but_health_needs_the_key_openapi_json_included(served, client):
    for method, path in [("GET", "/v1/models"), ("GET", "/openapi.json"), ("POST", "/v1/chat/completions"),
                         ("GET", "/no/such/route")]:  # fmt: skip
        status, headers, body = raw(served, method, path, b"{}", key=None)
        assert status == 401 and headers["www-authenticate"] == "Bearer", (method, path)
        assert "Authorization: Bearer" in assert_openai_error(body, "invalid_api_key")
    status, _, body = raw(served, "GET", "/openapi.json")
    assert status == 200 and "/v1/chat/completions" in body["paths"]
    status, _, body = raw(served, "GET", "/health", key=None)
    assert status == 200 and body["status"] == "ok" and body["admission"]["limit"] == MAX_ONGOING
    still_answers(client)


def test_a_rewritten_key_file_rotates_the_keys_on_the_running_replica(served, client):
    import openai

    _, key_file = served
    new_key = "sk-rotated-" + secrets.token_urlsafe(12)
    original = key_file.read_text(encoding="utf-8")
    try:
        key_file.write_text(f"{new_key}\n", encoding="utf-8")
        assert openai_client(served, api_key=new_key).models.list().data
        with pytest.raises(openai.AuthenticationError):
            openai_client(served, api_key=FILE_KEY).models.list()
    finally:
        key_file.write_text(original, encoding="utf-8")
    assert openai_client(served, api_key=FILE_KEY).models.list().data
    still_answers(client)


# --- body size ------------------------------------------------------------------------------------


def test_a_10_mb_body_is_413_at_once_while_health_keeps_answering(served, client):
    """Content-Length says 10 MB: refused before the body is read; chunked: refused after 1 MiB."""
    timings: dict[str, float] = {}
    failures: list[BaseException] = []

    bodies = {"declared": lambda: b"x" * TEN_MB, "chunked": lambda: iter([b"x" * 65536] * (TEN_MB // 65536))}

    def send(name: str, **request) -> None:
        try:
            body = bodies[name]()
            started = time.monotonic()
            status, _, answer = post_chat(served, body, **request)
            timings[name] = time.monotonic() - started
            assert status == 413, answer
            assert "1,048,576 bytes" in assert_openai_error(answer, "request_too_large")
        except BaseException as error:  # a thread's failure must fail the test
            failures.append(error)

    for name, request in [("declared", {}), ("chunked", {"encode_chunked": True})]:
        sender = threading.Thread(target=send, args=(name,), kwargs=request)
        health_latencies = []
        sender.start()
        while sender.is_alive() or not health_latencies:
            started = time.monotonic()
            assert raw(served, "GET", "/health", key=None)[0] == 200
            health_latencies.append(time.monotonic() - started)
        sender.join()
        assert not failures, failures
        print(f"\n10 MB body ({name}): 413 after {timings[name] * 1000:.0f} ms; /health meanwhile answered "
              f"{len(health_latencies)}× in at most {max(health_latencies) * 1000:.0f} ms")  # fmt: skip
        assert timings[name] < 5 and max(health_latencies) < 2
    still_answers(client)


# --- hostile and malformed bodies -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "param", "reason"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "invalid_json", None, "nests deeper than 200 levels"),
        (b'{"model": "slm", "messages": [{"role": "user", "content": "\\ud800"}]}', "invalid_json", None,
         "lone UTF-16 surrogate"),
        (b'{"model": "slm", "messages": [{"role": "user", "content": "caf\xe9"}]}', "invalid_json", None,
         "invalid unicode code point"),
        (b'{"model": "slm", "messages": [{"role": "user", "content": "x"}], "max_tokens": NaN}', "invalid_json", None,
         "expected value"),
        (json.dumps({"model": "slm", "messages": USER * 1000}).encode(), None, "messages", "at most 256"),
        (json.dumps({"model": "slm", "messages": USER, "tools": [{"type": "function",
         "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": "f"}}).encode(), None,
         "tool_choice", "tool_choice must be"),
        (json.dumps({"model": "slm", "messages": [{"role": "system", "content": "x"}, *USER],
         "response_format": {"type": "json"}}).encode(), None, "response_format.type", "must be"),
        (json.dumps({"model": "slm", "messages": USER, "response_format": {"type": "json_schema", "json_schema":
         {"name": "answer"}}}).encode(), None, "response_format.json_schema", "needs"),
        (json.dumps({"model": "slm", "messages": USER, "max_tokens": "4"}).encode(), None, "max_tokens", "positive"),
        (json.dumps({"model": "slm", "messages": USER, "stream": "yes"}).encode(), None, "stream", "true or false"),
        (json.dumps({"model": "slm", "messages": "Say hello."}).encode(), None, "messages", "non-empty list"),
        (json.dumps({"model": ["slm"], "messages": USER}).encode(), None, "model", "model is required"),
    ],
    ids=["json-10000-deep", "lone-surrogate", "malformed-utf8", "nan", "1000-messages", "tool-choice-string-function",
         "response-format-unknown-type", "response-format-json-schema-without-schema", "max-tokens-string",
         "stream-string", "messages-string", "model-list"],
)  # fmt: skip
def test_a_hostile_or_malformed_body_is_a_400_naming_what_is_wrong(served, client, body, code, param, reason):
    status, _, answer = post_chat(served, body)
    assert status == 400 and reason in assert_openai_error(answer, code, param)
    still_answers(client)


def test_project_format_messages_with_a_nameless_tool_are_400(served, client):
    from ray_app.prompts import chat_messages

    request = {"model": "slm", "messages": chat_messages("Say hello."), "tools": [{"type": "function",
               "function": {"description": "no name"}}]}  # fmt: skip
    status, _, answer = post_chat(served, request)
    assert status == 400 and "function.name" in assert_openai_error(answer, None, "tools[0]")
    still_answers(client)


def test_unknown_fields_are_ignored_and_max_completion_tokens_null_means_not_given(client):
    answer = client.chat.completions.create(
        model="slm",
        messages=USER,
        max_tokens=4,
        extra_body={"max_completion_tokens": None, "top_k": 3, "repetition_penalty": 1.1, "x-custom": {"a": [1]}},
        seed=7,
        user="user-1",
        response_format={"type": "text"},
    )
    assert answer.usage.completion_tokens <= 4  # was 512: null max_completion_tokens hid max_tokens
    still_answers(client)


def test_404_and_405_have_the_openai_error_shape(served, client):
    status, _, body = raw(served, "GET", "/v1/no-such-route")
    assert status == 404 and "POST /v1/chat/completions" in assert_openai_error(body, "unknown_url")
    status, headers, body = raw(served, "GET", "/v1/chat/completions")
    assert status == 405 and headers["allow"] == "POST"
    assert_openai_error(body, "method_not_allowed")
    status, _, body = raw(served, "DELETE", "/v1/models")
    assert status == 405
    still_answers(client)


# --- overload and time --------------------------------------------------------------------------------


def test_four_times_the_admission_bound_gets_some_429s_with_retry_after_and_every_admitted_answer(served, client):
    import openai
    from openai import AsyncOpenAI

    server, _ = served

    async def crowd(max_retries: int) -> list:
        async_client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=RIGHT_KEY, max_retries=max_retries,
                                   timeout=60)  # fmt: skip

        async def ask(index: int):
            try:
                return await async_client.chat.completions.with_raw_response.create(
                    model="slm", messages=[{"role": "user", "content": f"Count to {index}."}], max_tokens=12
                )
            except openai.RateLimitError as refused:
                return refused

        return await asyncio.wait_for(asyncio.gather(*(ask(index) for index in range(4 * MAX_ONGOING))), 120)

    rss_before = replica_rss_bytes()
    outcomes = asyncio.run(crowd(max_retries=0))
    refused = [outcome for outcome in outcomes if isinstance(outcome, openai.RateLimitError)]
    answered = [outcome.parse() for outcome in outcomes if not isinstance(outcome, openai.RateLimitError)]
    assert refused and answered and len(refused) + len(answered) == 4 * MAX_ONGOING
    assert all(error.response.headers["retry-after"] == "1" and error.code == "server_busy" for error in refused)
    assert all(answer.choices[0].message.content is not None for answer in answered)
    # With the SDK's own retries (it waits Retry-After), twice the bound is answered whole.
    retried = asyncio.run(asyncio.wait_for(crowd_with_retries(server.url, 2 * MAX_ONGOING), 120))
    assert all(answer.choices[0].message.content is not None for answer in retried)
    status, _, health = raw(served, "GET", "/health", key=None)
    assert health["admission"]["ongoing"] == 0 and health["admission"]["refused"] >= len(refused)
    assert health["decode"]["running"] == 0 and health["decode"]["waiting"] == 0
    still_answers(client)
    rss_after = replica_rss_bytes()
    print(f"\nreplica RSS: {rss_before / 2**20:.0f} MiB before the crowds, {rss_after / 2**20:.0f} MiB after")
    assert rss_after <= rss_before + max(64 * 2**20, rss_before // 4)  # back near its level: nothing held per request


def replica_rss_bytes() -> int:
    """Resident memory of this test session's Serve replica (a process under this pytest's own Ray)."""
    import psutil

    replicas = [child for child in psutil.Process().children(recursive=True)
                if "ServeReplica:slm-swap" in " ".join(child.cmdline())]  # fmt: skip
    assert len(replicas) == 1, replicas
    return replicas[0].memory_info().rss


async def crowd_with_retries(url: str, count: int) -> list:
    from openai import AsyncOpenAI

    async_client = AsyncOpenAI(base_url=f"{url}/v1", api_key=RIGHT_KEY, max_retries=5, timeout=60)
    calls = [
        async_client.chat.completions.create(
            model="slm", messages=[{"role": "user", "content": f"Hi {i}"}], max_tokens=12
        )
        for i in range(count)
    ]
    return await asyncio.gather(*calls)


def long_answer_request() -> dict:
    return {"model": "slm", "messages": USER, "max_tokens": 3900}  # decoding them takes longer than the timeout


def wait_until_idle(served) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        decode = raw(served, "GET", "/health", key=None)[2]["decode"]
        if decode["running"] == 0 and decode["waiting"] == 0:
            return decode
        time.sleep(0.1)
    pytest.fail(f"rows still busy after the timeout: {decode}")


def test_a_request_over_the_timeout_is_504_and_frees_its_row(served, client):
    cancelled_before = raw(served, "GET", "/health", key=None)[2]["decode"]["cancelled"]
    started = time.monotonic()
    status, headers, body = post_chat(served, long_answer_request())
    elapsed = time.monotonic() - started
    assert status == 504 and headers["x-should-retry"] == "false", body
    assert "request timeout" in assert_openai_error(body, "timeout")
    assert REQUEST_TIMEOUT_S <= elapsed < REQUEST_TIMEOUT_S + 3
    assert wait_until_idle(served)["cancelled"] == cancelled_before + 1
    still_answers(client)


def test_a_streamed_request_over_the_timeout_ends_with_an_error_event_the_sdk_raises(served, client):
    import openai

    stream = client.chat.completions.create(**long_answer_request(), stream=True)
    pieces = []
    with pytest.raises(openai.APIError, match="request timeout"):
        for chunk in stream:
            pieces.extend(choice.delta.content or "" for choice in chunk.choices)
    assert pieces  # it was answering when time ran out
    wait_until_idle(served)
    still_answers(client)


# --- last: nothing above left a key in a log ----------------------------------------------------------


def test_no_key_reaches_the_logs(served):
    import ray

    logs = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"
    leaked = []
    for folder, _, names in os.walk(logs):
        for name in names:
            text = (Path(folder) / name).read_bytes()
            leaked += [f"{name}: {key[:9]}…" for key in (RIGHT_KEY, OTHER_KEY, FILE_KEY, WRONG_KEY)
                       if key.encode() in text]  # fmt: skip
    assert not leaked
