"""How long a short request waits behind a long prompt: our Serve app with chunked prefill vs the same
server prefilling each prompt in one piece (what it did before), in the same run.

The case issue 11 measured: a ~6.9k-token prompt, then, 3 s later, a request for 4 tokens, which
waited 60.7 s for the whole long prefill. Here one client streams the long request (a toolcall
prompt listing the toolcall train split's tool signatures until it reaches --long-prompt-tokens) and
a second client, --delay-s later, streams the short one (a one-line question, --short-max-tokens);
both at temperature 0. Configurations run one after another, each server stopped before the next
starts:

- `ours_chunked`: `slm-swap serve` as shipped: a prompt is prefilled --prefill-chunk-tokens (256 by
  default) at a time between the running rows' decode steps, shortest remaining prompt first;
- `ours_one_piece`: the same server with `--prefill-chunk-tokens` as large as the model's context, so
  the long prompt is prefilled whole before anything else runs;
- `llama_server_q4_1` if asked (`--peers llama-server`; built by benchmarks/build_llama_server.py):
  llama.cpp's server with two slots on the demo SLM's Q4_1 GGUF, for reference.

Each configuration gets one warm-up request first. Reported per configuration: each request's time to
its first token and to its end (from when it was sent), prompt and completion tokens (`usage`), and
whether the short answer ended before the long one's first token, which is the target with chunked
prefill; and what the short request waited with chunked prefill as a share of what it waited
behind the one-piece prefill (a figure: it shrinks as the long prompt grows). Prints one JSON object
on stdout (progress and the server logs' paths on stderr).

    .venv/bin/python benchmarks/long_prompt_wait.py [--long-prompt-tokens 6900] [--delay-s 3]
        [--short-max-tokens 4] [--long-max-tokens 16] [--precision auto] [--peers llama-server|none]
        [--model-path DIR] [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/long_prompt_wait.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import llama_server  # noqa: E402
from benchmarks.llama_cpp_server import LlamaCppUnavailable  # noqa: E402
from benchmarks.machine_limits import cpu_description  # noqa: E402
from benchmarks.serve_load import positive_int  # noqa: E402
from benchmarks.serve_load_servers import Configuration, llama_server_configurations, our_server_command  # noqa: E402
from benchmarks.server_process import ServerProcess, free_port, say  # noqa: E402
from ray_app.atomic_files import atomic_write_json  # noqa: E402
from ray_app.data.rows import read_split  # noqa: E402
from ray_app.eval.run_facts import package_versions  # noqa: E402
from ray_app.models.demo_checkpoint import fetch_demo_model  # noqa: E402
from ray_app.paths import DATASET_ROOT, PROJECT_ROOT  # noqa: E402
from ray_app.prompts import chat_messages, parse_toolcall_prompt, toolcall_prompt  # noqa: E402
from ray_app.serve.serve_settings import ServeSettings  # noqa: E402

LOG_DIR = PROJECT_ROOT / "storage" / "benchmarks" / "long_prompt_wait"
TOOLCALL_TRAIN = DATASET_ROOT / "toolcall" / "train.jsonl"
LONG_QUERY = "Book the cheapest flight from Oslo to Rome next Friday for two adults."
SHORT_QUESTION = "Name a colour."
WARMUP_QUESTION = "Say hello."
REQUEST_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class StreamedAnswer:
    """One streamed request, timed from when it was sent."""

    first_token_s: float | None  # None: no text came (an empty answer)
    done_s: float
    prompt_tokens: int | None  # from the last chunk's usage; None where the server sends none
    completion_tokens: int | None


def long_prompt(tokenizer, target_tokens: int, split_path: Path = TOOLCALL_TRAIN) -> str:
    """A toolcall prompt listing distinct tool signatures of the split, in file order, until its chat
    messages reach `target_tokens` tokens (ValueError when the split's tools cannot make it that long)."""
    signatures, seen = [], set()
    for row in read_split(split_path):
        for signature in parse_toolcall_prompt(row.prompt).signatures:
            if signature["name"] in seen:
                continue
            seen.add(signature["name"])
            signatures.append(signature)
            prompt = toolcall_prompt(signatures, LONG_QUERY)
            if chat_token_count(tokenizer, prompt) >= target_tokens:
                return prompt
    raise ValueError(
        f"{split_path}: its {len(signatures)} distinct tools make a prompt shorter than {target_tokens} tokens"
    )


def chat_token_count(tokenizer, prompt: str) -> int:
    text = tokenizer.apply_chat_template(chat_messages(prompt), add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


async def stream_one(client, model: str, prompt: str, max_tokens: int, extra_body: dict | None) -> StreamedAnswer:
    sent = time.perf_counter()
    first_token_s, usage = None, None
    stream = await client.chat.completions.create(
        model=model,
        messages=chat_messages(prompt),
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra_body,
    )
    async for chunk in stream:
        if first_token_s is None and chunk.choices and chunk.choices[0].delta.content:
            first_token_s = time.perf_counter() - sent
        if chunk.usage is not None:
            usage = chunk.usage
    done_s = time.perf_counter() - sent
    return StreamedAnswer(
        round(first_token_s, 3) if first_token_s is not None else None,
        round(done_s, 3),
        usage.prompt_tokens if usage else None,
        usage.completion_tokens if usage else None,
    )


async def long_then_short(base_url: str, configuration: Configuration, long_text: str, args) -> dict:
    """Warm up, then the long request and, `delay_s` later, the short one; both answers, timed."""
    from openai import AsyncOpenAI

    async with AsyncOpenAI(
        base_url=base_url + "/v1", api_key="none", timeout=REQUEST_TIMEOUT_S, max_retries=0
    ) as client:
        await stream_one(client, configuration.model, WARMUP_QUESTION, 4, configuration.extra_body)
        long_task = asyncio.create_task(
            stream_one(client, configuration.model, long_text, args.long_max_tokens, configuration.extra_body)
        )
        await asyncio.sleep(args.delay_s)
        short = await stream_one(client, configuration.model, SHORT_QUESTION, args.short_max_tokens,
                                 configuration.extra_body)  # fmt: skip
        long = await long_task
    return {"long": asdict(long), "short": asdict(short), **timeline_facts(long, short, args.delay_s)}


def timeline_facts(long: StreamedAnswer, short: StreamedAnswer, delay_s: float) -> dict:
    """What the timeline says, on the long request's clock (the short one was sent `delay_s` after it)."""
    short_done_at = delay_s + short.done_s
    return {
        "short_done_at_s": round(short_done_at, 3),
        "short_done_before_long_first_token": long.first_token_s is not None and short_done_at < long.first_token_s,
    }


def configurations(
    args, model_path: Path, context_tokens: int, no_adapters: Path, server_binary: Path | None
) -> list[Configuration]:
    chunk = args.prefill_chunk_tokens
    found = [
        Configuration(
            name=name,
            command_for_port=lambda port, tokens=tokens: [
                *our_server_command(model_path, no_adapters, args.precision, args.max_batch_size, port),
                "--prefill-chunk-tokens",
                str(tokens),
            ],  # fmt: skip
            ready_path="/health",
            model="slm",
            side="ours",
            facts={
                "server": "ray-serve",
                "precision": args.precision,
                "prefill_chunk_tokens": tokens,
                "max_batch_size": args.max_batch_size,
            },  # fmt: skip
            weight_bytes=None,
        )
        for name, tokens in (("ours_chunked", chunk), ("ours_one_piece", context_tokens))
    ]
    if server_binary is not None:
        q4_1 = llama_server.demo_ggufs(["q4_1"])
        found += llama_server_configurations(server_binary, q4_1, ["q4_1"], 2, slot_context_tokens=context_tokens)
    return found


def comparison(results: dict[str, dict]) -> dict:
    chunked, one_piece = results.get("ours_chunked"), results.get("ours_one_piece")
    if not chunked or not one_piece:
        return {}
    share = chunked["short"]["done_s"] / one_piece["short"]["done_s"]
    return {
        "short_wait_chunked_vs_one_piece": round(share, 3),
        "target": "with chunked prefill the short answer ends before the long prompt's first token",
        "target_met": chunked["short_done_before_long_first_token"],
    }


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long-prompt-tokens", type=positive_int, default=6900, help="the long prompt's length")
    parser.add_argument("--delay-s", type=positive_float, default=3.0, help="when the short request is sent")
    parser.add_argument("--short-max-tokens", type=positive_int, default=4)
    parser.add_argument("--long-max-tokens", type=positive_int, default=16)
    parser.add_argument("--prefill-chunk-tokens", type=positive_int, default=ServeSettings.prefill_chunk_tokens,
                        help="ours_chunked's setting")  # fmt: skip
    parser.add_argument("--max-batch-size", type=positive_int, default=ServeSettings.max_batch_size)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="our model's precision")
    parser.add_argument("--peers", default="none", choices=["none", "llama-server"])
    parser.add_argument("--model-path", type=Path, help="our base SLM (default: the demo SLM, fetched if missing)")
    parser.add_argument("--output", type=Path, help="also write the JSON report here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoTokenizer

    args = parse_args(argv)
    try:
        server_binary = llama_server.require_llama_server() if args.peers == "llama-server" else None
    except LlamaCppUnavailable as error:
        say(str(error))
        return 2
    model_path = args.model_path.resolve() if args.model_path else fetch_demo_model()[0]
    model_config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    context_tokens = int(model_config["max_position_embeddings"])
    if args.long_prompt_tokens + args.long_max_tokens > context_tokens:
        say(f"--long-prompt-tokens {args.long_prompt_tokens} + --long-max-tokens {args.long_max_tokens} exceed "
            f"the model's context ({context_tokens} tokens)")  # fmt: skip
        return 2
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    try:
        long_text = long_prompt(tokenizer, args.long_prompt_tokens)
    except ValueError as error:
        say(str(error))
        return 2
    results, servers = {}, {}
    with tempfile.TemporaryDirectory(prefix="long-prompt-wait-no-adapters-") as no_adapters:
        for configuration in configurations(args, model_path, context_tokens, Path(no_adapters), server_binary):
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            log_path = LOG_DIR / f"{configuration.name}.log"
            command = configuration.command_for_port(port)
            server = ServerProcess(configuration.name, command, base_url + configuration.ready_path, log_path)
            with server:
                result = asyncio.run(long_then_short(base_url, configuration, long_text, args))
            results[configuration.name] = {**configuration.facts, **result}
            servers[configuration.name] = {"startup_s": round(server.startup_s, 1), "log": str(server.log_path)}
            short, long = result["short"], result["long"]
            say(f"[{configuration.name}] short request done {short['done_s']} s after it was sent; "
                f"long prompt's first token at {long['first_token_s']} s, done at {long['done_s']} s")  # fmt: skip
    report = {
        "benchmark": "long_prompt_wait",
        "model_path": str(model_path),
        "precision": args.precision,
        "settings": {
            "long_prompt_tokens_at_least": args.long_prompt_tokens,
            "delay_s": args.delay_s,
            "short_max_tokens": args.short_max_tokens,
            "long_max_tokens": args.long_max_tokens,
            "temperature": 0,
        },
        "machine": {"cpu": cpu_description()},
        "versions": package_versions(["torch", "transformers", "ray"]),
        "servers": servers,
        "configurations": results,
        **comparison(results),
    }
    if args.output:
        atomic_write_json(args.output, report)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
