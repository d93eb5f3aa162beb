"""`slm-swap decide` (and its old name `compare`): teacher vs SLM per track → decision.json."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ray_app.cli.typer_app import (
    app,
    console,
    fail,
)
from ray_app.decide.decide_config import DecideConfig
from ray_app.decide.non_inferiority import DEFAULT_MARGIN


def decide_and_print(config: DecideConfig) -> None:
    """Run the decide step and print its table: per track and core metric, teacher vs base SLM."""
    from ray_app.decide.decide import run_decide
    from ray_app.decide.decide_config import DecideError
    from ray_app.decide.decision_record import DECISION_FILE
    from ray_app.decide.price_table import PriceTableError
    from ray_app.metrics import PredictionsFileError
    from ray_app.tracing import LangfuseRequiredError

    try:
        decision = run_decide(config)
    except (DecideError, PriceTableError, PredictionsFileError, LangfuseRequiredError) as error:
        fail(str(error))
    table = Table(title=f"decision → {config.eval_root / DECISION_FILE}")
    for column in ("track", "FINE_TUNE", "core metric", "teacher", "slm", "delta [95% CI]", "McNemar p"):
        table.add_column(column)
    for track, result in decision.tracks.items():
        for metric, gap in result.teacher_vs_slm.core.items():
            low, high = gap.interval_95
            table.add_row(
                track,
                str(result.fine_tune),
                metric,
                f"{gap.reference_rate:.3f}",
                f"{gap.candidate_rate:.3f}",
                f"{gap.delta:+.3f} [{low:+.3f}, {high:+.3f}]",
                f"{gap.mcnemar_p:.3g}",
            )
    console.print(table)
    for track, result in decision.tracks.items():
        console.print(f"{track}: FINE_TUNE={result.fine_tune} ({result.reason})", highlight=False)
        for label, parity in result.parity().items():
            console.print(f"{track}: {label} against the teacher: {parity.overall.words}", highlight=False)
    for track, reason in decision.missing.items():
        console.print(f"{track}: not decided: {reason}", highlight=False)


def decide_codeact_and_print(eval_root: Path, require_langfuse: bool | None, parity_margin: float) -> None:
    """The CodeAct decision (`run_codeact_decide`): teacher vs each student on success rate."""
    from ray_app.decide.codeact_decide import DECISION_FILE, CodeactDecideConfig, run_codeact_decide
    from ray_app.decide.decide_config import DecideError
    from ray_app.tracing import LangfuseRequiredError

    config = CodeactDecideConfig(eval_root=eval_root, require_langfuse=require_langfuse, parity_margin=parity_margin)
    try:
        decision = run_codeact_decide(config)
    except (DecideError, LangfuseRequiredError) as error:
        fail(str(error))
    table = Table(title=f"CodeAct decision → {config.folder / DECISION_FILE}")
    for column in ("reference", "candidate", "success rate", "delta [95% CI]", "McNemar p"):
        table.add_column(column)
    comparisons = [decision.teacher_vs_slm]
    comparisons += [comparison for pair in decision.adapted.values() for comparison in (pair.vs_teacher, pair.vs_slm)]
    for comparison in comparisons:
        gap = comparison.core["success_rate"]
        low, high = gap.interval_95
        table.add_row(
            comparison.reference,
            comparison.candidate,
            f"{gap.reference_rate:.3f} vs {gap.candidate_rate:.3f}",
            f"{gap.delta:+.3f} [{low:+.3f}, {high:+.3f}]",
            f"{gap.mcnemar_p:.3g}",
        )
    console.print(table)
    console.print(f"codeact: FINE_TUNE={decision.fine_tune} ({decision.reason})", highlight=False)
    for label, parity in decision.parity().items():
        console.print(f"codeact: {label} against the teacher: {parity.overall.words}", highlight=False)


@app.command("decide")
def decide(
    eval_root: Annotated[
        Path | None, typer.Option(help="holds <track>/<label>/ results (default slm_swap/05_eval)")
    ] = None,
    price_table: Annotated[
        Path | None,
        typer.Option(help="price table JSON (default $SLM_SWAP_PRICE_TABLE, then slm_swap/price_table.json)"),
    ] = None,
    slm_hardware: Annotated[str, typer.Option(help="price-table entry the SLM runs on")] = DecideConfig.slm_hardware,
    teacher_price_model: Annotated[str | None, typer.Option(help="price-table entry of the teacher")] = None,
    require_langfuse: Annotated[bool, typer.Option(help="fail when LANGFUSE_* keys are missing")] = False,
    track: Annotated[
        str | None,
        typer.Option(help="codeact: the CodeAct decision only (codeact/decision.json); default: the seed's tracks"),
    ] = None,
    margin: Annotated[
        float,
        typer.Option(
            "--margin",
            "--parity-margin",
            help="parity verdict: is a candidate worse than the teacher by more than this difference of rates? "
            "(0.02: 2 points; above 0, below 1)",
        ),
    ] = DEFAULT_MARGIN,
) -> None:
    """Teacher vs SLM (and adapted SLMs) per track → decision.json, with intervals, p-values, parity verdicts,
    latency and cost."""
    from ray_app.paths import EVAL_ROOT

    if track == "codeact":
        decide_codeact_and_print(eval_root or EVAL_ROOT, True if require_langfuse else None, margin)
        return
    if track is not None:
        fail(f"--track must be codeact (or left out for the seed's tracks), got {track!r}")
    config = DecideConfig(
        eval_root=eval_root or EVAL_ROOT,
        price_table_path=price_table,
        slm_hardware=slm_hardware,
        teacher_price_model=teacher_price_model,
        parity_margin=margin,
        require_langfuse=True if require_langfuse else None,
    )
    decide_and_print(config)


@app.command("compare", hidden=True, help="Deprecated name of `slm-swap decide` (same flags).")
@functools.wraps(decide)
def compare(**flags) -> None:
    console.print("`slm-swap compare` is now `slm-swap decide` (same flags); running it", highlight=False)
    decide(**flags)
