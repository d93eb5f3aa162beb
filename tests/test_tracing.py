"""Run traces: the secret scrubber, the local-file backend, and the real langfuse SDK against a
recording server on 127.0.0.1 (what it sends is decoded from OTLP protobuf and asserted)."""

import base64
import dataclasses
import datetime as dt
import enum
import json
import math
import os
import re
from pathlib import Path

import pytest

from ray_app.paths import EVAL_ROOT
from ray_app.tracing import (
    DEFAULT_LOCAL_DIR,
    REDACTED,
    LangfuseRequiredError,
    is_secret_name,
    redact_secrets,
    start_run_trace,
    to_jsonable,
)
from tests.langfuse_capture import exported_spans, otlp_bodies

AZURE_KEY = "azure-key-0123456789abcdef"
ENV_VARS = (
    "LANGFUSE_PUBLIC_KEY",
    "LANGFUSE_SECRET_KEY",
    "LANGFUSE_BASE_URL",
    "LANGFUSE_HOST",
    "SLM_SWAP_REQUIRE_LANGFUSE",
    "AZURE_API_KEY",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_API_KEY", AZURE_KEY)


# --- redaction and JSON conversion (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["api_key", "apiKey", "x-api-key", "apikey", "AZURE_API_KEY", "secret", "client_secret", "password",
     "Authorization", "access_token", "auth_token", "accessToken", "token", "HF_TOKEN", "LANGFUSE_PUBLIC_KEY",
     "secret_key", "key", "credentials"],
)  # fmt: skip
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    ["prompt_tokens", "completion_tokens", "tokens", "max_new_tokens", "tokenizer", "eos_token_id",
     "pad_token", "run_key", "keys", "keyword", "monkey", "author", "track", "split_sha256"],
)  # fmt: skip
def test_names_that_are_not_secret(name):
    assert not is_secret_name(name)


def test_redact_secrets_by_key_and_by_environment_value():
    environ = {"AZURE_API_KEY": AZURE_KEY, "MY_SERVICE_TOKEN": "tok-9876543210", "HF_TOKEN": "short", "HOME": "/x"}
    value = {
        "metadata": {"api_key": "sk-123", "Authorization": "Bearer abc", "prompt_tokens": 12, "tokens": [1, 2]},
        "nested": [{"access_token": {"value": "t"}}, ("call with " + AZURE_KEY, "tok-9876543210!")],
        "header tok-9876543210": "x",
        "token_count": 7,  # a count under a secret-looking key is not a credential
        "has_api_key": True,
        "secret": None,
        "note": "short values such as 'short' stay",
    }
    assert redact_secrets(value, environ) == {
        "metadata": {"api_key": REDACTED, "Authorization": REDACTED, "prompt_tokens": 12, "tokens": [1, 2]},
        "nested": [{"access_token": REDACTED}, [f"call with {REDACTED}", f"{REDACTED}!"]],
        f"header {REDACTED}": "x",  # dict keys too
        "token_count": 7,
        "has_api_key": True,
        "secret": None,
        "note": "short values such as 'short' stay",
    }
    assert value["metadata"]["api_key"] == "sk-123"  # the input is not modified


def test_redact_secrets_reads_only_the_given_environment():
    assert redact_secrets(f"uses {AZURE_KEY}", environ={}) == f"uses {AZURE_KEY}"
    assert redact_secrets(f"uses {AZURE_KEY}") == f"uses {REDACTED}"  # os.environ by default


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass(frozen=True)
class Settings:
    path: Path
    sizes: tuple[int, ...]


def test_to_jsonable():
    value = {
        "settings": Settings(Path("/tmp/a"), (1, 2)),
        "tags": {"b", "a"},
        "nan": math.nan,
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "color": Color.RED,
        Path("k"): object,
    }
    converted = to_jsonable(value)
    assert converted == {
        "settings": {"path": "/tmp/a", "sizes": [1, 2]},
        "tags": ["a", "b"],
        "nan": "nan",
        "when": "2026-01-02T03:04:05+00:00",
        "color": "red",
        "k": "<class 'object'>",
    }
    json.dumps(converted, allow_nan=False)


# --- local-file backend -----------------------------------------------------------------------------


