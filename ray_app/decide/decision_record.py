"""The record of decision.json: FINE_TUNE per track and everything the decide step put beside it.

`run_decide` (`decide.py`) builds it and writes it with `to_json`; the train gate, the pipeline,
`slm-swap decide` and the report read it with `Decision.read`, which names the file and the dotted
field (`tracks.structured.adapted.slm-adapter.vs_slm.core.exact_match_rate.delta`) when one is
missing or mistyped. The record is a typed view of the file, not another format:
`to_json(from_json(x)) == x` for every file `run_decide` writes, key order included. Two fields are
derived and so written but not read back: the top-level `FINE_TUNE` (from the tracks) and each
track's `latency_cost` (from its models).

A comparison of two models keys its rates by their labels (`{"teacher": 0.9, "slm": 0.8, "delta":
0.1, ...}`, `discordant: {"teacher_only": 2, "slm_only": 1}`), so its records take the two labels.
A comparison with the teacher also carries `parity` (`Parity`): the non-inferiority verdict per core
metric and overall at a margin (`non_inferiority.py`); files written before it existed read as None.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_app.decide.non_inferiority import Parity
from ray_app.decide.price_table import PriceTable, PriceTableError, parse_price_table
from ray_app.metrics.metrics_record import Latency
from ray_app.metrics.tracks import CORE_METRICS
from ray_app.paths import PROJECT_ROOT
from ray_app.record_fields import RecordError, RecordFields, is_number, read_json_file

DECISION_FILE = "decision.json"


@dataclass(frozen=True)
class MetricGap:
    """One core metric, candidate vs reference over the same rows; delta > 0: the candidate is worse."""

    reference_rate: float
    candidate_rate: float
    delta: float  # reference rate - candidate rate
    interval_95: tuple[float, float]  # paired bootstrap interval of delta
    mcnemar_p: float  # exact McNemar p on the discordant rows
    reference_only: int  # rows only the reference hits
    candidate_only: int  # rows only the candidate hits
    verdict: str  # the gap in plain words

    @classmethod
    def from_fields(cls, fields: RecordFields, reference: str, candidate: str) -> MetricGap:
        interval = fields.listed("interval_95")
        if len(interval) != 2 or not all(is_number(value) for value in interval):
            raise fields.error("interval_95", "[low, high], two numbers")
        discordant = fields.object("discordant")
        return cls(
            reference_rate=fields.number(reference),
            candidate_rate=fields.number(candidate),
            delta=fields.number("delta"),
            interval_95=(interval[0], interval[1]),
            mcnemar_p=fields.number("mcnemar_p"),
            reference_only=discordant.integer(f"{reference}_only"),
            candidate_only=discordant.integer(f"{candidate}_only"),
            verdict=fields.text("verdict"),
        )

    def to_json(self, reference: str, candidate: str) -> dict[str, Any]:
        return {
            reference: self.reference_rate,
            candidate: self.candidate_rate,
            "delta": self.delta,
            "interval_95": list(self.interval_95),
            "mcnemar_p": self.mcnemar_p,
            "discordant": {f"{reference}_only": self.reference_only, f"{candidate}_only": self.candidate_only},
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class RateGap:
    """A metric outside the decision (field F1, lenient args), for information."""

    reference_rate: float
    candidate_rate: float
    delta: float

    @classmethod
    def from_fields(cls, fields: RecordFields, reference: str, candidate: str) -> RateGap:
        return cls(fields.number(reference), fields.number(candidate), fields.number("delta"))

    def to_json(self, reference: str, candidate: str) -> dict[str, Any]:
        return {reference: self.reference_rate, candidate: self.candidate_rate, "delta": self.delta}


@dataclass(frozen=True)
class ModelComparison:
    """Candidate vs reference: every core metric with its interval and p-value, the other rates as info."""

    reference: str  # a model label: teacher, slm, slm-adapter...
    candidate: str
    core: dict[str, MetricGap]
    info: dict[str, RateGap]
    parity: Parity | None = None  # against the teacher only; None in files written before it existed

    @classmethod
    def from_fields(cls, fields: RecordFields, core_metrics: tuple[str, ...]) -> ModelComparison:
        reference, candidate = fields.text("reference"), fields.text("candidate")
        for metric in core_metrics:
            fields.object("core").raw(metric)  # RecordError when the track's core metric is missing
        return cls(
            reference,
            candidate,
            {name: MetricGap.from_fields(gap, reference, candidate) for name, gap in fields.objects("core").items()},
            {name: RateGap.from_fields(gap, reference, candidate) for name, gap in fields.objects("info").items()},
            Parity.from_fields(fields.object("parity")) if "parity" in fields.value else None,
        )

    def to_json(self) -> dict[str, Any]:
        pair = (self.reference, self.candidate)
        written = {
            "reference": self.reference,
            "candidate": self.candidate,
            "core": {name: gap.to_json(*pair) for name, gap in self.core.items()},
            "info": {name: gap.to_json(*pair) for name, gap in self.info.items()},
        }
        return written if self.parity is None else {**written, "parity": self.parity.to_json()}


@dataclass(frozen=True)
class TokenUse:
    prompt: int  # summed over the rows (metrics.json)
    completion: int
    mean_prompt: float  # per row
    mean_completion: float

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "completion": self.completion,
            "mean_prompt": self.mean_prompt,
            "mean_completion": self.mean_completion,
        }


@dataclass(frozen=True)
class ModelSummary:
    """What one model costs and how fast it answered (its metrics.json and the price table)."""

    engine: dict[str, Any]  # metrics.json `engine`, as the engine described itself
    predictions: str  # project-relative predictions.jsonl
    rates: dict[str, float]  # re-scored from predictions.jsonl
    latency_s: Latency
    tokens: TokenUse
    wall_time_s: float
    cost_per_1k_calls_usd: float
    cost_basis: str  # how the cost was computed, in words

    @classmethod
    def from_fields(cls, fields: RecordFields) -> ModelSummary:
        tokens = fields.object("tokens")
        return cls(
            engine=fields.mapping("engine"),
            predictions=fields.text("predictions"),
            rates=fields.numbers("rates"),
            latency_s=Latency.from_fields(fields.object("latency_s"), null=False),
            tokens=TokenUse(
                tokens.integer("prompt"),
                tokens.integer("completion"),
                tokens.number("mean_prompt"),
                tokens.number("mean_completion"),
            ),
            wall_time_s=fields.number("wall_time_s"),
            cost_per_1k_calls_usd=fields.number("cost_per_1k_calls_usd"),
            cost_basis=fields.text("cost_basis"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "predictions": self.predictions,
            "rates": self.rates,
            "latency_s": self.latency_s.to_json(),
            "tokens": self.tokens.to_json(),
            "wall_time_s": self.wall_time_s,
            "cost_per_1k_calls_usd": self.cost_per_1k_calls_usd,
            "cost_basis": self.cost_basis,
        }


@dataclass(frozen=True)
class AdaptedComparison:
    """A candidate beside the base SLM (an adapted or a constrained SLM) against the teacher and the base SLM."""

    vs_teacher: ModelComparison
    vs_slm: ModelComparison

    def to_json(self) -> dict[str, Any]:
        return {"vs_teacher": self.vs_teacher.to_json(), "vs_slm": self.vs_slm.to_json()}


@dataclass(frozen=True)
class TrackDecision:
    """decision.json `tracks.<track>`: the decision (teacher vs base SLM) and every model beside it."""

    fine_tune: int  # FINE_TUNE: 1 when the base SLM is below the teacher on any core metric, else 0
    reason: str
    rows: int  # test rows both models answered
    teacher_mode: str  # the teacher engine's kind, "(simulated)" for a replay of simulated traces
    teacher_vs_slm: ModelComparison
    models: dict[str, ModelSummary]  # by label: teacher, slm, then each other candidate
    # by label: every candidate beside the base SLM, adapted (slm-adapter) or constrained (slm-constrained,
    # slm-adapter-constrained); the field kept the name it had when adapters were the only ones
    adapted: dict[str, AdaptedComparison]

    @classmethod
    def from_fields(cls, fields: RecordFields, track: str) -> TrackDecision:
        core_metrics = CORE_METRICS.get(track, ())

        def fine_tune() -> int:
            value = fields.integer("FINE_TUNE")
            if value not in (0, 1):
                raise fields.error("FINE_TUNE", "0 or 1")
            return value

        return cls(  # read in the file's order, so the first bad field is the one reported
            fine_tune=fine_tune(),
            reason=fields.text("reason"),
            rows=fields.integer("rows"),
            teacher_mode=fields.text("teacher_mode"),
            teacher_vs_slm=ModelComparison.from_fields(fields.object("teacher_vs_slm"), core_metrics),
            models={label: ModelSummary.from_fields(model) for label, model in fields.objects("models").items()},
            adapted={
                label: AdaptedComparison(
                    ModelComparison.from_fields(pair.object("vs_teacher"), core_metrics),
                    ModelComparison.from_fields(pair.object("vs_slm"), core_metrics),
                )
                for label, pair in fields.objects("adapted").items()
            },
        )

    def parity(self) -> dict[str, Parity]:
        """Each candidate's verdicts against the teacher, by label: the base SLM, then each label of `adapted`."""
        found = {self.teacher_vs_slm.candidate: self.teacher_vs_slm.parity}
        found |= {label: pair.vs_teacher.parity for label, pair in self.adapted.items()}
        return {label: parity for label, parity in found.items() if parity is not None}

    def latency_cost(self) -> dict[str, dict[str, float]]:
        """Latency and cost of every model side by side (derived from `models`)."""
        return {
            "latency_p50_s": {label: model.latency_s.p50 for label, model in self.models.items()},  # type: ignore[misc]
            "latency_p95_s": {label: model.latency_s.p95 for label, model in self.models.items()},  # type: ignore[misc]
            "cost_per_1k_calls_usd": {label: model.cost_per_1k_calls_usd for label, model in self.models.items()},
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "FINE_TUNE": self.fine_tune,
            "reason": self.reason,
            "rows": self.rows,
            "teacher_mode": self.teacher_mode,
            "teacher_vs_slm": self.teacher_vs_slm.to_json(),
            "latency_cost": self.latency_cost(),
            "models": {label: model.to_json() for label, model in self.models.items()},
            "adapted": {label: pair.to_json() for label, pair in self.adapted.items()},
        }


