"""Soak test of `slm-swap serve`: minutes of mixed traffic on 127.0.0.1, then what it left behind.

One server (`python -m ray_app serve`, the demo SLM unless --model-path, no adapters) and --clients
concurrent clients, each sending, until --duration-s has passed or --max-requests were sent, a mix of
(by --mix, default 40/40/20 %):

- plain: a non-streaming request (the toolcall test split's prompts and the agent load's, in turn);
- stream: the same streamed, read to the end (time to first token and total time);
- cancelled: a stream the client closes after its first two chunks (the server must free the row).

Expected: every plain and stream request answered (200, a finish_reason), every cancel freed, and
at the end /health shows no running or waiting row. Anything else is an unexpected error (target 0).
Also reported: p50/p95 latency per kind, the replica's RSS after warm-up and at the end (what a
leak would grow), and the CPU. Loopback only; bounded in time and count. Prints one JSON object.

    .venv/bin/python benchmarks/serve_soak.py [--duration-s 600] [--clients 8] [--max-requests 100000]
        [--max-tokens 32] [--precision auto] [--mix 40,40,20] [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/serve_soak.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from benchmarks.machine_limits import cpu_description  # noqa: E402
from benchmarks.serve_load import percentile  # noqa: E402
from benchmarks.serve_load_requests import load_requests  # noqa: E402
from benchmarks.serve_load_servers import our_server_command  # noqa: E402
from benchmarks.server_process import ServerProcess, free_port, say  # noqa: E402
from ray_app.models.demo_checkpoint import DEMO_MODEL_DIR  # noqa: E402

KINDS = ("plain", "stream", "cancelled")
SEED = 42  # the order of kinds and prompts: the same soak each run


def replica_rss_bytes(server: ServerProcess) -> int:
    """Resident memory of the server's Serve replica(s): where the model and its KV buffers live."""
    group = psutil.Process(server.process.pid).children(recursive=True)
    replicas = [process for process in group if "ServeReplica" in " ".join(process.cmdline())]
    return sum(process.memory_info().rss for process in replicas)


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
        return json.loads(response.read())


async def one_request(client, kind: str, body: dict, max_tokens: int) -> dict:
    started = time.perf_counter()
    request = {"model": "slm", "max_tokens": max_tokens, "temperature": 0, **body}
    if kind == "plain":
        answer = await client.chat.completions.create(**request)
        finish = answer.choices[0].finish_reason
        return {"kind": kind, "ok": finish is not None, "total_s": time.perf_counter() - started, "finish": finish}
    stream = await client.chat.completions.create(**request, stream=True)
    first_token_s, finish, chunks = None, None, 0
    async for chunk in stream:
        chunks += 1
        if (
            first_token_s is None
            and chunk.choices
            and (chunk.choices[0].delta.content or chunk.choices[0].delta.tool_calls)
        ):
            first_token_s = time.perf_counter() - started
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        if kind == "cancelled" and chunks >= 2:
            await stream.close()  # the client leaves mid-answer
            return {"kind": kind, "ok": True, "total_s": time.perf_counter() - started, "finish": "closed"}
    ok = finish is not None or kind == "cancelled"  # a cancel whose answer ended within two chunks
    return {"kind": kind, "ok": ok, "total_s": time.perf_counter() - started, "first_token_s": first_token_s,
            "finish": finish}  # fmt: skip


async def sample_memory(server: ServerProcess, url: str, every_s: float, samples: list[dict], started: float) -> None:
    """The replica's RSS and the prefix cache's size every `every_s`: growth that stops at the cache's cap
    is the cache filling, growth that goes on is a leak."""
    while True:
        cache = (await asyncio.to_thread(health, url)).get("prefix_cache") or {}
        samples.append({"t_s": round(time.perf_counter() - started), "rss_mb": round(replica_rss_bytes(server) / 2**20),
                        "prefix_cache_tokens": cache.get("cached_tokens")})  # fmt: skip
        await asyncio.sleep(every_s)


