"""`slm-swap eval --decoding constrained`: each row's constraint read from its prompt, its own label and run
key, the decision's FINE_TUNE untouched by the constrained labels, and the report showing them.

The tiny model has random weights: left free it never writes a tool call or a JSON value. The split here
is built from the project's own prompt builders over tools whose arguments are bounded (enums and
booleans), since a random model never ends a free string by itself; constrained, every answer must then
be a valid call (toolcall) or valid JSON (structured).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from ray_app.data.rows import Row
from ray_app.decide.decision_record import Decision
from ray_app.engines.constrained import ToolCallConstraint
from ray_app.engines.constrained.grammar import closed_schema
from ray_app.engines.decode.attention_kernel import compiler
from ray_app.eval.config import EvalConfig, EvalConfigError, SlmEvalSettings
from ray_app.eval.evaluate import run_eval, run_evals
from ray_app.eval.row_constraints import (
    RowConstraintError,
    instruction_schema,
    merged_signatures,
    row_constraint,
    schema_of_type_name,
    split_constraints,
)
from ray_app.prompts import (
    format_tool_call,
    parse_model_tool_call,
    structured_prompt,
    structured_prompt_from_instruction,
    toolcall_prompt,
)
from tests.sample_tools import WEATHER, WEATHER_WITH_UNITS
from tests.test_report import Workspace, decide, parse_tables, split_rows, workspace, write_evaluation  # noqa: F401

SET_LIGHT = {
    "name": "set_light",
    "description": "Switch a room's light.",
    "parameters": {
        "type": "object",
        "properties": {"room": {"type": "string", "enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}},
        "required": ["room", "on"],
    },
}
LOCK_DOOR = {
    "name": "lock_door",
    "description": "Lock a door.",
    "parameters": {
        "type": "object",
        "properties": {"door": {"type": "string", "enum": ["front", "back"]}},
        "required": ["door"],
    },
}
# the structured prompt shows only type names, so a bounded object for a random model is one of booleans
ALARM = {
    "name": "set_alarm",
    "description": "Arm the alarm.",
    "parameters": {
        "type": "object",
        "properties": {"armed": {"type": "boolean"}, "silent": {"type": "boolean"}},
        "required": ["armed"],
    },
}
ROWS = 6
FREE_IDENTITY_KEYS = {  # a free run's identity as it was before constrained decoding: its run key is unchanged
    "engine",
    "model_fingerprint",
    "adapter_fingerprint",
    "device",
    "precision",
    "max_new_tokens",
    "seed",
    "batch_size",
    "rows_per_task",
    "prefill_chunk_tokens",
} | ({"decode_attention"} if compiler() else set())  # with a C compiler the CPU decode attention is ours: in the key


@pytest.fixture(autouse=True)
def no_langfuse(monkeypatch):
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_HOST"):
        monkeypatch.delenv(name, raising=False)


def bounded_rows(track: str) -> list[Row]:
    if track == "toolcall":
        return [
            Row(toolcall_prompt([SET_LIGHT, LOCK_DOOR], f"Request {i}: lights and doors."),
                format_tool_call("set_light", {"room": "kitchen", "on": i % 2 == 0}))
            for i in range(ROWS)
        ]  # fmt: skip
    return [
        Row(structured_prompt(ALARM, f"Request {i}: arm it."), json.dumps({"armed": True, "silent": i % 2 == 0}))
        for i in range(ROWS)
    ]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bounded-splits")
    for track in ("toolcall", "structured"):
        (root / track).mkdir()
        lines = [json.dumps(row.to_json()) + "\n" for row in bounded_rows(track)]
        (root / track / "test.jsonl").write_text("".join(lines), encoding="utf-8")
    return root


DECODINGS = ("free", "constrained")


def slm_config(model_dir: Path, dataset_root: Path, eval_root: Path, track: str, decoding: str) -> EvalConfig:
    settings = SlmEvalSettings(
        model_path=str(model_dir), precision="fp32", batch_size=4, max_new_tokens=48, decoding=decoding
    )  # type: ignore[arg-type]
    return EvalConfig(track=track, model="slm", dataset_root=dataset_root, eval_root=eval_root, slm=settings)  # type: ignore[arg-type]


# ---- each row's constraint, from its prompt (pure) ----


def test_type_names_of_the_structured_prompt_read_back_as_json_schema():
    assert schema_of_type_name("integer") == {"type": "integer"}
    assert schema_of_type_name("array of array of integer") == {
        "type": "array",
        "items": {"type": "array", "items": {"type": "integer"}},
    }
    # "array of" binds loosest: an array whose items are either
    assert schema_of_type_name("array of integer or number") == {
        "type": "array",
        "items": {"anyOf": [{"type": "integer"}, {"type": "number"}]},
    }
    assert schema_of_type_name("string or null") == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert schema_of_type_name("any") == {} and schema_of_type_name("datetime") == {}


def test_a_structured_prompt_gives_the_schema_of_its_listed_parameters_and_a_trace_prompt_none():
    prompt = structured_prompt(WEATHER_WITH_UNITS, "Weather in Oslo for 3 days?")
    assert instruction_schema(prompt) == {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "units": {"type": "string"}},
        "required": ["city", "days"],  # units is listed as "string (optional)"
    }
    assert row_constraint("structured", prompt).schema == instruction_schema(prompt)
    from_trace = structured_prompt_from_instruction("Reply with the order as JSON.", "Two pizzas.")
    assert instruction_schema(from_trace) is None
    assert row_constraint("structured", from_trace).schema is None  # any JSON object


def test_a_toolcall_prompt_gives_the_required_wrapper_over_its_tools():
    constraint = row_constraint("toolcall", toolcall_prompt([SET_LIGHT, LOCK_DOOR], "Lock the front door."))
    assert isinstance(constraint, ToolCallConstraint) and constraint.forces_wrapper and constraint.choice == "required"
    assert [(tool.name, tool.parameters) for tool in constraint.tools] == [
        ("set_light", SET_LIGHT["parameters"]),
        ("lock_door", LOCK_DOOR["parameters"]),
    ]


def test_a_tool_listed_twice_is_one_name_whose_arguments_fit_either_signature():
    merged = merged_signatures([WEATHER, LOCK_DOOR, WEATHER_WITH_UNITS, WEATHER])
    assert merged == [
        {"name": "get_weather", "parameters": {"anyOf": [WEATHER["parameters"], WEATHER_WITH_UNITS["parameters"]]}},
        {"name": "lock_door", "parameters": LOCK_DOOR["parameters"]},
    ]


def test_a_row_whose_prompt_gives_no_constraint_stops_the_run_naming_its_line():
    rows = bounded_rows("toolcall")[:2] + [Row("Call a tool, any tool.", format_tool_call("lock_door", {}))]
    with pytest.raises(RowConstraintError, match=r"^toolcall/test.jsonl:3: no constraint for this row"):
        split_constraints("toolcall", rows, "toolcall/test.jsonl")


def test_labels_add_constrained_and_the_teacher_is_never_constrained(tmp_path):
    free, constrained = SlmEvalSettings(), SlmEvalSettings(decoding="constrained")
    adapter = SlmEvalSettings(adapter_path=tmp_path, decoding="constrained")
    assert EvalConfig(track="toolcall", model="slm", slm=free).model_label == "slm"
    assert EvalConfig(track="toolcall", model="slm", slm=constrained).model_label == "slm-constrained"
    assert EvalConfig(track="toolcall", model="slm", slm=adapter).model_label == "slm-adapter-constrained"
    with pytest.raises(EvalConfigError):
        EvalConfig(track="toolcall", model="teacher", slm=constrained)
    from ray_app.cli import app

    result = CliRunner().invoke(app, ["eval", "--track", "toolcall", "--model", "teacher", "--decoding", "constrained"])
    assert result.exit_code == 2 and "--decoding constrained evaluates the local SLM" in result.output


# ---- the tiny random model through Ray Data ----


def test_constrained_toolcall_answers_every_row_with_a_valid_call_where_free_answers_none(
    ray_session, tiny_model_dir, dataset_root, tmp_path
):
    free = run_eval(slm_config(tiny_model_dir, dataset_root, tmp_path, "toolcall", "free"))
    constrained = run_eval(slm_config(tiny_model_dir, dataset_root, tmp_path, "toolcall", "constrained"))
    assert free.metrics.metrics["valid_call_rate"] == 0.0
    assert constrained.metrics.metrics["valid_call_rate"] == 1.0
    tools = {tool["name"]: tool for tool in (SET_LIGHT, LOCK_DOOR)}
    for line in constrained.predictions_path.read_text().splitlines():
        call = parse_model_tool_call(json.loads(line)["prediction"])
        jsonschema.validate(call.arguments, closed_schema(tools[call.name]["parameters"]))
    # own label, own folder, own run key; the free run's identity is the one it had before
    assert (free.metrics.model_label, constrained.metrics.model_label) == ("slm", "slm-constrained")
    assert constrained.predictions_path == tmp_path / "toolcall" / "slm-constrained" / "predictions.jsonl"
    assert free.metrics.run_key != constrained.metrics.run_key
    # where this machine's probe chose oneDNN's linear kernels, both keys say so (`CpuLinearChoice.run_key_entry`)
    probed = {"cpu_linear"} if free.metrics.identity.get("cpu_linear") == "onednn" else set()
    assert set(free.metrics.identity) == FREE_IDENTITY_KEYS | probed and "constraint" not in free.metrics.engine
    assert set(constrained.metrics.identity) - FREE_IDENTITY_KEYS - probed == {"decoding", "constraint", "llguidance"}
    assert constrained.metrics.identity["decoding"] == "constrained"
    assert constrained.metrics.engine["constraint"].startswith("tool-call wrapper required")


def test_constrained_structured_answers_are_valid_json_for_the_instruction_and_byte_identical_twice(
    ray_session, tiny_model_dir, dataset_root, tmp_path
):
    free = run_eval(slm_config(tiny_model_dir, dataset_root, tmp_path / "one", "structured", "free"))
    first = run_eval(slm_config(tiny_model_dir, dataset_root, tmp_path / "one", "structured", "constrained"))
    second = run_eval(slm_config(tiny_model_dir, dataset_root, tmp_path / "two", "structured", "constrained"))
    assert free.metrics.metrics["json_valid_rate"] == 0.0
    assert first.metrics.metrics["json_valid_rate"] == 1.0
    assert first.predictions_path.read_bytes() == second.predictions_path.read_bytes()
    for line in first.predictions_path.read_text().splitlines():
        jsonschema.validate(json.loads(json.loads(line)["prediction"]), closed_schema(ALARM["parameters"]))
    again = run_eval(slm_config(tiny_model_dir, dataset_root, tmp_path / "one", "structured", "constrained"))
    assert again.reused and again.metrics.run_key == first.metrics.run_key  # the free run's folder is not its own


def test_free_and_constrained_in_one_pass_write_what_each_writes_alone_and_resume_per_decoding(
    ray_session, tiny_model_dir, dataset_root, tmp_path
):
    """The main job's pass: one actor pool answers each group free, then constrained; each configuration
    writes the same predictions under the same run key as when evaluated alone, and a rerun after the
    constrained outputs were lost answers only those (the free ones are reused)."""
    alone = [run_eval(slm_config(tiny_model_dir, dataset_root, tmp_path / "alone", "toolcall", d)) for d in DECODINGS]
    together = run_evals([slm_config(tiny_model_dir, dataset_root, tmp_path / "one-pass", "toolcall", d)
                          for d in DECODINGS])  # fmt: skip
    for one, other in zip(alone, together, strict=True):
        assert one.predictions_path.read_bytes() == other.predictions_path.read_bytes()
        assert one.metrics.run_key == other.metrics.run_key and not other.reused
    assert together[0].metrics.engine["evaluated_in_one_pass_with"] == ["slm-constrained"]
    assert together[1].metrics.engine["evaluated_in_one_pass_with"] == ["slm"]
    assert "evaluated_in_one_pass_with" not in alone[0].metrics.engine
    written = together[1].predictions_path.read_bytes()
    shutil.rmtree(together[1].predictions_path.parent)
    again = run_evals([slm_config(tiny_model_dir, dataset_root, tmp_path / "one-pass", "toolcall", d)
                       for d in DECODINGS])  # fmt: skip
    assert [outcome.reused for outcome in again] == [True, False]
    assert again[1].predictions_path.read_bytes() == written
    assert "evaluated_in_one_pass_with" not in again[1].metrics.engine  # answered alone this time


def test_both_tracks_and_their_adapters_in_one_pass_write_what_each_writes_alone(
    ray_session, tiny_model_dir, dataset_root, tmp_path
):
    """The main job's passes: both tracks, free and constrained, in one pass (the base), then each track
    with its own adapter in one pass (both adapters loaded beside the base by every actor); each
    configuration writes the same predictions under the same run key as when evaluated alone."""
    from tests.test_lora_forward import adapter

    adapters = {
        "structured": adapter(tiny_model_dir, tmp_path / "adapters" / "adapter_structured", alpha=8, seed=1),
        "toolcall": adapter(tiny_model_dir, tmp_path / "adapters" / "adapter_toolcall", alpha=12, seed=2),
    }

    def configs(eval_root: Path, with_adapters: bool) -> list[EvalConfig]:
        listed = []
        for track in ("structured", "toolcall"):
            for decoding in DECODINGS:
                config = slm_config(tiny_model_dir, dataset_root, eval_root, track, decoding)
                if with_adapters:
                    config = dataclasses.replace(
                        config, slm=dataclasses.replace(config.slm, adapter_path=adapters[track])
                    )
                listed.append(config)
        return listed

    for with_adapters in (False, True):
        alone = [run_eval(config) for config in configs(tmp_path / "alone", with_adapters)]
        together = run_evals(configs(tmp_path / "one-pass", with_adapters))
        for one, other in zip(alone, together, strict=True):
            assert one.predictions_path.read_bytes() == other.predictions_path.read_bytes()
            assert one.metrics.run_key == other.metrics.run_key and not other.reused
            assert one.metrics.engine["adapter_path"] == other.metrics.engine["adapter_path"]
        label = "slm-adapter" if with_adapters else "slm"
        assert together[0].metrics.engine["evaluated_in_one_pass_with"] == [
            f"{label}-constrained",
            f"toolcall/{label}",
            f"toolcall/{label}-constrained",
        ]
        if with_adapters:  # each track answered by its own adapter, not the other's or the base
            assert together[0].metrics.engine["adapter_path"] == str(adapters["structured"].resolve())
            base = run_eval(configs(tmp_path / "base", False)[2])
            assert base.predictions_path.read_bytes() != together[2].predictions_path.read_bytes()


def test_only_configurations_of_one_slm_on_one_split_are_evaluated_in_one_pass(tiny_model_dir, dataset_root, tmp_path):
    free = slm_config(tiny_model_dir, dataset_root, tmp_path, "toolcall", "free")
    constrained = slm_config(tiny_model_dir, dataset_root, tmp_path, "toolcall", "constrained")
    structured = slm_config(tiny_model_dir, dataset_root, tmp_path, "structured", "constrained")
    other_budget = dataclasses.replace(constrained, slm=dataclasses.replace(constrained.slm, max_new_tokens=8))
    teacher = EvalConfig(track="toolcall", model="teacher", dataset_root=dataset_root, eval_root=tmp_path)
    # two adapter folders an actor would load under one model name (`slm-toolcall`)
    clashing = [dataclasses.replace(config, slm=dataclasses.replace(config.slm, adapter_path=tmp_path / folder))
                for config, folder in ((free, "a/adapter_toolcall"), (structured, "b/toolcall"))]  # fmt: skip
    for configs in ([free, free], [free, other_budget], [teacher, free], [structured, other_budget], clashing):
        with pytest.raises(EvalConfigError, match="differ only in track, adapter and decoding"):
            run_evals(configs)


# ---- the decision and the report with constrained labels beside the others ----


def test_constrained_labels_never_change_fine_tune(workspace: Workspace):  # noqa: F811
    """structured: slm below the teacher (FINE_TUNE=1), an exact slm-constrained does not lift it to 0;
    toolcall: slm equal to the teacher (FINE_TUNE=0), an all-wrong slm-constrained does not push it to 1."""
    before = Decision.read(workspace.eval_root / "decision.json")
    golds = [row.completion for row in split_rows("structured")]
    write_evaluation(workspace.eval_root, workspace.dataset_root, "structured", "slm-constrained", golds)
    wrong_calls = [format_tool_call("get_weather", {"city": "nowhere", "days": 0})] * len(golds)
    write_evaluation(workspace.eval_root, workspace.dataset_root, "toolcall", "slm-constrained", wrong_calls)
    after = decide(workspace.eval_root, workspace.price_table)
    assert before.fine_tune == after.fine_tune == {"structured": 1, "toolcall": 0}
    for track in ("structured", "toolcall"):
        assert after.tracks[track].reason == before.tracks[track].reason
        assert after.tracks[track].teacher_vs_slm == before.tracks[track].teacher_vs_slm
        assert "slm-constrained" in after.tracks[track].adapted
    # the exact constrained SLM is not worse than the teacher (it hits row 9, where the teacher wrote prose)
    assert after.tracks["structured"].parity()["slm-constrained"].overall.verdict == "not worse"
    assert after.tracks["toolcall"].parity()["slm-constrained"].overall.verdict == "worse"


def test_the_report_shows_every_configuration_side_by_side_and_which_reaches_parity(workspace: Workspace):  # noqa: F811
    golds = [row.completion for row in split_rows("structured")]
    write_evaluation(workspace.eval_root, workspace.dataset_root, "structured", "slm-constrained", golds)
    two_wrong = golds[:8] + ['{"city": "x"}', '{"city": "y"}']
    write_evaluation(workspace.eval_root, workspace.dataset_root, "structured", "slm-adapter-constrained", two_wrong)
    decision = decide(workspace.eval_root, workspace.price_table)
    assert list(decision.tracks["structured"].adapted) == ["slm-constrained", "slm-adapter", "slm-adapter-constrained"]
    workspace.report()
    markdown = workspace.markdown()
    tables = parse_tables(markdown)
    from tests.test_report import check_table

    for table in tables:
        check_table(table, workspace)
    metrics = next(t for t in tables if t.section == "structured" and t.header[:2] == ["metric", "teacher"])
    assert metrics.header == ["metric", "teacher", "slm", "slm-constrained", "slm-adapter", "slm-adapter-constrained"]
    parity = next(t for t in tables if t.section == "structured" and t.header[:2] == ["candidate", "metric"])
    assert [row[0] for row in parity.rows if row[1] == "all core metrics"] == [
        "slm", "slm-constrained", "slm-adapter", "slm-adapter-constrained"
    ]  # fmt: skip
    # slm-constrained: exact everywhere; the teacher misses row 9: no row where only the teacher hits, so every
    # resample's delta is <= 0 < 0.02. toolcall: slm equals the teacher row for row (every delta 0).
    reaches = "reaches parity with the teacher (not worse by more than 2 points on every core metric)"
    assert f"- structured: `slm-constrained` {reaches}" in markdown and f"- toolcall: `slm` {reaches}" in markdown
    # the fine-tuned SLM column keeps to the adapter
    decision_table = next(t for t in tables if t.header[:2] == ["track", "test rows"])
    assert decision_table.rows[0][5].startswith("slm-adapter ") and "constrained" not in decision_table.rows[0][5]


def test_without_an_adapted_label_the_adapter_column_says_why(workspace: Workspace):  # noqa: F811
    shutil.rmtree(workspace.eval_root / "structured" / "slm-adapter")
    golds = [row.completion for row in split_rows("structured")]
    write_evaluation(workspace.eval_root, workspace.dataset_root, "structured", "slm-constrained", golds)
    decide(workspace.eval_root, workspace.price_table)
    workspace.report()
    tables = parse_tables(workspace.markdown())
    metrics = next(t for t in tables if t.section == "structured" and t.header[:2] == ["metric", "teacher"])
    assert metrics.header == ["metric", "teacher", "slm", "slm-constrained", "slm-adapter"]
    assert "`slm-adapter`: not evaluated: FINE_TUNE=1, run `slm-swap train --track structured`" in workspace.markdown()


def test_the_main_job_evaluates_constrained_configurations_unless_told_not_to(monkeypatch):
    from ray_app.pipeline.arguments import config_from_argv
    from ray_app.pipeline.run import decodings

    monkeypatch.delenv("SLM_MODEL_PATH", raising=False)
    assert decodings(config_from_argv([])) == ("free", "constrained")
    assert decodings(config_from_argv(["--no-constrained-eval"])) == ("free",)


def test_adapters_whose_merged_copies_do_not_fit_together_get_a_pass_each(tmp_path, monkeypatch):
    """Each adapter's run key says merged (one copy fits); when two copies would not, the pass is split
    per adapter, so no actor applies an adapter otherwise than its run key says."""
    from types import SimpleNamespace

    from ray_app.engines import adapter_weights
    from ray_app.engines.adapter_weights import AdapterWeightsChoice
    from ray_app.eval.evaluate import PendingEval, one_pass_groups

    def entry(track: str, adapter: Path | None, decoding: str) -> PendingEval:
        settings = SimpleNamespace(
            adapter_path=adapter, adapter_weights="merged" if adapter else "auto", precision="fp32",
            device="cpu", model_path=tmp_path,
        )  # fmt: skip
        config = SimpleNamespace(track=track, slm=SimpleNamespace(adapter_weights="auto", decoding=decoding))
        return PendingEval(config, [], {}, track + decoding, plan=SimpleNamespace(settings=settings))  # type: ignore[arg-type]

    first, second = tmp_path / "adapter_structured", tmp_path / "adapter_toolcall"
    pending = [entry(track, folder, d) for track, folder in (("structured", first), ("toolcall", second))
               for d in DECODINGS]  # fmt: skip
    fits = {1: True, 2: True}
    monkeypatch.setattr(
        adapter_weights,
        "resolve_adapter_weights",
        lambda requested, precision, device, size, count: AdapterWeightsChoice(fits[count], "test"),
    )
    assert one_pass_groups(pending) == [pending]
    fits[2] = False
    assert one_pass_groups(pending) == [pending[:2], pending[2:]]
    base_and_one = [entry("structured", None, "free"), pending[2]]  # one adapter: nothing to fit together
    assert one_pass_groups(base_and_one) == [base_and_one]
