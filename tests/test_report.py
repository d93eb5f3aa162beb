"""The parity report on eval folders written by the project's own functions, then compared for real.

Fixture (10 rows per track; eval folders written as `run_eval` writes them: `prediction_record`,
`PredictionStore`, `score_rows`, `latency_summary`; decision.json from `run_decide`):
- structured: teacher exact on rows 0-8, row 9 prose; slm wrong on rows 7-8; slm-adapter exact except
  row 0, a fenced answer with a pipe (FINE_TUNE = 1).
- toolcall: teacher and slm exact everywhere (FINE_TUNE = 0), so there is no adapter.
The tests parse report.md's tables back and check every cell against the file its table names.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ray_app.atomic_files import atomic_write_json
from ray_app.data.rows import Row, read_split
from ray_app.data.splits import write_track_splits
from ray_app.decide.decide import run_decide
from ray_app.decide.decide_config import DecideConfig
from ray_app.decide.decision_record import Decision
from ray_app.engines.base import Generation
from ray_app.eval.config import EvalConfig
from ray_app.eval.evaluate import eval_metrics_record
from ray_app.eval.prediction_store import PredictionStore
from ray_app.eval.ray_predictor import prediction_record
from ray_app.metrics import score_structured_row
from ray_app.metrics.metrics_record import EvalMetrics
from ray_app.prompts import format_tool_call, structured_prompt, toolcall_prompt
from ray_app.report import ReportError, write_report
from tests.sample_tools import WEATHER

ROWS = 10
PRICES = {
    "teacher_usd_per_1m_tokens": {"default": {"input": 1.0, "output": 4.0}, "gpt-4o": {"input": 2.5, "output": 10.0}},
    "slm_usd_per_instance_hour": {"box": 3.6, "cpu-2core": 0.1},
}
FENCED_ANSWER = '```json\n{"city": "c0", "days": 0} | pipe\n```'
ENGINES = {
    "teacher": {"kind": "replay", "agent_id": "dummy-agent", "models_seen": ["gpt-4o-mini"], "simulated": True},
    "slm": {
        "kind": "transformers",
        "model_path": "/models/tiny",
        "adapter_path": None,
        "precision": "fp32",
        "device": "cpu",
        "batch_size": 4,
        "max_new_tokens": 64,
    },  # fmt: skip
}


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch):
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_HOST",
                 "SLM_SWAP_REQUIRE_LANGFUSE", "SLM_SWAP_PRICE_TABLE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def split_rows(track: str) -> list[Row]:
    args = [{"city": f"c{i}", "days": i} for i in range(ROWS)]
    if track == "structured":
        return [Row(structured_prompt(WEATHER, f"Weather in city {i}?"), json.dumps(args[i])) for i in range(ROWS)]
    return [
        Row(toolcall_prompt([WEATHER], f"Weather in city {i}?"), format_tool_call("get_weather", args[i]))
        for i in range(ROWS)
    ]


def answers(track: str, label: str) -> list[str]:
    golds = [row.completion for row in split_rows(track)]
    if track == "toolcall":
        return golds
    if label == "teacher":
        return golds[:9] + ["Sure! here it is"]
    if label == "slm":
        return golds[:7] + [json.dumps({"city": f"c{i}", "days": -1}) for i in (7, 8)] + golds[9:]
    return [FENCED_ANSWER] + golds[1:]


def write_evaluation(eval_root: Path, dataset_root: Path, track: str, label: str, answers: list[str]) -> None:
    """What `run_eval` writes for these answers: predictions.jsonl, timings.jsonl, metrics.json."""
    rows = read_split(dataset_root / track / "test.jsonl", track)
    folder = eval_root / track / label
    engine = ENGINES["teacher"] if label == "teacher" else {**ENGINES["slm"]}
    if label not in ("teacher", "slm"):
        engine["adapter_path"] = f"/adapters/{label}"
    store = PredictionStore.open(folder, run_key=f"{track}-{label}")
    batch = 1 if label == "teacher" else engine["batch_size"]
    for start in range(0, len(rows), batch):
        indices = range(start, min(start + batch, len(rows)))
        # The teacher's latency is per call; an SLM row waits for its whole batch.
        latencies = {i: 0.25 + 0.1 * i if label == "teacher" else 1.5 + 0.5 * start for i in indices}
        generations = {i: Generation(answers[i], 100 + i, 20 + i % 3, latencies[i]) for i in indices}
        store.append([prediction_record(i, rows[i], generations[i]) for i in indices], max(latencies.values()))
    records = store.finish(len(rows))
    summary = eval_metrics_record(
        track=track, label=label, split="test", records=records, elapsed_s=store.elapsed_s,
        engine_description=engine, is_teacher=label == "teacher", run_key=f"{track}-{label}", identity={},
        predictions_path=store.predictions_path,
        config=EvalConfig(track=track, model="teacher" if label == "teacher" else "slm", label=label),
    )  # fmt: skip
    atomic_write_json(folder / "metrics.json", summary.to_json())


def decide(eval_root: Path, price_table: Path) -> Decision:
    return run_decide(DecideConfig(eval_root=eval_root, price_table_path=price_table, slm_hardware="box"))


@dataclass
class Workspace:
    eval_root: Path
    dataset_root: Path
    price_table: Path

    def report(self, failing_rows_per_model: int = 3):
        return write_report(self.eval_root, self.dataset_root, failing_rows_per_model)

    def markdown(self) -> str:
        return (self.eval_root / "report.md").read_text(encoding="utf-8")

    def json(self, name: str) -> Any:
        return json.loads((self.eval_root / name).read_text(encoding="utf-8"))


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    dataset_root, eval_root, price_table = tmp_path / "02_dataset", tmp_path / "05_eval", tmp_path / "prices.json"
    price_table.write_text(json.dumps(PRICES), encoding="utf-8")
    for track in ("structured", "toolcall"):
        write_track_splits(dataset_root, track, {"test": split_rows(track)})
        labels = ("teacher", "slm", "slm-adapter") if track == "structured" else ("teacher", "slm")
        for label in labels:
            write_evaluation(eval_root, dataset_root, track, label, answers(track, label))
    decide(eval_root, price_table)
    return Workspace(eval_root, dataset_root, price_table)


# ---- parsing report.md back ----


@dataclass
class Table:
    section: str  # the "## " heading it sits under
    header: list[str]
    rows: list[list[str]]
    files: list[str]  # files named by the Source line that follows it
    fields: list[str]


def split_cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [cell.strip().replace("\\|", "|") for cell in cells]


def parse_tables(markdown: str) -> list[Table]:
    tables: list[Table] = []
    section, lines, i = "", markdown.split("\n"), 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section = lines[i][3:]
        if not lines[i].startswith("|"):
            i += 1
            continue
        block = []
        while i < len(lines) and lines[i].startswith("|"):
            block.append(lines[i])
            i += 1
        following = next(line for line in lines[i:] if line.strip())
        assert following.startswith("Source: "), f"table under {section!r} names no source: {block[0]}"
        named, _, fields = following.partition(" (fields ")
        tables.append(
            Table(
                section,
                split_cells(block[0]),
                [split_cells(line) for line in block[2:]],
                re.findall(r"`([^`]+)`", named),
                re.findall(r"`([^`]+)`", fields),
            )
        )
    return tables


def near(text: str, value: float, decimals: int) -> bool:
    return abs(float(text.replace(",", "")) - value) <= 0.5 * 10**-decimals + 1e-9


def same_significant(text: str, value: float, digits: int) -> bool:
    return math.isclose(float(text), value, rel_tol=5 * 10**-digits, abs_tol=1e-300)


def check_table(table: Table, workspace: Workspace) -> None:
    """Every cell of every table against the file (and field) its Source line names."""
    root, header, track = workspace.eval_root, table.header, table.section
    decision = workspace.json("decision.json")
    if header[:2] == ["track", "test rows"]:
        assert table.files == ["decision.json"]
        for name, rows, teacher, fine_tune, reason, adapted, parity in table.rows:
            if name not in decision["tracks"]:
                assert [rows, teacher, fine_tune, adapted, parity] == ["—", "—", "not decided", "—", "—"]
                assert reason == decision["missing"][name]
                continue
            decided = decision["tracks"][name]
            assert int(rows) == decided["rows"] and teacher == decided["teacher_mode"]
            assert int(fine_tune) == decided["FINE_TUNE"] and reason == decided["reason"]
            verdicts = {"slm": decided["teacher_vs_slm"]["parity"]["overall"]["words"]}
            for label, comparison in decided["adapted"].items():
                verdicts[label] = comparison["vs_teacher"]["parity"]["overall"]["words"]
                if label.endswith("-constrained"):  # a candidate, not a fine-tuned SLM: only in the parity column
                    assert label not in adapted
                    continue
                for metric, result in comparison["vs_teacher"]["core"].items():
                    if result["delta"] > 0:
                        assert f"{metric} (delta {result['delta']:.6g})" in adapted, label
            assert parity == "; ".join(f"{label}: {words}" for label, words in verdicts.items())
        return
    if header[:2] == ["candidate", "metric"]:
        assert table.files == ["decision.json"]
        for candidate, metric, delta, bounds, margin, words in table.rows:
            key = ("teacher_vs_slm",) if candidate == "slm" else ("adapted", candidate, "vs_teacher")
            assert ".".join(["tracks", track, *key, "parity"]) in table.fields
            comparison = decision["tracks"][track]
            for part in key:
                comparison = comparison[part]
            parity = comparison["parity"]
            assert near(margin, parity["margin"], 3)
            if metric == "all core metrics":
                assert [delta, bounds, words] == ["—", "—", parity["overall"]["words"]]
                continue
            lower, upper = bounds.strip("[]").split(", ")
            assert near(lower, parity["core"][metric]["delta_lower_95"], 3)
            assert near(upper, parity["core"][metric]["delta_upper_95"], 3)
            assert near(delta, comparison["core"][metric]["delta"], 3) and words == parity["core"][metric]["words"]
        return
    if header[0] == "teacher price entry":
        assert table.files == ["decision.json"] and table.fields == ["price_table.teacher_usd_per_1m_tokens"]
        prices = decision["price_table"]["teacher_usd_per_1m_tokens"]
        assert {row[0]: (float(row[1]), float(row[2])) for row in table.rows} == {
            name: (price["input"], price["output"]) for name, price in prices.items()
        }
        return
    if header[0] == "SLM hardware":
        hourly = decision["price_table"]["slm_usd_per_instance_hour"]
        assert {row[0]: float(row[1]) for row in table.rows} == hourly
        assert [row[0] for row in table.rows if row[2] == "yes"] == [decision["config"]["slm_hardware"]]
        return
    if header == ["model", "what answered"]:
        for label, text in table.rows:
            assert f"{track}/{label}/metrics.json" in table.files
            engine = json.loads((root / track / label / "metrics.json").read_text())["engine"]
            if engine["kind"] == "transformers":
                assert f"batch {engine['batch_size']}, max {engine['max_new_tokens']} new tokens" in text
            else:
                assert text.startswith("replay (simulated): agent dummy-agent")
        return
    if header[:3] == ["metric", "reference", "candidate"]:
        assert table.files == ["decision.json"]
        for metric, ref, cand, ref_rate, cand_rate, delta, interval, p, discordant, verdict in table.rows:
            keys = ("teacher_vs_slm",) if ref == "teacher" and cand == "slm" else ("adapted", cand, f"vs_{ref}")
            assert ".".join(["tracks", track, *keys, "core"]) in table.fields
            result = decision["tracks"][track]
            for key in keys:
                result = result[key]
            result = result["core"][metric]
            assert near(ref_rate, result[ref], 3) and near(cand_rate, result[cand], 3)
            assert near(delta, result["delta"], 3)
            low, high = interval.strip("[]").split(", ")
            assert near(low, result["interval_95"][0], 3) and near(high, result["interval_95"][1], 3)
            assert same_significant(p, result["mcnemar_p"], 3)
            assert discordant == f"{result['discordant'][f'{ref}_only']} / {result['discordant'][f'{cand}_only']}"
            assert verdict == result["verdict"]
        return
    if header[0] == "metric":
        for label in header[1:]:
            folder = root / track / label
            values = [row[header.index(label)] for row in table.rows]
            if not (folder / "metrics.json").is_file():
                assert set(values) == {"—"}
                continue
            assert f"{track}/{label}/metrics.json" in table.files
            summary = json.loads((folder / "metrics.json").read_text())
            for row, value in zip(table.rows, values, strict=True):
                name = row[0].removesuffix(" (core)")
                expected = summary["rows"] if name == "rows" else summary["metrics"][name]
                assert near(value, expected, 3), (track, label, name)
        return
    if header[1] == "p50 s":
        for label, p50, p95, mean, meaning in table.rows:
            assert f"{track}/{label}/metrics.json" in table.files
            summary = json.loads((root / track / label / "metrics.json").read_text())
            for text, key in ((p50, "p50"), (p95, "p95"), (mean, "mean")):
                assert near(text, summary["latency_s"][key], 3)
            if label == "teacher":
                assert meaning == "recorded production call"
            else:
                rows = summary["engine"]["batch_size"]
                assert meaning == f"from prefill start to its last token, up to {rows} rows decoding together"
        return
    if header[1] == "prompt tokens":
        assert table.files == ["decision.json"] and f"tracks.{track}.models.<model>.tokens" in table.fields
        for label, prompt, completion, mean_prompt, mean_completion, cost, how in table.rows:
            model = decision["tracks"][track]["models"][label]
            assert int(prompt.replace(",", "")) == model["tokens"]["prompt"]
            assert int(completion.replace(",", "")) == model["tokens"]["completion"]
            assert near(mean_prompt, model["tokens"]["mean_prompt"], 1)
            assert near(mean_completion, model["tokens"]["mean_completion"], 1)
            assert same_significant(cost, model["cost_per_1k_calls_usd"], 4) and how == model["cost_basis"]
        return
    raise AssertionError(f"a table this test does not check: {header}")


# ---- the tests ----


def test_every_table_number_equals_the_file_it_names(workspace: Workspace) -> None:
    workspace.report()
    tables = parse_tables(workspace.markdown())
    for table in tables:
        check_table(table, workspace)
    kinds = {(table.section, table.header[0], table.header[1]) for table in tables}
    for track in ("structured", "toolcall"):
        for first, second in (
            ("metric", "teacher"),
            ("metric", "reference"),
            ("candidate", "metric"),
            ("model", "p50 s"),
        ):
            assert (track, first, second) in kinds
        assert (track, "model", "prompt tokens") in kinds
    # The decision table names the fine-tuned SLM's standing from decision.json's adapted comparison.
    decision_row = next(t for t in tables if t.header[0] == "track").rows[0]
    # Teacher and adapter miss one row each (rows 9 and 0): equal rates, so the rule would not fine-tune again.
    assert decision_row[0] == "structured"
    assert (
        decision_row[-2]
        == "slm-adapter equal to or above teacher on every core metric (json_valid_rate, exact_match_rate)"
    )


def test_report_hand_checked_numbers(workspace: Workspace) -> None:
    """A few cells computed by hand from the fixture, so the report cannot agree with a wrong file."""
    workspace.report()
    tables = parse_tables(workspace.markdown())
    metrics = next(t for t in tables if t.section == "structured" and t.header[:2] == ["metric", "teacher"])
    assert metrics.header == ["metric", "teacher", "slm", "slm-adapter"]
    assert metrics.rows[1] == ["json_valid_rate (core)", "0.900", "1.000", "0.900"]
    assert metrics.rows[2] == ["exact_match_rate (core)", "0.900", "0.800", "0.900"]
    latency = next(t for t in tables if t.section == "structured" and t.header[1] == "p50 s")
    # slm batches of 4 start at rows 0, 4, 8 → 1.5, 3.5, 5.5 s; p50 of (1.5 x4, 3.5 x4, 5.5 x2) is 3.5.
    assert latency.rows[1][:4] == ["slm", "3.500", "5.500", "3.100"]
    # Parity (margin 2 points). slm: json_valid b=0, c=1 of 10 → bounds (-0.3, 0), not worse; exact_match
    # b=2 (rows 7, 8), c=1 (row 9) → bounds (-0.2, 0.4), cannot tell; rows needed 6.182557 x 0.29 / 0.08^2
    # = 280.2 → 281. slm-adapter: b=1 (row 0), c=1 (row 9) on both → bounds (-0.2, 0.2), cannot tell;
    # 6.182557 x 0.2 / 0.02^2 = 3091.3 → 3092 rows.
    parity = next(t for t in tables if t.section == "structured" and t.header[:2] == ["candidate", "metric"])
    assert [row[:5] for row in parity.rows] == [
        ["slm", "json_valid_rate", "-0.100", "[-0.300, +0.000]", "0.020"],
        ["slm", "exact_match_rate", "+0.100", "[-0.200, +0.400]", "0.020"],
        ["slm", "all core metrics", "—", "—", "0.020"],
        ["slm-adapter", "json_valid_rate", "+0.000", "[-0.200, +0.200]", "0.020"],
        ["slm-adapter", "exact_match_rate", "+0.000", "[-0.200, +0.200]", "0.020"],
        ["slm-adapter", "all core metrics", "—", "—", "0.020"],
    ]
    bound = "(95% one-sided paired bootstrap bound)"
    assert parity.rows[0][5] == f"not worse than the teacher by more than 2 points {bound}"
    slm_words = "cannot tell with 10 rows — about 281 rows would decide at this margin (undecided: exact_match_rate)"
    adapter_words = (
        "cannot tell with 10 rows — about 3,092 rows would decide at this margin "
        "(undecided: json_valid_rate, exact_match_rate)"
    )
    assert [parity.rows[2][5], parity.rows[5][5]] == [slm_words, adapter_words]
    # The report's first table says it for every candidate; toolcall's slm equals the teacher on every row.
    decision = next(t for t in tables if t.header[0] == "track")
    assert decision.rows[0][-1] == f"slm: {slm_words}; slm-adapter: {adapter_words}"
    assert decision.rows[1][-1] == f"slm: not worse than the teacher by more than 2 points on every core metric {bound}"


def test_charts_are_pngs_linked_from_the_report(workspace: Workspace) -> None:
    stale = workspace.eval_root / "report_charts" / "old_track_core_metrics.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"not a chart")
    outcome = workspace.report()
    names = sorted(path.name for path in outcome.chart_paths)
    assert names == sorted(f"{t}_{c}.png" for t in ("structured", "toolcall") for c in ("core_metrics", "latency_cost"))
    markdown = workspace.markdown()
    for path in outcome.chart_paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        assert int.from_bytes(data[16:20], "big") > 300 and int.from_bytes(data[20:24], "big") > 200
        assert f"](report_charts/{path.name})" in markdown
    assert not stale.exists()
    assert sorted(p.name for p in (workspace.eval_root / "report_charts").iterdir()) == names
    assert outcome.report_path == workspace.eval_root / "report.md"


def test_sources_are_the_files_read(workspace: Workspace) -> None:
    outcome = workspace.report()
    root = workspace.eval_root
    expected = {root / "decision.json", workspace.dataset_root / "structured" / "test.jsonl"}
    expected |= {workspace.dataset_root / "toolcall" / "test.jsonl"}
    for track, labels in (("structured", ("teacher", "slm", "slm-adapter")), ("toolcall", ("teacher", "slm"))):
        for label in labels:
            expected |= {root / track / label / name for name in ("metrics.json", "predictions.jsonl", "timings.jsonl")}
    assert set(outcome.sources) == expected and len(outcome.sources) == len(expected)


def test_missing_adapter_is_reported_with_its_reason(workspace: Workspace) -> None:
    workspace.report()
    markdown = workspace.markdown()
    toolcall = markdown.split("\n## toolcall\n")[1]
    assert "`slm-adapter`: not trained: FINE_TUNE=0 (slm equal to or above teacher on every core metric" in toolcall
    shutil.rmtree(workspace.eval_root / "structured" / "slm-adapter")
    decide(workspace.eval_root, workspace.price_table)
    workspace.report()
    structured = workspace.markdown().split("\n## structured\n")[1].split("\n## toolcall\n")[0]
    assert (
        "`slm-adapter`: not evaluated: FINE_TUNE=1, run `slm-swap train --track structured` to train and evaluate it"
        in structured
    )
    assert "#### slm-adapter\n\nnot evaluated: FINE_TUNE=1" in structured


def test_missing_track_model_and_decision_are_reported_not_raised(workspace: Workspace) -> None:
    shutil.rmtree(workspace.eval_root / "toolcall" / "slm")
    decide(workspace.eval_root, workspace.price_table)
    workspace.report()
    markdown = workspace.markdown()
    toolcall = markdown.split("\n## toolcall\n")[1]
    assert "Not decided: no slm results: run slm-swap eval --track toolcall --model slm." in toolcall
    assert "`slm`: not evaluated: run `slm-swap eval --track toolcall --model slm`." in toolcall
    decision_table = next(t for t in parse_tables(markdown) if t.header[0] == "track")
    assert decision_table.rows[1][:4] == ["toolcall", "—", "—", "not decided"]
    assert "Paired gaps\n\nNot compared: no slm results" in toolcall
    for table in parse_tables(markdown):
        check_table(table, workspace)

    (workspace.eval_root / "decision.json").unlink()
    outcome = workspace.report()
    markdown = workspace.markdown()
    assert "No `decision.json` yet: run `slm-swap decide`" in markdown
    assert "Not decided: no decision.json: run `slm-swap decide`." in markdown
    assert workspace.eval_root / "decision.json" not in outcome.sources

    empty = workspace.eval_root.parent / "empty_eval"
    outcome = write_report(empty, workspace.dataset_root)
    markdown = outcome.report_path.read_text(encoding="utf-8")
    assert outcome.chart_paths == [] and "## structured" in markdown and "## toolcall" in markdown
    assert "`teacher`: not evaluated: run `slm-swap eval --track structured --model teacher`." in markdown


def test_failing_rows_are_the_first_ones_with_gold_and_prediction(workspace: Workspace) -> None:
    workspace.report(failing_rows_per_model=1)
    markdown = workspace.markdown()
    structured = markdown.split("\n## structured\n")[1].split("\n## toolcall\n")[0]
    gold_rows = read_split(workspace.dataset_root / "structured" / "test.jsonl", "structured")
    for label in ("teacher", "slm", "slm-adapter"):
        predictions = answers("structured", label)
        scores = [score_structured_row(row.completion, p) for row, p in zip(gold_rows, predictions, strict=True)]
        failing = [i for i, score in enumerate(scores) if not (score.json_valid and score.exact_match)]
        section = structured.split(f"\n#### {label}: ")[1].split("\n#### ")[0]
        assert section.startswith(f"{len(failing)} of {ROWS} rows fail (the first 1, ")
        shown = re.findall(r"^Row (\d+) \(`test.jsonl` line (\d+)\)", section, flags=re.MULTILINE)
        assert shown == [(str(failing[0]), str(failing[0] + 1))]
        block = section.split(":\n\n", 1)[1]
        prediction = predictions[failing[0]].replace("\n", "\\n")
        assert f"gold:       {gold_rows[failing[0]].completion}\n" in block
        assert f"prediction: {prediction}\n" in block
        assert f"request:    Weather in city {failing[0]}?\n" in block
    # The fenced answer stays inside a longer fence, on one line, its pipe unescaped.
    assert '````text\nrequest:    Weather in city 0?\ngold:       {"city": "c0", "days": 0}\n' in structured
    assert 'prediction: ```json\\n{"city": "c0", "days": 0} | pipe\\n```\n````' in structured

    workspace.report(failing_rows_per_model=3)
    slm = workspace.markdown().split("\n#### slm: ")[1].split("\n#### ")[0]
    assert re.findall(r"^Row (\d+)", slm, flags=re.MULTILINE) == ["7", "8"]
    assert "toolcall" not in slm and "No failing rows in `toolcall/slm/predictions.jsonl`." in workspace.markdown()


def test_long_answers_are_cut(workspace: Workspace) -> None:
    long_answer = "x" * 1000
    write_evaluation(workspace.eval_root, workspace.dataset_root, "toolcall", "slm", [long_answer] * ROWS)
    decide(workspace.eval_root, workspace.price_table)
    workspace.report(failing_rows_per_model=2)
    markdown = workspace.markdown()
    assert f"prediction: {'x' * 300}… (+700 chars)\n" in markdown
    assert long_answer not in markdown


def test_same_inputs_give_the_same_bytes(workspace: Workspace) -> None:
    first = workspace.report()
    report_bytes = first.report_path.read_bytes()
    charts = {path: path.read_bytes() for path in first.chart_paths}
    second = workspace.report()
    assert second.report_path.read_bytes() == report_bytes
    assert {path: path.read_bytes() for path in second.chart_paths} == charts
    # The only timestamp is the one decision.json carries.
    stamps = set(re.findall(r"\d{4}-\d{2}-\d{2}T[\d:]+", report_bytes.decode()))
    assert stamps == {workspace.json("decision.json")["created_at"][:19]}


def test_results_changed_after_the_decision_are_flagged(workspace: Workspace) -> None:
    golds = [row.completion for row in split_rows("structured")]
    write_evaluation(workspace.eval_root, workspace.dataset_root, "structured", "slm-adapter", golds)
    write_evaluation(workspace.eval_root, workspace.dataset_root, "structured", "slm-adapter-2", golds)
    workspace.report()
    markdown = workspace.markdown()
    assert "Warning: `structured/slm-adapter/metrics.json` changed after decision.json was written" in markdown
    assert "Warning: `structured/slm-adapter/predictions.jsonl` changed after decision.json was written" in markdown
    assert "Warning: `structured/slm-adapter-2/` was evaluated after decision.json was written" in markdown
    metrics = next(t for t in parse_tables(markdown) if t.section == "structured" and t.header[0] == "metric")
    assert metrics.header == ["metric", "teacher", "slm", "slm-adapter", "slm-adapter-2"]
    assert "slm-adapter-2: evaluated, not compared (re-run `slm-swap decide`)" in markdown


def test_stale_predictions_against_the_split_are_flagged(workspace: Workspace) -> None:
    rows = split_rows("toolcall")
    rows[2] = Row(rows[2].prompt, format_tool_call("get_weather", {"city": "elsewhere", "days": 2}))
    write_track_splits(workspace.dataset_root, "toolcall", {"test": rows})
    workspace.report()
    toolcall = workspace.markdown().split("\n## toolcall\n")[1]
    assert "Warning: `toolcall/slm/predictions.jsonl` does not answer `" in toolcall
    assert "(row 2 (split line 3) has another completion)" in toolcall


def test_unfinished_evaluation_is_listed(workspace: Workspace) -> None:
    (workspace.eval_root / "toolcall" / "slm-adapter").mkdir()
    (workspace.eval_root / "toolcall" / "slm-adapter" / "predictions.jsonl").write_text("", encoding="utf-8")
    workspace.report()
    assert (
        "`slm-adapter`: not evaluated: only predictions.jsonl in toolcall/slm-adapter/ (an interrupted evaluation?)"
        in workspace.markdown()
    )


def test_records_read_back_the_text_they_were_written_as(workspace: Workspace) -> None:
    """metrics.json (`eval_metrics_record`) and decision.json (`run_decide`) are typed views of the files."""
    paths = sorted(workspace.eval_root.glob("*/*/metrics.json"))
    assert len(paths) == 5
    for path in paths:
        text = path.read_text(encoding="utf-8")
        assert json.dumps(EvalMetrics.read(path).to_json(), indent=2, ensure_ascii=False) + "\n" == text, path
    decision_path = workspace.eval_root / "decision.json"
    text = decision_path.read_text(encoding="utf-8")
    assert json.dumps(Decision.read(decision_path).to_json(), indent=2, ensure_ascii=False) + "\n" == text


def test_malformed_inputs_name_the_file_and_field(workspace: Workspace) -> None:
    metrics_path = workspace.eval_root / "structured" / "slm" / "metrics.json"
    summary = json.loads(metrics_path.read_text())
    del summary["latency_s"]["p95"]
    metrics_path.write_text(json.dumps(summary))
    expected = f"{metrics_path}: field 'latency_s.p95' missing; re-run `slm-swap eval --track structured --model slm`"
    with pytest.raises(ReportError, match=re.escape(expected)):
        workspace.report()

    write_evaluation(workspace.eval_root, workspace.dataset_root, "structured", "slm", answers("structured", "slm"))
    timings = workspace.eval_root / "structured" / "slm" / "timings.jsonl"
    lines = timings.read_text().splitlines()
    lines[2] = '{"index": 2, "latency_s": -1}'
    timings.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match=re.escape(f"{timings}:3: field 'latency_s' must be a non-negative number")):
        workspace.report()

    timings.unlink()
    decision_path = workspace.eval_root / "decision.json"
    decision = workspace.json("decision.json")
    del decision["tracks"]["structured"]["adapted"]["slm-adapter"]["vs_slm"]["core"]["exact_match_rate"]["delta"]
    decision_path.write_text(json.dumps(decision, indent=2))
    with pytest.raises(
        ReportError,
        match=re.escape(
            f"{decision_path}: field 'tracks.structured.adapted.slm-adapter.vs_slm.core.exact_match_rate.delta' "
            "missing; re-run `slm-swap decide`"
        ),
    ):
        workspace.report()

    decision_path.write_text('{"tracks": {}\n,,')
    with pytest.raises(ReportError, match=re.escape(f"{decision_path}:2: not valid JSON")):
        workspace.report()
    with pytest.raises(ReportError, match="failing_rows_per_model must be 0 or more"):
        workspace.report(failing_rows_per_model=-1)
