"""The decide step's settings (`DecideConfig`), its error, and the command that writes each label's results.

Readers of decision.json and of the evaluation folders (the report, the pipeline, the CLI) import these
without the step itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ray_app.data.rows import TRACKS, Track
from ray_app.decide.model_labels import is_constrained, slm_label
from ray_app.decide.non_inferiority import DEFAULT_MARGIN
from ray_app.paths import EVAL_ROOT
from ray_app.settings import PositiveFloat


class DecideError(ValueError):
    """Results that cannot be compared; the message names the files involved and what to do."""


@dataclass(frozen=True)
class DecideConfig:
    eval_root: Path = EVAL_ROOT  # holds <track>/<label>/{predictions.jsonl,metrics.json}; decision.json goes here
    tracks: tuple[Track, ...] = TRACKS
    teacher_label: str = "teacher"
    slm_label: str = "slm"  # the base SLM, free; every other label under a track is a candidate beside it
    price_table_path: Path | None = None  # None: $SLM_SWAP_PRICE_TABLE, else slm_swap/price_table.json
    slm_hardware: str = "cpu-2core"  # the price table's slm_usd_per_instance_hour entry the SLMs run on
    teacher_price_model: str | None = None  # None: the teacher engine's "model" when listed, else "default"
    bootstrap_resamples: int = 10_000
    seed: int = 42
    # parity verdict: is a candidate worse than the teacher by more than this difference of rates? (0.02: 2 points)
    parity_margin: PositiveFloat = DEFAULT_MARGIN
    require_langfuse: bool | None = None  # None: SLM_SWAP_REQUIRE_LANGFUSE


def eval_command(track: str, label: str, config: DecideConfig) -> str:
    """The command that writes `<eval_root>/<track>/<label>/`."""
    if label == config.teacher_label:
        return f"slm-swap eval --track {track} --model teacher" + ("" if label == "teacher" else f" --label {label}")
    if label == config.slm_label:
        return f"slm-swap eval --track {track} --model slm" + ("" if label == "slm" else f" --label {label}")
    constrained = " --decoding constrained" if is_constrained(label) else ""
    if label == slm_label(adapted=False, constrained=True):
        return f"slm-swap eval --track {track} --model slm{constrained}"
    return f"slm-swap eval --track {track} --model slm --adapter ADAPTER_FOLDER{constrained} --label {label}"
