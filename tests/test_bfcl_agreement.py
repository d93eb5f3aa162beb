"""Our lenient verdict against BFCL's own AST checker, on perturbed calls of hand-written gold calls.

Each gold call (tests/bfcl_gold_calls.py) is perturbed the ways a model gets a call slightly wrong or
differently right (case, spacing, punctuation, int/float, dropped and extra parameters, wrong tool,
list order, nested objects). Each (schema, gold, candidate) goes to the official checker
(`bfcl_eval.eval_checker.ast_eval.ast_checker`, the optional `bfcl` extra) as BFCL's own data would
state it: a function doc, and a possible answer with the gold's one value per parameter, "" beside it
where leaving the parameter out gives the same call (BFCL's mark for an optional parameter at its
default), and the default beside "" for an optional parameter the gold leaves out.
"""

from __future__ import annotations

import copy
import importlib
import itertools
import sys
import tomllib
import types
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from ray_app.metrics import score_toolcall_row
from ray_app.prompts import format_tool_call, toolcall_prompt
from tests.bfcl_gold_calls import GOLD_CALLS, call_variants

pytest.importorskip(
    "bfcl_eval",
    reason="BFCL's checker is an optional test dependency: pip install --no-deps bfcl-eval==2026.3.23 (make install)",
)
# ast_checker imports MODEL_CONFIG_MAPPING, and with it every model handler and their SDKs (anthropic,
# cohere, google-genai, ...), only to rename dotted tool names for some models; our names have no dots
# (asserted below), so the checker gets an empty mapping instead of those SDKs.
empty_model_config = types.ModuleType("bfcl_eval.constants.model_config")
empty_model_config.MODEL_CONFIG_MAPPING = {}
sys.modules.setdefault(empty_model_config.__name__, empty_model_config)
ast_checker = importlib.import_module("bfcl_eval.eval_checker.ast_eval.ast_checker").ast_checker
Language = importlib.import_module("bfcl_eval.constants.enums").Language

MIN_AGREEMENT = 0.99
BFCL_TYPES = {"number": "float", "object": "dict"}  # BFCL's Python type names for these JSON types


def bfcl_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema in BFCL's function-doc spelling ("float", "dict"), recursively."""
    converted = {**schema, "type": BFCL_TYPES.get(schema["type"], schema["type"])}
    if "properties" in schema:
        converted["properties"] = {key: bfcl_schema(value) for key, value in schema["properties"].items()}
    if "items" in schema:
        converted["items"] = bfcl_schema(schema["items"])
    return converted


def acceptable_values(
    schema: dict[str, Any], gold: dict[str, Any], every_optional: bool = False, nested: bool = False
) -> dict[str, list]:
    """BFCL's answer for one object: key -> acceptable values, "" where the key may be left out.

    `every_optional`: mark "" on every optional key, whatever the gold gave (BFCL's annotators do so
    when the request leaves the value open, which one gold call cannot tell). `nested`: the object is
    a parameter's value, whose own values BFCL's dict checker reads as they are.
    """
    required = schema.get("required", [])
    answer: dict[str, list] = {}
    for key, property_schema in schema["properties"].items():
        optional = key not in required
        if key in gold:
            answer[key] = [gold[key]] if nested else bfcl_values(property_schema, gold[key])
            if optional and (every_optional or gold[key] == property_schema.get("default", object())):
                answer[key].append("")
        elif optional and "default" in property_schema:
            answer[key] = ["", property_schema["default"]]
    return answer


def bfcl_values(schema: dict[str, Any], gold: Any) -> list:
    """The acceptable values of one parameter: the gold's; every ordering for a set-like array."""
    if schema["type"] == "object":  # BFCL's dict checker reads the first level as key -> values
        return [acceptable_values(schema, gold, nested=True)]
    if schema["type"] == "array" and schema["items"]["type"] == "object":
        return [[acceptable_values(schema["items"], item, nested=True) for item in gold]]
    if schema.get("uniqueItems"):
        return [list(order) for order in dict.fromkeys(itertools.permutations(gold))]
    return [gold]


def several_values(tool: dict[str, Any], gold: dict[str, Any]) -> bool:
    """Does BFCL's answer list more than one value for some parameter (a set-like array's orderings)?"""
    answer = acceptable_values(tool["parameters"], gold)
    return any(len([value for value in values if value != ""]) > 1 for values in answer.values())


def bfcl_accepts(tool: dict, gold: dict, name: str, arguments: dict, every_optional: bool = False) -> bool:
    doc = {"name": tool["name"], "description": tool["description"], "parameters": bfcl_schema(tool["parameters"])}
    answer = {tool["name"]: acceptable_values(tool["parameters"], gold, every_optional)}
    result = ast_checker(
        [doc], [{name: copy.deepcopy(arguments)}], [answer], Language.PYTHON, "simple_python", "slm-swap"
    )
    return result["valid"]


def our_verdict(tool: dict, gold: dict, name: str, arguments: dict) -> bool:
    """args_lenient of the toolcall metric, through the prompt and wrapper as in an evaluation."""
    prompt = toolcall_prompt([tool], "a request")
    return score_toolcall_row(
        format_tool_call(tool["name"], gold), format_tool_call(name, arguments), prompt
    ).args_lenient


def agreement(rows: list[tuple[str, bool, bool]]) -> tuple[float, list[tuple[str, bool, bool]]]:
    disagreements = [row for row in rows if row[1] != row[2]]
    return (1 - len(disagreements) / len(rows), disagreements)


def test_the_pinned_checker_is_the_one_installed() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["optional-dependencies"]["bfcl"] == [f"bfcl-eval=={metadata.version('bfcl-eval')}"]
    assert not any("." in tool["name"] for tool, _ in GOLD_CALLS)  # the checker's model mapping stays unused


def test_lenient_verdict_agrees_with_bfcls_ast_checker() -> None:
    one_value, several, every_optional = [], [], []
    for tool, gold in GOLD_CALLS:
        for label, name, arguments in call_variants(tool, gold):
            row_label = f"{tool['name']}: {label}: {arguments}"
            ours = our_verdict(tool, gold, name, arguments)
            official = bfcl_accepts(tool, gold, name, arguments)
            (several if several_values(tool, gold) else one_value).append((row_label, ours, official))
            if not several_values(tool, gold):
                every_optional.append((row_label, ours, bfcl_accepts(tool, gold, name, arguments, True)))
    for title, rows in [
        ("one acceptable value per parameter", one_value),
        ("several acceptable values (orderings of a set)", several),
        ('"" on every optional parameter (for information)', every_optional),
    ]:
        rate, disagreements = agreement(rows)
        accepted = sum(official for _, _, official in rows)
        print(f"\nBFCL agreement, {title}: n={len(rows)} agreed={len(rows) - len(disagreements)} rate={rate:.4f}")
        print(f"  BFCL accepts {accepted}, rejects {len(rows) - accepted}")
        for label, ours, official in disagreements:
            print(f"  ours={ours} bfcl={official}  {label}")
    rate, disagreements = agreement(one_value)
    assert len(one_value) >= 300 and rate >= MIN_AGREEMENT, disagreements
    assert agreement(several)[0] >= MIN_AGREEMENT, agreement(several)[1]
