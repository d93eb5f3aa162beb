"""The precision rule of eval, training and serving: auto on a GPU = bf16 when the weights take at most
half its memory, else 8-bit; on CPU bf16 only where the CPU computes bf16 natively (avx512_bf16 or AMX),
else fp32. No model is loaded."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ray_app.engines import precision as precision_module
from ray_app.engines.precision import (
    GIB,
    CpuBf16Support,
    GpuFacts,
    bf16_weight_bytes,
    cpu_autocast_bf16,
    cpu_bf16_support,
    cpu_model_name,
    native_bf16_flags,
    resolve_precision,
)

NATIVE = CpuBf16Support(native=True, evidence="avx512_bf16 and AMX", cpu="Intel(R) Xeon(R) Platinum 8480+")
EMULATED = CpuBf16Support(native=False, evidence="no avx512_bf16 or AMX, per torch", cpu="AMD EPYC 7B13")

EPYC_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu sse2 avx avx2 fma bmi2 sha_ni
"""
SAPPHIRE_RAPIDS_CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""


@pytest.fixture
def cpu_has(monkeypatch):
    def patch(support: CpuBf16Support) -> None:
        monkeypatch.setattr(precision_module, "cpu_bf16_support", lambda: support)

    return patch


def test_cpuinfo_flags_and_model_name_are_read_from_the_text():
    assert native_bf16_flags(EPYC_CPUINFO) == []
    assert native_bf16_flags(SAPPHIRE_RAPIDS_CPUINFO) == ["avx512_bf16", "amx_bf16", "amx_tile"]
    assert native_bf16_flags("Features\t: fp asimd bf16\n") == []  # an ARM flag line: not one we count
    assert cpu_model_name(EPYC_CPUINFO) == "AMD EPYC 7B13 64-Core Processor"


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux's /proc/cpuinfo")
def test_torchs_answer_on_this_machine_agrees_with_its_cpuinfo_flags():
    cpuinfo = Path("/proc/cpuinfo").read_text()
    support = cpu_bf16_support()
    assert support.native == bool(native_bf16_flags(cpuinfo)) and support.cpu == cpu_model_name(cpuinfo)


def test_auto_on_cpu_is_bf16_only_where_the_cpu_has_native_bf16(cpu_has):
    cpu_has(NATIVE)
    native = resolve_precision("auto", "cpu")
    assert (native.precision, native.device, native.cpu) == ("bf16", "cpu", NATIVE.cpu)
    assert "computes bf16 natively (avx512_bf16 and AMX)" in native.reason and NATIVE.cpu in native.reason
    cpu_has(EMULATED)
    emulated = resolve_precision("auto", "cpu")
    assert (emulated.precision, emulated.cpu) == ("fp32", "AMD EPYC 7B13")
    assert "has no native bf16" in emulated.reason and "emulated" in emulated.reason
    assert emulated.summary() == f"fp32: {emulated.reason}"


H200 = GpuFacts("NVIDIA H200", 140 * GIB, bf16=True)
T4 = GpuFacts("Tesla T4", 15 * GIB, bf16=False)


