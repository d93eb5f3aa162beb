"""`--save` of the live compare: the same files `slm-swap eval` writes, from the live run's records.

`<eval_root>/<track>/<label>/predictions.jsonl` and `timings.jsonl` come from
`PredictionStore.finish` (split order, atomic, latency kept apart) and `metrics.json` has the
fields `run_eval` writes, under the same run key, so `slm-swap decide` reads them as it reads an
evaluation and `slm-swap eval` on the same rows and settings finds them up to date.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray_app.atomic_files import atomic_write_json
from ray_app.eval.evaluate import eval_metrics_record
from ray_app.eval.prediction_store import PredictionStore
from ray_app.metrics.metrics_record import METRICS_FILE


def save_side(
    output_dir: Path,
    *,
    track: str,
    label: str,
    split: str,
    records_by_index: dict[int, dict[str, Any]],
    expected_rows: int,
    elapsed_s: float,
    engine_description: dict[str, Any],
    is_teacher: bool,
    run_key: str,
    identity: dict[str, Any],
    config: Any,
) -> Path:
    """Write predictions.jsonl, timings.jsonl and metrics.json of one side; return metrics.json's path.

    The store is built from the finished records (no partial file: an interrupted live run saves
    nothing); `finish` also drops a stale partial run left in the folder by an interrupted eval.
    """
    store = PredictionStore(folder=output_dir, run_key=run_key, records=dict(records_by_index), elapsed_s=elapsed_s)
    records = store.finish(expected_rows)
    record = eval_metrics_record(
        track=track,
        label=label,
        split=split,
        records=records,
        elapsed_s=elapsed_s,
        engine_description=engine_description,
        is_teacher=is_teacher,
        run_key=run_key,
        identity=identity,
        predictions_path=store.predictions_path,
        config=config,
    )
    return atomic_write_json(output_dir / METRICS_FILE, record.to_json())
