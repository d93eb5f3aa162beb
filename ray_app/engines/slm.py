"""The local SLM: its settings, how it is loaded, its chat template, and HF `generate` as the oracle.

Generation itself is the decode engine's (`engines/decode/`: `SlmEngine` for evaluation, the same
scheduler in Serve); `generate_greedy` here (left-padded HF `generate`) stays as the tests' oracle.

Precision (`engines.precision`'s rule): `auto` loads bf16 on a GPU when the weights take at most half
of its memory, else 8-bit (bitsandbytes), as the seed does, and on CPU bf16 where the CPU computes it
natively (avx512_bf16 or AMX), else fp32; `bf16`, `fp32`, `4bit` and `8bit` are explicit choices
(4/8-bit need a CUDA GPU). `precision_choice` says what is loaded and why, decided on the machine that
loads it; the run's metadata records both.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ray_app.engines.adapter_weights import AdapterWeights, merged_into, model_bytes, resolve_adapter_weights
from ray_app.engines.base import Generation
from ray_app.engines.cpu_linear import CpuLinear
from ray_app.engines.decode.attention_kernel import DecodeAttention
from ray_app.engines.determinism import SEED
from ray_app.engines.lora_forward import install_lean_lora_forward
from ray_app.engines.precision import Precision, PrecisionChoice, resolve_precision


class SlmEngineError(RuntimeError):
    pass


@dataclass(frozen=True)
class SlmSettings:
    model_path: Path
    adapter_path: Path | None = None
    precision: Precision = "auto"
    batch_size: int = 8  # rows decoding together (the decode engine's running batch)
    max_new_tokens: int = 256
    prefill_chunk_tokens: int = 256  # a prompt is prefilled at most this many tokens per engine step
    prefix_cache_tokens: int = 32768  # shared prompt prefixes kept (0: off); never changes an answer
    adapter_weights: AdapterWeights = "auto"  # merged into a base copy, or beside the base (engines.adapter_weights)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: int | None = None  # None: torch's default (all cores of the process)
    cpu_linear: CpuLinear = "auto"  # fp32 and bf16 on CPU: torch's or oneDNN's packed kernels (engines.cpu_linear)
    decode_attention: DecodeAttention = "auto"  # CPU decode steps: compiled or torch (decode.attention_kernel)
    seed: int = SEED

    def to_json(self) -> dict[str, object]:
        values = asdict(self)
        values["model_path"] = str(self.model_path)
        values["adapter_path"] = str(self.adapter_path) if self.adapter_path else None
        return values


def precision_choice(settings: SlmSettings) -> PrecisionChoice:
    """The device and precision `load_model_and_tokenizer` loads on this machine, and why."""
    import torch

    has_cuda = torch.cuda.is_available()
    device = settings.device if settings.device != "auto" else ("cuda" if has_cuda else "cpu")
    if device == "cuda" and not has_cuda:
        raise SlmEngineError("device cuda requested but torch sees no CUDA GPU; use --device cpu")
    choice = resolve_precision(settings.precision, device, settings.model_path)  # a GPU: this process's
    if choice.precision in ("8bit", "4bit") and device != "cuda":
        raise SlmEngineError(
            f"{choice.precision} loading needs a CUDA GPU (bitsandbytes); on CPU use --precision fp32 or bf16"
        )
    return choice


def resolve_device_and_precision(settings: SlmSettings) -> tuple[str, str]:
    choice = precision_choice(settings)
    return choice.device, choice.precision


def load_model_and_tokenizer(settings: SlmSettings):
    """(model in eval mode, left-padding tokenizer, device, precision actually loaded)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, precision = resolve_device_and_precision(settings)
    tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
    tokenizer.padding_side = "left"  # decoder-only batches: every answer starts right after its prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    load_kwargs: dict[str, object] = {}
    if precision in ("8bit", "4bit"):
        from transformers import BitsAndBytesConfig

        quantization = (
            BitsAndBytesConfig(load_in_8bit=True)
            if precision == "8bit"
            else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4")
        )
        load_kwargs = {"quantization_config": quantization, "device_map": {"": 0}}
    else:
        load_kwargs = {"dtype": torch.bfloat16 if precision == "bf16" else torch.float32}
    model = AutoModelForCausalLM.from_pretrained(settings.model_path, **load_kwargs)
    if precision not in ("8bit", "4bit"):
        model.to(device)
    head_input_in_standard_strides(model)
    if settings.adapter_path is not None:
        from peft import PeftModel

        from ray_app.models.adapter_folder import is_adapter_folder, not_an_adapter_message

        if not is_adapter_folder(settings.adapter_path):
            raise SlmEngineError(not_an_adapter_message(settings.adapter_path))
        choice = resolve_adapter_weights(settings.adapter_weights, precision, device, model_bytes(model), 1)
        if choice.merged:  # as evaluation and Serve apply it (`LoadedSlm`), by the same rule
            model = merged_into(model, settings.adapter_path)
        else:
            model = PeftModel.from_pretrained(model, settings.adapter_path)
            adapters_in_model_dtype(model, precision)
            install_lean_lora_forward(model)  # as the decode engine (`LoadedSlm`): the same arithmetic
    model.eval()
    return model, tokenizer, device, precision


