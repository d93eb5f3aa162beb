"""The base SLM and its adapters, each under its model name: what the decode scheduler runs.

The base model is loaded once (`engines.slm.load_model_and_tokenizer`: the precision rules every
run uses). Each adapter (`slm-<name>`) is applied as `engines.adapter_weights` resolves the
`adapter_weights` setting: merged, a copy of the base with the adapter folded in (a forward call
costs the base's); or unmerged, every adapter added to one PeftModel over the shared base, and
`activate(name)` sets the one the next forward calls use (every adapter disabled for the base).
`model_for(name)` is the module to call for a model either way, so nothing is reloaded between two
calls. `grammars` compiles the jobs' constraints for this model's tokenizer (`engines/constrained/`),
at a job's ingress.

**One thread for all of it.** The model's forward calls must run on the thread that loaded it
(`check_thread`). torch's CPU build runs its parallel regions on libgomp, which gives every thread
that opens one its own team of worker threads; once a process has more OpenMP threads than cores,
libgomp cuts the workers' spin-wait from ~300k iterations to 100-1000, so every small op of a decode
step waits for a sleeping worker to wake. Loading on a thread that stays alive and decoding on another
(Ray Data calls an actor's constructor and its batches on two threads) made every forward call
~1.5-2x slower on 2 cores: 10 structured prompts prefilled in 2.2 s on the loading thread vs 3.5 s on
a second thread (base, bf16), 3.6 s vs 6.8 s with an adapter (Intel(R) Xeon(R) Processor,
2026-12-02); a 50-row adapter evaluation took 78 s instead of 35 s. So evaluation's actor loads the
engine on its first batch, in the thread that runs every batch. (Serve's replica loaded in a thread
that then ended, which frees its team, so it was not slowed; it now decodes on its loading thread
all the same, one rule for both.)
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

from ray_app.engines.adapter_weights import AdapterWeightsChoice, merged_copy, model_bytes, resolve_adapter_weights
from ray_app.engines.constrained.constraints import DecodingConstraint
from ray_app.engines.constrained.row_grammar import GrammarCompiler
from ray_app.engines.cpu_linear import pack_linear_weights, resolve_cpu_linear
from ray_app.engines.decode.attention_kernel import resolve_decode_attention
from ray_app.engines.decode.prefix_cache import shared_prefix_ends, template_anchors
from ray_app.engines.decode.row_attention import use_row_attention
from ray_app.engines.decode.running_batch import GenerationJob
from ray_app.engines.determinism import apply_determinism
from ray_app.engines.lora_forward import install_lean_lora_forward
from ray_app.engines.slm import (
    SlmSettings,
    adapters_in_model_dtype,
    chat_text,
    load_model_and_tokenizer,
    stop_token_ids,
)
from ray_app.models.adapter_folder import is_adapter_folder

BASE_MODEL_NAME = "slm"

logger = logging.getLogger(__name__)


def adapter_model_name(adapter_folder: Path) -> str:
    """`slm-toolcall` for `.../adapter_toolcall/`: the name a request asks for."""
    return f"{BASE_MODEL_NAME}-{Path(adapter_folder).name.removeprefix('adapter_')}"


def discover_adapters(adapter_root: Path | None) -> dict[str, Path]:
    """`{"slm-toolcall": <root>/adapter_toolcall, ...}` for every adapter folder (config and weights) in it."""
    if adapter_root is None or not Path(adapter_root).is_dir():
        return {}
    found = {}
    for folder in sorted(Path(adapter_root).glob("adapter_*")):
        if is_adapter_folder(folder):
            found[adapter_model_name(folder)] = folder
    return found


class LoadedSlm:
    def __init__(self, settings: SlmSettings, adapters: dict[str, Path], max_model_len: int | None = None):
        import torch

        apply_determinism(settings.seed)
        self.loading_thread = threading.get_ident()
        self._warned_thread = False
        if settings.cpu_threads:
            torch.set_num_threads(settings.cpu_threads)
        self.settings = settings
        self.adapters = dict(adapters)
        base_settings = dataclasses.replace(settings, adapter_path=None)  # adapters are added by name below
        base, self.tokenizer, self.device, self.precision = load_model_and_tokenizer(base_settings)
        use_row_attention(base)  # CPU decode steps read each row's own columns only (merged copies inherit it)
        self.adapter_weights = (
            resolve_adapter_weights(
                settings.adapter_weights, self.precision, self.device, model_bytes(base), len(self.adapters)
            )
            if self.adapters
            else AdapterWeightsChoice(False, "no adapter")
        )
        self.models = {BASE_MODEL_NAME: base}  # model name → the module its forward calls run
        if self.adapters and self.adapter_weights.merged:
            for name, folder in self.adapters.items():
                self.models[name] = merged_copy(base, folder)
        elif self.adapters:
            from peft import PeftModel

            names = list(self.adapters)
            shared = PeftModel.from_pretrained(base, self.adapters[names[0]], adapter_name=names[0])
            for name in names[1:]:
                shared.load_adapter(self.adapters[name], adapter_name=name)
            adapters_in_model_dtype(shared, self.precision)
            install_lean_lora_forward(shared)
            shared.eval()
            self.models = dict.fromkeys([BASE_MODEL_NAME, *names], shared)
        # after every copy and merge: a copied module would share its original's packed weights
        self.cpu_linear = resolve_cpu_linear(
            settings.cpu_linear, self.precision, self.device, settings.model_path, settings.cpu_threads
        )
        if self.cpu_linear.kernels == "onednn":
            for model in {id(model): model for model in self.models.values()}.values():
                pack_linear_weights(model)
        self.decode_attention = resolve_decode_attention(settings.decode_attention, self.precision, self.device)
        self._active = next(iter(self.adapters), BASE_MODEL_NAME)  # PeftModel starts with its first adapter on
        self.model_names = [BASE_MODEL_NAME, *self.adapters]
        self.context_limit = max_model_len or int(
            getattr(base.config, "max_position_embeddings", 0) or self.tokenizer.model_max_length
        )
        self.anchors = template_anchors()
        vocab_size = int(getattr(base.config, "vocab_size", 0) or len(self.tokenizer))  # the logits' width
        self.grammars = GrammarCompiler(self.tokenizer, vocab_size, stop_token_ids(base, self.tokenizer))

    def check_thread(self) -> None:
        """Warn once when forward calls run on another thread than the one that loaded the model (see the
        module's docstring: with torch's OpenMP teams on two threads every call is slower)."""
        if not self._warned_thread and threading.get_ident() != self.loading_thread:
            self._warned_thread = True
            logger.warning(
                "the SLM decodes on another thread than the one that loaded it: torch's OpenMP worker teams "
                "then outnumber the cores and every forward call is slower (1.5-2x on 2 cores); "
                "load and decode on one thread"
            )

    def model_for(self, model_name: str):
        """The module a forward call for `model_name` runs (after `activate(model_name)`)."""
        return self.models[model_name]

    def job(
        self,
        model_name: str,
        messages: list[dict[str, str]],
        max_new_tokens: int,
        request_id: str | None = None,
        stop_texts: tuple[str, ...] = (),
        constraint: DecodingConstraint | None = None,
    ) -> GenerationJob:
        """The messages with the chat template applied (as `engines.slm.prompt_ids`), and where their
        shareable prefixes end. A constraint is compiled here, so one that cannot be (a schema llguidance
        refuses) raises `ConstraintError` before the job queues."""
        if constraint is not None:
            self.grammars.check(constraint)
        text = chat_text(self.tokenizer, messages)
        if getattr(self.tokenizer, "is_fast", False):
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ends = shared_prefix_ends(text, [end for _, end in encoded["offset_mapping"]], self.anchors)
        else:  # no offsets: the prompt is prefilled without shareable pieces
            encoded, ends = self.tokenizer(text, add_special_tokens=False), ()
        return GenerationJob(
            model_name, list(encoded["input_ids"]), max_new_tokens, ends, request_id, stop_texts, constraint
        )

    def activate(self, model_name: str) -> None:
        """Unmerged: the adapter of `model_name` active on the shared PeftModel (every adapter layer
        disabled for the base) until another model is asked for. Switching walks every module of the
        model (~10 ms for the demo SLM's 210 LoRA layers), so it happens only when the model changes, not
        at every forward call of a run that stays on one model. Merged: nothing to switch."""
        if self.adapters and not self.adapter_weights.merged and model_name != self._active:
            shared = self.models[model_name]
            if model_name == BASE_MODEL_NAME:
                shared.base_model.disable_adapter_layers()
            else:
                if self._active == BASE_MODEL_NAME:
                    shared.base_model.enable_adapter_layers()
                shared.set_adapter(model_name)
            self._active = model_name

    def decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)
