"""Typed settings at the edge: every field of every config, from a config file and from flags.

For each field of PipelineConfig, EvalConfig, TrainConfig and ServeSettings (nested settings by dotted
key) a value of its declared type is accepted and parsed to that type, and a value of the wrong type
(or out of its bounds) is refused naming the file and line (or the flag), the key and the value.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import typer
import yaml
from typer.testing import CliRunner

from ray_app.eval.config import EvalConfig
from ray_app.paths import PROJECT_ROOT
from ray_app.pipeline import PipelineConfigError, build_config
from ray_app.pipeline.arguments import config_from_argv
from ray_app.pipeline.config import PipelineConfig
from ray_app.settings import (
    COMMAND_LINE,
    AtLeast,
    SettingsError,
    Source,
    build_settings,
    field_types,
    parse_settings,
    read_settings_file,
    unwrap,
)
from ray_app.train.config import TrainConfig


def serve_settings() -> type:
    from ray_app.serve.app import ServeSettings

    return ServeSettings


CONFIGS = {"PipelineConfig": PipelineConfig, "EvalConfig": EvalConfig, "TrainConfig": TrainConfig}


def flat_fields(cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, declared type) of every field, nested settings dataclasses included."""
    found = []
    for name, annotation in field_types(cls).items():
        base = unwrap(annotation)[0]
        if dataclasses.is_dataclass(base):
            found += flat_fields(base, f"{prefix}{name}.")
        else:
            found.append((prefix + name, annotation))
    return found


