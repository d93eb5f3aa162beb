"""One track's part of the report: models, core metrics, paired gaps, parity, latency and cost, failing rows.

`render_track` turns a `TrackView` (`track_view.py`) into markdown and draws the track's two charts.
Every table is followed by the files (relative to eval_root) and the fields its numbers come from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray_app.decide.decide_config import eval_command
from ray_app.decide.decision_record import ModelComparison
from ray_app.decide.non_inferiority import Parity, points
from ray_app.metrics import CORE_METRICS
from ray_app.paths import project_relative
from ray_app.report import markdown as md
from ray_app.report.charts import Gap, core_metrics_chart, latency_cost_chart
from ray_app.report.failing_rows import first_failing_rows, render_failing_row, split_mismatch
from ray_app.report.inputs import RERUN_DECIDE
from ray_app.report.track_view import TrackView


def engine_text(engine: dict[str, Any]) -> str:
    """One line on what produced a model's answers, from metrics.json `engine`."""
    kind = engine.get("kind")
    if kind == "transformers":
        text = (
            f"transformers: {Path(str(engine.get('model_path'))).name}, {engine.get('precision')} on "
            f"{engine.get('device')}, batch {engine.get('batch_size')}, "
            f"max {engine.get('max_new_tokens')} new tokens, greedy"
        )
        text += f", adapter {Path(str(engine['adapter_path'])).name}" if engine.get("adapter_path") else ""
        return text + (f"; constrained: {engine['constraint']}" if engine.get("constraint") else "")
    if kind == "replay":
        seen = ", ".join(engine.get("models_seen") or []) or "unknown model"
        simulated = " (simulated)" if engine.get("simulated") else ""
        return f"replay{simulated}: agent {engine.get('agent_id')}'s recorded answers ({seen})"
    where = f" at {engine['endpoint_host']}" if engine.get("endpoint_host") else ""
    return f"{kind}: model {engine.get('model')}{where}"


def latency_meaning(engine: dict[str, Any]) -> str:
    if engine.get("kind") == "transformers":
        return f"from prefill start to its last token, up to {engine.get('batch_size')} rows decoding together"
    if engine.get("kind") == "replay":
        return "recorded production call"
    return "one hosted call"


def status_lines(view: TrackView) -> list[str]:
    return [f"{md.code(label)}: {status}." for label, status in view.statuses.items()]


def models_section(view: TrackView) -> str:
    rows = [
        [label, engine_text(view.evaluations[label].summary.engine)]
        for label in view.columns
        if label in view.evaluations
    ]
    files = view.metrics_files()
    return "\n\n".join(["### Models", md.table(["model", "what answered"], rows), md.source_line(files, ["engine"])])


def metric_rows(view: TrackView) -> list[str]:
    """Core metrics first, then every other rate the evaluations report, in the order they list them."""
    names = list(CORE_METRICS[view.track])
    for evaluation in view.evaluations.values():
        for name, value in evaluation.summary.metrics.items():
            if (name.endswith("_rate") or name.startswith("field_")) and name not in names and value is not None:
                names.append(name)
    return names


def metrics_section(view: TrackView, chart_path: Path, gaps: list[Gap]) -> tuple[str, Path]:
    core = CORE_METRICS[view.track]
    rows = [
        [
            "rows",
            *(
                md.count(view.evaluations[label].summary.rows) if label in view.evaluations else md.NOT_AVAILABLE
                for label in view.columns
            ),
        ]
    ]
    for name in metric_rows(view):
        cells = []
        for label in view.columns:
            value = view.evaluations[label].summary.metrics.get(name) if label in view.evaluations else None
            cells.append(md.NOT_AVAILABLE if value is None else md.rate(value))
        rows.append([f"{name} (core)" if name in core else name, *cells])
    files = view.metrics_files()
    rates = {
        label: {metric: float(view.evaluations[label].summary.metrics[metric]) for metric in core}
        for label in view.columns
        if label in view.evaluations
    }
    chart = core_metrics_chart(chart_path, view.track, rates, core, gaps)
    parts = [
        "### Core metrics",
        "Rates over every test row (an invalid answer is a miss); the fine-tune decision compares the core ones.",
        md.table(["metric", *view.columns], rows),
        md.source_line(files, ["rows", "metrics"]),
        *status_lines(view),
        f"![{view.track}: core metrics and paired gaps]({view.file_name(chart)})",
    ]
    return "\n\n".join(parts), chart


