"""The Serve app on 127.0.0.1, called with the real `openai` client.

The base model is a tiny random model taught (a few seconds of full fine-tuning) to answer one
agent request with a `<tool_call>` wrapper, so a real tool call comes back as `tool_calls`; the
adapter is a random LoRA, so its answers differ from the base and must equal what the evaluation
engine produces with the same adapter.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ray_app.prompts.agent_requests import agent_request_prompt
from tests.local_ports import free_port
from tests.tiny_model import build_tiny_model

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
AGENT_MESSAGES = [
    {"role": "system", "content": "You are a weather assistant."},
    {"role": "user", "content": "What is the weather in Paris right now?"},
]
TAUGHT_ANSWER = '<tool_call name="get_weather">{"city": "Paris"}</tool_call>'


def teach_answer(model_dir: Path, messages: list[dict[str, str]], answer: str, steps: int = 120) -> None:
    """Overfit the whole tiny model on one conversation so greedy decoding reproduces `answer`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = torch.tensor([prompt_ids + answer_ids])
    labels = torch.tensor([[-100] * len(prompt_ids) + answer_ids])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(model_dir)


def random_lora_adapter(model_dir: Path, adapter_dir: Path) -> None:
    """A LoRA adapter with random (non-zero) weights: it changes every answer of the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(adapter_dir)


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from ray import serve

    from ray_app.serve.app import ServeSettings, start_server

    root = tmp_path_factory.mktemp("serve")
    model_dir = build_tiny_model(root / "model")
    served_messages = agent_request_prompt(AGENT_MESSAGES, [WEATHER_TOOL], "auto").messages
    teach_answer(model_dir, served_messages, TAUGHT_ANSWER)
    random_lora_adapter(model_dir, root / "04_ft" / "adapter_toolcall")
    (root / "04_ft" / "adapter_structured").mkdir()  # no weights: not served
    settings = ServeSettings(
        model_path=str(model_dir),
        adapter_root=root / "04_ft",
        precision="fp32",
        cpus_per_replica=0.5,
        default_max_tokens=32,
        port=free_port(),
    )
    server = start_server(settings)
    yield server, model_dir, root / "04_ft" / "adapter_toolcall"
    serve.shutdown()


@pytest.fixture()
def client(served):
    from openai import OpenAI

    server, _, _ = served
    return OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=60)


def test_models_and_health_list_the_base_and_each_adapter_with_weights(served, client):
    server, _, _ = served
    assert [model.id for model in client.models.list().data] == ["slm", "slm-toolcall"]
    with urllib.request.urlopen(f"{server.url}/health") as response:
        health = json.loads(response.read())
    assert {key: health[key] for key in ("status", "models", "precision")} == {
        "status": "ok",
        "models": ["slm", "slm-toolcall"],
        "precision": "fp32",
    }
    assert set(health["prefix_cache"]) == {"prefixes", "cached_tokens", "max_tokens", "hits", "misses"}


def test_plain_chat_answers_with_text_and_usage(client):
    response = client.chat.completions.create(
        model="slm", messages=[{"role": "user", "content": "Say hello."}], max_tokens=6
    )
    choice = response.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.completion_tokens <= 6 and response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_usage_reports_the_prompt_tokens_the_prefix_cache_held(client):
    """A second request with the same tools: its tool signatures come from the prefix cache, and its usage
    says how many prompt tokens did (OpenAI's `prompt_tokens_details.cached_tokens`)."""

    def ask(city: str):
        messages = [{"role": "user", "content": f"What's the weather in {city}?"}]
        return client.chat.completions.create(
            model="slm", messages=messages, tools=[WEATHER_TOOL], tool_choice="auto", max_tokens=4
        ).usage

    ask("Lisbon")
    again = ask("Porto")
    assert 0 < again.prompt_tokens_details.cached_tokens < again.prompt_tokens


def test_tool_call_comes_back_as_openai_tool_calls(client):
    response = client.chat.completions.create(
        model="slm", messages=AGENT_MESSAGES, tools=[WEATHER_TOOL], tool_choice="auto", max_tokens=40
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


def test_tool_results_sent_back_are_accepted(client):
    first = client.chat.completions.create(model="slm", messages=AGENT_MESSAGES, tools=[WEATHER_TOOL], max_tokens=40)
    call = first.choices[0].message.tool_calls[0]
    follow_up = [
        *AGENT_MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 18}'},
    ]
    response = client.chat.completions.create(model="slm", messages=follow_up, tools=[WEATHER_TOOL], max_tokens=8)
    assert response.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_streamed_tool_call_arrives_as_tool_call_deltas(client):
    stream = client.chat.completions.create(
        model="slm", messages=AGENT_MESSAGES, tools=[WEATHER_TOOL], max_tokens=40, stream=True
    )
    names, arguments, finish = [], "", None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.function.name:
                    names.append(delta.function.name)
                arguments += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert names == ["get_weather"] and json.loads(arguments) == {"city": "Paris"} and finish == "tool_calls"


def test_streamed_text_joins_to_the_unstreamed_answer(client):
    # the adapter answers with plain text (the base was taught a tool call, which is held until it closes)
    request = {"model": "slm-toolcall", "messages": [{"role": "user", "content": "Count to three."}], "max_tokens": 10}
    whole = client.chat.completions.create(**request).choices[0].message.content
    stream = client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        usage = chunk.usage or usage
        pieces.extend(choice.delta.content or "" for choice in chunk.choices)
    assert "<tool_call" not in whole
    assert "".join(pieces) == whole and len([p for p in pieces if p]) > 1
    assert usage is not None and usage.completion_tokens <= 10


def test_raw_stream_is_server_sent_events_ending_with_done(served):
    server, _, _ = served
    body = json.dumps(
        {"model": "slm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    )
    request = urllib.request.Request(f"{server.url}/v1/chat/completions", data=body.encode(), method="POST")
    with urllib.request.urlopen(request) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and all(event.startswith("data: ") for event in events)


def health(server) -> dict:
    with urllib.request.urlopen(f"{server.url}/health") as response:
        return json.loads(response.read())


def test_a_client_that_leaves_mid_stream_frees_its_row(served):
    """A disconnect cancels the request's decoding at the next step instead of running to max_tokens."""
    server, _, _ = served
    cancelled_before = health(server)["decode"]["cancelled"]
    body = json.dumps({"model": "slm-toolcall", "messages": [{"role": "user", "content": "Tell me a long story."}],
                       "max_tokens": 3500, "stream": True})  # fmt: skip
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
    response = connection.getresponse()
    assert b'"role": "assistant"' in response.readline()  # the opening chunk, sent before decoding starts
    for line in iter(response.readline, b""):  # until the first generated token: the request is decoding
        if line.startswith(b"data: ") and b'"content": ""' not in line:
            break
    else:
        pytest.fail("the stream ended before its first token")
    connection.sock.shutdown(socket.SHUT_RDWR)  # the client leaves
    connection.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        decode = health(server)["decode"]
        if decode["cancelled"] > cancelled_before:
            break
        time.sleep(0.1)
    assert decode["cancelled"] == cancelled_before + 1 and decode["running"] == 0 and decode["waiting"] == 0


def test_adapter_chosen_by_model_name_answers_as_the_eval_engine_does(served, client):
    from ray_app.engines.base import EngineRequest
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.engines.slm import SlmSettings
    from ray_app.prompts import chat_messages

    _, model_dir, adapter_dir = served
    prompt = "Return the arguments for the tool as JSON.\n\nRequest: book a table for two"
    messages = chat_messages(prompt)  # the project's format: served as it is
    base = client.chat.completions.create(model="slm", messages=messages, max_tokens=12).choices[0].message.content
    adapted = client.chat.completions.create(model="slm-toolcall", messages=messages, max_tokens=12)
    engine = SlmEngine(SlmSettings(model_path=model_dir, adapter_path=adapter_dir, precision="fp32", max_new_tokens=12))
    [measured] = engine.generate([EngineRequest(index=0, track="structured", prompt=prompt)])
    assert adapted.choices[0].message.content == measured.text != base


def test_same_request_gives_the_same_text_alone_and_inside_a_batch(client, served):
    from openai import AsyncOpenAI

    server, _, _ = served
    request = {"model": "slm", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 12}
    alone = client.chat.completions.create(**request).choices[0].message.content

    async def crowd() -> list[str]:
        async_client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)
        others = [
            {**request, "messages": [{"role": "user", "content": f"Tell me about {topic}."}], "max_tokens": 20}
            for topic in ("rivers", "trains", "the moon", "tea", "maps", "bees", "clocks")
        ]
        models = ["slm", "slm-toolcall"] * 3 + ["slm"]
        calls = [
            async_client.chat.completions.create(**{**other, "model": m})
            for other, m in zip(others, models, strict=True)
        ]
        responses = await asyncio.gather(async_client.chat.completions.create(**request), *calls)
        return [response.choices[0].message.content for response in responses]

    answers = asyncio.run(crowd())
    assert answers[0] == alone


def test_an_evaluated_split_and_serve_asked_the_same_prompts_at_once_give_the_same_texts(served, tmp_path):
    """What was measured is what is served: `slm-swap eval` (Ray Data actors, the decode engine over fixed
    groups) and Serve (the same engine, requests arriving concurrently in any order), fp32, same texts."""
    from openai import AsyncOpenAI

    from ray_app.eval.config import EvalConfig, SlmEvalSettings
    from ray_app.eval.evaluate import run_eval
    from ray_app.prompts import chat_messages

    server, model_dir, _ = served
    settings = SlmEvalSettings(model_path=str(model_dir), precision="fp32", batch_size=4, rows_per_task=8,
                               max_new_tokens=10)  # fmt: skip
    outcome = run_eval(EvalConfig(track="structured", model="slm", eval_root=tmp_path, slm=settings))
    evaluated = [json.loads(line) for line in outcome.predictions_path.read_text().splitlines()][:24]

    async def ask_all() -> list[str]:
        async_client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)
        calls = [
            async_client.chat.completions.create(model="slm", messages=chat_messages(row["prompt"]), max_tokens=10)
            for row in reversed(evaluated)  # another order than the evaluation's
        ]
        return [response.choices[0].message.content or "" for response in await asyncio.gather(*calls)][::-1]

    served_texts = asyncio.run(ask_all())
    assert served_texts == [row["prediction"] for row in evaluated]


def raw_post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        (b"{not json", 400, None, "invalid_json"),
        (json.dumps({"model": "slm-nope", "messages": [{"role": "user", "content": "x"}]}).encode(), 404, "model",
         "model_not_found"),
        (json.dumps({"model": "slm"}).encode(), 400, "messages", None),
        (json.dumps({"model": "slm", "messages": []}).encode(), 400, "messages", None),
        (json.dumps({"model": "slm", "messages": [{"role": "robot", "content": "x"}]}).encode(), 400,
         "messages[0].role", None),
        (json.dumps({"model": "slm", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}).encode(),
         400, "messages", "context_length_exceeded"),
        (json.dumps({"model": "slm", "messages": [{"role": "user", "content": "x" * 30000}]}).encode(), 400,
         "messages", "context_length_exceeded"),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_style_4xx_and_the_replica_keeps_serving(served, client, body, status, param, code):
    server, _, _ = served
    got_status, error_body = raw_post(f"{server.url}/v1/chat/completions", body)
    assert got_status == status
    assert set(error_body["error"]) == {"message", "type", "param", "code"} and error_body["error"]["message"]
    assert error_body["error"]["param"] == param and error_body["error"]["code"] == code
    still = client.chat.completions.create(model="slm", messages=[{"role": "user", "content": "ok?"}], max_tokens=2)
    assert still.choices[0].message.content is not None


def test_openai_client_raises_typed_errors_for_unknown_model_and_missing_messages(client):
    import openai

    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="slm", messages=[])


