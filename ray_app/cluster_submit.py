"""`slm-swap submit -- python jobs/pipeline.py`: a Ray job with runtime_env.yaml plus this shell's secrets.

`ray job submit` takes `--runtime-env FILE` or `--runtime-env-json`, never both, so a committed YAML and
secrets from the environment cannot travel together that way. This submits through Ray's
JobSubmissionClient (the same client `ray job submit` uses, so RAY_ADDRESS and token authentication
work alike) with one runtime env: the YAML, its `working_dir` resolved from the YAML's folder, and
`env_vars` plus every AZURE_*, LANGFUSE_* and SLM_SWAP_TEACHER_* variable of the submitting shell.
The secrets go in the request only: never into a file, a command line or the console (names only).
Then it follows the job's logs and exits 0 when it succeeded, 1 when it failed or was stopped.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_app.paths import PROJECT_ROOT
from ray_app.settings import read_settings_file

SECRET_PREFIXES = ("AZURE_", "LANGFUSE_", "SLM_SWAP_TEACHER_")
DEFAULT_RUNTIME_ENV = PROJECT_ROOT / "runtime_env.yaml"


class SubmitError(ValueError):
    """The runtime env file or the cluster address is unusable; the message says which and why."""


@dataclass(frozen=True)
class JobRuntimeEnv:
    runtime_env: dict[str, Any]  # what Ray receives (holds the secret values: never print or write it)
    secret_names: tuple[str, ...]  # the variables taken from the shell, for the console

    def redacted(self, text: str) -> str:
        """`text` with every secret value replaced (Ray's own errors may quote the runtime env)."""
        for name in self.secret_names:
            text = text.replace(self.runtime_env["env_vars"][name], "[redacted]")
        return text


def secrets_from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The submitting shell's credentials and endpoints (empty values left out)."""
    return {name: value for name, value in sorted(environ.items()) if name.startswith(SECRET_PREFIXES) and value}


def job_runtime_env(path: Path, environ: Mapping[str, str] = os.environ) -> JobRuntimeEnv:
    """runtime_env.yaml with its working_dir made absolute and the shell's secrets added to env_vars."""
    try:
        runtime_env, _ = read_settings_file(path)
    except ValueError as error:
        raise SubmitError(str(error)) from None
    env_vars = runtime_env.get("env_vars") or {}
    if not isinstance(env_vars, dict):
        raise SubmitError(f"{path}: env_vars must be a mapping of variable names to strings")
    secrets = secrets_from_environment(environ)
    runtime_env = {**runtime_env, "env_vars": {**env_vars, **secrets}}
    working_dir = runtime_env.get("working_dir")
    if isinstance(working_dir, str) and "://" not in working_dir:  # a local folder, not a package URI
        runtime_env["working_dir"] = str((path.parent / working_dir).resolve())
    return JobRuntimeEnv(runtime_env, tuple(secrets))


def submit_job(
    entrypoint: list[str],
    runtime_env: JobRuntimeEnv,
    address: str | None = None,
    submission_id: str | None = None,
    wait: bool = True,
    say: Callable[[str], None] = print,
) -> int:
    """Submit, then (with `wait`) stream the job's logs to stdout; the exit code: 0 succeeded, 1 otherwise."""
    import asyncio

    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = address or os.environ.get("RAY_ADDRESS") or "the default address"
        raise SubmitError(f"no Ray cluster at {where}: {error} (set RAY_ADDRESS or --address)") from None
    try:
        job_id = client.submit_job(
            entrypoint=shlex.join(entrypoint), runtime_env=runtime_env.runtime_env, submission_id=submission_id
        )
    except (RuntimeError, ValueError) as error:  # the head refused it (a bad runtime env, a taken submission id)
        raise SubmitError(f"the cluster refused the job: {runtime_env.redacted(str(error))}") from None
    say(f"job {job_id} submitted: {shlex.join(entrypoint)}")
    if not wait:
        say(f"follow it with: ray job logs -f {job_id}")
        return 0

    async def print_logs() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(print_logs())
    except KeyboardInterrupt:
        say(f"\nstopped following; the job keeps running: ray job logs -f {job_id}, or ray job stop {job_id}")
        return 130
    info = client.get_job_info(job_id)
    say(f"job {job_id} {info.status.lower()}" + (f": {info.message}" if info.message else ""))
    return 0 if info.status == JobStatus.SUCCEEDED else 1
