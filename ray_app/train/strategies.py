"""Training several tracks: one after another, or at the same time as separate Ray Train runs.

sequential: structured, then toolcall, each with every worker (e.g. 4 GPU workers each);
parallel: both trainers at once, each `fit()` inside its own `@ray.remote(num_cpus=0)` task (a
task that only waits needs no CPU), each run under its own name (e.g. 2 GPU workers each); the
adapters are then re-evaluated one after another and compared once.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ray_app.train.config import TrainConfig
from ray_app.train.train import TrainOutcome, record_eval_after, run_train

Strategy = Literal["sequential", "parallel"]


def train_tracks(configs: list[TrainConfig], strategy: Strategy) -> list[TrainOutcome]:
    if strategy == "sequential" or len(configs) == 1:
        return [run_train(config) for config in configs]
    import ray

    from ray_app.ray_runtime import ensure_ray

    ensure_ray()
    remote_run_train = ray.remote(num_cpus=0)(run_train)
    outcomes = ray.get([remote_run_train.remote(dataclasses.replace(c, eval_after=False)) for c in configs])
    for config, outcome in zip(configs, outcomes, strict=True):
        if outcome.trained and config.eval_after:
            record_eval_after(config, outcome)
    return outcomes
