"""Fine-tuning on Ray Train with a tiny random model: adapter and training.json, `slm-swap train` then
evaluating the adapter and deciding, the gate, bad data, resume after a kill, and the two shell
scripts on CPU workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ray_app.cli import app
from ray_app.data.rows import DatasetError
from ray_app.decide.decision_record import Decision, DecisionConfig, MetricGap, ModelComparison, TrackDecision
from ray_app.decide.price_table import load_price_table
from ray_app.engines.base import EngineRequest
from ray_app.engines.decode.engine import SlmEngine
from ray_app.engines.precision import cpu_autocast_bf16
from ray_app.engines.slm import SlmSettings
from ray_app.metrics import CORE_METRICS
from ray_app.metrics.metrics_record import EvalMetrics
from ray_app.paths import DATASET_ROOT, PROJECT_ROOT, WORKSPACE
from ray_app.train.config import TrainConfig
from ray_app.train.train import fine_tune_gate, run_train
from tests.shell_signals import background_shell
from tests.train_checkpoints import LOCAL_MODE_CHECKPOINT, RAY_TRAIN_CHECKPOINT, wait_for_checkpoint


@pytest.fixture(autouse=True)
def no_langfuse(monkeypatch):
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_HOST", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


def tiny_config(model_dir: Path, tmp_path: Path, **changes) -> TrainConfig:
    settings = {
        "track": "toolcall",
        "model_path": str(model_dir),
        "adapter_root": tmp_path / "04_ft",
        "eval_root": tmp_path / "05_eval",
        "decision_path": tmp_path / "05_eval" / "decision.json",
        "storage_path": tmp_path / "ray_train",
        "force": True,
        "max_train_rows": 6,
        "max_val_rows": 2,
        "per_device_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "num_workers": 0,
        **changes,
    }
    return TrainConfig(**settings)


def test_slm_swap_train_writes_an_adapter_then_evaluates_it_and_decides(ray_session, tiny_model_dir, tmp_path):
    """`slm-swap train` composes three steps: train (run_train), evaluate the SLM with the adapter, decide."""
    eval_root = tmp_path / "05_eval"
    flags = [
        "train", "--track", "toolcall", "--force", "--workers", "0", "--model-path", str(tiny_model_dir),
        "--adapter-root", str(tmp_path / "04_ft"), "--eval-root", str(eval_root),
        "--storage-path", str(tmp_path / "ray_train"), "--max-train-rows", "6", "--max-val-rows", "2",
        "--grad-accum", "1", "--eval-max-new-tokens", "8",
    ]  # fmt: skip
    result = CliRunner().invoke(app, flags)
    assert result.exit_code == 0, result.output
    adapter = tmp_path / "04_ft" / "adapter_toolcall"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    training = json.loads((adapter / "training.json").read_text())
    assert training["backend"] == "peft" and training["settings"]["lora"] == {
        "r": 64, "alpha": 16, "dropout": 0.1, "target_modules": "all-linear"
    }  # fmt: skip
    assert training["settings"]["learning_rate"] == 2e-4 and training["settings"]["max_length"] == 2048
    assert [step for step, _ in training["loss_curve"]] == [1, 2, 3]  # 6 rows, batch 2, 1 epoch
    assert training["val_loss"] > 0 and training["tokens_per_s"] > 0
    rule = cpu_autocast_bf16(None)  # cpu_bf16 None: the worker's CPU decides, by evaluation's rule
    assert (training["precision"], training["precision_reason"]) == (rule.precision, rule.reason)
    assert training["allocator"] in ("glibc", "jemalloc", "tcmalloc") and training["allocator_reason"]
    assert training["identity"]["train_sha256"] and training["rows"] == {"train": 6, "val": 2}
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["r"] == 64 and adapter_config["lora_alpha"] == 16 and adapter_config["lora_dropout"] == 0.1
    # The train step neither evaluates nor claims eval numbers: not in training.json, not in its trace.
    assert "eval_after" not in training
    [train_trace] = [json.loads(path.read_text()) for path in (eval_root / "traces").glob("train-*.json")]
    assert set(train_trace["output"]) == {"adapter", "loss_curve", "val_loss", "tokens_per_s"}
    # The command then evaluated the SLM with the adapter under its own label, and decided again: without
    # teacher and base-SLM results the track is listed as missing, with the commands that produce them.
    evaluated = EvalMetrics.read(eval_root / "toolcall" / "slm-adapter" / "metrics.json")
    assert evaluated.rows == 50 and evaluated.model_label == "slm-adapter"
    decision = Decision.read(eval_root / "decision.json")
    assert decision.tracks == {} and decision.missing["toolcall"].startswith("no teacher results: run slm-swap eval")
    engine = SlmEngine(SlmSettings(model_path=tiny_model_dir, adapter_path=adapter, max_new_tokens=4))
    assert len(engine.generate([EngineRequest(0, "toolcall", "hello")])) == 1
    again = run_train(tiny_config(tiny_model_dir, tmp_path))
    assert not again.trained and again.reason == "adapter up to date" and again.adapter_dir == adapter


def decision_json(fine_tune: int, reason: str) -> dict:
    """A decision.json that decides toolcall only, in the shape `run_decide` writes."""
    gap = MetricGap(0.9, 0.8, 0.1, (0.0, 0.2), 0.5, 2, 1, "slm worse than teacher")
    comparison = ModelComparison("teacher", "slm", {metric: gap for metric in CORE_METRICS["toolcall"]}, {})
    toolcall = TrackDecision(fine_tune, reason, 10, "replay", comparison, models={}, adapted={})
    config = DecisionConfig(
        "slm_swap/05_eval", ("structured", "toolcall"), "teacher", "slm", "slm_swap/price_table.json", "cpu-2core",
        None, 10_000, 0.95, 42,
    )  # fmt: skip
    prices = load_price_table(WORKSPACE / "price_table.json")
    missing = {"structured": "no slm results: run slm-swap eval --track structured --model slm"}
    return Decision("2026-01-01T00:00:00+00:00", "rule", {"toolcall": toolcall}, missing, config, prices, ()).to_json()


def test_the_gate_follows_the_decision(tmp_path):
    decision = tmp_path / "decision.json"
    config = TrainConfig(track="toolcall", decision_path=decision)
    assert fine_tune_gate(config) == (False, f"no decision at {decision}: run `slm-swap decide` first, or --force")
    decision.write_text(json.dumps(decision_json(fine_tune=0, reason="tie")))
    assert fine_tune_gate(config)[0] is False and "FINE_TUNE=0 (tie)" in fine_tune_gate(config)[1]
    decision.write_text(json.dumps(decision_json(fine_tune=1, reason="worse")))
    assert fine_tune_gate(config) == (True, "decision says FINE_TUNE=1 (worse)")
    train, why = fine_tune_gate(TrainConfig(track="structured", decision_path=decision))
    assert not train and why == "decision.json has no result for structured: no slm results: run slm-swap eval " + (
        "--track structured --model slm"
    )
    assert fine_tune_gate(TrainConfig(track="structured", decision_path=decision, force=True)) == (True, "--force")


def test_bad_training_data_stops_before_any_compute(tiny_model_dir, tmp_path):
    dataset = tmp_path / "data"
    (dataset / "toolcall").mkdir(parents=True)
    good = (DATASET_ROOT / "toolcall" / "train.jsonl").read_text().splitlines()[:3]
    (dataset / "toolcall" / "train.jsonl").write_text("\n".join([*good, '{"prompt": "p", "completion": "{}"}']) + "\n")
    (dataset / "toolcall" / "val.jsonl").write_text("")
    with pytest.raises(DatasetError, match=r"train.jsonl:4: field 'completion'"):
        run_train(tiny_config(tiny_model_dir, tmp_path, dataset_root=dataset))
    assert not (tmp_path / "ray_train").exists() and not (tmp_path / "04_ft").exists()


def slm_swap_train(model_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "ray_app", "train", "--track", "toolcall", "--force", "--no-eval-after",
        "--model-path", str(model_dir), "--adapter-root", str(tmp_path / "04_ft"),
        "--eval-root", str(tmp_path / "05_eval"), "--storage-path", str(tmp_path / "ray_train"),
        "--max-val-rows", "0", *extra,
    ]  # fmt: skip


CHECKPOINTS = {"1": RAY_TRAIN_CHECKPOINT, "0": LOCAL_MODE_CHECKPOINT}  # where each mode keeps its resume points


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_killed_train_run_resumes_from_its_last_checkpoint(workers, tiny_model_dir, tmp_path):
    command = slm_swap_train(
        tiny_model_dir,
        tmp_path,
        "--max-train-rows",
        "24",
        "--batch-size",
        "1",
        "--grad-accum",
        "1",
        "--save-steps",
        "2",
        "--workers",
        workers,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGFUSE_", "RAY_ADDRESS"))}
    process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, start_new_session=True)
    wait_for_checkpoint(process, tmp_path / "ray_train", CHECKPOINTS[workers])
    time.sleep(1.0)  # let the first checkpoint's upload finish
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "04_ft" / "adapter_toolcall").exists()
    restarted = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    # No bytecode dumps from dill in the workers' logs (Ray keeps them off the console; the job says where).
    logs = Path(re.search(r"Ray logs: (\S+)", restarted.stderr)[1])
    worker_logs = [*logs.glob("worker-*"), *logs.glob("train/*.log")]
    assert worker_logs and not any("LOAD_FAST" in path.read_text(errors="replace") for path in worker_logs)
    training = json.loads((tmp_path / "04_ft" / "adapter_toolcall" / "training.json").read_text())
    assert training["global_step"] == 24
    assert 2 <= training["resumed_from_step"] < 24
    assert training["settings"]["num_workers"] == int(workers)
    # The console keeps the job's own lines and bars: in local mode the libraries' output goes to the run's log.
    noises = ("'loss'", "Tokenizing train dataset", "FutureWarning", "is deprecated", "Loading weights", "gemm_4bit")
    for noise in noises:
        assert noise not in restarted.stderr
    if workers == "0":
        [log] = (tmp_path / "ray_train").glob("*/train.log")
        assert '"loss"' in log.read_text() and "FutureWarning" in log.read_text()
        assert f"{log.parent.name}/train.log" in "".join(restarted.stderr.split())  # the console says where


@pytest.mark.parametrize("workers", ["0", "1"])
def test_ctrl_c_stops_training_with_a_message_and_exit_130_and_keeps_the_checkpoints(workers, tiny_model_dir, tmp_path):
    budget = ("--max-train-rows", "24", "--batch-size", "1", "--grad-accum", "1", "--save-steps", "2")
    command = slm_swap_train(tiny_model_dir, tmp_path, *budget, "--workers", workers)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGFUSE_", "RAY_ADDRESS"))}
    process = subprocess.Popen(
        command, env=env, cwd=PROJECT_ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, preexec_fn=background_shell,
    )  # fmt: skip
    wait_for_checkpoint(process, tmp_path / "ray_train", CHECKPOINTS[workers])
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C (kill -INT): the run stops; the command must not exit 0
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    flat = " ".join(stderr.split())
    assert f"Interrupted. Kept: training checkpoints in {tmp_path / 'ray_train'}" in flat
    assert "Run the same command again to resume" in flat
    assert list((tmp_path / "ray_train").glob(CHECKPOINTS[workers]))
    assert not (tmp_path / "04_ft" / "adapter_toolcall").exists()


@pytest.mark.parametrize("script", ["train_sequential.sh", "train_parallel.sh"])
def test_training_scripts_run_on_cpu_workers(script, tiny_model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGFUSE_", "RAY_ADDRESS"))}
    result = subprocess.run(
        [
            str(PROJECT_ROOT / "slm_swap" / script), "--workers", "1", "--gpus-per-worker", "0",
            "--cpus-per-worker", "0.5", "--force", "--no-eval-after", "--model-path", str(tiny_model_dir),
            "--max-train-rows", "2", "--max-val-rows", "0", "--batch-size", "2", "--grad-accum", "1",
            "--adapter-root", str(tmp_path / "04_ft"), "--eval-root", str(tmp_path / "05_eval"),
            "--storage-path", str(tmp_path / "ray_train"),
        ],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for track in ("structured", "toolcall"):
        training = json.loads((tmp_path / "04_ft" / f"adapter_{track}" / "training.json").read_text())
        assert training["settings"]["num_workers"] == 1 and training["settings"]["gpus_per_worker"] == 0
        assert training["global_step"] == 1