def test_the_codeact_loop_through_serve_gives_the_local_engines_trajectories(served):
    """The loop on Serve's endpoint (multi-turn CodeAct conversations, OpenAI `stop`) and on the
    decode engine in process: the same model text at every step of every trajectory (fp32)."""
    from ray_app.codeact.loop import LoopSettings, run_trajectories
    from ray_app.codeact.tasks import build_tasks
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.engines.hosted import HostedLlmEngine
    from ray_app.engines.slm import SlmSettings
    from ray_app.engines.teacher_settings import teacher_settings_from_env
    from ray_app.paths import DATASET_ROOT

    server, model_dir, _ = served
    tasks = build_tasks(DATASET_ROOT, "test", 2)[-3:]
    settings = LoopSettings(max_steps=2, max_new_tokens=12)
    environ = {
        "SLM_SWAP_TEACHER_BASE_URL": f"{server.url}/v1",
        "SLM_SWAP_TEACHER_MODEL": "slm",
        "SLM_SWAP_TEACHER_API_KEY": "not-needed",
    }
    through_serve = run_trajectories(tasks, HostedLlmEngine(teacher_settings_from_env(environ)), settings)
    local = SlmEngine(SlmSettings(model_path=model_dir, precision="fp32", max_new_tokens=12))
    in_process = run_trajectories(tasks, local, settings)
    for served_run, local_run in zip(through_serve, in_process, strict=True):
        assert [step.model_output for step in served_run.steps] == [step.model_output for step in local_run.steps]
        assert served_run.messages == local_run.messages and len(served_run.steps) == 2
