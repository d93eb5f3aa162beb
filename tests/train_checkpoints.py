"""Where a training run keeps its resume points, for the tests that kill a run once it has one."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

# Ray Train's local mode (the default on one node without GPUs): the Trainer's own checkpoints in the
# run's folder; with workers: Ray Train's checkpoints in its storage.
LOCAL_MODE_CHECKPOINT = "*/hf/checkpoint-*/trainer_state.json"
RAY_TRAIN_CHECKPOINT = "*/checkpoint_*"


def wait_for_checkpoint(
    process: subprocess.Popen, storage: Path, pattern: str = LOCAL_MODE_CHECKPOINT, timeout_s: float = 300
) -> None:
    """Return once a checkpoint matching `pattern` exists under `storage`; fail if the run ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if list(storage.glob(pattern)):
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run finished before it could be killed after a checkpoint"
    assert list(storage.glob(pattern)), f"no checkpoint matching {pattern} under {storage} in {timeout_s} s"
