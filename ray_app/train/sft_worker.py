"""What each Ray Train worker runs: supervised fine-tuning of a LoRA adapter with TRL's SFTTrainer.

Rows become conversational prompt/completion examples built with `chat_messages` — the same
messages evaluation and serving send — so TRL computes the loss on completion tokens only. The codeact
track's examples come pre-tokenized with their labels (`codeact_examples`) and are trained as given.
Checkpoints go to Ray Train every `save_steps` optimizer steps; a worker that finds one (a restarted
run) resumes from it with the optimizer, scheduler and data position restored. In Ray Train's local
mode (`num_workers=0`: the loop runs in the driver, with no Ray Train storage) the run's folder under
the storage path holds the Trainer's own checkpoints (`hf/checkpoint-<step>`) and the final adapter
(`final/`), and a restarted run resumes from the latest complete one the same way. The final adapter is
reported as the last checkpoint, with the loss curve and throughput as metrics.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray_app.engines.precision import PrecisionChoice, cpu_autocast_bf16
from ray_app.memory_allocator import allocator_in_use

FINAL_ADAPTER_DIR = "final_adapter"
HF_CHECKPOINT_DIR = "checkpoint"  # RayTrainReportCallback's layout
LOCAL_MODE_LOG = "train.log"  # in the run's folder: what the libraries print during a local-mode run
UNSLOTH_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainBackendError(RuntimeError):
    pass


def conversational_examples(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """{prompt, completion} rows → TRL conversational prompt/completion examples."""
    from ray_app.prompts import chat_messages

    return [
        {"prompt": chat_messages(row["prompt"]), "completion": [{"role": "assistant", "content": row["completion"]}]}
        for row in rows
    ]


def load_peft_backend(config: dict[str, Any], device):
    """transformers + PEFT (TRL wraps the LoRA): fp32 on CPU, bitsandbytes 8/4-bit or bf16 on GPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config["model_path"])
    quantization = config["quantization"]
    kwargs: dict[str, Any] = {}
    if quantization in ("8bit", "4bit"):
        if device.type != "cuda":
            raise TrainBackendError(f"{quantization} loading needs a CUDA GPU (bitsandbytes); use --quantization none")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if quantization == "8bit"
            else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        )
        kwargs["device_map"] = {"": device}
    else:
        kwargs["dtype"] = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(config["model_path"], **kwargs)
    if quantization in ("8bit", "4bit"):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    from peft import LoraConfig

    lora = config["lora"]
    peft_config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    return model, tokenizer, peft_config


def load_unsloth_backend(config: dict[str, Any], device):
    """Unsloth's FastLanguageModel and its LoRA (GPU only; imported before transformers/trl/peft)."""
    if device.type != "cuda":
        raise TrainBackendError("the unsloth backend needs a CUDA GPU; use --backend peft on CPU")
    try:
        import unsloth  # noqa: F401  (patches transformers/trl/peft; must come first)
        from unsloth import FastLanguageModel
    except ImportError as error:
        raise TrainBackendError(
            f"the unsloth backend needs the package (pip install -e '.[gpu]'): {error}; or use --backend peft"
        ) from None
    lora = config["lora"]
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=config["model_path"],
        max_seq_length=config["max_length"],
        load_in_4bit=config["quantization"] == "4bit",
        load_in_8bit=config["quantization"] == "8bit",
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=UNSLOTH_TARGET_MODULES,
        use_gradient_checkpointing="unsloth",
        random_state=config["seed"],
    )
    return model, tokenizer, None


