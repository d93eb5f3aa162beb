"""Live compare and first tests: plain output, running rates, --save in eval's format, trace, sampler."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ray_app.atomic_files import atomic_write_jsonl
from ray_app.data.rows import read_split
from ray_app.dummy_agent import DummyAgentConfig, write_dummy_traces
from ray_app.engines.hosted import TeacherRequestError
from ray_app.engines.replay import ReplayEngine, ReplayMissingError
from ray_app.eval.config import EvalConfig, SlmEvalSettings, TeacherEvalSettings
from ray_app.eval.evaluate import run_eval
from ray_app.eval.live_board import Mismatch
from ray_app.eval.live_compare import LiveCompareConfig, run_live_compare
from ray_app.eval.live_first_tests import FirstTestsConfig, sample_indices, teacher_can_answer, write_sample
from ray_app.metrics import CORE_METRICS, read_predictions, score_predictions_file, score_rows
from ray_app.paths import DATASET_ROOT, PROJECT_ROOT
from tests.recording_server import RecordingServer

ROWS_PER_TRACK = 6  # rows of each small test split the dummy agent records answers for
UNRECORDED_ROWS = 3  # val rows appended to a split: no recording, so the replay teacher cannot answer them


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch):
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_HOST", "AZURE_ENDPOINT",
                 "AZURE_API_KEY", "SLM_SWAP_TEACHER_BASE_URL", "SLM_SWAP_REQUIRE_LANGFUSE", "RAY_ADDRESS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def small_project(tmp_path_factory) -> dict[str, Path]:
    """Small test splits of both tracks, the dummy agent's traces of them, and a split with unrecorded rows."""
    root = tmp_path_factory.mktemp("live")
    dataset_root = root / "02_dataset"
    for track in ("structured", "toolcall"):
        rows = read_split(DATASET_ROOT / track / "test.jsonl", track)[:ROWS_PER_TRACK]
        atomic_write_jsonl(dataset_root / track / "test.jsonl", (row.to_json() for row in rows))
        unrecorded = read_split(DATASET_ROOT / track / "val.jsonl", track)[:UNRECORDED_ROWS]
        mixed = rows[:2] + unrecorded + rows[2:]
        atomic_write_jsonl(dataset_root / track / "mixed.jsonl", (row.to_json() for row in mixed))
    traces = root / "traces.jsonl"
    write_dummy_traces(DummyAgentConfig(out_json=traces, dataset_root=dataset_root))
    return {"dataset_root": dataset_root, "traces": traces}


def live_config(small_project, model_dir: Path, eval_root: Path, **changes) -> LiveCompareConfig:
    values = {
        "track": "toolcall",
        "dataset_root": small_project["dataset_root"],
        "eval_root": eval_root,
        "slm": SlmEvalSettings(model_path=str(model_dir), batch_size=2, rows_per_task=4, max_new_tokens=6),
        "teacher": TeacherEvalSettings(mode="replay", replay_traces=small_project["traces"]),
        **changes,
    }
    return LiveCompareConfig(**values)


def parse_line(line: str) -> tuple[str, int, int, dict[str, float]]:
    """(label, rows done, rows total, running core rates) of one plain-output line."""
    match = re.match(r"(?:final )?(\w+) ([\w-]+): (\d+)/(\d+) rows ((?:\w+=[\d.]+ )+)", line)
    assert match, line
    rates = dict((name, float(value)) for name, value in (item.split("=") for item in match.group(5).split()))
    return match.group(2), int(match.group(3)), int(match.group(4)), rates


def test_sample_indices_are_seeded_distinct_in_split_order_and_only_answerable():
    answerable = [index % 3 != 0 for index in range(40)]  # 26 answerable rows
    first = sample_indices(answerable, 10, seed=42)
    assert first == sample_indices(answerable, 10, seed=42)
    assert first != sample_indices(answerable, 10, seed=7)
    assert len(set(first)) == 10 and first == sorted(first) and all(answerable[i] for i in first)
    assert sample_indices(answerable, 50, seed=42) == [i for i in range(40) if answerable[i]]  # fewer: all of them


def test_mismatch_shows_where_prediction_and_gold_first_differ():
    gold = '<tool_call name="get_weather">{"city": "Paris", "days": 3, "units": "metric"}</tool_call>'
    prediction = '<tool_call name="get_weather">{"city": "Lyon", "days": 3, "units": "metric"}</tool_call>'
    described = Mismatch(7, gold, prediction).describe()
    # 12 characters of context before the first difference; the common prefix before them is cut
    assert described.startswith('row 7: got …"\\">{\\"city\\": \\"Lyon')
    assert 'want …"\\">{\\"city\\": \\"Paris' in described
    assert Mismatch(0, '{"a": 1}', "\n\nhi").describe() == 'row 0: got "\\n\\nhi" want "{\\"a\\": 1}"'