def read_trace(run) -> dict:
    return json.loads(Path(run.location).read_text())


ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_local_file_trace_structure(tmp_path, capsys):
    with start_run_trace(
        "eval toolcall slm",
        "eval",
        input={"split": Path("slm_swap/02_dataset/toolcall/test.jsonl"), "rows": 3},
        metadata={"track": "toolcall", "api_key": "sk-123", "note": f"key {AZURE_KEY}"},
        local_dir=tmp_path,
    ) as run:
        assert run.backend == "local-file"
        assert read_trace(run)["status"] == "running"  # written at the start already
        with run.span("generate", input={"rows_todo": 3}) as span:
            with span.span("batch 0", metadata={"size": 3}) as inner:
                inner.update(output={"rows": 3})
            span.update(output={"rows_done": 3}, metadata={"actors": 1})
        run.event("fine_tune_decision", input={"gap": 0.2}, output={"fine_tune": True}, level="WARNING")
        run.end(output={"metrics": {"valid_call_rate": 0.5}})

    trace = read_trace(run)
    assert Path(run.location) == tmp_path / f"{run.run_id}.json"
    assert re.fullmatch(r"eval-toolcall-slm-\d{8}T\d{6}Z-[0-9a-f]{6}", run.run_id)
    assert re.fullmatch(r"[0-9a-f]{32}", run.trace_id) and trace["trace_id"] == run.trace_id
    assert {key: trace[key] for key in ("run_id", "name", "kind", "backend", "status", "error", "parent_trace_id")} == {
        "run_id": run.run_id,
        "name": "eval toolcall slm",
        "kind": "eval",
        "backend": "local-file",
        "status": "ok",
        "error": None,
        "parent_trace_id": None,
    }
    assert trace["input"] == {"split": "slm_swap/02_dataset/toolcall/test.jsonl", "rows": 3}
    assert trace["output"] == {"metrics": {"valid_call_rate": 0.5}}
    assert trace["metadata"] == {"track": "toolcall", "api_key": REDACTED, "note": f"key {REDACTED}", "status": "ok"}
    assert ISO_UTC.match(trace["start_time"]) and ISO_UTC.match(trace["end_time"])
    [generate] = trace["spans"]
    assert (generate["name"], generate["status"], generate["input"], generate["output"], generate["metadata"]) == (
        "generate",
        "ok",
        {"rows_todo": 3},
        {"rows_done": 3},
        {"actors": 1},
    )
    assert ISO_UTC.match(generate["start_time"]) and ISO_UTC.match(generate["end_time"])
    [inner] = generate["spans"]
    assert (inner["name"], inner["output"], inner["metadata"]) == ("batch 0", {"rows": 3}, {"size": 3})
    [event] = trace["events"]
    assert {key: event[key] for key in ("name", "level", "input", "output")} == {
        "name": "fine_tune_decision",
        "level": "WARNING",
        "input": {"gap": 0.2},
        "output": {"fine_tune": True},
    }
    text = Path(run.location).read_text()
    assert "sk-123" not in text and AZURE_KEY not in text

    stderr_lines = capsys.readouterr().err.splitlines()
    assert len(stderr_lines) == 1
    assert "Langfuse keys are not set" in stderr_lines[0] and run.location in stderr_lines[0]


def test_default_local_dir_and_given_run_id(tmp_path, monkeypatch):
    assert DEFAULT_LOCAL_DIR == EVAL_ROOT / "traces"
    monkeypatch.setattr("ray_app.tracing.run_trace.DEFAULT_LOCAL_DIR", tmp_path)
    run = start_run_trace("x", "train", input={}, run_id="my run/../id")
    run.end()
    assert run.run_id == "my-run-..-id"
    assert Path(run.location) == tmp_path / "my-run-..-id.json"


def test_exception_inside_with_records_error_and_reraises(tmp_path):
    with (
        pytest.raises(RuntimeError, match="out of memory"),
        start_run_trace("train structured", "train", input={}, local_dir=tmp_path) as run,
        run.span("fit"),
    ):
        raise RuntimeError(f"out of memory (key {AZURE_KEY})")
    trace = read_trace(run)  # valid JSON after the error
    assert trace["status"] == "error" and run.status == "error"
    assert trace["error"] == f"RuntimeError: out of memory (key {REDACTED})"
    assert trace["spans"][0]["status"] == "error"
    assert trace["spans"][0]["error"] == trace["error"]
    assert trace["end_time"] is not None


