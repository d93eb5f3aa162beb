"""Phase II fine-tuning of the codeact adapter: loss masks on CodeAct rows (real SmolLM2 tokenizer), fully
masked and too-long rows, the loss_on="all" ablation through TRL's collator, the gate, bad data, and real
`slm-swap train --track codeact` runs on Ray Train with a tiny model (adapter, training.json, kill and resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from ray_app.cli import app
from ray_app.data.rows import DatasetError
from ray_app.engines.slm import prompt_ids
from ray_app.paths import PROJECT_ROOT
from ray_app.record_fields import RecordError
from ray_app.train.codeact_examples import IGNORE_INDEX, codeact_examples, codeact_training_example, end_of_turn_text
from ray_app.train.config import TrainConfig
from ray_app.train.train import fine_tune_gate, run_train
from tests.tiny_model import TOKENIZER_DIR  # SmolLM2-135M-Instruct's own tokenizer files and chat template
from tests.train_checkpoints import wait_for_checkpoint

SYSTEM = "Solve the task by writing Python. SYSTEM-TEXT"
TASK = "Return the order as JSON. TASK-TEXT\n\nRequest: a medium order from Chicago."
FIRST = "Thought: I will answer.\n<code>\nfinal_answer(answer)\n</code>"
OBSERVATION = "Observation: Error: The variable `answer` is not defined. OBSERVATION-TEXT"
SECOND = "Thought: Fix it.\n<code>\nfinal_answer({'store': 'Chicago', 'size': 'medium'})\n</code>"


@pytest.fixture(autouse=True)
def no_langfuse(monkeypatch):
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_HOST", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def codeact_row(trajectory_id: str, *turns: str, request: str = TASK) -> dict:
    """A row as `codeact.trajectory_dataset` writes it: system, task, then assistant / observation turns."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request}]
    for index, turn in enumerate(turns):
        if index % 2:
            messages.append({"role": "user", "content": turn, "observation": True})
        else:
            messages.append({"role": "assistant", "content": turn})
    return {
        "trajectory_id": trajectory_id, "task_id": f"task-{trajectory_id}", "kind": "structured",
        "model": "simulated-teacher", "source_trace_id": f"trace-{trajectory_id}", "recovered": len(turns) > 1,
        "messages": messages,
    }  # fmt: skip


