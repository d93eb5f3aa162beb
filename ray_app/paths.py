"""Where the project's own files live, whatever the current directory.

On a cluster the datasets, adapters and results usually live on shared storage every node mounts:
SLM_SWAP_DATASET_ROOT, SLM_SWAP_ADAPTER_ROOT and SLM_SWAP_EVAL_ROOT move them there (the
runtime_env.yaml sets them and keeps those folders out of the uploaded working_dir).
"""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = PROJECT_ROOT / "slm_swap"


def _root(variable: str, default: Path) -> Path:
    value = os.environ.get(variable)
    return Path(value).expanduser().resolve() if value else default


DATASET_ROOT = _root("SLM_SWAP_DATASET_ROOT", WORKSPACE / "02_dataset")
ADAPTER_ROOT = _root("SLM_SWAP_ADAPTER_ROOT", WORKSPACE / "04_ft")
EVAL_ROOT = _root("SLM_SWAP_EVAL_ROOT", WORKSPACE / "05_eval")
MODELS_ROOT = WORKSPACE / "models"
RAY_TRAIN_STORAGE = _root("SLM_SWAP_STORAGE_PATH", PROJECT_ROOT / "storage" / "ray_train")


def project_relative(path: Path) -> str:
    """`path` as records, traces and messages show it: relative to the project (with `/`) where it lies
    inside it, so results moved with the project still name their files; else absolute."""
    resolved = Path(path).resolve()
    return resolved.relative_to(PROJECT_ROOT).as_posix() if resolved.is_relative_to(PROJECT_ROOT) else str(resolved)