async def soak(
    url: str, args: argparse.Namespace, server: ServerProcess | None = None, samples: list | None = None
) -> tuple[list[dict], float]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=300)
    bodies = [request.ours for load in ("toolcall", "agent") for request in load_requests(load, 64)]
    chooser = random.Random(SEED)
    weights = [float(part) for part in args.mix.split(",")]
    plan = [(chooser.choices(KINDS, weights)[0], bodies[index % len(bodies)]) for index in range(args.max_requests)]
    deadline = time.perf_counter() + args.duration_s
    results: list[dict] = []
    next_index = 0
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal next_index
        while time.perf_counter() < deadline and next_index < len(plan):
            kind, body = plan[next_index]
            next_index += 1
            try:
                results.append(await one_request(client, kind, body, args.max_tokens))
            except Exception as error:  # an unexpected error: counted and shown, the soak goes on
                results.append({"kind": kind, "ok": False, "error": f"{type(error).__name__}: {error}"[:300]})
            if len(results) % 50 == 0:
                say(f"{len(results)} requests, {sum(not r['ok'] for r in results)} unexpected errors, "
                    f"{time.perf_counter() - started:.0f} s")  # fmt: skip

    sampler = asyncio.create_task(sample_memory(server, url, 60, samples, started)) if server else None
    await asyncio.gather(*(worker() for _ in range(args.clients)))
    if sampler is not None:
        sampler.cancel()
    await client.close()
    return results, time.perf_counter() - started


def kind_summary(results: list[dict], kind: str) -> dict:
    mine = [result for result in results if result["kind"] == kind]
    totals = [result["total_s"] for result in mine if result["ok"]]
    summary = {"requests": len(mine), "answered": len(totals), "finish": dict(Counter(r.get("finish") for r in mine))}
    if totals:
        summary |= {"p50_s": round(percentile(totals, 0.5), 3), "p95_s": round(percentile(totals, 0.95), 3)}
    first = [result["first_token_s"] for result in mine if result.get("first_token_s") is not None]
    if first:
        summary |= {"ttft_p50_s": round(percentile(first, 0.5), 3), "ttft_p95_s": round(percentile(first, 0.95), 3)}
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--model-path", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--mix", default="40,40,20", help="plain,stream,cancelled weights")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if len(args.mix.split(",")) != len(KINDS):
        parser.error("--mix takes three weights: plain,stream,cancelled")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as scratch:
        command = our_server_command(args.model_path, Path(scratch) / "no-adapters", args.precision,
                                     args.max_batch_size, port)  # fmt: skip
        with ServerProcess("ours", command, f"{url}/health", Path(scratch) / "serve.log") as server:
            warm, _ = asyncio.run(soak(url, argparse.Namespace(**{**vars(args), "duration_s": 60, "max_requests": 8})))
            rss_start = replica_rss_bytes(server)
            samples: list[dict] = []
            results, wall_s = asyncio.run(soak(url, args, server, samples))
            time.sleep(1)  # a closed stream's row is freed at the next decode step
            end_health = health(url)
            rss_end = replica_rss_bytes(server)
    unexpected = [result for result in results if not result["ok"]]
    leaked = end_health["decode"]["running"] + end_health["decode"]["waiting"]
    report = {
        "benchmark": "serve_soak",
        "cpu": cpu_description(),
        "model": str(args.model_path),
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "wall_s": round(wall_s, 1),
        "requests": len(results),
        "warm_up_requests": len(warm),
        "unexpected_errors": len(unexpected) + leaked,
        "unexpected_examples": [result.get("error", result) for result in unexpected[:5]],
        "rows_left_in_the_engine": leaked,
        "cancelled_by_the_server": end_health["decode"]["cancelled"],
        "by_kind": {kind: kind_summary(results, kind) for kind in KINDS},
        "replica_rss_mb": {"after_warm_up": round(rss_start / 2**20), "end": round(rss_end / 2**20)},
        "prefix_cache": end_health.get("prefix_cache"),
        "memory_every_60_s": samples,
        "target": "0 unexpected errors; the replica's RSS flat once the prefix cache is full (it holds up to "
        "--prefix-cache-tokens of KV: ~1.5 GB for the demo SLM in fp32 at the default 32,768)",
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0 if report["unexpected_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
