"""The command line as a user runs it: subprocesses, real files, exit codes and messages."""

import json
import subprocess
import sys
from pathlib import Path

from ray_app.data.rows import read_split
from ray_app.paths import PROJECT_ROOT


def slm_swap(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray_app", *args], cwd=cwd, capture_output=True, text=True)


def test_score_prints_the_rates_a_person_computes(tmp_path):
    gold = '<tool_call name="get_weather">{"city": "Oslo", "days": 2}</tool_call>'
    predictions = [
        gold,  # valid, name, args
        'Calling: <tool_call name="get_weather">{"days": 2, "city": "Oslo"}</tool_call>',  # valid, name, args
        '<tool_call name="get_forecast">{"city": "Oslo", "days": 2}</tool_call>',  # valid, exact args of another tool
        '<tool_call name="get_weather">{"city": "Oslo", "days": 2.0}</tool_call>',  # valid, name (2 != 2.0)
        '<tool_call name="get_weather">["Oslo", 2]</tool_call>',  # invalid
        gold + gold,  # two calls: invalid
        "",  # invalid
        '```\n<tool_call name="get_weather">{"city": "Oslo", "days": 2}</tool_call>\n```',  # valid, name, args
    ]
    lines = [
        {
            "index": i,
            "prompt": f"prompt {i}",
            "completion": gold,
            "prediction": p,
            "latency_s": 0.5,
            "prompt_tokens": 10,
            "completion_tokens": 5,
        }
        for i, p in enumerate(predictions)
    ]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    result = slm_swap("score", "--track", "toolcall", "--predictions", str(path))
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["rows"] == 8
    assert metrics["valid_call_rate"] == 5 / 8
    assert metrics["name_match_rate"] == 4 / 8
    assert metrics["args_exact_rate"] == 4 / 8
    assert metrics["args_lenient_rate"] == 4 / 8  # 2 == 2.0 leniently (no schema); get_forecast is another tool


def test_score_names_file_line_and_field_of_a_bad_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"index": 0, "prompt": "p", "completion": "{}"}\n', encoding="utf-8")
    result = slm_swap("score", "--track", "structured", "--predictions", str(path))
    assert result.returncode == 2
    assert f"{path}:1:" in result.stderr and "prediction" in result.stderr


def test_validate_exits_1_and_lists_bad_rows(tmp_path):
    split = tmp_path / "toolcall" / "test.jsonl"
    split.parent.mkdir()
    split.write_text(
        json.dumps({"prompt": "p", "completion": '<tool_call name="f">{}</tool_call>'})
        + "\n"
        + json.dumps({"prompt": "q", "completion": "{}", "extra": 1})
        + "\n",
        encoding="utf-8",
    )
    result = slm_swap("data", "validate", str(tmp_path))
    assert result.returncode == 1
    assert f"{split}:2: unexpected field(s) extra" in result.stderr.replace("\n", "")


def test_validate_accepts_the_committed_splits():
    result = slm_swap("data", "validate", "slm_swap/02_dataset/structured", "slm_swap/02_dataset/toolcall")
    assert result.returncode == 0, result.stderr
    assert "ok: 800 rows in 6 file(s)" in result.stderr


def test_xlam_command_writes_both_tracks(tmp_path):
    result = slm_swap("data", "xlam", "--output-root", str(tmp_path), "--train", "20", "--val", "5", "--test", "5")
    assert result.returncode == 0, result.stderr
    for track in ("structured", "toolcall"):
        counts = [len((tmp_path / track / f"{s}.jsonl").read_text().splitlines()) for s in ("train", "val", "test")]
        assert counts == [20, 5, 5]


def test_the_two_seed_commands_produce_valid_splits_that_cover_the_test_prompts(tmp_path):
    """Both seed commands as written (output paths moved to tmp), then the converted splits."""
    traces = tmp_path / "storage" / "dummy_langfuse_traces.jsonl"
    output_root = tmp_path / "dummy_langfuse"
    agent = subprocess.run(
        [sys.executable, "slm_swap/dummy_agent_workflow.py", "--out-json", str(traces), "--agent-id", "dummy-agent"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert agent.returncode == 0, agent.stderr
    convert = subprocess.run(
        [
            sys.executable,
            "slm_swap/langfuse_dataset.py",
            "--trace-json",
            str(traces),
            "--agent-id",
            "dummy-agent",
            "--output-root",
            str(output_root),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert convert.returncode == 0, convert.stderr
    assert "skipped" in convert.stderr and "multi-turn input" in convert.stderr
    for track in ("structured", "toolcall"):
        converted = {
            row.prompt
            for split in ("train", "val", "test")
            for row in read_split(output_root / track / f"{split}.jsonl")
        }
        test_prompts = {row.prompt for row in read_split(PROJECT_ROOT / "slm_swap/02_dataset" / track / "test.jsonl")}
        # Test prompts come back byte for byte, except the answers the converter must skip (seed 42:
        # 2 prose + 1 fence in structured, 1 two-call answer in toolcall); toolcall adds 4 dotted-name rows.
        skipped, extra = {"structured": (3, 0), "toolcall": (1, 4)}[track]
        assert len(test_prompts & converted) == len(test_prompts) - skipped
        assert len(converted - test_prompts) == extra


def test_decide_prints_the_decision_and_compare_is_its_deprecated_alias(tmp_path):
    from tests.test_decide import PRICES, structured_answers, structured_rows, write_eval

    eval_root, prices = tmp_path / "05_eval", tmp_path / "prices.json"
    prices.write_text(json.dumps(PRICES), encoding="utf-8")
    for label in ("teacher", "slm"):
        write_eval(eval_root, "structured", label, structured_answers(label), structured_rows())
    flags = ("--eval-root", str(eval_root), "--price-table", str(prices), "--slm-hardware", "box")
    decided = slm_swap("decide", *flags)
    assert decided.returncode == 0, decided.stderr
    log = " ".join(decided.stderr.split())  # rich wraps long lines
    assert "structured: FINE_TUNE=1 (slm below teacher on exact_match_rate (delta 0.1))" in log
    assert "toolcall: not decided: no teacher results: run slm-swap eval --track toolcall --model teacher" in log
    assert "compare" not in log
    first = json.loads((eval_root / "decision.json").read_text(encoding="utf-8"))

    aliased = slm_swap("compare", *flags)  # what users' scripts still call
    assert aliased.returncode == 0, aliased.stderr
    assert aliased.stderr.splitlines()[0] == "`slm-swap compare` is now `slm-swap decide` (same flags); running it"
    second = json.loads((eval_root / "decision.json").read_text(encoding="utf-8"))
    assert {**second, "created_at": first["created_at"]} == first
    assert "compare" not in slm_swap("--help").stdout  # hidden from the command list
    # Beside FINE_TUNE, the parity verdict (exact_match: 2 teacher-only rows, 1 slm-only of 10; see test_decide).
    assert "structured: slm against the teacher: cannot tell with 10 rows — about 281 rows would decide" in log
    wider = " ".join(slm_swap("decide", *flags, "--margin", "0.5").stderr.split())
    assert "structured: slm against the teacher: not worse than the teacher by more than 50 points" in wider
    in_points = slm_swap("decide", *flags, "--margin", "2")
    assert in_points.returncode == 2 and "(0.02 is 2 points), got 2.0" in " ".join(in_points.stderr.split())
