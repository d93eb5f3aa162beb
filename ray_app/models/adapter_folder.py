"""What makes a folder a PEFT adapter the project can load: its config and its weights.

A clone of the repository carries an adapter's `training.json` (the record of its run) but not its
weights (git ignores them), so a folder with a config alone is not an adapter to evaluate or serve.
"""

from __future__ import annotations

from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS_GLOB = "adapter_model.*"  # adapter_model.safetensors (or .bin from older PEFT)


def missing_adapter_files(folder: str | Path) -> list[str]:
    """What `folder` lacks to be a PEFT adapter: [] when it is one."""
    folder = Path(folder)
    missing = [] if (folder / ADAPTER_CONFIG).is_file() else [ADAPTER_CONFIG]
    if not any(folder.glob(ADAPTER_WEIGHTS_GLOB)):
        missing.append("adapter_model.safetensors")
    return missing


def is_adapter_folder(folder: str | Path) -> bool:
    return not missing_adapter_files(folder)


def not_an_adapter_message(folder: str | Path) -> str:
    """`<folder>: not a PEFT adapter folder (no ...)`, for the errors of the commands that take one."""
    return f"{folder}: not a PEFT adapter folder (no {' and no '.join(missing_adapter_files(folder))})"
