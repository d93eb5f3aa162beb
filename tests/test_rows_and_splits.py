"""Row validation with file:line errors, xLAM conversion and deterministic splits."""

import json
from pathlib import Path

import pytest

from ray_app.data.rows import DatasetError, Row, read_split, row_problem
from ray_app.data.splits import Candidate, SplitSizes, assign_splits
from ray_app.data.validate import validate_paths
from ray_app.data.xlam import XlamFormatError, build_xlam_splits, xlam_tool_signature, xlam_type_schema
from ray_app.paths import DATASET_ROOT
from ray_app.prompts import parse_gold_tool_call, parse_toolcall_prompt


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("record", "track", "reason"),
    [
        ({"prompt": "p"}, "structured", "missing field(s) completion"),
        ({"prompt": "p", "completion": "{}", "id": 3}, "structured", "unexpected field(s) id"),
        ({"prompt": 1, "completion": "{}"}, "structured", "field 'prompt' must be a string"),
        ({"prompt": "p", "completion": "  "}, "structured", "field 'completion' is empty"),
        ({"prompt": "p", "completion": "```json\n{}\n```"}, "structured", "must be pure JSON"),
        ({"prompt": "p", "completion": "{}"}, "toolcall", "exactly one <tool_call"),
        ({"prompt": "p", "completion": '<tool_call name="f">[1]</tool_call>'}, "toolcall", "must be a JSON object"),
        (["prompt", "completion"], "structured", "must be a JSON object"),
    ],
)
def test_row_problem_names_the_field(record, track, reason):
    assert reason in row_problem(record, track)


def test_good_rows_pass():
    assert row_problem({"prompt": "p", "completion": ' {"a": [1, "é"]} '}, "structured") is None
    assert row_problem({"prompt": "p", "completion": '<tool_call name="a.b">{"x": 1}</tool_call>'}, "toolcall") is None


def test_read_split_reports_file_and_line(tmp_path):
    path = write_lines(
        tmp_path / "structured" / "test.jsonl",
        [
            json.dumps({"prompt": "a", "completion": "{}"}),
            "{not json",
            json.dumps({"prompt": "b", "completion": "prose"}),
            json.dumps({"prompt": "a", "completion": "[]"}),
        ],
    )
    with pytest.raises(DatasetError) as caught:
        read_split(path)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith(f"{path}:2: not valid JSON")
    assert lines[1].startswith(f"{path}:3: field 'completion' must be pure JSON")
    assert lines[2] == f"{path}:4: duplicate prompt (first seen at line 1)"


def test_read_split_needs_a_track_and_rows(tmp_path):
    with pytest.raises(DatasetError, match="cannot tell the track"):
        read_split(write_lines(tmp_path / "rows.jsonl", [json.dumps({"prompt": "a", "completion": "{}"})]))
    with pytest.raises(DatasetError, match="the split is empty"):
        read_split(write_lines(tmp_path / "toolcall" / "test.jsonl", []))


def test_validate_finds_prompts_shared_between_splits(tmp_path):
    row = json.dumps({"prompt": "same", "completion": "{}"})
    write_lines(tmp_path / "structured" / "train.jsonl", [row])
    write_lines(tmp_path / "structured" / "test.jsonl", [row])
    report = validate_paths([tmp_path])
    assert report.problems == [
        f"{tmp_path / 'structured' / 'train.jsonl'}:1: prompt also appears in test.jsonl (splits must be distinct)"
    ]


def test_xlam_types_become_json_schema():
    assert xlam_type_schema("List[int]") == {"type": "array", "items": {"type": "integer"}}
    assert xlam_type_schema("Tuple[float, float]") == {
        "type": "array", "minItems": 2, "maxItems": 2, "prefixItems": [{"type": "number"}, {"type": "number"}]
    }  # fmt: skip
    assert xlam_type_schema("set") == {"type": "array", "uniqueItems": True}
    assert xlam_type_schema("Callable[[float], float]") == {"x-python-type": "Callable[[float], float]"}
    signature = xlam_tool_signature(
        {
            "name": "f",
            "description": "d",
            "parameters": {
                "a": {"description": "A", "type": "str", "default": ""},
                "b": {"description": "B", "type": "int, optional", "default": 5},
                "c": {"description": "C", "type": "str, optional, default 'London'"},
            },
        }
    )
    assert signature["parameters"]["required"] == ["a"]
    assert signature["parameters"]["properties"]["b"] == {"type": "integer", "description": "B", "default": 5}
    assert "default" not in signature["parameters"]["properties"]["a"]


