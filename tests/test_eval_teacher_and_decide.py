"""Teacher evaluation (hosted through the real openai client, and replay) and the decision."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from ray_app.data.rows import read_split
from ray_app.decide.decide import run_decide
from ray_app.decide.decide_config import DecideConfig
from ray_app.decide.decision_record import Decision
from ray_app.dummy_agent import DummyAgentConfig, write_dummy_traces
from ray_app.eval.config import EvalConfig, SlmEvalSettings, TeacherEvalSettings
from ray_app.eval.evaluate import run_eval
from ray_app.json_text import strict_json_loads
from ray_app.metrics.metrics_record import EvalMetrics
from ray_app.paths import DATASET_ROOT
from ray_app.prompts import parse_gold_tool_call
from tests.langfuse_capture import exported_spans
from tests.recording_server import RecordingServer


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch):
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_HOST", "AZURE_ENDPOINT",
                 "AZURE_API_KEY", "SLM_SWAP_TEACHER_BASE_URL", "SLM_SWAP_REQUIRE_LANGFUSE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def gold_teacher(first_status: int = 429):
    """A chat-completions handler that answers with the gold completion (tool_calls for toolcall).

    The very first request gets `first_status` with Retry-After: 0, to exercise the retries.
    """
    gold_by_user_text = {}
    for track in ("structured", "toolcall"):
        for row in read_split(DATASET_ROOT / track / "test.jsonl"):
            gold_by_user_text[row.prompt] = row.completion  # structured: the prompt is the user message
            gold_by_user_text[row.prompt.rsplit("\n\nRequest: ", 1)[1] + "\0tools"] = row.completion
    lock, seen = threading.Lock(), []

    def handler(request):
        with lock:
            seen.append(request)
            first = len(seen) == 1
        if first:
            return first_status, {"error": {"message": "slow down", "type": "rate_limit"}}, {"retry-after": "0"}
        body = request.json()
        user_text = body["messages"][-1]["content"]
        if body.get("tools"):
            call = parse_gold_tool_call(gold_by_user_text[user_text + "\0tools"])
            alias = {t["function"]["name"] for t in body["tools"]}
            name = call.name if call.name in alias else call.name.replace(".", "_")
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": name, "arguments": json.dumps(call.arguments)}}
            ]}  # fmt: skip
        else:
            message = {"role": "assistant", "content": gold_by_user_text[user_text]}
        return 200, {
            "id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        }, {}  # fmt: skip

    return handler


def test_azure_teacher_eval_retries_429_and_scores_gold(monkeypatch, tmp_path):
    with RecordingServer(gold_teacher()) as server:
        monkeypatch.setenv("AZURE_ENDPOINT", f"{server.url}/openai/deployments/gpt-4o-mini")
        monkeypatch.setenv("AZURE_API_KEY", "azure-key-for-tests")
        monkeypatch.setenv("AZURE_API_VERSION", "2024-10-21")
        outcome = run_eval(EvalConfig(track="toolcall", model="teacher", eval_root=tmp_path))
    requests = server.requests
    assert len(requests) == 51  # 50 rows + the one 429 that was retried
    assert {r.path for r in requests} == {"/openai/deployments/gpt-4o-mini/chat/completions"}
    assert all(
        r.query["api-version"] == ["2024-10-21"] and r.headers["api-key"] == "azure-key-for-tests" for r in requests
    )
    assert all(r.json()["temperature"] == 0 and r.json()["seed"] == 42 for r in requests)
    metrics = outcome.metrics
    assert metrics.teacher_mode == "azure"
    assert metrics.metrics["valid_call_rate"] == metrics.metrics["args_exact_rate"] == 1.0
    assert metrics.tokens.prompt == 5000 and metrics.tokens.completion == 1000
    metrics_path = tmp_path / "toolcall" / "teacher" / "metrics.json"
    assert "azure-key-for-tests" not in metrics_path.read_text()
    assert EvalMetrics.read(metrics_path) == metrics  # what run_eval returned is what it wrote
    traces = list((tmp_path / "traces").glob("*.json"))
    assert len(traces) == 1 and "azure-key-for-tests" not in traces[0].read_text()


def test_openai_compatible_teacher_retries_500(monkeypatch, tmp_path):
    with RecordingServer(gold_teacher(first_status=500)) as server:
        monkeypatch.setenv("SLM_SWAP_TEACHER_BASE_URL", f"{server.url}/v1")
        monkeypatch.setenv("SLM_SWAP_TEACHER_MODEL", "qwen-teacher")
        outcome = run_eval(EvalConfig(track="structured", model="teacher", eval_root=tmp_path))
    assert len(server.requests) == 51 and server.requests[0].path == "/v1/chat/completions"
    assert outcome.metrics.teacher_mode == "openai-compatible"
    assert outcome.metrics.metrics["exact_match_rate"] == 1.0


def test_replay_teacher_then_slm_then_decision(ray_session, tiny_model_dir, tmp_path):
    traces = tmp_path / "traces.jsonl"
    write_dummy_traces(DummyAgentConfig(out_json=traces))
    eval_root = tmp_path / "05_eval"
    replay = TeacherEvalSettings(mode="replay", replay_traces=traces)
    slm = SlmEvalSettings(model_path=str(tiny_model_dir), max_new_tokens=8)
    results = {}
    for track in ("structured", "toolcall"):
        results[track] = run_eval(EvalConfig(track=track, model="teacher", eval_root=eval_root, teacher=replay)).metrics
        run_eval(EvalConfig(track=track, model="slm", eval_root=eval_root, slm=slm))
    # The dummy teacher's seeded error profile: 2 wrong values, 2 prose, 1 fence in structured;
    # 2 wrong values, 1 wrong tool, 1 two-call answer in toolcall.
    assert results["structured"].metrics["json_valid_rate"] == 47 / 50
    assert results["structured"].metrics["exact_match_rate"] == 45 / 50
    assert results["toolcall"].metrics["valid_call_rate"] == 49 / 50
    assert results["toolcall"].metrics["name_match_rate"] == 48 / 50
    assert results["toolcall"].teacher_mode == "replay" and results["toolcall"].engine["simulated"] is True
    # The records read back as the very text the evaluate step wrote (teacher and SLM alike).
    for path in sorted(eval_root.glob("*/*/metrics.json")):
        text = path.read_text(encoding="utf-8")
        assert json.dumps(EvalMetrics.read(path).to_json(), indent=2, ensure_ascii=False) + "\n" == text, path
    decision = run_decide(DecideConfig(eval_root=eval_root, bootstrap_resamples=2000))
    assert decision.fine_tune == {"structured": 1, "toolcall": 1}
    core = decision.tracks["structured"].teacher_vs_slm.core["exact_match_rate"]
    assert core.delta == pytest.approx(0.9) and core.interval_95[0] > 0 and core.mcnemar_p < 1e-6
    assert Decision.read(eval_root / "decision.json") == decision
    decide_traces = [p for p in (eval_root / "traces").glob("decide-*.json")]
    assert len(decide_traces) == 1
    events = [e["name"] for e in strict_json_loads(decide_traces[0].read_text())["events"]]
    assert events == ["decision structured", "decision toolcall"]


def test_eval_and_decision_reach_langfuse_through_the_sdk(langfuse_server, tmp_path):
    """Replay-teacher evals and the decide run, sent by the real SDK; decode what arrived."""
    traces = tmp_path / "traces.jsonl"
    write_dummy_traces(DummyAgentConfig(out_json=traces))
    eval_root = tmp_path / "05_eval"
    replay = TeacherEvalSettings(mode="replay", replay_traces=traces)
    for track in ("structured", "toolcall"):
        run_eval(EvalConfig(track=track, model="teacher", eval_root=eval_root, teacher=replay))
        # The same answers under the SLM's label: a tie, so no fine-tuning is needed.
        shutil.copytree(eval_root / track / "teacher", eval_root / track / "slm")
    decision = run_decide(DecideConfig(eval_root=eval_root, bootstrap_resamples=500))
    assert decision.fine_tune == {"structured": 0, "toolcall": 0}
    assert not (eval_root / "traces").exists()  # with keys, nothing goes to local trace files
    spans = exported_spans(langfuse_server)
    eval_root_span = spans["eval toolcall/teacher"]
    assert spans["generate"]["trace_id"] in {s["trace_id"] for name, s in spans.items() if name.startswith("eval ")}
    assert json.loads(eval_root_span["attributes"]["langfuse.observation.output"])["metrics"]["valid_call_rate"] == 0.98
    decision_event = spans["decision toolcall"]
    assert decision_event["trace_id"] == spans["decide"]["trace_id"]
    assert decision_event["attributes"]["langfuse.observation.type"] == "event"
    assert json.loads(decision_event["attributes"]["langfuse.observation.output"])["FINE_TUNE"] == 0
    # The parity verdicts ride on the event's metadata: the slm is the teacher's copy, so not worse.
    parity = json.loads(decision_event["attributes"]["langfuse.observation.metadata.parity"])
    assert parity["slm"]["overall"] == "not worse" and parity["slm"]["margin"] == 0.02
    assert parity["slm"]["valid_call_rate"] == "not worse"
