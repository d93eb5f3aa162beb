"""benchmarks/serve_load.py: its statistics, its load generator against a server on 127.0.0.1, the
server-process lifecycle, and (slow) the whole run on a tiny model with the real `slm-swap serve`.
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

from benchmarks import llama_cpp_server, serve_load
from ray_app.data.rows import read_split
from ray_app.prompts import chat_messages
from tests.recording_server import RecordingServer


def test_percentile_matches_numpy_linear_interpolation():
    for values in ([3.0], [2.0, 1.0], [5.0, 1.0, 4.0, 2.0, 3.0], [0.1 * i * i for i in range(37)]):
        for fraction in (0.0, 0.5, 0.95, 1.0):
            assert serve_load.percentile(values, fraction) == pytest.approx(np.percentile(values, fraction * 100))


def test_load_summary_divides_by_the_wall_time_of_the_whole_load():
    answered = [
        serve_load.AnsweredRequest(latency, 100 + index, 10) for index, latency in enumerate([1.0, 2.0, 3.0, 4.0])
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
        "mean_prompt_tokens": 101.5,
    }


def test_requests_are_the_test_split_prompts_cycled_in_file_order():
    rows = read_split(serve_load.REQUEST_SPLIT)
    conversations = serve_load.request_conversations(serve_load.REQUEST_SPLIT, len(rows) + 3)
    assert len(conversations) == len(rows) + 3
    assert conversations[0] == chat_messages(rows[0].prompt)
    assert conversations[len(rows) + 2] == chat_messages(rows[2].prompt)


def test_comparisons_use_the_best_batched_configuration_and_say_which_targets_are_met():
    def entry(size, tokens_per_s, p50):
        return {"max_batch_size": size, "completion_tokens_per_s": tokens_per_s, "requests_per_s": tokens_per_s / 10,
                "latency_p50_s": p50}  # fmt: skip

    configurations = {"ours_batch16": entry(16, 150.0, 4.0), "ours_batch8": entry(8, 180.0, 3.0),
                      "ours_batch1": entry(1, 60.0, 9.0), "llama_cpp": {**entry(0, 80.0, 5.0)},
                      "ours_batch8_no_prefix_cache": {**entry(8, 400.0, 1.0), "prefix_cache": False},
                      "ours_batch16_no_prefix_cache": {**entry(16, 120.0, 1.0), "prefix_cache": False}}  # fmt: skip
    del configurations["llama_cpp"]["max_batch_size"]
    result = serve_load.comparisons(configurations)
    assert result["best_batched_configuration"] == "ours_batch8"  # like with like: the server's default cache on
    assert result["ours_without_prefix_cache_vs_llama_cpp_throughput_ratio"] == 5.0
    assert result["batching_vs_batch1_throughput_ratio"] == 3.0
    assert result["ours_vs_llama_cpp_throughput_ratio"] == 2.25
    assert result["p50_lower_than_llama_cpp"] is True
    assert result["targets_met"] == {
        "batching_vs_batch1_throughput_ratio": True,
        "ours_vs_llama_cpp_throughput_ratio": True,
        "p50_lower_than_llama_cpp": True,
    }
    without_peer = serve_load.comparisons({"ours_batch16": entry(16, 100.0, 4.0), "ours_batch1": entry(1, 50.0, 9.0)})
    assert without_peer["batching_vs_batch1_throughput_ratio"] == 2.0
    assert without_peer["targets_met"]["batching_vs_batch1_throughput_ratio"] is False
    assert without_peer["ours_vs_llama_cpp_throughput_ratio"] is None
    assert without_peer["p50_lower_than_llama_cpp"] is None


def test_our_server_runs_without_the_prefix_cache_when_asked():
    on = serve_load.our_server_command(Path("m"), Path("a"), "bf16", 16, 8000)
    off = serve_load.our_server_command(Path("m"), Path("a"), "bf16", 16, 8000, prefix_cache=False)
    assert "--prefix-cache-tokens" not in on and off == [*on, "--prefix-cache-tokens", "0"]


def test_batch_sizes_flag_rejects_what_is_not_a_list_of_positive_integers(capsys):
    assert serve_load.parse_args(["--batch-sizes", "16,8,1"]).batch_sizes == [16, 8, 1]
    for bad in ("16,0", "sixteen", ","):
        with pytest.raises(SystemExit):
            serve_load.parse_args(["--batch-sizes", bad])
        assert "--batch-sizes" in capsys.readouterr().err


def test_without_llama_cpp_the_run_stops_before_any_work_and_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setattr(llama_cpp_server, "installed_llama_cpp_version", lambda: None)
    assert serve_load.main(["--requests", "1"]) == 2
    message = capsys.readouterr().err
    assert f"pip install 'llama-cpp-python[server]=={llama_cpp_server.LLAMA_CPP_VERSION}'" in message
    assert "--skip-llama-cpp" in message


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
                      "total_tokens": 7 + completion_tokens},
        }, {}  # fmt: skip

    conversations = [[{"role": "user", "content": "x" * (index + 1)}] for index in range(12)]
    with RecordingServer(answer) as server:
        answered, wall_s = asyncio.run(
            serve_load.send_load(server.url, "m", conversations, 3, 16, extra_body={"repeat_penalty": 1.0})
        )
    assert peak[0] == 3
    assert [request.completion_tokens for request in answered] == list(range(1, 13))
    assert wall_s >= 4 * 0.05  # 12 requests, 3 at a time
    bodies = [request.json() for request in server.requests]
    assert sorted(len(body["messages"][0]["content"]) for body in bodies) == list(range(1, 13))
    assert all(
        body["max_tokens"] == 16 and body["temperature"] == 0 and body["repeat_penalty"] == 1.0 for body in bodies
    )


def test_a_failed_request_stops_the_load_naming_the_server_and_request():
    failing = RecordingServer(lambda request: (500, {"error": {"message": "boom"}}, {}))
    with failing as server, pytest.raises(RuntimeError, match=r"request 0 \(m\) failed"):
        asyncio.run(serve_load.send_load(server.url, "m", [[{"role": "user", "content": "hi"}]], 1, 4))


def test_server_process_waits_until_ready_and_leaves_no_process_of_its_group(tmp_path):
    port = serve_load.free_port()
    # The server starts a child of its own (as the serve CLI starts Ray's daemons): stopping must end both.
    script = (
        "import http.server, subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "time.sleep(1)\n"
        f"http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()\n"
    )
    server = serve_load.ServerProcess(
        "toy", [sys.executable, "-c", script], f"http://127.0.0.1:{port}/", tmp_path / "toy.log", daemons_exit_s=1.0
    )
    with server:
        group = server.process.pid
        assert server.startup_s >= 1.0
        assert serve_load.process_group_alive(group)
    assert not serve_load.process_group_alive(group)


def test_server_process_that_dies_at_start_reports_its_log(tmp_path):
    command = [sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"]
    server = serve_load.ServerProcess("broken", command, "http://127.0.0.1:9/", tmp_path / "broken.log")
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*no model here"), server:
        pass


@pytest.mark.slow
def test_whole_run_on_a_tiny_model_with_the_real_serve_cli(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "report.json"
    arguments = [
        "--model-path", str(tiny_model_dir), "--skip-llama-cpp", "--clients", "3", "--requests", "6",
        "--max-tokens", "4", "--batch-sizes", "4,1", "--precision", "fp32", "--output", str(output),
        "--prefix-cache", "on",
    ]  # fmt: skip
    assert serve_load.main(arguments) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(output.read_text())
    assert list(report["configurations"]) == ["ours_batch4", "ours_batch1"]
    for entry in report["configurations"].values():
        assert entry["requests"] == 6 and entry["concurrency"] == 3
        assert 0 < entry["completion_tokens"] <= 6 * 4
        assert entry["latency_p50_s"] <= entry["latency_p95_s"]
        assert entry["precision"] == "fp32"
    assert report["batching_vs_batch1_throughput_ratio"] > 0
    assert report["ours_vs_llama_cpp_throughput_ratio"] is None
    assert os.path.isfile(report["configurations"]["ours_batch1"]["log"])