@dataclass(frozen=True)
class DecisionConfig:
    """decision.json `config`: the settings the decide step ran with (paths project-relative)."""

    eval_root: str
    tracks: tuple[str, ...]
    teacher_label: str
    slm_label: str  # the base SLM, free; every other label under a track is a candidate beside it
    price_table: str  # the price table file read
    slm_hardware: str  # its slm_usd_per_instance_hour entry the SLMs were priced with
    teacher_price_model: str | None  # an explicit teacher price entry, else None (from the engine)
    bootstrap_resamples: int
    confidence: float
    seed: int
    parity_margin: float | None = None  # the non-inferiority margin; None in files written before it existed

    @classmethod
    def from_fields(cls, fields: RecordFields) -> DecisionConfig:
        tracks = fields.listed("tracks")
        if not all(isinstance(track, str) for track in tracks):
            raise fields.error("tracks", "a list of track names")
        return cls(
            eval_root=fields.text("eval_root"),
            tracks=tuple(tracks),
            teacher_label=fields.text("teacher_label"),
            slm_label=fields.text("slm_label"),
            price_table=fields.text("price_table"),
            slm_hardware=fields.text("slm_hardware"),
            teacher_price_model=fields.text("teacher_price_model", null=True),
            bootstrap_resamples=fields.integer("bootstrap_resamples"),
            confidence=fields.number("confidence"),
            seed=fields.integer("seed"),
            parity_margin=fields.number("parity_margin") if "parity_margin" in fields.value else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "eval_root": self.eval_root,
            "tracks": list(self.tracks),
            "teacher_label": self.teacher_label,
            "slm_label": self.slm_label,
            "price_table": self.price_table,
            "slm_hardware": self.slm_hardware,
            "teacher_price_model": self.teacher_price_model,
            "bootstrap_resamples": self.bootstrap_resamples,
            "confidence": self.confidence,
            "seed": self.seed,
        } | ({} if self.parity_margin is None else {"parity_margin": self.parity_margin})


