"""Report step: the parity report `<eval_root>/report.md` and its charts in `<eval_root>/report_charts/`.

Reads what the evaluate and decide steps wrote (`inputs.py`), then writes, readable on GitHub
without running anything:
1. the decision per track (FINE_TUNE and its reason, where each adapted SLM stands) and the rule, then one
   sentence per track on which configuration (slm, slm-constrained, slm-adapter, slm-adapter-constrained)
   reaches parity with the teacher, if any;
2. the price table the costs were computed with, and how to set your own;
3. per track (`track_section.py`): the models, every metric per model (teacher, SLM, SLM+adapter, each SLM
   free and constrained),
   the paired gaps with bootstrap 95% intervals, latency, tokens and cost per 1,000 calls, the first
   failing test rows (gold vs prediction) per model, and two PNG charts;
4. when `<eval_root>/codeact/` exists, "CodeAct (Phase II)" (`codeact_section.py`): the CodeAct decision,
   success and behaviour per model with the paired success-rate gaps, the dataset filter's counts,
   masked vs unmasked loss, and one test task's teacher and student runs one after the other.
Right after the decision, "Predictions" links each model's predictions.jsonl (and each CodeAct run's
trajectories.jsonl) relative to the report, so any row can be opened from it. With `formats` holding
"html", `report.html` (`html.py`) renders this same markdown as one self-contained page.
Every number is copied from a file the report names beside its table; nothing is re-measured. The
same inputs give byte-identical report.md and PNGs (the only date is decision.json's `created_at`).
Missing tracks and models are reported with the command that produces them, never an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ray_app.atomic_files import atomic_write_text
from ray_app.data.rows import TRACKS, Track
from ray_app.decide.decide_config import DecideConfig
from ray_app.decide.decision_record import DECISION_FILE, Decision
from ray_app.eval.codeact_store import TRAJECTORIES_NAME
from ray_app.metrics.codeact import CODEACT_TRACK
from ray_app.paths import DATASET_ROOT, EVAL_ROOT, project_relative
from ray_app.report import markdown as md
from ray_app.report.codeact_section import render_codeact_section
from ray_app.report.html import write_html_report
from ray_app.report.inputs import ReportError, evaluated_labels, load_decision, load_track
from ray_app.report.track_section import parity_sentence, parity_summary, render_track
from ray_app.report.track_view import TrackView, adapted_summary, track_view

REPORT_FILE = "report.md"
CHARTS_DIR = "report_charts"
ReportFormat = Literal["md", "html"]  # report.md (GitHub), report.html (one self-contained page)


@dataclass(frozen=True)
class ReportOutcome:
    report_path: Path  # <eval_root>/report.md; report.html when only "html" was asked for
    chart_paths: list[Path]  # PNGs under <eval_root>/report_charts/
    sources: list[Path]  # every file the report read, in the order it read them
    html_path: Path | None = None  # <eval_root>/report.html when "html" was asked for


def decided_labels(eval_root: Path, decision: Decision | None) -> DecideConfig:
    """The teacher and base-SLM labels the decide step used (its defaults when it has not run)."""
    if decision is None:
        return DecideConfig(eval_root=eval_root)
    return DecideConfig(
        eval_root=eval_root, teacher_label=decision.config.teacher_label, slm_label=decision.config.slm_label
    )


def report_tracks(decision: Decision | None) -> list[Track]:
    """The project's tracks, then any other track decision.json names."""
    named = list(decision.tracks) + list(decision.missing) if decision is not None else []
    return [*TRACKS, *sorted({track for track in named if track not in TRACKS})]


def title_section(eval_root: Path, decision: Decision | None) -> str:
    lines = [
        "# slm-swap parity report",
        f"Teacher (hosted LLM) vs small local model (SLM) and fine-tuned SLM, per track, from the evaluation "
        f"outputs in {md.code(project_relative(eval_root))}. Every table names the files its numbers come from, "
        "relative to this folder; nothing here is measured again.",
    ]
    if decision is not None:
        lines.append(
            f"Decision written {decision.created_at} ({md.code(DECISION_FILE)} field {md.code('created_at')})."
        )
    return "\n\n".join(lines)


