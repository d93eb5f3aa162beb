"""The example CodeAct agent (`slm-swap agent`) end to end: against the project's Serve app on
127.0.0.1 (a tiny random base model and a random LoRA served as `slm-codeact`), and against a
scripted OpenAI-compatible server that answers real CodeAct actions, with the real sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from ray_app.codeact.example_agent import agent_settings, run_example_agent, support_desk_task
from ray_app.codeact.loop import LoopSettings, run_trajectories
from ray_app.paths import PROJECT_ROOT
from ray_app.prompts import load_templates
from tests.recording_server import RecordingServer
from tests.test_hosted_engine import completion
from tests.test_serve import free_port, random_lora_adapter
from tests.tiny_model import build_tiny_model

REQUEST = "Look up the customer ana@example.com"
NO_CODE = load_templates()["codeact_no_code"]


def slm_swap_agent(*flags: str) -> subprocess.CompletedProcess:
    """`slm-swap agent ...` as a user runs it."""
    command = [sys.executable, "-m", "ray_app", "agent", *flags]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def served_codeact(ray_session, tmp_path_factory):
    """`slm-swap serve` on a tiny random base with a random LoRA at 04_ft/adapter_codeact."""
    from ray import serve

    from ray_app.serve.app import ServeSettings, start_server

    root = tmp_path_factory.mktemp("serve-codeact")
    model_dir = build_tiny_model(root / "model")
    adapter_dir = root / "04_ft" / "adapter_codeact"
    random_lora_adapter(model_dir, adapter_dir)
    settings = ServeSettings(
        model_path=str(model_dir),
        adapter_root=root / "04_ft",
        precision="fp32",
        cpus_per_replica=0.5,
        port=free_port(),
    )
    server = start_server(settings)
    yield server, model_dir, adapter_dir
    serve.shutdown()


def test_the_codeact_adapter_is_served_as_slm_codeact(served_codeact):
    server, _, _ = served_codeact
    with urllib.request.urlopen(f"{server.url}/v1/models") as response:
        assert [model["id"] for model in json.loads(response.read())["data"]] == ["slm", "slm-codeact"]


def test_the_agent_against_serve_prints_every_step_and_exits_1_without_a_final_answer(served_codeact):
    """The tiny random model writes no code: each step gets the no-code observation until the last."""
    server, _, _ = served_codeact
    result = slm_swap_agent(
        "--model", "slm-codeact", "--base-url", f"{server.url}/v1", "--max-steps", "3", "--max-new-tokens", "8", REQUEST
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert out.startswith(f"Agent: slm-codeact at {server.url}/v1; tools: crm.lookup_customer, crm.create_ticket")
    assert [line for line in out.splitlines() if line.startswith("Step ")] == ["Step 1", "Step 2", "Step 3"]
    assert out.count("(none: the answer had no <code> block)") == 3 and out.count(f"    {NO_CODE}") == 3
    assert "No final answer: the model wrote no code block in any step.\n(3 step(s), " in out


def test_serve_continues_the_codeact_conversation_as_the_local_engine_does(served_codeact):
    """The same adapter, run by the decode engine in this process: the same answer text, step by step
    (Serve took the CodeAct conversation as it is, multi-turn, and honoured the stop text)."""
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.engines.slm import SlmSettings

    server, model_dir, adapter_dir = served_codeact
    printed: list[str] = []
    settings = agent_settings("slm-codeact", f"{server.url}/v1", max_steps=2, max_new_tokens=8)
    served = run_example_agent(REQUEST, settings, write=printed.append)
    local_engine = SlmEngine(SlmSettings(model_path=model_dir, adapter_path=adapter_dir, precision="fp32"))
    [local] = run_trajectories([support_desk_task(REQUEST)], local_engine, LoopSettings(max_steps=2, max_new_tokens=8))
    assert [step.model_output for step in served.steps] == [step.model_output for step in local.steps]
    assert served.messages == local.messages and served.model == local.model == "slm-codeact"
    assert [step.completion_tokens for step in served.steps] == [step.completion_tokens for step in local.steps]
    assert len(printed) == 4 and printed[1].startswith("Step 1\n") and printed[2].startswith("Step 2\n")


FIRST_ACTION = (
    "Thought: I look the customer up by email.\n<code>\n"
    'customer = crm_lookup_customer(email="ana@example.com")\nprint(customer["status"], customer["echo"])\n'
)
SECOND_ACTION = (
    "Thought: The lookup worked, so I answer.\n<code>\n"
    "final_answer(f\"Found {customer['echo']['email']} ({customer['status']})\")\n"
)
MODELS = {"object": "list", "data": [{"id": "slm-codeact", "object": "model", "created": 0, "owned_by": "slm-swap"}]}


def scripted_endpoint(*actions: str):
    """GET /v1/models lists slm-codeact; each chat completion answers the next action (stop cut off)."""
    queue = list(actions)

    def handler(request):
        if request.method == "GET" and request.path == "/v1/models":
            return 200, MODELS, {}
        return 200, completion(content=queue.pop(0)), {}

    return handler


def test_the_agent_prints_thought_code_observation_and_the_final_answer_and_exits_0():
    with RecordingServer(scripted_endpoint(FIRST_ACTION, SECOND_ACTION)) as server:
        result = slm_swap_agent("--model", "slm-codeact", "--base-url", f"{server.url}/v1/", REQUEST)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        "Step 1",
        "  Thought: I look the customer up by email.",
        "  Code:",
        '    customer = crm_lookup_customer(email="ana@example.com")',
        '    print(customer["status"], customer["echo"])',
        "  Observation:",
        "    Execution logs:",
        "    ok {'email': 'ana@example.com'}",
        "Step 2",
        "  Thought: The lookup worked, so I answer.",
        "  Code:",
        "    final_answer(f\"Found {customer['echo']['email']} ({customer['status']})\")",
        "  Observation:",
        '    Final answer: "Found ana@example.com (ok)"',
        'Final answer: "Found ana@example.com (ok)"',
        "(2 step(s), 62 prompt + 14 completion tokens)",
    ]
    chats = [request.json() for request in server.requests if request.method == "POST"]
    assert [chat["model"] for chat in chats] == ["slm-codeact", "slm-codeact"]
    assert [chat["stop"] for chat in chats] == [["</code>"], ["</code>"]]
    system, task, action, observation = chats[1]["messages"]
    assert "def crm_lookup_customer(email: str) -> dict:" in system["content"] and task["content"] == REQUEST
    assert action["content"] == FIRST_ACTION + "</code>"
    assert observation == {"role": "user", "content": "Observation: Execution logs:\nok {'email': 'ana@example.com'}"}


def test_a_model_the_endpoint_does_not_serve_is_refused_before_the_run():
    with RecordingServer(scripted_endpoint(FIRST_ACTION)) as server:
        result = slm_swap_agent("--model", "slm-toolcall", "--base-url", f"{server.url}/v1", REQUEST)
    assert result.returncode == 2 and result.stdout == ""
    assert f"{server.url}/v1 does not serve 'slm-toolcall'; it serves slm-codeact" in result.stderr
    assert [request.method for request in server.requests] == ["GET"]


def test_an_unreachable_endpoint_is_named_and_exits_2():
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = slm_swap_agent("--base-url", url, REQUEST)
    assert result.returncode == 2
    assert f"cannot reach the Serve endpoint at {url}: start it with `slm-swap serve`" in result.stderr
