"""benchmarks/long_prompt_wait.py: the long prompt it builds, the timeline it reports, its flags, and
(slow) a whole run on a tiny model with the real `slm-swap serve`. Nothing here builds llama.cpp."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from benchmarks import llama_server
from benchmarks import long_prompt_wait as benchmark
from ray_app.prompts import parse_toolcall_prompt

TOKENIZER = Path(__file__).parent / "fixtures" / "smollm2_tokenizer"


def test_the_long_prompt_lists_distinct_tools_until_it_reaches_the_length_asked():
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    prompt = benchmark.long_prompt(tokenizer, 3000)
    parsed = parse_toolcall_prompt(prompt)
    names = [signature["name"] for signature in parsed.signatures]
    assert len(names) == len(set(names)) > 10
    assert parsed.query == benchmark.LONG_QUERY
    length = benchmark.chat_token_count(tokenizer, prompt)
    assert length >= 3000
    one_tool_less = benchmark.toolcall_prompt(parsed.signatures[:-1], benchmark.LONG_QUERY)
    assert benchmark.chat_token_count(tokenizer, one_tool_less) < 3000  # it stops at the first that reaches it


def test_a_length_the_split_cannot_reach_is_an_error_naming_the_split():
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    with pytest.raises(ValueError, match=r"train\.jsonl: its \d+ distinct tools make a prompt shorter than"):
        benchmark.long_prompt(tokenizer, 10_000_000)


def answer(first_token_s, done_s):
    return benchmark.StreamedAnswer(first_token_s, done_s, 100, 4)


def test_the_timeline_puts_the_short_request_on_the_long_ones_clock():
    facts = benchmark.timeline_facts(answer(20.0, 21.0), answer(0.5, 1.2), delay_s=3.0)
    assert facts == {"short_done_at_s": 4.2, "short_done_before_long_first_token": True}
    blocked = benchmark.timeline_facts(answer(20.0, 21.0), answer(17.5, 17.6), delay_s=3.0)
    assert blocked == {"short_done_at_s": 20.6, "short_done_before_long_first_token": False}
    assert not benchmark.timeline_facts(answer(None, 2.0), answer(0.1, 0.2), 3.0)["short_done_before_long_first_token"]


def test_the_comparison_divides_the_short_waits_and_checks_the_target_on_the_chunked_server():
    chunked = {"short": {"done_s": 1.5}, "short_done_before_long_first_token": True}
    one_piece = {"short": {"done_s": 30.0}, "short_done_before_long_first_token": False}
    result = benchmark.comparison({"ours_chunked": chunked, "ours_one_piece": one_piece})
    assert result["short_wait_chunked_vs_one_piece"] == 0.05 and result["target_met"] is True
    blocked = {"short": {"done_s": 29.0}, "short_done_before_long_first_token": False}
    assert benchmark.comparison({"ours_chunked": blocked, "ours_one_piece": one_piece})["target_met"] is False
    assert benchmark.comparison({"ours_chunked": chunked}) == {}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--delay-s", "0"], "--delay-s: must be a positive number"),
        (["--delay-s", "soon"], "--delay-s: must be a positive number"),
        (["--long-prompt-tokens", "-5"], "--long-prompt-tokens: must be a positive integer"),
        (["--peers", "vllm"], "--peers: invalid choice"),
    ],
)
def test_bad_flags_stop_with_a_message_naming_the_flag(arguments, message, capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(arguments)
    assert message in capsys.readouterr().err


def test_a_prompt_longer_than_the_models_context_stops_before_any_server_starts(tiny_model_dir, capsys):
    assert benchmark.main(["--model-path", str(tiny_model_dir), "--long-prompt-tokens", "4090"]) == 2
    assert "exceed the model's context (4096 tokens)" in capsys.readouterr().err


def test_without_a_built_llama_server_the_run_stops_before_any_work_and_says_how_to_build_it(
    monkeypatch, capsys, tmp_path
):
    monkeypatch.setattr(llama_server, "server_binary", lambda root=None: tmp_path / "missing" / "llama-server")
    assert benchmark.main(["--peers", "llama-server"]) == 2
    assert "benchmarks/build_llama_server.py" in capsys.readouterr().err


def test_the_one_piece_server_prefills_a_prompt_as_long_as_the_context_at_once(tiny_model_dir, tmp_path):
    args = benchmark.parse_args(["--precision", "fp32", "--prefill-chunk-tokens", "64"])
    found = benchmark.configurations(args, tiny_model_dir, 4096, tmp_path, None)
    assert [configuration.name for configuration in found] == ["ours_chunked", "ours_one_piece"]
    for configuration, tokens in zip(found, ("64", "4096"), strict=True):
        command = configuration.command_for_port(8123)
        assert command[command.index("--prefill-chunk-tokens") + 1] == tokens
        assert command[command.index("--host") + 1] == "127.0.0.1" and "8123" in command


@pytest.mark.slow
def test_whole_run_on_a_tiny_model_with_the_real_serve_cli(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "report.json"
    arguments = [
        "--model-path", str(tiny_model_dir), "--long-prompt-tokens", "1500", "--delay-s", "0.2",
        "--prefill-chunk-tokens", "64", "--precision", "fp32", "--output", str(output),
    ]  # fmt: skip
    assert benchmark.main(arguments) == 0
    report = json.loads(output.read_text())
    # The report is stdout's last thing (a Ray this test process is attached to may print lines before it).
    assert capsys.readouterr().out.endswith(json.dumps(report, indent=2) + "\n")
    assert list(report["configurations"]) == ["ours_chunked", "ours_one_piece"]
    for name, entry in report["configurations"].items():
        assert entry["long"]["prompt_tokens"] >= 1500 and entry["short"]["prompt_tokens"] < 100
        assert 0 < entry["short"]["completion_tokens"] <= 4 and 0 < entry["long"]["completion_tokens"] <= 16
        assert entry["short"]["done_s"] > 0 and entry["long"]["done_s"] >= entry["long"]["first_token_s"] > 0
        assert os.path.isfile(report["servers"][name]["log"])
    assert report["configurations"]["ours_one_piece"]["prefill_chunk_tokens"] == 4096
    assert report["short_wait_chunked_vs_one_piece"] > 0
    assert report["machine"]["cpu"]["model_name"]


def test_llama_server_as_peer_gets_two_slots_each_as_long_as_the_models_context(tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / "q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(llama_server, "demo_ggufs", lambda kinds: {kind: tmp_path / f"{kind}.gguf" for kind in kinds})
    args = benchmark.parse_args(["--peers", "llama-server"])
    found = benchmark.configurations(args, tiny_model_dir, 4096, tmp_path, tmp_path / "llama-server")
    assert [configuration.name for configuration in found] == ["ours_chunked", "ours_one_piece", "llama_server_q4_1"]
    command = found[-1].command_for_port(8124)
    assert command[0] == str(tmp_path / "llama-server") and str(tmp_path / "q4_1.gguf") in command
    assert command[command.index("--parallel") + 1] == "2" and command[command.index("--ctx-size") + 1] == "8192"
    assert found[-1].facts["slot_context_tokens"] == 4096 and found[-1].side == "peer"
