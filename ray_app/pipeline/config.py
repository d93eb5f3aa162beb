"""The main job's settings: the seed's values as defaults, then a profile, a config file, env, flags.

Precedence (later wins): field defaults → profile (`demo` or `full`) → `--config FILE` (JSON or
YAML, keys are field names) → environment (SLM_MODEL_PATH and the SLM_SWAP_*_ROOT variables, read
where the paths are defined) → command-line flags. File values and flags are parsed to each field's
declared type by `ray_app.settings`, so `seed: 4.5` or `--train-batch-size -3` stops the job naming
the file and line (or the flag), the key and the expected type. The resolved config is written
beside the outputs (`<eval_root>/pipeline_config.json`).

Profiles: `demo` is what `make demo` runs on 2 CPU cores with no credentials — the demo SLM, 128 new
tokens, and a smaller training budget (the first 40 rows of each train split, 1 row × 2 accumulated
per step, 16 validation rows, no gradient checkpointing) so the whole job stays under 15 minutes; `full` is the
seed's run — the whole train split, effective batch 8, gradient checkpointing. `auto` picks `full`
when a model path is given (flag, config file or SLM_MODEL_PATH) and `demo` otherwise.

Precision is not a profile value: `slm_precision` auto (on a GPU bf16 when the weights take at most
half its memory, else 8-bit; on CPU bf16 where the CPU has native bf16, else fp32) and `train_cpu_bf16`
None (bf16 autocast by the same rule) are decided by `engines.precision` on the machine that runs, so a
demo on an AVX2-only CPU runs fp32, not emulated bf16.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from ray_app.decide.non_inferiority import DEFAULT_MARGIN, check_margin
from ray_app.engines.precision import Precision
from ray_app.eval.config import CodeactTeacherMode, SlmEvalSettings, TeacherEvalSettings, TeacherMode
from ray_app.paths import ADAPTER_ROOT, DATASET_ROOT, EVAL_ROOT, RAY_TRAIN_STORAGE
from ray_app.settings import (
    COMMAND_LINE,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SettingsError,
    parse_settings,
    read_settings_file,
)
from ray_app.train.config import TrainConfig, TrainStrategy

Profile = Literal["auto", "demo", "full"]
Phase = Literal["seed", "codeact", "all"]
DataSource = Literal["xlam", "traces"]


class PipelineConfigError(SettingsError):
    """A setting of the main job is unknown or has the wrong type: `file:line: key: expected …, got …`."""


@dataclass(frozen=True)
class PipelineConfig:
    profile: Profile = "auto"
    data_source: DataSource = "xlam"  # xlam: the committed splits; traces: the agent's traces → splits
    dataset_root: Path = DATASET_ROOT
    agent_id: str = TeacherEvalSettings.replay_agent_id
    trace_path: Path = TeacherEvalSettings.replay_traces  # the demo agent's traces
    agent_trace_json: Path | None = None  # data_source=traces: an export; None pulls from Langfuse
    eval_root: Path = EVAL_ROOT
    adapter_root: Path = ADAPTER_ROOT
    storage_path: Path = RAY_TRAIN_STORAGE
    model_path: str | None = None  # None: SLM_MODEL_PATH; with neither, the demo SLM (fetched)
    # auto: azure with AZURE_ENDPOINT, openai-compatible with a base URL, else replay
    teacher_mode: TeacherMode = TeacherEvalSettings.mode
    slm_precision: Precision = SlmEvalSettings.precision  # auto: engines.precision (GPU: bf16 if it fits, else 8-bit)
    # also evaluate the SLM (and each adapter) under constrained decoding: slm-constrained, slm-adapter-constrained
    constrained_eval: bool = True
    max_new_tokens: PositiveInt | None = None  # None: the profile's (demo 128, full 256)
    train: bool = True  # train the tracks whose decision says FINE_TUNE=1
    train_strategy: TrainStrategy = "sequential"  # or parallel (both tracks at once)
    train_workers: NonNegativeInt | None = TrainConfig.num_workers  # 0: Ray Train's local mode; None: train.py decides
    max_train_rows: PositiveInt | None = None  # None: the profile's (demo 40 per track, full all)
    # None: the profile's. demo 1 row × 2 accumulated (20 steps of 2 rows, no padding: on CPU a padded pair
    # computes both rows at the longer one's length; 1 × 2 trained 16 toolcall rows in 55 s vs 70 s for 2 × 1);
    # full: the seed's 2 × 4.
    train_batch_size: PositiveInt | None = None
    gradient_accumulation_steps: PositiveInt | None = None
    # a Ray Train checkpoint every N optimizer steps (where a stopped run resumes)
    train_save_steps: PositiveInt = TrainConfig.save_steps
    max_val_rows: NonNegativeInt | None = None  # None: the profile's (demo 16, full all)
    train_cpu_bf16: bool | None = None  # CPU bf16 autocast; None: where the CPU has native bf16 (as auto above)
    train_gradient_checkpointing: bool | None = None  # None: the profile's (demo off: faster; full on: less memory)
    # the decide steps' parity verdict: is a candidate worse than the teacher by more than this? (0.02: 2 points)
    parity_margin: PositiveFloat = DEFAULT_MARGIN
    report: bool = True
    seed: NonNegativeInt = 42
    # Phase II (`ray_app/pipeline/codeact_steps.py`): seed = the ten v0 steps, codeact = the CodeAct steps, all = both
    phase: Phase = "seed"
    codeact_teacher: CodeactTeacherMode = "auto"  # auto: hosted when AZURE_* / SLM_SWAP_TEACHER_* are set
    codeact_multistep_tasks: NonNegativeInt = 120  # generated multi-step tasks beside the committed rows' tasks
    codeact_eval_tasks: PositiveInt | None = None  # None: the profile's (demo: 36 test tasks, kinds in turn; full: all)
    codeact_train_rows: PositiveInt | None = None  # None: the profile's (demo: the first 96 codeact rows; full: all)

    def resolved(self) -> PipelineConfig:
        """Profile-dependent values filled in; every None that has a profile value is replaced."""
        model_path = self.model_path or os.environ.get("SLM_MODEL_PATH") or None
        profile = self.profile if self.profile != "auto" else ("full" if model_path else "demo")
        demo = profile == "demo"

        def pick(value, demo_value, full_value):
            return value if value is not None else (demo_value if demo else full_value)

        return dataclasses.replace(
            self,
            profile=profile,
            model_path=model_path,
            max_new_tokens=pick(self.max_new_tokens, 128, 256),
            max_train_rows=pick(self.max_train_rows, 40, None),
            train_batch_size=pick(self.train_batch_size, 1, TrainConfig.per_device_batch_size),
            gradient_accumulation_steps=pick(self.gradient_accumulation_steps, 2, 4),
            max_val_rows=pick(self.max_val_rows, 16, None),
            train_gradient_checkpointing=pick(self.train_gradient_checkpointing, False, True),
            codeact_eval_tasks=pick(self.codeact_eval_tasks, 36, None),
            codeact_train_rows=pick(self.codeact_train_rows, 96, None),
        )

    def to_json(self) -> dict[str, Any]:
        return {item.name: jsonable(getattr(self, item.name)) for item in fields(self)}


def jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def build_config(config_file: Path | None, overrides: dict[str, Any]) -> PipelineConfig:
    """Defaults ← config file ← flags that were given (None means 'not given'), each parsed to its field's
    type (`ray_app.settings`), then resolved. A wrong key, type or value is a PipelineConfigError."""
    try:
        values: dict[str, Any] = {}
        if config_file is not None:
            raw, source = read_settings_file(config_file)
            values.update(parse_settings(PipelineConfig, raw, source))
        given = {key: value for key, value in overrides.items() if value is not None}
        values.update(parse_settings(PipelineConfig, given, COMMAND_LINE))
        check_margin(values.get("parity_margin", DEFAULT_MARGIN))  # before any compute, not at the decide step
    except (SettingsError, ValueError) as error:
        raise PipelineConfigError(str(error)) from None
    return PipelineConfig(**values).resolved()
