"""Load test of the Serve app against llama.cpp's own `llama-server`, on a toolcall and an agent load.

N concurrent clients on 127.0.0.1 send a fixed list of chat requests (benchmarks/serve_load_requests.py:
`toolcall`, the toolcall test split's prompts; `agent`, one agent's calls, all with the same 4 tools;
every server gets the same prompt text), fixed max_tokens, temperature 0, each client taking the
next request from a shared queue as soon as its previous one is answered. Configurations run one
after another, each server shut down before the next starts so none shares the cores; a server
runs every --load on one start, each load after two warm-up requests of its own:

- ours with each --batch-sizes value (`python -m ray_app serve --max-batch-size B`, the demo SLM at
  --precision, no adapters), and with `--prefix-cache both` (the default) each batched size again
  with the shared-prefix cache off, to show what the cache adds;
- llama-server, the default peer (benchmarks/llama_server.py; built once by
  benchmarks/build_llama_server.py): one parallel slot per client, continuous batching, its prompt
  cache, every core, on the demo SLM's Q4_1 GGUF and on its F16 de-quantisation;
- llama-cpp-python's server if asked (`--peers llama-server,llama-cpp-python`): one request at a time.

Completion and prompt tokens come from each response's `usage`; throughput is completion tokens/s
over the wall time of the whole load. Each configuration also gets its fraction of this machine's
limit (benchmarks/machine_limits.py: a GEMM and a copy probe give prefill and decode floors; the
fraction is their sum over the measured wall time). Targets at 16 clients, against the faster
llama-server configuration: toolcall load ≥ 1.2× its completion tokens/s with a lower p50 (and
batching ≥ 2.5× batch size 1); agent load ≥ 1.5×. Prints one JSON object on stdout (progress and
the server logs' paths on stderr).

    .venv/bin/python benchmarks/build_llama_server.py   # once: 8-18 min on 2 busy cores
    .venv/bin/python benchmarks/serve_load.py [--load toolcall|agent|both] [--clients 16] [--requests 64]
        [--max-tokens 64] [--batch-sizes 16,1] [--precision bf16] [--prefix-cache both|on|off]
        [--peers llama-server[,llama-cpp-python]|none] [--llama-server-ggufs q4_1,f16] [--skip-ours]
        [--llama-server-isa native|avx2]
        [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/serve_load.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

from benchmarks import llama_server  # noqa: E402
from benchmarks.build_llama_server import ISAS  # noqa: E402
from benchmarks.llama_cpp_server import LLAMA_CPP_VERSION, LlamaCppUnavailable  # noqa: E402
from benchmarks.machine_limits import limit_fraction, matmul_parameters, probe_machine  # noqa: E402
from benchmarks.serve_load_requests import LOADS, LoadRequest, load_description, load_requests  # noqa: E402
from benchmarks.serve_load_servers import (  # noqa: E402
    PEERS,
    Configuration,
    llama_cpp_python_configuration,
    llama_server_configurations,
    our_configurations,
    require_peers,
)
from benchmarks.server_process import ServerProcess, console, free_port, say  # noqa: E402
from ray_app.atomic_files import atomic_write_json  # noqa: E402
from ray_app.eval.run_facts import package_versions  # noqa: E402
from ray_app.paths import PROJECT_ROOT  # noqa: E402

TARGETS = {  # per load: ratio ≥ value, or True for a comparison that must hold
    "toolcall": {
        "ours_vs_llama_server_throughput_ratio": 1.2,
        "p50_lower_than_llama_server": True,
        "batching_vs_batch1_throughput_ratio": 2.5,
    },
    "agent": {"ours_vs_llama_server_throughput_ratio": 1.5},
}
LOG_DIR = PROJECT_ROOT / "storage" / "benchmarks" / "serve_load"
WARMUP_REQUESTS = 2
REQUEST_TIMEOUT_S = 1800.0  # a request queued behind 63 others at batch size 1 waits minutes


# --- the load ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnsweredRequest:
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens, where a server reports it


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), so p50 of [1, 2] is 1.5."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def load_summary(answered: list[AnsweredRequest], wall_s: float, concurrency: int) -> dict:
    latencies = [request.latency_s for request in answered]
    prompt_tokens = [request.prompt_tokens for request in answered]
    completion_tokens = sum(request.completion_tokens for request in answered)
    cached = [request.cached_prompt_tokens for request in answered]
    return {
        "requests": len(answered),
        "concurrency": concurrency,
        "requests_per_s": round(len(answered) / wall_s, 3),
        "completion_tokens_per_s": round(completion_tokens / wall_s, 2),
        "latency_p50_s": round(percentile(latencies, 0.50), 3),
        "latency_p95_s": round(percentile(latencies, 0.95), 3),
        "wall_s": round(wall_s, 2),
        "completion_tokens": completion_tokens,
        "prompt_tokens": sum(prompt_tokens),
        "prompt_tokens_per_request": {
            "mean": round(sum(prompt_tokens) / len(answered), 1),
            "min": min(prompt_tokens),
            "max": max(prompt_tokens),
        },
        "cached_prompt_tokens": None if None in cached else sum(cached),
    }


async def send_load(
    base_url: str,
    model: str,
    bodies: list[dict],
    clients: int,
    max_tokens: int,
    extra_body: dict | None = None,
    progress: Progress | None = None,
) -> tuple[list[AnsweredRequest], float]:
    """Every request body (messages, and tools where given) answered once by `clients` concurrent
    workers; (answers in list order, wall s)."""
    from openai import APIError, AsyncOpenAI

    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(bodies)):
        queue.put_nowait(index)
    answered: list[AnsweredRequest | None] = [None] * len(bodies)
    task = progress.add_task(model, total=len(bodies)) if progress else None

    async with AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0, timeout=REQUEST_TIMEOUT_S
    ) as client:

        async def client_worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                started = time.perf_counter()
                try:
                    response = await client.chat.completions.create(
                        model=model, max_tokens=max_tokens, temperature=0, extra_body=extra_body, **bodies[index]
                    )
                except APIError as error:  # a failed request would make every number wrong: stop
                    raise RuntimeError(f"{base_url}: request {index} ({model}) failed: {error}") from error
                latency_s = time.perf_counter() - started
                usage = response.usage
                if usage is None:
                    raise RuntimeError(f"{base_url}: the answer to request {index} has no usage to count tokens from")
                details = usage.prompt_tokens_details
                cached = details.cached_tokens if details is not None else None
                answered[index] = AnsweredRequest(latency_s, usage.prompt_tokens, usage.completion_tokens, cached)
                if progress is not None:
                    progress.advance(task)

        started = time.perf_counter()
        await asyncio.gather(*(client_worker() for _ in range(clients)))
        wall_s = time.perf_counter() - started
    return answered, wall_s  # type: ignore[return-value]


# --- one configuration's run -------------------------------------------------------------------


def measure(
    configuration: Configuration, loads: dict[str, list[LoadRequest]], clients: int, max_tokens: int
) -> tuple[dict, dict[str, dict]]:
    """Start the server, run every load (warm-up, then timed), stop it; (server facts, summary per load)."""
    port = free_port()
    base_url, load_before = f"http://127.0.0.1:{port}", round(os.getloadavg()[0], 2)
    command, log_path = configuration.command_for_port(port), LOG_DIR / f"{configuration.name}.log"
    server = ServerProcess(configuration.name, command, base_url + configuration.ready_path, log_path)
    summaries = {}
    with server:
        for load, requests in loads.items():
            bodies = [getattr(request, configuration.side) for request in requests]
            warmup = send_load(
                base_url,
                configuration.model,
                bodies[:WARMUP_REQUESTS],
                WARMUP_REQUESTS,
                max_tokens,
                configuration.extra_body,
            )
            asyncio.run(warmup)
            columns = (
                TextColumn(f"[{configuration.name} {load}]", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, transient=True) as progress:
                answered, wall_s = asyncio.run(
                    send_load(
                        base_url, configuration.model, bodies, clients, max_tokens, configuration.extra_body, progress
                    )
                )
            summaries[load] = load_summary(answered, wall_s, clients)
    facts = {
        **configuration.facts,
        "startup_s": round(server.startup_s, 1),
        "load_average_1min_before": load_before,
        "log": str(server.log_path),
    }
    return facts, summaries


# --- the comparisons ---------------------------------------------------------------------------


def at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def comparisons(configurations: dict[str, dict], load: str) -> dict:
    """The ratios the targets are about, for our best batched configuration against the best
    configuration of each peer; throughput = completion tokens/s. Entries carry their server facts."""

    def best(accept: Callable[[dict], bool]) -> str | None:
        names = [name for name, entry in configurations.items() if accept(entry)]
        return max(names, key=lambda name: configurations[name]["completion_tokens_per_s"], default=None)

    def ours(entry: dict, prefix_cache: bool) -> bool:
        return entry["server"] == "ray-serve" and entry["max_batch_size"] > 1 and entry["prefix_cache"] == prefix_cache

    best_name = best(lambda entry: ours(entry, prefix_cache=True))
    batched = configurations.get(best_name)
    without_prefix_cache = configurations.get(best(lambda entry: ours(entry, prefix_cache=False)))
    batch1 = configurations.get(best(lambda entry: entry["server"] == "ray-serve" and entry["max_batch_size"] == 1))
    server_name = best(lambda entry: entry["server"] == "llama-server")
    peer = configurations.get(server_name)
    llama_cpp_python = configurations.get(best(lambda entry: entry["server"] == "llama-cpp-python"))

    def ratio(first: dict | None, second: dict | None, key: str = "completion_tokens_per_s") -> float | None:
        return round(first[key] / second[key], 2) if first and second else None

    values = {
        "ours_vs_llama_server_throughput_ratio": ratio(batched, peer),
        "p50_lower_than_llama_server": batched["latency_p50_s"] < peer["latency_p50_s"] if batched and peer else None,
        "batching_vs_batch1_throughput_ratio": ratio(batched, batch1),
    }
    targets = TARGETS[load]
    return {
        "throughput": "completion tokens/s",
        "best_batched_configuration": best_name,
        "best_llama_server_configuration": server_name,
        **values,
        "ours_vs_llama_server_requests_ratio": ratio(batched, peer, "requests_per_s"),
        "ours_without_prefix_cache_vs_llama_server_throughput_ratio": ratio(without_prefix_cache, peer),
        "ours_vs_llama_cpp_python_throughput_ratio": ratio(batched, llama_cpp_python),
        "targets": targets,
        "targets_met": {
            key: values[key] if target is True else at_least(values[key], target) for key, target in targets.items()
        },
    }


# --- the run -----------------------------------------------------------------------------------


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


def choices_list(flag: str, allowed: tuple[str, ...], allow_none: bool = False) -> Callable[[str], list[str]]:
    """A comma-separated subset of `allowed` (in the order given); "none" for the empty list if allowed."""

    def parse(text: str) -> list[str]:
        if allow_none and text.strip() == "none":
            return []
        items = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [item for item in items if item not in allowed]
        if unknown or not items:
            extra = ' or "none"' if allow_none else ""
            raise argparse.ArgumentTypeError(
                f"{flag} takes a comma-separated list of {', '.join(allowed)}{extra}; got {text!r}"
            )
        return list(dict.fromkeys(items))

    return parse


# torch's, oneDNN's and MKL's instruction-set caps, and the C compiler our attention kernel is built with
ISA_LIMIT_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "CC")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", choices=[*LOADS, "both"], default="both", help="which load(s) to send")
    parser.add_argument("--clients", type=positive_int, default=16, help="concurrent clients (= llama-server slots)")
    parser.add_argument("--requests", type=positive_int, default=64, help="timed requests per load and configuration")
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
    parser.add_argument("--skip-ours", action="store_true", help="run the peers only")
    parser.add_argument(
        "--peers",
        type=choices_list("--peers", PEERS, allow_none=True),
        default=["llama-server"],
        help='peers to run: llama-server (default), llama-cpp-python, both comma-separated, or "none"',
    )
    parser.add_argument(
        "--llama-server-ggufs",
        type=choices_list("--llama-server-ggufs", llama_server.GGUF_KINDS),
        default=list(llama_server.GGUF_KINDS),
        help="the GGUFs llama-server runs (default q4_1,f16)",
    )
    parser.add_argument(
        "--llama-server-isa",
        choices=ISAS,
        default="native",
        help="llama-server built for this CPU (native) or as an AVX2-only CPU runs it (avx2: "
        "build_llama_server.py --isa avx2; beside our engine under benchmarks/avx2_proxy.sh)",
    )
    parser.add_argument("--output", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    if args.skip_ours and not args.peers:
        parser.error("--skip-ours with --peers none leaves nothing to run")
    if args.peers and args.model_path is not None:
        parser.error("--model-path serves another model than the demo GGUFs the peers run; add --peers none")
    return args


def with_limit_fraction(summary: dict, configuration: Configuration, machine: dict, model_config: dict) -> dict:
    if configuration.weight_bytes is None:
        return {**summary, "limit": None}
    limit = limit_fraction(
        summary["prompt_tokens"],
        summary["completion_tokens"],
        summary["concurrency"],
        summary["wall_s"],
        matmul_parameters(model_config),
        configuration.weight_bytes,
        machine["gemm_gflops_used"],
        machine["copy_gb_per_s"],
    )
    return {**summary, "limit": limit}


def result_line(entry: dict) -> str:
    line = (
        f"{entry['completion_tokens_per_s']} tok/s, {entry['requests_per_s']} req/s, p50 {entry['latency_p50_s']} s, "
        f"p95 {entry['latency_p95_s']} s, {entry['prompt_tokens_per_request']['mean']} prompt tokens/request"
    )
    limit = entry["limit"]
    if limit is None:
        return line
    return (
        f"{line}; floors: prefill {limit['prefill_floor_s']} s + decode {limit['decode_floor_s']} s "
        f"= {limit['fraction_of_limit']:.1%} of this machine's limit over {entry['wall_s']} s"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        server_binary = require_peers(args.peers, args.llama_server_isa)
    except LlamaCppUnavailable as error:
        say(str(error))
        return 2
    if args.model_path is None:
        from ray_app.models.demo_checkpoint import fetch_demo_model

        model_path, _ = fetch_demo_model()
    else:
        model_path = args.model_path.resolve()
    model_config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    gguf_kinds = set(args.llama_server_ggufs) if "llama-server" in args.peers else set()
    if "llama-cpp-python" in args.peers:
        gguf_kinds.add("q4_1")  # llama-cpp-python runs the Q4_1 file
    ggufs = llama_server.demo_ggufs(sorted(gguf_kinds), args.llama_server_isa)
    load_names = list(LOADS) if args.load == "both" else [args.load]
    loads = {load: load_requests(load, args.requests) for load in load_names}
    say("probing this machine's GEMM rate and memory bandwidth")
    machine = probe_machine(model_config)
    say(f"{machine['cpu']['model_name']}, {machine['cores']} cores: GEMM {machine['gemm_gflops']} GFLOP/s "
        f"(floors use {machine['gemm_gflops_used']}), copy {machine['copy_gb_per_s']} GB/s")  # fmt: skip

    servers: dict[str, dict] = {}
    results: dict[str, dict[str, dict]] = {load: {} for load in load_names}
    with tempfile.TemporaryDirectory(prefix="serve-load-no-adapters-") as no_adapters:
        configurations = []
        if not args.skip_ours:
            configurations += our_configurations(
                args.batch_sizes, args.prefix_cache, args.precision, model_path, model_config, Path(no_adapters)
            )
        if server_binary is not None:
            configurations += llama_server_configurations(server_binary, ggufs, args.llama_server_ggufs, args.clients)
        if "llama-cpp-python" in args.peers:
            configurations.append(llama_cpp_python_configuration(ggufs["q4_1"]))
        for configuration in configurations:
            facts, summaries = measure(configuration, loads, args.clients, args.max_tokens)
            servers[configuration.name] = facts
            for load, summary in summaries.items():
                entry = with_limit_fraction(summary, configuration, machine, model_config)
                results[load][configuration.name] = {**configuration.facts, **entry}
                say(f"[{configuration.name} {load}] {result_line(entry)}")

    report = {
        "benchmark": "serve_load",
        "model_path": str(model_path),
        "ggufs": {kind: str(path) for kind, path in ggufs.items()},
        "precision": args.precision,
        "settings": {
            "clients": args.clients,
            "requests": args.requests,
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "warmup_requests": WARMUP_REQUESTS,
        },
        "machine": machine,
        "llama_server_isa": args.llama_server_isa,
        # our side's instruction set where it is held below the CPU's (benchmarks/avx2_proxy.sh)
        "isa_limits": {name: os.environ[name] for name in ISA_LIMIT_VARIABLES if name in os.environ},
        "versions": {
            **package_versions(["torch", "transformers", "ray", "llama_cpp_python"]),
            "llama_server": f"llama.cpp vendored in llama-cpp-python {LLAMA_CPP_VERSION}",
        },
        "servers": servers,
        "loads": {
            load: {"prompts": load_description(load), "configurations": entries, **comparisons(entries, load)}
            for load, entries in results.items()
        },
    }
    if args.output:
        atomic_write_json(args.output, report)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
