"""README's cluster commands as written: `slm-swap submit` against a real local `ray start --head`.

The command lines come from README's "Real run on a Ray cluster" block, unchanged: the check job runs
(with runtime_env.yaml and this shell's secrets merged into one runtime env), the other submit lines
are parsed by the same command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import typer
import yaml

from ray_app.cluster_submit import job_runtime_env
from ray_app.paths import PROJECT_ROOT
from tests.test_ray_job_submit import RAY, free_port, wait_for_dashboard

SECRETS = {
    "AZURE_API_KEY": "azure-key-never-printed-5h2k",
    "AZURE_ENDPOINT": "https://example.openai.azure.com/openai/deployments/gpt-4o-mini",
    "LANGFUSE_SECRET_KEY": "sk-lf-never-printed-9q1z",
    "SLM_SWAP_TEACHER_MODEL": "teacher-model",
}


def readme_submit_lines() -> list[list[str]]:
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Real run on a Ray cluster\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("slm-swap submit")]


def test_the_runtime_env_is_the_yaml_plus_the_shells_secrets_and_nothing_else(tmp_path):
    path = PROJECT_ROOT / "runtime_env.yaml"
    before = path.read_bytes()
    environ = {**SECRETS, "OPENAI_API_KEY": "not-taken", "HOME": "/root", "AZURE_EMPTY": ""}
    merged = job_runtime_env(path, environ)
    committed = yaml.safe_load(before)
    assert merged.runtime_env["env_vars"] == {**committed["env_vars"], **SECRETS}
    assert merged.secret_names == tuple(sorted(SECRETS))
    assert merged.runtime_env["working_dir"] == str(PROJECT_ROOT)
    assert merged.runtime_env["excludes"] == committed["excludes"]
    assert path.read_bytes() == before  # nothing written back
    assert merged.redacted(f"refused: {{'AZURE_API_KEY': '{SECRETS['AZURE_API_KEY']}'}}") == (
        "refused: {'AZURE_API_KEY': '[redacted]'}"
    )


def test_readmes_submit_commands_run_against_a_local_head():
    from ray_app.cli import app

    lines = readme_submit_lines()
    check = next(line for line in lines if "jobs/cluster_check.py" in line)
    command = typer.main.get_command(app)
    for line in lines:  # every submit line is a valid command whose script is in the repository
        assert line[:2] == ["slm-swap", "submit"]
        assert command.commands["submit"].make_context("submit", line[2:]).params["entrypoint"] == line[3:]
        assert (PROJECT_ROOT / line[-1]).is_file(), line

    dashboard_port, gcs_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "LANGFUSE_", "AZURE_"))}
    env["RAY_AUTH_MODE"] = "token"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv, as activated
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
        shell = {**env, "RAY_ADDRESS": dashboard, **SECRETS, "COLUMNS": "200"}
        submit = subprocess.run(check, env=shell, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
        output = re.sub(r"\x1b\[[0-9;]*m", "", submit.stdout + submit.stderr)
        runtime_env = yaml.safe_load((PROJECT_ROOT / "runtime_env.yaml").read_text(encoding="utf-8"))
        model, splits = runtime_env["env_vars"]["SLM_MODEL_PATH"], runtime_env["env_vars"]["SLM_SWAP_DATASET_ROOT"]
        ready = Path(model).exists() and Path(splits).exists()
        assert submit.returncode == (0 if ready else 1), output[-4000:]
        names = ", ".join(sorted(SECRETS))
        assert f"runtime env: runtime_env.yaml + from this shell: {names} (values not shown)" in output
        assert f"secrets from the submitting shell: {names} (values not shown)" in output  # printed by the job
        assert f"SLM_MODEL_PATH={model}: {'present' if Path(model).exists() else 'missing'}" in output
        assert "cluster: 2 CPUs, 0 GPUs" in output
        assert re.search(r"job \S+ (succeeded|failed)", output), output[-2000:]
        for value in (SECRETS["AZURE_API_KEY"], SECRETS["LANGFUSE_SECRET_KEY"]):
            assert value not in output
        # The job's runtime env on the head: the YAML's variables and the secrets, in one runtime env.
        script = (
            "import json; from ray.job_submission import JobSubmissionClient as C; "
            "[job] = C().list_jobs(); print(json.dumps(job.runtime_env['env_vars']))"
        )
        listed = subprocess.run(
            [sys.executable, "-c", script], env=shell, capture_output=True, text=True, timeout=120, check=True
        )
        assert json.loads(listed.stdout.strip().splitlines()[-1]) == {**runtime_env["env_vars"], **SECRETS}
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops the head's processes on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        current = Path("/tmp/ray/ray_current_cluster")  # `ray start` records the head; only `ray stop` removes it
        if current.is_file() and current.read_text().strip().endswith(f":{gcs_port}"):
            current.unlink()
