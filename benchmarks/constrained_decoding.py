"""What constrained decoding costs: the decode engine's tokens/s with and without constraints, same prompts.

The 50 toolcall test prompts (`02_dataset/toolcall/test.jsonl`) through the demo SLM with the
project's decode engine (`SlmEngine`, its default batch of 8, evaluation's 256-token limit): free,
and constrained to the wrapper over each row's own tools (`required`, `auto`), the three modes in
turn for `--repeats` rounds, in fp32 and in the precision `auto` picks on this machine, all in one
run. Every run uses the same loaded model with the prefix cache emptied first, so no run reuses
another's prefill.

Per mode, the best of its repeats (the run the machine's other load disturbed least; every
repeat's figure is kept under `runs`): completion tokens per second (completion tokens / wall
seconds, prefill included) and its slowdown against free (target: at most 10 %); tokens per
second of the decode steps alone and their slowdown; the share of the run's wall time the engine
spent in the grammar (compiling at the ingress, masks, advancing the rows' matchers, closing in time
near the token limit), which is what
the constraint adds to that very run whatever the machine's load; answers that parse as one
wrapper and whose arguments fit the tool's schema (`jsonschema`); rows that ran into the token
limit. Constrained answers end when their call is complete, often far sooner than free ones, so
their prefill weighs more per completion token: compare the decode steps and the grammar's share
as well. Also checked: every repeat gave the same answers. Prints one JSON object. Needs the demo
SLM (`slm-swap models fetch-demo`) and llguidance.

    .venv/bin/python benchmarks/constrained_decoding.py [--rows 50] [--max-new-tokens 256] [--repeats 2]
        [--precisions fp32,auto]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/constrained_decoding.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_limits import cpu_description
from ray_app.data.rows import read_split
from ray_app.engines.base import EngineRequest
from ray_app.engines.constrained import toolcall_constraint
from ray_app.paths import DATASET_ROOT
from ray_app.prompts import ToolCallFormatError, parse_model_tool_call, parse_toolcall_prompt

MODES = ("free", "required", "auto")
GRAMMAR_FIELDS = ("compile", "mask", "take", "budget")  # EngineClock's fields that are the grammar's own time


class EngineClock:
    """Seconds the engine spends in its calls into the grammar (compiling at the ingress, `mask_logits`,
    `RowGrammar.take`, `RowGrammar.within_budget`: closing in time near the limit) and in its decode
    steps (`RunningBatch.step`, masks included), and the tokens those steps chose: wrapped around the
    engine's own functions, nothing else changes."""

    def __init__(self):
        from ray_app.engines.constrained import row_grammar
        from ray_app.engines.decode import running_batch

        self.reset()
        real_mask, real_take = running_batch.mask_logits, row_grammar.RowGrammar.take
        real_budget = row_grammar.RowGrammar.within_budget
        real_compile, real_step = row_grammar.GrammarCompiler.compiled, running_batch.RunningBatch.step

        def timed(field, real):
            def call(*args):
                started = time.perf_counter()
                result = real(*args)
                self.seconds[field] += time.perf_counter() - started
                if field == "step":
                    self.step_tokens += len(result)
                return result

            return call

        running_batch.mask_logits = timed("mask", real_mask)
        row_grammar.RowGrammar.take = timed("take", real_take)
        row_grammar.RowGrammar.within_budget = timed("budget", real_budget)
        row_grammar.GrammarCompiler.compiled = timed("compile", real_compile)
        running_batch.RunningBatch.step = timed("step", real_step)

    def reset(self) -> None:
        self.seconds = dict.fromkeys((*GRAMMAR_FIELDS, "step"), 0.0)
        self.step_tokens = 0


def fits_schema(text: str, tools: list[dict]) -> tuple[bool, bool]:
    """(one wrapper that parses, and its arguments valid against the named tool's schema)."""
    import jsonschema

    try:
        call = parse_model_tool_call(text)
    except ToolCallFormatError:
        return False, False
    tool = next((tool for tool in tools if tool["name"] == call.name), None)
    if tool is None:
        return True, False
    try:
        jsonschema.validate(call.arguments, tool["parameters"])
    except jsonschema.ValidationError:
        return True, False
    return True, True


def requests_for(mode: str, prompts: list[str], tools: list[list[dict]]) -> list[EngineRequest]:
    return [
        EngineRequest(index, "toolcall", prompt, None if mode == "free" else toolcall_constraint(row_tools, mode))
        for index, (prompt, row_tools) in enumerate(zip(prompts, tools, strict=True))
    ]


