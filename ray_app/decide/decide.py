"""Decide step: teacher vs base SLM (and every adapted SLM) per track → `<eval_root>/decision.json`.

Reads `<eval_root>/<track>/<label>/{predictions.jsonl,metrics.json}` as the evaluate step writes
them. For each track with both teacher and base-SLM results it:
1. checks both answered the same rows (same prompts and golds, same order) and re-scores every row;
2. per core metric reports teacher rate, SLM rate, delta = teacher - slm, a paired bootstrap 95%
   interval of the delta, the exact McNemar p and a verdict in plain words; non-core metrics
   (args_lenient_rate, field_f1, ...) are reported as info;
3. applies the seed's rule unchanged (`decide_fine_tune`): FINE_TUNE = 1 when the SLM is below the
   teacher on any core metric (delta > 0), else 0. Intervals sit beside it and never change it;
4. beside the rule, the parity verdict of each candidate against the teacher (`non_inferiority.py`):
   per core metric and overall, "not worse" by more than the margin, "worse", or "cannot tell" with
   about how many rows would decide. It never changes FINE_TUNE either;
5. puts latency p50/p95, tokens and cost per 1,000 calls (`price_table.py`) side by side;
6. compares every other label with the teacher (parity included) and with the base SLM the same way
   (delta = reference - candidate: > 0 means the candidate is worse): adapted SLMs such as `slm-adapter`
   and the constrained configurations `slm-constrained`, `slm-adapter-constrained` (`model_labels.py`).
   They are candidates beside the decision, never inputs of FINE_TUNE, which reads `teacher` and `slm` only.
Tracks without results are listed with the command that produces them. decision.json (the
`Decision` record, `decision_record.py`) also records the resolved config, the price table, the
files read with their sha256, and when it was written. Settings: `decide_config.py`; reading and
re-scoring one label's results: `model_results.py`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray_app.atomic_files import atomic_write_json
from ray_app.data.rows import TRACKS, Track
from ray_app.decide.decide_config import DecideConfig, DecideError, eval_command
from ray_app.decide.decision_record import (
    DECISION_FILE,
    AdaptedComparison,
    Decision,
    DecisionConfig,
    FileRead,
    MetricGap,
    ModelComparison,
    ModelSummary,
    RateGap,
    TokenUse,
    TrackDecision,
)
from ray_app.decide.model_labels import configuration_order
from ray_app.decide.model_results import ModelResults, PairedHits, check_same_rows, load_model_results
from ray_app.decide.non_inferiority import (
    Parity,
    check_margin,
    metric_parity,
    parity,
    parity_metadata,
)
from ray_app.decide.paired_statistics import (
    discordant_counts,
    mcnemar_exact_p,
    paired_bootstrap_deltas,
    percentile_interval,
)
from ray_app.decide.price_table import (
    PriceTable,
    load_price_table,
    slm_cost_per_1k_calls,
    teacher_cost_per_1k_calls,
)
from ray_app.metrics import CORE_METRICS
from ray_app.metrics.metrics_record import Latency
from ray_app.paths import project_relative

CONFIDENCE = 0.95
RULE = (
    "FINE_TUNE = 1 when the base SLM is below the teacher on any core metric (delta = teacher - slm > 0), "
    "else 0; the 95% intervals and McNemar p-values are reported beside it and never change it"
)


def r6(value: float) -> float:
    return round(float(value), 6)


def teacher_model_name(engine: Mapping[str, Any]) -> str | None:
    """The hosted model behind the teacher's numbers: `model`, else the one model a replay saw."""
    if isinstance(engine.get("model"), str):
        return engine["model"]
    seen = engine.get("models_seen")
    return seen[0] if isinstance(seen, list) and len(seen) == 1 and isinstance(seen[0], str) else None


# ---- pure logic: verdicts and the decision rule ----


