"""SLM_MODEL_PATH resolution, as the seed defines it: relative paths resolve from the current directory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_SLM_MODEL_PATH = "slm_swap/models/qwen2.5-7b-instruct"
DEMO_SLM_MODEL_PATH = "slm_swap/models/smollm2-135m-instruct"


class ModelPathError(ValueError):
    pass


def resolve_slm_model_path(
    value: str | None = None, environ: Mapping[str, str] = os.environ, cwd: Path | None = None
) -> Path:
    """The checkpoint folder to load, or ModelPathError saying what to set."""
    raw = value or environ.get("SLM_MODEL_PATH") or DEFAULT_SLM_MODEL_PATH
    base = cwd or Path.cwd()
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else base / path
    path = Path(os.path.normpath(path))
    if "slm_swap/slm_swap" in path.as_posix():
        raise ModelPathError(
            f"SLM_MODEL_PATH={raw!r} resolves to {path}, which doubles slm_swap/: relative paths resolve from "
            f"the current directory ({base}). Inside slm_swap/ use models/<name>; from the project root use "
            "slm_swap/models/<name>; or set an absolute path."
        )
    if not path.exists():
        raise ModelPathError(
            f"no SLM checkpoint at {path} (SLM_MODEL_PATH={raw!r}, resolved from {base}). Set SLM_MODEL_PATH to a "
            f"transformers checkpoint folder, or run `slm-swap models fetch-demo` and set "
            f"SLM_MODEL_PATH={DEMO_SLM_MODEL_PATH}"
        )
    if not (path / "config.json").is_file():
        raise ModelPathError(f"{path} is not a transformers checkpoint (no config.json); set SLM_MODEL_PATH to one")
    return path
