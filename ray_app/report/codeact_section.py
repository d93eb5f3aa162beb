"""The CodeAct (Phase II) part of the report: teacher, base SLM and SLM + codeact adapter on the same tasks.

`render_codeact_section(eval_root, dataset_root)` reads, and names beside each table:
- `<eval_root>/codeact/decision.json` (`CodeactDecision`): FINE_TUNE, its reason, and each student's
  success-rate gap to the teacher and to the base SLM (paired bootstrap 95% interval, McNemar p);
- `<eval_root>/codeact/<label>/metrics.json` (`CodeactEvalMetrics`): rates, steps, tokens, latency, engine;
- `<eval_root>/codeact/<label>/trajectories.jsonl` of the teacher, the adapted SLM and the base SLM: the
  first test task the teacher solved, each model's steps (thought, code, observation) one after the other;
- `<dataset_root>/codeact/filter_report.json` and `manifest.json`: trajectories per filter reason, rows per split;
- `<eval_root>/codeact/masking_ablation.json` (`benchmarks/codeact_masking.py`): loss on the student's turns
  only (masked) vs on every token (unmasked).
A missing file becomes a line naming the command that writes it; a malformed one raises ReportError naming
the file and the field. Nothing is measured again. What it reads under `codeact/` is loaded by
`codeact_results.py`; the task side by side is rendered by `codeact_task_view.py`.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from ray_app.codeact.records import TASK_KINDS
from ray_app.codeact.trajectory_dataset import FILTER_REPORT_FILE, MANIFEST_FILE
from ray_app.decide.codeact_decide import DECISION_FILE, METRIC, CodeactDecision
from ray_app.decide.decision_record import ModelComparison
from ray_app.decide.non_inferiority import points
from ray_app.metrics.codeact import CODEACT_TRACK, CodeactEvalMetrics
from ray_app.metrics.metrics_record import METRICS_FILE
from ray_app.paths import project_relative
from ray_app.record_fields import RecordError, RecordFields, is_number, read_json_file
from ray_app.report import markdown as md
from ray_app.report.codeact_results import DECIDE_COMMAND, CodeactResults, load_results
from ray_app.report.codeact_task_view import side_by_side_part
from ray_app.report.inputs import ReportError
from ray_app.report.track_section import engine_text
from ray_app.report.track_view import relative

ABLATION_FILE = "masking_ablation.json"
ABLATION_COMMAND = "python benchmarks/codeact_masking.py"
DATASET_COMMAND = "slm-swap data trajectories --traces slm_swap/01_source/trajectories/<model>/traces.jsonl"
METRIC_COLUMNS = {  # metrics.json `metrics.<field>` → column
    "tasks": "tasks", "success_rate": "success rate", "valid_action_rate": "valid action rate",
    "tool_error_rate": "tool error rate", "recovery_rate": "recovery rate", "mean_steps": "mean steps",
    "mean_prompt_tokens": "mean prompt tokens", "mean_completion_tokens": "mean completion tokens",
    "mean_latency_s": "mean latency s", "latency_p95_s": "p95 latency s",
}  # fmt: skip


# ---- decision and results ----


def stale_notes(results: CodeactResults, read: list[Path]) -> list[str]:
    """Results that changed, appeared or went away after decision.json was written."""
    decision = results.decision
    if decision is None:
        return []
    recorded = {entry.path: entry.sha256 for entry in decision.files}
    notes = []
    for path in read:
        digest = recorded.get(project_relative(path))
        if digest is not None and digest != hashlib.sha256(path.read_bytes()).hexdigest():
            notes.append(f"{md.code(results.name(path))} changed after decision.json was written")
    notes += [f"{md.code(label)} was evaluated after decision.json was written" for label in results.records
              if label not in decision.models]  # fmt: skip
    notes += [f"decision.json compares {md.code(label)}, whose results are gone" for label in decision.models
              if label not in results.records]  # fmt: skip
    return [f"Warning: {note}; re-run `{DECIDE_COMMAND}`." for note in notes]


def decision_part(results: CodeactResults, read: list[Path]) -> str:
    decision = results.decision
    if decision is None:
        return f"No `codeact/{DECISION_FILE}` yet: run `{DECIDE_COMMAND}` (then `slm-swap report` again)."
    fields = ", ".join(md.code(field) for field in ("fine_tune", "reason", "tasks", "teacher_mode"))
    return "\n\n".join(
        [
            f"FINE_TUNE = {decision.fine_tune}: {decision.reason} ({decision.tasks} test tasks, teacher "
            f"{decision.teacher_mode}; from {md.code(f'codeact/{DECISION_FILE}')} fields {fields}).",
            f"Rule: {decision.rule}.",
            parity_part(decision),
            *stale_notes(results, read),
        ]
    )


def parity_part(decision: CodeactDecision) -> str:
    """Each student against the teacher on success rate: not worse by more than the margin, worse, or cannot tell."""
    verdicts = decision.parity()
    if not verdicts:
        return f"Parity with the teacher: not in `codeact/{DECISION_FILE}` yet; re-run `{DECIDE_COMMAND}`."
    margin = points(next(iter(verdicts.values())).margin)
    fields = ", ".join(md.code(field) for field in ("teacher_vs_slm.parity", "adapted.<model>.vs_teacher.parity"))
    lines = [f"- {md.code(label)}: {found.overall.words}." for label, found in verdicts.items()]
    return "\n\n".join(
        [
            f"Parity with the teacher on success rate, beside the rule and never changing it (margin {margin}; "
            f"from {md.code(f'codeact/{DECISION_FILE}')} fields {fields}):",
            "\n".join(lines),
        ]
    )


def who_acted(record: CodeactEvalMetrics) -> str:
    engine = record.engine
    if engine.get("kind") == "simulated":
        seed = f", seed {engine['seed']}" if "seed" in engine else ""
        return f"simulated: each task's reference solution acted out with planned mistakes{seed}"
    text = engine_text(engine)
    return text + (f" ({record.precision['reason']})" if record.precision and record.precision.get("reason") else "")


def metric_cell(name: str, value: Any) -> str:
    if value is None:
        return md.NOT_AVAILABLE
    if name == "tasks":
        return md.count(value)
    if name.endswith("_rate"):
        return md.rate(value)
    if name.endswith("_s"):
        return md.seconds(value)
    return f"{value:.1f}" if name.endswith("_tokens") else f"{value:.2f}"


def metrics_part(results: CodeactResults) -> str:
    shown = [label for label in results.columns if label in results.records]
    files = [results.name(results.path(label, METRICS_FILE)) for label in shown]
    rows = [
        [label, *(metric_cell(name, results.records[label].metrics.get(name)) for name in METRIC_COLUMNS)]
        if label in results.records
        else [label, *(md.NOT_AVAILABLE for _ in METRIC_COLUMNS)]
        for label in results.columns
    ]
    kinds = [kind for kind in TASK_KINDS if any(kind in r.breakdown.get("success_rate_by_kind", {})
                                                 for r in results.records.values())]  # fmt: skip
    kind_rows = []
    for kind in kinds:
        cells = []
        for label in shown:
            by_kind = results.records[label].breakdown.get("success_rate_by_kind", {}).get(kind)
            cells.append(f"{md.rate(by_kind['success_rate'])} of {by_kind['tasks']}" if by_kind else md.NOT_AVAILABLE)
        kind_rows.append([kind, *cells])
    parts = [
        "### Models",
        md.table(["model", "who acted", "engine"],
                 [[label, results.records[label].model, who_acted(results.records[label])] for label in shown]),
        md.source_line(files, ["model", "engine", "precision"]),
        "### Success and behaviour",
        "One trajectory per test task. success = the task's check passes (the call the code made, or the "
        "value passed to `final_answer`); valid action = a turn with a parseable code block, over all turns; "
        "tool error = an execution that raised, over executions; recovery = successes among trajectories "
        "where an execution raised; tokens are summed over a trajectory's model calls; latency = its model "
        "calls plus its executions. — where a rate has no denominator.",
        md.table(["model", *METRIC_COLUMNS.values()], rows),
        md.source_line(files, [f"metrics.{name}" for name in METRIC_COLUMNS]),
        *(f"{md.code(label)}: {status}." for label, status in results.statuses.items()),
    ]  # fmt: skip
    if kind_rows:
        parts += [
            md.table(["task kind", *(f"{label} success rate of tasks" for label in shown)], kind_rows),
            md.source_line(files, ["breakdown.success_rate_by_kind"]),
        ]
    return "\n\n".join(parts)


def comparisons(decision: CodeactDecision) -> list[tuple[str, ModelComparison]]:
    found = [("teacher_vs_slm", decision.teacher_vs_slm)]
    for label, pair in decision.adapted.items():
        found += [(f"adapted.{label}.vs_teacher", pair.vs_teacher), (f"adapted.{label}.vs_slm", pair.vs_slm)]
    return found


def gaps_part(results: CodeactResults) -> str:
    decision = results.decision
    if decision is None:
        return f"### Success-rate gaps\n\nNot compared: no `codeact/{DECISION_FILE}`; run `{DECIDE_COMMAND}`."
    rows, fields, verdicts = [], [], {}
    for key, comparison in comparisons(decision):
        gap = comparison.core[METRIC]
        fields.append(f"{key}.core.{METRIC}")
        rows.append(
            [
                comparison.reference, comparison.candidate, md.rate(gap.reference_rate), md.rate(gap.candidate_rate),
                md.signed(gap.delta), md.interval(gap.interval_95), md.p_value(gap.mcnemar_p),
                f"{gap.reference_only} / {gap.candidate_only}",
            ]
        )  # fmt: skip
        verdicts.setdefault(comparison.candidate, []).append(gap.verdict)
    header = ["reference", "candidate", "reference rate", "candidate rate", "delta", "95% interval", "McNemar p",
              "tasks only reference / only candidate solves"]  # fmt: skip
    return "\n\n".join(
        [
            "### Success-rate gaps",
            "delta = reference success rate - candidate success rate over the same tasks (> 0: the candidate is "
            "worse), with the paired bootstrap 95% interval and the exact McNemar p-value.",
            md.table(header, rows),
            md.source_line([f"codeact/{DECISION_FILE}"], fields),
            "In words (field `verdict`):",
            "\n".join(f"- {md.code(label)}: {'; '.join(texts)}." for label, texts in verdicts.items()),
        ]
    )


# ---- the dataset and the ablation ----


def dataset_part(dataset_root: Path, eval_root: Path) -> tuple[str, list[Path]]:
    """The filter's verdicts per reason (and per task kind), and the dataset's rows per split."""
    report_path, manifest_path = (dataset_root / CODEACT_TRACK / name for name in (FILTER_REPORT_FILE, MANIFEST_FILE))
    heading = "### Filter and dataset"
    if not report_path.is_file():
        missing = md.code(project_relative(report_path))
        return f"{heading}\n\nNo {missing}: build the CodeAct dataset with `{DATASET_COMMAND}`.", []
    try:
        fields = RecordFields(read_json_file(report_path), report_path)
        totals = {name: fields.integer(name) for name in ("trajectories", "accepted", "recovered")}
        counts = {reason: fields.object("counts").integer(reason) for reason in fields.object("counts").value}
        per_kind = {kind: {reason: kind_fields.integer(reason) for reason in kind_fields.value}
                    for kind, kind_fields in fields.objects("per_kind").items()}  # fmt: skip
    except RecordError as error:
        raise ReportError(f"{error}; rebuild the dataset with `{DATASET_COMMAND}`") from None
    report_name = relative(report_path, eval_root)
    rows = [[reason, md.count(count), *(md.count(per_kind[kind].get(reason, 0)) for kind in per_kind)]
            for reason, count in counts.items()]  # fmt: skip
    parts = [
        heading,
        f"The automatic filter (`ray_app/codeact/trajectory_filter.py`) gave {md.count(totals['accepted'])} of "
        f"{md.count(totals['trajectories'])} captured trajectories the verdict `passed`; "
        f"{md.count(totals['recovered'])} of those recovered from an error or a turn without code (fields "
        f"`accepted`, `trajectories`, `recovered` of {md.code(report_name)}). One reason per trajectory, the first "
        "that applies: safety and cost before correctness.",
        md.table(["reason", "trajectories", *per_kind], rows),
        md.source_line([report_name], ["counts", "per_kind"]),
    ]
    read = [report_path]
    if not manifest_path.is_file():
        parts.append(f"No {md.code(project_relative(manifest_path))}: rebuild the dataset with `{DATASET_COMMAND}`.")
        return "\n\n".join(parts), read
    try:
        tracks = RecordFields(read_json_file(manifest_path), manifest_path).objects("counts")
        counts_by_track = {track: {split: split_fields.integer(split) for split in split_fields.value}
                           for track, split_fields in tracks.items()}  # fmt: skip
    except RecordError as error:
        raise ReportError(f"{error}; rebuild the dataset with `{DATASET_COMMAND}`") from None
    splits = list(dict.fromkeys(split for counts in counts_by_track.values() for split in counts))
    parts += [
        "Rows per split: `codeact` holds one accepted trajectory per row (the chat, observation turns marked); "
        "`toolcall` and `structured` are the seed-track rows derived from the same trajectories (`derived/`).",
        md.table(["split", *counts_by_track],
                 [[split, *(md.count(counts.get(split, 0)) for counts in counts_by_track.values())]
                  for split in splits]),
        md.source_line([relative(manifest_path, eval_root)], ["counts"]),
    ]  # fmt: skip
    return "\n\n".join(parts), [*read, manifest_path]


def ablation_part(eval_root: Path) -> tuple[str, list[Path]]:
    """Loss on the student's turns only (masked) vs on every token (unmasked), from the benchmark's file."""
    path, heading = eval_root / CODEACT_TRACK / ABLATION_FILE, "### Loss masking: masked vs unmasked"
    if not path.is_file():
        return f"{heading}\n\nNot run: `{ABLATION_COMMAND}` writes `codeact/{ABLATION_FILE}`.", []
    try:
        fields = RecordFields(read_json_file(path), path)
        runs = {side: fields.object(side) for side in ("masked", "unmasked")}
        rates = {side: (run.text("label"), run.number("success_rate")) for side, run in runs.items()}
        difference = fields.object("difference")
        delta, interval = difference.number("delta"), difference.listed("interval")
        if len(interval) != 2 or not all(is_number(value) for value in interval):
            raise difference.error("interval", "[low, high], two numbers")
        p, tasks, cpu, train_rows = (difference.number("mcnemar_p"), difference.integer("rows"), fields.text("cpu"),
                                     fields.integer("train_rows"))  # fmt: skip
    except RecordError as error:
        raise ReportError(f"{error}; re-run `{ABLATION_COMMAND}`") from None
    masked, unmasked = rates["masked"][1], rates["unmasked"][1]
    if math.isclose(delta, masked - unmasked, abs_tol=1e-6):
        meaning = "masked - unmasked"
    elif math.isclose(delta, unmasked - masked, abs_tol=1e-6):
        meaning = "unmasked - masked"
    else:
        meaning = "as the benchmark wrote it"
    name = relative(path, eval_root)
    loss_on = {"masked": "the student's turns only (masked)", "unmasked": "every token (unmasked)"}
    return "\n\n".join(
        [
            heading,
            f"The same training rows ({md.count(train_rows)}) with the loss on the student's turns only, and on every "
            f"token (system prompt, task and observations too); both adapters on the same test tasks; {cpu}.",
            md.table(["loss on", "model", "success rate"],
                     [[loss_on[side], label, md.rate(rate)] for side, (label, rate) in rates.items()]),
            md.source_line([name], ["masked", "unmasked"]),
            md.table(["delta", "means", "95% interval", "McNemar p", "tasks"],
                     [[md.signed(delta), meaning, md.interval(interval), md.p_value(p), md.count(tasks)]]),
            md.source_line([name], ["difference"]),
        ]
    ), [path]  # fmt: skip


def render_codeact_section(eval_root: Path, dataset_root: Path) -> tuple[str, list[Path]]:
    """The "CodeAct (Phase II)" markdown and every file it read, in the order it read them."""
    eval_root, dataset_root = Path(eval_root), Path(dataset_root)
    results, read = load_results(eval_root)
    side_markdown, side_read = side_by_side_part(results)
    dataset_markdown, dataset_read = dataset_part(dataset_root, eval_root)
    ablation_markdown, ablation_read = ablation_part(eval_root)
    parts = [
        "## CodeAct (Phase II)",
        "Teacher, base SLM and SLM + codeact adapter run the same CodeAct loop and sandbox on the same test "
        "tasks (`slm-swap eval --track codeact`): each writes Python that calls the task's tools, reads what "
        "it printed or raised, and ends with `final_answer`.",
        decision_part(results, read + side_read),
        metrics_part(results),
        gaps_part(results),
        dataset_markdown,
        ablation_markdown,
        side_markdown,
    ]
    return "\n\n".join(parts), [*read, *side_read, *dataset_read, *ablation_read]
