"""Connecting to Ray: an embedded local Ray by default, the cluster named by RAY_ADDRESS otherwise."""

from __future__ import annotations

import os

from rich.console import Console

from ray_app.engines.determinism import DETERMINISM_ENV

console = Console(stderr=True)
# Ray Train routes every print() in its workers to the logger; dill (under `datasets` fingerprinting,
# when TRL tokenizes) prints whole bytecode disassemblies into a captured stdout, which that routing
# sends to the job's log (~1,200 lines per worker). Workers keep Python's own print.
WORKER_ENV = {**DETERMINISM_ENV, "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
_dashboard_url: str | None = None  # remembered from ray.init, for the job's closing summary


def ensure_ray() -> str | None:
    """Start or join Ray once per process; return the dashboard URL when there is one."""
    import ray

    global _dashboard_url
    if ray.is_initialized():
        return _dashboard_url
    address = os.environ.get("RAY_ADDRESS")
    if address:
        context = ray.init(address=address, log_to_driver=True)
        where = f"cluster at {address}"
    else:
        # address="local": always a new embedded Ray, never a stale cluster named in
        # /tmp/ray/ray_current_cluster. Workers start from this process, so they get the
        # determinism variables (and WORKER_ENV) here.
        # Ray starts workers at nice 15 by default; here the workers do the job's real work (the
        # model), so they get normal priority and do not lose CPU to Ray's own daemons on 2 cores.
        os.environ.setdefault("RAY_worker_niceness", "0")
        context = ray.init(address="local", runtime_env={"env_vars": WORKER_ENV}, log_to_driver=True)
        where = "embedded local Ray"
    url = getattr(context, "dashboard_url", None) or None
    url = f"http://{url}" if url and not url.startswith("http") else url
    console.print(f"Ray: {where}; dashboard: {url or 'not running'}", highlight=False)
    _dashboard_url = url
    return url


def dashboard_url_if_running() -> str | None:
    """The dashboard this process's Ray uses, without starting Ray just to ask."""
    import ray

    return _dashboard_url if ray.is_initialized() else None


def _will_run_locally(ray) -> bool:
    return not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")


def cluster_gpus() -> int:
    """GPUs Ray can schedule; for a local Ray not started yet, this machine's (no start just to ask)."""
    import ray

    if _will_run_locally(ray):
        import torch

        return torch.cuda.device_count()
    ensure_ray()
    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> float:
    import ray

    if _will_run_locally(ray):
        return float(os.cpu_count() or 1)
    ensure_ray()
    return float(ray.cluster_resources().get("CPU", 1))