def restored_checkpoint(workdir: Path) -> Path | None:
    """Copy the latest Ray Train checkpoint of this run (if any) to `workdir`; return its folder."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    target = workdir / "restored"
    checkpoint.to_directory(str(target))
    return target


def loss_curve(log_history: list[dict[str, Any]]) -> list[list[float]]:
    return [[entry["step"], round(float(entry["loss"]), 6)] for entry in log_history if "loss" in entry]


def build_sft_trainer(config: dict[str, Any], device, output_dir: Path, callbacks: list, show_progress: bool = True):
    """The SFTTrainer every path uses (Ray Train workers and the plain-loop benchmark alike)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    loader = load_unsloth_backend if config["backend"] == "unsloth" else load_peft_backend
    model, tokenizer, peft_config = loader(config, device)
    if "train_examples" in config:  # codeact: input_ids + labels (-100 where no loss), used as given
        train_examples, val_examples = config["train_examples"], config["val_examples"]
    else:
        train_examples = conversational_examples(config["train_rows"])
        val_examples = conversational_examples(config["val_rows"])
    train_dataset = Dataset.from_list(train_examples)
    eval_dataset = Dataset.from_list(val_examples) if val_examples else None
    on_gpu = device.type == "cuda"
    args = SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=config["per_device_batch_size"],
        per_device_eval_batch_size=config["per_device_batch_size"],
        gradient_accumulation_steps=config["gradient_accumulation_steps"],
        learning_rate=config["learning_rate"],
        num_train_epochs=config["epochs"],
        max_steps=config["max_steps"],
        max_length=config["max_length"],
        seed=config["seed"],
        data_seed=config["seed"],
        logging_steps=1,
        save_strategy="steps",
        save_steps=config["save_steps"],
        save_total_limit=2,
        eval_strategy="epoch" if eval_dataset is not None else "no",
        report_to=[],
        gradient_checkpointing=config.get("gradient_checkpointing", True),
        gradient_checkpointing_kwargs={"use_reentrant": False},
        ddp_find_unused_parameters=False,
        # TRL defaults to bf16=True, which fails on CPU unless use_cpu: there bf16 is CPU autocast
        # (fp32 weights and LoRA parameters, bf16 matmuls), decided on this worker by its CPU.
        bf16=training_precision(config.get("cpu_bf16"), on_gpu).precision == "bf16",
        use_cpu=not on_gpu,
        dataloader_num_workers=0,
        disable_tqdm=not show_progress,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    if not on_gpu:  # what makes CPU training faster without changing the recipe (cpu_training.py)
        from ray_app.train.cpu_training import score_labelled_positions_only, use_cpu_dropout

        score_labelled_positions_only()
        use_cpu_dropout(trainer.model)
    if "train_examples" in config and len(trainer.train_dataset) != len(train_examples):
        # TRL drops fully masked examples without a word; codeact_examples left them out and said so.
        raise RuntimeError(f"SFTTrainer kept {len(trainer.train_dataset)} of {len(train_examples)} training examples")
    return trainer, tokenizer


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """What Ray Train runs. A worker's output goes to Ray's worker logs; in local mode the loop shares the
    job's console, where only the job's own progress bar belongs: from its first import on, what the
    libraries print goes to the run's log instead."""
    if config.get("local_run_dir") is None:
        run_training_loop(config)
        return
    with output_to_log(Path(config["local_run_dir"]) / LOCAL_MODE_LOG):
        run_training_loop(config)


