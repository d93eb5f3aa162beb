"""SLM evaluation through Ray Data: byte-identical reruns, reuse of finished work, resume after a kill."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_app.engines.precision import resolve_precision
from ray_app.eval.config import EvalConfig, SlmEvalSettings
from ray_app.eval.evaluate import run_eval
from ray_app.paths import DATASET_ROOT, PROJECT_ROOT


def slm_config(model_dir: Path, eval_root: Path, track: str = "toolcall", **changes) -> EvalConfig:
    settings = SlmEvalSettings(model_path=str(model_dir), batch_size=8, max_new_tokens=8)
    return EvalConfig(track=track, model="slm", eval_root=eval_root, slm=settings, **changes)


@pytest.fixture(autouse=True)
def no_langfuse(monkeypatch, tmp_path):
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_HOST"):
        monkeypatch.delenv(name, raising=False)


def test_eval_writes_predictions_and_metrics_byte_identical_twice(ray_session, tiny_model_dir, tmp_path):
    first = run_eval(slm_config(tiny_model_dir, tmp_path / "one"))
    second = run_eval(slm_config(tiny_model_dir, tmp_path / "two"))
    assert first.predictions_path.read_bytes() == second.predictions_path.read_bytes()
    lines = [json.loads(line) for line in first.predictions_path.read_text().splitlines()]
    gold = [json.loads(line) for line in (DATASET_ROOT / "toolcall" / "test.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(50))
    assert [line["completion"] for line in lines] == [row["completion"] for row in gold]
    metrics = first.metrics.to_json()
    assert metrics["rows"] == 50 and metrics["model_label"] == "slm"
    rule = resolve_precision("auto", "cpu")  # this machine's CPU: bf16 where native, else fp32
    assert metrics["engine"]["precision"] == rule.precision and metrics["engine"]["device"] == "cpu"
    assert metrics["engine"]["precision_reason"] == rule.reason and metrics["engine"]["precision_requested"] == "auto"
    assert "precision_reason" not in metrics["identity"]  # the run key holds the choice, not its wording
    assert metrics["engine"]["allocator"] in ("glibc", "jemalloc", "tcmalloc") and metrics["engine"]["allocator_reason"]
    assert "allocator" not in metrics["identity"]  # memory, not arithmetic: the same answers under any of them
    assert metrics["identity"]["batch_size"] == 8 and len(metrics["identity"]["model_fingerprint"]) == 64
    assert set(metrics["metrics"]) >= {"valid_call_rate", "name_match_rate", "args_exact_rate"}
    assert metrics["tokens"]["completion"] == sum(line["completion_tokens"] for line in lines)
    assert metrics["packages"]["ray"] and metrics["git"]["commit"] is not None
    assert not (first.predictions_path.parent / "predictions.partial.jsonl").exists()
    timings = (first.predictions_path.parent / "timings.jsonl").read_text().splitlines()
    assert len(timings) == 50 and all(json.loads(line)["latency_s"] > 0 for line in timings)
    assert "latency_s" not in lines[0]  # measured wall-clock lives in timings.jsonl


def test_finished_eval_is_reused_and_force_recomputes(ray_session, tiny_model_dir, tmp_path):
    run_eval(slm_config(tiny_model_dir, tmp_path, track="structured"))
    again = run_eval(slm_config(tiny_model_dir, tmp_path, track="structured"))
    assert again.reused
    forced = run_eval(slm_config(tiny_model_dir, tmp_path, track="structured", force=True))
    assert not forced.reused


def partial_lines(finished) -> list[str]:
    """A finished run's rows as the resume file holds them (each prediction with its latency), in split order."""
    timings = [
        json.loads(line) for line in (finished.predictions_path.parent / "timings.jsonl").read_text().splitlines()
    ]
    return [
        json.dumps({**json.loads(line), "latency_s": timing["latency_s"]}) + "\n"
        for line, timing in zip(finished.predictions_path.read_text().splitlines(), timings, strict=True)
    ]


def test_resume_keeps_finished_batches_and_cuts_a_torn_line(ray_session, tiny_model_dir, tmp_path):
    reference = run_eval(slm_config(tiny_model_dir, tmp_path / "reference"))
    lines = partial_lines(reference)
    interrupted = tmp_path / "interrupted" / "toolcall" / "slm"
    interrupted.mkdir(parents=True)
    # What a kill during the third batch leaves: two finished batches and half of a line.
    (interrupted / "predictions.partial.jsonl").write_text("".join(lines[:16]) + lines[16][:40])
    (interrupted / "run_state.json").write_text(json.dumps({"run_key": reference.metrics.run_key, "elapsed_s": 1.5}))
    resumed = run_eval(slm_config(tiny_model_dir, tmp_path / "interrupted"))
    assert resumed.predictions_path.read_bytes() == reference.predictions_path.read_bytes()
    assert resumed.metrics.wall_time_s >= 1.5


