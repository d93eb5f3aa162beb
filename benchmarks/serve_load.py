"""Load test of the Serve app: batching on vs max batch size 1, and against llama-cpp-python's server.

N concurrent clients on 127.0.0.1 send a fixed list of chat requests (the toolcall test split's
prompts as `chat_messages(prompt)`, cycled to --requests, the same list for every server; fixed
max_tokens, temperature 0), each client taking the next request from a shared queue as soon as
its previous one is answered. Configurations, one after another, each server shut down before the
next starts so none shares the cores:

- ours with each --batch-sizes value (`python -m ray_app serve --max-batch-size B`, the demo SLM at
  --precision, no adapters), and with `--prefix-cache both` (the default) each batched size again
  with the shared-prefix cache off: cycled prompts repeat their tool signatures, which the cache
  keeps, so the run shows what the cache adds;
- llama-cpp-python's OpenAI-compatible server on the demo SLM's own Q4_1 GGUF, every core
  (`repeat_penalty: 1.0` and temperature 0: its defaults differ from greedy decoding).

Each server gets two warm-up requests before the clock starts. Completion tokens come from each
response's `usage`; throughput is completion tokens/s over the wall time of the whole load.
Prints one JSON object on stdout (progress and server logs' paths on stderr). Targets on 2 CPU
cores with the demo SLM at 16 clients: batching ≥ 2.5× batch size 1; ours ≥ 2× llama.cpp's
throughput with a lower p50 latency.

    .venv/bin/python benchmarks/serve_load.py [--clients 16] [--requests 64] [--max-tokens 64]
        [--batch-sizes 16,1] [--precision bf16] [--prefix-cache both|on|off] [--skip-llama-cpp] [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/serve_load.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

from benchmarks.llama_cpp_server import (  # noqa: E402
    LLAMA_CPP_MODEL_ALIAS,
    LlamaCppUnavailable,
    demo_gguf,
    llama_cpp_server_command,
    require_llama_cpp,
)
from ray_app.atomic_files import atomic_write_json  # noqa: E402
from ray_app.data.rows import read_split  # noqa: E402
from ray_app.eval.run_facts import package_versions  # noqa: E402
from ray_app.paths import DATASET_ROOT, PROJECT_ROOT  # noqa: E402
from ray_app.prompts import chat_messages  # noqa: E402

TARGET_BATCHING_VS_BATCH1 = 2.5
TARGET_OURS_VS_LLAMA_CPP = 2.0
REQUEST_SPLIT = DATASET_ROOT / "toolcall" / "test.jsonl"
LOG_DIR = PROJECT_ROOT / "storage" / "benchmarks" / "serve_load"
WARMUP_REQUESTS = 2
STARTUP_TIMEOUT_S = 600.0  # Ray start + model load on a busy 2-core machine
REQUEST_TIMEOUT_S = 1800.0  # a request queued behind 63 others at batch size 1 waits minutes
OUR_MODEL_NAME = "slm"  # the base model's name in the Serve app

console = Console(stderr=True)


def say(text: str) -> None:
    """One progress line on stderr, printed as is (no rich markup: names like [ours_batch16] are text)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


# --- the load ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnsweredRequest:
    latency_s: float
    prompt_tokens: int
    completion_tokens: int


def request_conversations(split_path: Path, count: int) -> list[list[dict[str, str]]]:
    """`count` chat requests: the split's prompts in file order, cycled when count exceeds the rows."""
    rows = read_split(split_path)
    return [chat_messages(rows[index % len(rows)].prompt) for index in range(count)]


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), so p50 of [1, 2] is 1.5."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def load_summary(answered: list[AnsweredRequest], wall_s: float, concurrency: int) -> dict:
    latencies = [request.latency_s for request in answered]
    completion_tokens = sum(request.completion_tokens for request in answered)
    return {
        "requests": len(answered),
        "concurrency": concurrency,
        "requests_per_s": round(len(answered) / wall_s, 3),
        "completion_tokens_per_s": round(completion_tokens / wall_s, 2),
        "latency_p50_s": round(percentile(latencies, 0.50), 3),
        "latency_p95_s": round(percentile(latencies, 0.95), 3),
        "wall_s": round(wall_s, 2),
        "completion_tokens": completion_tokens,
        "mean_prompt_tokens": round(sum(request.prompt_tokens for request in answered) / len(answered), 1),
    }


