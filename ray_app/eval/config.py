"""Typed settings of one evaluation run, with the seed's defaults; CLI flags and env override them.

The field types (with their bounds, `ray_app.settings`) are what `slm-swap eval` and the main job's
config parse flags and files to."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ray_app.data.rows import Track
from ray_app.decide.model_labels import TEACHER_LABEL, slm_label
from ray_app.engines.adapter_weights import AdapterWeights
from ray_app.engines.cpu_linear import CpuLinear
from ray_app.engines.decode.attention_kernel import DecodeAttention
from ray_app.engines.precision import Precision
from ray_app.engines.slm import SlmSettings
from ray_app.engines.teacher_settings import ToolcallMode
from ray_app.paths import DATASET_ROOT, EVAL_ROOT, PROJECT_ROOT
from ray_app.settings import NonNegativeInt, PositiveFloat, PositiveInt

ModelSide = Literal["slm", "teacher"]
# constrained: each row's answer is forced to fit what its prompt asks (`row_constraints.py`), under its own label
Decoding = Literal["free", "constrained"]
TeacherMode = Literal["auto", "azure", "openai-compatible", "replay"]
CodeactTeacherMode = Literal["auto", "simulated", "hosted"]  # the CodeAct track's teacher (auto: hosted when set)

DEFAULT_REPLAY_TRACES = PROJECT_ROOT / "storage" / "dummy_langfuse_traces.jsonl"


class EvalConfigError(ValueError):
    """Settings of an evaluation that cannot go together."""


@dataclass(frozen=True)
class SlmEvalSettings:
    model_path: str | None = None  # None: SLM_MODEL_PATH, then the seed's default
    adapter_path: Path | None = None
    precision: Precision = (
        SlmSettings.precision
    )  # auto: GPU bf16 if it fits in half, else 8-bit; CPU bf16 where native, else fp32
    adapter_weights: AdapterWeights = SlmSettings.adapter_weights  # merged copies or beside the base (as Serve)
    cpu_linear: CpuLinear = SlmSettings.cpu_linear  # fp32/bf16 on CPU: torch's or oneDNN's packed kernels (as Serve)
    decode_attention: DecodeAttention = SlmSettings.decode_attention  # CPU decode steps: compiled or torch (as Serve)
    # Rows decoding together in the engine's running batch, and rows an actor answers as one fixed group
    # (the unit of resume and progress). 32 and 64 over 16 and 32, demo SLM, 50 test rows, 128 new tokens,
    # same predictions (2026-12-03, AMD EPYC with avx512_bf16, 2 cores): bf16 structured 54.8 -> 40.6 s,
    # toolcall 97.9 -> 67.2 s; fp32 with the ISA held to AVX2, structured 66.7 -> 48.6 s. A decode
    # step's cost grows little with its rows (the weights are read once per step), and one group of
    # 50 rows never drains the batch halfway (a group's last rows decode in a thinning batch).
    batch_size: PositiveInt = 32
    rows_per_task: PositiveInt = 64
    max_new_tokens: PositiveInt = 256
    prefill_chunk_tokens: PositiveInt = SlmSettings.prefill_chunk_tokens  # prompt tokens prefilled per decode step
    num_actors: PositiveInt | None = None  # None: one per GPU, else one CPU actor
    actor_num_cpus: PositiveFloat = 0.5  # fractional, so the Ray Data read task is never starved on 2 cores
    decoding: Decoding = "free"


@dataclass(frozen=True)
class TeacherEvalSettings:
    mode: TeacherMode = "auto"  # azure when AZURE_ENDPOINT is set, openai-compatible with a base URL, else replay
    replay_traces: Path = DEFAULT_REPLAY_TRACES
    replay_agent_id: str = "dummy-agent"
    toolcall_mode: ToolcallMode = "native"  # native: OpenAI `tools`, answers as tool_calls
    concurrency: PositiveInt = 4
    max_tokens: PositiveInt = 512


@dataclass(frozen=True)
class EvalConfig:
    track: Track
    model: ModelSide
    split: str = "test"
    label: str | None = None  # default: teacher / slm / slm-adapter, with -constrained for constrained decoding
    dataset_root: Path = DATASET_ROOT
    eval_root: Path = EVAL_ROOT
    seed: NonNegativeInt = 42
    slm: SlmEvalSettings = field(default_factory=SlmEvalSettings)
    teacher: TeacherEvalSettings = field(default_factory=TeacherEvalSettings)
    force: bool = False  # recompute even when finished outputs match the inputs
    require_langfuse: bool | None = None  # None: SLM_SWAP_REQUIRE_LANGFUSE

    def __post_init__(self) -> None:
        if self.model == "teacher" and self.slm.decoding != "free":
            raise EvalConfigError("constrained decoding runs in the local SLM's engine: evaluate the teacher free")

    @property
    def model_label(self) -> str:
        if self.label:
            return self.label
        if self.model == "teacher":
            return TEACHER_LABEL
        return slm_label(adapted=self.slm.adapter_path is not None, constrained=self.slm.decoding == "constrained")

    @property
    def split_path(self) -> Path:
        return self.dataset_root / self.track / f"{self.split}.jsonl"

    @property
    def output_dir(self) -> Path:
        return self.eval_root / self.track / self.model_label


def teacher_mode_from_env(requested: TeacherMode, environ=os.environ) -> TeacherMode:
    """`auto` → azure (AZURE_ENDPOINT), openai-compatible (SLM_SWAP_TEACHER_BASE_URL), else replay."""
    if requested != "auto":
        return requested
    if environ.get("AZURE_ENDPOINT"):
        return "azure"
    if environ.get("SLM_SWAP_TEACHER_BASE_URL"):
        return "openai-compatible"
    return "replay"
