"""The main job's settings: the seed's values as defaults, then a profile, a config file, env, flags.

Precedence (later wins): field defaults → profile (`demo` or `full`) → `--config FILE` (JSON or
YAML, keys are field names) → environment (SLM_MODEL_PATH and the SLM_SWAP_*_ROOT variables, read
where the paths are defined) → command-line flags. The resolved config is written beside the
outputs (`<eval_root>/pipeline_config.json`).

Profiles: `demo` is what `make demo` runs on 2 CPU cores with no credentials — the demo SLM, 128 new
tokens, and a smaller training budget (the first 40 rows of each train split, batch 2, 16
validation rows, no gradient checkpointing) so the whole job stays under 15 minutes; `full` is the
seed's run — the whole train split, effective batch 8, gradient checkpointing. `auto` picks `full`
when a model path is given (flag, config file or SLM_MODEL_PATH) and `demo` otherwise.

Precision is not a profile value: `slm_precision` auto (8-bit on GPU; on CPU bf16 where the CPU has
native bf16, else fp32) and `train_cpu_bf16` None (bf16 autocast by the same rule) are decided by
`engines.precision` on the machine that runs, so a demo on an AVX2-only CPU runs fp32, not emulated bf16.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from ray_app.paths import ADAPTER_ROOT, DATASET_ROOT, EVAL_ROOT, PROJECT_ROOT, RAY_TRAIN_STORAGE

Profile = Literal["auto", "demo", "full"]
Phase = Literal["seed", "codeact", "all"]
DataSource = Literal["xlam", "traces"]


class PipelineConfigError(ValueError):
    pass


@dataclass(frozen=True)
class PipelineConfig:
    profile: Profile = "auto"
    data_source: DataSource = "xlam"  # xlam: the committed splits; traces: the agent's traces → splits
    dataset_root: Path = DATASET_ROOT
    agent_id: str = "dummy-agent"
    trace_path: Path = PROJECT_ROOT / "storage" / "dummy_langfuse_traces.jsonl"  # the demo agent's traces
    agent_trace_json: Path | None = None  # data_source=traces: an export; None pulls from Langfuse
    eval_root: Path = EVAL_ROOT
    adapter_root: Path = ADAPTER_ROOT
    storage_path: Path = RAY_TRAIN_STORAGE
    model_path: str | None = None  # None: SLM_MODEL_PATH; with neither, the demo SLM (fetched)
    teacher_mode: str = "auto"  # azure with AZURE_ENDPOINT, openai-compatible with a base URL, else replay
    slm_precision: str = "auto"  # auto: 8-bit on GPU; on CPU bf16 where native, else fp32
    max_new_tokens: int | None = None  # None: the profile's (demo 128, full 256)
    train: bool = True  # train the tracks whose decision says FINE_TUNE=1
    train_strategy: str = "sequential"  # or parallel (both tracks at once)
    train_workers: int = 1
    max_train_rows: int | None = None  # None: the profile's (demo 40 per track, full all)
    train_batch_size: int = 2
    gradient_accumulation_steps: int | None = None  # None: the profile's (demo 1, full 4)
    train_save_steps: int = 10  # a Ray Train checkpoint every N optimizer steps (where a stopped run resumes)
    max_val_rows: int | None = None  # None: the profile's (demo 16, full all)
    train_cpu_bf16: bool | None = None  # CPU bf16 autocast; None: where the CPU has native bf16 (as auto above)
    train_gradient_checkpointing: bool | None = None  # None: the profile's (demo off: faster; full on: less memory)
    report: bool = True
    seed: int = 42
    # Phase II (`ray_app/pipeline/codeact_steps.py`): seed = the ten v0 steps, codeact = the CodeAct steps, all = both
    phase: Phase = "seed"
    codeact_teacher: str = "auto"  # simulated, or hosted (auto: hosted when AZURE_* / SLM_SWAP_TEACHER_* are set)
    codeact_multistep_tasks: int = 120  # generated multi-step tasks captured beside the committed rows' tasks
    codeact_eval_tasks: int | None = None  # None: the profile's (demo: 36 test tasks, kinds in turn; full: all)
    codeact_train_rows: int | None = None  # None: the profile's (demo: the first 96 codeact train rows; full: all)

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
            gradient_accumulation_steps=pick(self.gradient_accumulation_steps, 1, 4),
            max_val_rows=pick(self.max_val_rows, 16, None),
            train_gradient_checkpointing=pick(self.train_gradient_checkpointing, False, True),
            codeact_eval_tasks=pick(self.codeact_eval_tasks, 36, None),
            codeact_train_rows=pick(self.codeact_train_rows, 96, None),
        )

    def to_json(self) -> dict[str, Any]:
        return {item.name: jsonable(getattr(self, item.name)) for item in fields(self)}


def jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def read_config_file(path: Path) -> dict[str, Any]:
    """Keys of a JSON or YAML file, checked against the fields (a typo is an error, not a silent default)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PipelineConfigError(f"{path}: cannot read the config file: {error}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except ValueError as error:
        raise PipelineConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {error}") from None
    if not isinstance(values, dict):
        raise PipelineConfigError(f"{path}: the config must be a mapping of setting names to values")
    known = {item.name: item for item in fields(PipelineConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise PipelineConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return values


def build_config(config_file: Path | None, overrides: dict[str, Any]) -> PipelineConfig:
    """Defaults ← config file ← flags that were given (None means 'not given'), then resolved."""
    values: dict[str, Any] = read_config_file(config_file) if config_file else {}
    values.update({key: value for key, value in overrides.items() if value is not None})
    path_fields = {item.name for item in fields(PipelineConfig) if "Path" in str(item.type)}
    for key in path_fields & set(values):
        values[key] = Path(values[key]) if values[key] is not None else None
    try:
        return PipelineConfig(**values).resolved()
    except TypeError as error:
        raise PipelineConfigError(f"pipeline settings: {error}") from None
