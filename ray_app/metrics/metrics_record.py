"""The record of metrics.json: what one evaluation of one model on one track measured.

`eval_metrics_record` (`ray_app/eval/evaluate.py`) builds it and `run_eval` and the live compare's
`--save` write it with `to_json`; the decide step, the report and `run_eval`'s reuse check read it
with `EvalMetrics.read`, which names the file and the field when one is missing or mistyped. The
record is a typed view of the file, not another format: `to_json(from_json(x)) == x` for every
file the evaluate step writes, key order included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_app.metrics.tracks import CORE_METRICS
from ray_app.record_fields import RecordError, RecordFields, read_json_file

METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Latency:
    """Seconds a row took: median, 95th percentile and mean (None when no row was answered)."""

    p50: float | None
    p95: float | None
    mean: float | None

    @classmethod
    def from_fields(cls, fields: RecordFields, *, null: bool = True) -> Latency:
        return cls(*(fields.number(key, null=null) for key in ("p50", "p95", "mean")))

    def to_json(self) -> dict[str, Any]:
        return {"p50": self.p50, "p95": self.p95, "mean": self.mean}


@dataclass(frozen=True)
class TokenCounts:
    prompt: int  # summed over the rows
    completion: int
    completion_per_s: float | None  # completion tokens / eval wall time (None for a zero wall time)

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completion": self.completion, "completion_per_s": self.completion_per_s}


@dataclass(frozen=True)
class EvalMetrics:
    """`<eval_root>/<track>/<label>/metrics.json`, field for field in the file's order."""

    track: str
    model_label: str
    split: str  # the split's name (or, for the live compare, the rows file it read)
    rows: int
    metrics: dict[str, float]  # `score_rows`: every rate and the hit counts behind them
    latency_s: Latency
    tokens: TokenCounts
    wall_time_s: float
    engine: dict[str, Any]  # the engine's own description (kind, model, precision...), kept as it wrote it
    teacher_mode: str | None  # the teacher engine's kind; None for an SLM
    run_key: str  # sha256 of everything the numbers depend on: `run_eval` reuses a folder with the same key
    identity: dict[str, Any]  # what went into the run key
    predictions: str  # predictions.jsonl beside it, project-relative
    config: dict[str, Any]  # the resolved config of the run
    git: dict[str, Any]
    packages: dict[str, str | None]
    created_at: str

    @classmethod
    def from_json(cls, value: Any, path: Path | str) -> EvalMetrics:
        """The record of decoded metrics.json `value`; RecordError names `path` and the first bad field."""
        fields = RecordFields(value, path)
        track = fields.text("track")
        metrics = fields.numbers("metrics")
        for metric in CORE_METRICS.get(track, ()):
            if metric not in metrics:
                raise RecordError(f"{path}: field 'metrics.{metric}' missing (a core metric of {track})")
        fields.object("engine").text("kind")
        tokens = fields.object("tokens")
        return cls(
            track=track,
            model_label=fields.text("model_label"),
            split=fields.text("split"),
            rows=fields.integer("rows"),
            metrics=metrics,
            latency_s=Latency.from_fields(fields.object("latency_s")),
            tokens=TokenCounts(
                prompt=tokens.integer("prompt"),
                completion=tokens.integer("completion"),
                completion_per_s=tokens.number("completion_per_s", null=True),
            ),
            wall_time_s=fields.number("wall_time_s"),
            engine=fields.mapping("engine"),
            teacher_mode=fields.text("teacher_mode", null=True),
            run_key=fields.text("run_key"),
            identity=fields.mapping("identity"),
            predictions=fields.text("predictions"),
            config=fields.mapping("config"),
            git=fields.mapping("git"),
            packages=fields.mapping("packages"),
            created_at=fields.text("created_at"),
        )

    @classmethod
    def read(cls, path: Path) -> EvalMetrics:
        """metrics.json at `path`; RecordError names the file and the line (bad JSON) or the field."""
        return cls.from_json(read_json_file(path), path)

    def to_json(self) -> dict[str, Any]:
        return {
            "track": self.track,
            "model_label": self.model_label,
            "split": self.split,
            "rows": self.rows,
            "metrics": self.metrics,
            "latency_s": self.latency_s.to_json(),
            "tokens": self.tokens.to_json(),
            "wall_time_s": self.wall_time_s,
            "engine": self.engine,
            "teacher_mode": self.teacher_mode,
            "run_key": self.run_key,
            "identity": self.identity,
            "predictions": self.predictions,
            "config": self.config,
            "git": self.git,
            "packages": self.packages,
            "created_at": self.created_at,
        }
