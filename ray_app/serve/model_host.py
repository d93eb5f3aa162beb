"""One base SLM with every trained adapter loaded beside it, answering batches for any of them.

The base model is loaded once (same loader and precision rules as evaluation); each
`<adapter_root>/adapter_<name>/` holding a PEFT adapter is added to the same PeftModel under the
model name `slm-<name>`. A batch is split by model name; each group runs with its adapter active
(the base runs with adapters disabled): greedy decoding of the project's chat messages, as in
evaluation, with each prompt prefilled on its own and the decode steps batched
(`batched_decode.py`; a padded prefill of prompts of very different lengths wastes most of a CPU).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ray_app.engines.determinism import apply_determinism
from ray_app.engines.slm import GreedyAnswer, SlmSettings, load_model_and_tokenizer, prompt_ids
from ray_app.models.fingerprint import folder_fingerprint
from ray_app.serve.batched_decode import generate_greedy_unpadded

BASE_MODEL_NAME = "slm"


@dataclass(frozen=True)
class GenerationJob:
    model_name: str
    prompt_ids: list[int]  # the messages with the chat template applied, tokenized once at the ingress
    max_new_tokens: int


def discover_adapters(adapter_root: Path | None) -> dict[str, Path]:
    """`{"slm-toolcall": <root>/adapter_toolcall, ...}` for every folder with an adapter_config.json."""
    if adapter_root is None or not Path(adapter_root).is_dir():
        return {}
    found = {}
    for folder in sorted(Path(adapter_root).glob("adapter_*")):
        if (folder / "adapter_config.json").is_file() and any(folder.glob("adapter_model.*")):
            found[f"{BASE_MODEL_NAME}-{folder.name.removeprefix('adapter_')}"] = folder
    return found


class MultiAdapterModel:
    def __init__(self, settings: SlmSettings, adapter_root: Path | None, max_model_len: int | None = None):
        import torch

        apply_determinism(settings.seed)
        if settings.cpu_threads:
            torch.set_num_threads(settings.cpu_threads)
        self.adapters = discover_adapters(adapter_root)
        self.model, self.tokenizer, self.device, self.precision = load_model_and_tokenizer(settings)
        if self.adapters:
            from peft import PeftModel

            names = list(self.adapters)
            self.model = PeftModel.from_pretrained(self.model, self.adapters[names[0]], adapter_name=names[0])
            for name in names[1:]:
                self.model.load_adapter(self.adapters[name], adapter_name=name)
            self.model.eval()
        self.model_names = [BASE_MODEL_NAME, *self.adapters]
        self.context_limit = max_model_len or int(
            getattr(self.model.config, "max_position_embeddings", 0) or self.tokenizer.model_max_length
        )
        self.fingerprint = "slm-swap-" + folder_fingerprint(Path(settings.model_path))[:12]
        self.lock = threading.Lock()  # one generate at a time: adapter switching is model-wide state

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return prompt_ids(self.tokenizer, messages)

    def generate(self, jobs: list[GenerationJob]) -> list[GreedyAnswer]:
        """Answers in the order of `jobs`; jobs for different models run as separate sub-batches."""
        answers: list[GreedyAnswer | None] = [None] * len(jobs)
        with self.lock:
            for model_name in dict.fromkeys(job.model_name for job in jobs):
                positions = [index for index, job in enumerate(jobs) if job.model_name == model_name]
                group = [jobs[index] for index in positions]
                for index, answer in zip(positions, self._generate_group(model_name, group), strict=True):
                    answers[index] = answer
        return answers  # type: ignore[return-value]

    def _generate_group(self, model_name: str, jobs: list[GenerationJob]) -> list[GreedyAnswer]:
        import contextlib

        if model_name == BASE_MODEL_NAME:
            active = self.model.disable_adapter() if self.adapters else contextlib.nullcontext()
        else:
            self.model.set_adapter(model_name)
            active = contextlib.nullcontext()
        with active:
            return generate_greedy_unpadded(
                self.model, self.tokenizer, self.device,
                [job.prompt_ids for job in jobs], [job.max_new_tokens for job in jobs],
            )  # fmt: skip

    def decode_pieces(self, token_ids: tuple[int, ...]) -> list[str]:
        """The answer text split at token boundaries (for streaming); the pieces join to the full text."""
        pieces, previous = [], ""
        for end in range(1, len(token_ids) + 1):
            text = self.tokenizer.decode(list(token_ids[:end]), skip_special_tokens=True)
            if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
                continue
            pieces.append(text[len(previous) :])
            previous = text
        full = self.tokenizer.decode(list(token_ids), skip_special_tokens=True)
        if previous != full:
            pieces.append(full[len(previous) :])
        return pieces
