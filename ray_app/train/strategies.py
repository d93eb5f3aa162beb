"""Training several tracks: one after another, or at the same time as separate Ray Train runs.

sequential: structured, then toolcall, each with every worker (e.g. 4 GPU workers each);
parallel: both trainers at once, each `fit()` inside its own `@ray.remote(num_cpus=0)` task (a
task that only waits needs no CPU), each run under its own name (e.g. 2 GPU workers each). Those
tasks take no CPU, so a parallel run never trains in Ray Train's local mode: the default is one
worker per track there, whose CPUs Ray accounts for.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ray_app.train.config import TrainConfig
from ray_app.train.sft_worker import TrainBackendError
from ray_app.train.train import TrainOutcome, run_train

Strategy = Literal["sequential", "parallel"]


def train_tracks(configs: list[TrainConfig], strategy: Strategy) -> list[TrainOutcome]:
    if strategy == "sequential" or len(configs) == 1:
        return [run_train(config) for config in configs]
    import ray

    from ray_app.ray_runtime import ensure_ray

    ensure_ray()
    remote_run_train = ray.remote(num_cpus=0)(run_train)
    configs = [config if config.num_workers is not None else dataclasses.replace(config, num_workers=1)
               for config in configs]  # fmt: skip
    if any(config.num_workers == 0 for config in configs):
        raise TrainBackendError(
            "parallel training needs Ray Train workers (--workers 1 or more): local mode trains in this process"
        )
    return ray.get([remote_run_train.remote(config) for config in configs])