def checkpoint(folder: Path, shards: dict[str, dict[str, tuple[int, ...]]]) -> Path:
    """A model folder whose safetensors shards hold zero tensors of these shapes (fp32, as the demo SLM's)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for file_name, shapes in shards.items():
        save_file({name: torch.zeros(shape) for name, shape in shapes.items()}, str(folder / file_name))
    return folder


def test_the_weights_size_in_bf16_comes_from_the_safetensors_headers(tmp_path):
    model = checkpoint(tmp_path / "model", {"model-00001-of-00002.safetensors": {"embed": (100, 64), "norm": (64,)},
                                            "model-00002-of-00002.safetensors": {"head": (64, 100)}})  # fmt: skip
    assert bf16_weight_bytes(model) == 2 * (100 * 64 + 64 + 64 * 100)  # parameters × 2 bytes, fp32 on disk
    assert bf16_weight_bytes(tmp_path) is None  # no safetensors files: unknown


def test_auto_on_a_gpu_is_bf16_when_the_weights_take_at_most_half_of_its_memory(cpu_has, tmp_path):
    model = checkpoint(tmp_path / "model", {"model.safetensors": {"layer": (1000, 500)}})  # 1,000,000 bytes in bf16
    for support in (NATIVE, EMULATED):  # the CPU has no say on a GPU
        cpu_has(support)
        choice = resolve_precision("auto", "cuda", model, H200)
        assert (choice.precision, choice.device, choice.cpu) == ("bf16", "cuda", None)
    assert choice.reason.startswith("auto on NVIDIA H200: bf16: the weights in bf16 (0.00 GiB) take 0% of its 140 GiB")
    fits = resolve_precision("auto", "cuda", model, GpuFacts("small", 2_000_000, bf16=True))  # exactly half
    assert fits.precision == "bf16" and "take 50% of" in fits.reason
    too_big = resolve_precision("auto", "cuda", model, GpuFacts("smaller", 1_999_999, bf16=True))
    assert too_big.precision == "8bit" and "over 50%; 8-bit halves them" in too_big.reason
    no_bf16 = resolve_precision("auto", "cuda", model, T4)
    assert no_bf16.precision == "8bit" and "Tesla T4" in no_bf16.reason and "does not compute bf16" in no_bf16.reason
    unknown = resolve_precision("auto", "cuda", tmp_path / "no-such-model", H200)
    assert unknown.precision == "8bit" and "the model's size is unknown" in unknown.reason
    assert "no model chosen yet" in resolve_precision("auto", "cuda", None, H200).reason
    assert resolve_precision("bf16", "cuda", model, T4).precision == "bf16"  # explicit choices are kept
    assert resolve_precision("8bit", "cuda", model, H200).precision == "8bit"


def test_auto_on_a_gpu_asks_this_process_for_its_gpu_when_given_none(monkeypatch, tmp_path):
    model = checkpoint(tmp_path / "model", {"model.safetensors": {"layer": (10, 10)}})
    monkeypatch.setattr(precision_module, "local_gpu_facts", lambda: H200)
    assert resolve_precision("auto", "cuda", model).precision == "bf16"
    monkeypatch.setattr(precision_module, "local_gpu_facts", lambda: None)
    unseen = resolve_precision("auto", "cuda", model)
    assert unseen.precision == "8bit" and "no GPU seen where this was decided" in unseen.reason


def test_a_driver_with_ray_on_this_machine_sizes_against_this_machines_gpu(monkeypatch):
    from ray_app import ray_runtime

    monkeypatch.setattr(ray_runtime, "_gpu_facts", None)
    monkeypatch.setattr(ray_runtime, "_will_run_locally", lambda ray: True)
    monkeypatch.setattr(precision_module, "local_gpu_facts", lambda: H200)
    assert ray_runtime.cluster_gpu_facts() == H200
    monkeypatch.setattr(precision_module, "local_gpu_facts", lambda: T4)
    assert ray_runtime.cluster_gpu_facts() == H200  # asked once per process


def test_explicit_choices_are_kept_and_emulated_bf16_is_warned_about(cpu_has, caplog):
    cpu_has(EMULATED)
    assert resolve_precision("fp32", "cpu").reason == "fp32 as asked, on CPU"
    with caplog.at_level(logging.WARNING, logger="ray_app.engines.precision"):
        choice = resolve_precision("bf16", "cpu")
    assert choice.precision == "bf16" and "emulated, much slower than fp32" in choice.reason
    assert "emulated" in caplog.text
    cpu_has(NATIVE)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ray_app.engines.precision"):
        assert resolve_precision("bf16", "cpu").reason.startswith("bf16 as asked: ")
    assert caplog.text == ""
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, 8bit, 4bit, got 'fp16'"):
        resolve_precision("fp16", "cpu")


def test_training_autocast_follows_the_same_rule(cpu_has):
    from ray_app.train.sft_worker import training_precision

    cpu_has(NATIVE)
    assert cpu_autocast_bf16(None).precision == "bf16"
    assert training_precision(None, on_gpu=False).precision == "bf16"
    assert training_precision(False, on_gpu=False).precision == "fp32"  # an explicit --no-cpu-bf16
    cpu_has(EMULATED)
    assert training_precision(None, on_gpu=False).precision == "fp32"
    forced = training_precision(True, on_gpu=False)
    assert forced.precision == "bf16" and "emulated" in forced.reason


def test_gpu_training_uses_bf16_where_the_gpu_supports_it(monkeypatch):
    from ray_app.train import sft_worker

    monkeypatch.setattr(sft_worker, "_bf16_supported", lambda: True)
    assert sft_worker.training_precision(None, on_gpu=True).precision == "bf16"
    monkeypatch.setattr(sft_worker, "_bf16_supported", lambda: False)
    assert sft_worker.training_precision(True, on_gpu=True).precision == "fp32"


def test_the_slm_loader_resolves_device_then_the_rule(cpu_has, monkeypatch):
    import torch

    from ray_app.engines.slm import SlmEngineError, SlmSettings, precision_choice, resolve_device_and_precision

    cpu_has(EMULATED)
    settings = SlmSettings(model_path=Path("unused"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(precision_module, "local_gpu_facts", lambda: H200)
    assert resolve_device_and_precision(settings) == ("cuda", "8bit")  # no weights to size at that path
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device_and_precision(settings) == ("cpu", "fp32")
    cpu_has(NATIVE)
    assert precision_choice(settings).precision == "bf16"
    with pytest.raises(SlmEngineError, match="8bit loading needs a CUDA GPU"):
        precision_choice(SlmSettings(model_path=Path("unused"), precision="8bit"))


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_an_adapter_computes_in_the_precision_the_run_chose(precision, tiny_model_dir, tmp_path):
    """The LoRA weights (saved in fp32, as trained) are loaded in bf16 for a bf16 run, by both loaders
    (evaluation's and Serve's `LoadedSlm`, and the HF generate oracle's `load_model_and_tokenizer`): a
    fp32 LoRA beside a bf16 base cast every layer's input and output at every forward call (~4x slower)."""
    import torch

    from ray_app.engines.decode.loaded_slm import LoadedSlm
    from ray_app.engines.slm import SlmSettings, load_model_and_tokenizer
    from tests.test_serve import random_lora_adapter

    adapter_dir = tmp_path / "adapter_toolcall"
    random_lora_adapter(tiny_model_dir, adapter_dir)
    expected = torch.bfloat16 if precision == "bf16" else torch.float32
    for adapter_weights in ("unmerged", "merged"):
        settings = SlmSettings(model_path=tiny_model_dir, precision=precision, adapter_weights=adapter_weights)
        served = LoadedSlm(settings, {"slm-toolcall": adapter_dir}).model_for("slm-toolcall")
        oracle, *_ = load_model_and_tokenizer(
            SlmSettings(
                model_path=tiny_model_dir,
                precision=precision,
                adapter_path=adapter_dir,
                adapter_weights=adapter_weights,
            )
        )
        for model in (served, oracle):
            lora = {parameter.dtype for name, parameter in model.named_parameters() if "lora_" in name}
            base = {parameter.dtype for name, parameter in model.named_parameters() if "lora_" not in name}
            assert lora == ({expected} if adapter_weights == "unmerged" else set())  # merged: folded into the base
            assert base == {expected}