def metric_verdict(delta: float, interval: Sequence[float], rows: int, reference: str, candidate: str) -> str:
    """Plain words for one metric; delta = reference - candidate, so > 0 means the candidate is worse."""
    low, high = interval
    where = f"95% interval [{low:.3f}, {high:.3f}]"
    if delta == 0:
        return f"{candidate} equal to {reference} on these {rows} rows ({where})"
    direction = "worse" if delta > 0 else "better"
    if (delta > 0 and low > 0) or (delta < 0 and high < 0):
        return f"{candidate} {direction} than {reference}, significant ({where} excludes 0)"
    return f"{candidate} {direction} than {reference}; {rows} rows cannot tell them apart ({where} contains 0)"


def decide_fine_tune(core_deltas: Mapping[str, float], teacher: str = "teacher", slm: str = "slm") -> tuple[int, str]:
    """The seed's rule: (1, reason) when any core delta (teacher - slm) is > 0, else (0, reason)."""
    below = {metric: delta for metric, delta in core_deltas.items() if delta > 0}
    if below:
        listed = ", ".join(f"{metric} (delta {delta:.6g})" for metric, delta in below.items())
        return 1, f"{slm} below {teacher} on {listed}"
    return 0, f"{slm} equal to or above {teacher} on every core metric ({', '.join(core_deltas)})"


def compare_core(
    reference: PairedHits,
    candidate: PairedHits,
    metrics: Sequence[str],
    resamples: int,
    seed: int,
    parity_margin: float | None,
) -> tuple[dict[str, MetricGap], Parity | None]:
    """Each core metric of candidate vs reference over paired rows, and with `parity_margin` (against the
    teacher) the parity verdicts; one bootstrap draw per metric serves the interval and the one-sided bounds."""
    gaps, verdicts = {}, {}
    for metric in metrics:
        ref_hits, cand_hits = reference.hits[metric], candidate.hits[metric]
        rows = len(ref_hits)
        delta = (sum(ref_hits) - sum(cand_hits)) / rows  # from counts, so its sign is exact
        deltas = paired_bootstrap_deltas(ref_hits, cand_hits, resamples, seed)
        low, high = percentile_interval(deltas, CONFIDENCE)
        reference_only, candidate_only = discordant_counts(ref_hits, cand_hits)
        gaps[metric] = MetricGap(
            reference_rate=r6(reference.rates[metric]),
            candidate_rate=r6(candidate.rates[metric]),
            delta=r6(delta),
            interval_95=(r6(low), r6(high)),
            # Significant digits, not decimals: a p-value of 4e-11 must not print as 0.
            mcnemar_p=float(f"{mcnemar_exact_p(ref_hits, cand_hits):.6g}"),
            reference_only=reference_only,
            candidate_only=candidate_only,
            verdict=metric_verdict(delta, (low, high), rows, reference.label, candidate.label),
        )
        if parity_margin is not None:
            verdicts[metric] = metric_parity(deltas, reference_only, candidate_only, rows, parity_margin)
    return gaps, (parity(verdicts, rows, parity_margin) if parity_margin is not None else None)


def compare_models(
    track: Track, reference: ModelResults, candidate: ModelResults, config: DecideConfig, against_teacher: bool
) -> ModelComparison:
    """Core metrics with intervals and p-values (and parity verdicts against the teacher), non-core as info."""
    check_same_rows(reference, candidate)
    margin = config.parity_margin if against_teacher else None
    core, verdicts = compare_core(
        reference, candidate, CORE_METRICS[track], config.bootstrap_resamples, config.seed, margin
    )
    info = {
        metric: RateGap(
            r6(reference.rates[metric]),
            r6(candidate.rates[metric]),
            r6(reference.rates[metric] - candidate.rates[metric]),
        )
        for metric in reference.rates
        if metric not in CORE_METRICS[track]
    }
    return ModelComparison(reference.label, candidate.label, core, info, verdicts)


# ---- latency and cost ----