def decision_section(views: list[TrackView], decision: Decision | None) -> str:
    if decision is None:
        return "## Decision\n\nNo `decision.json` yet: run `slm-swap decide` (then `slm-swap report` again)."
    rows = []
    for view in views:
        if view.decided is None:
            not_decided = [view.track, md.NOT_AVAILABLE, md.NOT_AVAILABLE, "not decided", view.undecided_reason]
            rows.append([*not_decided, md.NOT_AVAILABLE, md.NOT_AVAILABLE])
            continue
        decided = view.decided
        rows.append(
            [
                view.track,
                md.count(decided.rows),
                decided.teacher_mode,
                str(decided.fine_tune),
                decided.reason,
                adapted_summary(view),
                parity_summary(view),
            ]
        )
    header = ["track", "test rows", "teacher", "FINE_TUNE", "reason", "fine-tuned SLM", "parity with the teacher"]
    return "\n\n".join(
        [
            "## Decision",
            md.table(header, rows),
            md.source_line(
                [DECISION_FILE],
                [
                    "tracks.<track>.rows",
                    "teacher_mode",
                    "FINE_TUNE",
                    "reason",
                    "adapted.<model>.vs_teacher",
                    "missing",
                    "teacher_vs_slm.parity.overall.words",
                    "adapted.<model>.vs_teacher.parity.overall.words",
                ],
            ),
            f"Rule: {decision.rule}. The fine-tuned SLM column applies the same rule to "
            "the adapted SLM against the teacher.",
            "Parity with the teacher, beside the rule and never changing it: per candidate, not worse than the "
            "teacher by more than the margin on every core metric, worse on one, or cannot tell with these rows "
            "(per metric under each track's Parity with the teacher). The constrained configurations "
            "(`-constrained`: each answer forced to fit its prompt's tools or parameters) are candidates like the "
            "others; FINE_TUNE reads only the free base SLM.",
            "Which configuration of the swap kit reaches parity with the teacher:",
            "\n".join(f"- {parity_sentence(view)}" for view in views),
            md.source_line(
                [DECISION_FILE],
                ["tracks.<track>.teacher_vs_slm.parity.overall", "adapted.<model>.vs_teacher.parity.overall"],
            ),
        ]
    )


def price_section(decision: Decision | None) -> str:
    if decision is None:
        return "## Prices\n\nCosts come from `slm-swap decide`, which has not run yet."
    table, config = decision.price_table, decision.config
    path = md.code(config.price_table)
    teacher_rows = [
        [name, md.usd(price.input_usd_per_1m), md.usd(price.output_usd_per_1m)]
        for name, price in table.teacher_usd_per_1m_tokens.items()
    ]
    hardware_rows = [
        [name, md.usd(hourly), "yes" if name == config.slm_hardware else ""]
        for name, hourly in table.slm_usd_per_instance_hour.items()
    ]
    return "\n\n".join(
        [
            "## Prices",
            f"Cost per 1,000 calls uses the price table {path} as the decide step read it. To use your own "
            "prices, edit that file or run `slm-swap decide --price-table FILE --slm-hardware NAME`, then "
            "`slm-swap report`. The teacher pays per token; the SLM pays per instance-hour, spread over the rows "
            "its evaluation answered (eval wall time / rows), which assumes the instance is kept busy.",
            md.table(["teacher price entry", "USD per 1M input tokens", "USD per 1M output tokens"], teacher_rows),
            md.source_line([DECISION_FILE], ["price_table.teacher_usd_per_1m_tokens"]),
            md.table(["SLM hardware", "USD per instance-hour", "priced"], hardware_rows),
            md.source_line([DECISION_FILE], ["price_table.slm_usd_per_instance_hour", "config.slm_hardware"]),
        ]
    )