def labelled_runs(labels: list[int]) -> list[list[int]]:
    """The contiguous runs of tokens that carry loss."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


def test_the_tokens_with_loss_are_exactly_the_assistant_turns(tokenizer):
    row = codeact_row("t1", FIRST, OBSERVATION, SECOND)
    assert end_of_turn_text(tokenizer) == "<|im_end|>"  # read off SmolLM2's ChatML template
    example = codeact_training_example(tokenizer, row["messages"])
    # Each run of trained tokens decodes to one assistant turn and its end-of-turn token, nothing else.
    assert [tokenizer.decode(run) for run in labelled_runs(example.labels)] == [
        FIRST + "<|im_end|>",
        SECOND + "<|im_end|>",
    ]
    trained_text = tokenizer.decode([label for label in example.labels if label != IGNORE_INDEX])
    assert not any(text in trained_text for text in ("SYSTEM-TEXT", "TASK-TEXT", "OBSERVATION-TEXT", "assistant"))
    assert example.labels[-1] == IGNORE_INDEX  # the newline the template writes after <|im_end|>
    # The tokens are the ones evaluation and Serve feed the model: each assistant turn starts right where the
    # prompt of the conversation so far (with the generation prompt) ends.
    plain = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    full_text = tokenizer.apply_chat_template(plain, tokenize=False)
    assert example.input_ids == tokenizer(full_text, add_special_tokens=False)["input_ids"]
    for index in (2, 4):
        prompt = prompt_ids(tokenizer, plain[:index])
        assert example.input_ids[: len(prompt)] == prompt and example.labels[len(prompt) - 1] == IGNORE_INDEX
        assert example.labels[len(prompt)] != IGNORE_INDEX
    assert example.trained_tokens == sum(len(run) for run in labelled_runs(example.labels))
    assert example.trained_tokens + example.masked_tokens == len(example.input_ids) == example.full_tokens


def test_loss_on_all_labels_every_token_but_the_padding(tokenizer):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = [codeact_row("long", FIRST, OBSERVATION, SECOND), codeact_row("short", FIRST)]
    examples, counts = codeact_examples(tokenizer, rows, "all", max_length=2048)
    assert [e["labels"] for e in examples] == [e["input_ids"] for e in examples]
    assert counts.masked_tokens == 0 and counts.trained_tokens == sum(len(e["input_ids"]) for e in examples)
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(examples)  # what SFTTrainer uses
    real = batch["attention_mask"].bool()
    assert (batch["labels"][real] == batch["input_ids"][real]).all()
    assert (batch["labels"][~real] == IGNORE_INDEX).all() and (~real).sum() > 0
    # The same rows with loss on the assistant turns: same input ids, fewer labels.
    masked, masked_counts = codeact_examples(tokenizer, rows, "assistant", max_length=2048)
    assert [e["input_ids"] for e in masked] == [e["input_ids"] for e in examples]
    assert masked_counts.trained_tokens + masked_counts.masked_tokens == counts.trained_tokens


def test_fully_masked_rows_are_reported_and_long_rows_cut_after_a_whole_turn(tokenizer):
    no_turn = codeact_row("no-assistant")
    long_task = codeact_row("long-task", FIRST, request="word " * 300)
    two_turns = codeact_row("two-turns", FIRST, OBSERVATION, SECOND)
    first_turn_end = len(codeact_training_example(tokenizer, codeact_row("x", FIRST)["messages"]).input_ids) - 1
    max_length = first_turn_end + 20  # the first turn fits, the second does not
    long_turn_end = codeact_training_example(tokenizer, long_task["messages"]).full_tokens - 1  # before its "\n"
    examples, counts = codeact_examples(tokenizer, [no_turn, long_task, two_turns], "assistant", max_length)
    report = counts.to_json()
    assert report["rows"] == 3 and report["examples"] == 1
    assert report["fully_masked"] == {
        "rows": 2,
        "trajectory_ids": {
            "long-task": f"its first assistant turn ends at token {long_turn_end}, past max_length {max_length}",
            "no-assistant": "no assistant turn",
        },
    }
    [kept] = examples
    assert len(kept["input_ids"]) == first_turn_end  # cut right after the first turn's <|im_end|>
    assert [tokenizer.decode(run) for run in labelled_runs(kept["labels"])] == [FIRST + "<|im_end|>"]
    full = len(codeact_training_example(tokenizer, two_turns["messages"]).input_ids)
    assert report["truncated"] == {"rows": 1, "tokens_cut": full - first_turn_end, "trajectory_ids": ["two-turns"]}
    assert report["trained_tokens"] + report["masked_tokens"] == first_turn_end
    # loss_on="all" leaves out the same rows and cuts at the same place: the ablation trains the same rows.
    all_examples, all_counts = codeact_examples(tokenizer, [no_turn, long_task, two_turns], "all", max_length)
    assert [e["input_ids"] for e in all_examples] == [kept["input_ids"]]
    assert all_counts.fully_masked == counts.fully_masked


def test_the_codeact_gate_reads_the_codeact_decision(tmp_path):
    config = TrainConfig(track="codeact", eval_root=tmp_path)
    decision = tmp_path / "codeact" / "decision.json"
    assert config.decision_file == decision
    assert fine_tune_gate(config) == (
        False,
        f"no decision at {decision}: evaluate the student on CodeAct tasks first, or --force",
    )
    decision.parent.mkdir()
    decision.write_text(json.dumps({"fine_tune": 1, "reason": "the student solves fewer tasks"}))
    assert fine_tune_gate(config) == (True, "codeact decision says FINE_TUNE=1 (the student solves fewer tasks)")
    decision.write_text(json.dumps({"fine_tune": 0}))
    assert fine_tune_gate(config) == (False, "codeact decision says FINE_TUNE=0; --force trains anyway")
    assert fine_tune_gate(TrainConfig(track="codeact", eval_root=tmp_path, force=True)) == (True, "--force")
    decision.write_text(json.dumps({"fine_tune": "yes"}))
    with pytest.raises(RecordError, match="field 'fine_tune' must be an integer"):
        fine_tune_gate(config)
    with pytest.raises(ValueError, match="codeact track only"):
        TrainConfig(track="toolcall", loss_on="all")


def write_dataset(root: Path, rows: list[dict], val_rows: list[dict] | None = None) -> Path:
    (root / "codeact").mkdir(parents=True)
    for split, split_rows in (("train", rows), ("val", val_rows or [])):
        (root / "codeact" / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in split_rows))
    return root


def training_rows(count: int) -> list[dict]:
    return [
        codeact_row(f"row-{index:02d}", FIRST, OBSERVATION, SECOND.replace("medium", f"size {index}"))
        for index in range(count)
    ]


def test_bad_codeact_rows_stop_before_any_compute(tiny_model_dir, tmp_path):
    bad = codeact_row("bad", FIRST)
    bad["messages"][2]["role"] = "tool"
    dataset = write_dataset(tmp_path / "data", [*training_rows(2), bad])
    config = TrainConfig(
        track="codeact", model_path=str(tiny_model_dir), dataset_root=dataset, adapter_root=tmp_path / "04_ft",
        storage_path=tmp_path / "ray_train", eval_root=tmp_path / "05_eval", force=True,
    )  # fmt: skip
    with pytest.raises(DatasetError, match=r"codeact/train.jsonl:3: field 'messages\[2\].role': expected one of"):
        run_train(config)
    assert not (tmp_path / "ray_train").exists() and not (tmp_path / "04_ft").exists()


def test_slm_swap_train_codeact_writes_the_adapter_and_token_counts(ray_session, tiny_model_dir, tmp_path):
    dataset = write_dataset(tmp_path / "data", [*training_rows(5), codeact_row("no-assistant")], training_rows(2))
    flags = [
        "train", "--track", "codeact", "--force", "--workers", "0", "--model-path", str(tiny_model_dir),
        "--dataset-root", str(dataset), "--adapter-root", str(tmp_path / "04_ft"),
        "--eval-root", str(tmp_path / "05_eval"), "--storage-path", str(tmp_path / "ray_train"),
        "--grad-accum", "1",
    ]  # fmt: skip
    result = CliRunner().invoke(app, flags)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "1 of 6 train rows fully masked, left out: no-assistant (no assistant turn)" in output
    assert "codeact: evaluate the adapter on the CodeAct tasks" in output
    adapter = tmp_path / "04_ft" / "adapter_codeact"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    training = json.loads((adapter / "training.json").read_text())
    assert training["track"] == "codeact" and training["loss_on"] == "assistant"
    assert training["settings"]["lora"] == {"r": 64, "alpha": 16, "dropout": 0.1, "target_modules": "all-linear"}
    assert training["identity"]["loss_on"] == "assistant" and training["rows"] == {"train": 6, "val": 2}
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected, _ = codeact_examples(tokenizer, training_rows(5), "assistant", 2048)
    counts = training["token_counts"]["train"]
    assert counts["examples"] == 5 and counts["fully_masked"]["trajectory_ids"] == {"no-assistant": "no assistant turn"}
    assert counts["trained_tokens"] == sum(sum(label != IGNORE_INDEX for label in e["labels"]) for e in expected)
    assert counts["trained_tokens"] + counts["masked_tokens"] == sum(len(e["input_ids"]) for e in expected)
    assert training["token_counts"]["val"]["examples"] == 2 and training["val_loss"] > 0
    assert [step for step, _ in training["loss_curve"]] == [1, 2, 3]  # 5 examples, batch 2, 1 epoch
    assert not (tmp_path / "05_eval" / "codeact").exists()  # no evaluation, no decision written by train
    # The ablation trains the same rows on every token: another run (its key differs), nothing masked.
    ablation = run_train(
        TrainConfig(
            track="codeact", model_path=str(tiny_model_dir), dataset_root=dataset, adapter_root=tmp_path / "all",
            storage_path=tmp_path / "ray_train", eval_root=tmp_path / "05_eval", force=True, num_workers=0,
            max_steps=1, loss_on="all",
        )
    )  # fmt: skip
    assert ablation.trained and ablation.training["run_key"] != training["run_key"]
    all_counts = ablation.training["token_counts"]["train"]
    assert all_counts["masked_tokens"] == 0 and all_counts["examples"] == 5
    assert all_counts["trained_tokens"] == counts["trained_tokens"] + counts["masked_tokens"]


@pytest.mark.slow  # ~2 min: two `slm-swap train` processes; the v0 tracks' twin is in test_train.py
def test_a_killed_codeact_run_resumes_from_its_last_checkpoint(tiny_model_dir, tmp_path):
    dataset = write_dataset(tmp_path / "data", training_rows(24))
    command = [
        sys.executable, "-m", "ray_app", "train", "--track", "codeact", "--force", "--no-eval-after",
        "--model-path", str(tiny_model_dir), "--dataset-root", str(dataset), "--adapter-root", str(tmp_path / "04_ft"),
        "--eval-root", str(tmp_path / "05_eval"), "--storage-path", str(tmp_path / "ray_train"),
        "--batch-size", "1", "--grad-accum", "1", "--save-steps", "2",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGFUSE_", "RAY_ADDRESS"))}
    process = subprocess.Popen(
        command, env=env, cwd=PROJECT_ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_checkpoint(process, tmp_path / "ray_train")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "04_ft" / "adapter_codeact").exists()
    restarted = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    training = json.loads((tmp_path / "04_ft" / "adapter_codeact" / "training.json").read_text())
    assert training["global_step"] == 24 and 2 <= training["resumed_from_step"] < 24
    assert training["token_counts"]["train"]["examples"] == 24
