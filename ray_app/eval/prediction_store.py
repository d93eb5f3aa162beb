"""Predictions of one eval run on disk: appended batch by batch, resumable, finished atomically.

While a run works, finished batches are appended to `predictions.partial.jsonl` (one write and
fsync per batch) and `run_state.json` records the run key (what the numbers depend on) and the
elapsed time. A restarted run with the same key keeps every complete line and recomputes only the
missing rows; a torn last line from a kill is cut off. When every row is there, `predictions.jsonl`
is written atomically in split order, without the measured `latency_s` (which goes to
`timings.jsonl`), so the same evaluation run twice gives byte-identical predictions; then the
partial files are removed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_app.atomic_files import atomic_write_json, atomic_write_jsonl, complete_jsonl_lines

PARTIAL_NAME = "predictions.partial.jsonl"
STATE_NAME = "run_state.json"
PREDICTIONS_NAME = "predictions.jsonl"
TIMINGS_NAME = "timings.jsonl"


@dataclass
class PredictionStore:
    folder: Path
    run_key: str
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    elapsed_s: float = 0.0
    discarded_reason: str | None = None

    @property
    def partial_path(self) -> Path:
        return self.folder / PARTIAL_NAME

    @property
    def state_path(self) -> Path:
        return self.folder / STATE_NAME

    @property
    def predictions_path(self) -> Path:
        return self.folder / PREDICTIONS_NAME

    @property
    def timings_path(self) -> Path:
        return self.folder / TIMINGS_NAME

    @classmethod
    def open(cls, folder: Path, run_key: str) -> PredictionStore:
        """Load what an earlier run with the same key finished; discard a partial run of another key."""
        store = cls(folder=folder, run_key=run_key)
        folder.mkdir(parents=True, exist_ok=True)
        if store.state_path.is_file() and store.partial_path.is_file():
            state = json.loads(store.state_path.read_text(encoding="utf-8"))
            if state.get("run_key") == run_key:
                store.elapsed_s = float(state.get("elapsed_s", 0.0))
                store._load_partial()
            else:
                store.discarded_reason = "an unfinished run with other settings was discarded"
                store.partial_path.unlink()
        elif store.partial_path.is_file():
            store.partial_path.unlink()
        atomic_write_json(store.state_path, {"run_key": run_key, "elapsed_s": store.elapsed_s})
        return store

    def _load_partial(self) -> None:
        for record in complete_jsonl_lines(self.partial_path, cut_torn_tail=True):
            self.records[int(record["index"])] = record

    def append(self, records: list[dict[str, Any]], elapsed_s: float) -> None:
        """Append one finished batch in a single write, then record the time spent."""
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        with self.partial_path.open("a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        for record in records:
            self.records[int(record["index"])] = record
        self.elapsed_s += elapsed_s
        atomic_write_json(self.state_path, {"run_key": self.run_key, "elapsed_s": self.elapsed_s})

    def finish(self, expected_rows: int) -> list[dict[str, Any]]:
        """Write predictions.jsonl and timings.jsonl in split order (atomically); drop the partial files."""
        missing = [index for index in range(expected_rows) if index not in self.records]
        if missing:
            raise RuntimeError(f"{len(missing)} rows have no prediction yet (first: {missing[:5]})")
        ordered = [self.records[index] for index in range(expected_rows)]
        atomic_write_jsonl(self.timings_path, ({"index": r["index"], "latency_s": r["latency_s"]} for r in ordered))
        atomic_write_jsonl(
            self.predictions_path, ({key: value for key, value in r.items() if key != "latency_s"} for r in ordered)
        )
        self.partial_path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        return ordered
