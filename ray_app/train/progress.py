"""Training progress on the driver's console: one rich bar of optimizer steps per training run.

The workers' own tqdm bars and trainer logs stay in their log files (Ray does not forward them to
the console, see `ray_runtime.ensure_ray`). Instead the rank-0 worker puts `(step, total)` on a Ray
queue after every optimizer step, and a thread on the driver moves the bar while `fit()` blocks.
"""

from __future__ import annotations

import threading


class TrainingProgress:
    """`progress = TrainingProgress("train structured")`; hand `progress.steps` to the workers (their
    config's `progress_steps`), then `with progress: trainer.fit()` draws the bar."""

    def __init__(self, description: str) -> None:
        from ray.util.queue import Queue

        self.description = description
        self.steps = Queue(actor_options={"num_cpus": 0})  # a tiny actor: it takes no CPU from training
        self._done = threading.Event()
        self._follower: threading.Thread | None = None
        self._bar = None

    def __enter__(self) -> TrainingProgress:
        from ray_app.eval.evaluate import progress_bar

        self._bar = progress_bar()
        self._bar.start()
        task = self._bar.add_task(self.description, total=None)
        self._follower = threading.Thread(target=self._follow, args=(task,), name="training-progress", daemon=True)
        self._follower.start()
        return self

    def _follow(self, task) -> None:
        from ray.util.queue import Empty

        while not self._done.is_set():
            try:
                step, total = self.steps.get(timeout=0.5)
            except Empty:
                continue
            except Exception:  # the queue is gone (Ray shutting down): the bar just stops
                return
            self._bar.update(task, completed=step, total=total)

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        if self._follower is not None:
            self._follower.join(timeout=2)
        self._bar.stop()
        self.steps.shutdown(force=True)


def steps_to_driver_callback(steps):
    """A transformers TrainerCallback that puts (global step, max steps) on the `steps` queue."""
    from transformers import TrainerCallback  # here, not at the top: the driver need not import transformers

    class StepsToDriver(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            steps.put_nowait((state.global_step, state.max_steps))

        def on_step_end(self, args, state, control, **kwargs):
            steps.put_nowait((state.global_step, state.max_steps))

    return StepsToDriver()
