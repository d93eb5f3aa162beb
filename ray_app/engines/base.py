"""The one interface every model engine implements: a batch of rows in, raw text and counts out.

An engine gets `EngineRequest`s (the row's prompt, already-built chat messages, its track) and
returns one `Generation` per request, in the same order. What "latency" means is engine-specific
and documented on each engine: a hosted call's round trip, or, for the local SLM's decode engine,
the time from the start of the row's prefill to its last token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from ray_app.data.rows import Track
from ray_app.engines.constrained.constraints import DecodingConstraint
from ray_app.prompts import chat_messages

EngineKind = Literal["transformers", "azure", "openai-compatible", "replay", "simulated"]


@dataclass(frozen=True)
class EngineRequest:
    index: int  # the row's position in its split
    track: Track
    prompt: str
    constraint: DecodingConstraint | None = None  # grammar the answer must fit (local SLM engine); None: free

    @property
    def messages(self) -> list[dict[str, str]]:
        return chat_messages(self.prompt)


@dataclass(frozen=True)
class Generation:
    text: str  # raw model text; for tool_calls answers, the project's wrapper(s)
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


class Engine(Protocol):
    kind: EngineKind

    def generate(self, requests: list[EngineRequest]) -> list[Generation]:
        """One Generation per request, same order. Raises on configuration errors, never returns partials."""
        ...

    def describe(self) -> dict[str, object]:
        """What produced the numbers: engine kind, model, precision or mode (written into metrics.json)."""
        ...


@dataclass(frozen=True)
class ChatRequest:
    """One multi-turn conversation to continue (the CodeAct loop's unit): greedy, cut at `stop`."""

    messages: list[dict[str, str]]  # role + content only
    stop: tuple[str, ...] = ()  # the answer ends where one of these first appears; it is not in the text
    max_tokens: int = 256
    constraint: DecodingConstraint | None = None  # grammar the answer must fit (local SLM engine); None: free


class ChatEngine(Protocol):
    """An engine that continues whole conversations: the CodeAct loop runs on any of them (the hosted
    teacher, the local SLM with or without an adapter, the project's Serve endpoint, the simulated
    teacher)."""

    kind: EngineKind
    model_name: str  # who answers, as trajectories record it

    def chat(self, requests: list[ChatRequest]) -> list[Generation]:
        """One Generation per request, same order."""
        ...

    def describe(self) -> dict[str, object]: ...
