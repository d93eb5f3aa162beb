"""Which grammar library constrains the engine's decoding: llguidance, xgrammar and outlines-core,
measured on the demo SLM's tokenizer (SmolLM2, 49,152 tokens).

Each library gets the same tool-call grammar: the project's wrapper `<tool_call name="NAME">ARGS</tool_call>`
with NAME one of five tools (the four of the first toolcall test row and a calendar tool with
required keys, an enum, a nested object and arrays of objects and integers) and ARGS valid JSON
for that tool's schema, written as the gold completions are (`", "` and `": "`). Measured:

- compile time: the grammar for one request, from the schemas to a matcher ready for its first
  mask (median of fresh compiles, no cache; outlines-core builds its regex index here);
- mask time: computing the allowed-token mask for one row at each step while a 73-token valid
  call is fed token by token (median, 90th percentile and worst step), and consuming the token;
- features: a valid call accepted; a missing required key, a wrong type, a value outside an enum,
  a bad nested object, a bad array item and an unknown tool name each refused; and "auto" (free
  text, or text then a wrapper that is constrained once `<tool_call` appears, the trigger split
  over several tokens as SmolLM2 writes it).

Prints one JSON object. Needs the test fixture's copy of the demo SLM's tokenizer and the three
libraries (`pip install llguidance xgrammar outlines-core`; only llguidance is a project dependency).

Measured (Intel(R) Xeon(R) Processor, 2 cores with avx512_bf16/AMX, shared with other sessions, so
timings are noisy; llguidance 1.9.1, xgrammar 0.2.8, outlines-core 0.2.14; two runs):

| | compile (median) | mask per row-step: median / p90 / first | whole call | auto | pulls in |
|---|---|---|---|---|---|
| llguidance | 2.0-2.5 ms | 12-15 µs / 49-56 µs / 1.6 ms | 3.1-3.3 ms | yes (lazy lexeme) | nothing |
| xgrammar | 28-38 ms | 1.8-2.0 µs / 6-7 µs / 0.16-0.24 ms | 0.5-0.6 ms | yes (triggered tags) | torch, triton (1 GB) |
| outlines-core | 0.47-1.14 s | 1.6-1.7 µs / 95-101 µs / 0.15-0.17 ms | 14-26 ms | no (regex only) | nothing |

("whole call": masks and consumes over the 73-token call.) All three refuse each broken call
(missing required key, wrong type, outside the enum, nested or array item without its required
key, array item of the wrong type, unknown tool). Picked: llguidance. A grammar is compiled per
request (each brings its own tools; the engine keeps recent ones), where llguidance is 11-19x
faster than xgrammar; its masks cost more but stay far below a decode step (a batch-8 step of the
demo SLM takes ~100 ms on this machine); "auto" is one grammar; and it adds no dependency to a
CPU-only install.

    .venv/bin/python benchmarks/grammar_libraries.py [--compiles 20]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/grammar_libraries.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_limits import cpu_description
from ray_app.data.rows import read_split
from ray_app.engines.constrained import toolcall_constraint
from ray_app.engines.constrained.grammar import constraint_grammar
from ray_app.paths import DATASET_ROOT
from ray_app.prompts import format_tool_call, parse_toolcall_prompt

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "smollm2_tokenizer"
CALENDAR = {
    "name": "create_event",
    "description": "Create an event in the user's calendar.",
    "parameters": {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "start": {"type": "string", "description": "ISO 8601 date-time"},
            "minutes": {"type": "integer"},
            "visibility": {"type": "string", "enum": ["public", "private", "busy"]},
            "location": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "room": {"type": "string"}},
                "required": ["city"],
            },
            "attendees": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"email": {"type": "string"}, "optional": {"type": "boolean"}},
                    "required": ["email"],
                },
            },
            "reminders": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["title", "start", "minutes", "attendees"],
    },
}
VALID_ARGUMENTS = {  # 73 tokens in its wrapper
    "title": "Review",
    "start": "2025-03-14",
    "minutes": 45,
    "visibility": "busy",
    "attendees": [{"email": "ana@x.org", "optional": False}],
}
REFUSED = {  # what must not get through, one schema feature each
    "missing required key": {key: value for key, value in VALID_ARGUMENTS.items() if key != "start"},
    "wrong type": {**VALID_ARGUMENTS, "minutes": "45"},
    "value outside the enum": {**VALID_ARGUMENTS, "visibility": "secret"},
    "nested object without its required key": {**VALID_ARGUMENTS, "location": {"room": "4B"}},
    "array item without its required key": {**VALID_ARGUMENTS, "attendees": [{"optional": True}]},
    "array item of the wrong type": {**VALID_ARGUMENTS, "reminders": [10, "soon"]},
}
TRIGGER = "<tool_call"


def closed(schema: dict) -> dict:
    """The schema with `additionalProperties: false` on every object that does not say (as the engine does)."""
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) if isinstance(value, dict) else value for key, value in schema.items()}
    if "properties" in result:
        result["properties"] = {name: closed(sub) for name, sub in result["properties"].items()}
        result.setdefault("additionalProperties", False)
    if isinstance(result.get("items"), dict):
        result["items"] = closed(result["items"])
    return result


def benchmark_tools() -> list[dict]:
    [first, *_] = read_split(DATASET_ROOT / "toolcall" / "test.jsonl")
    signatures = parse_toolcall_prompt(first.prompt).signatures + [CALENDAR]
    return [{"name": tool["name"], "parameters": closed(tool["parameters"])} for tool in signatures]


# --- one adapter per library: compile(tools, auto) -> matcher; mask(matcher); consume(matcher, token)


class Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer, vocab_size: int):
        import llguidance
        import llguidance.hf
        import numpy

        self.llguidance = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.mask = numpy.zeros((vocab_size + 31) // 32, dtype=numpy.int32)

    def version(self) -> str:
        return self.llguidance.get_version()

    def compile(self, tools: list[dict], auto: bool):
        """The engine's own grammar (`engines/constrained/grammar.py`), as a row gets it."""
        constraint = toolcall_constraint(tools, "auto" if auto else "required")
        matcher = self.llguidance.LLMatcher(self.tokenizer, constraint_grammar(constraint), log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return matcher

    def fill_mask(self, matcher) -> None:
        matcher.unsafe_compute_mask_ptr(self.mask.ctypes.data, self.mask.nbytes)

    def consume(self, matcher, token: int) -> bool:
        return matcher.consume_token(token) and not matcher.is_error()

    def accepts_end(self, matcher) -> bool:
        return matcher.is_accepting()


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tokenizer, vocab_size: int):
        import xgrammar

        self.xgrammar = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        self.mask = xgrammar.allocate_token_bitmask(1, vocab_size)

    def version(self) -> str:
        return self.xgrammar.__version__ if hasattr(self.xgrammar, "__version__") else package_version("xgrammar")

    def compile(self, tools: list[dict], auto: bool):
        tags = [
            {"type": "tag", "begin": f'<tool_call name="{tool["name"]}">', "end": "</tool_call>",
             "content": {"type": "json_schema", "json_schema": tool["parameters"]}}
            for tool in tools
        ]  # fmt: skip
        if auto:
            structure = {"type": "triggered_tags", "triggers": [TRIGGER], "tags": tags, "stop_after_first": True}
        else:
            structure = {"type": "or", "elements": tags}
        compiled = self.compiler.compile_structural_tag(json.dumps({"type": "structural_tag", "format": structure}))
        return self.xgrammar.GrammarMatcher(compiled)

    def fill_mask(self, matcher) -> None:
        matcher.fill_next_token_bitmask(self.mask)

    def consume(self, matcher, token: int) -> bool:
        return matcher.accept_token(token)

    def accepts_end(self, matcher) -> bool:
        return matcher.is_completed() or matcher.is_terminated() or matcher.accept_token(matcher.stop_token_ids[0])