def arms(annotation: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    base, _ = unwrap(annotation)
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        rest = [arm for arm in typing.get_args(base) if arm is not type(None)]
        nullable = type(None) in typing.get_args(base)
        if len(rest) == 1:
            return rest[0], nullable
        return Literal[tuple(value for arm in rest for value in typing.get_args(arm))], nullable  # Track | "codeact"
    return annotation, False


def good_value(annotation: Any) -> tuple[Any, Any]:
    """(a raw value as a config file holds it, the typed value expected)."""
    inner, _ = arms(annotation)
    base, bounds = unwrap(inner)
    minimum = bounds[0].minimum if bounds else None
    if typing.get_origin(base) is Literal:
        choice = typing.get_args(base)[-1]
        return choice, choice
    if base is bool:
        return True, True
    if base is int:
        return (minimum or 0) + 3, (minimum or 0) + 3
    if base is float:
        return 0.5, 0.5
    if base is Path:
        return "some/folder", Path("some/folder")
    if typing.get_origin(base) is tuple:
        return ["one", "two"], ("one", "two")
    assert base is str, f"no sample for {annotation}"
    return "some-value", "some-value"


def wrong_values(annotation: Any, from_text: bool) -> list[Any]:
    """Raw values a file (or, with from_text, a flag) may hold that the field must refuse."""
    inner, _ = arms(annotation)
    base, bounds = unwrap(inner)
    below = [bounds[0].minimum - 1] if bounds else []
    if typing.get_origin(base) is Literal:
        return ["bogus"]
    if base is bool:
        return ["maybe"] if from_text else ["maybe", "false", 1]
    if base is int:
        return ["forty", "4.5", *map(str, below)] if from_text else ["forty", 4.5, True, *below]
    if base is float:
        return ["fast", "nan", *map(str, below)] if from_text else ["fast", True, *below]
    if base is Path:
        return [""] if from_text else [12, ""]
    if typing.get_origin(base) is tuple:
        return [] if from_text else ["one", [1]]
    return [] if from_text else [12, ["a", "list"]]


def nested(key: str, value: Any) -> dict[str, Any]:
    head, _, rest = key.partition(".")
    return {head: nested(rest, value) if rest else value}


def cases(from_text: bool) -> list:
    found = []
    for name, cls in [*CONFIGS.items(), ("ServeSettings", None)]:
        fields = flat_fields(cls) if cls is not None else flat_fields(serve_settings())
        found += [pytest.param(name, key, annotation, id=f"{name}.{key}") for key, annotation in fields]
    return found


def config_class(name: str) -> type:
    return CONFIGS.get(name) or serve_settings()


def typed(values: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        values = values[part] if isinstance(values, dict) else getattr(values, part)
    return values


@pytest.mark.parametrize(("config", "key", "annotation"), cases(from_text=False))
def test_every_field_from_a_config_file(config, key, annotation, tmp_path):
    cls = config_class(config)
    path = tmp_path / "settings.yaml"
    raw, expected = good_value(annotation)
    path.write_text(f"# {config}\n" + yaml.safe_dump(nested(key, raw)), encoding="utf-8")
    values, source = read_settings_file(path)
    assert typed(parse_settings(cls, values, source), key) == expected
    if arms(annotation)[1]:  # X | None: null is a value
        path.write_text(yaml.safe_dump(nested(key, None)), encoding="utf-8")
        assert typed(parse_settings(cls, *read_settings_file(path)), key) is None
    for wrong in wrong_values(annotation, from_text=False):
        path.write_text(f"# {config}\n" + yaml.safe_dump(nested(key, wrong)), encoding="utf-8")
        line = 2 + key.count(".")  # the comment, then one line per level of nesting
        with pytest.raises(SettingsError) as refused:
            parse_settings(cls, *read_settings_file(path))
        message = str(refused.value)
        shown = repr(wrong) if isinstance(wrong, str) else json.dumps(wrong)
        assert message.startswith(f"{path}:{line}: {key}: expected "), message
        assert message.split(", got ")[1].startswith(shown), message


@pytest.mark.parametrize(("config", "key", "annotation"), cases(from_text=True))
def test_every_field_from_command_line_text(config, key, annotation):
    cls = config_class(config)
    raw, expected = good_value(annotation)
    text = str(raw).lower() if isinstance(raw, bool) else ",".join(raw) if isinstance(raw, list) else str(raw)
    assert typed(parse_settings(cls, nested(key, text), COMMAND_LINE), key) == expected
    for wrong in wrong_values(annotation, from_text=True):
        with pytest.raises(SettingsError, match=rf"^command line: --{key.replace('_', '-')}: expected .*, got '"):
            parse_settings(cls, nested(key, wrong), COMMAND_LINE)


@pytest.mark.parametrize(("key", "annotation"), [pytest.param(k, a, id=k) for k, a in flat_fields(PipelineConfig)])
def test_every_pipeline_flag_and_config_file_key_through_the_main_jobs_parser(key, annotation, tmp_path, capsys):
    flag = "--" + key.replace("_", "-")
    raw, expected = good_value(annotation)
    argv = [flag] if raw is True else [flag, str(raw)]
    assert getattr(config_from_argv(argv), key) == expected
    settings = tmp_path / "pipeline.yaml"
    settings.write_text(yaml.safe_dump({key: raw}), encoding="utf-8")
    assert getattr(build_config(settings, {}), key) == expected
    for wrong in wrong_values(annotation, from_text=True):
        with pytest.raises(SystemExit) as stopped:
            config_from_argv([flag, wrong])
        assert stopped.value.code == 2
        assert flag in capsys.readouterr().err
    for wrong in wrong_values(annotation, from_text=False):
        settings.write_text(yaml.safe_dump({key: wrong}), encoding="utf-8")
        with pytest.raises(PipelineConfigError, match=rf"^{settings}:1: {key}: expected "):
            build_config(settings, {})


def test_the_issues_examples_are_refused_with_file_line_key_and_type(tmp_path):
    settings = tmp_path / "pipeline.yaml"
    for body, message in [
        ('seed: 1\nmax_train_rows: "forty"\n', ":2: max_train_rows: expected an integer ≥ 1 or null, got 'forty'"),
        ("profile: bogus\n", ":1: profile: expected one of 'auto', 'demo', 'full', got 'bogus'"),
        ("seed: 4.5\n", ":1: seed: expected an integer ≥ 0, got 4.5"),
        ("train_batch_size: -3\n", ":1: train_batch_size: expected an integer ≥ 1 or null, got -3"),
        ('train: "false"\n', ":1: train: expected true or false, got 'false' (text in this file: write false without"),
    ]:
        settings.write_text(body, encoding="utf-8")
        with pytest.raises(PipelineConfigError) as refused:
            build_config(settings, {})
        assert str(refused.value).startswith(f"{settings}{message}")


def test_train_cpu_bf16_false_is_false_and_a_bad_bool_is_refused(capsys):
    assert config_from_argv(["--train-cpu-bf16", "false"]).train_cpu_bf16 is False
    assert config_from_argv(["--train-cpu-bf16", "true"]).train_cpu_bf16 is True
    assert config_from_argv(["--train-cpu-bf16"]).train_cpu_bf16 is True
    assert config_from_argv(["--no-train-cpu-bf16"]).train_cpu_bf16 is False
    assert config_from_argv([]).train_cpu_bf16 is None  # not given: the machine decides
    assert config_from_argv(["--train", "false"]).train is False
    for argv, message in [
        (["--train-cpu-bf16", "maybe"], "command line: --train-cpu-bf16: expected true or false, got 'maybe'"),
        (["--no-train-cpu-bf16", "false"], "--no-train-cpu-bf16 takes no value"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            config_from_argv(argv)
        assert stopped.value.code == 2
        assert message in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("pipeline.yaml", "seed: 1\ntrain: [true,\nprofile: demo\n", ":4: not valid YAML: "),
        ("pipeline.yaml", "seed: 1\n  train: false\n", ":2: not valid YAML: mapping values are not allowed here"),
        ("pipeline.json", '{"seed": 1,\n "train" false}\n', ":2: not valid JSON: Expecting ':' delimiter"),
        ("pipeline.yaml", "- seed\n- 1\n", ": the config must be a mapping"),
    ],
)
def test_a_malformed_config_file_names_file_and_line(name, text, where, tmp_path):
    settings = tmp_path / name
    settings.write_text(text, encoding="utf-8")
    with pytest.raises(PipelineConfigError) as refused:
        build_config(settings, {})
    assert str(refused.value).startswith(f"{settings}{where}")


def test_a_config_file_that_is_not_utf8_names_the_line(tmp_path):
    settings = tmp_path / "pipeline.yaml"
    settings.write_bytes(b"seed: 1\nagent_id: caf\xe9\n")
    with pytest.raises(PipelineConfigError, match=rf"^{settings}:2: not UTF-8 text \(byte 0xe9 at column 14\)"):
        build_config(settings, {})


def test_unknown_and_nested_keys_name_their_line(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("track: toolcall\nslm:\n  batch_size: 4\n  batchsize: 4\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=rf"^{path}:4: unknown setting\(s\) slm.batchsize of SlmEvalSettings"):
        parse_settings(EvalConfig, *read_settings_file(path))
    path.write_text("track: codeact\nloss_on: all\nlora:\n  r: 0\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=rf"^{path}:4: lora.r: expected an integer ≥ 1, got 0"):
        parse_settings(TrainConfig, *read_settings_file(path))
    path.write_text("track: toolcall\nloss_on: all\n", encoding="utf-8")  # TrainConfig's own check, as a setting error
    values, source = read_settings_file(path)
    with pytest.raises(SettingsError, match="loss_on='all' applies to the codeact track only"):
        build_settings(TrainConfig, parse_settings(TrainConfig, values, source), source)


def test_yaml_reads_2e_minus_4_as_text_and_the_message_says_so(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("learning_rate: 2e-4\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"YAML reads 2e-4 without a dot as a string; write 0.0002"):
        parse_settings(TrainConfig, *read_settings_file(path))
    path.write_text("learning_rate: 2.0e-4\n", encoding="utf-8")
    assert parse_settings(TrainConfig, *read_settings_file(path)) == {"learning_rate": 2e-4}


def test_serve_config_yaml_is_checked_against_serve_settings():
    serve_settings_class = serve_settings()
    path = PROJECT_ROOT / "slm_swap" / "serve_config.yaml"
    values, source = read_settings_file(path)
    [application] = values["applications"]
    typed_args = parse_settings(serve_settings_class, application["args"], source, "applications.0.args.")
    settings = build_settings(serve_settings_class, typed_args, source)
    assert (settings.max_batch_size, settings.precision, settings.port) == (8, "auto", 8000)


def test_a_wrong_type_in_serve_config_yaml_names_its_line(tmp_path):
    serve_settings_class = serve_settings()
    text = (PROJECT_ROOT / "slm_swap" / "serve_config.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    [number] = [i for i, line in enumerate(lines) if line.strip().startswith("max_batch_size:")]
    lines[number] = lines[number].replace("max_batch_size: 8", 'max_batch_size: "eight"')
    path = tmp_path / "serve_config.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    values, source = read_settings_file(path)
    with pytest.raises(SettingsError) as refused:
        parse_settings(serve_settings_class, values["applications"][0]["args"], source, "applications.0.args.")
    assert str(refused.value) == (
        f"{path}:{number + 1}: applications.0.args.max_batch_size: expected an integer ≥ 1, got 'eight'"
    )


# `slm-swap eval` and `slm-swap train` options → the dataclass field they set (one source of defaults).
CLI_FIELDS = {
    "eval": {
        "precision": ("slm", "precision"),
        "batch_size": ("slm", "batch_size"),
        "rows_per_task": ("slm", "rows_per_task"),
        "max_new_tokens": ("slm", "max_new_tokens"),
        "actors": ("slm", "num_actors"),
        "teacher_mode": ("teacher", "mode"),
        "replay_traces": ("teacher", "replay_traces"),
        "agent_id": ("teacher", "replay_agent_id"),
        "toolcall_mode": ("teacher", "toolcall_mode"),
        "concurrency": ("teacher", "concurrency"),
    },
    "train": {
        "workers": ("", "num_workers"),
        "gpus_per_worker": ("", "gpus_per_worker"),
        "cpus_per_worker": ("", "cpus_per_worker"),
        "backend": ("", "backend"),
        "quantization": ("", "quantization"),
        "learning_rate": ("", "learning_rate"),
        "epochs": ("", "epochs"),
        "max_length": ("", "max_length"),
        "batch_size": ("", "per_device_batch_size"),
        "grad_accum": ("", "gradient_accumulation_steps"),
        "max_steps": ("", "max_steps"),
        "max_train_rows": ("", "max_train_rows"),
        "max_val_rows": ("", "max_val_rows"),
        "save_steps": ("", "save_steps"),
        "gradient_checkpointing": ("", "gradient_checkpointing"),
        "cpu_bf16": ("", "cpu_bf16"),
        "loss_on": ("", "loss_on"),
    },
}


def cli_field(command: str, option: str) -> tuple[type, str]:
    from ray_app.eval.config import SlmEvalSettings, TeacherEvalSettings

    group, name = CLI_FIELDS[command][option]
    return {"slm": SlmEvalSettings, "teacher": TeacherEvalSettings, "": TrainConfig}[group], name


def cli_command(command: str):
    from ray_app.cli import app

    return typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("command", "option"), [(command, option) for command, options in CLI_FIELDS.items() for option in options]
)
def test_slm_swap_options_take_the_dataclass_default_type_and_bound(command, option):
    cls, name = cli_field(command, option)
    field = next(item for item in dataclasses.fields(cls) if item.name == name)
    [parameter] = [p for p in cli_command(command).params if p.name == option]
    assert parameter.default == field.default
    flag = "--" + option.replace("_", "-")
    required = ["--track", "codeact" if name == "loss_on" else "structured"] + (
        ["--model", "slm"] * (command == "eval")
    )
    annotation = field_types(cls)[name]
    raw, expected = good_value(annotation)
    args = [flag] if raw is True else [flag, str(raw)]
    context = cli_command(command).make_context(command, [*required, *args])
    assert context.params[option] == expected
    if name in ("teacher_mode", "max_steps", "replay_traces"):
        return  # --teacher-mode also takes the codeact modes (checked in the command); any int or text is valid
    from ray_app.cli import app

    for wrong in wrong_values(annotation, from_text=True):  # refused while parsing, before the command runs
        result = CliRunner().invoke(app, [command, *required, flag, wrong], env={"COLUMNS": "200"})
        assert result.exit_code == 2, result.output
        assert flag in result.output or wrong in result.output


def test_a_bound_is_described_the_way_the_message_says():
    assert str(AtLeast(1)) == "≥ 1" and str(AtLeast(0, exclusive=True)) == "> 0"
    assert Source("f.yaml", lines={"a": 3}).where("a") == "f.yaml:3"