async def send_load(
    base_url: str,
    model: str,
    conversations: list[list[dict[str, str]]],
    clients: int,
    max_tokens: int,
    extra_body: dict | None = None,
    progress: Progress | None = None,
) -> tuple[list[AnsweredRequest], float]:
    """Every conversation answered once by `clients` concurrent workers; (answers in list order, wall s)."""
    from openai import APIError, AsyncOpenAI

    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(conversations)):
        queue.put_nowait(index)
    answered: list[AnsweredRequest | None] = [None] * len(conversations)
    task = progress.add_task(model, total=len(conversations)) if progress else None

    async with AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0, timeout=REQUEST_TIMEOUT_S
    ) as client:

        async def client_worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                started = time.perf_counter()
                try:
                    response = await client.chat.completions.create(
                        model=model,
                        messages=conversations[index],
                        max_tokens=max_tokens,
                        temperature=0,
                        extra_body=extra_body,
                    )
                except APIError as error:  # a failed request would make every number wrong: stop
                    raise RuntimeError(f"{base_url}: request {index} ({model}) failed: {error}") from error
                latency_s = time.perf_counter() - started
                if response.usage is None:
                    raise RuntimeError(f"{base_url}: the answer to request {index} has no usage to count tokens from")
                answered[index] = AnsweredRequest(
                    latency_s, response.usage.prompt_tokens, response.usage.completion_tokens
                )
                if progress is not None:
                    progress.advance(task)

        started = time.perf_counter()
        await asyncio.gather(*(client_worker() for _ in range(clients)))
        wall_s = time.perf_counter() - started
    return answered, wall_s  # type: ignore[return-value]