def remove_stale_charts(charts_dir: Path, kept: list[Path]) -> None:
    """PNGs of an earlier report that this one no longer links (e.g. a track that lost its results)."""
    if charts_dir.is_dir():
        for path in charts_dir.glob("*.png"):
            if path not in kept:
                path.unlink()


def predictions_section(views: list[TrackView], eval_root: Path, labels: DecideConfig) -> str:
    """Links to every model's answers, relative to the report, so a reader can open any row."""
    lines = []
    for view in views:
        links = [
            md.link(md.code(label), view.file_name(view.evaluations[label].predictions_path))
            for label in view.columns
            if label in view.evaluations
        ]
        lines.append(f"- {view.track}: " + (", ".join(links) if links else "no finished evaluation yet"))
    codeact = eval_root / CODEACT_TRACK
    runs = [
        label
        for label in evaluated_labels(codeact, labels.teacher_label, labels.slm_label)
        if (codeact / label / TRAJECTORIES_NAME).is_file()
    ]
    if runs:
        targets = [f"{CODEACT_TRACK}/{label}/{TRAJECTORIES_NAME}" for label in runs]
        links = [md.link(md.code(label), target) for label, target in zip(runs, targets, strict=True)]
        lines.append(f"- {CODEACT_TRACK} (one trajectory per task): " + ", ".join(links))
    return "\n\n".join(
        [
            "## Predictions",
            "Each model's answers, one JSON line per test row (prompt, gold completion, prediction, token counts), in "
            f"{md.code('<track>/<model>/predictions.jsonl')} beside this report:",
            "\n".join(lines),
        ]
    )


def write_report(
    eval_root: Path = EVAL_ROOT,
    dataset_root: Path = DATASET_ROOT,
    failing_rows_per_model: int = 3,
    formats: Sequence[ReportFormat] = ("md",),
) -> ReportOutcome:
    """Write `<eval_root>/report.md` (and/or report.html) and the charts; return what was written and read."""
    if failing_rows_per_model < 0:
        raise ReportError(f"failing_rows_per_model must be 0 or more, got {failing_rows_per_model}")
    if not formats or set(formats) - {"md", "html"}:
        raise ReportError(f"formats must be 'md', 'html' or both, got {list(formats)}")
    eval_root, dataset_root = Path(eval_root), Path(dataset_root)
    decision = load_decision(eval_root)
    labels = decided_labels(eval_root, decision)
    sources = [eval_root / DECISION_FILE] if decision is not None else []

    views = []
    for track in report_tracks(decision):
        loaded = load_track(track, dataset_root, labels)
        for evaluation in loaded.evaluations.values():
            sources += [evaluation.metrics_path, evaluation.predictions_path]
            if evaluation.latencies_path is not None and evaluation.latencies_path not in sources:
                sources.append(evaluation.latencies_path)
        if loaded.split_rows is not None:
            sources.append(loaded.split_path)
        views.append(track_view(track, loaded, decision, labels))

    charts_dir = eval_root / CHARTS_DIR
    sections = [title_section(eval_root, decision), decision_section(views, decision)]
    sections += [predictions_section(views, eval_root, labels), price_section(decision)]
    chart_paths: list[Path] = []
    for view in views:
        markdown, charts = render_track(view, charts_dir, failing_rows_per_model)
        sections.append(markdown)
        chart_paths += charts
    if (eval_root / CODEACT_TRACK).is_dir():
        markdown, read = render_codeact_section(eval_root, dataset_root)
        sections.append(markdown)
        sources += read
    remove_stale_charts(charts_dir, chart_paths)
    markdown = "\n\n".join(sections) + "\n"
    html_path = write_html_report(markdown, eval_root) if "html" in formats else None
    if html_path is not None and "md" not in formats:
        return ReportOutcome(html_path, chart_paths, sources, html_path)
    report_path = atomic_write_text(eval_root / REPORT_FILE, markdown)
    return ReportOutcome(report_path, chart_paths, sources, html_path)