def test_resume_answers_a_partly_stored_group_again_and_keeps_the_same_bytes(ray_session, tiny_model_dir, tmp_path):
    """An actor sends a group's rows as they finish, so a kill can leave some rows of a group stored (in
    the order they finished): the group is answered again whole and the predictions are the same bytes."""
    reference = run_eval(slm_config(tiny_model_dir, tmp_path / "reference"))
    lines = partial_lines(reference)
    interrupted = tmp_path / "interrupted" / "toolcall" / "slm"
    interrupted.mkdir(parents=True)
    assert SlmEvalSettings.rows_per_task >= 50  # the 50 rows are one group
    stored = [7, 2, 5, 31]  # some of its rows, in the order they finished
    (interrupted / "predictions.partial.jsonl").write_text("".join(lines[index] for index in stored))
    (interrupted / "run_state.json").write_text(json.dumps({"run_key": reference.metrics.run_key, "elapsed_s": 2.0}))
    resumed = run_eval(slm_config(tiny_model_dir, tmp_path / "interrupted"))
    assert resumed.predictions_path.read_bytes() == reference.predictions_path.read_bytes()


def test_killed_eval_restarted_finishes_with_the_same_predictions(tiny_model_dir, tmp_path):
    """A real SIGKILL of `slm-swap eval` mid-run, then the same command again."""
    command = [
        sys.executable, "-m", "ray_app", "eval", "--track", "toolcall", "--model", "slm",
        "--model-path", str(tiny_model_dir), "--batch-size", "2", "--rows-per-task", "4", "--max-new-tokens", "48",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGFUSE_", "RAY_ADDRESS"))}
    reference = subprocess.run([*command, "--eval-root", str(tmp_path / "reference")], env=env, cwd=PROJECT_ROOT)
    assert reference.returncode == 0
    partial = tmp_path / "killed" / "toolcall" / "slm" / "predictions.partial.jsonl"
    process = subprocess.Popen(
        [*command, "--eval-root", str(tmp_path / "killed")], env=env, cwd=PROJECT_ROOT, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if partial.is_file() and partial.read_text().count("\n") >= 4:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; make it longer"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before_restart = partial.read_text().count("\n")
    assert 4 <= done_before_restart < 50
    restarted = subprocess.run(
        [*command, "--eval-root", str(tmp_path / "killed")], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert restarted.returncode == 0, restarted.stderr
    assert "resuming" in restarted.stderr
    killed_predictions = (tmp_path / "killed" / "toolcall" / "slm" / "predictions.jsonl").read_bytes()
    assert killed_predictions == (tmp_path / "reference" / "toolcall" / "slm" / "predictions.jsonl").read_bytes()


def test_slm_plan_sizes_the_actor_pool_from_the_resources_it_is_given(tiny_model_dir, tmp_path, monkeypatch):
    from ray_app import ray_runtime
    from ray_app.eval.slm_plan import slm_plan

    # The 4 GPUs below are made up: with the suite's Ray up and no GPU in it, asking the cluster what GPU
    # the actors get would wait out GPU_PROBE_TIMEOUT_S (300 s) and then say what this does: no answer.
    monkeypatch.setattr(ray_runtime, "cluster_gpu_facts", lambda: None)
    on_cpus = slm_config(tiny_model_dir, tmp_path)
    plan = slm_plan(on_cpus, gpus=0, cpus=8.0)
    assert (plan.num_actors, plan.actor_gpus, plan.settings.device, plan.settings.cpu_threads) == (1, 0, "cpu", 8)
    assert plan.identity["device"] == "cpu" and plan.actor_cpus == on_cpus.slm.actor_num_cpus
    two_actors = dataclasses.replace(on_cpus, slm=dataclasses.replace(on_cpus.slm, num_actors=2))
    assert slm_plan(two_actors, gpus=0, cpus=8.0).settings.cpu_threads == 4
    plan = slm_plan(on_cpus, gpus=4, cpus=64.0)
    assert (plan.num_actors, plan.actor_cpus, plan.actor_gpus) == (4, 0, 1)
    assert (plan.settings.device, plan.settings.cpu_threads) == ("cuda", None)
    assert plan.settings.precision == plan.identity["precision"] == "8bit"  # auto on a GPU: the seed's 8-bit load


@pytest.mark.parametrize("native", [True, False])
def test_slm_plan_puts_the_cpus_precision_in_the_run_key_and_its_reason_beside_it(
    native, tiny_model_dir, tmp_path, monkeypatch
):
    from ray_app.engines import precision
    from ray_app.eval.slm_plan import slm_plan

    support = precision.CpuBf16Support(native, "avx512_bf16" if native else "no avx512_bf16 or AMX", "a test CPU")
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: support)
    plan = slm_plan(slm_config(tiny_model_dir, tmp_path), gpus=0, cpus=2.0)
    expected = "bf16" if native else "fp32"
    assert plan.settings.precision == plan.identity["precision"] == plan.precision.precision == expected
    assert "a test CPU" in plan.precision.reason and plan.precision.reason not in str(plan.identity)