def comparisons(view: TrackView) -> list[tuple[str, ModelComparison]]:
    """Teacher vs slm, then each adapted label vs both, with their decision.json field (under tracks.<track>)."""
    if view.decided is None:
        return []
    found = [("teacher_vs_slm", view.decided.teacher_vs_slm)]
    for label, pair in view.decided.adapted.items():
        found += [(f"adapted.{label}.vs_teacher", pair.vs_teacher), (f"adapted.{label}.vs_slm", pair.vs_slm)]
    return found


def gaps_section(view: TrackView) -> tuple[str, list[Gap]]:
    """Paired comparisons from decision.json: delta, 95% bootstrap interval, McNemar p, verdict."""
    found = comparisons(view)
    if not found:
        return f"### Paired gaps\n\nNot compared: {view.undecided_reason}.", []
    rows, gaps, fields = [], [], []
    for key, comparison in found:
        fields.append(f"tracks.{view.track}.{key}.core")
        reference, candidate = comparison.reference, comparison.candidate
        for metric in CORE_METRICS[view.track]:
            gap = comparison.core[metric]
            low, high = gap.interval_95
            rows.append(
                [
                    metric,
                    reference,
                    candidate,
                    md.rate(gap.reference_rate),
                    md.rate(gap.candidate_rate),
                    md.signed(gap.delta),
                    md.interval((low, high)),
                    md.p_value(gap.mcnemar_p),
                    f"{gap.reference_only} / {gap.candidate_only}",
                    gap.verdict,
                ]
            )
            gaps.append(Gap(metric, reference, candidate, float(gap.delta), (float(low), float(high))))
    header = [
        "metric",
        "reference",
        "candidate",
        "reference rate",
        "candidate rate",
        "delta",
        "95% interval",
        "McNemar p",
        "rows only reference / only candidate hits",
        "verdict",
    ]
    parts = [
        "### Paired gaps",
        "delta = reference rate - candidate rate over the same rows (> 0: the candidate is worse), with the paired "
        "bootstrap 95% interval and the exact McNemar p-value.",
        md.table(header, rows),
        md.source_line(["decision.json"], fields),
    ]
    return "\n\n".join(parts), gaps


def parity_words(verdicts: dict[str, Parity], missing: str) -> str:
    """Every candidate's overall parity verdict in words (`slm: cannot tell with ...; slm-adapter: ...`)."""
    if not verdicts:
        return missing
    return "; ".join(f"{label}: {found.overall.words}" for label, found in verdicts.items())


def parity_summary(view: TrackView) -> str:
    """The decision table's parity cell: each compared candidate against the teacher, in words."""
    if view.decided is None:
        return md.NOT_AVAILABLE
    return parity_words(view.decided.parity(), f"not in decision.json: {RERUN_DECIDE}")


def parity_sentence(view: TrackView) -> str:
    """Which configuration of the swap kit reaches parity with the teacher on this track (overall verdict
    "not worse"), if any, in one sentence."""
    if view.decided is None:
        return f"{view.track}: not compared ({view.undecided_reason})."
    verdicts = view.decided.parity()
    if not verdicts:
        return f"{view.track}: no parity verdicts in decision.json ({RERUN_DECIDE})."
    margin = points(next(iter(verdicts.values())).margin)
    reaching = [label for label, found in verdicts.items() if found.overall.verdict == "not worse"]
    if reaching:
        named = ", ".join(md.code(label) for label in reaching)
        return (
            f"{view.track}: {named} {'reaches' if len(reaching) == 1 else 'reach'} parity with the teacher "
            f"(not worse by more than {margin} on every core metric)."
        )
    standing = ", ".join(
        f"{md.code(label)} {found.overall.verdict}"
        + (f" (about {found.overall.rows_needed:,} rows would decide)" if found.overall.rows_needed else "")
        for label, found in verdicts.items()
    )
    return f"{view.track}: no configuration reaches parity with the teacher at a margin of {margin} ({standing})."