@pytest.mark.parametrize(
    ("type_text", "default", "expected"),
    [("int, optional", "10", 10), ("int, optional", "", None), ("int, optional", "abc", None),
     ("float, optional", "2.5", 2.5), ("bool, optional", "false", False), ("str, optional", "", "")],
)  # fmt: skip
def test_xlam_text_defaults_get_the_declared_type(type_text, default, expected):
    tool = {"name": "f", "parameters": {"p": {"type": type_text, "default": default}}}
    schema = xlam_tool_signature(tool)["parameters"]["properties"]["p"]
    assert schema.get("default") == expected and ("default" in schema) == (expected is not None)


def test_xlam_splits_are_byte_identical_and_match_the_committed_ones(tmp_path):
    first = build_xlam_splits(tmp_path / "one")
    build_xlam_splits(tmp_path / "two")
    for track in ("structured", "toolcall"):
        for split in ("train", "val", "test"):
            one = (tmp_path / "one" / track / f"{split}.jsonl").read_bytes()
            assert one == (tmp_path / "two" / track / f"{split}.jsonl").read_bytes()
            assert one == (DATASET_ROOT / track / f"{split}.jsonl").read_bytes(), (
                "committed splits are stale: make data"
            )
    assert first.written == {t: {"train": 300, "val": 50, "test": 50} for t in ("structured", "toolcall")}
    assert first.skipped["answers != 1"] == 624


def test_xlam_splits_are_distinct_and_aligned_across_tracks(tmp_path):
    build_xlam_splits(tmp_path)
    queries = {}
    for track in ("structured", "toolcall"):
        prompts = []
        for split in ("train", "val", "test"):
            rows = read_split(tmp_path / track / f"{split}.jsonl")
            prompts += [row.prompt for row in rows]
            queries[(track, split)] = {row.prompt.rsplit("\n\nRequest: ", 1)[1] for row in rows}
        assert len(prompts) == len(set(prompts)) == 400
    for split in ("train", "val", "test"):  # one user request sits in the same split in both tracks
        assert queries[("structured", split)] == queries[("toolcall", split)]
    toolcall_row = read_split(tmp_path / "toolcall" / "test.jsonl")[0]
    call = parse_gold_tool_call(toolcall_row.completion)
    assert call.name in [s["name"] for s in parse_toolcall_prompt(toolcall_row.prompt).signatures]


def test_xlam_split_sizes_are_flags_and_too_many_is_an_error(tmp_path):
    summary = build_xlam_splits(tmp_path, sizes=SplitSizes(train=10, val=3, test=4))
    assert summary.written["toolcall"] == {"train": 10, "val": 3, "test": 4}
    with pytest.raises(XlamFormatError, match="only 571 usable"):
        build_xlam_splits(tmp_path, sizes=SplitSizes(train=600))


def test_xlam_bad_line_names_file_line_and_field(tmp_path):
    source = write_lines(tmp_path / "x.jsonl", [json.dumps({"query": "q", "tools": [], "answers": "[]"})])
    with pytest.raises(XlamFormatError, match=r"x.jsonl:1: field 'tools' must be a string"):
        build_xlam_splits(tmp_path / "out", source)


def test_assign_splits_ignores_input_order_and_scales():
    candidates = [Candidate(f"q{i}", Row(f"p{i}", "{}")) for i in range(40)]
    sizes = SplitSizes(train=30, val=5, test=5)
    forward = assign_splits(candidates, sizes)
    backward = assign_splits(list(reversed(candidates)), sizes)
    assert forward == backward
    assert SplitSizes().scaled_to(20) == SplitSizes(train=16, val=2, test=2)
    assert SplitSizes().scaled_to(2) == SplitSizes(train=2, val=0, test=0)