# --- the servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """A server subprocess in its own process group (Ray's daemons included), logging to a file.

    Entered: started and answering `ready_url` (HTTP 200). Left: SIGTERM, then SIGKILL for whatever
    of its process group is still alive after the grace period, so the next server has the cores.
    """

    def __init__(self, name: str, command: list[str], ready_url: str, log_path: Path, daemons_exit_s: float = 15.0):
        self.name, self.command, self.ready_url, self.log_path = name, command, ready_url, log_path
        self.daemons_exit_s = daemons_exit_s  # after the leader exits, how long its children get to follow
        self.process: subprocess.Popen | None = None
        self.startup_s = 0.0

    def __enter__(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        say(f"[{self.name}] starting; log: {self.log_path}")
        started = time.perf_counter()
        with self.log_path.open("w", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        try:
            self.wait_until_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - started
        say(f"[{self.name}] ready in {self.startup_s:.1f} s")
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def wait_until_ready(self, started: float) -> None:
        while time.perf_counter() - started < STARTUP_TIMEOUT_S:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"[{self.name}] exited with code {self.process.returncode} before answering {self.ready_url}; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.ready_url, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1.0)
        raise RuntimeError(
            f"[{self.name}] did not answer {self.ready_url} within {STARTUP_TIMEOUT_S:.0f} s; "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def stop(self, grace_s: float = 60.0) -> None:
        if self.process is None:
            return
        group = self.process.pid  # start_new_session: the group id is the leader's pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the serve CLI shuts Serve and its Ray down on SIGTERM
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                say(f"[{self.name}] still running {grace_s:.0f} s after SIGTERM; killing it")
        if not wait_for_group_exit(group, self.daemons_exit_s):  # Ray's daemons exit once their driver is gone
            say(f"[{self.name}] processes of its group still running {self.daemons_exit_s:.0f} s later; killing them")
            os.killpg(group, signal.SIGKILL)
            self.process.wait()
            wait_for_group_exit(group, timeout_s=10.0)
        self.process = None


def wait_for_group_exit(group: int, timeout_s: float) -> bool:
    """True once no process of the group is left (killed children count until init reaps them)."""
    deadline = time.perf_counter() + timeout_s
    while process_group_alive(group):
        if time.perf_counter() > deadline:
            return False
        time.sleep(0.2)
    return True


def process_group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


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


def measure(
    server: ServerProcess,
    base_url: str,
    model: str,
    conversations: list[list[dict[str, str]]],
    clients: int,
    max_tokens: int,
    extra_body: dict | None = None,
) -> dict:
    """Start the server, warm it up, time the load, stop it; the configuration's summary."""
    load_before = round(os.getloadavg()[0], 2)
    with server:
        asyncio.run(
            send_load(base_url, model, conversations[:WARMUP_REQUESTS], WARMUP_REQUESTS, max_tokens, extra_body)
        )
        columns = (TextColumn(f"[{server.name}]", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            answered, wall_s = asyncio.run(
                send_load(base_url, model, conversations, clients, max_tokens, extra_body, progress)
            )
    summary = load_summary(answered, wall_s, clients)
    say(
        f"[{server.name}] {summary['completion_tokens_per_s']} tok/s, {summary['requests_per_s']} req/s, "
        f"p50 {summary['latency_p50_s']} s, p95 {summary['latency_p95_s']} s"
    )
    return {**summary, "startup_s": round(server.startup_s, 1), "load_average_1min_before": load_before,
            "log": str(server.log_path)}  # fmt: skip


# --- the run -----------------------------------------------------------------------------------


def at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def comparisons(configurations: dict[str, dict]) -> dict:
    """The ratios the targets are about, for our best batched configuration; throughput = completion tokens/s."""

    def best_batched(prefix_cache: bool) -> str | None:
        names = [name for name, entry in configurations.items()
                 if entry.get("max_batch_size", 1) > 1 and entry.get("prefix_cache", True) == prefix_cache]  # fmt: skip
        return max(names, key=lambda name: configurations[name]["completion_tokens_per_s"], default=None)

    best_name = best_batched(prefix_cache=True)
    best = configurations.get(best_name)
    without_prefix_cache = configurations.get(best_batched(prefix_cache=False))
    batch1 = next((entry for entry in configurations.values() if entry.get("max_batch_size") == 1), None)
    llama_cpp = configurations.get("llama_cpp")

    def ratio(ours: dict | None, other: dict | None, key: str) -> float | None:
        return round(ours[key] / other[key], 2) if ours and other else None

    batching_ratio = ratio(best, batch1, "completion_tokens_per_s")
    llama_cpp_ratio = ratio(best, llama_cpp, "completion_tokens_per_s")
    p50_lower = best["latency_p50_s"] < llama_cpp["latency_p50_s"] if best and llama_cpp else None
    return {
        "throughput": "completion tokens/s",
        "best_batched_configuration": best_name,
        "batching_vs_batch1_throughput_ratio": batching_ratio,
        "ours_vs_llama_cpp_throughput_ratio": llama_cpp_ratio,
        "ours_vs_llama_cpp_requests_ratio": ratio(best, llama_cpp, "requests_per_s"),
        "ours_without_prefix_cache_vs_llama_cpp_throughput_ratio": ratio(
            without_prefix_cache, llama_cpp, "completion_tokens_per_s"
        ),
        "p50_lower_than_llama_cpp": p50_lower,
        "targets": {
            "batching_vs_batch1_throughput_ratio": TARGET_BATCHING_VS_BATCH1,
            "ours_vs_llama_cpp_throughput_ratio": TARGET_OURS_VS_LLAMA_CPP,
            "p50_lower_than_llama_cpp": True,
        },
        "targets_met": {
            "batching_vs_batch1_throughput_ratio": at_least(batching_ratio, TARGET_BATCHING_VS_BATCH1),
            "ours_vs_llama_cpp_throughput_ratio": at_least(llama_cpp_ratio, TARGET_OURS_VS_LLAMA_CPP),
            "p50_lower_than_llama_cpp": p50_lower,
        },
    }


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def batch_sizes(text: str) -> list[int]:
    try:
        sizes = [positive_int(part) for part in text.split(",") if part.strip()]
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"--batch-sizes takes positive integers like 16,1; got {text!r}") from None
    if not sizes:
        raise argparse.ArgumentTypeError("--batch-sizes needs at least one size")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=positive_int, default=16, help="concurrent clients")
    parser.add_argument("--requests", type=positive_int, default=64, help="timed requests per configuration")
    parser.add_argument("--max-tokens", type=positive_int, default=64, help="max_tokens of every request")
    parser.add_argument("--batch-sizes", type=batch_sizes, default=[16, 1], help="our max batch sizes to run")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "auto"], help="our model's precision")
    parser.add_argument("--model-path", type=Path, help="our base SLM (default: the demo SLM, fetched if missing)")
    parser.add_argument(
        "--prefix-cache",
        choices=["on", "off", "both"],
        default="both",
        help="our shared-prefix cache: on (the server's default), off, or both (batched sizes run again without it)",
    )
    parser.add_argument("--skip-llama-cpp", action="store_true", help="run without llama-cpp-python's server")
    parser.add_argument("--output", type=Path, help="also write the JSON report here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.skip_llama_cpp:
        if args.model_path is not None:
            say("--model-path serves another model than the demo GGUF llama.cpp runs; add --skip-llama-cpp")
            return 2
        try:
            require_llama_cpp()  # before any compute: the run is pointless without its peer
        except LlamaCppUnavailable as error:
            say(str(error))
            return 2
    if args.model_path is None:
        from ray_app.models.demo_checkpoint import fetch_demo_model

        model_path, _ = fetch_demo_model()
    else:
        model_path = args.model_path.resolve()
    gguf_path = None if args.skip_llama_cpp else demo_gguf()
    conversations = request_conversations(REQUEST_SPLIT, args.requests)

    configurations: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="serve-load-no-adapters-") as no_adapters:
        runs = [(size, True) for size in args.batch_sizes]
        if args.prefix_cache == "off":
            runs = [(size, False) for size in args.batch_sizes]
        elif args.prefix_cache == "both":
            runs += [(size, False) for size in args.batch_sizes if size > 1]
        for size, prefix_cache in runs:
            name = f"ours_batch{size}" + ("" if prefix_cache else "_no_prefix_cache")
            port = free_port()
            command = our_server_command(model_path, Path(no_adapters), args.precision, size, port, prefix_cache)
            server = ServerProcess(name, command, f"http://127.0.0.1:{port}/health", LOG_DIR / f"{name}.log")
            result = measure(server, f"http://127.0.0.1:{port}", OUR_MODEL_NAME, conversations, args.clients,
                             args.max_tokens)  # fmt: skip
            configurations[name] = {"server": "ray-serve", "max_batch_size": size, "precision": args.precision,
                                    "prefix_cache": prefix_cache, **result}  # fmt: skip
    if gguf_path is not None:
        port = free_port()
        server = ServerProcess(
            "llama_cpp", llama_cpp_server_command(gguf_path, port), f"http://127.0.0.1:{port}/v1/models",
            LOG_DIR / "llama_cpp.log",
        )  # fmt: skip
        result = measure(server, f"http://127.0.0.1:{port}", LLAMA_CPP_MODEL_ALIAS, conversations, args.clients,
                         args.max_tokens, extra_body={"repeat_penalty": 1.0})  # fmt: skip
        configurations["llama_cpp"] = {"server": "llama-cpp-python", "quantization": "Q4_1", "threads": os.cpu_count(),
                                       "request_extras": {"repeat_penalty": 1.0}, **result}  # fmt: skip

    report = {
        "benchmark": "serve_load",
        "model_path": str(model_path),
        "gguf_path": str(gguf_path) if gguf_path else None,
        "precision": args.precision,
        "load": {
            "clients": args.clients,
            "requests": args.requests,
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "warmup_requests": WARMUP_REQUESTS,
            "prompts": f"{REQUEST_SPLIT.relative_to(PROJECT_ROOT)} (cycled in file order)",
        },
        "cpus": os.cpu_count(),
        "versions": package_versions(["torch", "transformers", "ray", "llama_cpp_python"]),
        "configurations": configurations,
        **comparisons(configurations),
    }
    text = json.dumps(report, indent=2)
    if args.output:
        atomic_write_json(args.output, report)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
