"""`SlmEngine`: the decode engine behind the project's engine interface (`engines/base.py`).

Evaluation (the Ray Data actors), the live compare and the benchmarks answer rows with it: a group of
rows goes into the scheduler in split order and comes back answered, rows joining the running batch
as others finish (`scheduler.py`). Serve runs the same scheduler over the same `LoadedSlm`.

Latency of a row = from its admission (prefill start) until its answer is complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ray_app.engines.base import ChatRequest, EngineRequest
from ray_app.engines.decode.loaded_slm import BASE_MODEL_NAME, LoadedSlm, adapter_model_name
from ray_app.engines.decode.running_batch import GenerationJob
from ray_app.engines.decode.scheduler import DecodeScheduler
from ray_app.engines.slm import GreedyAnswer, SlmSettings
from ray_app.memory_allocator import allocator_in_use

# What evaluation run keys say about the engine; changed whenever the same settings would give other bytes.
ENGINE_IDENTITY = (
    "transformers, engines/decode, prefix-cache hits keep the schedule, CPU rows (fp32 and bf16) attend over"
    " their own columns through torch's CPU flash kernel"
)


class SlmEngine:
    kind = "transformers"

    def __init__(self, settings: SlmSettings, adapters: dict[str, Path] | None = None):
        """`settings.adapter_path`'s adapter, or `adapters` (model name → folder) beside the base: then a
        request names its model (`generate_as_finished(..., model_name)`), as Serve's do."""
        self.settings = settings
        if adapters is None:
            adapters = (
                {adapter_model_name(settings.adapter_path): settings.adapter_path} if settings.adapter_path else {}
            )
        elif settings.adapter_path is not None:
            raise ValueError("give the adapters either as settings.adapter_path or by name, not both")
        self.slm = LoadedSlm(settings, adapters)
        self.model_name = next(iter(adapters), BASE_MODEL_NAME)  # what a request names by default
        # Answers that depend on the rows alone, not on what the prefix cache held (`PrefillTask`).
        self.scheduler = DecodeScheduler(
            self.slm,
            settings.batch_size,
            settings.prefill_chunk_tokens,
            settings.prefix_cache_tokens,
            schedule_as_uncached=True,
        )

    @property
    def device(self) -> str:
        return self.slm.device

    @property
    def precision(self) -> str:
        return self.slm.precision

    def describe(self, model_name: str | None = None) -> dict[str, object]:
        """The engine as `model_name` (default: the engine's own model) answers with it."""
        adapter = self.slm.adapters.get(model_name or self.model_name)
        return {
            "kind": self.kind,
            "model_path": str(self.settings.model_path),
            "adapter_path": str(adapter) if adapter else None,
            "device": self.slm.device,
            "precision": self.slm.precision,
            **(self.adapter_weights_facts() if adapter else {}),
            "cpu_linear": self.slm.cpu_linear.kernels,
            "cpu_linear_reason": self.slm.cpu_linear.reason,
            "decode_attention": self.slm.decode_attention.kernel,
            "decode_attention_reason": self.slm.decode_attention.reason,
            **allocator_in_use(),
            "batch_size": self.settings.batch_size,
            "max_new_tokens": self.settings.max_new_tokens,
            "prefill_chunk_tokens": self.settings.prefill_chunk_tokens,
            "decoding": "greedy, continuous batching (engines/decode)",
            "simulated": False,
        }

    def adapter_weights_facts(self) -> dict[str, str]:
        choice = self.slm.adapter_weights
        return {"adapter_weights": choice.name, "adapter_weights_reason": choice.reason}

    def generate(self, requests: list[EngineRequest]) -> list[GreedyAnswer]:
        """Answers in request order; rows are admitted in that order as the running batch has room."""
        return self.scheduler.run_to_completion(self.generation_jobs(requests))

    def generate_as_finished(
        self, requests: list[EngineRequest], model_name: str | None = None
    ) -> Iterator[tuple[int, GreedyAnswer]]:
        """`(position in requests, answer)` as each row finishes; the same schedule and bytes as `generate`.
        `model_name`: the base (`slm`) or one of the engine's adapters by name; default the engine's own."""
        return self.scheduler.answers_as_finished(self.generation_jobs(requests, model_name))

    def generation_jobs(self, requests: list[EngineRequest], model_name: str | None = None) -> list[GenerationJob]:
        name = model_name or self.model_name
        if name not in self.slm.model_names:
            raise ValueError(f"no model {name!r} in this engine; it has {', '.join(self.slm.model_names)}")
        return [
            self.slm.job(name, request.messages, self.settings.max_new_tokens, constraint=request.constraint)
            for request in requests
        ]

    def chat(self, requests: list[ChatRequest]) -> list[GreedyAnswer]:
        """Conversations continued in request order (the CodeAct loop's batched step)."""
        jobs = [
            self.slm.job(
                self.model_name,
                request.messages,
                request.max_tokens,
                stop_texts=request.stop,
                constraint=request.constraint,
            )
            for request in requests
        ]
        return self.scheduler.run_to_completion(jobs)