class OutlinesCore:
    """Regular expressions only: the JSON Schema becomes a regex, the wrapper is text around it. No
    context-free grammar and no lazy trigger, so "auto" (free text, then a wrapper) is not offered."""

    name = "outlines-core"

    def __init__(self, tokenizer, vocab_size: int):
        import numpy
        import outlines_core

        self.outlines_core, self.numpy = outlines_core, numpy
        eos = tokenizer.eos_token_id
        by_bytes: dict[bytes, list[int]] = {}
        byte_decoder = bytes_of_byte_level_tokens()
        special = set(tokenizer.all_special_ids)
        for token, token_id in tokenizer.get_vocab().items():
            if token_id != eos and token_id not in special:
                by_bytes.setdefault(bytes(byte_decoder[char] for char in token), []).append(token_id)
        self.vocabulary = outlines_core.Vocabulary(eos, by_bytes)
        self.mask = numpy.zeros((vocab_size + 31) // 32, dtype=numpy.int32)

    def version(self) -> str:
        return package_version("outlines-core")

    def compile(self, tools: list[dict], auto: bool):
        if auto:
            raise NotImplementedError("regular expressions only: no lazy trigger for free text then a wrapper")
        from outlines_core.json_schema import build_regex_from_schema

        branches = "|".join(
            re.escape(f'{tool["name"]}">') + build_regex_from_schema(json.dumps(tool["parameters"]), r"[ ]?")
            for tool in tools
        )
        regex = re.escape('<tool_call name="') + f"(?:{branches})" + re.escape("</tool_call>")
        return self.outlines_core.Guide(self.outlines_core.Index(regex, self.vocabulary))

    def fill_mask(self, matcher) -> None:
        matcher.write_mask_into(self.mask.ctypes.data, self.mask.size, 4)

    def consume(self, matcher, token: int) -> bool:
        try:
            matcher.advance(token)
            return True
        except ValueError:
            return False

    def accepts_end(self, matcher) -> bool:
        return matcher.is_finished()


def bytes_of_byte_level_tokens() -> dict[str, int]:
    """GPT-2's byte-level alphabet (SmolLM2's tokenizer uses it): printable stand-in → byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    stand_ins, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            stand_ins.append(256 + extra)
            extra += 1
    return {chr(stand_in): byte for byte, stand_in in zip(printable, stand_ins, strict=True)}


def package_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def package_requirements(name: str) -> list[str]:
    """What installing the library pulls in (xgrammar needs torch and triton, even on a CPU-only machine)."""
    from importlib.metadata import requires

    plain = [requirement for requirement in requires(name) or [] if "extra ==" not in requirement]
    return sorted(requirement.split(";")[0].strip() for requirement in plain)


def accepts(library, tools: list[dict], auto: bool, token_ids: list[int]) -> bool:
    """Fed token by token (a mask before each, as decoding does), is the text taken whole and may it end there?"""
    matcher = library.compile(tools, auto)
    for token in token_ids:
        library.fill_mask(matcher)
        if not library.consume(matcher, token):
            return False
    return library.accepts_end(matcher)


def measure(library, tools: list[dict], call_ids: list[int], compiles: int) -> dict:
    compile_s = []
    for _ in range(compiles):
        started = time.perf_counter()
        library.compile(tools, auto=False)
        compile_s.append(time.perf_counter() - started)
    matcher = library.compile(tools, auto=False)
    mask_s, consume_s = [], []
    for token in call_ids:
        started = time.perf_counter()
        library.fill_mask(matcher)
        mask_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert library.consume(matcher, token), f"{library.name} refused the valid call"
        consume_s.append(time.perf_counter() - started)
    return {
        "compile_ms_median": round(statistics.median(compile_s) * 1e3, 2),
        "compile_ms_max": round(max(compile_s) * 1e3, 2),
        "mask_us_per_row_step": {
            "median": round(statistics.median(mask_s) * 1e6, 1),
            "p90": round(statistics.quantiles(mask_s, n=10)[-1] * 1e6, 1),
            "max": round(max(mask_s) * 1e6, 1),
        },
        "consume_us_per_token_median": round(statistics.median(consume_s) * 1e6, 1),
        "mask_plus_consume_ms_whole_call": round((sum(mask_s) + sum(consume_s)) * 1e3, 2),
    }


def features(library, tools: list[dict], tokenize) -> dict:
    def call(name: str, arguments: dict) -> list[int]:
        return tokenize(format_tool_call(name, arguments))

    results = {"valid call accepted": accepts(library, tools, False, call(CALENDAR["name"], VALID_ARGUMENTS))}
    for label, arguments in REFUSED.items():
        results[f"{label} refused"] = not accepts(library, tools, False, call(CALENDAR["name"], arguments))
    results["unknown tool name refused"] = not accepts(library, tools, False, call("delete_calendar", VALID_ARGUMENTS))
    try:
        results["auto: free text accepted"] = accepts(library, tools, True, tokenize("I cannot call a tool for that."))
        text_then_call = "Sure. " + format_tool_call(CALENDAR["name"], VALID_ARGUMENTS)
        results["auto: text then a valid call accepted"] = accepts(library, tools, True, tokenize(text_then_call))
        text_then_bad = "Sure. " + format_tool_call(CALENDAR["name"], REFUSED["wrong type"])
        results["auto: text then a bad call refused"] = not accepts(library, tools, True, tokenize(text_then_bad))
    except NotImplementedError as error:
        results["auto"] = f"not supported: {error}"
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compiles", type=int, default=20, help="fresh compiles per library (median reported)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    vocab_size = len(tokenizer)

    def tokenize(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    tools = benchmark_tools()
    call_ids = tokenize(format_tool_call(CALENDAR["name"], VALID_ARGUMENTS))
    report = {
        "cpu": cpu_description(),
        "note": "2-core machine shared with other sessions: timings are noisy; compare libraries within this run",
        "tokenizer": "SmolLM2-135M-Instruct",
        "vocab_size": vocab_size,
        "tools_in_grammar": [tool["name"] for tool in tools],
        "call_tokens": len(call_ids),
        "libraries": {},
    }
    for library_class in (Llguidance, Xgrammar, OutlinesCore):
        started = time.perf_counter()
        library = library_class(tokenizer, vocab_size)
        setup_s = time.perf_counter() - started
        report["libraries"][library.name] = {
            "version": library.version(),
            "requires": package_requirements(library.name),
            "tokenizer_setup_s": round(setup_s, 2),
            **measure(library, tools, call_ids, args.compiles),
            "features": features(library, tools, tokenize),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
