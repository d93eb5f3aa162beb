"""The server configurations the serving benchmark compares: ours, llama-server, llama-cpp-python.

A configuration says how to start its server on a port, when it is ready, which body of each
request it gets (ours gets an agent's request as the agent sends it; the llama.cpp servers get the
same prompt as chat messages: benchmarks/serve_load_requests.py), what the report says about it,
and how many weight bytes one decode step reads (for the machine-limit floors).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import llama_cpp_server, llama_server
from benchmarks.machine_limits import BYTES_PER_PARAMETER, all_parameters

PEERS = ("llama-server", "llama-cpp-python")
OUR_MODEL_NAME = "slm"  # the base model's name in the Serve app
LLAMA_CPP_PYTHON_EXTRAS = {"repeat_penalty": 1.0}  # with temperature 0: greedy (its default penalty is 1.1)


@dataclass(frozen=True)
class Configuration:
    name: str
    command_for_port: Callable[[int], list[str]]
    ready_path: str  # answers 200 once the model is loaded
    model: str
    side: str  # "ours" or "peer": which body of a LoadRequest the server gets
    facts: dict  # what the report says about the server
    weight_bytes: float | None  # what one decode step reads; None where unknown
    extra_body: dict | None = None


def our_server_command(
    model_path: Path, adapter_root: Path, precision: str, max_batch_size: int, port: int, prefix_cache: bool = True
) -> list[str]:
    command = [
        sys.executable, "-m", "ray_app", "serve",
        "--model-path", str(model_path),
        "--adapter-root", str(adapter_root),
        "--precision", precision,
        "--max-batch-size", str(max_batch_size),
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    return command if prefix_cache else [*command, "--prefix-cache-tokens", "0"]


def our_configurations(
    batch_sizes: list[int], prefix_cache: str, precision: str, model_path: Path, model_config: dict, no_adapters: Path
) -> list[Configuration]:
    """Each batch size with the prefix cache as asked ("on", "off", or "both": batched sizes again without it)."""
    runs = [(size, prefix_cache != "off") for size in batch_sizes]
    if prefix_cache == "both":
        runs += [(size, False) for size in batch_sizes if size > 1]
    bytes_per_parameter = BYTES_PER_PARAMETER.get(precision)  # "auto" resolves inside the server: unknown here
    weight_bytes = all_parameters(model_config) * bytes_per_parameter if bytes_per_parameter else None
    return [
        Configuration(
            name=f"ours_batch{size}" + ("" if cached else "_no_prefix_cache"),
            command_for_port=lambda port, size=size, cached=cached: our_server_command(
                model_path, no_adapters, precision, size, port, cached
            ),
            ready_path="/health",
            model=OUR_MODEL_NAME,
            side="ours",
            facts={"server": "ray-serve", "max_batch_size": size, "precision": precision, "prefix_cache": cached},
            weight_bytes=weight_bytes,
        )
        for size, cached in runs
    ]


def llama_server_configurations(
    binary: Path,
    ggufs: dict[str, Path],
    kinds: list[str],
    clients: int,
    slot_context_tokens: int = llama_server.SLOT_CONTEXT_TOKENS,
) -> list[Configuration]:
    """llama-server on each GGUF kind, one slot per client of `slot_context_tokens` each."""
    threads = os.cpu_count() or 1
    return [
        Configuration(
            name=f"llama_server_{kind}",
            command_for_port=lambda port, kind=kind: llama_server.llama_server_command(
                binary, ggufs[kind], port, slots=clients, threads=threads, slot_context_tokens=slot_context_tokens
            ),
            ready_path="/health",
            model=llama_server.LLAMA_SERVER_MODEL_ALIAS,
            side="peer",
            facts={
                "server": "llama-server",
                "gguf": kind.upper(),
                "parallel_slots": clients,
                "slot_context_tokens": slot_context_tokens,
                "threads": threads,
                "request_extras": llama_server.REQUEST_EXTRAS,
            },
            weight_bytes=ggufs[kind].stat().st_size,
            extra_body=llama_server.REQUEST_EXTRAS,
        )
        for kind in kinds
    ]


def llama_cpp_python_configuration(q4_1_gguf: Path) -> Configuration:
    threads = os.cpu_count() or 1
    return Configuration(
        name="llama_cpp_python",
        command_for_port=lambda port: llama_cpp_server.llama_cpp_server_command(q4_1_gguf, port, threads),
        ready_path="/v1/models",
        model=llama_cpp_server.LLAMA_CPP_MODEL_ALIAS,
        side="peer",
        facts={
            "server": "llama-cpp-python",
            "gguf": "Q4_1",
            "threads": threads,
            "request_extras": LLAMA_CPP_PYTHON_EXTRAS,
        },  # fmt: skip
        weight_bytes=q4_1_gguf.stat().st_size,
        extra_body=LLAMA_CPP_PYTHON_EXTRAS,
    )


def require_peers(peers: list[str], llama_server_isa: str = "native") -> Path | None:
    """Fail before any compute when a peer cannot run (LlamaCppUnavailable says how to get it);
    llama-server's binary (built for `llama_server_isa`) if it runs."""
    if "llama-cpp-python" in peers:
        llama_cpp_server.require_llama_cpp()
    return llama_server.require_llama_server(llama_server_isa) if "llama-server" in peers else None
