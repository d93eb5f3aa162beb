"""The main job end to end on a tiny model: killed in training, restarted, then re-run once more."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_app.decide.decision_record import Decision
from ray_app.paths import PROJECT_ROOT
from ray_app.pipeline import PipelineConfigError, build_config
from tests.train_checkpoints import wait_for_checkpoint


def pipeline_command(model_dir: Path, root: Path) -> list[str]:
    return [
        sys.executable, "jobs/pipeline.py", "--model-path", str(model_dir), "--profile", "demo",
        "--max-new-tokens", "8", "--eval-root", str(root / "05_eval"), "--adapter-root", str(root / "04_ft"),
        "--storage-path", str(root / "ray_train"), "--trace-path", str(root / "traces.jsonl"),
        "--max-train-rows", "24", "--train-batch-size", "1", "--gradient-accumulation-steps", "1",
        "--train-save-steps", "2",
    ]  # fmt: skip


BASE_LABELS = ("teacher", "slm", "slm-constrained")  # steps 4-5: the SLM free and under constrained decoding
BASE_RESULTS = [f"{track}/{label}/metrics.json" for track in ("structured", "toolcall") for label in BASE_LABELS]


def test_pipeline_killed_in_training_resumes_without_redoing_evaluations_then_reuses_everything(
    tiny_model_dir, tmp_path
):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGFUSE_", "RAY_ADDRESS", "AZURE_", "SLM_"))}
    command = pipeline_command(tiny_model_dir, tmp_path)
    process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, start_new_session=True, stderr=subprocess.DEVNULL)
    wait_for_checkpoint(process, tmp_path / "ray_train", timeout_s=600)
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    eval_root = tmp_path / "05_eval"
    before = {name: (eval_root / name).read_bytes() for name in BASE_RESULTS}

    restarted = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    log = " ".join(restarted.stderr.split())  # rich wraps long lines
    assert log.count("reused: inputs unchanged (run key") == 6  # the adapters are evaluated for the first time
    # The last lines hand over the endpoint: serve what the job built, then the Mastra agent through it.
    assert log.endswith(
        f"Next: serve the SLM and its adapters at http://127.0.0.1:8000/v1 (OpenAI-compatible): slm-swap serve "
        f"--model-path {tiny_model_dir} --adapter-root {tmp_path / '04_ft'} then, in a second terminal, the Mastra "
        "example agent makes a tool call through it (model slm-toolcall): make mastra-demo"
    )
    assert {name: (eval_root / name).read_bytes() for name in BASE_RESULTS} == before
    for track in ("structured", "toolcall"):
        training = json.loads((tmp_path / "04_ft" / f"adapter_{track}" / "training.json").read_text())
        assert training["global_step"] == 24
        assert (eval_root / track / "slm-adapter" / "metrics.json").is_file()
        assert (eval_root / track / "slm-adapter-constrained" / "metrics.json").is_file()
    resumed = [
        json.loads((tmp_path / "04_ft" / f"adapter_{track}" / "training.json").read_text()).get("resumed_from_step")
        for track in ("structured", "toolcall")
    ]
    assert resumed[0] and resumed[0] >= 2  # structured trains first: it was the one killed
    decision = Decision.read(eval_root / "decision.json")
    assert list(decision.tracks["toolcall"].adapted) == ["slm-constrained", "slm-adapter", "slm-adapter-constrained"]
    report = (eval_root / "report.md").read_text()
    assert "slm-adapter" in report and list((eval_root / "report_charts").glob("*.png"))
    resolved = json.loads((eval_root / "pipeline_config.json").read_text())
    assert resolved["profile"] == "demo" and resolved["max_train_rows"] == 24

    [pipeline_trace] = [
        json.loads(path.read_text())
        for path in sorted((eval_root / "traces").glob("pipeline-*.json"))
        if json.loads(path.read_text()).get("status") == "ok"
    ]
    child_kinds = {child["kind"] for child in pipeline_trace["children"]}
    assert {"eval", "decide", "train"} <= child_kinds
    # The train runs claim no eval numbers: evaluating the adapters is step 8, a run of its own.
    train_runs = [json.loads(Path(c["file"]).read_text()) for c in pipeline_trace["children"] if c["kind"] == "train"]
    assert len(train_runs) == 2
    assert all(set(run["output"]) == {"adapter", "loss_curve", "val_loss", "tokens_per_s"} for run in train_runs)

    again = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    log = " ".join(again.stderr.split())
    assert log.count("reused: inputs unchanged (run key") == 10  # 6 base + 4 adapter evaluations
    assert log.count("adapter up to date (run key") == 2
    assert "skipped: splits and templates unchanged" in log and "skipped: metrics and decision unchanged" in log
    assert log.count("skipped: results and price table unchanged") == 2


def test_ctrl_c_stops_the_pipeline_with_a_message_and_exit_130_and_a_rerun_continues(tiny_model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LANGFUSE_", "RAY_ADDRESS", "RAY_AUTH_MODE", "AZURE_", "SLM_"))}  # fmt: skip
    command = pipeline_command(tiny_model_dir, tmp_path)
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            command, env=env, cwd=PROJECT_ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr
        )
        started_slm_eval = tmp_path / "05_eval" / "structured" / "slm" / "run_state.json"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None and not started_slm_eval.is_file():
            time.sleep(0.1)
        assert process.poll() is None, stderr_path.read_text()[-3000:]
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        assert process.wait(timeout=120) == 130
    log = stderr_path.read_text()
    assert "Traceback" not in log
    flat = " ".join(log.split())
    assert "Interrupted in step 5/10 (SLM on both tracks" in flat and "Run the same command again to resume" in flat
    assert f"training checkpoints: {tmp_path / 'ray_train'}/" in flat
    assert "Ray logs: /" in flat  # where the workers' output went, printed once at the start
    assert "Token authentication is enabled" not in flat  # the embedded Ray's token mode is set, not defaulted
    eval_root = tmp_path / "05_eval"
    assert set(json.loads((eval_root / "pipeline_state.json").read_text())) == {"data", "dummy_agent"}
    teacher_metrics = [eval_root / track / "teacher" / "metrics.json" for track in ("structured", "toolcall")]
    teacher = [path.read_bytes() for path in teacher_metrics]

    # The same job again (here without training, to stay short) reuses what the interrupted one finished.
    again = subprocess.run([*command, "--no-train"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    flat = " ".join(again.stderr.split())
    assert "skipped: splits and templates unchanged" in flat and "is current (inputs sha256" in flat  # steps 1, 2
    assert flat.count("reused: inputs unchanged (run key") == 2  # the teacher on both tracks
    assert [path.read_bytes() for path in teacher_metrics] == teacher
    assert (eval_root / "toolcall" / "slm" / "metrics.json").is_file()


def test_config_file_flags_and_profiles_resolve_in_order(tmp_path, monkeypatch):
    monkeypatch.delenv("SLM_MODEL_PATH", raising=False)
    settings = tmp_path / "pipeline.yaml"
    settings.write_text("max_new_tokens: 64\ntrain: false\nmax_train_rows: 10\n")
    config = build_config(settings, {"max_train_rows": 5, "seed": None})
    assert (config.profile, config.max_new_tokens, config.train, config.max_train_rows) == ("demo", 64, False, 5)
    assert (config.train_batch_size, config.gradient_accumulation_steps) == (1, 2)  # 2 rows a step, no padding
    assert config.train_gradient_checkpointing is False
    assert (config.slm_precision, config.train_cpu_bf16) == ("auto", None)  # the machine decides, not the profile
    monkeypatch.setenv("SLM_MODEL_PATH", "/models/qwen2.5-7b-instruct")
    full = build_config(None, {})
    assert (full.profile, full.slm_precision, full.max_new_tokens, full.max_train_rows) == ("full", "auto", 256, None)
    assert (full.train_batch_size, full.gradient_accumulation_steps) == (2, 4)  # the seed's
    assert full.model_path == "/models/qwen2.5-7b-instruct"
    assert full.train_gradient_checkpointing is True and full.train_cpu_bf16 is None
    settings.write_text("max_new_token: 64\n")
    with pytest.raises(PipelineConfigError, match="unknown setting.*max_new_token"):
        build_config(settings, {})


@pytest.mark.parametrize("native", [True, False])
def test_the_demo_profiles_precision_follows_the_cpu(native, monkeypatch):
    from ray_app import ray_runtime
    from ray_app.engines import precision
    from ray_app.pipeline.arguments import config_from_argv
    from ray_app.pipeline.run import chosen_precision

    support = precision.CpuBf16Support(native, "avx512_bf16" if native else "no avx512_bf16 or AMX", "a test CPU")
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: support)
    monkeypatch.setattr(ray_runtime, "cluster_gpus", lambda: 0)
    monkeypatch.delenv("SLM_MODEL_PATH", raising=False)
    chosen = chosen_precision(build_config(None, {}))
    expected = "bf16" if native else "fp32"
    assert chosen["eval"].precision == chosen["train"].precision == expected
    assert "a test CPU" in chosen["eval"].reason
    forced = chosen_precision(config_from_argv(["--no-train-cpu-bf16", "--slm-precision", "bf16"]))
    assert (forced["eval"].precision, forced["train"].precision) == ("bf16", "fp32")
    monkeypatch.setattr(ray_runtime, "cluster_gpus", lambda: 1)
    assert chosen_precision(build_config(None, {}))["eval"].precision == "8bit"
