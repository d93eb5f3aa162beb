"""The TypeScript client's message fixture: Python's exact bytes for every committed test row.

`mastra/test/fixtures/python_messages.jsonl` holds one line per row: the inputs the TypeScript
client takes (track, tool signature(s), user text) and `messages_json`, the compact JSON of the chat
messages Python builds from them. `npm test` in mastra/ rebuilds each row's messages in TypeScript
and compares bytes. This test rebuilds the fixture from the committed splits and asserts the
committed file is current, so a change to the Python prompt code cannot drift from the client
silently.

Rows: every test row of both tracks (toolcall inputs are parsed back from the prompt; structured
inputs are found in the xLAM source the split was built from, since the structured prompt keeps only
parameter names and types), then a few hand-written rows for what the splits lack (escapes,
non-ASCII text, float formats, schema shapes).

Regenerate after a prompt change: `.venv/bin/python -m tests.test_mastra_fixtures --write`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from ray_app.atomic_files import atomic_write_text
from ray_app.data.rows import read_split
from ray_app.data.xlam import DEFAULT_XLAM_PATH, read_xlam, xlam_tool_signature
from ray_app.json_text import compact_json
from ray_app.paths import PROJECT_ROOT
from ray_app.prompts import (
    chat_messages,
    parse_toolcall_prompt,
    structured_prompt,
    tool_calls_text,
    tool_signature,
    toolcall_prompt,
)

FIXTURE_DIR = PROJECT_ROOT / "mastra" / "test" / "fixtures"
FIXTURE_PATH = FIXTURE_DIR / "python_messages.jsonl"
ANSWER_FIXTURE_PATH = FIXTURE_DIR / "python_answers.jsonl"
DATASET_ROOT = PROJECT_ROOT / "slm_swap" / "02_dataset"
SPLIT = "test"
WRITE_COMMAND = ".venv/bin/python -m tests.test_mastra_fixtures --write"

_STOCK_TOOL = {
    "name": "stock.quote",
    "description": 'Latest quote — prix en €, 株価, emoji 📈; quotes " and backslash \\ and tab\t.',
    "parameters": {
        "type": "object",
        "properties": {
            "symbol": {"type": "string", "description": "Ticker, e.g. \u201cAAPL\u201d"},
            "exchanges": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "window": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "bounds": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}], "minItems": 2},
            "raw": {"type": "array", "items": {}},
            "mode": {"type": ["string", "null"], "default": None},
            "limit": {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}]},
            "callback": {"x-python-type": "Callable[[int], int]"},
            "empty_kind": {"type": "", "anyOf": [{"type": "boolean"}]},
            "ratio": {"type": "number", "default": 1.0},
            "tiny": {"type": "number", "default": 1e-05},
            "small": {"type": "number", "default": 0.0001},
            "huge": {"type": "number", "default": 1e16},
            "below_huge": {"type": "number", "default": 123456789012345.6},
            "negative_zero": {"type": "number", "default": -0.0},
            "big_int": {"type": "integer", "default": 9007199254740993},
            "limits": {"type": "object", "default": {"min": -2.5, "max": 2.5e-08, "steps": [1, 2.0, 3e300]}},
        },
        "required": ["symbol", "window"],
    },
}

# Inputs the committed splits do not cover; built by the same Python functions as the real rows.
EDGE_CASES: list[dict[str, Any]] = [
    {
        "id": "edge:toolcall-escapes-numbers-openai-form",
        "track": "toolcall",
        "tools": [
            {"type": "function", "function": _STOCK_TOOL},
            {"type": "function", "function": {"name": "no_parameters", "parameters": {}}},
            {"name": "null_description", "description": None, "parameters": None},
        ],
        "query": "Quote \u201cAAPL\u201d on NYSE\n\tthen {{query}} and {{tools}} stay literal \u2028 \u0001 \u007f ü",
    },
    {
        "id": "edge:structured-escapes-numbers-openai-form",
        "track": "structured",
        "tool": {"type": "function", "function": _STOCK_TOOL},
        "query": 'Résumé of 株価 with "quotes", a backslash \\ and {{tool_name}}\r\n',
    },
    {
        "id": "edge:structured-no-parameters",
        "track": "structured",
        "tool": {"name": "ping", "description": "", "parameters": {"type": "object", "properties": {}}},
        "query": "Ping the server.",
    },
]


def _call(name: Any, arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


# OpenAI tool_calls answers → the wrapper text the client returns (tool_calls_text), every branch.
ANSWER_CASES: list[dict[str, Any]] = [
    {"id": "one-call", "tool_names": ["web_pair_details"], "tool_calls": [
        _call("web_pair_details", '{"chain_slug":"polygon","pair_slug":"USDC-DAI","exchange_slug":"quickswap"}')]},
    {"id": "alias-mapped-back", "tool_names": ["crm.search", "crm_search"],
     "tool_calls": [_call("crm_search_2", '{"q": "ACME"}')]},
    {"id": "floats-ints-non-ascii", "tool_names": ["convert"], "tool_calls": [
        _call("convert", '{"amount":1.0,"rate":1e-05,"big":9007199254740993,"to":"€ 株","neg":-0.0}')]},
    {"id": "arguments-as-object", "tool_names": ["f"],
     "tool_calls": [_call("f", {"x": [1, 2.5, None, True], "y": {"z": "\u00e9\n"}})]},
    {"id": "bare-function-no-arguments", "tool_names": ["ping"], "tool_calls": [{"name": "ping"}]},
    {"id": "blank-arguments", "tool_names": ["ping"], "tool_calls": [_call("ping", "  ")]},
    {"id": "invalid-json-kept-raw", "tool_names": ["f"], "tool_calls": [_call("f", '{"x": 1,')]},
    {"id": "list-arguments-kept-raw", "tool_names": ["f"], "tool_calls": [_call("f", "[1, 2]")]},
    {"id": "null-arguments-kept-raw", "tool_names": ["f"], "tool_calls": [_call("f", None)]},
    {"id": "quote-in-name-kept-raw", "tool_names": [], "tool_calls": [_call('a"b', "{}")]},
    {"id": "missing-name", "tool_names": [], "tool_calls": [{"function": {"arguments": '{"a": 1}'}}, "not a call"]},
    {"id": "two-calls", "tool_names": ["a", "b"], "tool_calls": [_call("a", "{}"), _call("b", '{"k": "v"}')]},
]  # fmt: skip


class FixtureSourceError(ValueError):
    """A committed split row cannot be traced back to the inputs the client would get."""


def structured_inputs_by_prompt(xlam_path: Path = DEFAULT_XLAM_PATH) -> dict[str, tuple[dict[str, Any], str]]:
    """Structured prompt → (answered tool's signature, user text), built as `ray_app.data.xlam` builds rows."""
    inputs: dict[str, tuple[dict[str, Any], str]] = {}
    for record in read_xlam(xlam_path):
        if len(record["answers"]) != 1:
            continue
        by_name = {signature["name"]: signature for signature in map(xlam_tool_signature, record["tools"])}
        signature = by_name.get(record["answers"][0].get("name"))
        if signature is None:
            continue
        query = record["query"].strip()
        inputs.setdefault(structured_prompt(signature, query), (signature, query))
    return inputs


def fixture_record(case_id: str, track: str, inputs: dict[str, Any], prompt: str) -> dict[str, Any]:
    return {"id": case_id, "track": track, **inputs, "messages_json": compact_json(chat_messages(prompt))}


def split_records(track: str, split_path: Path, structured_inputs: dict) -> list[dict[str, Any]]:
    records = []
    for line_number, row in enumerate(read_split(split_path, track), start=1):
        where = f"{split_path}:{line_number}"
        if track == "toolcall":
            parsed = parse_toolcall_prompt(row.prompt)
            signatures, query = parsed.signatures, parsed.query
            rebuilt = toolcall_prompt(signatures, query)
            inputs = {"tools": signatures, "query": query}
        else:
            if row.prompt not in structured_inputs:
                raise FixtureSourceError(
                    f"{where}: prompt matches no single-answer row of {DEFAULT_XLAM_PATH}; "
                    "rebuild the splits with `make data`"
                )
            signature, query = structured_inputs[row.prompt]
            rebuilt = structured_prompt(signature, query)
            inputs = {"tool": signature, "query": query}
        if rebuilt != row.prompt:
            raise FixtureSourceError(f"{where}: the prompt builders no longer produce this row; run `make data`")
        records.append(fixture_record(where.removeprefix(f"{DATASET_ROOT}/"), track, inputs, row.prompt))
    return records


def edge_records() -> list[dict[str, Any]]:
    records = []
    for case in EDGE_CASES:
        if case["track"] == "toolcall":
            prompt = toolcall_prompt([tool_signature(tool) for tool in case["tools"]], case["query"])
            inputs = {"tools": case["tools"], "query": case["query"]}
        else:
            prompt = structured_prompt(tool_signature(case["tool"]), case["query"])
            inputs = {"tool": case["tool"], "query": case["query"]}
        records.append(fixture_record(case["id"], case["track"], inputs, prompt))
    return records


def fixture_text() -> str:
    """The fixture file's exact text: one JSON object per line, non-ASCII kept as UTF-8."""
    structured_inputs = structured_inputs_by_prompt()
    records = []
    for track in ("structured", "toolcall"):
        records += split_records(track, DATASET_ROOT / track / f"{SPLIT}.jsonl", structured_inputs)
    records += edge_records()
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def fixture_lines(text: str) -> list[str]:
    # Not str.splitlines(): that also splits on U+2028 and other characters the JSON keeps raw.
    return text.removesuffix("\n").split("\n")


def answer_fixture_text() -> str:
    records = [{**case, "text": tool_calls_text(case["tool_calls"], case["tool_names"])} for case in ANSWER_CASES]
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


FIXTURES = {FIXTURE_PATH: fixture_text, ANSWER_FIXTURE_PATH: answer_fixture_text}


@pytest.mark.parametrize("path", FIXTURES, ids=lambda path: path.name)
def test_committed_fixture_is_current(path):
    assert path.exists(), f"{path} is missing; run `{WRITE_COMMAND}`"
    committed = fixture_lines(path.read_text(encoding="utf-8"))
    fresh = fixture_lines(FIXTURES[path]())
    committed_lines = set(committed)
    stale = [json.loads(line)["id"] for line in fresh if line not in committed_lines]
    assert committed == fresh, (
        f"{path} is stale ({len(committed)} committed lines, {len(fresh)} fresh; "
        f"changed or new: {stale[:5]}); run `{WRITE_COMMAND}` and commit it"
    )


def test_fixture_holds_every_test_row_of_both_tracks_and_the_edge_cases():
    ids = [json.loads(line)["id"] for line in fixture_lines(FIXTURE_PATH.read_text(encoding="utf-8"))]
    for track in ("structured", "toolcall"):
        rows = len(read_split(DATASET_ROOT / track / f"{SPLIT}.jsonl", track))
        assert [i for i in ids if i.startswith(f"{track}/{SPLIT}.jsonl:")] == [
            f"{track}/{SPLIT}.jsonl:{n}" for n in range(1, rows + 1)
        ]
    assert ids[-len(EDGE_CASES) :] == [case["id"] for case in EDGE_CASES]


def test_a_structured_row_not_built_from_xlam_is_an_error_naming_its_line(tmp_path):
    split = tmp_path / "structured" / f"{SPLIT}.jsonl"
    split.parent.mkdir()
    split.write_text(json.dumps({"prompt": "Return anything.", "completion": "{}"}) + "\n", encoding="utf-8")
    with pytest.raises(FixtureSourceError, match=re.escape(f"{split}:1: prompt matches no single-answer row")):
        split_records("structured", split, structured_inputs_by_prompt())


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: {WRITE_COMMAND}")
    for path, text in FIXTURES.items():
        print(atomic_write_text(path, text()))
