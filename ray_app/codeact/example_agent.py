"""The example CodeAct agent: one request, the dummy agent's support-desk tools, the Serve endpoint.

`run_example_agent(request, settings)` runs the CodeAct loop (`loop.run_trajectories`) for one task
against a running `slm-swap serve` (any OpenAI-compatible server works), with the model's code run
in the sandbox, and writes each step as it finishes (thought, code, observation), then the final
answer. It writes no files. The tools are the dummy agent's dotted support-desk tools
(`crm.lookup_customer`, `crm.create_ticket`, `billing.get_invoice`, `kb.search_articles`); they
have no backend, so the sandbox's stubs check each call against its JSON Schema and answer with a
receipt derived from the arguments. The request has no gold answer: nothing is scored.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import openai

from ray_app.codeact.loop import LoopSettings, run_trajectories, step_observation
from ray_app.codeact.records import CodeactTask, Step, ToolSpec, Trajectory
from ray_app.dummy_agent.synthetic_requests import DOTTED_TOOL_SIGNATURES
from ray_app.engines.hosted import HostedLlmEngine, TeacherConfigError, TeacherRequestError, teacher_client
from ray_app.engines.teacher_settings import TeacherSettings

SUPPORT_DESK_TOOLS: tuple[ToolSpec, ...] = tuple(ToolSpec.from_json(signature) for signature in DOTTED_TOOL_SIGNATURES)

STOPPED_BECAUSE = {
    "max_steps": "it used every step it was allowed (--max-steps)",
    "no_code": "the model wrote no code block in any step",
    "token_budget": "the conversation used its token budget",
}


class AgentEndpointError(RuntimeError):
    """The endpoint cannot be used: unreachable, not OpenAI-compatible, or it does not serve the model."""


class AgentRunError(RuntimeError):
    """A model call failed during the run (after the steps already written)."""


@dataclass(frozen=True)
class ExampleAgentSettings:
    model: str = "slm-codeact"  # Serve's name for slm_swap/04_ft/adapter_codeact
    base_url: str = "http://127.0.0.1:8000/v1"  # where `slm-swap serve` listens by default
    api_key: str = "not-needed"  # sent as a bearer token; the project's server checks none
    # Per model turn. The demo SLM on CPU writes 64 tokens in about 2 minutes on a 2-core machine
    # loaded ~30x over, so a full 256-token turn can pass 600 s there; a call that times out is not
    # retried (its greedy answer would be decoded again from the start).
    timeout_s: float = 600.0
    max_retries: int = 0  # the openai SDK's retries of one call (5xx, connection errors, timeouts)
    loop: LoopSettings = field(default_factory=LoopSettings)

    def __post_init__(self) -> None:
        url = urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            example = ExampleAgentSettings.base_url
            raise ValueError(f"--base-url must be an http(s) URL such as {example}, got {self.base_url!r}")
        if not self.model.strip():
            raise ValueError("--model must name a served model, e.g. slm-codeact")
        if not self.timeout_s > 0:
            raise ValueError(f"--timeout-s must be positive seconds, got {self.timeout_s!r}")


def agent_settings(
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    max_steps: int | None = None,
    max_new_tokens: int | None = None,
    timeout_s: float | None = None,
) -> ExampleAgentSettings:
    """The defaults above with the flags that were given (None: not given)."""
    defaults = ExampleAgentSettings()
    loop_flags = {"max_steps": max_steps, "max_new_tokens": max_new_tokens}
    loop = replace(defaults.loop, **{name: value for name, value in loop_flags.items() if value is not None})
    flags = {
        "model": model,
        "base_url": base_url.rstrip("/") if base_url is not None else None,
        "api_key": api_key,
        "timeout_s": timeout_s,
    }
    return replace(defaults, loop=loop, **{name: value for name, value in flags.items() if value is not None})


def support_desk_task(request: str) -> CodeactTask:
    """The user's request as a CodeAct task over the support-desk tools (no gold: it is never checked)."""
    if not request.strip():
        raise ValueError('the request is empty: say what the agent should do, e.g. "Look up ana@example.com"')
    return CodeactTask(kind="toolcall", request=request.strip(), tools=SUPPORT_DESK_TOOLS, gold=None,
                       source="example-agent")  # fmt: skip


