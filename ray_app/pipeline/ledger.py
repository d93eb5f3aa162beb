"""Which pipeline steps are done: `<eval_root>/pipeline_state.json` maps a step to the hash of its inputs.

A step is skipped when its recorded input hash equals the current one and every output it wrote
is still there; the run says so with the hash. Evaluations and training keep their own run keys
(in metrics.json / training.json) and are reused by those; this ledger covers the other steps.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ray_app.atomic_files import atomic_write_json
from ray_app.json_text import canonical_json


def inputs_hash(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(inputs).encode()).hexdigest()


def file_hash(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


class StepLedger:
    def __init__(self, path: Path):
        self.path = path
        self.state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def is_done(self, step: str, digest: str, outputs: list[Path]) -> bool:
        entry = self.state.get(step)
        return bool(entry and entry.get("inputs_sha256") == digest and all(Path(p).exists() for p in outputs))

    def record(self, step: str, digest: str, outputs: list[Path]) -> None:
        self.state[step] = {"inputs_sha256": digest, "outputs": [str(path) for path in outputs]}
        atomic_write_json(self.path, self.state)
