"""The serving benchmark's two loads, as request bodies for our Serve app and for a llama.cpp peer.

- toolcall: the toolcall test split's prompts as `chat_messages(prompt)`, in file order, cycled to
  the request count (the 50 prompts carry many different tool sets, so few prompts share a prefix
  beyond the instruction);
- agent: one agent's calls, as a Mastra agent sends them: the dummy agent's support-desk tools
  (crm.lookup_customer, crm.create_ticket, billing.get_invoice, kb.search_articles) as OpenAI
  `tools` under their OpenAI-safe aliases, the agent's instruction as system message, and one of
  AGENT_DISTINCT_REQUESTS different user requests from the dummy agent's templates (seeded, so every
  run sends the same ones), cycled to the request count. Every request shares the tool block.

Both servers must see the same prompt text. Ours builds the toolcall prompt from an agent's
request itself; llama.cpp's servers would render `tools` with their own chat template, so they get
the messages our conversion makes (`agent_request_prompt`) instead. The demo GGUF carries the
checkpoint's chat template, so the token ids match too (checked with llama-server's
/apply-template and /tokenize: all 50 toolcall prompts and 16 agent prompts gave our ids).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_app.data.rows import read_split
from ray_app.dummy_agent.config import AGENT_SYSTEM_PROMPT
from ray_app.dummy_agent.synthetic_requests import DOTTED_REQUEST_MAKERS, DOTTED_TOOL_SIGNATURES
from ray_app.paths import DATASET_ROOT, PROJECT_ROOT
from ray_app.prompts import chat_messages, openai_safe_tool_names, openai_tool
from ray_app.prompts.agent_requests import agent_request_prompt

LOADS = ("toolcall", "agent")
TOOLCALL_SPLIT = DATASET_ROOT / "toolcall" / "test.jsonl"
AGENT_LOAD_SEED = 11
AGENT_DISTINCT_REQUESTS = 64


@dataclass(frozen=True)
class LoadRequest:
    """One request of a load: the body fields for our Serve app and for a peer (besides model,
    max_tokens, temperature), which give the model the same prompt."""

    ours: dict[str, Any]
    peer: dict[str, Any]


def toolcall_load(count: int, split_path: Path = TOOLCALL_SPLIT) -> list[LoadRequest]:
    rows = read_split(split_path)
    requests = []
    for index in range(count):
        body = {"messages": chat_messages(rows[index % len(rows)].prompt)}
        requests.append(LoadRequest(ours=body, peer=body))
    return requests


def agent_tools() -> list[dict[str, Any]]:
    """The support desk's tools as an OpenAI-integrated agent offers them (dots are not allowed there)."""
    aliases = openai_safe_tool_names([signature["name"] for signature in DOTTED_TOOL_SIGNATURES])
    return [openai_tool(signature, aliases[signature["name"]]) for signature in DOTTED_TOOL_SIGNATURES]


def distinct_agent_queries(count: int, seed: int = AGENT_LOAD_SEED) -> list[str]:
    """`count` different user requests from the dummy agent's templates, the kinds of request taking
    turns (customer lookup, ticket, invoice, article search); the same list for a given seed."""
    rng = random.Random(seed)
    queries: list[str] = []
    for _ in range(50 * count):  # at most 20 article searches exist; this bounds the search when count wants more
        if len(queries) == count:
            return queries
        query, _, _ = DOTTED_REQUEST_MAKERS[len(queries) % len(DOTTED_REQUEST_MAKERS)](rng)
        if query not in queries:
            queries.append(query)
    raise ValueError(f"the dummy agent's templates gave fewer than {count} different requests")


def agent_load(count: int, seed: int = AGENT_LOAD_SEED) -> list[LoadRequest]:
    tools = agent_tools()
    queries = distinct_agent_queries(min(count, AGENT_DISTINCT_REQUESTS), seed)
    requests = []
    for index in range(count):
        messages = [
            {"role": "system", "content": AGENT_SYSTEM_PROMPT},
            {"role": "user", "content": queries[index % len(queries)]},
        ]
        peer_messages = agent_request_prompt(messages, tools).messages
        requests.append(LoadRequest(ours={"messages": messages, "tools": tools}, peer={"messages": peer_messages}))
    return requests


def load_requests(load: str, count: int) -> list[LoadRequest]:
    return {"toolcall": toolcall_load, "agent": agent_load}[load](count)


def load_description(load: str) -> str:
    if load == "toolcall":
        return f"{os.path.relpath(TOOLCALL_SPLIT, PROJECT_ROOT)} as chat_messages(prompt), cycled in file order"
    return (
        f"{AGENT_DISTINCT_REQUESTS} distinct dummy-agent requests (seed {AGENT_LOAD_SEED}) with its 4 support-desk "
        "tools as OpenAI tools (ours) / the same toolcall prompt as chat messages (peers), cycled"
    )
