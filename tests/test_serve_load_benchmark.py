"""benchmarks/serve_load.py and its parts: statistics, the two loads, the machine-limit arithmetic,
flags, the load generator against a server on 127.0.0.1, the server-process lifecycle, the report of
a whole run against a stand-in llama-server, and (slow) the whole run on a tiny model with the real
`slm-swap serve`. Nothing here builds llama.cpp.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import (
    build_llama_server,
    llama_cpp_server,
    llama_server,
    machine_limits,
    serve_load,
    serve_load_servers,
)
from benchmarks import serve_load_requests as loads
from benchmarks.server_process import ServerProcess, free_port, process_group_alive
from ray_app.data.rows import read_split
from ray_app.dummy_agent.synthetic_requests import DOTTED_TOOL_SIGNATURES
from ray_app.models import demo_checkpoint
from ray_app.prompts import chat_messages, toolcall_prompt
from ray_app.prompts.agent_requests import agent_request_prompt
from tests.recording_server import RecordingServer

SMOLLM2_135M_CONFIG = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
}


# --- statistics ----------------------------------------------------------------------------------


def test_percentile_matches_numpy_linear_interpolation():
    for values in ([3.0], [2.0, 1.0], [5.0, 1.0, 4.0, 2.0, 3.0], [0.1 * i * i for i in range(37)]):
        for fraction in (0.0, 0.5, 0.95, 1.0):
            assert serve_load.percentile(values, fraction) == pytest.approx(np.percentile(values, fraction * 100))


def test_load_summary_divides_by_the_wall_time_of_the_whole_load():
    answered = [
        serve_load.AnsweredRequest(latency, 100 + index, 10, cached_prompt_tokens=50)
        for index, latency in enumerate([1.0, 2.0, 3.0, 4.0])
    ]
    summary = serve_load.load_summary(answered, wall_s=5.0, concurrency=2)
    assert summary == {
        "requests": 4,
        "concurrency": 2,
        "requests_per_s": 0.8,
        "completion_tokens_per_s": 8.0,
        "latency_p50_s": 2.5,
        "latency_p95_s": 3.85,
        "wall_s": 5.0,
        "completion_tokens": 40,
        "prompt_tokens": 406,
        "prompt_tokens_per_request": {"mean": 101.5, "min": 100, "max": 103},
        "cached_prompt_tokens": 200,
    }
    without_cache_counts = [serve_load.AnsweredRequest(1.0, 100, 10), serve_load.AnsweredRequest(1.0, 100, 10, 60)]
    assert serve_load.load_summary(without_cache_counts, 1.0, 1)["cached_prompt_tokens"] is None


# --- the loads -----------------------------------------------------------------------------------


def test_toolcall_load_is_the_test_split_prompts_cycled_in_file_order_alike_for_both_sides():
    rows = read_split(loads.TOOLCALL_SPLIT)
    requests = loads.toolcall_load(len(rows) + 3)
    assert len(requests) == len(rows) + 3
    assert requests[0].ours == requests[0].peer == {"messages": chat_messages(rows[0].prompt)}
    assert requests[len(rows) + 2].peer == {"messages": chat_messages(rows[2].prompt)}


def test_agent_load_is_deterministic_distinct_and_takes_the_kinds_of_request_in_turn():
    first, again = loads.agent_load(70), loads.agent_load(70)
    assert first == again
    queries = [request.ours["messages"][-1]["content"] for request in first]
    assert len(set(queries[: loads.AGENT_DISTINCT_REQUESTS])) == loads.AGENT_DISTINCT_REQUESTS
    assert queries[64:] == queries[:6]  # cycled after the distinct ones
    assert queries[0].startswith("Can you pull up") and queries[1].startswith("Open a")
    assert queries[2].startswith("What are the line items") and queries[3].startswith("Find ")
    assert loads.distinct_agent_queries(8, seed=1) != loads.distinct_agent_queries(8, seed=2)


def test_agent_requests_carry_the_support_desk_tools_and_both_sides_get_the_same_prompt():
    request = loads.agent_load(1)[0]
    names = [tool["function"]["name"] for tool in request.ours["tools"]]
    assert names == ["crm_lookup_customer", "crm_create_ticket", "billing_get_invoice", "kb_search_articles"]
    assert [message["role"] for message in request.ours["messages"]] == ["system", "user"]
    query = request.ours["messages"][-1]["content"]
    aliased = [{**signature, "name": name} for signature, name in zip(DOTTED_TOOL_SIGNATURES, names, strict=True)]
    assert request.peer == {"messages": chat_messages(toolcall_prompt(aliased, query))}
    # what our Serve app makes of the agent's request is exactly what the peer is sent
    assert agent_request_prompt(request.ours["messages"], request.ours["tools"]).messages == request.peer["messages"]


def test_too_many_distinct_agent_requests_is_an_error_not_an_endless_search():
    with pytest.raises(ValueError, match="fewer than 200 different requests"):
        loads.distinct_agent_queries(200)  # 50 article searches wanted, 20 exist


# --- this machine's limit ------------------------------------------------------------------------


def test_cpu_description_reads_the_model_name_and_features_of_the_first_processor():
    cpuinfo = (
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n\n"
        "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n"
    )
    description = machine_limits.cpu_description(cpuinfo)
    assert description["model_name"] == "Intel(R) Xeon(R) Processor"
    assert description["avx2"] and description["avx512_bf16"] and description["amx_tile"]
    assert not description["amx_bf16"] and not description["avx512_vnni"]


def test_parameter_counts_of_smollm2_135m_match_its_gguf():
    # per layer: q, o 576x576; k, v 576x192; gate, up, down 576x1536 → 3,538,944; 30 layers
    assert machine_limits.matmul_parameters(SMOLLM2_135M_CONFIG) == 106_168_320
    # + the tied 49,152 x 576 embedding; the GGUF's 134,515,008 elements add 61 norm vectors of 576
    assert machine_limits.all_parameters(SMOLLM2_135M_CONFIG) + 61 * 576 == 134_515_008


def test_limit_fraction_adds_the_prefill_and_decode_floors_and_divides_by_the_wall_time():
    limit = machine_limits.limit_fraction(
        prompt_tokens=10_000, completion_tokens=1_600, clients=16, wall_s=10.0, matmul_params=100_000_000,
        weight_bytes=200_000_000, gemm_gflops_used=500.0, copy_gb_per_s_measured=20.0,
    )  # fmt: skip
    # prefill 10,000 × 2 × 1e8 / 5e11 = 4 s; decode 1,600 / 16 = 100 steps × 2e8 B / 2e10 B/s = 1 s
    assert limit == {"prefill_floor_s": 4.0, "decode_floor_s": 1.0, "weight_bytes": 200_000_000,
                     "fraction_of_limit": 0.5}  # fmt: skip


def test_probes_measure_positive_rates_on_small_shapes():
    assert machine_limits.gemm_gflops("fp32", rows=8, hidden=16, width=32) > 0
    assert machine_limits.gemm_gflops("bf16", rows=8, hidden=16, width=32) > 0
    assert machine_limits.copy_gb_per_s(1 << 20) > 0


def test_the_machine_probe_times_bf16_only_where_the_cpu_computes_it(monkeypatch):
    """Emulated bf16 (AVX2 only) runs at ~1 GFLOP/s: timing it took two minutes for a figure no floor uses."""
    from ray_app.engines import precision

    timed = []
    monkeypatch.setattr(machine_limits, "gemm_gflops", lambda name, **shape: timed.append(name) or 100.0)
    monkeypatch.setattr(machine_limits, "copy_gb_per_s", lambda: 20.0)
    config = {"hidden_size": 16, "intermediate_size": 32}
    for native, dtypes in ((False, ["fp32"]), (True, ["fp32", "bf16"])):
        support = precision.CpuBf16Support(native=native, evidence="per the test", cpu="test CPU")
        monkeypatch.setattr(precision, "cpu_bf16_support", lambda support=support: support)
        timed.clear()
        machine = machine_limits.probe_machine(config)
        assert timed == dtypes and list(machine["gemm_gflops"]) == dtypes
        assert machine["gemm_bf16"] == ("timed" if native else "not timed: emulated on this CPU (per the test)")


# --- comparisons and flags -----------------------------------------------------------------------


def entry(server, tokens_per_s, p50, size=None, prefix_cache=True):
    facts = {"server": server}
    if server == "ray-serve":
        facts |= {"max_batch_size": size, "prefix_cache": prefix_cache}
    return {**facts, "completion_tokens_per_s": tokens_per_s, "requests_per_s": tokens_per_s / 10, "latency_p50_s": p50}


def test_comparisons_take_our_best_batched_configuration_against_the_faster_llama_server():
    configurations = {
        "ours_batch16": entry("ray-serve", 150.0, 4.0, 16),
        "ours_batch8": entry("ray-serve", 180.0, 3.0, 8),
        "ours_batch1": entry("ray-serve", 60.0, 9.0, 1),
        "ours_batch8_no_prefix_cache": entry("ray-serve", 400.0, 1.0, 8, prefix_cache=False),
        "ours_batch16_no_prefix_cache": entry("ray-serve", 120.0, 1.0, 16, prefix_cache=False),
        "llama_server_q4_1": entry("llama-server", 140.0, 3.5),
        "llama_server_f16": entry("llama-server", 100.0, 2.0),
        "llama_cpp_python": entry("llama-cpp-python", 90.0, 8.0),
    }
    result = serve_load.comparisons(configurations, "toolcall")
    assert result["best_batched_configuration"] == "ours_batch8"  # like with like: the server's default cache on
    assert result["best_llama_server_configuration"] == "llama_server_q4_1"
    assert result["ours_vs_llama_server_throughput_ratio"] == round(180 / 140, 2)
    assert result["ours_without_prefix_cache_vs_llama_server_throughput_ratio"] == round(400 / 140, 2)
    assert result["ours_vs_llama_cpp_python_throughput_ratio"] == 2.0
    assert result["batching_vs_batch1_throughput_ratio"] == 3.0
    assert result["p50_lower_than_llama_server"] is True
    assert result["targets_met"] == {
        "ours_vs_llama_server_throughput_ratio": True,  # 1.29 ≥ 1.2
        "p50_lower_than_llama_server": True,
        "batching_vs_batch1_throughput_ratio": True,
    }
    agent = serve_load.comparisons(configurations, "agent")
    assert agent["targets"] == {"ours_vs_llama_server_throughput_ratio": 1.5}
    assert agent["targets_met"] == {"ours_vs_llama_server_throughput_ratio": False}  # 1.29 < 1.5
    peers_only = serve_load.comparisons({"llama_server_q4_1": entry("llama-server", 140.0, 3.5)}, "toolcall")
    assert peers_only["ours_vs_llama_server_throughput_ratio"] is None
    assert peers_only["targets_met"]["p50_lower_than_llama_server"] is None


def test_our_server_runs_without_the_prefix_cache_when_asked():
    on = serve_load_servers.our_server_command(Path("m"), Path("a"), "bf16", 16, 8000)
    off = serve_load_servers.our_server_command(Path("m"), Path("a"), "bf16", 16, 8000, prefix_cache=False)
    assert "--prefix-cache-tokens" not in on and off == [*on, "--prefix-cache-tokens", "0"]


def test_llama_server_gets_one_slot_per_client_with_room_for_each_prompt_on_localhost():
    command = llama_server.llama_server_command(Path("/b/llama-server"), Path("m.gguf"), 8123, slots=16, threads=2)
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    assert command[0] == "/b/llama-server"
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "8123"
    assert flags["--parallel"] == "16" and flags["--ctx-size"] == str(16 * llama_server.SLOT_CONTEXT_TOKENS)
    assert flags["--threads"] == flags["--threads-batch"] == "2" and flags["--temp"] == "0"
    assert "--cont-batching" in command and "--cache-prompt" in command
    assert llama_server.SLOT_CONTEXT_TOKENS >= 1054 + 64  # the longest toolcall test prompt + max_tokens


def test_defaults_run_both_loads_against_llama_server_on_both_ggufs():
    args = serve_load.parse_args([])
    assert (args.load, args.peers, args.llama_server_ggufs, args.clients) == ("both", ["llama-server"],
                                                                             ["q4_1", "f16"], 16)  # fmt: skip
    assert serve_load.parse_args(["--peers", "llama-cpp-python,llama-server"]).peers == [
        "llama-cpp-python", "llama-server"
    ]  # fmt: skip
    assert serve_load.parse_args(["--peers", "none"]).peers == []
    assert serve_load.parse_args(["--llama-server-ggufs", "f16"]).llama_server_ggufs == ["f16"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--batch-sizes", "16,0"], "--batch-sizes"),
        (["--batch-sizes", "sixteen"], "--batch-sizes"),
        (["--batch-sizes", ","], "--batch-sizes"),
        (["--peers", "vllm"], "--peers takes"),
        (["--llama-server-ggufs", "q8_0"], "--llama-server-ggufs takes"),
        (["--load", "chat"], "--load"),
        (["--skip-ours", "--peers", "none"], "leaves nothing to run"),
        (["--model-path", "m"], "add --peers none"),
    ],
)
def test_bad_flags_stop_with_a_message_naming_the_flag(arguments, message, capsys):
    with pytest.raises(SystemExit):
        serve_load.parse_args(arguments)
    assert message in capsys.readouterr().err


def test_without_a_built_llama_server_the_run_stops_before_any_work_and_says_how_to_build_it(
    monkeypatch, capsys, tmp_path
):
    monkeypatch.setattr(llama_server, "server_binary", lambda root=None: tmp_path / "missing" / "llama-server")
    assert serve_load.main(["--requests", "1"]) == 2
    message = capsys.readouterr().err
    assert "benchmarks/build_llama_server.py" in message and "--peers none" in message


def test_without_llama_cpp_python_the_run_stops_before_any_work_and_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setattr(llama_cpp_server, "installed_llama_cpp_version", lambda: None)
    assert serve_load.main(["--requests", "1", "--peers", "llama-cpp-python"]) == 2
    message = capsys.readouterr().err
    assert f"pip install 'llama-cpp-python[server]=={llama_cpp_server.LLAMA_CPP_VERSION}'" in message


def test_build_is_skipped_only_for_both_binaries_built_from_the_pinned_sdist_with_todays_flags(tmp_path):
    def record(**changes):
        built = {"sdist_sha256": build_llama_server.SDIST_SHA256, "cmake_flags": list(build_llama_server.cmake_flags())}
        (tmp_path / "build.json").write_text(json.dumps({**built, **changes}))

    assert not build_llama_server.built_from_pinned_sdist(tmp_path)
    (tmp_path / "bin").mkdir()
    for target in build_llama_server.TARGETS:
        (tmp_path / "bin" / target).write_text("binary")
    record()
    assert build_llama_server.built_from_pinned_sdist(tmp_path)
    record(sdist_sha256="0" * 64)
    assert not build_llama_server.built_from_pinned_sdist(tmp_path)  # another source
    record(cmake_flags=["-DCMAKE_BUILD_TYPE=Release"])
    assert not build_llama_server.built_from_pinned_sdist(tmp_path)  # other flags (AMX still on, say)
    assert not build_llama_server.built_from_pinned_sdist(tmp_path, "avx2")  # built for this CPU, not AVX2 only
    record(cmake_flags=list(build_llama_server.cmake_flags("avx2")))
    assert build_llama_server.built_from_pinned_sdist(tmp_path, "avx2")
    record()
    (tmp_path / "bin" / "llama-quantize").unlink()
    assert not build_llama_server.built_from_pinned_sdist(tmp_path)


def test_each_isa_is_built_in_its_own_folder_and_the_avx2_build_leaves_avx512_out():
    assert build_llama_server.build_root() == build_llama_server.BUILD_ROOT
    assert build_llama_server.build_root("avx2") != build_llama_server.BUILD_ROOT
    avx2 = build_llama_server.cmake_flags("avx2")
    assert "-DGGML_NATIVE=OFF" in avx2 and "-DGGML_AVX2=ON" in avx2 and "-DGGML_AVX512=OFF" in avx2
    assert "-DGGML_NATIVE=ON" in build_llama_server.cmake_flags("native")
    with pytest.raises(ValueError, match="isa must be one of"):
        build_llama_server.build_root("avx512")


# --- the load generator and the server processes -------------------------------------------------


def test_load_keeps_exactly_the_client_count_in_flight_and_counts_usage_tokens():
    in_flight, peak, lock = [0], [0], threading.Lock()

    def answer(request):
        body = request.json()
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)  # long enough for every client to have its request in flight
        with lock:
            in_flight[0] -= 1
        completion_tokens = len(body["messages"][-1]["content"])  # differs per request
        return 200, {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": completion_tokens,
                      "total_tokens": 7 + completion_tokens, "prompt_tokens_details": {"cached_tokens": 5}},
        }, {}  # fmt: skip

    bodies = [{"messages": [{"role": "user", "content": "x" * (index + 1)}]} for index in range(12)]
    bodies[0]["tools"] = loads.agent_tools()
    with RecordingServer(answer) as server:
        answered, wall_s = asyncio.run(serve_load.send_load(server.url, "m", bodies, 3, 16, extra_body={"top_k": 1}))
    assert peak[0] == 3
    assert [request.completion_tokens for request in answered] == list(range(1, 13))
    assert {request.cached_prompt_tokens for request in answered} == {5}
    assert wall_s >= 4 * 0.05  # 12 requests, 3 at a time
    sent = sorted((request.json() for request in server.requests), key=lambda body: len(body["messages"][0]["content"]))
    assert [len(body["messages"][0]["content"]) for body in sent] == list(range(1, 13))
    assert sent[0]["tools"] == loads.agent_tools() and all("tools" not in body for body in sent[1:])
    assert all(body["max_tokens"] == 16 and body["temperature"] == 0 and body["top_k"] == 1 for body in sent)


def test_a_failed_request_stops_the_load_naming_the_server_and_request():
    failing = RecordingServer(lambda request: (500, {"error": {"message": "boom"}}, {}))
    with failing as server, pytest.raises(RuntimeError, match=r"request 0 \(m\) failed"):
        asyncio.run(serve_load.send_load(server.url, "m", [{"messages": [{"role": "user", "content": "hi"}]}], 1, 4))


def test_server_process_waits_until_ready_and_leaves_no_process_of_its_group(tmp_path):
    port = free_port()
    # The server starts a child of its own (as the serve CLI starts Ray's daemons): stopping must end both.
    script = (
        "import http.server, subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "time.sleep(1)\n"
        f"http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()\n"
    )
    server = ServerProcess(
        "toy", [sys.executable, "-c", script], f"http://127.0.0.1:{port}/", tmp_path / "toy.log", daemons_exit_s=1.0
    )
    with server:
        group = server.process.pid
        assert server.startup_s >= 1.0
        assert process_group_alive(group)
    assert not process_group_alive(group)


def test_server_process_that_dies_at_start_reports_its_log(tmp_path):
    command = [sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"]
    server = ServerProcess("broken", command, "http://127.0.0.1:9/", tmp_path / "broken.log")
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*no model here"), server:
        pass


# --- whole runs ----------------------------------------------------------------------------------

# A stand-in for the llama-server binary: takes its flags, answers /health and chat completions
# with one completion token per prompt message and the prompt's length in characters as its tokens.
STAND_IN_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
arguments = sys.argv[1:]
port = int(arguments[arguments.index("--port") + 1])
class Handler(BaseHTTPRequestHandler):
    def send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.send({"status": "ok"})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        prompt = sum(len(message["content"]) for message in body["messages"])
        self.send({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": prompt, "completion_tokens": len(body["messages"]),
                             "total_tokens": prompt + len(body["messages"])}})
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def test_a_peers_only_run_reports_each_load_with_its_limit_fraction(monkeypatch, tmp_path, capsys):
    binary = tmp_path / "llama-server"
    binary.write_text(f"#!{sys.executable}\n{STAND_IN_SERVER}")
    binary.chmod(0o755)
    ggufs = {"q4_1": tmp_path / "m.Q4_1.gguf", "f16": tmp_path / "m.F16.gguf"}
    for path, size in zip(ggufs.values(), (1000, 3000), strict=True):
        path.write_bytes(b"\0" * size)
    machine = {"cpu": {"model_name": "test"}, "cores": 2, "gemm_gflops": {"fp32": 1.0, "bf16": 2.0},
               "gemm_gflops_used": 2.0, "copy_gb_per_s": 1.0}  # fmt: skip
    isas = []  # the build each asked for: the one named on the command line
    monkeypatch.setattr(llama_server, "require_llama_server", lambda isa: isas.append(isa) or binary)
    monkeypatch.setattr(llama_server, "demo_ggufs", lambda kinds, isa: isas.append(isa) or {k: ggufs[k] for k in kinds})
    monkeypatch.setattr(serve_load, "probe_machine", lambda config: machine)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setattr(serve_load, "LOG_DIR", tmp_path / "logs")
    # the peers run the demo GGUFs, so the floors use the demo SLM's shape (its config alone here)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "config.json").write_text(json.dumps(SMOLLM2_135M_CONFIG))
    monkeypatch.setattr(demo_checkpoint, "fetch_demo_model", lambda: (tmp_path / "demo", False))
    output = tmp_path / "report.json"
    arguments = ["--skip-ours", "--clients", "2", "--requests", "4", "--max-tokens", "4", "--output", str(output),
                 "--llama-server-isa", "avx2"]  # fmt: skip
    assert serve_load.main(arguments) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(output.read_text())
    assert isas == ["avx2", "avx2"] and report["llama_server_isa"] == "avx2"
    assert report["isa_limits"]["ATEN_CPU_CAPABILITY"] == "avx2"
    assert report["machine"] == machine and report["ggufs"] == {kind: str(path) for kind, path in ggufs.items()}
    assert list(report["servers"]) == ["llama_server_q4_1", "llama_server_f16"]
    assert list(report["loads"]) == ["toolcall", "agent"]
    for load, requests in (("toolcall", loads.toolcall_load(4)), ("agent", loads.agent_load(4))):
        section = report["loads"][load]
        assert set(section["configurations"]) == {"llama_server_q4_1", "llama_server_f16"}
        prompt_chars = sum(len(message["content"]) for request in requests for message in request.peer["messages"])
        for name, size in (("llama_server_q4_1", 1000), ("llama_server_f16", 3000)):
            result = section["configurations"][name]
            assert result["server"] == "llama-server" and result["parallel_slots"] == 2
            assert (
                result["requests"] == 4 and result["completion_tokens"] == 8 and result["prompt_tokens"] == prompt_chars
            )
            limit = result["limit"]
            assert limit["weight_bytes"] == size
            assert limit["prefill_floor_s"] == round(prompt_chars * 2 * 106_168_320 / 2e9, 2)
            assert limit["decode_floor_s"] == round(8 / 2 * size / 1e9, 2)
            assert limit["fraction_of_limit"] > 0
        assert section["ours_vs_llama_server_throughput_ratio"] is None
        assert section["best_llama_server_configuration"] in section["configurations"]
        assert section["targets"] == serve_load.TARGETS[load]
    assert os.path.isfile(report["servers"]["llama_server_f16"]["log"])


@pytest.mark.slow
def test_whole_run_on_a_tiny_model_with_the_real_serve_cli(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "report.json"
    arguments = [
        "--model-path", str(tiny_model_dir), "--peers", "none", "--clients", "3", "--requests", "6",
        "--max-tokens", "4", "--batch-sizes", "4,1", "--precision", "fp32", "--output", str(output),
        "--prefix-cache", "on",
    ]  # fmt: skip
    assert serve_load.main(arguments) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(output.read_text())
    assert list(report["servers"]) == ["ours_batch4", "ours_batch1"]
    for load in ("toolcall", "agent"):
        section = report["loads"][load]
        assert list(section["configurations"]) == ["ours_batch4", "ours_batch1"]
        for entry in section["configurations"].values():
            assert entry["requests"] == 6 and entry["concurrency"] == 3
            assert 0 < entry["completion_tokens"] <= 6 * 4
            assert entry["latency_p50_s"] <= entry["latency_p95_s"]
            assert entry["precision"] == "fp32" and entry["limit"]["fraction_of_limit"] > 0
        assert section["batching_vs_batch1_throughput_ratio"] > 0
        assert section["ours_vs_llama_server_throughput_ratio"] is None
    assert os.path.isfile(report["servers"]["ours_batch1"]["log"])
