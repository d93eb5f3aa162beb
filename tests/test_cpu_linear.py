"""fp32 and bf16 linear layers on CPU: torch's kernels or oneDNN's with weights packed at load (engines.cpu_linear)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_app.engines import cpu_linear
from ray_app.engines.cpu_linear import pack_linear_weights, resolve_cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.onednn_available(), reason="this torch build has no oneDNN")
MEASURE_OTHERS_CPU_CORES = cpu_linear.others_cpu_cores


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    """Every probe here is taken as quiet (a scripted probe must not be retried because the test machine is
    busy), and this process has probed nothing yet."""
    monkeypatch.setattr(cpu_linear, "others_cpu_cores", lambda measure: (measure(), 0.0, 2))
    monkeypatch.setattr(cpu_linear, "PROBED_THIS_PROCESS", {})


@pytest.fixture
def probe_says(monkeypatch):
    def set_timings(torch_us: float, onednn_us: float) -> None:
        monkeypatch.setattr(cpu_linear, "machine_probe", lambda *shape: (torch_us, onednn_us))

    return set_timings


def test_packed_layers_compute_what_torch_computes_and_keep_their_weights():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.ReLU(), torch.nn.Linear(40, 8, bias=False))
    half = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Linear(40, 8)).to(torch.bfloat16)
    inputs = torch.randn(3, 5, 24)  # [batch, positions, width], as a decoder's layers see it
    half_inputs = inputs.to(torch.bfloat16)
    with torch.no_grad():
        expected = model(inputs)
        weight = model[0].weight.clone()
        assert pack_linear_weights(model) == 2
        assert pack_linear_weights(model) == 0  # already packed: nothing done twice
        half_expected = half(half_inputs)
        bf16_packs = cpu_linear.onednn_bf16_available()  # not on an AVX2-only CPU
        assert pack_linear_weights(half) == (2 if bf16_packs else 0)  # bf16 is packed too where oneDNN runs it
        half_packed = half(half_inputs)
        packed = model(inputs)
        strided = model(inputs.transpose(0, 1).contiguous().transpose(0, 1))  # not row-major: same answer
    assert packed.shape == expected.shape == (3, 5, 8)
    assert torch.allclose(packed, expected, atol=1e-5) and torch.allclose(strided, expected, atol=1e-5)
    assert torch.equal(model[0].weight, weight)  # tied embeddings and state_dict still read it
    # bf16: as torch's kernels compute it (the same bits on the CPUs measured; promised only within bf16's rounding)
    assert half_packed.dtype == torch.bfloat16 and torch.allclose(half_packed, half_expected, atol=3e-2, rtol=2e-2)


def test_auto_takes_onednn_only_where_the_probe_finds_it_clearly_faster(probe_says, tmp_path):
    probe_says(620.0, 410.0)
    choice = resolve_cpu_linear("auto", "fp32", "cpu", tmp_path)
    assert choice.kernels == "onednn" and "≥ 1.2x as fast" in choice.reason
    probe_says(620.0, 560.0)  # 1.1x: within what two runs of the probe can differ by
    choice = resolve_cpu_linear("auto", "fp32", "cpu", tmp_path)
    assert choice.kernels == "torch" and "under 1.2x as fast" in choice.reason


def test_only_an_fp32_or_bf16_model_on_cpu_is_packed_and_explicit_choices_are_kept(monkeypatch, tmp_path):
    probed = []
    monkeypatch.setattr(cpu_linear, "onednn_bf16_available", lambda: True)  # as on a CPU with avx512 or AMX
    monkeypatch.setattr(cpu_linear, "machine_probe", lambda *shape: probed.append(shape) or (1000.0, 100.0))
    choice = resolve_cpu_linear("auto", "bf16", "cpu", tmp_path, threads=2)
    assert choice.kernels == "onednn" and "16x576x1536 bf16" in choice.reason
    assert probed == [(576, 1536, 2, "bf16")]  # bf16 is timed in bf16
    assert resolve_cpu_linear("onednn", "bf16", "cuda", tmp_path).kernels == "torch"
    assert resolve_cpu_linear("onednn", "8bit", "cuda", tmp_path).reason.endswith("(this one: 8bit on cuda)")
    assert resolve_cpu_linear("onednn", "fp16", "cpu", tmp_path).kernels == "torch"
    assert resolve_cpu_linear("torch", "fp32", "cpu", tmp_path).reason == "torch as asked"
    monkeypatch.setattr(cpu_linear, "machine_probe", lambda *shape: (100.0, 1000.0))
    assert resolve_cpu_linear("onednn", "fp32", "cpu", tmp_path).kernels == "onednn"
    with pytest.raises(ValueError, match="must be one of auto, torch, onednn"):
        resolve_cpu_linear("mkl", "fp32", "cpu", tmp_path)


def test_bf16_stays_on_torchs_kernels_where_onednn_has_none_for_this_cpu(monkeypatch, probe_says, tmp_path):
    """An AVX2-only CPU: packing a bf16 weight would raise there, so auto never probes it and onednn says why."""
    monkeypatch.setattr(cpu_linear, "onednn_bf16_available", lambda: False)
    probe_says(1000.0, 100.0)
    choice = resolve_cpu_linear("auto", "bf16", "cpu", tmp_path)
    assert choice == cpu_linear.CpuLinearChoice("torch", "auto: oneDNN has no bf16 kernels for this CPU")
    with pytest.raises(ValueError, match="oneDNN has no bf16 kernels for this CPU"):
        resolve_cpu_linear("onednn", "bf16", "cpu", tmp_path)
    assert resolve_cpu_linear("auto", "fp32", "cpu", tmp_path).kernels == "onednn"  # fp32 is not affected


def test_the_probe_times_the_models_own_mlp_shape_on_the_engines_threads(monkeypatch, tiny_model_dir):
    import torch

    probed = []
    monkeypatch.setattr(cpu_linear, "machine_probe", lambda *shape_threads: probed.append(shape_threads) or (2.0, 1.0))
    choice = resolve_cpu_linear("auto", "fp32", "cpu", tiny_model_dir, threads=1)
    assert probed == [(32, 64, 1, "fp32")] and choice.reason.endswith("(16x32x64)")
    resolve_cpu_linear("auto", "fp32", "cpu", tiny_model_dir)  # no engine threads given: this process's
    assert probed[1] == (32, 64, torch.get_num_threads(), "fp32")
    threads = torch.get_num_threads()
    assert all(timing > 0 for timing in cpu_linear.probe(8, 16, 1))  # a real probe on one thread
    if cpu_linear.onednn_bf16_available():
        assert all(timing > 0 for timing in cpu_linear.probe(8, 16, 1, "bf16"))  # and in bf16
    assert torch.get_num_threads() == threads  # and this process's threads are as they were
    assert cpu_linear.model_mlp_shape(tiny_model_dir / "missing") == (576, 1536)  # the demo SLM's


@pytest.mark.parametrize("kernels", ["torch", "onednn"])
def test_the_engine_answers_as_hf_generate_on_either_kernels_and_says_which(kernels, tiny_model_dir):
    from ray_app.engines.base import EngineRequest
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.engines.slm import SlmSettings, generate_greedy, load_model_and_tokenizer

    settings = SlmSettings(model_path=tiny_model_dir, precision="fp32", batch_size=2, max_new_tokens=6)
    engine = SlmEngine(SlmSettings(**{**settings.to_json(), "model_path": tiny_model_dir, "cpu_linear": kernels}))
    prompts = ["Name a colour.", "Count to three.", "Weather in Oslo?"]
    requests = [EngineRequest(index, "structured", prompt) for index, prompt in enumerate(prompts)]
    answers = engine.generate(requests)
    model, tokenizer, device, _ = load_model_and_tokenizer(settings)  # torch's kernels: the oracle
    for answer, request in zip(answers, requests, strict=True):
        [alone] = generate_greedy(model, tokenizer, device, [request.messages], [6])
        assert answer.token_ids == alone.token_ids
    facts = engine.describe()
    assert facts["cpu_linear"] == kernels and facts["cpu_linear_reason"].startswith(kernels)


@pytest.mark.skipif(not cpu_linear.onednn_bf16_available(), reason="oneDNN has no bf16 kernels for this CPU")
def test_a_bf16_engine_runs_on_packed_weights_when_asked_and_says_so(tiny_model_dir):
    """bf16 answers may differ from torch's kernels in near-ties (not every CPU's torch runs bf16 on oneDNN):
    what must hold is that the packed engine decodes, records its kernels and keeps to max_new_tokens."""
    from ray_app.engines.base import EngineRequest
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.engines.slm import SlmSettings

    settings = SlmSettings(model_path=tiny_model_dir, precision="bf16", batch_size=2, max_new_tokens=5)
    engine = SlmEngine(SlmSettings(**{**settings.to_json(), "model_path": tiny_model_dir, "cpu_linear": "onednn"}))
    answers = engine.generate([EngineRequest(index, "structured", text) for index, text in enumerate(["Hi.", "Go."])])
    assert all(1 <= len(answer.token_ids) <= 5 for answer in answers)  # the tiny model may stop early
    facts = engine.describe()
    assert facts["precision"] == "bf16" and facts["cpu_linear"] == "onednn"


def test_an_evaluation_decides_the_kernels_on_the_driver_and_keys_its_run_by_them(
    probe_says, tiny_model_dir, tmp_path, monkeypatch
):
    from ray_app.engines import precision
    from ray_app.eval.config import EvalConfig, SlmEvalSettings
    from ray_app.eval.slm_plan import slm_plan

    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: precision.CpuBf16Support(False, "none", "a test CPU"))
    config = EvalConfig(track="toolcall", model="slm", eval_root=tmp_path, slm=SlmEvalSettings(str(tiny_model_dir)))
    probe_says(600.0, 400.0)
    plan = slm_plan(config, gpus=0, cpus=2.0)
    assert plan.settings.cpu_linear == plan.identity["cpu_linear"] == plan.cpu_linear.kernels == "onednn"
    probe_says(600.0, 590.0)
    plan = slm_plan(config, gpus=0, cpus=2.0)
    assert plan.settings.cpu_linear == "torch" and "cpu_linear" not in plan.identity  # the key fp32 runs had


def test_a_probe_that_favours_onednn_is_confirmed_by_a_second_and_the_less_favourable_pair_kept(monkeypatch, tmp_path):
    """One busy moment (torch's threaded kernel timed at 16 ms, as a fresh clone's CI once did) does not choose
    oneDNN for good: the second probe's pair is kept when it favours oneDNN less; a real lead survives both."""
    monkeypatch.setattr(cpu_linear, "PROBE_RECORD", tmp_path / "cpu_linear_probe.json")
    pairs = iter([(16000.0, 15.0), (4.7, 14.0), (400.0, 180.0), (390.0, 185.0), (5.0, 14.0)])
    monkeypatch.setattr(cpu_linear, "probe", lambda *shape_threads: next(pairs))
    assert cpu_linear.machine_probe(32, 64, 2) == (4.7, 14.0)
    assert not cpu_linear.onednn_clearly_faster(4.7, 14.0)
    assert cpu_linear.machine_probe(576, 1536, 2) == (390.0, 185.0)  # 2.11x, not 2.22x: still oneDNN
    assert cpu_linear.onednn_clearly_faster(390.0, 185.0)
    assert cpu_linear.machine_probe(32, 64, 1) == (5.0, 14.0)  # favours torch: probed once
    assert next(pairs, None) is None


