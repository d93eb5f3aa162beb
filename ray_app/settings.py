"""Typed settings at the edge: a raw value from a config file or a flag → its dataclass field's declared type.

Every config (PipelineConfig, EvalConfig, TrainConfig, ServeSettings) is read through `parse_settings`:
each key is converted to its field's type — int, float, bool, str, Path, `X | None`, `Literal[...]`, a
nested settings dataclass — and checked against its bounds (`PositiveInt`, `AtLeast`), or refused with
one message naming where the value came from (`file:line`, or the flag), the key, the expected type
and the value given.

Two kinds of source: a config file (JSON or YAML) already carries types, so `seed: 4.5` or
`train: "false"` is an error rather than a guess; command-line text is converted (`"40"` → 40,
`"false"` → False).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from ray_app.text_files import TextFileError, read_utf8


@dataclass(frozen=True)
class AtLeast:
    """A bound on a number field: `Annotated[int, AtLeast(1)]`."""

    minimum: int | float
    exclusive: bool = False  # True: the value must be above the minimum

    def allows(self, value: int | float) -> bool:
        return value > self.minimum if self.exclusive else value >= self.minimum

    def __str__(self) -> str:
        return f"{'>' if self.exclusive else '≥'} {self.minimum}"


PositiveInt = Annotated[int, AtLeast(1)]
NonNegativeInt = Annotated[int, AtLeast(0)]
PositiveFloat = Annotated[float, AtLeast(0, exclusive=True)]
NonNegativeFloat = Annotated[float, AtLeast(0)]

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


class SettingsError(ValueError):
    """A setting has the wrong type or value; the message names the source, key, expected type and value."""


@dataclass(frozen=True)
class Source:
    """Where raw values come from: a config file (typed values, a line per key) or command-line text."""

    name: str  # the file path, or "command line"
    text: bool = False  # values are strings to convert (flags), not typed values (JSON/YAML)
    lines: dict[str, int] = field(default_factory=dict)  # dotted key → line in the file

    def where(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.name}:{line}" if line else self.name

    def shown(self, key: str) -> str:
        return "--" + key.replace("_", "-") if self.text else key


COMMAND_LINE = Source("command line", text=True)


def describe(annotation: Any, null: bool = True) -> str:
    """The expected type in words: `an integer ≥ 1`, `one of 'auto', 'demo'`, `true or false or null`.

    `null=False` leaves out "or null" (a flag cannot be null: not giving it keeps the default)."""
    base, bounds = unwrap(annotation)
    origin = typing.get_origin(base)
    if origin in (typing.Union, types.UnionType):
        arms = typing.get_args(base)
        values = choices(base)
        if values is not None:  # Track | Literal["codeact"]: one list of choices
            words = "one of " + ", ".join(repr(choice) for choice in values)
        else:
            words = " or ".join(describe(arm) for arm in arms if arm is not type(None))
        return words + (" or null" if null and type(None) in arms else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(base))
    if origin is tuple:
        [item] = [arg for arg in typing.get_args(base) if arg is not Ellipsis]
        return f"a list, each {describe(item)}"
    if dataclasses.is_dataclass(base):
        return f"a mapping of {base.__name__} settings"
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}
    text = words.get(base, getattr(base, "__name__", str(base)))
    return " ".join([text, *map(str, bounds)])


def unwrap(annotation: Any) -> tuple[Any, tuple[AtLeast, ...]]:
    if typing.get_origin(annotation) is Annotated:
        base, *extras = typing.get_args(annotation)
        return base, tuple(extra for extra in extras if isinstance(extra, AtLeast))
    return annotation, ()


class WrongValue(Exception):
    """Internal: the raw value does not fit the type."""


def convert(annotation: Any, raw: Any, text: bool) -> Any:
    """`raw` as `annotation`, or WrongValue. Text is converted only when `text` (a command line)."""
    base, bounds = unwrap(annotation)
    origin = typing.get_origin(base)
    if origin in (typing.Union, types.UnionType):
        arms = typing.get_args(base)
        if raw is None and type(None) in arms:
            return None
        for arm in arms:
            if arm is not type(None):
                try:
                    return convert(arm, raw, text)
                except WrongValue:
                    continue
        raise WrongValue()
    if origin is Literal:
        if isinstance(raw, str) and raw in typing.get_args(base):
            return raw
        raise WrongValue()
    if dataclasses.is_dataclass(base):
        if isinstance(raw, base):
            return raw
        raise WrongValue()  # nested mappings are handled by parse_settings, which knows the key path
    if origin is tuple:  # tuple[X, ...]: a list in a file, comma-separated on a command line
        [item] = [arg for arg in typing.get_args(base) if arg is not Ellipsis]
        items = raw.split(",") if text and isinstance(raw, str) else raw
        if not isinstance(items, list | tuple):
            raise WrongValue()
        return tuple(convert(item, value, text) for value in items)
    value = convert_scalar(base, raw, text)
    if not all(bound.allows(value) for bound in bounds):
        raise WrongValue()
    return value


def convert_scalar(base: Any, raw: Any, text: bool) -> Any:
    if base is bool:
        if isinstance(raw, bool):
            return raw
        if text and isinstance(raw, str) and raw.lower() in TRUE_WORDS + FALSE_WORDS:
            return raw.lower() in TRUE_WORDS
        raise WrongValue()
    if base is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if text and isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                raise WrongValue() from None
        raise WrongValue()
    if base is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
            return float(raw)
        if text and isinstance(raw, str):
            try:
                number = float(raw)
            except ValueError:
                raise WrongValue() from None
            if math.isfinite(number):
                return number
        raise WrongValue()
    if base is str:
        if isinstance(raw, str):
            return raw
        raise WrongValue()
    if base is Path:
        if isinstance(raw, str | Path) and str(raw):
            return Path(raw)
        raise WrongValue()
    raise TypeError(f"settings of type {base!r} are not supported by ray_app.settings")


def parse_value(annotation: Any, raw: Any, key: str, source: Source) -> Any:
    """One raw value as its declared type, or SettingsError: `where: key: expected …, got …`."""
    try:
        return convert(annotation, raw, source.text)
    except WrongValue:
        pass
    got = repr(raw) if isinstance(raw, str) else json.dumps(raw, default=str)
    expected = describe(annotation, null=not source.text)
    hint = quoted_hint(annotation, raw, source)
    raise SettingsError(f"{source.where(key)}: {source.shown(key)}: expected {expected}, got {got}{hint}")


def quoted_hint(annotation: Any, raw: Any, source: Source) -> str:
    """A file value that is text but reads as the expected type: say to unquote it (PyYAML also reads 2e-4 as text)."""
    if source.text or not isinstance(raw, str):
        return ""
    try:
        value = convert(annotation, raw, text=True)
    except WrongValue:
        return ""
    if isinstance(value, float) and "." not in raw:
        return f" (text in this file: YAML reads {raw} without a dot as a string; write {value!r})"
    return f" (text in this file: write {raw} without quotes)"


def field_types(cls: type) -> dict[str, Any]:
    """Each field's declared type, with its `Annotated` bounds kept."""
    return typing.get_type_hints(cls, include_extras=True)