def parity_section(view: TrackView) -> str:
    """Each candidate against the teacher per core metric and overall: one-sided bounds, margin, verdict."""
    heading = "### Parity with the teacher"
    if view.decided is None:
        return f"{heading}\n\nNot compared: {view.undecided_reason}."
    decided, rows, fields = view.decided, [], []
    found = [("teacher_vs_slm", decided.teacher_vs_slm)]
    found += [(f"adapted.{label}.vs_teacher", pair.vs_teacher) for label, pair in decided.adapted.items()]
    for key, comparison in found:
        if comparison.parity is None:
            continue
        fields.append(f"tracks.{view.track}.{key}.parity")
        for metric in CORE_METRICS[view.track]:
            verdict, delta = comparison.parity.core[metric], comparison.core[metric].delta
            bounds = md.interval((verdict.delta_lower_95, verdict.delta_upper_95))
            margin = md.rate(comparison.parity.margin)
            rows.append([comparison.candidate, metric, md.signed(delta), bounds, margin, verdict.words])
        overall = comparison.parity.overall
        rows.append([comparison.candidate, "all core metrics", md.NOT_AVAILABLE, md.NOT_AVAILABLE,
                     md.rate(comparison.parity.margin), overall.words])  # fmt: skip
    if not rows:
        return f"{heading}\n\nNot in decision.json (written before parity verdicts): {RERUN_DECIDE}."
    header = ["candidate", "metric", "delta", "one-sided 95% bounds of delta", "margin", "verdict"]
    margin = next(comparison.parity.margin for _, comparison in found if comparison.parity is not None)
    intro = (
        "Beside the rule, a non-inferiority verdict: is the candidate worse than the teacher by more than the "
        f"margin ({points(margin)})? delta = teacher rate - candidate rate over the same rows; the bounds are the "
        "5th and 95th percentiles of delta over the paired bootstrap resamples (each a one-sided 95% bound). Not "
        "worse when the upper bound is below the margin, worse when the lower bound is above it, else cannot "
        "tell, with about how many rows would decide (normal approximation, one-sided 5% level, power 0.8, "
        "from the observed discordant rows). Overall: not worse only when every core metric is."
    )
    return "\n\n".join([heading, intro, md.table(header, rows), md.source_line(["decision.json"], fields)])


def latency_cost_section(view: TrackView, chart_path: Path) -> tuple[str, Path | None]:
    shown = [label for label in view.columns if label in view.evaluations]
    latency_rows = []
    for label in shown:
        summary = view.evaluations[label].summary
        seconds = [md.seconds(value) for value in summary.latency_s.to_json().values()]  # p50, p95, mean
        latency_rows.append([label, *seconds, latency_meaning(summary.engine)])
    metrics_files = view.metrics_files()
    parts = [
        "### Latency, tokens and cost",
        md.table(["model", "p50 s", "p95 s", "mean s", "a row's latency is the"], latency_rows),
        md.source_line(metrics_files, ["latency_s", "engine"]),
    ]
    compared = view.compared_labels()
    models = view.decided.models if view.decided is not None else {}
    cost_rows = []
    for label in compared:
        model = models[label]
        cost_rows.append(
            [
                label,
                md.count(model.tokens.prompt),
                md.count(model.tokens.completion),
                f"{model.tokens.mean_prompt:.1f}",
                f"{model.tokens.mean_completion:.1f}",
                md.usd(model.cost_per_1k_calls_usd),
                model.cost_basis,
            ]
        )
    if cost_rows:
        header = ["model", "prompt tokens", "completion tokens", "mean prompt", "mean completion"]
        parts += [
            md.table([*header, "USD per 1,000 calls", "how"], cost_rows),
            md.source_line(
                ["decision.json"], [f"tracks.{view.track}.models.<model>.tokens", "cost_per_1k_calls_usd", "cost_basis"]
            ),
        ]
    else:
        parts.append(f"Tokens and cost: not compared ({view.undecided_reason}).")
    latencies = {
        label: view.evaluations[label].latencies_s for label in shown if view.evaluations[label].latencies_s is not None
    }
    costs = {label: float(models[label].cost_per_1k_calls_usd) for label in compared}
    if not latencies and not costs:
        return "\n\n".join(parts), None
    chart = latency_cost_chart(chart_path, view.track, latencies, costs)  # type: ignore[arg-type]
    chart_sources = [
        view.file_name(view.evaluations[label].latencies_path)  # type: ignore[arg-type]
        for label in latencies
    ]
    parts.append(f"![{view.track}: latency per row and cost]({view.file_name(chart)})")
    if chart_sources:
        parts.append("Per-row latencies in the chart: " + ", ".join(md.code(name) for name in chart_sources) + ".")
    return "\n\n".join(parts), chart