def model_summary(results: ModelResults, is_teacher: bool, prices: PriceTable, config: DecideConfig) -> ModelSummary:
    """What one model costs and how fast it answered, from its metrics.json and the price table."""
    summary, rows = results.summary, len(results.records)
    mean_prompt, mean_completion = summary.tokens.prompt / rows, summary.tokens.completion / rows
    if is_teacher:
        entry, price = prices.teacher_price(config.teacher_price_model or teacher_model_name(summary.engine))
        cost = teacher_cost_per_1k_calls(price, mean_prompt, mean_completion)
        basis = (
            f"per token, price entry {entry!r}: mean {mean_prompt:.1f} prompt tokens x ${price.input_usd_per_1m}/1M "
            f"+ mean {mean_completion:.1f} completion tokens x ${price.output_usd_per_1m}/1M"
        )
    else:
        hourly = prices.slm_hourly_usd(config.slm_hardware)
        cost = slm_cost_per_1k_calls(hourly, summary.wall_time_s, rows)
        basis = (
            f"throughput: {summary.wall_time_s / rows:.4f} s per row (eval wall time / rows) "
            f"x ${hourly}/h on {config.slm_hardware}"
        )
    latency = summary.latency_s
    return ModelSummary(
        engine=summary.engine,
        predictions=project_relative(results.predictions_path),
        rates={metric: r6(value) for metric, value in results.rates.items()},
        latency_s=Latency(r6(latency.p50), r6(latency.p95), r6(latency.mean)),  # type: ignore[arg-type]
        tokens=TokenUse(summary.tokens.prompt, summary.tokens.completion, r6(mean_prompt), r6(mean_completion)),
        wall_time_s=r6(summary.wall_time_s),
        cost_per_1k_calls_usd=r6(cost),
        cost_basis=basis,
    )


def teacher_mode(engine: Mapping[str, Any]) -> str:
    return f"{engine['kind']} (simulated)" if engine.get("simulated") else str(engine["kind"])


# ---- the step ----


def decide_track(track: Track, config: DecideConfig, prices: PriceTable, read_files: dict[str, str]) -> TrackDecision:
    """Teacher vs base SLM (the decision) and every other label (adapted, constrained) vs both, for one track."""
    track_root = config.eval_root / track
    teacher = load_model_results(track, config.teacher_label, config, read_files)
    slm = load_model_results(track, config.slm_label, config, read_files)
    adapted_labels = configuration_order(
        folder.name
        for folder in track_root.iterdir()
        if (folder / "predictions.jsonl").is_file() and folder.name not in (config.teacher_label, config.slm_label)
    )
    adapted = {label: load_model_results(track, label, config, read_files) for label in adapted_labels}

    core_deltas = {
        metric: (sum(teacher.hits[metric]) - sum(slm.hits[metric])) / len(slm.records) for metric in CORE_METRICS[track]
    }
    fine_tune, reason = decide_fine_tune(core_deltas, teacher.label, slm.label)
    return TrackDecision(
        fine_tune=fine_tune,
        reason=reason,
        rows=len(teacher.records),
        teacher_mode=teacher_mode(teacher.summary.engine),
        teacher_vs_slm=compare_models(track, teacher, slm, config, against_teacher=True),
        models={
            teacher.label: model_summary(teacher, True, prices, config),
            slm.label: model_summary(slm, False, prices, config),
            **{label: model_summary(results, False, prices, config) for label, results in adapted.items()},
        },
        adapted={
            label: AdaptedComparison(
                vs_teacher=compare_models(track, teacher, results, config, against_teacher=True),
                vs_slm=compare_models(track, slm, results, config, against_teacher=False),
            )
            for label, results in adapted.items()
        },
    )


def missing_reason(track: Track, config: DecideConfig) -> str | None:
    """Why a track cannot be decided (no teacher or no base-SLM predictions), or None."""
    reasons = [
        f"no {label} results: run {eval_command(track, label, config)}"
        for label in (config.teacher_label, config.slm_label)
        if not (config.eval_root / track / label / "predictions.jsonl").is_file()
    ]
    return "; ".join(reasons) or None


