"""A real local Ray head on 127.0.0.1 and `ray job submit -- python jobs/eval.py ...` against it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ray_app.paths import PROJECT_ROOT

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_dashboard(url: str, head: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited early"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (token authentication may refuse anonymous calls)
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no Ray dashboard at {url}")


def test_job_submit_runs_the_eval_job_to_success(tiny_model_dir, tmp_path):
    dashboard_port, gcs_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "LANGFUSE_"))}
    # Ray 2.60 heads use token authentication (~/.ray/auth_token); the job CLI sends the token in this mode.
    env["RAY_AUTH_MODE"] = "token"
    head = subprocess.Popen(
        [
            RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=2",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--ray-client-server-port={free_port()}",
        ],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_for_dashboard(dashboard, head)
        eval_root = tmp_path / "05_eval"
        submit = subprocess.run(
            [
                RAY, "job", "submit", "--address", dashboard, "--submission-id", "slm-swap-eval-test", "--",
                sys.executable, "jobs/eval.py", "--track", "structured", "--model", "slm",
                "--model-path", str(tiny_model_dir), "--max-new-tokens", "8", "--eval-root", str(eval_root),
            ],
            env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        status = subprocess.run(
            [RAY, "job", "status", "--address", dashboard, "slm-swap-eval-test"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        plain_status = re.sub(r"\x1b\[[0-9;]*m", "", status.stdout + status.stderr)
        assert "Job 'slm-swap-eval-test' succeeded" in plain_status
        metrics = json.loads((eval_root / "structured" / "slm" / "metrics.json").read_text())
        assert metrics["rows"] == 50
        assert (eval_root / "structured" / "slm" / "predictions.jsonl").read_text().count("\n") == 50
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops the head's processes on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # anything of that head still in its process group
        # `ray start` records the head in /tmp/ray/ray_current_cluster and only `ray stop` removes it;
        # a stale entry would make later plain ray.init() calls try to join a dead cluster.
        current = Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip().endswith(f":{gcs_port}"):
            current.unlink()
