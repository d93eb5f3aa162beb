"""Evaluate one model on one track's split: predictions.jsonl and metrics.json under 05_eval/.

Reads the split (a bad row stops the run before any compute; under `decoding="constrained"` so does a
row whose prompt gives no constraint, `row_constraints.py`), works out the run key (split hash +
everything the numbers depend on), skips the run when finished outputs carry the same key, else answers
the missing rows — the SLM through a Ray Data actor pool, the teacher (hosted or replayed)
from this process with bounded concurrency — appending each finished batch, then scores, writes
`<eval_root>/<track>/<label>/{predictions.jsonl,metrics.json}` and logs one trace for the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ray_app.atomic_files import atomic_write_json
from ray_app.data.rows import Row, read_split
from ray_app.engines.base import EngineRequest
from ray_app.engines.cpu_linear import CpuLinearChoice, resolve_cpu_linear
from ray_app.engines.decode.attention_kernel import DecodeAttentionChoice, resolve_decode_attention
from ray_app.engines.decode.engine import ENGINE_IDENTITY
from ray_app.engines.precision import PrecisionChoice
from ray_app.engines.slm import SlmSettings
from ray_app.eval.config import EvalConfig, EvalConfigError, teacher_mode_from_env
from ray_app.eval.prediction_store import PredictionStore
from ray_app.eval.ray_predictor import fixed_groups, predict_with_ray_data, prediction_record
from ray_app.eval.row_constraints import constrained_engine, constrained_identity, split_constraints
from ray_app.eval.run_facts import latency_summary, run_facts
from ray_app.json_text import canonical_json
from ray_app.metrics import score_rows
from ray_app.metrics.metrics_record import METRICS_FILE, EvalMetrics, Latency, TokenCounts
from ray_app.models.adapter_folder import is_adapter_folder, not_an_adapter_message
from ray_app.models.fingerprint import adapter_fingerprint, file_sha256, folder_fingerprint
from ray_app.models.model_path import resolve_slm_model_path
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


@dataclass(frozen=True)
class SlmPlan:
    settings: SlmSettings  # precision resolved: what every actor loads
    identity: dict[str, Any]  # what the run key holds
    precision: PrecisionChoice  # the precision and why (recorded in metrics.json, not in the run key)
    rows_per_task: int  # rows an actor answers as one fixed group
    num_actors: int
    actor_cpus: float
    actor_gpus: float
    cpu_linear: CpuLinearChoice  # the fp32 CPU kernels and why (metrics.json; in the key when oneDNN)
    decode_attention: DecodeAttentionChoice  # CPU decode-step attention and why (metrics.json; in the key: compiled)


def driver_precision_choice(settings: SlmSettings) -> PrecisionChoice:
    """The precision the actors load, decided on the driver (the run key holds it): on CPU this machine's
    rule (a local Ray's actors share its CPU); on a GPU `auto` sizes the model against the GPU the actors
    get (`cluster_gpu_facts`: this machine's, or a probe task's), with no CUDA check on the driver."""
    from ray_app.engines.precision import resolve_precision
    from ray_app.engines.slm import precision_choice
    from ray_app.ray_runtime import cluster_gpu_facts

    if settings.device == "cpu":
        return precision_choice(settings)
    gpu = cluster_gpu_facts() if settings.precision == "auto" else None
    return resolve_precision(settings.precision, settings.device, settings.model_path, gpu)


def slm_plan(config: EvalConfig, gpus: int, cpus: float) -> SlmPlan:
    """Resolved SLM settings, their identity, and the actor pool (count, CPUs and GPUs per actor), for
    where the SLM runs: `gpus` and `cpus` of the Ray cluster (`slm-swap eval`) or of this machine
    (the live compare, which runs the SLM in its own process)."""
    from ray_app.engines.adapter_weights import checkpoint_bytes, resolve_adapter_weights

    model_path = resolve_slm_model_path(config.slm.model_path)
    adapter = Path(config.slm.adapter_path).resolve() if config.slm.adapter_path else None
    if adapter is not None and not is_adapter_folder(adapter):
        raise FileNotFoundError(f"--adapter {not_an_adapter_message(adapter)}")
    num_actors = config.slm.num_actors or (gpus if gpus else 1)
    device = "cuda" if gpus else "cpu"
    cpu_threads = None if gpus else max(1, int(cpus) // num_actors)
    settings = SlmSettings(
        model_path=model_path,
        adapter_path=adapter,
        precision=config.slm.precision,
        batch_size=config.slm.batch_size,
        max_new_tokens=config.slm.max_new_tokens,
        prefill_chunk_tokens=config.slm.prefill_chunk_tokens,
        cpu_linear=config.slm.cpu_linear,
        decode_attention=config.slm.decode_attention,
        device=device,
        cpu_threads=cpu_threads,
        seed=config.seed,
    )
    # The precision is decided here, on the driver, because the run key holds it; the actors load
    # exactly that. With a local Ray the actors share this machine's CPU, so `auto` follows their CPU;
    # on a cluster it follows the driver's. A GPU need not be on the driver: `auto` sizes the model
    # against the GPU the actors get (`cluster_gpu_facts`: this machine's, or a probe task's).
    choice = driver_precision_choice(settings)
    precision = choice.precision
    settings = dataclasses.replace(settings, precision=precision)
    if adapter is not None:  # merged or not changes the arithmetic: decided here too, and in the run key
        weights = resolve_adapter_weights(
            config.slm.adapter_weights, precision, device, checkpoint_bytes(model_path), 1
        )
        settings = dataclasses.replace(settings, adapter_weights=weights.name)
    # Packed oneDNN kernels round differently from torch's: decided here too (a probe on this machine), and
    # in the run key when they are used, so an fp32 run keeps the key it had before they existed.
    linear = resolve_cpu_linear(settings.cpu_linear, precision, device, model_path, cpu_threads)
    settings = dataclasses.replace(settings, cpu_linear=linear.kernels)
    # So does the compiled decode-step attention (~1e-7 from torch's flash kernel): built here too, and in
    # the key when used. The actors load exactly this choice (`compiled` fails where it cannot be built).
    attention = resolve_decode_attention(settings.decode_attention, precision, device)
    settings = dataclasses.replace(settings, decode_attention=attention.kernel)
    identity = {  # everything an answer depends on (the rows decoding together come from the last three)
        "engine": ENGINE_IDENTITY,
        "model_fingerprint": folder_fingerprint(model_path),
        "adapter_fingerprint": adapter_fingerprint(adapter) if adapter else None,
        **({"adapter_weights": settings.adapter_weights} if adapter else {}),
        "device": device,
        "precision": precision,
        "max_new_tokens": settings.max_new_tokens,
        "seed": config.seed,
        "batch_size": settings.batch_size,
        "rows_per_task": config.slm.rows_per_task,
        "prefill_chunk_tokens": settings.prefill_chunk_tokens,
        **linear.run_key_entry(),
        **({"decode_attention": attention.kernel} if attention.kernel == "compiled" else {}),
        # only constrained runs carry these: a free run keeps the key it had before constrained decoding existed
        **(constrained_identity(config.track) if config.slm.decoding == "constrained" else {}),
    }
    actor_cpus, actor_gpus = (0, 1) if gpus else (config.slm.actor_num_cpus, 0)
    return SlmPlan(
        settings, identity, choice, config.slm.rows_per_task, num_actors, actor_cpus, actor_gpus, linear, attention
    )


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
    """One configuration of `run_evals` that has to be answered: its key, plan and, once open, its
    prediction store, trace and progress line."""

    config: EvalConfig
    identity: dict[str, Any]
    run_key: str
    plan: SlmPlan | None = None  # the SLM's
    teacher_engine: Any = None  # the teacher's
    store: PredictionStore | None = None
    trace: Any = None
    task: Any = None


def answer_with_slm(pending: list[PendingEval], rows: list[Row], progress) -> dict[str, Any]:
    """Answer the missing rows of each pending SLM configuration (one per decoding) in one Ray Data
    pass; returns what the actors loaded."""
    from ray_app.ray_runtime import ensure_ray

    ensure_ray()
    plan = pending[0].plan
    by_decoding = {entry.config.slm.decoding: entry for entry in pending}  # free first, as given
    # A group with any row missing is answered again whole: its rows decode together, so only the
    # same group gives the same bytes; rows already stored are kept as they are.
    work = []
    for group in fixed_groups(rows, plan.rows_per_task):
        missing = [
            decoding for decoding, entry in by_decoding.items() if any(i not in entry.store.records for i in group)
        ]
        if missing:
            work.append((group, missing))
    engine_description: dict[str, Any] = {}
    pool = (plan.num_actors, plan.actor_cpus, plan.actor_gpus)
    for result in predict_with_ray_data(rows, work, plan.settings, pending[0].config.track, *pool):
        entry = by_decoding[result["decoding"]]
        new_records = [record for record in result["records"] if record["index"] not in entry.store.records]
        entry.store.append(new_records, result["elapsed_s"])
        progress.update(entry.task, advance=len(new_records))
        engine_description = result["engine"]
    return engine_description


def answer_with_teacher(entry: PendingEval, rows: list[Row], progress) -> None:
    config, store, engine, task = entry.config, entry.store, entry.teacher_engine, entry.task
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
    first = configs[0]
    if len(configs) == 1:
        return
    same = {"model": "slm", "track": first.track, "split": first.split, "dataset_root": first.dataset_root}
    decodings = [config.slm.decoding for config in configs]
    if (
        any(getattr(config, name) != value for config in configs for name, value in same.items())
        or any(dataclasses.replace(config.slm, decoding="free") != dataclasses.replace(first.slm, decoding="free")
               for config in configs)
        or len(set(decodings)) != len(decodings)
        or len({config.output_dir for config in configs}) != len(configs)
    ):  # fmt: skip
        raise EvalConfigError(
            "evaluated in one pass: configurations of the same SLM on the same split that differ only in "
            f"decoding, each once; got {[(c.model, c.track, c.split, c.slm.decoding, c.model_label) for c in configs]}"
        )


def prepare(config: EvalConfig, rows: list[Row], split_identity: dict[str, Any]) -> PendingEval:
    """What an evaluation's answers depend on (its run key) and what will answer it."""
    if config.model == "slm":
        from ray_app.ray_runtime import cluster_cpus, cluster_gpus

        if config.slm.decoding == "constrained":
            split_constraints(config.track, rows, project_relative(config.split_path))  # each row's, before compute
        plan = slm_plan(config, cluster_gpus(), cluster_cpus())
        return PendingEval(config, plan.identity, run_key_of({**split_identity, **plan.identity}), plan=plan)
    teacher_engine = build_teacher_engine(config)
    identity = teacher_identity(teacher_engine, config)
    return PendingEval(config, identity, run_key_of({**split_identity, **identity}), teacher_engine=teacher_engine)


def slm_choices(config: EvalConfig, plan: SlmPlan) -> dict[str, Any]:
    """What the SLM's precision and CPU linear kernels were asked to be, and why the driver chose what
    it did: the entries every saved SLM description (`slm-swap eval`, the live compare) carries."""
    return {
        "precision_requested": config.slm.precision,
        "precision_reason": plan.precision.reason,
        "cpu_linear_requested": config.slm.cpu_linear,
        "cpu_linear_reason": plan.cpu_linear.reason,
        "decode_attention_requested": config.slm.decode_attention,
        "decode_attention_reason": plan.decode_attention.reason,
    }


def slm_engine_description(entry: PendingEval, loaded: dict[str, Any], together: list[PendingEval]) -> dict[str, Any]:
    config, plan = entry.config, entry.plan
    others = [other.config.model_label for other in together if other is not entry]
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
    """Evaluate `configs` — one configuration, or the free and constrained decodings of one SLM on one
    split, which are answered in one Ray Data pass (one actor pool, one model load; `ray_predictor`).
    Each keeps its own run key, outputs, resume point, progress line and trace; finished ones are reused."""
    from ray_app.tracing import start_run_trace

    check_evaluated_together(configs)
    first = configs[0]
    rows: list[Row] = read_split(first.split_path, first.track)
    split_identity = {"track": first.track, "split": first.split, "split_sha256": file_sha256(first.split_path)}
    prepared = [prepare(config, rows, split_identity) for config in configs]
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
                        "rows": len(rows),
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
                console.print(
                    f"eval {config.track}/{label}: resuming, {len(entry.store.records)}/{len(rows)} rows already done"
                )
        if pending:
            with progress_bar() as progress, ExitStack() as spans:
                for entry in pending:
                    entry.task = progress.add_task(
                        f"eval {entry.config.track}/{entry.config.model_label}",
                        total=len(rows),
                        completed=len(entry.store.records),
                    )
                generate_spans = [
                    spans.enter_context(
                        entry.trace.span("generate", input={"rows_todo": len(rows) - len(entry.store.records)})
                    )
                    for entry in pending
                ]
                if pending[0].plan is not None:
                    loaded = answer_with_slm(pending, rows, progress)
                    descriptions = [slm_engine_description(entry, loaded, pending) for entry in pending]
                else:
                    answer_with_teacher(pending[0], rows, progress)
                    descriptions = [pending[0].teacher_engine.describe()]
                for entry, span in zip(pending, generate_spans, strict=True):
                    span.update(output={"rows_done": len(entry.store.records)})
            for entry, description in zip(pending, descriptions, strict=True):
                outcomes[prepared.index(entry)] = finish_eval(entry, rows, description)
    return [outcomes[number] for number in range(len(prepared))]


def finish_eval(entry: PendingEval, rows: list[Row], engine_description: dict[str, Any]) -> EvalOutcome:
    """Score the stored answers, write metrics.json, end the run's trace and say what it measured."""
    config, store = entry.config, entry.store
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
