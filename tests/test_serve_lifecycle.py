"""Serve's life cycle, live: loading, a killed replica, SIGTERM and SIGINT, and a Ray left behind.

Each test runs `slm-swap serve` as its own process (the tiny random model, fp32, a free port on
127.0.0.1), as a user runs it in a terminal or in the background, and checks what the clients get and
that, once it has stopped, no process it started and no listener is left. None of these tests runs
`ray stop`: it would stop every local Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from ray_app.memory_allocator import system_tcmalloc
from ray_app.paths import PROJECT_ROOT
from ray_app.ray_runtime import dashboard_choice, machine_cpus
from tests.local_ports import free_port
from tests.shell_signals import background_shell

pytestmark = pytest.mark.slow
SLM_SWAP = [sys.executable, "-m", "ray_app"]
USER = [{"role": "user", "content": "Say hello."}]


def clean_env() -> dict[str, str]:
    drop = ("LANGFUSE_", "RAY_ADDRESS", "AZURE_", "SLM_")
    return {key: value for key, value in os.environ.items() if not key.startswith(drop)}


class ServeProcess:
    """`slm-swap serve` in its own session, its log in a file, and every process it started."""

    def __init__(self, model_dir: Path, root: Path, *, ignore_sigint: bool = False, extra: tuple[str, ...] = ()):
        self.port = free_port()
        self.log_path = root / f"serve-{self.port}.log"
        command = [*SLM_SWAP, "serve", "--model-path", str(model_dir), "--adapter-root", str(root / "no-adapters"),
                   "--precision", "fp32", "--port", str(self.port), "--max-tokens", "16", *extra]  # fmt: skip

        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                command, cwd=PROJECT_ROOT, env=clean_env(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=background_shell if ignore_sigint else None,
            )  # fmt: skip
        self.started: dict[int, str] = {}  # pid → name of every process it started (seen while it runs)
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def remember_children(self) -> None:
        for child in psutil.Process(self.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                self.started[child.pid] = " ".join(child.cmdline())[:120]

    def wait_for_log(self, text: str, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            assert self.process.poll() is None, self.log()[-3000:]
            assert time.monotonic() < deadline, f"no {text!r} within {timeout_s} s:\n{self.log()[-3000:]}"
            self.remember_children()
            time.sleep(0.2)
        self.remember_children()

    def replica_pids(self) -> list[int]:
        self.remember_children()
        return [pid for pid, command in self.started.items() if "ServeReplica:slm-swap" in command]

    def left_running(self) -> list[str]:
        """What this server started that still runs (zombies only wait for pid 1 to collect them)."""
        alive = []
        for pid, command in self.started.items():
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {command}")
            except psutil.NoSuchProcess:
                pass
        return alive

    def listening(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def kill_everything(self) -> None:
        """After a test: nothing of this server survives, whatever the test did to it."""
        if self.process.poll() is None:
            self.remember_children()
        for pid in [self.process.pid, *self.started]:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


@pytest.fixture()
def serve_process(tiny_model_dir, tmp_path):
    started: list[ServeProcess] = []

    def start(**options) -> ServeProcess:
        server = ServeProcess(tiny_model_dir, tmp_path, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill_everything()


def chat(url: str, body: dict, timeout: float = 60) -> tuple[int, dict | str]:
    request = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(),
                                     {"content-type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            return error.code, json.loads(text)
        except json.JSONDecodeError:
            return error.code, text


def assert_all_stopped(server: ServeProcess, exit_code: int = 0) -> None:
    assert server.process.wait(timeout=120) == exit_code, server.log()[-3000:]
    deadline = time.monotonic() + 20  # Ray's daemons exit a moment after the driver
    while server.left_running() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert server.started, "the server started no process of its own?"
    assert not server.left_running(), server.left_running()
    assert not server.listening()
    assert "the local Ray this command started is stopped" in server.log()
    assert "Traceback" not in server.log() and "SIGTERM received" not in server.log()


def test_sigterm_in_the_background_lets_a_running_stream_finish_refuses_new_requests_and_stops_everything(
    serve_process,
):
    from openai import OpenAI

    server = serve_process()
    server.wait_for_log("Ctrl-C or SIGTERM stops it")
    client = OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=60)
    pieces: list[str] = []
    finished: list[str | None] = []

    def stream() -> None:
        for chunk in client.chat.completions.create(model="slm", messages=USER, max_tokens=120, stream=True):
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finished.append(chunk.choices[0].finish_reason)

    streaming = threading.Thread(target=stream)
    streaming.start()
    deadline = time.monotonic() + 60
    while not pieces and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pieces, "the stream never started"
    server.process.send_signal(signal.SIGTERM)
    server.wait_for_log("stopping: running requests get up to 30 s to finish")
    # Serve's proxy and routers learn of the deletion a control-loop tick or two after it starts, so a
    # request sent in that moment may still be admitted: it must then be answered in full (the drain
    # waits for it), and within seconds new requests are refused (404 or 503 while the app is deleted).
    statuses: list[int] = []
    deadline = time.monotonic() + 20
    while (not statuses or statuses[-1] == 200) and time.monotonic() < deadline:
        status, body = chat(server.url, {"model": "slm", "messages": USER, "max_tokens": 3}, timeout=30)
        statuses.append(status)
        if status == 200:
            assert body["choices"][0]["finish_reason"] == "length", body  # admitted: answered in full
    assert statuses[-1] in (404, 503), statuses  # no longer admitted
    streaming.join(timeout=90)
    assert not streaming.is_alive()
    assert finished[-1] == "length"  # the running stream got its whole answer (120 tokens of the random model)
    assert_all_stopped(server)


def test_sigint_to_a_background_server_during_start_up_stops_everything(serve_process):
    server = serve_process(ignore_sigint=True)  # `slm-swap serve &`: Python would ignore SIGINT
    server.wait_for_log("Ray: embedded local Ray")
    # The dashboard as this machine's size decides it, and the console says why (ray_runtime.dashboard_choice).
    choice = dashboard_choice(None, machine_cpus())  # clean_env drops SLM_SWAP_RAY_DASHBOARD: auto
    assert ("dashboard: http" if choice.include else f"dashboard: not running ({choice.reason})") in server.log()
    server.process.send_signal(signal.SIGINT)
    assert_all_stopped(server)
    assert "serving slm" not in server.log()


def test_a_killed_replica_fails_its_requests_at_once_and_serve_brings_it_back(serve_process):
    server = serve_process()
    server.wait_for_log("Ctrl-C or SIGTERM stops it")
    [replica] = server.replica_pids()
    # The command re-executed itself with the allocator `auto` chose, and the replica Ray started inherited it.
    with urllib.request.urlopen(f"{server.url}/health", timeout=30) as response:
        health = json.loads(response.read())
    expected = "tcmalloc" if system_tcmalloc() else "jemalloc"
    assert (health["allocator"], health["allocator_reason"][:6]) == (expected, "auto: "), health
    assert any(expected in region.path for region in psutil.Process(replica).memory_maps())
    outcomes: dict[int, tuple[int, float]] = {}

    def ask(index: int) -> None:
        started = time.monotonic()
        try:
            status, _ = chat(server.url, {"model": "slm", "messages": USER, "max_tokens": 4000}, timeout=120)
        except (ConnectionError, urllib.error.URLError) as error:  # the connection itself cut
            status = -1 if error else 0
        outcomes[index] = (status, time.monotonic() - started)

    clients = [threading.Thread(target=ask, args=(index,)) for index in range(3)]
    for thread in clients:
        thread.start()
    time.sleep(2)  # the three are decoding (4000 tokens of the tiny model take far longer)
    killed_at = time.monotonic()
    psutil.Process(replica).kill()
    for thread in clients:
        thread.join(timeout=60)
    assert len(outcomes) == 3 and all(status >= 500 or status == -1 for status, _ in outcomes.values()), outcomes
    assert all(took < 60 for _, took in outcomes.values())  # an error, not a hang
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, answer = chat(server.url, {"model": "slm", "messages": USER, "max_tokens": 3}, timeout=30)
        if status == 200:
            break
        time.sleep(1)
    assert status == 200, answer
    print(f"\nreplica killed: answering again after {time.monotonic() - killed_at:.1f} s")
    assert server.replica_pids() != [replica]
    server.process.send_signal(signal.SIGTERM)
    assert_all_stopped(server)


def test_a_local_ray_no_command_owns_is_reported_instead_of_starting_a_second_one(serve_process):
    """`ray start --head` (its daemons re-parented to pid 1, as a killed driver's are): not a second Ray beside it."""
    temp_dir = tempfile.mkdtemp(prefix="ray-left-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    gcs_port = free_port()
    env = {**clean_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = subprocess.run(
        ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}", "--num-cpus=1",
         "--include-dashboard=false", f"--temp-dir={temp_dir}", f"--ray-client-server-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
         f"--dashboard-agent-grpc-port={free_port()}"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    daemons = [process for process in psutil.process_iter(["cmdline"])
               if any(temp_dir in argument for argument in process.info["cmdline"] or [])]  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        again = serve_process()
        assert again.process.wait(timeout=120) == 2, again.log()[-3000:]
        flat = " ".join(again.log().split())
        assert "a local Ray is already running with no command that owns it" in flat and "gcs_server" in flat
        assert "Not starting a second one beside it. Stop it with `ray stop`, or use it: RAY_ADDRESS=" in flat
        assert f":{gcs_port} slm-swap ..." in flat
        assert "Traceback" not in again.log()
    finally:
        children = [child for daemon in daemons for child in daemon.children(recursive=True)]
        for process in [*children, *daemons]:
            with contextlib.suppress(psutil.Error):
                process.kill()
        current = Path("/tmp/ray/ray_current_cluster")  # `ray start` records the head; only `ray stop` removes it
        if current.is_file() and current.read_text().strip().endswith(f":{gcs_port}"):
            current.unlink()


def test_a_model_that_fails_to_load_on_the_replica_is_a_clear_error_and_nothing_is_left(tiny_model_dir, tmp_path):
    """The replica loads the weights after it starts (its /health says "loading", then "failed"): start-up
    reports the replica's error and stops everything instead of waiting for a model that never comes."""
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    [weights] = broken.glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:64])  # a config and tokenizer that read, weights that do not
    server = ServeProcess(broken, tmp_path)
    try:
        deadline = time.monotonic() + 240
        while server.process.poll() is None and time.monotonic() < deadline:
            server.remember_children()
            time.sleep(0.2)
        flat = " ".join(server.log().split())
        assert "error: the replica could not load the model:" in flat
        assert_all_stopped(server, exit_code=2)
    finally:
        server.kill_everything()
