"""How an SLM evaluation runs, decided on the driver before any actor starts: the `SlmPlan`.

`slm_plan(config, gpus, cpus)` resolves the SLM's settings (model, adapter and whether it is merged,
precision, CPU linear kernels, decode-step attention), the identity the run key holds (everything an
answer depends on), and the actor pool (count, CPUs and GPUs per actor). `slm_choices` gives what each
choice was asked to be and why the driver chose what it did, for every saved SLM description.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_app.engines.cpu_linear import CpuLinearChoice, resolve_cpu_linear
from ray_app.engines.decode.attention_kernel import DecodeAttentionChoice, resolve_decode_attention
from ray_app.engines.decode.engine import ENGINE_IDENTITY
from ray_app.engines.precision import PrecisionChoice
from ray_app.engines.slm import SlmSettings
from ray_app.eval.config import EvalConfig
from ray_app.eval.row_constraints import constrained_identity
from ray_app.models.adapter_folder import is_adapter_folder, not_an_adapter_message
from ray_app.models.fingerprint import adapter_fingerprint, folder_fingerprint
from ray_app.models.model_path import resolve_slm_model_path


@dataclass(frozen=True)
class SlmPlan:
    settings: SlmSettings  # precision resolved: what every actor loads
    identity: dict[str, Any]  # what the run key holds
    precision: PrecisionChoice  # the precision and why (recorded in metrics.json, not in the run key)
    rows_per_task: int  # rows an actor answers as one fixed group
    num_actors: int
    actor_cpus: float
    actor_gpus: float
    cpu_linear: CpuLinearChoice  # the fp32 CPU kernels and why (metrics.json; in the key when oneDNN)
    decode_attention: DecodeAttentionChoice  # CPU decode-step attention and why (metrics.json; in the key: compiled)


def driver_precision_choice(settings: SlmSettings) -> PrecisionChoice:
    """The precision the actors load, decided on the driver (the run key holds it): on CPU this machine's
    rule (a local Ray's actors share its CPU); on a GPU `auto` sizes the model against the GPU the actors
    get (`cluster_gpu_facts`: this machine's, or a probe task's), with no CUDA check on the driver."""
    from ray_app.engines.precision import resolve_precision
    from ray_app.engines.slm import precision_choice
    from ray_app.ray_runtime import cluster_gpu_facts

    if settings.device == "cpu":
        return precision_choice(settings)
    gpu = cluster_gpu_facts() if settings.precision == "auto" else None
    return resolve_precision(settings.precision, settings.device, settings.model_path, gpu)


def slm_plan(config: EvalConfig, gpus: int, cpus: float) -> SlmPlan:
    """Resolved SLM settings, their identity, and the actor pool (count, CPUs and GPUs per actor), for
    where the SLM runs: `gpus` and `cpus` of the Ray cluster (`slm-swap eval`) or of this machine
    (the live compare, which runs the SLM in its own process)."""
    from ray_app.engines.adapter_weights import checkpoint_bytes, resolve_adapter_weights

    model_path = resolve_slm_model_path(config.slm.model_path)
    adapter = Path(config.slm.adapter_path).resolve() if config.slm.adapter_path else None
    if adapter is not None and not is_adapter_folder(adapter):
        raise FileNotFoundError(f"--adapter {not_an_adapter_message(adapter)}")
    num_actors = config.slm.num_actors or (gpus if gpus else 1)
    device = "cuda" if gpus else "cpu"
    cpu_threads = None if gpus else max(1, int(cpus) // num_actors)
    settings = SlmSettings(
        model_path=model_path,
        adapter_path=adapter,
        precision=config.slm.precision,
        batch_size=config.slm.batch_size,
        max_new_tokens=config.slm.max_new_tokens,
        prefill_chunk_tokens=config.slm.prefill_chunk_tokens,
        cpu_linear=config.slm.cpu_linear,
        decode_attention=config.slm.decode_attention,
        device=device,
        cpu_threads=cpu_threads,
        seed=config.seed,
    )
    # The precision is decided here, on the driver, because the run key holds it; the actors load
    # exactly that. With a local Ray the actors share this machine's CPU, so `auto` follows their CPU;
    # on a cluster it follows the driver's. A GPU need not be on the driver: `auto` sizes the model
    # against the GPU the actors get (`cluster_gpu_facts`: this machine's, or a probe task's).
    choice = driver_precision_choice(settings)
    precision = choice.precision
    settings = dataclasses.replace(settings, precision=precision)
    if adapter is not None:  # merged or not changes the arithmetic: decided here too, and in the run key
        weights = resolve_adapter_weights(
            config.slm.adapter_weights, precision, device, checkpoint_bytes(model_path), 1
        )
        settings = dataclasses.replace(settings, adapter_weights=weights.name)
    # Packed oneDNN kernels round differently from torch's: decided here too (a probe on this machine), and
    # in the run key when they are used, so an fp32 run keeps the key it had before they existed.
    linear = resolve_cpu_linear(settings.cpu_linear, precision, device, model_path, cpu_threads)
    settings = dataclasses.replace(settings, cpu_linear=linear.kernels)
    # So does the compiled decode-step attention (~1e-7 from torch's flash kernel): built here too, and in
    # the key when used. The actors load exactly this choice (`compiled` fails where it cannot be built).
    attention = resolve_decode_attention(settings.decode_attention, precision, device)
    settings = dataclasses.replace(settings, decode_attention=attention.kernel)
    identity = {  # everything an answer depends on (the rows decoding together come from the last three)
        "engine": ENGINE_IDENTITY,
        "model_fingerprint": folder_fingerprint(model_path),
        "adapter_fingerprint": adapter_fingerprint(adapter) if adapter else None,
        **({"adapter_weights": settings.adapter_weights} if adapter else {}),
        "device": device,
        "precision": precision,
        "max_new_tokens": settings.max_new_tokens,
        "seed": config.seed,
        "batch_size": settings.batch_size,
        "rows_per_task": config.slm.rows_per_task,
        "prefill_chunk_tokens": settings.prefill_chunk_tokens,
        **linear.run_key_entry(),
        **({"decode_attention": attention.kernel} if attention.kernel == "compiled" else {}),
        # only constrained runs carry these: a free run keeps the key it had before constrained decoding existed
        **(constrained_identity(config.track) if config.slm.decoding == "constrained" else {}),
    }
    actor_cpus, actor_gpus = (0, 1) if gpus else (config.slm.actor_num_cpus, 0)
    return SlmPlan(
        settings, identity, choice, config.slm.rows_per_task, num_actors, actor_cpus, actor_gpus, linear, attention
    )


def slm_choices(config: EvalConfig, plan: SlmPlan) -> dict[str, Any]:
    """What the SLM's precision and CPU linear kernels were asked to be, and why the driver chose what
    it did: the entries every saved SLM description (`slm-swap eval`, the live compare) carries."""
    return {
        "precision_requested": config.slm.precision,
        "precision_reason": plan.precision.reason,
        "cpu_linear_requested": config.slm.cpu_linear,
        "cpu_linear_reason": plan.cpu_linear.reason,
        "decode_attention_requested": config.slm.decode_attention,
        "decode_attention_reason": plan.decode_attention.reason,
    }