def test_first_tests_sample_only_rows_the_replay_teacher_recorded(small_project, tmp_path):
    engine = ReplayEngine(small_project["traces"], "dummy-agent")
    mixed = read_split(small_project["dataset_root"] / "toolcall" / "mixed.jsonl", "toolcall")
    assert [teacher_can_answer(engine, row.prompt) for row in mixed].count(False) == UNRECORDED_ROWS
    config = FirstTestsConfig(rows=50, split="mixed", dataset_root=small_project["dataset_root"], sample_root=tmp_path)
    log = io.StringIO()
    path = write_sample(config, "toolcall", engine, log)
    sampled = read_split(path, "toolcall")
    assert len(sampled) == ROWS_PER_TRACK and all(teacher_can_answer(engine, row.prompt) for row in sampled)
    assert "6 of 9 mixed rows are answerable by the replay teacher; took all 6" in log.getvalue()
    small = FirstTestsConfig(rows=4, split="mixed", dataset_root=small_project["dataset_root"], sample_root=tmp_path)
    first = write_sample(small, "toolcall", engine, io.StringIO()).read_bytes()
    assert write_sample(small, "toolcall", engine, io.StringIO()).read_bytes() == first
    rows = [json.loads(line) for line in first.decode().splitlines()]
    assert len({row["prompt"] for row in rows}) == 4
    assert all(teacher_can_answer(engine, row["prompt"]) for row in rows)


def test_live_compare_plain_lines_running_rates_save_and_trace(small_project, tiny_model_dir, tmp_path, capsys):
    teacher = TeacherEvalSettings(mode="replay", replay_traces=small_project["traces"], concurrency=1)  # chunks of 2
    outcome = run_live_compare(live_config(small_project, tiny_model_dir, tmp_path, save=True, teacher=teacher))
    lines = capsys.readouterr().out.splitlines()  # captured stdout is not a terminal: plain lines

    progress = [parse_line(line) for line in lines if not line.startswith("final ")]
    done_by_label = {
        label: [done for line_label, done, _, _ in progress if line_label == label] for label in outcome.saved
    }
    assert done_by_label == {"teacher": [2, 4, 6], "slm": [4, 6]}  # one line per teacher chunk / SLM fixed group
    predictions = {
        label: read_predictions(tmp_path / "toolcall" / label / "predictions.jsonl") for label in outcome.saved
    }
    for label, done, _, rates in progress:  # the running rates are score_rows over the rows done so far
        records = predictions[label][:done]
        expected = score_rows(
            "toolcall", *([getattr(r, key) for r in records] for key in ("completion", "prediction", "prompt"))
        )
        assert rates == {name: round(expected[name], 3) for name in CORE_METRICS["toolcall"]}
    teacher_rates = [rates["args_exact_rate"] for label, _, _, rates in progress if label == "teacher"]
    assert len(set(teacher_rates)) > 1  # the recorded errors move the teacher's running rate

    finals = {parse_line(line)[0]: parse_line(line) for line in lines if line.startswith("final ")}
    for label in ("teacher", "slm"):
        scored = score_predictions_file("toolcall", tmp_path / "toolcall" / label / "predictions.jsonl")
        assert outcome.metrics[label] == scored
        assert finals[label][1:3] == (ROWS_PER_TRACK, ROWS_PER_TRACK)
        assert finals[label][3] == {name: round(scored[name], 3) for name in CORE_METRICS["toolcall"]}
    assert outcome.metrics["teacher"]["valid_call_rate"] > 0  # the replayed teacher answered

    traces = list((tmp_path / "traces").glob("*.json"))
    assert [str(path) for path in traces] == [outcome.trace_location]
    trace = json.loads(traces[0].read_text())
    assert trace["metadata"]["mode"] == "live" and trace["status"] == "ok"
    assert trace["spans"][0]["output"] == {"teacher": ROWS_PER_TRACK, "slm": ROWS_PER_TRACK}
    assert trace["output"]["metrics"]["slm"] == outcome.metrics["slm"]


def test_saved_teacher_files_equal_slm_swap_eval_and_eval_reuses_them(small_project, tiny_model_dir, tmp_path):
    live_root, eval_root = tmp_path / "live", tmp_path / "eval"
    run_live_compare(live_config(small_project, tiny_model_dir, live_root, save=True), output=io.StringIO())
    teacher = TeacherEvalSettings(mode="replay", replay_traces=small_project["traces"])
    eval_config = EvalConfig(track="toolcall", model="teacher", dataset_root=small_project["dataset_root"],
                             eval_root=eval_root, teacher=teacher)  # fmt: skip
    evaluated = run_eval(eval_config).metrics.to_json()
    live_dir, eval_dir = live_root / "toolcall" / "teacher", eval_root / "toolcall" / "teacher"
    for name in ("predictions.jsonl", "timings.jsonl"):  # replay latencies are the recorded ones: equal too
        assert (live_dir / name).read_bytes() == (eval_dir / name).read_bytes()
    live_metrics = json.loads((live_dir / "metrics.json").read_text())
    assert list(live_metrics) == list(evaluated)
    for key in ("metrics", "latency_s", "engine", "teacher_mode", "run_key", "identity", "rows", "split"):
        assert live_metrics[key] == evaluated[key], key
    for key in ("prompt", "completion"):  # completion_per_s divides by the measured wall time
        assert live_metrics["tokens"][key] == evaluated["tokens"][key]
    reused = run_eval(EvalConfig(**{**eval_config.__dict__, "eval_root": live_root}))
    assert reused.reused  # same rows and teacher: `slm-swap eval` finds the live run's files up to date


