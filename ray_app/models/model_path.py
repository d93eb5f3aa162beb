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


def resolve_served_model_path(
    value: str | None = None, environ: Mapping[str, str] = os.environ, cwd: Path | None = None
) -> tuple[Path, str | None]:
    """What `slm-swap serve` loads, and a line saying why when it is not what the user named.

    As `resolve_slm_model_path`, except that with no path given, no SLM_MODEL_PATH and no checkpoint
    at the seed's default, it serves the demo SLM that `make demo` fetched (as the pipeline does)."""
    from ray_app.models.demo_checkpoint import DEMO_MODEL_DIR

    if value or environ.get("SLM_MODEL_PATH"):
        return resolve_slm_model_path(value, environ, cwd), None
    default = Path(os.path.normpath((cwd or Path.cwd()) / DEFAULT_SLM_MODEL_PATH))
    if (default / "config.json").is_file() or not (DEMO_MODEL_DIR / "config.json").is_file():
        try:
            return resolve_slm_model_path(None, environ, cwd), None
        except ModelPathError as error:
            raise ModelPathError(f"{error}; or run `make demo` first, which fetches the demo SLM") from None
    return DEMO_MODEL_DIR, (
        f"SLM_MODEL_PATH is not set: serving the demo SLM that `make demo` fetched ({DEMO_MODEL_DIR}); "
        "set SLM_MODEL_PATH or pass --model-path to serve another checkpoint"
    )