def test_end_inside_with_is_kept_and_bad_arguments_fail(tmp_path):
    with start_run_trace("decide", "decide", input={}, local_dir=tmp_path) as run:
        run.end(output={"decision": "fine-tune"})
        with pytest.raises(ValueError, match="level"):
            run.event("x", level="INFO")
        with pytest.raises(TypeError, match="metadata must be a dict"):
            run.event("x", metadata=["a"])
    with pytest.raises(ValueError, match="status"):
        run.end(status="failed")
    assert read_trace(run)["output"] == {"decision": "fine-tune"}


def test_local_child_run_shares_the_parent_trace_id(tmp_path, capsys):
    with (
        start_run_trace("pipeline", "pipeline", input={}, local_dir=tmp_path) as parent,
        start_run_trace("eval toolcall slm", "eval", input={"rows": 2}, parent=parent) as child,
    ):
        child.event("done")
    child_trace, parent_trace = read_trace(child), read_trace(parent)
    assert child.backend == "local-file" and child.trace_id == parent.trace_id
    assert Path(child.location).parent == tmp_path  # the parent's folder
    assert (child_trace["trace_id"], child_trace["parent_trace_id"], child_trace["parent_run_id"]) == (
        parent.trace_id,
        parent.trace_id,
        parent.run_id,
    )
    assert parent_trace["children"] == [
        {"name": "eval toolcall slm", "kind": "eval", "run_id": child.run_id, "file": child.location}
    ]
    assert len(capsys.readouterr().err.splitlines()) == 1  # the parent's line only


@pytest.mark.parametrize(
    ("require", "env_value", "public_key"),
    [(True, None, None), (None, "1", None), (None, "1", "pk-lf-1")],
)
def test_required_langfuse_without_keys_fails_before_any_work(tmp_path, monkeypatch, require, env_value, public_key):
    if env_value:
        monkeypatch.setenv("SLM_SWAP_REQUIRE_LANGFUSE", env_value)
    if public_key:
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", public_key)
    with pytest.raises(LangfuseRequiredError) as error:
        start_run_trace("eval", "eval", input={}, require_langfuse=require, local_dir=tmp_path)
    assert "LANGFUSE_SECRET_KEY" in str(error.value)
    assert ("LANGFUSE_PUBLIC_KEY" in str(error.value)) == (public_key is None)
    assert not list(tmp_path.iterdir())


def test_require_langfuse_false_overrides_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_SWAP_REQUIRE_LANGFUSE", "1")
    run = start_run_trace("eval", "eval", input={}, require_langfuse=False, local_dir=tmp_path)
    run.end()
    assert run.backend == "local-file"


# --- Langfuse backend: the real SDK against a recording server --------------------------------------


def test_langfuse_trace_as_sent_by_the_sdk(langfuse_server, capsys):
    with start_run_trace(
        "eval toolcall slm",
        "eval",
        input={"split": Path("test.jsonl"), "note": f"called with {AZURE_KEY}"},
        metadata={"track": "toolcall", "api_key": "sk-123"},
    ) as run:
        with run.span("generate", input={"rows_todo": 3}) as span:
            with span.span("batch 0"):
                pass
            span.update(output={"rows_done": 3}, metadata={"actors": 2})
        run.event("fine_tune_decision", output={"fine_tune": True}, metadata={"track": "toolcall"})
        run.end(output={"metrics": {"valid_call_rate": 0.5}})

    assert run.backend == "langfuse"
    assert run.location == f"{langfuse_server.url}/trace/{run.trace_id}"
    assert capsys.readouterr().err == ""
    spans = exported_spans(langfuse_server)  # end() flushed: everything has arrived
    assert set(spans) == {"eval toolcall slm", "generate", "batch 0", "fine_tune_decision"}
    assert {span["trace_id"] for span in spans.values()} == {run.trace_id}
    root, generate, batch = spans["eval toolcall slm"], spans["generate"], spans["batch 0"]
    decision = spans["fine_tune_decision"]
    assert root["parent_span_id"] == ""
    assert generate["parent_span_id"] == decision["parent_span_id"] == root["span_id"]
    assert batch["parent_span_id"] == generate["span_id"]

    attributes = root["attributes"]
    assert attributes["langfuse.trace.name"] == "eval toolcall slm"
    assert attributes["langfuse.trace.tags"] == ["eval"]
    assert json.loads(attributes["langfuse.trace.metadata.kind"]) == "eval"
    assert json.loads(attributes["langfuse.trace.metadata.run_id"]) == run.run_id
    assert attributes["langfuse.observation.type"] == "span"
    assert json.loads(attributes["langfuse.observation.input"]) == {
        "split": "test.jsonl",
        "note": f"called with {REDACTED}",
    }
    assert json.loads(attributes["langfuse.observation.output"]) == {"metrics": {"valid_call_rate": 0.5}}
    assert json.loads(attributes["langfuse.observation.metadata.track"]) == "toolcall"
    assert json.loads(attributes["langfuse.observation.metadata.api_key"]) == REDACTED
    assert json.loads(attributes["langfuse.observation.metadata.status"]) == "ok"

    assert json.loads(generate["attributes"]["langfuse.observation.input"]) == {"rows_todo": 3}
    assert json.loads(generate["attributes"]["langfuse.observation.output"]) == {"rows_done": 3}
    assert json.loads(generate["attributes"]["langfuse.observation.metadata.actors"]) == 2
    assert generate["attributes"]["langfuse.trace.name"] == "eval toolcall slm"  # propagated to children
    assert decision["attributes"]["langfuse.observation.type"] == "event"
    assert decision["attributes"]["langfuse.observation.level"] == "DEFAULT"
    assert json.loads(decision["attributes"]["langfuse.observation.output"]) == {"fine_tune": True}

    public_key, secret_key = os.environ["LANGFUSE_PUBLIC_KEY"], os.environ["LANGFUSE_SECRET_KEY"]
    expected_auth = "Basic " + base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
    assert {request.headers["authorization"] for request in langfuse_server.requests} == {expected_auth}
    for body in otlp_bodies(langfuse_server):
        for secret in (b"sk-123", AZURE_KEY.encode(), secret_key.encode()):
            assert secret not in body