def test_saved_slm_files_equal_slm_swap_eval_on_ray_data(ray_session, small_project, tiny_model_dir, tmp_path):
    live_root, eval_root = tmp_path / "live", tmp_path / "eval"
    config = live_config(small_project, tiny_model_dir, live_root, track="structured", save=True)
    run_live_compare(config, output=io.StringIO())
    evaluated = run_eval(
        EvalConfig(
            track="structured", model="slm", dataset_root=config.dataset_root, eval_root=eval_root, slm=config.slm
        )
    )
    live_dir = live_root / "structured" / "slm"
    assert (live_dir / "predictions.jsonl").read_bytes() == evaluated.predictions_path.read_bytes()
    live_metrics = json.loads((live_dir / "metrics.json").read_text())
    assert list(live_metrics) == list(evaluated.metrics.to_json())
    assert live_metrics["run_key"] == evaluated.metrics.run_key
    assert live_metrics["metrics"] == evaluated.metrics.metrics
    assert set(live_metrics["engine"]) == set(evaluated.metrics.engine) | {"runner"}
    timings = [json.loads(line) for line in (live_dir / "timings.jsonl").read_text().splitlines()]
    assert [t["index"] for t in timings] == list(range(ROWS_PER_TRACK)) and all(t["latency_s"] > 0 for t in timings)


def test_limit_takes_a_prefix_under_another_run_key(small_project, tiny_model_dir, tmp_path):
    whole = run_live_compare(live_config(small_project, tiny_model_dir, tmp_path / "a", save=True), io.StringIO())
    prefix = run_live_compare(
        live_config(small_project, tiny_model_dir, tmp_path / "b", save=True, limit=3), io.StringIO()
    )
    assert prefix.metrics["slm"]["rows"] == 3 and whole.metrics["slm"]["rows"] == ROWS_PER_TRACK
    keys = [json.loads(outcome.saved["slm"].read_text())["run_key"] for outcome in (whole, prefix)]
    assert keys[0] != keys[1]


def test_unrecorded_prompt_fails_before_the_slm_loads(small_project, tmp_path):
    config = live_config(small_project, tmp_path / "no-model-here", tmp_path, split="mixed")
    with pytest.raises(ReplayMissingError, match="3 of 9 prompts have no recorded generation"):
        run_live_compare(config, io.StringIO())
    assert not (tmp_path / "traces").exists()


def test_hosted_teacher_failure_stops_the_run_and_marks_the_trace(small_project, tiny_model_dir, tmp_path, monkeypatch):
    def bad_request(request):
        return 400, {"error": {"message": "model does not exist", "type": "invalid_request_error"}}, {}

    with RecordingServer(bad_request) as server:
        monkeypatch.setenv("SLM_SWAP_TEACHER_BASE_URL", f"{server.url}/v1")
        monkeypatch.setenv("SLM_SWAP_TEACHER_MODEL", "teacher-model")
        config = live_config(small_project, tiny_model_dir, tmp_path, teacher=TeacherEvalSettings(), save=True)
        with pytest.raises(TeacherRequestError, match="HTTP 400"):
            run_live_compare(config, io.StringIO())
    trace = json.loads(next((tmp_path / "traces").glob("*.json")).read_text())
    assert trace["status"] == "error" and "TeacherRequestError" in trace["error"]
    assert not (tmp_path / "toolcall").exists()  # nothing saved from a failed run


def test_run_first_tests_script_from_inside_slm_swap(small_project, tiny_model_dir, tmp_path):
    command = [
        sys.executable, "run_first_tests.py", "--rows", "4", "--model-path", str(tiny_model_dir),
        "--max-new-tokens", "4", "--dataset-root", str(small_project["dataset_root"]),
        "--replay-traces", str(small_project["traces"]), "--sample-root", str(tmp_path / "samples"),
        "--eval-root", str(tmp_path / "eval"), "--save",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=PROJECT_ROOT / "slm_swap", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("structured: 6 of 6 test rows are answerable by the replay teacher; sampled 4")
    assert lines[1].startswith("toolcall: 6 of 6 test rows are answerable by the replay teacher; sampled 4")
    finals = [parse_line(line) for line in lines if line.startswith("final ")]
    assert [(label, done, total) for label, done, total, _ in finals] == [
        ("teacher", 4, 4), ("slm", 4, 4), ("teacher", 4, 4), ("slm", 4, 4)
    ]  # fmt: skip
    for track in ("structured", "toolcall"):
        assert len(read_split(tmp_path / "samples" / f"{track}.jsonl", track)) == 4
        metrics = json.loads((tmp_path / "eval" / track / "slm" / "metrics.json").read_text())
        assert metrics["rows"] == 4 and metrics["split"].endswith(f"samples/{track}.jsonl")
