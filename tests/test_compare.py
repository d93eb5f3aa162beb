"""The compare step on hand-made eval folders: deltas, intervals, McNemar, costs, the decision file.

Fixture (10 rows per track, `<tmp>/05_eval/<track>/<label>/`):
- structured: teacher exact on rows 0-8, row 9 not JSON; slm exact on 0-6 and 9, rows 7-8 valid but
  wrong; slm-adapter exact everywhere. So slm is worse on exact_match (8 vs 9) and better on
  json_valid (10 vs 9): FINE_TUNE = 1 naming only exact_match_rate.
- toolcall: teacher and slm exact everywhere (FINE_TUNE = 0); slm-adapter answers nothing on rows 0-4.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ray_app.eval.compare import CompareConfig, CompareError, decide_fine_tune, metric_verdict, run_compare
from ray_app.eval.price_table import PriceTableError, load_price_table, resolve_price_table_path
from ray_app.metrics import score_rows
from ray_app.paths import WORKSPACE
from ray_app.prompts import format_tool_call, structured_prompt, toolcall_prompt
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
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "track": track,
                "model_label": label,
                "split": "test",
                "rows": len(records),
                "metrics": metrics,
                "latency_s": {"p50": 0.8, "p95": 1.9, "mean": 1.0}
                if teacher
                else {"p50": 0.3, "p95": 0.45, "mean": 0.31},
                "tokens": {"prompt": 1000, "completion": 200} if teacher else {"prompt": 1200, "completion": 250},
                "wall_time_s": 2.0 if teacher else 5.0,
                "engine": ENGINES.get((track, label), {"kind": "transformers", "simulated": False}),
                **summary,
            }
        ),
        encoding="utf-8",
    )
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


def config(eval_root: Path, price_table: Path, **overrides: Any) -> CompareConfig:
    return CompareConfig(eval_root=eval_root, price_table_path=price_table, slm_hardware="box", **overrides)


def test_structured_decision_hand_computed(eval_root: Path, price_table: Path) -> None:
    decision = run_compare(config(eval_root, price_table))
    structured = decision["tracks"]["structured"]
    assert decision["FINE_TUNE"] == {"structured": 1, "toolcall": 0}
    assert structured["FINE_TUNE"] == 1
    assert structured["reason"] == "slm below teacher on exact_match_rate (delta 0.1)"
    assert structured["rows"] == ROWS
    assert structured["teacher_mode"] == "azure"

    exact = structured["teacher_vs_slm"]["core"]["exact_match_rate"]
    assert (exact["teacher"], exact["slm"], exact["delta"]) == (0.9, 0.8, 0.1)
    # Discordant rows: 7 and 8 (teacher only), 9 (slm only): p = 2 * P(X <= 1), X ~ Bin(3, 1/2) = 1.
    assert exact["discordant"] == {"teacher_only": 2, "slm_only": 1}
    assert exact["mcnemar_p"] == 1.0
    assert exact["interval_95"][0] <= 0 < 0.1 <= exact["interval_95"][1]
    assert exact["verdict"].startswith("slm worse than teacher; 10 rows cannot tell them apart (95% interval [")

    valid = structured["teacher_vs_slm"]["core"]["json_valid_rate"]
    assert (valid["teacher"], valid["slm"], valid["delta"]) == (0.9, 1.0, -0.1)
    assert valid["discordant"] == {"teacher_only": 0, "slm_only": 1} and valid["mcnemar_p"] == 1.0
    assert valid["verdict"].startswith("slm better than teacher; 10 rows cannot tell them apart")

    # field_f1: teacher P = 18/18, R = 18/20; slm P = R = 18/20.
    f1 = structured["teacher_vs_slm"]["info"]["field_f1"]
    assert f1 == {"teacher": round(36 / 38, 6), "slm": 0.9, "delta": round(36 / 38 - 0.9, 6)}
    assert set(structured["teacher_vs_slm"]["info"]) == {"field_precision", "field_recall", "field_f1"}


def test_adapted_models_are_compared_with_teacher_and_base_slm(eval_root: Path, price_table: Path) -> None:
    decision = run_compare(config(eval_root, price_table))
    adapted = decision["tracks"]["structured"]["adapted"]["slm-adapter"]
    vs_teacher = adapted["vs_teacher"]["core"]["exact_match_rate"]
    assert (vs_teacher["teacher"], vs_teacher["slm-adapter"], vs_teacher["delta"]) == (0.9, 1.0, -0.1)
    vs_slm = adapted["vs_slm"]["core"]["exact_match_rate"]
    # Rows 7 and 8: adapter hit, slm miss → b=0, c=2, p = 2 * (1/4) = 0.5.
    assert (vs_slm["slm"], vs_slm["slm-adapter"], vs_slm["delta"]) == (0.8, 1.0, -0.2)
    assert vs_slm["discordant"] == {"slm_only": 0, "slm-adapter_only": 2} and vs_slm["mcnemar_p"] == 0.5

    toolcall = decision["tracks"]["toolcall"]["adapted"]["slm-adapter"]["vs_slm"]["core"]["valid_call_rate"]
    # Adapter misses rows 0-4 that slm hits: b=5, c=0 → p = 2/32; the interval excludes 0.
    assert (toolcall["delta"], toolcall["mcnemar_p"]) == (0.5, 0.0625)
    assert toolcall["interval_95"][0] > 0
    assert toolcall["verdict"].startswith("slm-adapter worse than slm, significant (95% interval [")
    # The rule reads only teacher vs base slm: the adapter's misses do not change toolcall's decision.
    assert decision["tracks"]["toolcall"]["FINE_TUNE"] == 0


def test_equal_track_does_not_fine_tune(eval_root: Path, price_table: Path) -> None:
    toolcall = run_compare(config(eval_root, price_table))["tracks"]["toolcall"]
    assert toolcall["FINE_TUNE"] == 0
    assert toolcall["reason"] == (
        "slm equal to or above teacher on every core metric (valid_call_rate, name_match_rate, args_exact_rate)"
    )
    assert toolcall["teacher_mode"] == "replay (simulated)"
    for metric in ("valid_call_rate", "name_match_rate", "args_exact_rate"):
        result = toolcall["teacher_vs_slm"]["core"][metric]
        assert (result["delta"], result["interval_95"], result["mcnemar_p"]) == (0.0, [0.0, 0.0], 1.0)
    assert toolcall["teacher_vs_slm"]["info"] == {"args_lenient_rate": {"teacher": 1.0, "slm": 1.0, "delta": 0.0}}


def test_intervals_contain_delta_and_are_deterministic(eval_root: Path, price_table: Path) -> None:
    first, second = (run_compare(config(eval_root, price_table)) for _ in range(2))
    assert first["tracks"] == second["tracks"]
    for track in first["tracks"].values():
        comparisons = [track["teacher_vs_slm"], *(c for a in track["adapted"].values() for c in a.values())]
        for comparison in comparisons:
            for result in comparison["core"].values():
                low, high = result["interval_95"]
                assert low <= result["delta"] <= high


def test_cost_and_latency_side_by_side(eval_root: Path, price_table: Path) -> None:
    structured = run_compare(config(eval_root, price_table))["tracks"]["structured"]
    # teacher ('my-model' entry): mean 100 prompt x $2/1M + mean 20 completion x $8/1M = $0.00036/call.
    # slm and adapter: 5.0 s / 10 rows = 0.5 s/row x $3.6/h / 3600 s = $0.0005/call.
    assert structured["latency_cost"] == {
        "latency_p50_s": {"teacher": 0.8, "slm": 0.3, "slm-adapter": 0.3},
        "latency_p95_s": {"teacher": 1.9, "slm": 0.45, "slm-adapter": 0.45},
        "cost_per_1k_calls_usd": {"teacher": 0.36, "slm": 0.5, "slm-adapter": 0.5},
    }
    assert structured["models"]["teacher"]["tokens"] == {
        "prompt": 1000,
        "completion": 200,
        "mean_prompt": 100.0,
        "mean_completion": 20.0,
    }
    assert "'my-model'" in structured["models"]["teacher"]["cost_basis"]
    assert "box" in structured["models"]["slm"]["cost_basis"]
    # A replayed teacher whose model is not in the table is priced with 'default': (100 x 1 + 20 x 4) / 1000.
    toolcall = run_compare(config(eval_root, price_table))["tracks"]["toolcall"]
    assert toolcall["latency_cost"]["cost_per_1k_calls_usd"]["teacher"] == 0.18
    # An explicit price entry wins over the engine's model.
    forced = run_compare(config(eval_root, price_table, teacher_price_model="default"))["tracks"]["structured"]
    assert forced["latency_cost"]["cost_per_1k_calls_usd"]["teacher"] == 0.18


def test_decision_file_is_written_and_equals_the_result(eval_root: Path, price_table: Path) -> None:
    decision = run_compare(config(eval_root, price_table))
    assert json.loads((eval_root / "decision.json").read_text(encoding="utf-8")) == decision
    assert decision["config"]["slm_hardware"] == "box" and decision["config"]["bootstrap_resamples"] == 10_000
    assert decision["price_table"] == PRICES
    assert decision["missing"] == {}
    paths = [entry["path"] for entry in decision["files"]]
    assert len(paths) == 1 + 2 * 3 * 2  # price table + 2 files x 3 labels x 2 tracks
    assert str(eval_root / "structured" / "slm" / "predictions.jsonl") in paths  # outside the project: absolute
    assert all(len(entry["sha256"]) == 64 for entry in decision["files"])
    assert decision["created_at"].endswith("+00:00")


def test_mismatched_rows_name_both_files(eval_root: Path, price_table: Path) -> None:
    rows = structured_rows()
    rows[3] = (rows[3][0] + " (edited)", rows[3][1])
    write_eval(eval_root, "structured", "slm", structured_answers("slm"), rows)
    with pytest.raises(CompareError) as error:
        run_compare(config(eval_root, price_table))
    message = str(error.value)
    assert f"{eval_root / 'structured' / 'teacher' / 'predictions.jsonl'}:4 and " in message
    assert f"{eval_root / 'structured' / 'slm' / 'predictions.jsonl'}:4: different 'prompt' at row 3" in message


def test_row_count_mismatch_names_both_files(eval_root: Path, price_table: Path) -> None:
    write_eval(eval_root, "toolcall", "slm", toolcall_answers("slm")[:9], toolcall_rows()[:9])
    with pytest.raises(
        CompareError, match=r"teacher/predictions\.jsonl has 10 rows but .*slm/predictions\.jsonl has 9"
    ):
        run_compare(config(eval_root, price_table))


def test_stale_metrics_json_is_refused(eval_root: Path, price_table: Path) -> None:
    write_eval(eval_root, "structured", "slm", structured_answers("slm"), structured_rows(), rows=9)
    with pytest.raises(CompareError, match=r"slm/metrics\.json says rows=9 but .*slm/predictions\.jsonl has 10 lines"):
        run_compare(config(eval_root, price_table))


def test_metrics_json_that_disagrees_with_predictions_is_refused(eval_root: Path, price_table: Path) -> None:
    prompts, golds = zip(*structured_rows(), strict=True)
    metrics = score_rows("structured", list(golds), list(golds), list(prompts))  # as if every row were exact
    write_eval(eval_root, "structured", "slm", structured_answers("slm"), structured_rows(), metrics=metrics)
    with pytest.raises(
        CompareError, match=r"field 'metrics.exact_match_rate' is 1.0 but .*slm/predictions.jsonl re-scores to 0.800000"
    ):
        run_compare(config(eval_root, price_table))


def test_missing_slm_is_listed_with_the_command(eval_root: Path, price_table: Path) -> None:
    for name in ("predictions.jsonl", "metrics.json"):
        (eval_root / "toolcall" / "slm" / name).unlink()
    decision = run_compare(config(eval_root, price_table))
    assert decision["missing"] == {"toolcall": "no slm results: run slm-swap eval --track toolcall --model slm"}
    assert list(decision["tracks"]) == ["structured"] and decision["FINE_TUNE"] == {"structured": 1}
    assert json.loads((eval_root / "decision.json").read_text(encoding="utf-8")) == decision


def test_unknown_hardware_fails_before_reading_results(tmp_path: Path, price_table: Path) -> None:
    with pytest.raises(PriceTableError, match=r"prices\.json: field 'slm_usd_per_instance_hour' has no entry '8xB200'"):
        run_compare(CompareConfig(eval_root=tmp_path / "none", price_table_path=price_table, slm_hardware="8xB200"))


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
