"""Malformed input files end in `file:line: reason` and an exit code, never a Python traceback.

`slm-swap data traces`, `data validate` and `score` run as a user runs them (subprocesses) on files
with a byte that is not UTF-8; a trace whose `observations` hold non-objects has them counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ray_app.data.traces import convert_traces
from ray_app.paths import PROJECT_ROOT

LATIN1_E = b"\xe9"  # "é" in Latin-1: never valid UTF-8 on its own


def slm_swap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ray_app", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},  # wide: the messages are checked whole
    )


def assert_file_line_reason(result: subprocess.CompletedProcess, path: Path, line: int, code: int) -> None:
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == code, output
    assert "Traceback" not in output
    assert f"{path}:{line}: not UTF-8 text (byte 0xe9 at column " in output, output


def test_data_traces_names_the_line_that_is_not_utf8(tmp_path):
    export = tmp_path / "traces.jsonl"
    good = json.dumps({"id": "a", "metadata": {"agentId": "crm"}, "observations": []}).encode()
    export.write_bytes(good + b"\n" + b'{"id": "caf' + LATIN1_E + b'", "observations": []}\n')
    result = slm_swap(
        "data", "traces", "--agent-id", "crm", "--output-root", str(tmp_path / "out"), "--trace-json", str(export)
    )
    assert_file_line_reason(result, export, 2, code=2)


def test_data_validate_names_the_line_that_is_not_utf8(tmp_path):
    split = tmp_path / "structured" / "test.jsonl"
    split.parent.mkdir()
    row = json.dumps({"prompt": "Return the city.", "completion": '{"city": "Oslo"}'}).encode()
    split.write_bytes(row + b"\n" + b'{"prompt": "caf' + LATIN1_E + b'", "completion": "{}"}\n')
    result = slm_swap("data", "validate", str(split))
    assert_file_line_reason(result, split, 2, code=1)


def test_score_names_the_line_that_is_not_utf8(tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    record = {
        "index": 0,
        "prompt": "p",
        "completion": "{}",
        "prediction": "{}",
        "prompt_tokens": 1,
        "completion_tokens": 1,
    }
    line = json.dumps(record).encode()
    predictions.write_bytes(line + b"\n" + line.replace(b'"p"', b'"caf' + LATIN1_E + b'"') + b"\n")
    result = slm_swap("score", "--track", "structured", "--predictions", str(predictions))
    assert_file_line_reason(result, predictions, 2, code=2)


def test_observations_that_are_not_objects_are_counted():
    generation = {
        "id": "g1",
        "type": "GENERATION",
        "startTime": "2026-11-01T09:00:00Z",
        "input": [{"role": "user", "content": "Weather in Oslo as JSON"}],
        "output": '{"city": "Oslo"}',
    }
    trace = {"id": "t1", "metadata": {"agentId": "crm"}, "observations": [generation, "a string", 7, None]}
    conversion = convert_traces([trace], "crm")
    assert conversion.skipped == {"observation is not a JSON object": 3}
    assert conversion.generations_seen == 1 and len(conversion.candidates["structured"]) == 1
