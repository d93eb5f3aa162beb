"""`slm-swap submit -- python jobs/cluster_check.py`: what a job on the cluster sees, before the main job.

Prints the secrets that reached the job (names only), SLM_MODEL_PATH and the SLM_SWAP_* roots with
whether each is there, and the cluster's CPUs and GPUs. Exits 1 when the model or the splits are
missing on the node that ran it (the main job would stop there), saying what to do; 0 otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from ray_app.cluster_submit import secrets_from_environment

NEEDED = ("SLM_MODEL_PATH", "SLM_SWAP_DATASET_ROOT")  # read by the job: must be on shared storage already
CREATED = ("SLM_SWAP_ADAPTER_ROOT", "SLM_SWAP_EVAL_ROOT", "SLM_SWAP_STORAGE_PATH")  # written by the job


def check_job_environment(environ: Mapping[str, str] = os.environ, say: Callable[[str], None] = print) -> int:
    """One line per fact; the exit code: 1 when a needed path is missing."""
    import ray

    from ray_app.ray_runtime import ensure_ray

    secrets = secrets_from_environment(environ)
    say(f"secrets from the submitting shell: {', '.join(secrets) or 'none'} (values not shown)")
    missing = []
    for name in (*NEEDED, *CREATED):
        value = environ.get(name)
        if not value:
            say(f"{name}: not set (the project's own folder is used)")
            continue
        present = Path(value).exists()
        say(
            f"{name}={value}: {'present' if present else 'missing'}"
            + ("" if present or name in NEEDED else ", the job creates it")
        )
        if not present and name in NEEDED:
            missing.append(f"{name}={value}")
    ensure_ray()
    resources = ray.cluster_resources()
    say(f"cluster: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")
    if missing:
        say(
            f"missing: {', '.join(missing)}. Put the checkpoint and the splits on the shared storage every node "
            "mounts (README, 'Real run on a Ray cluster'), or change runtime_env.yaml's env_vars."
        )
        return 1
    say("ready for: slm-swap submit -- python jobs/pipeline.py")
    return 0