def test_the_probe_is_measured_once_per_machine_and_kept(monkeypatch, tmp_path):
    """A second process on the machine reads the kept timings: two runs (or a run and its resume) choose alike."""
    record = tmp_path / "cpu_linear_probe.json"
    monkeypatch.setattr(cpu_linear, "PROBE_RECORD", record)
    measured = []
    monkeypatch.setattr(cpu_linear, "probe", lambda *shape_threads: measured.append(shape_threads) or (700.0, 500.0))
    assert cpu_linear.machine_probe(32, 64, 2) == (700.0, 500.0)
    monkeypatch.setattr(cpu_linear, "probe", lambda *shape_threads: measured.append(shape_threads) or (1.0, 9.0))
    assert cpu_linear.machine_probe(32, 64, 2) == (700.0, 500.0)  # kept, not measured again
    assert cpu_linear.machine_probe(48, 96, 2) == (1.0, 9.0)  # another shape is measured
    assert cpu_linear.machine_probe(32, 64, 1) == (1.0, 9.0)  # and another thread count
    assert cpu_linear.machine_probe(32, 64, 2, "bf16") == (1.0, 9.0)  # and another precision
    # (700, 500) favours oneDNN: probed twice to confirm; (1, 9) favours torch: once
    assert measured == [(32, 64, 2, "fp32")] * 2 + [(48, 96, 2, "fp32"), (32, 64, 1, "fp32"), (32, 64, 2, "bf16")]
    kept = json.loads(record.read_text())
    assert len(kept) == 4 and sum(key.endswith(" | bf16") for key in kept) == 1  # fp32's keys as they always were
    for damaged in ("not json", '{"a key": [1.0]}', "[1, 2]"):
        record.write_text(damaged)
        assert cpu_linear.machine_probe(32, 64, 2) == (1.0, 9.0)  # a damaged record is measured again, rewritten
        assert len(json.loads(record.read_text())) == 1