def run_training_loop(config: dict[str, Any]) -> None:
    import ray.train

    if config["backend"] == "unsloth":
        import unsloth  # noqa: F401  (must be imported before transformers, trl and peft)
    import ray.train.torch
    from ray.train.huggingface.transformers import RayTrainReportCallback

    from ray_app.engines.determinism import apply_determinism

    apply_determinism(config["seed"])
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        import torch

        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))  # Ray sets OMP threads from num_cpus
    context = ray.train.get_context()
    if context.get_world_size() == 1:
        single_process_training()
    local_mode = config.get("local_run_dir") is not None  # Ray Train's local mode: no storage, no workers
    if local_mode:  # the run's own folder holds its checkpoints and its final adapter (see the module doc)
        workdir = Path(config["local_run_dir"])
        finished = workdir / "final"
        restored = finished if (finished / "final_metrics.json").is_file() else last_local_checkpoint(workdir / "hf")
    else:
        workdir = Path(tempfile.mkdtemp(prefix="slm-swap-train-"))
        restored = restored_checkpoint(workdir)
    if restored is not None and (restored / FINAL_ADAPTER_DIR).is_dir():
        # The run had finished; report its final checkpoint again instead of training twice.
        metrics = json.loads((restored / "final_metrics.json").read_text())
        ray.train.report(metrics=metrics, checkpoint=ray.train.Checkpoint.from_directory(str(restored)))
        return
    # In local mode the Trainer's own checkpoints (in the run's folder) are the resume points; reporting
    # each one to Ray Train would only copy it to a temporary folder that nothing reads.
    callbacks = [] if local_mode else [RayTrainReportCallback()]
    if context.get_world_rank() == 0 and config.get("progress_steps") is not None:
        from ray_app.train.progress import steps_to_driver_callback

        callbacks.append(steps_to_driver_callback(config["progress_steps"]))  # the driver's progress bar
    trainer, tokenizer = build_sft_trainer(
        config, device, workdir / "hf", callbacks, show_progress=context.get_world_rank() == 0 and not local_mode
    )
    if local_mode:
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # what prints each step's logs once tqdm is off
        trainer.add_callback(logs_to_file_callback(workdir / LOCAL_MODE_LOG))
    precision = training_precision(config.get("cpu_bf16"), device.type == "cuda")  # as build_sft_trainer chose
    resume_from = None if restored is None else str(restored if local_mode else restored / HF_CHECKPOINT_DIR)
    resumed_from_step = 0
    if resume_from is not None:
        resumed_from_step = json.loads((Path(resume_from) / "trainer_state.json").read_text())["global_step"]
    # What is loaded now (torch, transformers, the model and trainer: ~550k objects) lives through the
    # training; frozen, Python's cyclic collector stops walking it at every full collection. The toolcall
    # recipe on 8 rows (AMD EPYC without AVX-512, 2 cores, 2026-12-06): collections 1.86 s -> 0.73 s,
    # the same losses (no value is touched). Unfrozen after, so a local-mode run (in the job's own
    # process) leaves its model collectable.
    gc.collect()
    gc.freeze()
    started = time.perf_counter()
    try:
        train_output = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        gc.unfreeze()
    seconds = time.perf_counter() - started
    eval_loss = None
    if trainer.eval_dataset is not None:
        eval_loss = next((e["eval_loss"] for e in reversed(trainer.state.log_history) if "eval_loss" in e), None)
    # TRL logs the running count of trained tokens (prompt + completion) as num_tokens.
    token_counts = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry]
    tokens = int(token_counts[-1]) if token_counts else None
    metrics = {
        "final": True,
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed_from_step,
        "train_loss": round(float(train_output.training_loss), 6),
        "eval_loss": round(float(eval_loss), 6) if eval_loss is not None else None,
        "loss_curve": loss_curve(trainer.state.log_history),
        "train_seconds_this_attempt": round(seconds, 3),
        "tokens_this_attempt": tokens,
        "tokens_per_s": round(tokens / seconds, 3) if tokens and seconds else None,
        "device": str(device.type),
        "precision": precision.precision,
        "precision_reason": precision.reason,
        **allocator_in_use(),
        "world_size": context.get_world_size(),
    }
    final_dir = workdir / "final"
    if context.get_world_rank() == 0:
        shutil.rmtree(final_dir, ignore_errors=True)  # a run killed while writing it left part of one
        trainer.model.save_pretrained(str(final_dir / FINAL_ADAPTER_DIR))
        tokenizer.save_pretrained(str(final_dir / FINAL_ADAPTER_DIR))
        (final_dir / "final_metrics.json").write_text(json.dumps(metrics))  # last: it marks the folder complete
        ray.train.report(metrics=metrics, checkpoint=ray.train.Checkpoint.from_directory(str(final_dir)))
    else:
        ray.train.report(metrics=metrics, checkpoint=None)
    # The final folder stays: in local mode the reported checkpoint is that folder.
    if not local_mode:  # local mode's checkpoints stay in the run's folder, like Ray Train's storage
        shutil.rmtree(workdir / "hf", ignore_errors=True)
        shutil.rmtree(workdir / "restored", ignore_errors=True)


