"""The codeact track's own pieces of the train step (`train.run_train` does the rest, as for v0):

- the gate reads the CodeAct evaluation's decision (`05_eval/codeact/decision.json`, key `fine_tune`);
- the data: CodeAct rows (`codeact_rows`), tokenized on the driver with the base model's tokenizer into
  `input_ids` + `labels` (`codeact_examples`: loss on the student's turns, or on every token with
  `loss_on="all"`), so the counts are known, printed and recorded before any compute, and the workers
  train exactly these examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ray_app.data.rows import DatasetError
from ray_app.paths import project_relative
from ray_app.record_fields import RecordFields, read_json_file
from ray_app.train.codeact_examples import TokenCounts, codeact_examples
from ray_app.train.codeact_rows import read_codeact_split
from ray_app.train.config import TrainConfig

console = Console(stderr=True)
SHOWN_IDS = 5  # left-out rows named on the console; training.json lists them all


def codeact_fine_tune_gate(config: TrainConfig) -> tuple[bool, str]:
    """(train?, why) from the CodeAct decision's `fine_tune` (0/1); --force is handled by the caller."""
    path = config.decision_file
    if not path.is_file():
        return (
            False,
            f"no decision at {project_relative(path)}: evaluate the student on CodeAct tasks first, or --force",
        )
    fields = RecordFields(read_json_file(path), path)
    fine_tune = fields.integer("fine_tune")
    if fine_tune not in (0, 1):
        raise fields.error("fine_tune", "0 or 1")
    reason = fields.value.get("reason")
    because = f" ({reason})" if isinstance(reason, str) and reason else ""
    if fine_tune == 1:
        return True, f"codeact decision says FINE_TUNE=1{because}"
    return False, f"codeact decision says FINE_TUNE=0{because}; --force trains anyway"


def read_codeact_rows(config: TrainConfig, train_path: Path, val_path: Path) -> tuple[list[dict], list[dict]]:
    """The train and val rows (bad data stops here); val may be missing or empty (no val loss then)."""
    train_rows = read_codeact_split(train_path)[: config.max_train_rows]
    val_rows = read_codeact_split(val_path, required=False)[: config.max_val_rows]
    return train_rows, val_rows


def codeact_worker_data(
    config: TrainConfig, model_path: Path, train_path: Path, train_rows: list[dict], val_rows: list[dict]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the workers train on, what training.json records): pre-tokenized examples and their counts."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_examples, train_counts = codeact_examples(tokenizer, train_rows, config.loss_on, config.max_length)
    val_examples, val_counts = codeact_examples(tokenizer, val_rows, config.loss_on, config.max_length)
    for split, counts in (("train", train_counts), ("val", val_counts)):
        print_left_out(config, split, counts)
    if not train_examples:
        raise DatasetError(
            f"{train_path}: no row carries loss: all {train_counts.rows} are fully masked "
            f"({', '.join(sorted(set(train_counts.fully_masked.values())))})"
        )
    console.print(
        f"train {config.track}: {train_counts.examples} examples, {train_counts.trained_tokens} tokens with loss "
        f"(on {'assistant turns' if config.loss_on == 'assistant' else 'every token'}), "
        f"{train_counts.masked_tokens} masked",
        highlight=False,
        soft_wrap=True,
    )
    record = {
        "loss_on": config.loss_on,
        "token_counts": {"train": train_counts.to_json(), "val": val_counts.to_json()},
    }
    return {"train_examples": train_examples, "val_examples": val_examples}, record


def print_left_out(config: TrainConfig, split: str, counts: TokenCounts) -> None:
    if counts.fully_masked:
        shown = [f"{tid} ({why})" for tid, why in sorted(counts.fully_masked.items())[:SHOWN_IDS]]
        more = len(counts.fully_masked) - len(shown)
        console.print(
            f"train {config.track}: {len(counts.fully_masked)} of {counts.rows} {split} rows fully masked, left out: "
            + "; ".join(shown)
            + (f"; and {more} more (training.json lists them)" if more > 0 else ""),
            highlight=False,
            soft_wrap=True,
        )
    if counts.truncated:
        console.print(
            f"train {config.track}: {len(counts.truncated)} {split} rows longer than max_length {config.max_length} "
            f"cut after their last whole assistant turn ({sum(counts.truncated.values())} tokens cut)",
            highlight=False,
            soft_wrap=True,
        )