def failing_rows_section(view: TrackView, limit: int) -> str:
    split_name = project_relative(view.loaded.split_path)
    split_rows = view.loaded.split_rows
    intro = (
        f"A row fails when it misses any core metric. Gold from {md.code(split_name)}"
        if split_rows is not None
        else f"{md.code(split_name)} is missing: gold as recorded in each predictions.jsonl"
    )
    parts = ["### First failing rows", intro + "; texts are cut and line breaks shown as \\n."]
    for label in view.columns:
        if label not in view.evaluations:
            parts.append(f"#### {label}\n\n{view.statuses[label]}.")
            continue
        evaluation = view.evaluations[label]
        predictions = view.file_name(evaluation.predictions_path)
        gold_rows = split_rows
        mismatch = split_mismatch(evaluation.records, split_rows) if split_rows is not None else None
        if mismatch is not None:
            gold_rows = None
            rerun = eval_command(view.track, label, view.labels)
            parts.append(
                f"Warning: {md.code(predictions)} does not answer {md.code(split_name)} ({mismatch}): the evaluation "
                f"is stale, gold below is the one it was scored against; re-run `{rerun}`."
            )
        failing, shown = first_failing_rows(view.track, evaluation.records, gold_rows, limit)
        rows = len(evaluation.records)
        heading = f"#### {label}: {failing} of {rows} rows fail"
        if not failing:
            parts.append(f"{heading}\n\nNo failing rows in {md.code(predictions)}.")
            continue
        listed = f"the first {len(shown)}" if shown else "none listed"
        parts.append(f"{heading} ({listed}, from {md.code(predictions)})")
        parts += [render_failing_row(row, Path(split_name).name) for row in shown]
    return "\n\n".join(parts)


def render_track(view: TrackView, charts_dir: Path, failing_rows_per_model: int) -> tuple[str, list[Path]]:
    """The track's markdown and the charts it drew."""
    header = [f"## {view.track}"]
    if view.decided is not None:
        decided = view.decided
        header.append(
            f"FINE_TUNE = {decided.fine_tune}: {decided.reason} "
            f"({decided.rows} test rows, teacher {decided.teacher_mode}; "
            f"from {md.code('decision.json')} fields {md.code(f'tracks.{view.track}.FINE_TUNE')}, "
            f"{md.code('reason')}, {md.code('rows')}, {md.code('teacher_mode')})."
        )
    else:
        header.append(f"Not decided: {view.undecided_reason}.")
    header += [f"Warning: {note}." for note in view.notes]
    if not view.evaluations:
        return "\n\n".join([*header, *status_lines(view)]), []
    gaps_markdown, gaps = gaps_section(view)
    metrics_markdown, metrics_chart = metrics_section(view, charts_dir / f"{view.track}_core_metrics.png", gaps)
    latency_markdown, latency_chart = latency_cost_section(view, charts_dir / f"{view.track}_latency_cost.png")
    parts = [
        *header,
        models_section(view),
        metrics_markdown,
        gaps_markdown,
        parity_section(view),
        latency_markdown,
        failing_rows_section(view, failing_rows_per_model),
    ]
    return "\n\n".join(parts), [chart for chart in (metrics_chart, latency_chart) if chart is not None]
