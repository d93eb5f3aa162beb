"""Where the project's own files live, whatever the current directory."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = PROJECT_ROOT / "slm_swap"
DATASET_ROOT = WORKSPACE / "02_dataset"
ADAPTER_ROOT = WORKSPACE / "04_ft"
EVAL_ROOT = WORKSPACE / "05_eval"
MODELS_ROOT = WORKSPACE / "models"