def adapters_in_model_dtype(model, precision: str) -> None:
    """In bf16, the loaded LoRA weights in bf16 too (PEFT keeps them in fp32, as they were trained).

    Left in fp32, every LoRA layer of every forward call casts its input to fp32, multiplies in fp32
    (no native bf16 kernel used) and promotes the layer's output to fp32 and back: on the demo SLM's
    r=64 adapter that made a bf16 evaluation ~4x slower than the base's (demo run, 2026-12-02). The
    adapter then computes as the base does, in the precision the run chose; eval and Serve both load
    adapters through here and `LoadedSlm`, so they compute the same thing.
    """
    if precision != "bf16":
        return
    import torch

    for name, parameter in model.named_parameters():
        if "lora_" in name and parameter.dtype != torch.bfloat16:
            parameter.data = parameter.data.to(torch.bfloat16)


def head_input_in_standard_strides(model) -> None:
    """The output layer (lm_head) gets its input with a plain row-major layout.

    A prefill asks for the last position's logits only (`logits_to_keep=1`), so the lm_head's input is
    `hidden[:, -1:, :]`: shape [batch, 1, width] with the whole prompt's stride in front. torch counts
    that as contiguous, but `F.linear` on it with a frozen bf16 weight (every base weight once PEFT
    wraps the model) takes a batched path that copies the transposed 49k-row weight at each call:
    ~92 ms instead of ~3 ms for the demo SLM's head on this CPU, so a bf16 evaluation with an adapter
    spent ~70% of its prefill there (measured 2026-12-02: structured adapter prefill 24.3 s for 4.6k
    prompt tokens). Copying the [batch, 1, width] input into standard strides costs microseconds and
    leaves every value as it is."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_in_standard_strides)


def _in_standard_strides(module, args):
    import torch

    hidden = args[0]
    if hidden.stride() == standard_strides(tuple(hidden.shape)):
        return None
    return (hidden.clone(memory_format=torch.contiguous_format), *args[1:])


def standard_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides of a fresh row-major tensor of this shape."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def stop_token_ids(model, tokenizer) -> set[int]:
    stop_ids = model.generation_config.eos_token_id
    return set(stop_ids if isinstance(stop_ids, list) else [stop_ids]) | {tokenizer.eos_token_id}


def chat_text(tokenizer, messages: list[dict[str, str]]) -> str:
    """A conversation as the model sees it: the chat template with the generation prompt. It already
    holds every special token the model expects, so it is tokenized with add_special_tokens=False."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """A conversation's token ids as the model sees it."""
    return tokenizer(chat_text(tokenizer, messages), add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class GreedyAnswer(Generation):
    token_ids: tuple[int, ...] = ()  # the answer's tokens (end-of-sequence included when it stopped)
    stopped: bool = True  # False when it ran into its token limit
    stop_text: str | None = None  # the stop text that ended it (cut from `text`), if one did
    cached_prompt_tokens: int = 0  # prompt tokens loaded from the prefix cache instead of computed


def generate_greedy(model, tokenizer, device, conversations, max_new_tokens: list[int]) -> list[GreedyAnswer]:
    """One left-padded greedy HF `generate` over a batch of conversations: the tests' oracle for the
    decode engine (`engines/decode/`), which is what evaluation and Serve run.

    Each answer is cut at its first end-of-sequence and at its own token limit; greedy decoding makes
    that equal to generating it with that limit (the batch runs to the largest limit).
    """
    import torch

    texts = [chat_text(tokenizer, messages) for messages in conversations]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            **inputs, max_new_tokens=max(max_new_tokens), do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    latency_s = time.perf_counter() - started
    new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
    prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
    stop_ids = stop_token_ids(model, tokenizer)
    answers = []
    for tokens, prompt_length, limit in zip(new_tokens, prompt_lengths, max_new_tokens, strict=True):
        stop_at = next((position + 1 for position, token in enumerate(tokens[:limit]) if token in stop_ids), None)
        kept = tokens[: stop_at if stop_at is not None else limit]
        answers.append(
            GreedyAnswer(
                text=tokenizer.decode(kept, skip_special_tokens=True),
                prompt_tokens=int(prompt_length),
                completion_tokens=len(kept),
                latency_s=latency_s,
                token_ids=tuple(kept),
                stopped=stop_at is not None,
            )
        )
    return answers