def run_configuration(
    engine, clock: EngineClock, requests: list[EngineRequest], tools: list[list[dict]]
) -> tuple[dict, list[tuple[int, ...]]]:
    """(the run's figures, each answer's token ids)."""
    if engine.scheduler.prefix_cache is not None:
        engine.scheduler.prefix_cache.clear()
    clock.reset()
    started = time.perf_counter()
    answers = engine.generate(requests)  # compiles each row's grammar at its ingress: counted here
    seconds = time.perf_counter() - started
    tokens = sum(answer.completion_tokens for answer in answers)
    grammar_s = sum(clock.seconds[field] for field in GRAMMAR_FIELDS)
    checks = [fits_schema(answer.text, row_tools) for answer, row_tools in zip(answers, tools, strict=True)]
    figures = {
        "completion_tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2),
        "decode_step_tokens_per_s": round(clock.step_tokens / clock.seconds["step"], 2),
        "grammar_s": {field: round(clock.seconds[field], 3) for field in GRAMMAR_FIELDS},
        # what the constraint adds to this very run, free of the machine's noise between runs
        "grammar_share_of_wall": round(grammar_s / seconds, 4),
        "parses": sum(parsed for parsed, _ in checks),
        "fits_schema": sum(fits for _, fits in checks),
        "rows_at_token_limit": sum(not answer.stopped for answer in answers),
    }
    return figures, [answer.token_ids for answer in answers]


def summary(runs: list[dict], free_runs: list[dict]) -> dict:
    """The best of the repeats (the run the machine's other load disturbed least) against the best free run."""
    best = max(runs, key=lambda run: run["tokens_per_s"])
    best_free = max(free_runs, key=lambda run: run["tokens_per_s"])
    best_decode = max(run["decode_step_tokens_per_s"] for run in runs)
    best_free_decode = max(run["decode_step_tokens_per_s"] for run in free_runs)
    return {
        "best_tokens_per_s": best["tokens_per_s"],
        "best_decode_step_tokens_per_s": best_decode,
        "slower_than_free": round(1 - best["tokens_per_s"] / best_free["tokens_per_s"], 4),
        "decode_steps_slower_than_free": round(1 - best_decode / best_free_decode, 4),
        "grammar_share_of_wall_max": max(run["grammar_share_of_wall"] for run in runs),
        "tokens_per_s_of_each_repeat": [run["tokens_per_s"] for run in runs],
        **{key: best[key] for key in ("completion_tokens", "parses", "fits_schema", "rows_at_token_limit")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50, help="first N toolcall test rows")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="evaluation's default; gold calls: 20-90")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every mode (best of them reported)")
    parser.add_argument("--precisions", default="fp32,auto", help="comma-separated (fp32, bf16, auto)")
    parser.add_argument("--model-path", type=Path, default=None, help="default: the demo SLM")
    args = parser.parse_args()
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.engines.slm import SlmSettings
    from ray_app.models.demo_checkpoint import DEMO_MODEL_DIR

    model_path = args.model_path or DEMO_MODEL_DIR
    rows = read_split(DATASET_ROOT / "toolcall" / "test.jsonl")[: args.rows]
    prompts = [row.prompt for row in rows]
    tools = [parse_toolcall_prompt(row.prompt).signatures for row in rows]
    clock = EngineClock()
    report = {
        "cpu": cpu_description(),
        "note": "2-core machine shared with other sessions: wall times are noisy; grammar_s is the grammar's own cost",
        "model_path": str(model_path),
        "rows": len(rows),
        "max_new_tokens": args.max_new_tokens,
        "configurations": {},
    }
    for precision in args.precisions.split(","):
        engine = SlmEngine(SlmSettings(model_path=model_path, precision=precision, max_new_tokens=args.max_new_tokens))
        started = time.perf_counter()
        engine.slm.grammars.check(toolcall_constraint(tools[0], "required"))  # llguidance's tokenizer, once per model
        tokenizer_setup_s = time.perf_counter() - started
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        answers: dict[str, list] = {mode: [] for mode in MODES}
        for repeat in range(args.repeats):  # the modes in turn, so a burst of load hits one repeat, not one mode
            for mode in MODES:
                print(f"{precision} {mode} (repeat {repeat + 1})...", file=sys.stderr, flush=True)
                figures, token_ids = run_configuration(engine, clock, requests_for(mode, prompts, tools), tools)
                runs[mode].append(figures)
                answers[mode].append(token_ids)
        results = {
            "precision_loaded": engine.precision,
            "grammar_tokenizer_setup_s": round(tokenizer_setup_s, 2),
            "same_answers_every_repeat": all(len(set(map(tuple, each))) == 1 for each in answers.values()),
            "auto_answers_equal_free": answers["auto"][0] == answers["free"][0],
            **{mode: summary(runs[mode], runs["free"]) for mode in MODES},
            "runs": runs,
        }
        report["configurations"][precision] = results
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
