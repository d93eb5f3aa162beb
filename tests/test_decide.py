"""The decide step on hand-made eval folders: deltas, intervals, McNemar, costs, the decision file.

Fixture (10 rows per track, `<tmp>/05_eval/<track>/<label>/`):
- structured: teacher exact on rows 0-8, row 9 not JSON; slm exact on 0-6 and 9, rows 7-8 valid but
  wrong; slm-adapter exact everywhere. So slm is worse on exact_match (8 vs 9) and better on
  json_valid (10 vs 9): FINE_TUNE = 1 naming only exact_match_rate.
- toolcall: teacher and slm exact everywhere (FINE_TUNE = 0); slm-adapter answers nothing on rows 0-4.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from ray_app.decide.decide import decide_fine_tune, metric_verdict, run_decide
from ray_app.decide.decide_config import DecideConfig, DecideError
from ray_app.decide.decision_record import Decision
from ray_app.decide.price_table import PriceTableError, load_price_table, resolve_price_table_path
from ray_app.metrics import score_rows
from ray_app.metrics.metrics_record import EvalMetrics, Latency, TokenCounts
from ray_app.paths import WORKSPACE
from ray_app.prompts import format_tool_call, structured_prompt, toolcall_prompt
from ray_app.record_fields import RecordError
from tests.sample_tools import WEATHER

ROWS = 10
PRICES = {
    "teacher_usd_per_1m_tokens": {"default": {"input": 1.0, "output": 4.0}, "my-model": {"input": 2.0, "output": 8.0}},
    "slm_usd_per_instance_hour": {"box": 3.6, "cpu-2core": 0.1},
}


def structured_rows() -> list[tuple[str, str]]:
    return [
        (structured_prompt(WEATHER, f"Weather in city {i}?"), json.dumps({"city": f"c{i}", "days": i}))
        for i in range(ROWS)
    ]


def toolcall_rows() -> list[tuple[str, str]]:
    return [
        (
            toolcall_prompt([WEATHER], f"Weather in city {i}?"),
            format_tool_call("get_weather", {"city": f"c{i}", "days": i}),
        )
        for i in range(ROWS)
    ]


def structured_answers(label: str) -> list[str]:
    golds = [gold for _, gold in structured_rows()]
    wrong = [json.dumps({"city": f"c{i}", "days": -1}) for i in range(ROWS)]
    if label == "teacher":
        return golds[:9] + ["not json"]
    if label == "slm":
        return golds[:7] + wrong[7:9] + golds[9:]
    return golds


def toolcall_answers(label: str) -> list[str]:
    golds = [gold for _, gold in toolcall_rows()]
    return [""] * 5 + golds[5:] if label == "slm-adapter" else golds


ENGINES = {
    ("structured", "teacher"): {"kind": "azure", "model": "my-model"},
    ("toolcall", "teacher"): {"kind": "replay", "simulated": True, "models_seen": ["unlisted-model"]},
}


def write_eval(
    eval_root: Path, track: str, label: str, answers: list[str], split_rows: list[tuple[str, str]], **summary: Any
) -> Path:
    folder = eval_root / track / label
    folder.mkdir(parents=True, exist_ok=True)
    records = [
        {
            "index": i,
            "prompt": prompt,
            "completion": gold,
            "prediction": answer,
            "latency_s": 0.5,
            "prompt_tokens": 100,
            "completion_tokens": 20,
        }
        for i, ((prompt, gold), answer) in enumerate(zip(split_rows, answers, strict=True))
    ]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    metrics = score_rows(track, [r["completion"] for r in records], answers, [r["prompt"] for r in records])
    teacher = label == "teacher"
    record = EvalMetrics(
        track=track,
        model_label=label,
        split="test",
        rows=len(records),
        metrics=metrics,
        latency_s=Latency(0.8, 1.9, 1.0) if teacher else Latency(0.3, 0.45, 0.31),
        tokens=TokenCounts(1000, 200, 100.0) if teacher else TokenCounts(1200, 250, 50.0),
        wall_time_s=2.0 if teacher else 5.0,
        engine=ENGINES.get((track, label), {"kind": "transformers", "simulated": False}),
        teacher_mode=ENGINES[(track, label)]["kind"] if teacher else None,
        run_key=f"{track}-{label}",
        identity={},
        predictions=f"{track}/{label}/predictions.jsonl",
        config={},
        git={"commit": None, "dirty": None},
        packages={},
        created_at="2026-01-01T00:00:00+00:00",
    )
    record = dataclasses.replace(record, **summary)
    (folder / "metrics.json").write_text(json.dumps(record.to_json()), encoding="utf-8")
    return folder


@pytest.fixture
def eval_root(tmp_path: Path) -> Path:
    root = tmp_path / "05_eval"
    for label in ("teacher", "slm", "slm-adapter"):
        write_eval(root, "structured", label, structured_answers(label), structured_rows())
        write_eval(root, "toolcall", label, toolcall_answers(label), toolcall_rows())
    return root


@pytest.fixture
def price_table(tmp_path: Path) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(PRICES), encoding="utf-8")
    return path


def config(eval_root: Path, price_table: Path, **overrides: Any) -> DecideConfig:
    return DecideConfig(eval_root=eval_root, price_table_path=price_table, slm_hardware="box", **overrides)


def test_structured_decision_hand_computed(eval_root: Path, price_table: Path) -> None:
    decision = run_decide(config(eval_root, price_table))
    structured = decision.tracks["structured"]
    assert decision.fine_tune == {"structured": 1, "toolcall": 0}
    assert structured.fine_tune == 1
    assert structured.reason == "slm below teacher on exact_match_rate (delta 0.1)"
    assert structured.rows == ROWS
    assert structured.teacher_mode == "azure"

    exact = structured.teacher_vs_slm.core["exact_match_rate"]
    assert (exact.reference_rate, exact.candidate_rate, exact.delta) == (0.9, 0.8, 0.1)
    # Discordant rows: 7 and 8 (teacher only), 9 (slm only): p = 2 * P(X <= 1), X ~ Bin(3, 1/2) = 1.
    assert (exact.reference_only, exact.candidate_only) == (2, 1)
    assert exact.mcnemar_p == 1.0
    assert exact.interval_95[0] <= 0 < 0.1 <= exact.interval_95[1]
    assert exact.verdict.startswith("slm worse than teacher; 10 rows cannot tell them apart (95% interval [")
    written = json.loads((eval_root / "decision.json").read_text(encoding="utf-8"))
    exact_json = written["tracks"]["structured"]["teacher_vs_slm"]["core"]["exact_match_rate"]
    assert (exact_json["teacher"], exact_json["slm"]) == (0.9, 0.8)  # rates keyed by the models' labels
    assert exact_json["discordant"] == {"teacher_only": 2, "slm_only": 1}

    valid = structured.teacher_vs_slm.core["json_valid_rate"]
    assert (valid.reference_rate, valid.candidate_rate, valid.delta) == (0.9, 1.0, -0.1)
    assert (valid.reference_only, valid.candidate_only) == (0, 1) and valid.mcnemar_p == 1.0
    assert valid.verdict.startswith("slm better than teacher; 10 rows cannot tell them apart")

    # field_f1: teacher P = 18/18, R = 18/20; slm P = R = 18/20.
    f1 = structured.teacher_vs_slm.info["field_f1"]
    assert f1.to_json("teacher", "slm") == {"teacher": round(36 / 38, 6), "slm": 0.9, "delta": round(36 / 38 - 0.9, 6)}
    assert set(structured.teacher_vs_slm.info) == {"field_precision", "field_recall", "field_f1"}


def test_adapted_models_are_compared_with_teacher_and_base_slm(eval_root: Path, price_table: Path) -> None:
    decision = run_decide(config(eval_root, price_table))
    adapted = decision.tracks["structured"].adapted["slm-adapter"]
    assert (adapted.vs_teacher.reference, adapted.vs_teacher.candidate) == ("teacher", "slm-adapter")
    vs_teacher = adapted.vs_teacher.core["exact_match_rate"]
    assert (vs_teacher.reference_rate, vs_teacher.candidate_rate, vs_teacher.delta) == (0.9, 1.0, -0.1)
    vs_slm = adapted.vs_slm.core["exact_match_rate"]
    # Rows 7 and 8: adapter hit, slm miss → b=0, c=2, p = 2 * (1/4) = 0.5.
    assert (vs_slm.reference_rate, vs_slm.candidate_rate, vs_slm.delta) == (0.8, 1.0, -0.2)
    assert vs_slm.to_json("slm", "slm-adapter")["discordant"] == {"slm_only": 0, "slm-adapter_only": 2}
    assert vs_slm.mcnemar_p == 0.5

    toolcall = decision.tracks["toolcall"].adapted["slm-adapter"].vs_slm.core["valid_call_rate"]
    # Adapter misses rows 0-4 that slm hits: b=5, c=0 → p = 2/32; the interval excludes 0.
    assert (toolcall.delta, toolcall.mcnemar_p) == (0.5, 0.0625)
    assert toolcall.interval_95[0] > 0
    assert toolcall.verdict.startswith("slm-adapter worse than slm, significant (95% interval [")
    # The rule reads only teacher vs base slm: the adapter's misses do not change toolcall's decision.
    assert decision.tracks["toolcall"].fine_tune == 0


def test_equal_track_does_not_fine_tune(eval_root: Path, price_table: Path) -> None:
    toolcall = run_decide(config(eval_root, price_table)).tracks["toolcall"]
    assert toolcall.fine_tune == 0
    assert toolcall.reason == (
        "slm equal to or above teacher on every core metric (valid_call_rate, name_match_rate, args_exact_rate)"
    )
    assert toolcall.teacher_mode == "replay (simulated)"
    for metric in ("valid_call_rate", "name_match_rate", "args_exact_rate"):
        result = toolcall.teacher_vs_slm.core[metric]
        assert (result.delta, result.interval_95, result.mcnemar_p) == (0.0, (0.0, 0.0), 1.0)
    assert toolcall.teacher_vs_slm.to_json()["info"] == {
        "args_lenient_rate": {"teacher": 1.0, "slm": 1.0, "delta": 0.0}
    }


def test_intervals_contain_delta_and_are_deterministic(eval_root: Path, price_table: Path) -> None:
    first, second = (run_decide(config(eval_root, price_table)) for _ in range(2))
    assert first.tracks == second.tracks
    for track in first.tracks.values():
        comparisons = [track.teacher_vs_slm, *(c for a in track.adapted.values() for c in (a.vs_teacher, a.vs_slm))]
        for comparison in comparisons:
            for result in comparison.core.values():
                low, high = result.interval_95
                assert low <= result.delta <= high


def test_cost_and_latency_side_by_side(eval_root: Path, price_table: Path) -> None:
    structured = run_decide(config(eval_root, price_table)).tracks["structured"]
    # teacher ('my-model' entry): mean 100 prompt x $2/1M + mean 20 completion x $8/1M = $0.00036/call.
    # slm and adapter: 5.0 s / 10 rows = 0.5 s/row x $3.6/h / 3600 s = $0.0005/call.
    assert structured.to_json()["latency_cost"] == {
        "latency_p50_s": {"teacher": 0.8, "slm": 0.3, "slm-adapter": 0.3},
        "latency_p95_s": {"teacher": 1.9, "slm": 0.45, "slm-adapter": 0.45},
        "cost_per_1k_calls_usd": {"teacher": 0.36, "slm": 0.5, "slm-adapter": 0.5},
    }
    assert structured.models["teacher"].tokens.to_json() == {
        "prompt": 1000,
        "completion": 200,
        "mean_prompt": 100.0,
        "mean_completion": 20.0,
    }
    assert "'my-model'" in structured.models["teacher"].cost_basis
    assert "box" in structured.models["slm"].cost_basis
    # A replayed teacher whose model is not in the table is priced with 'default': (100 x 1 + 20 x 4) / 1000.
    toolcall = run_decide(config(eval_root, price_table)).tracks["toolcall"]
    assert toolcall.models["teacher"].cost_per_1k_calls_usd == 0.18
    # An explicit price entry wins over the engine's model.
    forced = run_decide(config(eval_root, price_table, teacher_price_model="default")).tracks["structured"]
    assert forced.models["teacher"].cost_per_1k_calls_usd == 0.18


def test_decision_file_is_written_and_equals_the_result(eval_root: Path, price_table: Path) -> None:
    decision = run_decide(config(eval_root, price_table))
    decision_path = eval_root / "decision.json"
    assert json.loads(decision_path.read_text(encoding="utf-8")) == decision.to_json()
    assert decision.config.slm_hardware == "box" and decision.config.bootstrap_resamples == 10_000
    assert decision.price_table.to_json() == PRICES
    assert decision.missing == {}
    paths = [read.path for read in decision.files]
    assert len(paths) == 1 + 2 * 3 * 2  # price table + 2 files x 3 labels x 2 tracks
    assert str(eval_root / "structured" / "slm" / "predictions.jsonl") in paths  # outside the project: absolute
    assert all(len(read.sha256) == 64 for read in decision.files)
    assert decision.created_at.endswith("+00:00")


def test_decision_record_reads_back_the_same_file(eval_root: Path, price_table: Path) -> None:
    run_decide(config(eval_root, price_table))
    decision_path = eval_root / "decision.json"
    written = json.loads(decision_path.read_text(encoding="utf-8"))
    assert Decision.from_json(written, decision_path).to_json() == written
    # Same text, key order included: the record is a view of the file, not another format.
    again = json.dumps(Decision.read(decision_path).to_json(), indent=2, ensure_ascii=False) + "\n"
    assert again == decision_path.read_text(encoding="utf-8")


def test_eval_metrics_record_reads_back_the_same_file(eval_root: Path) -> None:
    metrics_path = eval_root / "structured" / "teacher" / "metrics.json"
    written = json.loads(metrics_path.read_text(encoding="utf-8"))
    record = EvalMetrics.from_json(written, metrics_path)
    assert record.to_json() == written and list(record.to_json()) == list(written)
    assert record.latency_s == Latency(0.8, 1.9, 1.0) and record.tokens.prompt == 1000


REMOVE = object()


@pytest.mark.parametrize(
    ("keys", "value", "message"),
    [
        (("tracks", "structured", "adapted", "slm-adapter", "vs_slm", "core", "exact_match_rate", "mcnemar_p"),
         REMOVE, "field 'tracks.structured.adapted.slm-adapter.vs_slm.core.exact_match_rate.mcnemar_p' missing"),
        (("tracks", "toolcall", "teacher_vs_slm", "core", "args_exact_rate"), REMOVE,
         "field 'tracks.toolcall.teacher_vs_slm.core.args_exact_rate' missing"),
        (("tracks", "toolcall", "models", "slm", "tokens", "prompt"), "1200",
         'field \'tracks.toolcall.models.slm.tokens.prompt\' must be an integer, got "1200"'),
        (("tracks", "structured", "FINE_TUNE"), 2, "field 'tracks.structured.FINE_TUNE' must be 0 or 1, got 2"),
        (("files", 3, "sha256"), REMOVE, "field 'files.3.sha256' missing"),
        (("price_table", "slm_usd_per_instance_hour", "box"), -1,
         "field 'price_table': field 'slm_usd_per_instance_hour.box' must be a non-negative number"),
    ],
)  # fmt: skip
def test_a_bad_decision_file_names_the_file_and_the_field(eval_root, price_table, keys, value, message) -> None:
    run_decide(config(eval_root, price_table))
    decision_path = eval_root / "decision.json"
    decision = json.loads(decision_path.read_text(encoding="utf-8"))
    parent = decision
    for key in keys[:-1]:
        parent = parent[key]
    if value is REMOVE:
        del parent[keys[-1]]
    else:
        parent[keys[-1]] = value
    decision_path.write_text(json.dumps(decision), encoding="utf-8")
    with pytest.raises(RecordError) as error:
        Decision.read(decision_path)
    assert str(error.value).startswith(f"{decision_path}: {message}")


@pytest.mark.parametrize(
    ("summary", "message"),
    [
        ({"latency_s": Latency(0.3, None, 0.31)}, "field 'latency_s.p95' is null (no row answered)"),
        ({"rows": True}, "field 'rows' must be an integer, got true"),
        ({"tokens": TokenCounts(1200.5, 250, None)}, "field 'tokens.prompt' must be an integer, got 1200.5"),  # type: ignore[arg-type]
        ({"engine": {"model": "x"}}, "field 'engine.kind' missing"),
    ],
)
def test_a_bad_metrics_file_names_the_file_and_the_field(eval_root, price_table, summary, message) -> None:
    folder = write_eval(eval_root, "structured", "slm", structured_answers("slm"), structured_rows(), **summary)
    with pytest.raises(DecideError) as error:
        run_decide(config(eval_root, price_table))
    assert str(error.value).startswith(f"{folder / 'metrics.json'}: {message}")
    assert str(error.value).endswith("re-run slm-swap eval --track structured --model slm")


def test_mismatched_rows_name_both_files(eval_root: Path, price_table: Path) -> None:
    rows = structured_rows()
    rows[3] = (rows[3][0] + " (edited)", rows[3][1])
    write_eval(eval_root, "structured", "slm", structured_answers("slm"), rows)
    with pytest.raises(DecideError) as error:
        run_decide(config(eval_root, price_table))
    message = str(error.value)
    assert f"{eval_root / 'structured' / 'teacher' / 'predictions.jsonl'}:4 and " in message
    assert f"{eval_root / 'structured' / 'slm' / 'predictions.jsonl'}:4: different 'prompt' at row 3" in message


def test_row_count_mismatch_names_both_files(eval_root: Path, price_table: Path) -> None:
    write_eval(eval_root, "toolcall", "slm", toolcall_answers("slm")[:9], toolcall_rows()[:9])
    with pytest.raises(DecideError, match=r"teacher/predictions\.jsonl has 10 rows but .*slm/predictions\.jsonl has 9"):
        run_decide(config(eval_root, price_table))


def test_stale_metrics_json_is_refused(eval_root: Path, price_table: Path) -> None:
    write_eval(eval_root, "structured", "slm", structured_answers("slm"), structured_rows(), rows=9)
    with pytest.raises(DecideError, match=r"slm/metrics\.json says rows=9 but .*slm/predictions\.jsonl has 10 lines"):
        run_decide(config(eval_root, price_table))


def test_metrics_json_that_disagrees_with_predictions_is_refused(eval_root: Path, price_table: Path) -> None:
    prompts, golds = zip(*structured_rows(), strict=True)
    metrics = score_rows("structured", list(golds), list(golds), list(prompts))  # as if every row were exact
    write_eval(eval_root, "structured", "slm", structured_answers("slm"), structured_rows(), metrics=metrics)
    with pytest.raises(
        DecideError, match=r"field 'metrics.exact_match_rate' is 1.0 but .*slm/predictions.jsonl re-scores to 0.800000"
    ):
        run_decide(config(eval_root, price_table))


def test_missing_slm_is_listed_with_the_command(eval_root: Path, price_table: Path) -> None:
    for name in ("predictions.jsonl", "metrics.json"):
        (eval_root / "toolcall" / "slm" / name).unlink()
    decision = run_decide(config(eval_root, price_table))
    assert decision.missing == {"toolcall": "no slm results: run slm-swap eval --track toolcall --model slm"}
    assert list(decision.tracks) == ["structured"] and decision.fine_tune == {"structured": 1}
    assert json.loads((eval_root / "decision.json").read_text(encoding="utf-8")) == decision.to_json()


def test_unknown_hardware_fails_before_reading_results(tmp_path: Path, price_table: Path) -> None:
    with pytest.raises(PriceTableError, match=r"prices\.json: field 'slm_usd_per_instance_hour' has no entry '8xB200'"):
        run_decide(DecideConfig(eval_root=tmp_path / "none", price_table_path=price_table, slm_hardware="8xB200"))


def test_decide_fine_tune_rule() -> None:
    assert decide_fine_tune({"a_rate": 0.0, "b_rate": -0.2}) == (
        0,
        "slm equal to or above teacher on every core metric (a_rate, b_rate)",
    )
    assert decide_fine_tune({"a_rate": 0.02, "b_rate": -0.2, "c_rate": 0.5})[0] == 1
    assert (
        decide_fine_tune({"a_rate": 0.02, "c_rate": 0.5})[1]
        == "slm below teacher on a_rate (delta 0.02), c_rate (delta 0.5)"
    )


def test_metric_verdict_words() -> None:
    assert metric_verdict(0.2, (0.1, 0.3), 50, "teacher", "slm") == (
        "slm worse than teacher, significant (95% interval [0.100, 0.300] excludes 0)"
    )
    assert metric_verdict(0.04, (-0.02, 0.1), 50, "teacher", "slm") == (
        "slm worse than teacher; 50 rows cannot tell them apart (95% interval [-0.020, 0.100] contains 0)"
    )
    assert metric_verdict(0.0, (0.0, 0.0), 50, "teacher", "slm").startswith("slm equal to teacher on these 50 rows")


def test_default_price_table_loads_and_env_overrides(tmp_path: Path, price_table: Path) -> None:
    default = load_price_table(WORKSPACE / "price_table.json")
    assert default.teacher_price("gpt-4o")[1].output_usd_per_1m == 10.0
    assert default.teacher_price("some-other-model")[0] == "default"
    assert default.slm_hourly_usd("cpu-2core") == 0.10
    assert resolve_price_table_path(None, environ={}) == WORKSPACE / "price_table.json"
    assert resolve_price_table_path(None, environ={"SLM_SWAP_PRICE_TABLE": str(price_table)}) == price_table
    assert (
        resolve_price_table_path(tmp_path / "flag.json", environ={"SLM_SWAP_PRICE_TABLE": "x"})
        == tmp_path / "flag.json"
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({**PRICES, "slm_usd_per_instance_hour": {"box": "3.6"}}, "field 'slm_usd_per_instance_hour.box' must be a"),
        (
            {**PRICES, "teacher_usd_per_1m_tokens": {"default": {"input": -1, "output": 1}}},
            "field 'teacher_usd_per_1m_tokens.default.input' must be a non-negative number",
        ),
        ({**PRICES, "teacher_usd_per_1m_tokens": {"x": {"input": 1, "output": 1}}}, "needs a 'default' entry"),
        (
            {"teacher_usd_per_1m_tokens": PRICES["teacher_usd_per_1m_tokens"]},
            "missing field 'slm_usd_per_instance_hour'",
        ),
        ({**PRICES, "slm_usd_per_hour": {}}, "unknown field(s) 'slm_usd_per_hour'"),
    ],
)
def test_bad_price_table_names_file_and_field(tmp_path: Path, table: dict, message: str) -> None:
    path = tmp_path / "bad_prices.json"
    path.write_text(json.dumps(table), encoding="utf-8")
    with pytest.raises(PriceTableError) as error:
        load_price_table(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_parity_verdicts_beside_the_rule(eval_root: Path, price_table: Path, monkeypatch) -> None:
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "SLM_SWAP_REQUIRE_LANGFUSE"):
        monkeypatch.delenv(name, raising=False)
    decision = run_decide(config(eval_root, price_table))
    structured = decision.tracks["structured"]
    assert structured.fine_tune == 1  # the seed's rule, unchanged
    parity = structured.teacher_vs_slm.parity
    assert parity is not None and parity.margin == 0.02 and decision.config.parity_margin == 0.02
    # json_valid: the slm alone hits row 9 (b=0, c=1): no resample puts it below the teacher, bounds (-0.3, 0).
    valid = parity.core["json_valid_rate"]
    assert (valid.delta_lower_95, valid.delta_upper_95, valid.verdict) == (-0.3, 0.0, "not worse")
    # exact_match: b=2, c=1 of 10 → bounds (-0.2, 0.4), cannot tell; 6.182557 * 0.29 / 0.0064 = 280.2 → 281 rows.
    exact = parity.core["exact_match_rate"]
    assert (exact.delta_lower_95, exact.delta_upper_95, exact.verdict, exact.rows_needed) == (
        -0.2, 0.4, "cannot tell", 281
    )  # fmt: skip
    assert (parity.overall.verdict, parity.overall.rows_needed) == ("cannot tell", 281)
    # The adapter hits every row (b=0, c=1 on exact_match, as json_valid above): not worse on both.
    adapted = structured.adapted["slm-adapter"]
    assert adapted.vs_teacher.parity is not None and adapted.vs_teacher.parity.overall.verdict == "not worse"
    assert adapted.vs_slm.parity is None  # parity is a verdict against the teacher only
    assert list(structured.parity()) == ["slm", "slm-adapter"]
    toolcall = decision.tracks["toolcall"]
    # slm = teacher on every row: no discordance, bounds (0, 0), not worse; the adapter misses rows 0-4.
    assert toolcall.parity()["slm"].overall.verdict == "not worse"
    assert toolcall.parity()["slm-adapter"].overall.words == (
        "worse than the teacher by more than 2 points on valid_call_rate, name_match_rate, args_exact_rate "
        "(95% one-sided paired bootstrap bound)"
    )
    # The decision event carries the verdicts in its metadata (local trace file: no Langfuse keys here).
    [trace_file] = (eval_root / "traces").glob("decide-*.json")
    events = {event["name"]: event for event in json.loads(trace_file.read_text(encoding="utf-8"))["events"]}
    metadata = events["decision structured"]["metadata"]["parity"]
    assert metadata["slm"] == {
        "margin": 0.02,
        "overall": "cannot tell",
        "overall_words": parity.overall.words,
        "rows_needed": 281,
        "json_valid_rate": "not worse",
        "exact_match_rate": "cannot tell",
    }
    assert metadata["slm-adapter"]["overall"] == "not worse"


def test_a_wider_margin_decides_and_a_margin_in_points_is_refused(eval_root: Path, price_table: Path) -> None:
    # At a 50-point margin the upper bound 0.4 of exact_match is below it: not worse; FINE_TUNE still 1.
    structured = run_decide(config(eval_root, price_table, parity_margin=0.5)).tracks["structured"]
    assert structured.fine_tune == 1
    assert structured.teacher_vs_slm.parity.overall.words == (  # type: ignore[union-attr]
        "not worse than the teacher by more than 50 points on every core metric (95% one-sided paired bootstrap bound)"
    )
    with pytest.raises(DecideError, match=r"above 0 and below 1 \(0\.02 is 2 points\), got 2"):
        run_decide(config(eval_root, price_table, parity_margin=2))