@contextlib.contextmanager
def output_to_log(log_path: Path) -> Iterator[None]:
    """While training in the driver's process: warnings, the libraries' log records (transformers',
    and those that reach the root logger, e.g. bitsandbytes') and their progress bars (datasets',
    transformers' weight loading) go to `log_path` instead of the console; all restored on exit."""
    import datasets
    import transformers

    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    library_logger = transformers.utils.logging.get_logger()  # transformers' root: it does not propagate
    library_handlers = list(library_logger.handlers)
    root = logging.getLogger()
    datasets_bars = datasets.utils.logging.is_progress_bar_enabled()
    transformers_bars = transformers.utils.logging.is_progress_bar_enabled()

    def log_warning(message, category, filename, lineno, file=None, line=None):
        handler.handle(logging.makeLogRecord({
            "name": "py.warnings", "levelno": logging.WARNING, "levelname": "WARNING",
            "msg": warnings.formatwarning(message, category, filename, lineno, line).rstrip(),
        }))  # fmt: skip

    with warnings.catch_warnings():
        warnings.showwarning = log_warning
        for existing in library_handlers:
            library_logger.removeHandler(existing)
        library_logger.addHandler(handler)
        root.addHandler(handler)
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        try:
            yield
        finally:
            root.removeHandler(handler)
            library_logger.removeHandler(handler)
            for existing in library_handlers:
                library_logger.addHandler(existing)
            if datasets_bars:
                datasets.enable_progress_bars()
            if transformers_bars:
                transformers.utils.logging.enable_progress_bar()
            handler.close()


def logs_to_file_callback(log_path: Path):
    """A TrainerCallback that appends each logging step's values (loss, learning rate, ...) to
    `log_path`, one JSON object per line (what TRL prints when it has the console)."""
    from transformers import TrainerCallback

    class LogsToFile(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                with log_path.open("a", encoding="utf-8") as log:
                    log.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return LogsToFile()


def last_local_checkpoint(folder: Path) -> Path | None:
    """The Trainer's latest complete checkpoint in `folder` (`checkpoint-<step>`), or None. The Trainer
    writes `trainer_state.json` after the weights, optimizer and RNG states: a checkpoint without a
    readable one was cut short (the run was killed while saving it) and is passed over."""
    steps = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else ():
        try:
            json.loads((path / "trainer_state.json").read_text())
            steps.append((int(path.name.removeprefix("checkpoint-")), path))
        except (OSError, ValueError):
            continue
    return max(steps)[1] if steps else None


def single_process_training() -> None:
    """One worker has nobody to synchronise with: drop the process group Ray Train set up, so the
    HF Trainer does not wrap the model in DistributedDataParallel and all-reduce to itself."""
    import os

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK"):
        os.environ.pop(name, None)


def training_precision(cpu_bf16: bool | None, on_gpu: bool) -> PrecisionChoice:
    """The Trainer's mixed precision on this worker, and why: bf16 on a GPU that supports it; on CPU,
    bf16 autocast when `cpu_bf16` says so, or with None where the CPU computes bf16 natively
    (`engines.precision`'s rule, the same as evaluation's `auto`)."""
    if on_gpu:
        if _bf16_supported():
            return PrecisionChoice("bf16", "the GPU supports bf16", "cuda")
        return PrecisionChoice("fp32", "the GPU has no bf16", "cuda")
    return cpu_autocast_bf16(cpu_bf16)


def _bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
