"""Constrained decoding in the decode engine (`engines/constrained/`): the grammar a constraint becomes,
what it lets through token by token on the demo tokenizer, and the engine decoding with it.

The tiny model has random weights: left free it writes newlines or one word over and over, never a
wrapper. Constrained, the same model must answer with a wrapper that parses and whose arguments
validate against the tool's schema (checked with `jsonschema`, not with the grammar library). The
test schemas bound their strings, numbers and arrays, as a random model never ends a string by itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest

from ray_app.engines.constrained import (
    ConstraintError,
    JsonConstraint,
    json_constraint,
    toolcall_constraint,
)
from ray_app.engines.constrained.grammar import closed_schema, wrapper_pieces, wrapper_trigger
from ray_app.prompts import (
    ToolCallFormatError,
    chat_messages,
    format_tool_call,
    parse_model_tool_call,
    structured_prompt,
    toolcall_prompt,
)
from tests.sample_tools import WEATHER
from tests.tiny_model import TOKENIZER_DIR

BOOK_ROOM = {  # required keys, types, an enum, a nested object, an array; every value bounded
    "name": "book_room",
    "description": "Book a hotel room.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 6},
            "nights": {"type": "integer", "minimum": 1, "maximum": 30},
            "room": {"type": "string", "enum": ["single", "double", "suite"]},
            "guest": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 5}, "vip": {"type": "boolean"}},
                "required": ["name", "vip"],
            },
            "extras": {"type": "array", "items": {"type": "string", "enum": ["wifi", "breakfast"]}, "maxItems": 2},
        },
        "required": ["city", "nights", "room", "guest", "extras"],
    },
}
CANCEL_ROOM = {
    "name": "cancel_room",
    "description": "Cancel a booking.",
    "parameters": {
        "type": "object",
        "properties": {"booking": {"type": "integer", "minimum": 0, "maximum": 999}},
        "required": ["booking"],
    },
}
VALID_BOOKING = {"city": "Oslo", "nights": 3, "room": "double", "guest": {"name": "Ana", "vip": False}, "extras": []}
EOS = 2  # SmolLM2's <|im_end|>
MAX_NEW_TOKENS = 96


def test_the_wrapper_grammar_is_built_from_the_template_text():
    assert wrapper_pieces() == ('<tool_call name="', '">', "</tool_call>")
    assert wrapper_trigger() == "<tool_call"


def test_closed_schema_closes_every_object_that_lists_properties():
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}},
            "c": {"type": "array", "items": {"type": "object", "properties": {"d": {"type": "integer"}}}},
            "e": {"type": "object", "properties": {}, "additionalProperties": {"type": "integer"}},
            "f": {"type": "object"},  # no properties listed: any object stays allowed
        },
    }
    assert closed_schema(schema) == {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}, "additionalProperties": False},
            "c": {
                "type": "array",
                "items": {"type": "object", "properties": {"d": {"type": "integer"}}, "additionalProperties": False},
            },
            "e": {"type": "object", "properties": {}, "additionalProperties": {"type": "integer"}},
            "f": {"type": "object"},
        },
        "additionalProperties": False,
    }


def test_constraints_refuse_what_cannot_be_a_wrapper():
    with pytest.raises(ConstraintError, match="at least one tool"):
        toolcall_constraint([])
    with pytest.raises(ConstraintError, match="not among the offered tools"):
        toolcall_constraint([BOOK_ROOM], name="cancel_room")
    with pytest.raises(ConstraintError, match="unique"):
        toolcall_constraint([BOOK_ROOM, BOOK_ROOM])
    with pytest.raises(ConstraintError, match="quotes"):
        toolcall_constraint([{**BOOK_ROOM, "name": 'say "hi"'}])
    assert toolcall_constraint([BOOK_ROOM]) == toolcall_constraint([BOOK_ROOM])  # hashable, compared by value


# --- what a compiled grammar lets through, token by token, on the demo tokenizer (no model)


@pytest.fixture(scope="module")
def compiler():
    from transformers import AutoTokenizer

    from ray_app.engines.constrained.row_grammar import GrammarCompiler

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    return GrammarCompiler(tokenizer, len(tokenizer), {EOS}), tokenizer


def allowed_tokens(grammar, vocab_size: int):
    import numpy

    words = numpy.empty(grammar.mask_words, dtype=numpy.int32)
    grammar.fill_mask(words)
    return numpy.unpackbits(words.view(numpy.uint8), bitorder="little")[:vocab_size].astype(bool)


def accepts(compiler, constraint, text: str) -> bool:
    """Each token of `text` allowed by the mask in turn, and end-of-sequence allowed after the last
    (or the grammar complete there)."""
    grammar_compiler, tokenizer = compiler
    grammar = grammar_compiler.start(constraint)
    token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for position, token in enumerate(token_ids):
        if not allowed_tokens(grammar, len(tokenizer))[token]:
            return False
        if grammar.take(token):  # ended: only if this was the last token
            return position == len(token_ids) - 1 and grammar.error is None
    return bool(allowed_tokens(grammar, len(tokenizer))[EOS])


def test_a_valid_call_passes_and_each_schema_rule_refuses_what_breaks_it(compiler):
    required = toolcall_constraint([BOOK_ROOM, CANCEL_ROOM], "required")
    assert accepts(compiler, required, format_tool_call("book_room", VALID_BOOKING))
    assert accepts(compiler, required, format_tool_call("cancel_room", {"booking": 7}))
    broken = {
        "missing required key": {key: value for key, value in VALID_BOOKING.items() if key != "nights"},
        "wrong type": {**VALID_BOOKING, "nights": "3"},
        "out of range": {**VALID_BOOKING, "nights": 31},
        "string too long": {**VALID_BOOKING, "city": "Trondheim"},
        "outside the enum": {**VALID_BOOKING, "room": "attic"},
        "nested object missing a key": {**VALID_BOOKING, "guest": {"name": "Ana"}},
        "nested object with an undeclared key": {**VALID_BOOKING, "guest": {"name": "Ana", "vip": True, "age": 3}},
        "array item outside the enum": {**VALID_BOOKING, "extras": ["spa"]},
        "array too long": {**VALID_BOOKING, "extras": ["wifi", "wifi", "breakfast"]},
        "undeclared top-level key": {**VALID_BOOKING, "note": "x"},
    }
    for label, arguments in broken.items():
        assert not accepts(compiler, required, format_tool_call("book_room", arguments)), label
    assert not accepts(compiler, required, format_tool_call("delete_room", {"booking": 7}))  # not offered
    assert not accepts(compiler, required, "Sure! " + format_tool_call("cancel_room", {"booking": 7}))  # text first
    compact = '<tool_call name="cancel_room">{"booking":7}</tool_call>'
    assert not accepts(compiler, required, compact)  # JSON is written as the gold completions are


def test_a_named_tool_forces_that_name(compiler):
    named = toolcall_constraint([BOOK_ROOM, CANCEL_ROOM], name="cancel_room")
    assert accepts(compiler, named, format_tool_call("cancel_room", {"booking": 7}))
    assert not accepts(compiler, named, format_tool_call("book_room", VALID_BOOKING))


def test_auto_lets_free_text_through_and_constrains_the_wrapper_once_it_opens(compiler):
    _, tokenizer = compiler
    auto = toolcall_constraint([BOOK_ROOM, CANCEL_ROOM], "auto")
    # SmolLM2 spells the trigger over several tokens: the grammar still sees it
    assert len(tokenizer("Sure. <tool_call", add_special_tokens=False)["input_ids"]) - 2 >= 3
    assert accepts(compiler, auto, "I cannot book rooms, sorry.")
    assert accepts(compiler, auto, "")  # end-of-sequence at once: no answer is still free text
    assert accepts(compiler, auto, "Sure. " + format_tool_call("cancel_room", {"booking": 7}))
    assert not accepts(compiler, auto, "Sure. " + format_tool_call("cancel_room", {"booking": "seven"}))
    assert not accepts(compiler, auto, 'Sure. <tool_call name="cancel_room">7</tool_call>')  # the demo's real mistake
    assert not accepts(compiler, auto, "Sure. <tool_call>{}</tool_call>")
    assert not accepts(compiler, auto, "Sure. <tool_call name=")  # opened: it may not end unfinished


def test_json_answers_fit_the_schema_or_are_any_object_without_one(compiler):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert accepts(compiler, json_constraint(schema), '{"n": 4}')
    assert not accepts(compiler, json_constraint(schema), '{"n": 4.5}')
    assert not accepts(compiler, json_constraint(schema), '{"n": 4, "m": 1}')
    any_object = json_constraint()
    assert any_object == JsonConstraint(None)
    assert accepts(compiler, any_object, '{"a": [1, {"b": null}], "c": "d"}')
    assert not accepts(compiler, any_object, "[1, 2]")
    assert not accepts(compiler, any_object, '"text"')
    assert not accepts(compiler, any_object, '{"a": 1')  # no end-of-sequence before the object closes


def test_end_of_sequence_is_allowed_only_where_the_grammar_may_end(compiler):
    grammar_compiler, tokenizer = compiler
    grammar = grammar_compiler.start(toolcall_constraint([CANCEL_ROOM], "required"))
    call = tokenizer(format_tool_call("cancel_room", {"booking": 7}), add_special_tokens=False)["input_ids"]
    ended = [grammar.take(token) for token in call]
    assert ended == [False] * (len(call) - 1) + [True]  # the row ends on `>` of `</tool_call>`, no EOS spent
    grammar = grammar_compiler.start(toolcall_constraint([CANCEL_ROOM], "required"))
    for token in call[:-3]:
        assert not allowed_tokens(grammar, len(tokenizer))[EOS]
        grammar.take(token)


def test_a_schema_the_library_cannot_compile_names_the_reason(compiler):
    grammar_compiler, _ = compiler
    with pytest.raises(ConstraintError, match="minimum.*greater than maximum"):
        grammar_compiler.check(json_constraint({"type": "integer", "minimum": 5, "maximum": 1}))


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16", "float16"])
def test_masking_sets_exactly_the_forbidden_tokens_of_the_guided_rows_to_minus_infinity(compiler, dtype_name):
    import torch

    from ray_app.engines.constrained.row_grammar import mask_logits

    grammar_compiler, tokenizer = compiler
    grammar = grammar_compiler.start(toolcall_constraint([CANCEL_ROOM], "required"))
    with torch.inference_mode():  # as the engine's logits are
        logits = torch.randn(3, 1, len(tokenizer), generator=torch.Generator().manual_seed(7))
        logits = logits.to(getattr(torch, dtype_name))[:, -1, :]
    before = logits.clone()
    mask_logits(logits, [(1, grammar)])
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    kept = torch.isfinite(logits[1])
    assert kept.tolist() == allowed_tokens(grammar, len(tokenizer)).tolist()
    assert torch.equal(logits[1][kept], before[1][kept]) and bool((logits[1][~kept] == float("-inf")).all())
    assert tokenizer.decode(kept.nonzero().flatten().tolist()) == "<"  # the wrapper's first token: forced


def test_auto_wrapper_opened_mid_answer_is_finished_by_the_mask_alone(compiler):
    """The engine's mask-then-argmax on seeded random logits, after an answer that opened the wrapper
    mid-text: whatever the logits, what follows completes a call that parses and validates."""
    import torch

    from ray_app.engines.constrained.row_grammar import mask_logits

    grammar_compiler, tokenizer = compiler
    grammar = grammar_compiler.start(toolcall_constraint([BOOK_ROOM, CANCEL_ROOM], "auto"))
    tokens = tokenizer("Let me book it. <tool_call", add_special_tokens=False)["input_ids"]
    assert not any(grammar.take(token) for token in tokens)
    generator = torch.Generator().manual_seed(42)
    for _ in range(200):
        logits = torch.randn(2, len(tokenizer), generator=generator)  # row 1: a row without a constraint
        untouched = logits[1].clone()
        mask_logits(logits, [(0, grammar)])
        assert torch.equal(logits[1], untouched)
        token = int(logits[0].argmax())
        tokens.append(token)
        if grammar.take(token):
            break
    text = tokenizer.decode(tokens)
    call = parse_model_tool_call(text)
    tool = {"book_room": BOOK_ROOM, "cancel_room": CANCEL_ROOM}[call.name]
    jsonschema.validate(call.arguments, closed_schema(tool["parameters"]))
    assert text.startswith("Let me book it. <tool_call") and text.endswith("</tool_call>")


# --- the decode engine with the tiny random model


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.engines.slm import SlmSettings

    settings = SlmSettings(model_path=tiny_model_dir, precision="fp32", batch_size=3, max_new_tokens=MAX_NEW_TOKENS)
    return SlmEngine(settings)


def booking_request(index: int, constraint, query: str = "Book a double room in Oslo for 3 nights."):
    from ray_app.engines.base import EngineRequest

    return EngineRequest(index, "toolcall", toolcall_prompt([BOOK_ROOM, CANCEL_ROOM], query), constraint)


def assert_valid_call(text: str, names: set[str]) -> str:
    call = parse_model_tool_call(text)
    assert call.name in names
    tool = {"book_room": BOOK_ROOM, "cancel_room": CANCEL_ROOM}[call.name]
    jsonschema.validate(call.arguments, closed_schema(tool["parameters"]))
    return call.name


def test_required_and_named_calls_of_a_random_model_parse_and_validate(engine):
    free, required, named = engine.generate([
        booking_request(0, None),
        booking_request(1, toolcall_constraint([BOOK_ROOM, CANCEL_ROOM], "required")),
        booking_request(2, toolcall_constraint([BOOK_ROOM, CANCEL_ROOM], name="cancel_room")),
    ])  # fmt: skip
    with pytest.raises(ToolCallFormatError):  # left free, the random model writes no call at all
        parse_model_tool_call(free.text)
    assert assert_valid_call(required.text, {"book_room", "cancel_room"})
    assert assert_valid_call(named.text, {"cancel_room"}) == "cancel_room"
    for answer in (required, named):
        assert answer.text.startswith('<tool_call name="') and answer.text.endswith("</tool_call>")
        assert answer.stopped and answer.completion_tokens < MAX_NEW_TOKENS and EOS not in answer.token_ids


def test_auto_leaves_an_answer_without_a_wrapper_as_the_free_model_writes_it(engine):
    free, auto = engine.generate([booking_request(0, None), booking_request(1, toolcall_constraint([BOOK_ROOM]))])
    assert "<tool_call" not in free.text  # the random model never opens the wrapper...
    assert (auto.text, auto.token_ids) == (free.text, free.token_ids)  # ...so auto changes nothing


def test_structured_answers_are_json_for_the_schema(engine):
    from ray_app.engines.base import EngineRequest

    schema = BOOK_ROOM["parameters"]
    prompt = structured_prompt(BOOK_ROOM, "Book a double room in Oslo for 3 nights.")
    free, constrained = engine.generate([
        EngineRequest(0, "structured", prompt),
        EngineRequest(1, "structured", prompt, json_constraint(schema)),
    ])  # fmt: skip
    with pytest.raises(ValueError):
        json.loads(free.text)
    jsonschema.validate(json.loads(constrained.text), closed_schema(schema))
    assert constrained.stopped and EOS not in constrained.token_ids


def mixed_requests():
    from ray_app.engines.base import EngineRequest

    book = toolcall_constraint([BOOK_ROOM, CANCEL_ROOM], "required")
    return [
        booking_request(0, None),
        booking_request(1, book),
        EngineRequest(2, "toolcall", toolcall_prompt([WEATHER], "Weather in Paris?")),
        booking_request(3, toolcall_constraint([BOOK_ROOM, CANCEL_ROOM], name="cancel_room"), "Cancel booking 12"),
        EngineRequest(4, "structured", "Name a colour.", json_constraint()),  # no schema: closed near its limit
        booking_request(5, toolcall_constraint([BOOK_ROOM])),
        EngineRequest(6, "structured", structured_prompt(BOOK_ROOM, "Oslo"), json_constraint(BOOK_ROOM["parameters"])),
        booking_request(7, book, "A suite in Rome"),
    ]


def test_a_mixed_batch_gives_every_row_what_it_gets_alone_and_free_rows_what_hf_generate_gives(engine):
    """Constrained and free rows decoding together, three at a time (rows join as others finish): each
    answer is the one the row gets alone, the same on a second run, and every free row's is HF generate's."""
    from ray_app.engines.slm import generate_greedy

    requests = mixed_requests()
    together = engine.generate(requests)
    again = engine.generate(requests)
    assert [answer.token_ids for answer in again] == [answer.token_ids for answer in together]
    for request, answer in zip(requests, together, strict=True):
        [alone] = engine.generate([request])
        assert (answer.text, answer.token_ids, answer.stopped) == (alone.text, alone.token_ids, alone.stopped)
        if request.constraint is None:
            slm = engine.slm
            [oracle] = generate_greedy(
                slm.model_for(engine.model_name), slm.tokenizer, slm.device, [request.messages], [MAX_NEW_TOKENS]
            )
            assert (answer.text, answer.token_ids) == (oracle.text, oracle.token_ids)
    assert_valid_call(together[1].text, {"book_room", "cancel_room"})
    assert_valid_call(together[7].text, {"book_room", "cancel_room"})
    assert_valid_call(together[3].text, {"cancel_room"})
    jsonschema.validate(json.loads(together[6].text), closed_schema(BOOK_ROOM["parameters"]))
    assert isinstance(json.loads(together[4].text), dict) and together[4].stopped  # a random key, closed in time


def test_a_bad_constraint_fails_at_the_ingress_or_fails_only_its_own_job(engine):
    from ray_app.engines.decode.running_batch import GenerationJob
    from ray_app.engines.decode.scheduler import DecodeScheduler

    unsatisfiable = json_constraint({"type": "integer", "minimum": 5, "maximum": 1})
    with pytest.raises(ConstraintError, match="greater than maximum"):
        engine.slm.job("slm", chat_messages("Pick a number."), 8, constraint=unsatisfiable)
    good = engine.slm.job("slm", chat_messages("Pick a number."), 8)
    scheduler = DecodeScheduler(engine.slm, max_batch_rows=2, prefill_chunk_tokens=256, prefix_cache_tokens=0)
    scheduler.add(0, GenerationJob("slm", good.prompt_ids, 8, constraint=unsatisfiable))  # built by hand
    scheduler.add(1, good)
    failed, answers = [], {}
    while scheduler.has_work:
        result = scheduler.iteration()
        failed += [(keys, error) for keys, error in result.failed]
        answers.update({token.job: token.answer for token in result.tokens if token.answer is not None})
    assert [keys for keys, _ in failed] == [[0]] and isinstance(failed[0][1], ConstraintError)
    assert list(answers) == [1]
    assert answers[1].token_ids == engine.scheduler.run_to_completion([good])[0].token_ids  # as if alone


def test_the_engine_does_not_load_the_grammar_library_for_free_decoding():
    code = "import sys, ray_app.engines.decode.engine, ray_app.eval.ray_predictor; print('llguidance' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.slow
def test_the_demo_slm_under_constraints_answers_a_valid_call_and_valid_json():
    """The demo SLM (`slm-swap models fetch-demo`) on the first toolcall and structured test rows: every
    constrained answer parses and fits its schema, under required and auto (where auto opened the
    wrapper). Structured row i asks for the arguments of toolcall row i's gold call, whose tool gives
    the schema."""
    from ray_app.data.rows import read_split
    from ray_app.engines.base import EngineRequest
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.engines.slm import SlmSettings
    from ray_app.models.demo_checkpoint import DEMO_MODEL_DIR
    from ray_app.paths import DATASET_ROOT
    from ray_app.prompts import parse_gold_tool_call, parse_toolcall_prompt

    if not (DEMO_MODEL_DIR / "config.json").is_file():
        pytest.skip("demo SLM not fetched (slm-swap models fetch-demo)")
    engine = SlmEngine(SlmSettings(model_path=DEMO_MODEL_DIR, precision="fp32", batch_size=8, max_new_tokens=128))
    rows = 4
    toolcall_rows = read_split(DATASET_ROOT / "toolcall" / "test.jsonl")[:rows]
    structured_rows = read_split(DATASET_ROOT / "structured" / "test.jsonl")[:rows]
    signatures = [parse_toolcall_prompt(row.prompt).signatures for row in toolcall_rows]
    gold_tools = [
        next(tool for tool in tools if tool["name"] == parse_gold_tool_call(row.completion).name)
        for row, tools in zip(toolcall_rows, signatures, strict=True)
    ]
    requests = [
        EngineRequest(index, "toolcall", row.prompt, toolcall_constraint(signatures[index], choice))
        for choice in ("required", "auto")
        for index, row in enumerate(toolcall_rows)
    ] + [
        EngineRequest(index, "structured", row.prompt, json_constraint(gold_tools[index]["parameters"]))
        for index, row in enumerate(structured_rows)
    ]
    answers = engine.generate(requests)
    for request, answer in zip(requests, answers, strict=True):
        if request.track == "structured":
            jsonschema.validate(json.loads(answer.text), closed_schema(gold_tools[request.index]["parameters"]))
        elif request.constraint.choice == "required" or "<tool_call" in answer.text:
            call = parse_model_tool_call(answer.text)
            tool = next(tool for tool in signatures[request.index] if tool["name"] == call.name)
            jsonschema.validate(call.arguments, closed_schema(tool["parameters"]))


# --- closing an answer within its token limit

OPEN_ENDED = {  # nothing bounded: a random model left to the mask alone writes a string or a list until cut
    "name": "open_ended",
    "description": "Search notes.",
    "parameters": {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "filters": {
                "type": "object",
                "properties": {"after": {"type": "string"}, "limit": {"type": "number"}},
                "required": ["after", "limit"],
            },
        },
        "required": ["query", "tags", "filters"],
    },
}


def open_ended_answers(engine, budget: int):
    """A required call, a named call, JSON for the schema and any JSON object, each limited to `budget` tokens."""
    schema = OPEN_ENDED["parameters"]
    asks = [
        (toolcall_prompt([OPEN_ENDED], "Find notes on Oslo"), toolcall_constraint([OPEN_ENDED], "required")),
        (toolcall_prompt([OPEN_ENDED, CANCEL_ROOM], "Tag it"),
         toolcall_constraint([OPEN_ENDED, CANCEL_ROOM], name="open_ended")),
        (structured_prompt(OPEN_ENDED, "Oslo"), json_constraint(schema)),
        ("Name a colour.", json_constraint()),  # any object: a random key never ends
    ]  # fmt: skip
    jobs = [engine.slm.job("slm", chat_messages(prompt), budget, constraint=constraint) for prompt, constraint in asks]
    return engine.scheduler.run_to_completion(jobs)


@pytest.mark.parametrize("budget", [48, 64, 100])  # the shortest valid call takes 43 tokens, the JSON 28
def test_an_answer_is_closed_within_its_token_limit_whatever_the_schema_leaves_open(engine, budget):
    """Unbounded strings, lists and objects, a random model and a short limit: every answer still parses and
    fits its schema, within the limit (the row closes what it opened in time: `RowGrammar.within_budget`)."""
    answers = open_ended_answers(engine, budget)
    for answer in answers[:2]:
        call = parse_model_tool_call(answer.text)
        assert call.name == "open_ended"
        jsonschema.validate(call.arguments, closed_schema(OPEN_ENDED["parameters"]))
    jsonschema.validate(json.loads(answers[2].text), closed_schema(OPEN_ENDED["parameters"]))
    assert isinstance(json.loads(answers[3].text), dict)
    for answer in answers:
        assert answer.stopped and answer.completion_tokens <= budget


def test_without_closing_in_time_the_limit_cuts_the_same_answers(engine, monkeypatch):
    """The test above can fail: with closing switched off, the limit cuts every one of those answers."""
    from ray_app.engines.constrained import row_grammar

    monkeypatch.setattr(row_grammar, "CLOSING_WINDOW", 0)
    answers = open_ended_answers(engine, 48)
    assert not any(answer.stopped for answer in answers)
    for answer in answers[2:]:
        with pytest.raises(ValueError):
            json.loads(answer.text)


def test_the_models_token_is_kept_while_it_still_fits_and_replaced_by_the_closing_when_not(compiler):
    from ray_app.engines.constrained.row_grammar import closing_path

    grammar_compiler, tokenizer = compiler
    tokens = tokenizer(format_tool_call("cancel_room", {"booking": 12}), add_special_tokens=False)["input_ids"]
    grammar = grammar_compiler.start(toolcall_constraint([BOOK_ROOM, CANCEL_ROOM], "required"))
    for position, token in enumerate(tokens):  # a short answer passes through as it is, however tight
        assert grammar.within_budget(token, len(tokens) - position) == token
        grammar.take(token)
    grammar = grammar_compiler.start(toolcall_constraint([BOOK_ROOM, CANCEL_ROOM], "required"))
    two = tokens.index(tokenizer.convert_tokens_to_ids("2"))  # after `{"booking": 1`
    for token in tokens[:two]:
        grammar.take(token)
    closing = closing_path(grammar.matcher, grammar.nesting, 64, grammar.closing)
    assert tokenizer.decode(closing) == "}</tool_call>"
    assert grammar.within_budget(tokens[two], len(closing) + 1) == tokens[two]  # `2` and then the closing fit
    assert grammar.within_budget(tokens[two], len(closing)) == closing[0]  # only the closing fits
