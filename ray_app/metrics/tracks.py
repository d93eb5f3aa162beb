"""Scoring by track name: the one entry point the evaluation, comparison and CLI steps call."""

from __future__ import annotations

from ray_app.data.rows import TRACKS, Track
from ray_app.metrics.structured import structured_metrics
from ray_app.metrics.toolcall import toolcall_metrics

# The metrics the fine-tune decision rule compares; the others are reported for diagnosis only.
CORE_METRICS: dict[str, tuple[str, ...]] = {
    "structured": ("json_valid_rate", "exact_match_rate"),
    "toolcall": ("valid_call_rate", "name_match_rate", "args_exact_rate"),
}


def score_rows(track: Track, golds: list[str], predictions: list[str], prompts: list[str]) -> dict[str, float | int]:
    """Flat `{metric: rate, count: hits, "rows": n}` for one track. Lists must have the same length.

    `prompts` is used by the toolcall track (tool schemas for the lenient match) and only
    length-checked for the structured track.
    """
    if not len(golds) == len(predictions) == len(prompts):
        raise ValueError(
            f"got {len(golds)} gold completions, {len(predictions)} predictions and {len(prompts)} prompts"
        )
    if track == "structured":
        return structured_metrics(golds, predictions)
    if track == "toolcall":
        return toolcall_metrics(golds, predictions, prompts)
    raise ValueError(f"unknown track {track!r} (expected one of {', '.join(TRACKS)})")