def test_langfuse_error_run(langfuse_server):
    with (
        pytest.raises(ValueError, match="bad split"),
        start_run_trace("eval structured teacher", "eval", input={}) as run,
    ):
        raise ValueError("bad split")
    root = exported_spans(langfuse_server)["eval structured teacher"]
    assert root["trace_id"] == run.trace_id
    assert root["attributes"]["langfuse.observation.level"] == "ERROR"
    assert root["attributes"]["langfuse.observation.status_message"] == "ValueError: bad split"
    assert json.loads(root["attributes"]["langfuse.observation.metadata.status"]) == "error"
    assert root["status_code"] == 2  # OpenTelemetry STATUS_CODE_ERROR


def test_langfuse_child_run_is_a_child_in_the_parent_trace(langfuse_server, monkeypatch):
    monkeypatch.delenv("LANGFUSE_BASE_URL")
    monkeypatch.setenv("LANGFUSE_HOST", langfuse_server.url)  # the seed's name for the variable
    with (
        start_run_trace("pipeline", "pipeline", input={"tracks": ["toolcall"]}) as parent,
        start_run_trace("train toolcall", "train", input={"epochs": 1}, parent=parent) as child,
        child.span("fit"),
    ):
        pass
    assert child.backend == "langfuse" and child.trace_id == parent.trace_id
    spans = exported_spans(langfuse_server)
    assert {span["trace_id"] for span in spans.values()} == {parent.trace_id}
    assert spans["train toolcall"]["parent_span_id"] == spans["pipeline"]["span_id"]
    assert spans["fit"]["parent_span_id"] == spans["train toolcall"]["span_id"]
    assert child.location == f"{parent.location}?observation={spans['train toolcall']['span_id']}"
    child_attributes = spans["train toolcall"]["attributes"]
    assert child_attributes["langfuse.trace.name"] == "pipeline"  # the child does not rename the trace
    assert json.loads(child_attributes["langfuse.observation.metadata.run_id"]) == child.run_id
    assert json.loads(child_attributes["langfuse.observation.metadata.kind"]) == "train"


def test_a_read_only_client_with_the_same_key_does_not_swallow_the_trace(langfuse_server):
    # ray_app.data.langfuse_pull makes such a client; the SDK would hand its tracing-off state to every
    # later client with the same public key.
    from langfuse import Langfuse

    reader = Langfuse(base_url=langfuse_server.url, tracing_enabled=False)
    try:
        with start_run_trace("eval after pull", "eval", input={}) as run:
            pass
    finally:
        reader.shutdown()
    assert run.trace_id != "0" * 32
    assert exported_spans(langfuse_server)["eval after pull"]["trace_id"] == run.trace_id