@dataclass(frozen=True)
class FileRead:
    path: str  # project-relative when inside the project, else absolute
    sha256: str


@dataclass(frozen=True)
class Decision:
    """decision.json."""

    created_at: str
    rule: str  # the decision rule in words
    tracks: dict[str, TrackDecision]  # the tracks decided
    missing: dict[str, str]  # track → why it was not decided, with the command that fixes it
    config: DecisionConfig
    price_table: PriceTable  # as the decide step read it from its file (config.price_table)
    files: tuple[FileRead, ...]  # every file read, with its sha256

    @property
    def fine_tune(self) -> dict[str, int]:
        """FINE_TUNE per decided track."""
        return {track: result.fine_tune for track, result in self.tracks.items()}

    def digests(self) -> dict[str, str]:
        """Path (as recorded) → sha256 of every file the decide step read."""
        return {read.path: read.sha256 for read in self.files}

    @classmethod
    def from_json(cls, value: Any, path: Path | str) -> Decision:
        """The record of decoded decision.json `value`; RecordError names `path` and the first bad field."""
        fields = RecordFields(value, path)
        # Read in the file's order, so that the first bad field is the one reported.
        created_at, rule = fields.text("created_at"), fields.text("rule")
        tracks = {track: TrackDecision.from_fields(result, track) for track, result in fields.objects("tracks").items()}
        missing = fields.texts("missing")
        config = DecisionConfig.from_fields(fields.object("config"))
        try:
            prices = parse_price_table(Path(path), fields.mapping("price_table"))
        except PriceTableError as error:
            raise RecordError(f"{path}: field 'price_table': {str(error).removeprefix(f'{path}: ')}") from None
        prices = dataclasses.replace(prices, path=PROJECT_ROOT / config.price_table)  # the file decide read
        entries = [RecordFields(entry, path, f"files.{i}") for i, entry in enumerate(fields.listed("files"))]
        files = tuple(FileRead(entry.text("path"), entry.text("sha256")) for entry in entries)
        return cls(created_at, rule, tracks, missing, config, prices, files)

    @classmethod
    def read(cls, path: Path) -> Decision:
        """decision.json at `path`; RecordError names the file and the line (bad JSON) or the field."""
        return cls.from_json(read_json_file(path), path)

    def to_json(self) -> dict[str, Any]:
        return {
            "created_at": self.created_at,
            "rule": self.rule,
            "FINE_TUNE": self.fine_tune,
            "tracks": {track: result.to_json() for track, result in self.tracks.items()},
            "missing": self.missing,
            "config": self.config.to_json(),
            "price_table": self.price_table.to_json(),
            "files": [{"path": read.path, "sha256": read.sha256} for read in self.files],
        }
