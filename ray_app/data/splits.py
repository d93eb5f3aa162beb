"""Deterministic train/val/test assignment and writing of split files.

Each candidate row carries a split key (the user request behind its prompt). Candidates are
ordered by sha256 of that key and cut into test, val and train in that order, so the files are
byte-identical on every run and machine, and a row's split does not depend on input order.
Using the user request (not the whole prompt) as the key keeps one request in the same split in
both tracks, so a structured training row never leaks into the toolcall test set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ray_app.atomic_files import atomic_write_jsonl
from ray_app.data.rows import SPLITS, Row, Track, row_problem

SPLIT_HASH_SALT = "slm-swap/split/v1\n"


@dataclass(frozen=True)
class SplitSizes:
    train: int = 300
    val: int = 50
    test: int = 50

    def total(self) -> int:
        return self.train + self.val + self.test

    def scaled_to(self, available: int) -> SplitSizes:
        """Same proportions for a smaller pool (trace exports are often smaller than the defaults)."""
        if available >= self.total():
            return self
        if available < 3:
            return SplitSizes(train=available, val=0, test=0)
        test = max(1, round(available * self.test / self.total()))
        val = max(1, round(available * self.val / self.total()))
        return SplitSizes(train=available - test - val, val=val, test=test)


@dataclass(frozen=True)
class Candidate:
    split_key: str
    row: Row


def split_hash(split_key: str) -> str:
    return hashlib.sha256((SPLIT_HASH_SALT + split_key).encode("utf-8")).hexdigest()


def dedup_candidates(candidates: list[Candidate]) -> tuple[list[Candidate], int]:
    """Keep the first candidate per prompt and per split key; return them and how many were dropped."""
    seen_prompts: set[str] = set()
    seen_keys: set[str] = set()
    kept = []
    for candidate in candidates:
        if candidate.row.prompt in seen_prompts or candidate.split_key in seen_keys:
            continue
        seen_prompts.add(candidate.row.prompt)
        seen_keys.add(candidate.split_key)
        kept.append(candidate)
    return kept, len(candidates) - len(kept)


def assign_splits(candidates: list[Candidate], sizes: SplitSizes) -> dict[str, list[Row]]:
    """Order by hash of the split key; cut test, then val, then train. Smaller pools fill test first."""
    unique, _ = dedup_candidates(candidates)
    ordered = sorted(unique, key=lambda candidate: (split_hash(candidate.split_key), candidate.row.prompt))
    test = ordered[: sizes.test]
    val = ordered[sizes.test : sizes.test + sizes.val]
    train = ordered[sizes.test + sizes.val : sizes.total()]
    return {"train": [c.row for c in train], "val": [c.row for c in val], "test": [c.row for c in test]}


def write_track_splits(output_root: Path, track: Track, splits: dict[str, list[Row]]) -> dict[str, Path]:
    """Validate every row, then write `<root>/<track>/<split>.jsonl` (each file atomically)."""
    for split, rows in splits.items():
        for index, row in enumerate(rows):
            problem = row_problem(row.to_json(), track)
            if problem:
                raise ValueError(f"{track}/{split} row {index}: {problem} (prompt starts {row.prompt[:80]!r})")
    paths = {}
    for split in SPLITS:
        path = output_root / track / f"{split}.jsonl"
        atomic_write_jsonl(path, (row.to_json() for row in splits.get(split, [])))
        paths[split] = path
    return paths