def resolved_config(config: DecideConfig, prices: PriceTable) -> DecisionConfig:
    return DecisionConfig(
        eval_root=project_relative(config.eval_root),
        tracks=tuple(config.tracks),
        teacher_label=config.teacher_label,
        slm_label=config.slm_label,
        price_table=project_relative(prices.path),
        slm_hardware=config.slm_hardware,
        teacher_price_model=config.teacher_price_model,
        bootstrap_resamples=config.bootstrap_resamples,
        confidence=CONFIDENCE,
        seed=config.seed,
        parity_margin=config.parity_margin,
    )


def check_config(config: DecideConfig, prices: PriceTable) -> None:
    """Fail before reading any result: unknown tracks, labels, hardware or price entries."""
    unknown = [track for track in config.tracks if track not in TRACKS]
    if unknown:
        raise DecideError(f"unknown track(s) {', '.join(map(repr, unknown))} (expected {', '.join(TRACKS)})")
    if not config.teacher_label or not config.slm_label or config.teacher_label == config.slm_label:
        raise DecideError(f"teacher and slm labels must be two different names, got {config.teacher_label!r}")
    if config.bootstrap_resamples < 1:
        raise DecideError(f"bootstrap_resamples must be at least 1, got {config.bootstrap_resamples}")
    try:
        check_margin(config.parity_margin)
    except ValueError as error:
        raise DecideError(str(error)) from None
    prices.slm_hourly_usd(config.slm_hardware)  # raises PriceTableError naming the file and the field
    if config.teacher_price_model is not None and config.teacher_price_model not in prices.teacher_usd_per_1m_tokens:
        known = ", ".join(sorted(prices.teacher_usd_per_1m_tokens))
        raise DecideError(
            f"{prices.path}: field 'teacher_usd_per_1m_tokens' has no entry {config.teacher_price_model!r} "
            f"(known: {known})"
        )


def run_decide(config: DecideConfig) -> Decision:
    """Decide every track from its results and write `<eval_root>/decision.json`; returns what it wrote."""
    prices = load_price_table(config.price_table_path)
    check_config(config, prices)
    read_files = {project_relative(prices.path): hashlib.sha256(prices.path.read_bytes()).hexdigest()}
    tracks: dict[str, TrackDecision] = {}
    missing: dict[str, str] = {}
    for track in config.tracks:
        reason = missing_reason(track, config)
        if reason is not None:
            missing[track] = reason
            continue
        tracks[track] = decide_track(track, config, prices, read_files)
    decision = Decision(
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        rule=RULE,
        tracks=tracks,
        missing=missing,
        config=resolved_config(config, prices),
        price_table=prices,
        files=tuple(FileRead(path, digest) for path, digest in read_files.items()),
    )
    decision_path = atomic_write_json(config.eval_root / DECISION_FILE, decision.to_json())
    log_decision_trace(decision, decision_path, config)
    return decision


def log_decision_trace(decision: Decision, decision_path: Path, config: DecideConfig) -> None:
    """One trace for the decide run, with the fine-tune decision and parity verdicts of each track as an event."""
    from ray_app.tracing import start_run_trace

    files = decision.to_json()["files"]
    with start_run_trace(
        name="decide",
        kind="decide",
        input={"files": files},
        metadata={"rule": decision.rule},
        require_langfuse=config.require_langfuse,
        local_dir=config.eval_root / "traces",
    ) as trace:
        for track, result in decision.tracks.items():
            trace.event(
                f"decision {track}",
                input={
                    metric: {"delta": gap.delta, "interval_95": list(gap.interval_95)}
                    for metric, gap in result.teacher_vs_slm.core.items()
                },
                output={"FINE_TUNE": result.fine_tune, "reason": result.reason},
                metadata={
                    "track": track,
                    "teacher_mode": result.teacher_mode,
                    "parity": parity_metadata(result.parity()),
                },
            )
        trace.end(
            output={
                "FINE_TUNE": decision.fine_tune,
                "missing": decision.missing,
                "decision": project_relative(decision_path),
            }
        )