def serve_chat_engine(settings: ExampleAgentSettings) -> HostedLlmEngine:
    """The hosted engine in openai-compatible mode pointed at the endpoint, after checking that the
    endpoint answers and serves `settings.model` (a clear error before the sandbox starts)."""
    teacher = TeacherSettings(
        mode="openai-compatible",
        base_url=settings.base_url,
        model=settings.model,
        api_key=settings.api_key,
        concurrency=1,
        timeout_s=settings.timeout_s,
        max_retries=settings.max_retries,
    )
    probe = teacher_client(replace(teacher, timeout_s=10.0, max_retries=0))
    try:
        served = [model.id for model in probe.models.list().data]
    except openai.APIConnectionError:
        raise AgentEndpointError(
            f"cannot reach the Serve endpoint at {settings.base_url}: start it with `slm-swap serve`, "
            "or point --base-url at a running one"
        ) from None
    except openai.APIStatusError as error:
        raise AgentEndpointError(
            f"GET {settings.base_url}/models answered HTTP {error.status_code}: --base-url must be an "
            "OpenAI-compatible endpoint, usually ending in /v1"
        ) from None
    if settings.model not in served:
        raise AgentEndpointError(
            f"{settings.base_url} does not serve {settings.model!r}; it serves {', '.join(served) or 'nothing'}. "
            "slm-swap serve serves each slm_swap/04_ft/adapter_<name>/ with weights as slm-<name> (train the "
            "adapter, then restart the server), or pass --model slm for the base SLM"
        )
    return HostedLlmEngine(teacher)


def run_example_agent(
    request: str, settings: ExampleAgentSettings | None = None, write: Callable[[str], None] = print
) -> Trajectory:
    """Answer `request` with the CodeAct loop against the endpoint; `write` gets each step's text as
    it finishes, then the outcome. Raises ValueError (empty request), AgentEndpointError, AgentRunError."""
    settings = settings or ExampleAgentSettings()
    task = support_desk_task(request)
    engine = serve_chat_engine(settings)
    tools = ", ".join(tool.name for tool in task.tools)
    write(f"Agent: {settings.model} at {settings.base_url}; tools: {tools}")
    numbers = itertools.count(1)
    try:
        [trajectory] = run_trajectories(
            [task], engine, settings.loop, on_task_step=lambda _, step: write(step_text(next(numbers), step))
        )
    except TeacherConfigError as error:
        raise AgentEndpointError(f"the endpoint at {settings.base_url} failed during the run: {error}") from None
    except TeacherRequestError as error:
        raise AgentRunError(f"the run stopped: a model call failed: {error}") from None
    write(outcome_text(trajectory))
    return trajectory


def step_text(number: int, step: Step) -> str:
    """One step as the agent prints it: the thought, the code and what the sandbox answered."""
    code = indented(step.code) if step.code is not None else "    (none: the answer had no <code> block)"
    return "\n".join(
        [
            f"Step {number}",
            "  Thought: " + indented(step.thought or "(none)", "    ").lstrip(),
            "  Code:",
            code,
            "  Observation:",
            indented(step_observation(step)),
        ]
    )


def outcome_text(trajectory: Trajectory) -> str:
    steps = len(trajectory.steps)
    spent = f"{steps} step(s), {trajectory.prompt_tokens} prompt + {trajectory.completion_tokens} completion tokens"
    if trajectory.has_final_answer:
        return f"Final answer: {json.dumps(trajectory.final_answer, ensure_ascii=False)}\n({spent})"
    why = STOPPED_BECAUSE.get(trajectory.stop_reason, trajectory.stop_reason)
    return f"No final answer: {why}.\n({spent})"


def indented(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines() or [""])
