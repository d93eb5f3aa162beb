"""The OpenAI Agents SDK pointed at `slm-swap serve`: one request, one tool the SLM must call, its result.

    python -m ray_app.openai_agents_demo ["What is the GCD of 84 and 126?"]

An `agents.Agent` whose model is the Serve endpoint through the SDK's Chat Completions model
(`OpenAIChatCompletionsModel` over an `AsyncOpenAI` client), with one function tool from the toolcall
data (`greatest_common_divisor`). The run stops at the tool's result (`tool_use_behavior=
"stop_on_first_tool"`), so what it prints is the call the SLM made and what the tool returned.
Environment, as the Mastra demo reads it: SLM_SWAP_BASE_URL (default http://127.0.0.1:8000/v1),
SLM_SWAP_MODEL (default slm-toolcall), SLM_SWAP_API_KEY, SLM_SWAP_TOOL_CHOICE (required, the default:
the configuration the report measures as `slm-adapter-constrained`; or auto, where the model may
answer in words).
Exits 1 when the model answered without a tool call.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys

DEFAULT_REQUEST = "What is the GCD of 84 and 126?"
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


async def run_demo(request: str) -> int:
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
    from agents.items import ToolCallItem, ToolCallOutputItem
    from openai import AsyncOpenAI

    @function_tool
    def greatest_common_divisor(a: int, b: int) -> dict:
        """Calculates the greatest common divisor of two integers.

        Args:
            a: The first integer.
            b: The second integer.
        """
        return {"gcd": math.gcd(a, b)}

    base_url = os.environ.get("SLM_SWAP_BASE_URL", DEFAULT_BASE_URL)
    model = os.environ.get("SLM_SWAP_MODEL", "slm-toolcall")
    tool_choice = os.environ.get("SLM_SWAP_TOOL_CHOICE", "required")
    if tool_choice not in ("required", "auto"):
        print(f"SLM_SWAP_TOOL_CHOICE must be required or auto, got {tool_choice!r}", file=sys.stderr)
        return 2
    set_tracing_disabled(True)  # the SDK's own tracing posts to OpenAI's servers; this endpoint is local
    client = AsyncOpenAI(base_url=base_url, api_key=os.environ.get("SLM_SWAP_API_KEY", "not-needed"))
    agent = Agent(
        name="slm-swap demo",
        instructions="Answer by calling the tool.",
        model=OpenAIChatCompletionsModel(model=model, openai_client=client),
        model_settings=ModelSettings(temperature=0, tool_choice=tool_choice),
        tools=[greatest_common_divisor],
        tool_use_behavior="stop_on_first_tool",
    )
    print(f"endpoint {base_url}, model {model}, tool choice {tool_choice}\nrequest: {request}")
    result = await Runner.run(agent, request, max_turns=1)
    calls = [item for item in result.new_items if isinstance(item, ToolCallItem)]
    outputs = [item for item in result.new_items if isinstance(item, ToolCallOutputItem)]
    if not calls:
        print(f"the model answered without a tool call: {result.final_output}")
        return 1
    for call in calls:
        print(f"SLM tool call: {call.raw_item.name} {call.raw_item.arguments}")
    for output in outputs:
        print(f"tool result: {json.dumps(output.output)}")
    return 0


def main() -> None:
    sys.exit(asyncio.run(run_demo(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_REQUEST)))


if __name__ == "__main__":
    main()