def parse_settings(cls: type, values: dict[str, Any], source: Source, prefix: str = "") -> dict[str, Any]:
    """Raw values of `cls`'s fields → typed values (a nested dataclass from a nested mapping).

    Unknown keys are refused with the known ones; fields not given are left out (their defaults apply).
    """
    if not isinstance(values, dict):
        name = prefix.rstrip(".") or "the settings"
        raise SettingsError(f"{source.where(prefix.rstrip('.'))}: {name} must be a mapping of setting names to values")
    hints = field_types(cls)
    known = [item.name for item in dataclasses.fields(cls) if item.init]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingsError(
            f"{source.where(prefix + unknown[0])}: unknown setting(s) {', '.join(prefix + key for key in unknown)}"
            f" of {cls.__name__}; known: {', '.join(known)}"
        )
    typed = {}
    for key, raw in values.items():
        annotation = hints[key]
        nested = unwrap(annotation)[0]
        if dataclasses.is_dataclass(nested) and isinstance(raw, dict):
            typed[key] = build_settings(
                nested, parse_settings(nested, raw, source, f"{prefix}{key}."), source, prefix + key
            )
        else:
            typed[key] = parse_value(annotation, raw, prefix + key, source)
    return typed


def build_settings(cls: type, typed: dict[str, Any], source: Source, key: str = "") -> Any:
    """`cls(**typed)`, with a check of its own (`__post_init__`) or a missing field as a SettingsError."""
    try:
        return cls(**typed)
    except (TypeError, ValueError) as error:
        raise SettingsError(f"{source.where(key)}: {key or cls.__name__}: {error}") from None


def choices(annotation: Any) -> tuple[str, ...] | None:
    """The values of a `Literal` field (also inside `X | None`), for a flag's `choices`; None for other types."""
    base = unwrap(annotation)[0]
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        found = [choices(arm) for arm in typing.get_args(base) if arm is not type(None)]
        return tuple(value for arm in found if arm for value in arm) if all(found) else None
    return typing.get_args(base) if typing.get_origin(base) is Literal else None


def number_bound(cls: type, name: str) -> tuple[type, AtLeast] | None:
    """(int or float, its bound) of a bounded number field, also inside `X | None`; None for other fields.

    A command-line option built elsewhere (typer) enforces the same bound with it."""
    annotation = field_types(cls)[name]
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    for arm in typing.get_args(annotation) if is_union else (annotation,):
        number, bounds = unwrap(arm)
        if bounds:
            return number, bounds[0]
    return None


def read_settings_file(path: Path) -> tuple[dict[str, Any], Source]:
    """A JSON or YAML mapping and its Source (with each key's line), or SettingsError `file:line: reason`."""
    import yaml

    try:
        text = read_utf8(path)
    except TextFileError as error:
        raise SettingsError(str(error)) from None
    except OSError as error:
        raise SettingsError(f"{path}: cannot read the config file: {error.strerror or error}") from None
    is_yaml = path.suffix in (".yaml", ".yml")
    try:
        values = (yaml.safe_load(text) if is_yaml else json.loads(text)) if text.strip() else {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        reason = getattr(error, "problem", None) or str(error)
        context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
        if context and context_mark:
            reason += f" ({context} at line {context_mark.line + 1})"
        raise SettingsError(f"{where}: not valid YAML: {reason}") from None
    except json.JSONDecodeError as error:
        raise SettingsError(f"{path}:{error.lineno}: not valid JSON: {error.msg} (column {error.colno})") from None
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: the config must be a mapping of setting names to values")
    return values, Source(str(path), text=False, lines=key_lines(text))


def key_lines(text: str) -> dict[str, int]:
    """Dotted key (list items by index) → 1-based line, for YAML and JSON alike (JSON read as YAML); {} if unsure."""
    import yaml

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.SequenceNode):  # items as `applications.0.args`
            for index, item in enumerate(node.value):
                lines[prefix + str(index)] = item.start_mark.line + 1
                walk(item, f"{prefix}{index}.")
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = prefix + str(key_node.value)
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key + ".")

    walk(root, "")
    return lines