def test_a_probe_taken_while_another_process_is_busy_is_taken_again_and_only_a_quiet_one_is_kept(monkeypatch, tmp_path):
    """On 2 cores another process's work decides the comparison (a fresh clone's demo kept torch's kernels,
    timed while Ray started its workers): a busy probe is taken again; one busy every time decides its run
    only, and the next run probes again."""
    record = tmp_path / "cpu_linear_probe.json"
    monkeypatch.setattr(cpu_linear, "PROBE_RECORD", record)
    monkeypatch.setattr(cpu_linear, "PROBE_RETRY_WAIT_S", 0.0)
    measured = iter([((688.0, 652.0), 0.9, 2), ((627.0, 375.0), 0.05, 2), ((630.0, 380.0), 0.1, 2)])
    monkeypatch.setattr(cpu_linear, "others_cpu_cores", lambda measure: next(measured))
    assert cpu_linear.machine_probe(576, 1536, 2) == (630.0, 380.0)  # the busy pair dropped, the quiet confirmed
    assert next(measured, None) is None and list(json.loads(record.read_text()).values()) == [[630.0, 380.0]]

    busy = iter(
        [((500.0, 450.0), 0.8, 2), ((700.0, 400.0), 0.5, 2), ((600.0, 590.0), 1.2, 2), ((900.0, 300.0), 0.6, 2)]
    )
    monkeypatch.setattr(cpu_linear, "others_cpu_cores", lambda measure: next(busy))
    assert cpu_linear.machine_probe(32, 64, 2) == (700.0, 400.0)  # busy throughout: the least disturbed one
    assert len(json.loads(record.read_text())) == 1  # and not kept
    assert cpu_linear.machine_probe(32, 64, 2) == (700.0, 400.0)  # this process keeps its choice
    monkeypatch.setattr(cpu_linear, "PROBED_THIS_PROCESS", {})  # the next run
    monkeypatch.setattr(cpu_linear, "others_cpu_cores", lambda measure: (measure(), 0.0, 2))
    monkeypatch.setattr(cpu_linear, "probe", lambda *shape_threads: (9.0, 10.0))
    assert cpu_linear.machine_probe(32, 64, 2) == (9.0, 10.0) and len(json.loads(record.read_text())) == 2


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc/stat (Linux)")
def test_the_cpu_other_processes_use_is_measured():
    import subprocess
    import sys
    import time

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # started
        result, others, cores = MEASURE_OTHERS_CPU_CORES(lambda: time.sleep(0.6) or "done")
    finally:
        spinner.kill()
        spinner.wait()
    assert result == "done" and others > 0.5 and cores >= 1  # the spinner's core, while this process slept
