"""Evaluate one model on one track's split: predictions.jsonl and metrics.json under 05_eval/.

Reads the split (a bad row stops the run before any compute; under `decoding="constrained"` so does a
row whose prompt gives no constraint, `row_constraints.py`), works out the run key (split hash +
everything the numbers depend on), skips the run when finished outputs carry the same key, else answers
the missing rows — the SLM through a Ray Data actor pool, the teacher (hosted or replayed)
from this process with bounded concurrency — appending each finished batch, then scores, writes
`<eval_root>/<track>/<label>/{predictions.jsonl,metrics.json}` and logs one trace for the run. How the
SLM runs (settings, run-key identity, actor pool) is decided on the driver by `slm_plan.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ray_app.atomic_files import atomic_write_json
from ray_app.data.rows import Row, read_split
from ray_app.engines.base import EngineRequest
from ray_app.eval.config import EvalConfig, EvalConfigError, SlmEvalSettings, teacher_mode_from_env
from ray_app.eval.prediction_store import PredictionStore
from ray_app.eval.ray_predictor import PassItem, fixed_groups, predict_with_ray_data, prediction_record
from ray_app.eval.row_constraints import constrained_engine, split_constraints
from ray_app.eval.run_facts import latency_summary, run_facts
from ray_app.eval.slm_plan import SlmPlan, slm_choices, slm_plan
from ray_app.json_text import canonical_json
from ray_app.metrics import score_rows
from ray_app.metrics.metrics_record import METRICS_FILE, EvalMetrics, Latency, TokenCounts
from ray_app.models.fingerprint import file_sha256
from ray_app.paths import project_relative
from ray_app.record_fields import RecordError

console = Console(stderr=True)


@dataclass(frozen=True)
class EvalOutcome:
    metrics_path: Path
    predictions_path: Path
    metrics: EvalMetrics
    reused: bool


def run_key_of(identity: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()


def finished_outputs_match(config: EvalConfig, run_key: str) -> EvalMetrics | None:
    metrics_path = config.output_dir / METRICS_FILE
    if config.force or not metrics_path.is_file() or not (config.output_dir / "predictions.jsonl").is_file():
        return None
    try:
        metrics = EvalMetrics.read(metrics_path)
    except RecordError:
        return None  # not a record this version reads: evaluate again, which rewrites it
    return metrics if metrics.run_key == run_key else None


def build_teacher_engine(config: EvalConfig):
    """The teacher engine for the resolved mode: hosted (azure / openai-compatible) or replay."""
    mode = teacher_mode_from_env(config.teacher.mode)
    if mode == "replay":
        from ray_app.engines.replay import ReplayEngine

        return ReplayEngine(config.teacher.replay_traces, config.teacher.replay_agent_id)
    from ray_app.engines.hosted import HostedLlmEngine, teacher_settings_from_env

    settings = teacher_settings_from_env(
        mode=mode,
        toolcall_mode=config.teacher.toolcall_mode,
        concurrency=config.teacher.concurrency,
        max_tokens=config.teacher.max_tokens,
    )
    return HostedLlmEngine(settings)


def teacher_identity(engine, config: EvalConfig) -> dict[str, Any]:
    described = engine.describe()
    identity = {key: described.get(key) for key in sorted(described) if key not in ("recorded_prompts",)}
    if described.get("kind") == "replay":
        identity["trace_sha256"] = file_sha256(Path(config.teacher.replay_traces))
    return identity


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


@dataclass(eq=False)  # one per configuration: found by identity
class PendingEval:
    """One configuration of `run_evals` that has to be answered: its split's rows, key, plan and, once
    open, its prediction store, trace and progress line."""

    config: EvalConfig
    rows: list[Row]  # the split's, in order (one list for the configurations of a track)
    identity: dict[str, Any]
    run_key: str
    plan: SlmPlan | None = None  # the SLM's
    teacher_engine: Any = None  # the teacher's
    store: PredictionStore | None = None
    trace: Any = None
    task: Any = None
    evaluated_with: list[PendingEval] = field(default_factory=list)  # the SLM configurations of its pass


def model_name_of(entry: PendingEval) -> str:
    """The engine's name for the model an SLM configuration evaluates: the base, or its adapter's."""
    from ray_app.engines.decode.loaded_slm import BASE_MODEL_NAME, adapter_model_name

    adapter = entry.plan.settings.adapter_path
    return adapter_model_name(adapter) if adapter else BASE_MODEL_NAME


def one_pass_groups(pending: list[PendingEval]) -> list[list[PendingEval]]:
    """The pending SLM configurations, in passes: one, unless several adapters' merged copies would not
    fit where one does (`resolve_adapter_weights` for that many); then a pass per adapter, so every
    actor applies each adapter as its run key says."""
    from ray_app.engines.adapter_weights import checkpoint_bytes, resolve_adapter_weights

    adapters = {entry.plan.settings.adapter_path for entry in pending} - {None}
    if len(adapters) <= 1:
        return [pending]
    settings = pending[0].plan.settings
    together = resolve_adapter_weights(
        pending[0].config.slm.adapter_weights,
        settings.precision,
        settings.device,
        checkpoint_bytes(settings.model_path),
        len(adapters),
    )
    planned = {entry.plan.settings.adapter_weights for entry in pending if entry.plan.settings.adapter_path}
    if planned == {together.name}:
        return [pending]
    by_adapter: dict[Path | None, list[PendingEval]] = {}
    for entry in pending:
        by_adapter.setdefault(entry.plan.settings.adapter_path, []).append(entry)
    return list(by_adapter.values())


def answer_with_slm(pending: list[PendingEval], progress) -> dict[str, dict[str, Any]]:
    """Answer the missing rows of each pending SLM configuration in one Ray Data pass (`one_pass_groups`
    may ask for more): each track's groups, for each model, under each decoding its configurations
    want. Returns, by model name, what the actors loaded."""
    from ray_app.ray_runtime import ensure_ray

    ensure_ray()
    loaded: dict[str, dict[str, Any]] = {}
    for group_of_pass in one_pass_groups(pending):
        plan = group_of_pass[0].plan
        rows = {entry.config.track: entry.rows for entry in group_of_pass}
        for entry in group_of_pass:
            entry.evaluated_with = group_of_pass
        by_model: dict[tuple[str, str], dict[str, PendingEval]] = {}  # (track, model) → decoding → entry
        for entry in group_of_pass:  # in the order given: free before constrained
            by_model.setdefault((entry.config.track, model_name_of(entry)), {})[entry.config.slm.decoding] = entry
        adapters = {
            model_name_of(entry): entry.plan.settings.adapter_path
            for entry in group_of_pass
            if entry.plan.settings.adapter_path
        }
        # A group with any row missing is answered again whole: its rows decode together, so only the
        # same group gives the same bytes; rows already stored are kept as they are.
        work = []
        for (track, model), by_decoding in by_model.items():
            for group in fixed_groups(rows[track], plan.rows_per_task):
                missing = [
                    decoding
                    for decoding, entry in by_decoding.items()
                    if any(i not in entry.store.records for i in group)
                ]
                if missing:
                    work.append(PassItem(track, model, group, missing))
        settings = dataclasses.replace(plan.settings, adapter_path=None)  # the adapters go by name
        pool = (plan.num_actors, plan.actor_cpus, plan.actor_gpus)
        for result in predict_with_ray_data(rows, work, settings, adapters, *pool):
            entry = by_model[(result["track"], result["model"])][result["decoding"]]
            new_records = [record for record in result["records"] if record["index"] not in entry.store.records]
            entry.store.append(new_records, result["elapsed_s"])
            progress.update(entry.task, advance=len(new_records))
            loaded[result["model"]] = result["engine"]
    return loaded


def answer_with_teacher(entry: PendingEval, progress) -> None:
    config, rows, store, engine, task = entry.config, entry.rows, entry.store, entry.teacher_engine, entry.task
    chunk = max(1, config.teacher.concurrency) * 2
    todo = [index for index in range(len(rows)) if index not in store.records]
    for start in range(0, len(todo), chunk):
        indices = todo[start : start + chunk]
        started = time.perf_counter()
        generations = engine.generate([EngineRequest(i, config.track, rows[i].prompt) for i in indices])
        records = [prediction_record(i, rows[i], g) for i, g in zip(indices, generations, strict=True)]
        store.append(records, time.perf_counter() - started)
        progress.update(task, advance=len(records))


def eval_input_errors() -> tuple[type[Exception], ...]:
    """The errors of an evaluation that mean its inputs or settings are wrong (bad row, model path,
    teacher settings, missing recording, Langfuse required...): shown as one message, not a traceback."""
    from ray_app.data.rows import DatasetError
    from ray_app.data.trace_splits import TraceFileError
    from ray_app.engines.constrained import ConstraintError
    from ray_app.engines.hosted import TeacherRequestError
    from ray_app.engines.replay import ReplayMissingError
    from ray_app.engines.slm import SlmEngineError
    from ray_app.engines.teacher_settings import TeacherConfigError
    from ray_app.eval.row_constraints import RowConstraintError
    from ray_app.models.model_path import ModelPathError
    from ray_app.tracing import LangfuseRequiredError

    return (
        DatasetError, ModelPathError, SlmEngineError, TeacherConfigError, TeacherRequestError,
        ReplayMissingError, LangfuseRequiredError, TraceFileError, FileNotFoundError,
        RowConstraintError, ConstraintError, EvalConfigError,
    )  # fmt: skip


def eval_metrics_record(
    *,
    track: str,
    label: str,
    split: str,
    records: list[dict[str, Any]],
    elapsed_s: float,
    engine_description: dict[str, Any],
    is_teacher: bool,
    run_key: str,
    identity: dict[str, Any],
    predictions_path: Path,
    config: Any,
) -> EvalMetrics:
    """The metrics.json of one evaluated model (`run_eval` and the live compare's --save write it)."""
    metrics = score_rows(
        track,  # type: ignore[arg-type]
        [r["completion"] for r in records],
        [r["prediction"] for r in records],
        [r["prompt"] for r in records],
    )
    completion_tokens = sum(r["completion_tokens"] for r in records)
    return EvalMetrics(
        track=track,
        model_label=label,
        split=split,
        rows=len(records),
        metrics=metrics,
        latency_s=Latency(**latency_summary([r["latency_s"] for r in records])),
        tokens=TokenCounts(
            prompt=sum(r["prompt_tokens"] for r in records),
            completion=completion_tokens,
            completion_per_s=round(completion_tokens / elapsed_s, 3) if elapsed_s else None,
        ),
        wall_time_s=round(elapsed_s, 3),
        engine=engine_description,
        teacher_mode=engine_description.get("kind") if is_teacher else None,
        run_key=run_key,
        identity=identity,
        predictions=project_relative(predictions_path),
        **run_facts(config),
    )


def run_eval(config: EvalConfig) -> EvalOutcome:
    """Evaluate `config.model` on `config.track`'s split; reuse finished work; return the metrics."""
    return run_evals([config])[0]


def check_evaluated_together(configs: list[EvalConfig]) -> None:
    """One pass evaluates configurations of one SLM on one split name: they may differ in track, adapter
    and decoding, nothing else, and each writes its own folder."""
    first = configs[0]
    if len(configs) == 1:
        return
    same = {"model": "slm", "split": first.split, "dataset_root": first.dataset_root, "eval_root": first.eval_root,
            "seed": first.seed, "force": first.force, "require_langfuse": first.require_langfuse}  # fmt: skip

    def settings_beyond_track(config: EvalConfig) -> SlmEvalSettings:
        return dataclasses.replace(config.slm, decoding="free", adapter_path=None)

    from ray_app.engines.decode.loaded_slm import adapter_model_name

    adapters_by_name: dict[str, set[Path]] = {}  # the name an actor loads each adapter under → its folders
    for config in configs:
        if config.slm.adapter_path is not None:
            folder = Path(config.slm.adapter_path).resolve()
            adapters_by_name.setdefault(adapter_model_name(folder), set()).add(folder)
    if (
        any(getattr(config, name) != value for config in configs for name, value in same.items())
        or any(settings_beyond_track(config) != settings_beyond_track(first) for config in configs)
        or len({config.output_dir for config in configs}) != len(configs)
        or any(len(folders) > 1 for folders in adapters_by_name.values())
    ):
        raise EvalConfigError(
            "evaluated in one pass: configurations of the same SLM on one split that differ only in track, "
            "adapter and decoding, each written to its own folder (and adapters with distinct model names); got "
            f"{[(c.model, c.track, c.split, c.slm.decoding, str(c.slm.adapter_path), c.model_label) for c in configs]}"
        )


def prepare(config: EvalConfig, rows: list[Row], split_identity: dict[str, Any]) -> PendingEval:
    """What an evaluation's answers depend on (its run key) and what will answer it."""
    if config.model == "slm":
        from ray_app.ray_runtime import cluster_cpus, cluster_gpus

        if config.slm.decoding == "constrained":
            split_constraints(config.track, rows, project_relative(config.split_path))  # each row's, before compute
        plan = slm_plan(config, cluster_gpus(), cluster_cpus())
        return PendingEval(config, rows, plan.identity, run_key_of({**split_identity, **plan.identity}), plan=plan)
    teacher_engine = build_teacher_engine(config)
    identity = teacher_identity(teacher_engine, config)
    return PendingEval(
        config, rows, identity, run_key_of({**split_identity, **identity}), teacher_engine=teacher_engine
    )


def slm_engine_description(entry: PendingEval, loaded: dict[str, Any], together: list[PendingEval]) -> dict[str, Any]:
    config, plan = entry.config, entry.plan
    others = [
        other.config.model_label
        if other.config.track == config.track
        else f"{other.config.track}/{other.config.model_label}"
        for other in together
        if other is not entry
    ]
    return {
        **plan.settings.to_json(),
        **loaded,  # what the actors loaded
        **slm_choices(config, plan),  # the driver decided these
        "actors": plan.num_actors,
        **(constrained_engine(config.track) if config.slm.decoding == "constrained" else {}),
        # answered group by group with these, on the same actors (a later decoding finds the prompt
        # prefixes cached: its wall time is lower, its bytes the same)
        **({"evaluated_in_one_pass_with": others} if others else {}),
    }


def run_evals(configs: list[EvalConfig]) -> list[EvalOutcome]:
    """Evaluate `configs` — one configuration, or configurations of one SLM on one split name that differ
    in track, adapter and decoding (the main job's: both tracks, free and constrained), which are
    answered in one Ray Data pass (one actor pool, one load of the base and of each adapter;
    `ray_predictor`). Each keeps its own run key, outputs, resume point, progress line and trace;
    finished ones are reused."""
    from ray_app.tracing import start_run_trace

    check_evaluated_together(configs)
    split_paths = {config.track: config.split_path for config in configs}
    rows_by_track: dict[str, list[Row]] = {track: read_split(path, track) for track, path in split_paths.items()}
    split_identity = {
        track: {"track": track, "split": configs[0].split, "split_sha256": file_sha256(path)}
        for track, path in split_paths.items()
    }
    prepared = [prepare(config, rows_by_track[config.track], split_identity[config.track]) for config in configs]
    outcomes: dict[int, EvalOutcome] = {}
    for number, entry in enumerate(prepared):
        config = entry.config
        finished = finished_outputs_match(config, entry.run_key)
        if finished is not None:
            console.print(
                f"eval {config.track}/{config.model_label}: up to date (run key {entry.run_key[:12]} matches), skipped"
            )
            outcomes[number] = EvalOutcome(config.output_dir / METRICS_FILE, config.output_dir / "predictions.jsonl",
                                           finished, True)  # fmt: skip
    pending = [entry for number, entry in enumerate(prepared) if number not in outcomes]
    with ExitStack() as open_runs:
        for entry in pending:
            config, label = entry.config, entry.config.model_label
            entry.trace = open_runs.enter_context(
                start_run_trace(
                    name=f"eval {config.track}/{label}",
                    kind="eval",
                    local_dir=config.eval_root / "traces",
                    input={
                        "split": project_relative(config.split_path),
                        "output_dir": project_relative(config.output_dir),
                        "rows": len(entry.rows),
                        "identity": entry.identity,
                        "config": run_facts(config)["config"],
                    },
                    metadata={"track": config.track, "model_label": label, "run_key": entry.run_key},
                    require_langfuse=config.require_langfuse,
                )
            )
            entry.store = PredictionStore.open(config.output_dir, entry.run_key)
            if entry.store.discarded_reason:
                console.print(f"eval {config.track}/{label}: {entry.store.discarded_reason}")
            if entry.store.records:
                done, total = len(entry.store.records), len(entry.rows)
                console.print(f"eval {config.track}/{label}: resuming, {done}/{total} rows already done")
        if pending:
            with progress_bar() as progress, ExitStack() as spans:
                for entry in pending:
                    entry.task = progress.add_task(
                        f"eval {entry.config.track}/{entry.config.model_label}",
                        total=len(entry.rows),
                        completed=len(entry.store.records),
                    )
                generate_spans = [
                    spans.enter_context(
                        entry.trace.span("generate", input={"rows_todo": len(entry.rows) - len(entry.store.records)})
                    )
                    for entry in pending
                ]
                if pending[0].plan is not None:
                    loaded = answer_with_slm(pending, progress)
                    descriptions = [
                        slm_engine_description(entry, loaded.get(model_name_of(entry), {}), entry.evaluated_with)
                        for entry in pending
                    ]
                else:
                    answer_with_teacher(pending[0], progress)
                    descriptions = [pending[0].teacher_engine.describe()]
                for entry, span in zip(pending, generate_spans, strict=True):
                    span.update(output={"rows_done": len(entry.store.records)})
            for entry, description in zip(pending, descriptions, strict=True):
                outcomes[prepared.index(entry)] = finish_eval(entry, description)
    return [outcomes[number] for number in range(len(prepared))]


def finish_eval(entry: PendingEval, engine_description: dict[str, Any]) -> EvalOutcome:
    """Score the stored answers, write metrics.json, end the run's trace and say what it measured."""
    config, rows, store = entry.config, entry.rows, entry.store
    records = store.finish(len(rows))
    result = eval_metrics_record(
        track=config.track,
        label=config.model_label,
        split=config.split,
        records=records,
        elapsed_s=store.elapsed_s,
        engine_description=engine_description,
        is_teacher=config.model == "teacher",
        run_key=entry.run_key,
        identity=entry.identity,
        predictions_path=store.predictions_path,
        config=config,
    )
    metrics = result.metrics
    metrics_path = atomic_write_json(config.output_dir / METRICS_FILE, result.to_json())
    entry.trace.end(output={"metrics": metrics, "metrics_path": project_relative(metrics_path)})
    console.print(
        f"eval {config.track}/{config.model_label}: "
        + ", ".join(f"{name}={value:.3f}" for name, value in metrics.items() if name.endswith("_rate"))
        + f" → {project_relative(metrics_path)}",
        highlight=False,
    )
    return EvalOutcome(metrics_path, store.predictions_path, result, False)
