"""CodeAct trajectories as traces, the automatic filter and the dataset builder.

Trajectories are built by hand (one that passes, one that recovered from an error, one per failure
reason); the Langfuse path is the real SDK against a recording server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest

from ray_app.codeact.capture_wrapper import trajectory_capture
from ray_app.codeact.records import CodeactTask, Execution, Step, ToolCallRecord, ToolSpec, Trajectory, trajectory_id
from ray_app.codeact.trajectory_dataset import (
    MANIFEST_FILE,
    SplitFractions,
    build_trajectory_datasets,
    split_file,
    task_split,
)
from ray_app.codeact.trajectory_filter import REASONS, FilterSettings, filter_trajectories, filter_verdict
from ray_app.codeact.trajectory_trace import trajectory_from_trace, trajectory_observations, trajectory_trace_id
from ray_app.codeact.trajectory_trace_file import (
    NOT_A_TRAJECTORY,
    TrajectoryTraceFileError,
    read_trajectory_trace_file,
    trajectories_from_traces,
)
from ray_app.codeact.trajectory_writers import (
    FILTER_SCORE_NAME,
    LangfuseTrajectoryWriter,
    LocalTrajectoryTraceFile,
    filter_score_id,
    record_filter_score,
)
from ray_app.data.rows import read_split
from ray_app.data.trace_splits import read_trace_jsonl
from ray_app.models.fingerprint import file_sha256
from ray_app.paths import PROJECT_ROOT
from ray_app.prompts import format_tool_call, structured_prompt_from_instruction, toolcall_prompt
from tests.langfuse_capture import OTLP_PATH, exported_spans
from tests.recording_server import RecordingServer

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather of a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
PRICE = ToolSpec(
    name="shop.price",
    description="Price of an item in EUR.",
    parameters={"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]},
    results={'{"item":"pen"}': 2.5},
)


def weather_task(city: str, source: str = "generated:test") -> CodeactTask:
    gold = {"name": "get_weather", "arguments": {"city": city}}
    return CodeactTask(
        kind="toolcall", request=f"What is the weather in {city}?", tools=(WEATHER,), gold=gold, source=source
    )


PERSON_TASK = CodeactTask(
    kind="structured",
    request="Ada Lovelace, 36, mathematician.",
    tools=(),
    gold={"name": "Ada Lovelace", "age": 36},
    instruction="Return the person's name and age as JSON.",
    source="generated:structured",
)
PRICE_TASK = CodeactTask(
    kind="multistep", request="What do 4 pens cost?", tools=(PRICE,), gold=10.0, source="generated:multistep:0"
)


def step(code, observation="", *, error=None, calls=(), answer=None, violation=None, tokens=(100, 20)) -> Step:
    if code is None:
        return Step(f"Thought: hm. {observation}", "hm.", None, None, tokens[0], tokens[1], 0.25)
    execution = Execution(
        observation=observation,
        tool_calls=tuple(ToolCallRecord(name, arguments, call_error) for name, arguments, call_error in calls),
        has_final_answer=answer is not None,
        final_answer=answer,
        error=error,
        violation=violation,
        duration_s=0.013,
    )
    output = f"Thought: go.\n<code>\n{code}\n</code>"
    return Step(output, "go.", code, execution, tokens[0], tokens[1], 0.5)


def trajectory(task: CodeactTask, steps: list[Step], stop_reason: str, model: str = "teacher-x") -> Trajectory:
    """The chat the loop would record: system, task, then each turn and (unless it ended the run) its observation."""
    messages = [
        {"role": "system", "content": "Solve the task by writing Python."},
        {"role": "user", "content": task.request},
    ]
    for item in steps:
        messages.append({"role": "assistant", "content": item.model_output})
        if item.execution is None or not item.execution.has_final_answer:
            observation = item.execution.observation if item.execution else "Error: no code block found."
            messages.append({"role": "user", "content": f"Observation: {observation}", "observation": True})
    final = next((s.execution for s in reversed(steps) if s.execution and s.execution.has_final_answer), None)
    return Trajectory(
        trajectory_id=trajectory_id(task.task_id, model),
        task=task,
        model=model,
        engine="simulated",
        simulated=True,
        messages=tuple(messages),
        steps=tuple(steps),
        stop_reason=stop_reason,
        has_final_answer=final is not None,
        final_answer=final.final_answer if final else None,
        metadata={"planned_mistake": None, "engine": {"seed": 42}},
    )


def weather_call(city: str) -> tuple[str, dict, None]:
    return ("get_weather", {"city": city}, None)


def answered_weather(city: str, asked: str | None = None, tokens=(100, 20)) -> Trajectory:
    """One step that calls get_weather for `city` and returns its result (the task asks about `asked`)."""
    code = f'final_answer(get_weather(city="{city}"))'
    only_step = step(code, "", calls=[weather_call(city)], answer={"temp_c": 12}, tokens=tokens)
    return trajectory(weather_task(asked or city), [only_step], "final_answer")


PASSED = answered_weather("Oslo")
NAME_ERROR = "NameError: name 'person' is not defined"
ADA = {"name": "Ada Lovelace", "age": 36}
RECOVERED = trajectory(
    PERSON_TASK,
    [step("print(person)", NAME_ERROR, error=NAME_ERROR), step(f"final_answer({ADA!r})", "", answer=ADA)],
    "final_answer",
)
PEN_CALL = ("shop.price", {"item": "pen"}, None)
MULTISTEP_PASSED = trajectory(
    PRICE_TASK,
    [
        step('p = shop_price(item="pen")\nprint(p)', "2.5", calls=[PEN_CALL]),
        step("final_answer(4 * p)", "", answer=10.0),
    ],
    "final_answer",
)
FORBIDDEN_OS = step(
    "import os", "ImportError: os", error="ImportError: os is not allowed", violation="forbidden_import"
)
FAILURES = {
    "wrong_final_answer": trajectory(
        replace(PERSON_TASK, request="Ada, 36."), [step("final_answer({'name': 'Ada'})", "", answer={"name": "Ada"})],
        "final_answer",
    ),
    "wrong_call": answered_weather("Rome", asked="Lima"),
    "no_code": trajectory(weather_task("Nice"), [step(None), step(None)], "no_code"),
    "max_steps": trajectory(
        replace(PRICE_TASK, request="5 pens?", gold=12.5),
        [step('print(shop_price(item="pen"))', "2.5", calls=[PEN_CALL])] * 2,
        "max_steps",
    ),
    "sandbox_violation": trajectory(
        weather_task("Bern"), [FORBIDDEN_OS, *answered_weather("Bern").steps], "final_answer"
    ),
    "all_executions_errored": trajectory(
        weather_task("Kyiv"), [step("x(", "SyntaxError", error="SyntaxError: '(' was never closed")] * 3, "max_steps"
    ),
    "over_token_budget": answered_weather("Graz", tokens=(4000, 200)),
}  # fmt: skip
ALL = [PASSED, RECOVERED, MULTISTEP_PASSED, *FAILURES.values()]


# --- the trace shape --------------------------------------------------------------------------------


@pytest.mark.parametrize("original", ALL, ids=lambda t: t.task.kind + "-" + t.stop_reason)
def test_trace_record_round_trips_exactly(original):
    record = trajectory_observations(original)
    assert trajectory_from_trace(record) == original
    assert trajectory_from_trace(json.loads(json.dumps(record))) == original  # through a file
    # As a Langfuse pull returns it: no trace-level metadata, input/output as raw JSON text.
    pulled = {
        "id": record["id"],
        "name": None,
        "tags": [],
        "metadata": {},
        "observations": pulled_observations([original]),
    }
    assert trajectory_from_trace(pulled) == original
    assert trajectory_observations(original) == record  # deterministic


def test_trace_shape_of_a_recovered_trajectory():
    record = trajectory_observations(RECOVERED)
    assert record["id"] == trajectory_trace_id(RECOVERED.trajectory_id)
    from langfuse import Langfuse

    assert record["id"] == Langfuse.create_trace_id(seed=RECOVERED.trajectory_id)  # file and Langfuse agree
    assert record["name"] == "codeact-trajectory"
    assert record["metadata"] == {
        "trajectory_id": RECOVERED.trajectory_id, "task_id": PERSON_TASK.task_id, "track": "structured",
        "kind": "structured", "model": "teacher-x", "engine": "simulated", "simulated": True, "format_version": 1,
    }  # fmt: skip
    observations = record["observations"]
    assert [o["type"] for o in observations] == ["AGENT", "GENERATION", "TOOL", "GENERATION", "TOOL", "EVENT"]
    agent = observations[0]
    assert agent["parentObservationId"] is None
    assert {o["parentObservationId"] for o in observations[1:]} == {agent["id"]}
    assert agent["input"] == PERSON_TASK.to_json()
    assert agent["output"]["final_answer"] == {"name": "Ada Lovelace", "age": 36}
    first_generation, failing_tool, second_generation, passing_tool, event = observations[1:]
    assert first_generation["input"] == list(RECOVERED.messages[:2])  # what the first call was sent
    sent = [{"role": m["role"], "content": m["content"]} for m in RECOVERED.messages[:4]]
    assert second_generation["input"] == sent  # as the loop sends them: without the observation mark
    assert first_generation["usageDetails"] == {"input": 100, "output": 20, "total": 120}
    assert first_generation["model"] == "teacher-x"
    assert (failing_tool["level"], failing_tool["statusMessage"]) == (
        "ERROR",
        "NameError: name 'person' is not defined",
    )
    assert failing_tool["input"] == "print(person)"
    assert passing_tool["level"] == "DEFAULT"
    assert (event["name"], event["output"]) == ("final_answer", {"name": "Ada Lovelace", "age": 36})
    # Times: generation 500 ms, execution 13 ms, back to back from the base time.
    assert [o["startTime"][-13:] for o in observations[1:]] == [
        "00:00:00.000Z", "00:00:00.500Z", "00:00:00.513Z", "00:00:01.013Z", "00:00:01.026Z",
    ]  # fmt: skip
    assert agent["endTime"].endswith("00:00:01.026Z")


def test_broken_traces_name_what_is_missing():
    record = trajectory_observations(PASSED)
    del record["observations"][0]["output"]["messages"]
    with pytest.raises(ValueError, match=rf"trace '{record['id']}': AGENT output has no 'messages'"):
        trajectory_from_trace(record)
    record = trajectory_observations(PASSED)
    record["observations"][0]["input"]["gold"] = {"name": "get_weather", "arguments": {"city": "Rome"}}
    with pytest.raises(ValueError, match="AGENT input is task .* metadata says task"):
        trajectory_from_trace(record)
    record = trajectory_observations(PASSED)
    record["observations"] = [o for o in record["observations"] if o["type"] != "AGENT"]
    with pytest.raises(ValueError, match="expected exactly one AGENT observation"):
        trajectory_from_trace(record)


def test_local_file_is_read_by_data_traces_and_by_the_builder(tmp_path):
    path = tmp_path / "traces" / "traces.jsonl"
    file = LocalTrajectoryTraceFile(path)
    assert file.write([PASSED]) == [trajectory_trace_id(PASSED.trajectory_id)]
    file.write([RECOVERED, MULTISTEP_PASSED])
    traces = read_trace_jsonl(path)  # the reader `slm-swap data traces` uses
    assert [t["id"] for t in traces] == [
        trajectory_trace_id(t.trajectory_id) for t in (PASSED, RECOVERED, MULTISTEP_PASSED)
    ]
    read = read_trajectory_trace_file(path)
    assert [t.trajectory for t in read.traced] == [PASSED, RECOVERED, MULTISTEP_PASSED]
    assert [t.origin for t in read.traced] == [f"{path}:1", f"{path}:2", f"{path}:3"]


def test_secret_environment_values_never_reach_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_API_KEY", "azure-key-0123456789abcdef")
    leaky = replace(PASSED, messages=(*PASSED.messages, {"role": "user", "content": "key azure-key-0123456789abcdef"}))
    LocalTrajectoryTraceFile(tmp_path / "t.jsonl").write([leaky])
    text = (tmp_path / "t.jsonl").read_text()
    assert "azure-key-0123456789abcdef" not in text and "key [redacted]" in text


def test_capture_wrapper_gives_the_same_shape(tmp_path):
    path = tmp_path / "mine.jsonl"
    task = weather_task("Oslo")
    sent = [
        {"role": "system", "content": "Solve the task by writing Python."},
        {"role": "user", "content": task.request},
    ]
    with trajectory_capture(task, model="my-agent", writers=[LocalTrajectoryTraceFile(path)]) as capture:
        capture.model_call(sent, "Thought: go.\n<code>\nfinal_answer(get_weather(city='Oslo'))\n</code>",
                           usage={"input": 50, "output": 12}, latency_s=0.75, thought="go.")  # fmt: skip
        capture.execution(
            "final_answer(get_weather(city='Oslo'))",
            "",
            tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}],
        )
        capture.final_answer({"temp_c": 12})
    captured = capture.trajectory
    assert captured.stop_reason == "final_answer" and captured.prompt_tokens == 50
    assert [m["role"] for m in captured.messages] == ["system", "user", "assistant", "user"]
    assert captured.messages[-1]["observation"] is True
    assert read_trajectory_trace_file(path).traced[0].trajectory == captured
    assert filter_verdict(captured).reason == "passed"
    with (
        pytest.raises(RuntimeError, match="engine down"),
        trajectory_capture("Just a request", model="m", writers=[LocalTrajectoryTraceFile(path)]),
    ):
        raise RuntimeError("engine down")
    failed = read_trajectory_trace_file(path).traced[1].trajectory
    assert (failed.stop_reason, failed.metadata["error"]) == ("engine_error", "RuntimeError: engine down")


# --- the filter --------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", list(FAILURES))
def test_each_failure_gets_its_reason(reason):
    verdict = filter_verdict(FAILURES[reason])
    assert (verdict.accepted, verdict.reason) == (False, reason)
    assert verdict.detail


def test_passing_and_recovered_trajectories_are_kept():
    assert (filter_verdict(PASSED).accepted, filter_verdict(PASSED).recovered) == (True, False)
    recovered = filter_verdict(RECOVERED)
    assert (recovered.accepted, recovered.reason, recovered.recovered) == (True, "passed", True)
    assert filter_verdict(MULTISTEP_PASSED).reason == "passed"


def test_precedence_and_budget():
    # A violation beats a right answer and the budget; every execution errored beats the max-steps stop.
    violation = FAILURES["sandbox_violation"]
    expensive = replace(violation, steps=tuple(replace(s, prompt_tokens=9000) for s in violation.steps))
    assert filter_verdict(expensive).reason == "sandbox_violation"
    assert FAILURES["all_executions_errored"].stop_reason == "max_steps"
    assert filter_verdict(FAILURES["over_token_budget"], FilterSettings(token_budget=5000)).reason == "passed"
    assert filter_verdict(PASSED, FilterSettings(token_budget=100)).reason == "over_token_budget"


def test_filter_report_counts():
    report = filter_trajectories(ALL)
    facts = report.to_json()
    assert list(facts["counts"]) == list(REASONS)
    assert facts["counts"]["passed"] == 3 and facts["recovered"] == 1
    assert all(facts["counts"][reason] == 1 for reason in FAILURES)
    assert facts["per_kind"]["toolcall"] == {
        "all_executions_errored": 1, "no_code": 1, "over_token_budget": 1, "passed": 1, "sandbox_violation": 1,
        "wrong_call": 1,
    }  # fmt: skip
    assert report.accepted_ids == [PASSED.trajectory_id, RECOVERED.trajectory_id, MULTISTEP_PASSED.trajectory_id]


def test_replay_check_runs_the_code_again():
    sandbox = pytest.importorskip("ray_app.codeact.sandbox", reason="ray_app/codeact/sandbox.py is not there yet")
    from ray_app.codeact.trajectory_filter import replay_check

    with sandbox.SandboxSession(MULTISTEP_PASSED.task.tools, sandbox.SandboxLimits()) as session:
        executions = [session.run(s.code) for s in MULTISTEP_PASSED.steps]
    real = replace(
        MULTISTEP_PASSED,
        steps=tuple(replace(s, execution=e) for s, e in zip(MULTISTEP_PASSED.steps, executions, strict=True)),
    )
    assert replay_check(real)
    tampered = replace(
        real, steps=(replace(real.steps[0], execution=replace(executions[0], observation="3.0")), real.steps[1])
    )
    assert not replay_check(tampered)
    assert filter_verdict(tampered, FilterSettings(replay=True)).reason == "replay_mismatch"
    assert filter_verdict(real, FilterSettings(replay=True)).reason == "passed"


# --- the dataset builder -------------------------------------------------------------------------------


def many_trajectories() -> list[Trajectory]:
    cities = [f"City{i}" for i in range(40)]
    passing = [answered_weather(city) for city in cities]
    second_model = [
        replace(t, model="teacher-y", trajectory_id=trajectory_id(t.task.task_id, "teacher-y")) for t in passing[:5]
    ]
    seed = answered_weather("Bergen")
    seed = replace(seed, task=replace(seed.task, source="slm_swap/02_dataset/toolcall/test.jsonl:7"))
    # PASSED's task again, from a seed test row, acted by another model: the task goes to test.
    oslo_seed = replace(PASSED.task, source="slm_swap/02_dataset/toolcall/test.jsonl:9")
    oslo = replace(
        PASSED, task=oslo_seed, model="teacher-y", trajectory_id=trajectory_id(oslo_seed.task_id, "teacher-y")
    )
    return [*passing, *second_model, seed, oslo, PASSED, RECOVERED, MULTISTEP_PASSED, *FAILURES.values()]


def build(trajectories: list[Trajectory], out_dir: Path, tmp_path: Path):
    path = tmp_path / f"{out_dir.name}.traces.jsonl"
    LocalTrajectoryTraceFile(path).write(trajectories)
    read = read_trajectory_trace_file(path)
    report = filter_trajectories([t.trajectory for t in read.traced])
    return build_trajectory_datasets(
        read.traced, report, out_dir, source="traces.jsonl", skipped_while_reading=read.skipped
    )


def test_build_is_byte_identical_and_splits_by_task(tmp_path):
    trajectories = many_trajectories()
    first = build(trajectories, tmp_path / "a", tmp_path)
    shuffled = trajectories[:]
    random.Random(7).shuffle(shuffled)
    build(shuffled, tmp_path / "b", tmp_path)  # input order does not matter either
    written = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert written == sorted([*first.files, MANIFEST_FILE])
    for name in [*first.files, MANIFEST_FILE]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    tasks_per_split = {}
    for split in ("train", "val", "test"):
        rows = [json.loads(line) for line in (tmp_path / "a" / f"{split}.jsonl").read_text().splitlines()]
        tasks_per_split[split] = {row["task_id"] for row in rows}
    assert not (tasks_per_split["train"] & tasks_per_split["val"]) and not (
        tasks_per_split["train"] & tasks_per_split["test"]
    )
    assert not (tasks_per_split["val"] & tasks_per_split["test"])
    assert all(tasks_per_split.values())  # 45 tasks: every split has some
    assert weather_task("Bergen").task_id in tasks_per_split["test"]  # a seed test row stays a test row
    assert PASSED.task.task_id in tasks_per_split["test"]  # also when the same task came from elsewhere too
    assert task_split(PASSED.task) != "test"  # (where its hash alone would not put it)
    assert sum(first.counts["codeact"].values()) == 40 + 5 + 2 + 3  # two models on one task: both rows


def test_split_by_task_hash_ignores_the_other_rows():
    task = weather_task("Quito")
    assert task_split(task) == task_split(task, SplitFractions(0.8, 0.1, 0.1))
    assert task_split(task, SplitFractions(1.0, 0.0, 0.0)) == "train"
    assert task_split(task, SplitFractions(0.0, 0.0, 1.0)) == "test"
    counts = {"train": 0, "val": 0, "test": 0}
    for i in range(2000):
        counts[task_split(weather_task(f"Town{i}"))] += 1
    assert 1500 < counts["train"] < 1700 and 140 < counts["val"] < 260 and 140 < counts["test"] < 260
    with pytest.raises(ValueError, match="add up to 1"):
        SplitFractions(0.8, 0.3, 0.1)


def test_rows_manifest_and_seed_tracks(tmp_path):
    out = tmp_path / "out"
    manifest = build(many_trajectories(), out, tmp_path)
    facts = json.loads((out / MANIFEST_FILE).read_text())
    for name, entry in facts["files"].items():
        assert entry["sha256"] == file_sha256(out / name)
    for name, sources in facts["row_sources"].items():
        assert len(sources) == len((out / name).read_text().splitlines()) == facts["files"][name]["rows"]
    assert facts["skipped"]["rejected: wrong_call"] == 1 and facts["skipped"]["rejected: no_code"] == 1
    assert facts["skipped"]["structured: final answer is not a JSON object or array"] == 1  # the multistep 10.0
    assert facts["skipped"]["toolcall: duplicate prompt"] == 6  # the second model's rows
    assert facts["settings"]["filter"] == {"token_budget": 4096, "replay": False}
    assert manifest.trajectories == {"read": 57, "accepted": 50, "rejected": 7, "recovered": 1}

    # The codeact rows: messages with roles, observation turns marked, the source trace id.
    recovered_row = next(
        json.loads(line) for split in ("train", "val", "test")
        for line in (out / f"{split}.jsonl").read_text().splitlines()
        if json.loads(line)["trajectory_id"] == RECOVERED.trajectory_id
    )  # fmt: skip
    assert list(recovered_row) == [
        "trajectory_id",
        "task_id",
        "kind",
        "model",
        "source_trace_id",
        "recovered",
        "messages",
    ]
    assert recovered_row["source_trace_id"] == trajectory_trace_id(RECOVERED.trajectory_id)
    assert recovered_row["recovered"] is True
    assert [(m["role"], m.get("observation", False)) for m in recovered_row["messages"]] == [
        ("system", False), ("user", False), ("assistant", False), ("user", True), ("assistant", False),
    ]  # fmt: skip

    # The seed tracks: every file passes the project's validators; rows are built with its prompt builders.
    all_rows = {}
    for track in ("toolcall", "structured"):
        all_rows[track] = []
        for split in ("train", "val", "test"):
            path = out / split_file(track, split)
            if facts["files"][split_file(track, split)]["rows"]:
                all_rows[track] += read_split(path)  # raises on any bad row
    signature = {"name": "get_weather", "description": WEATHER.description, "parameters": WEATHER.parameters}
    oslo_prompt = toolcall_prompt([signature], "What is the weather in Oslo?")
    assert any(
        r.prompt == oslo_prompt and r.completion == format_tool_call("get_weather", {"city": "Oslo"})
        for r in all_rows["toolcall"]
    )
    person_prompt = structured_prompt_from_instruction(PERSON_TASK.instruction, PERSON_TASK.request)
    assert [(r.prompt, r.completion) for r in all_rows["structured"]] == [
        (person_prompt, '{"name": "Ada Lovelace", "age": 36}')
    ]


def test_broken_trace_lines_stop_before_anything_is_written(tmp_path):
    path = tmp_path / "traces.jsonl"
    LocalTrajectoryTraceFile(path).write([PASSED])
    no_messages = trajectory_observations(RECOVERED)
    del no_messages["observations"][0]["output"]["messages"]
    other_agent = {"id": "t9", "name": "weather-bot", "observations": []}
    with path.open("a") as handle:
        handle.write('{"id": "cut-off", "observ\n')
        handle.write(json.dumps(no_messages) + "\n")
        handle.write(json.dumps(other_agent) + "\n")
        handle.write("[1, 2]\n")
    with pytest.raises(TrajectoryTraceFileError) as error:
        read_trajectory_trace_file(path)
    lines = str(error.value).splitlines()
    assert lines[0].startswith(f"{path}:2: not valid JSON")
    assert lines[1].startswith(f"{path}:3: trace '{no_messages['id']}': AGENT output has no 'messages'")
    assert lines[2] == f"{path}:5: a trace must be a JSON object, got list"
    assert len(lines) == 3
    assert trajectories_from_traces([("x", other_agent)]).skipped == {NOT_A_TRAJECTORY: 1}

    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "ray_app", "data", "trajectories", "--traces", str(path), "--out", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert f"{path}:2:" in run.stderr.replace("\n", "") or f"{path.name}:2:" in run.stderr.replace("\n", "")
    assert not out.exists()


def test_cli_builds_from_a_trace_file(tmp_path):
    path = tmp_path / "traces.jsonl"
    LocalTrajectoryTraceFile(path).write([PASSED, RECOVERED, *FAILURES.values()])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ray_app", "data", "trajectories", "--traces", str(path), "--out", str(out)]
    run = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["trajectories"]["accepted"] == 2
    assert "wrong_call" in run.stderr


# --- Langfuse: the real SDK against a recording server ----------------------------------------------------


def test_langfuse_trace_and_filter_score_as_sent_by_the_sdk(langfuse_server, tmp_path, monkeypatch):
    from ray_app.codeact.trajectory_writers import trajectory_trace_writers

    local, writer = trajectory_trace_writers(tmp_path / "traces.jsonl")  # keys set: the file and Langfuse
    assert isinstance(local, LocalTrajectoryTraceFile) and isinstance(writer, LangfuseTrajectoryWriter)
    [trace_id] = writer.write([RECOVERED])
    verdict = filter_verdict(RECOVERED)
    record_filter_score(writer.client, trace_id, verdict)
    writer.flush()

    otlp = types.SimpleNamespace(requests=[r for r in langfuse_server.requests if r.path == OTLP_PATH])
    spans = exported_spans(otlp)
    assert set(spans) == {"codeact-agent", "model call 1", "execute 1", "model call 2", "execute 2", "final_answer"}
    assert trace_id == trajectory_trace_id(RECOVERED.trajectory_id)  # the same id as in a local file
    assert {span["trace_id"] for span in spans.values()} == {trace_id}
    agent = spans["codeact-agent"]
    types_of = {name: span["attributes"]["langfuse.observation.type"] for name, span in spans.items()}
    assert types_of == {
        "codeact-agent": "agent", "model call 1": "generation", "execute 1": "tool", "model call 2": "generation",
        "execute 2": "tool", "final_answer": "event",
    }  # fmt: skip
    assert agent["parent_span_id"] not in {span["span_id"] for span in spans.values()}  # the root of its trace
    assert {spans[name]["parent_span_id"] for name in spans if name != "codeact-agent"} == {agent["span_id"]}
    attributes = agent["attributes"]
    assert attributes["langfuse.trace.name"] == "codeact-trajectory"
    assert attributes["langfuse.trace.tags"] == ["codeact", "structured"]
    for key, value in trajectory_observations(RECOVERED)["metadata"].items():
        assert json.loads(attributes[f"langfuse.trace.metadata.{key}"]) == value, key
    assert json.loads(attributes["langfuse.observation.input"]) == PERSON_TASK.to_json()
    assert json.loads(attributes["langfuse.observation.output"])["final_answer"] == {"name": "Ada Lovelace", "age": 36}
    failing = spans["execute 1"]["attributes"]
    assert failing["langfuse.observation.level"] == "ERROR"
    assert failing["langfuse.observation.status_message"] == "NameError: name 'person' is not defined"
    assert failing["langfuse.observation.input"] == "print(person)"
    assert spans["execute 2"]["attributes"].get("langfuse.observation.level", "DEFAULT") == "DEFAULT"
    generation = spans["model call 1"]["attributes"]
    assert generation["langfuse.observation.model.name"] == "teacher-x"
    assert json.loads(generation["langfuse.observation.usage_details"]) == {"input": 100, "output": 20, "total": 120}
    assert json.loads(generation["langfuse.observation.input"]) == list(RECOVERED.messages[:2])

    score_requests = [r for r in langfuse_server.requests if r.path != OTLP_PATH]
    assert [(r.method, r.path) for r in score_requests] == [("POST", "/api/public/scores")]
    [body] = score_requests[0].json()
    assert body["id"] == filter_score_id(trace_id)  # scoring again replaces the score
    assert body["metadata"] == {"reason": "passed", "detail": "", "recovered": True}
    assert (body["traceId"], body["name"], body["value"], body["dataType"], body["comment"]) == (
        trace_id, FILTER_SCORE_NAME, 1.0, "BOOLEAN", "passed",
    )  # fmt: skip
    monkeypatch.delenv("LANGFUSE_SECRET_KEY")
    assert [type(w) for w in trajectory_trace_writers(tmp_path / "t.jsonl")] == [LocalTrajectoryTraceFile]


def pulled_observations(trajectories: list[Trajectory]) -> list[dict]:
    """What `GET /api/public/v2/observations` returns for these traces: input/output as raw strings."""
    observations = []
    for item in trajectories:
        record = trajectory_observations(item)
        for observation in record["observations"]:
            raw = {key: value if isinstance(value, str) or value is None else json.dumps(value)
                   for key, value in observation.items() if key in ("input", "output")}  # fmt: skip
            trace_fields = {"projectId": "p1", "traceName": record["name"], "tags": record["tags"]}
            observations.append({**observation, **raw, **trace_fields})
    return observations


def test_cli_pulls_from_langfuse_and_scores_every_verdict(tmp_path):
    pages = [pulled_observations([PASSED, RECOVERED]), pulled_observations([FAILURES["wrong_call"]])]
    other_agent = {
        "id": "o1",
        "traceId": "t9",
        "projectId": "p1",
        "type": "GENERATION",
        "startTime": "2026-01-01T00:00:00Z",
    }
    pages[1].append({**other_agent, "traceName": "weather-bot", "input": "[]"})

    def handler(request):
        if request.path == "/api/public/v2/observations":
            page = int(request.query.get("cursor", ["0"])[0])
            return 200, {"data": pages[page], "meta": {"cursor": str(page + 1)} if page + 1 < len(pages) else {}}, {}
        return 200, {}, {}

    out = tmp_path / "out"
    with RecordingServer(handler) as server:
        env = {**os.environ, "LANGFUSE_PUBLIC_KEY": "pk-lf-pull", "LANGFUSE_SECRET_KEY": "sk-lf-pull"}
        env["LANGFUSE_BASE_URL"] = server.url
        run = subprocess.run(
            [sys.executable, "-m", "ray_app", "data", "trajectories", "--from-langfuse", "--out", str(out)],
            cwd=PROJECT_ROOT, capture_output=True, text=True, env=env,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    gets = [r for r in server.requests if r.path == "/api/public/v2/observations"]
    assert len(gets) == 2
    assert {"tool_calls", "thought", "trajectory_metadata"} <= set(gets[0].query["expandMetadata"][0].split(","))
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["trajectories"] == {"read": 3, "accepted": 2, "rejected": 1, "recovered": 1}
    assert manifest["source"] == "langfuse"
    scores = [body for r in server.requests if r.path == "/api/public/scores" for body in r.json()]
    assert sorted((s["traceId"], s["value"], s["comment"]) for s in scores) == sorted(
        (trajectory_trace_id(t.trajectory_id), value, reason)
        for t, value, reason in (
            (PASSED, 1.0, "passed"),
            (RECOVERED, 1.0, "passed"),
            (FAILURES["wrong_call"], 0.0, "wrong_call"),
        )
    )
