"""The decode engine without Ray (`engines/decode/`, driven by evaluation's `SlmEngine` and by Serve's
`ModelHost` thread): pieces of shared prompt prefixes, the prefix cache, chunked prefill, rows
joining and leaving between steps, and the per-step tokens that streaming sends. HF `generate`
(`engines.slm.generate_greedy`) is the oracle every answer is checked against."""

from __future__ import annotations

import itertools
import threading

import pytest

from ray_app.engines.decode.prefix_cache import MIN_PIECE_TOKENS, PrefixKvCache, shared_prefix_ends, template_anchors
from ray_app.prompts import chat_messages, toolcall_prompt
from tests.sample_tools import WEATHER

FLIGHTS = {
    "name": "search_flights",
    "description": "Flights between two airports on a date.",
    "parameters": {
        "type": "object",
        "properties": {"origin": {"type": "string"}, "destination": {"type": "string"}, "date": {"type": "string"}},
        "required": ["origin", "destination"],
    },
}


@pytest.fixture(scope="module")
def host(tiny_model_dir):
    from ray_app.engines.slm import SlmSettings
    from ray_app.serve.model_host import ModelHost

    return ModelHost(SlmSettings(model_path=tiny_model_dir, precision="fp32"), adapter_root=None)


def oracle(host, messages, limit):
    """HF generate on this prompt alone."""
    from ray_app.engines.slm import generate_greedy

    [alone] = generate_greedy(host.slm.model_for("slm"), host.slm.tokenizer, host.slm.device, [messages], [limit])
    return alone


def test_anchors_are_the_fixed_texts_before_placeholders_and_the_system_texts():
    anchors = template_anchors()
    assert "\n\nRequest: " in anchors
    assert any(anchor.endswith("Tools (one JSON signature per line):\n") for anchor in anchors)
    assert "You are a precise assistant inside a software agent. Answer in exactly the requested format, with no " \
           "other text." in anchors  # fmt: skip
    assert all("{{" not in anchor for anchor in anchors)


def test_prefix_ends_split_the_prompt_where_shared_text_ends(host):
    weather_paris = host.job("slm", chat_messages(toolcall_prompt([WEATHER], "Weather in Paris?")), 8)
    weather_oslo = host.job("slm", chat_messages(toolcall_prompt([WEATHER], "And in Oslo, for tomorrow?")), 8)
    flights = host.job("slm", chat_messages(toolcall_prompt([FLIGHTS, WEATHER], "Fly me to Rome")), 8)
    for job in (weather_paris, weather_oslo, flights):
        assert job.prefix_ends and list(job.prefix_ends) == sorted(set(job.prefix_ends))
        assert job.prefix_ends[0] >= MIN_PIECE_TOKENS and job.prefix_ends[-1] < len(job.prompt_ids)
        assert all(b - a >= MIN_PIECE_TOKENS for a, b in itertools.pairwise(job.prefix_ends))
    # system + instruction: shared by every toolcall prompt, whatever the tools
    instruction_end = weather_paris.prefix_ends[-2]
    assert host.slm.tokenizer.decode(weather_paris.prompt_ids[:instruction_end]).endswith(
        "Tools (one JSON signature per line):\n"
    )
    assert instruction_end in flights.prefix_ends
    assert flights.prompt_ids[:instruction_end] == weather_paris.prompt_ids[:instruction_end]
    # ... + the same tools: shared by every call of an agent that sends the same tools
    assert weather_paris.prefix_ends == weather_oslo.prefix_ends
    tools_end = weather_paris.prefix_ends[-1]
    assert weather_paris.prompt_ids[:tools_end] == weather_oslo.prompt_ids[:tools_end]
    assert host.slm.tokenizer.decode(weather_paris.prompt_ids[:tools_end]).endswith("\n\nRequest:")


def test_prompt_ids_are_the_evaluation_prompt_ids(host):
    from ray_app.engines.slm import prompt_ids

    messages = chat_messages(toolcall_prompt([FLIGHTS], "Fly me to Rome on Friday"))
    assert host.job("slm", messages, 8).prompt_ids == prompt_ids(host.slm.tokenizer, messages)


def test_shared_prefix_ends_skips_pieces_too_short_to_pay():
    text = "aaaa bbbb"
    token_ends = list(range(1, len(text) + 1))  # one character per token
    assert shared_prefix_ends(text, token_ends, ("aaaa",)) == ()  # 4 tokens < MIN_PIECE_TOKENS
    long_text = "x" * 40 + "ANCHOR" + "y" * 5
    long_ends = list(range(1, len(long_text) + 1))
    assert shared_prefix_ends(long_text, long_ends, ("ANCHOR",)) == (46,)
    assert shared_prefix_ends("x" * 40 + "ANCHOR", list(range(1, 47)), ("ANCHOR",)) == ()  # nothing after it


def test_prefix_cache_evicts_the_least_recently_used_past_its_token_budget():
    cache = PrefixKvCache(max_tokens=10)
    cache.put("slm", (1, 2, 3, 4), ("a",))
    cache.put("slm", (5, 6, 7, 8), ("b",))
    assert cache.get("slm", (1, 2, 3, 4)).layers == ("a",)  # now the most recent
    cache.put("slm", (9, 9, 9), ("c",))  # 11 tokens > 10: (5, 6, 7, 8) goes
    assert cache.get("slm", (5, 6, 7, 8)) is None
    assert cache.get("slm-toolcall", (1, 2, 3, 4)) is None  # another model's prefix is another entry
    cache.put("slm", tuple(range(11)), ("too long",))  # longer than the whole budget: not kept
    assert cache.stats() == {"prefixes": 2, "cached_tokens": 7, "max_tokens": 10, "hits": 1, "misses": 2}


def batch_of_conversations():
    queries = ["Weather in Paris?", "And in Oslo, for the whole weekend, in Celsius please?", "Rome"]
    conversations = [chat_messages(toolcall_prompt([WEATHER], query)) for query in queries]
    conversations.append(chat_messages(toolcall_prompt([FLIGHTS, WEATHER], "Fly to Rome " * 20)))
    conversations.append([{"role": "user", "content": "hi"}])  # no template text in it: prefilled whole
    return conversations, [5, 12, 1, 9, 3]


def test_batches_answer_each_prompt_as_generating_it_alone_with_or_without_cached_prefixes(host):
    """Prefill in pieces (cache miss, then hit), rows leaving the batch as they finish: each answer is the
    evaluation engine's greedy answer for that prompt alone."""
    host.prefix_cache.clear()
    conversations, limits = batch_of_conversations()
    jobs = [host.job("slm", messages, limit) for messages, limit in zip(conversations, limits, strict=True)]
    assert [bool(job.prefix_ends) for job in jobs] == [True, True, True, True, False]
    first = host.generate(jobs)
    misses = host.prefix_cache.stats()["misses"]
    assert host.prefix_cache.stats()["prefixes"] >= 3
    second = host.generate(jobs)
    assert host.prefix_cache.stats()["hits"] >= 4 and host.prefix_cache.stats()["misses"] == misses
    for messages, limit, answer, again in zip(conversations, limits, first, second, strict=True):
        alone = oracle(host, messages, limit)
        assert answer.text == again.text and answer.token_ids == again.token_ids
        assert (answer.text, answer.token_ids, answer.prompt_tokens) == (
            alone.text,
            alone.token_ids,
            alone.prompt_tokens,
        )
        assert answer.completion_tokens <= limit and answer.stopped == alone.stopped


def test_every_step_reports_each_running_jobs_token_once_in_order(host):
    steps = []
    conversations, limits = batch_of_conversations()
    jobs = [host.job("slm", messages, limit) for messages, limit in zip(conversations, limits, strict=True)]
    answers = host.generate(jobs, on_step=steps.append)
    streamed: dict[int, list[int]] = {index: [] for index in range(len(jobs))}
    finished: dict[int, int] = {index: 0 for index in range(len(jobs))}
    for step in steps:
        assert len({token.job for token in step}) == len(step)
        for token in step:
            assert finished[token.job] == 0, "a job got a token after its last one"
            streamed[token.job].append(token.token_id)
            finished[token.job] += token.finished
    assert len(steps) >= max(answer.completion_tokens for answer in answers)  # prompts prefill over several steps
    for index, answer in enumerate(answers):
        assert tuple(streamed[index]) == answer.token_ids and finished[index] == 1


def test_a_job_submitted_while_others_decode_joins_between_steps(host):
    """Continuous batching: a request that arrives mid-answer starts at the next step, not after the batch."""
    long_messages = chat_messages(toolcall_prompt([WEATHER], "Weather in Paris for the whole week?"))
    short_messages = chat_messages(toolcall_prompt([FLIGHTS], "Fly me to Rome"))
    events: list[tuple[str, int, bool]] = []
    answers: dict[str, object] = {}
    done = threading.Event()

    def on_tokens(name):
        def record(tokens):
            assert not isinstance(tokens, Exception)
            for token in tokens:
                events.append((name, token.token_id, token.finished))
                if token.finished:
                    answers[name] = token.answer
            if name == "long" and len(events) == 1:  # the long answer has begun: now the short one arrives
                host.submit([host.job("slm", short_messages, 6)], on_tokens("short"))
            if len(answers) == 2:
                done.set()

        return record

    host.submit([host.job("slm", long_messages, 24)], on_tokens("long"))
    assert done.wait(60)
    order = [name for name, _, _ in events]
    assert order.index("short") < len(order) - 1 - order[::-1].index("long")  # joined before the long one ended
    assert order.count("long") == 24 and order.count("short") == 6  # random weights: both run to their limits
    for name, messages, limit in (("long", long_messages, 24), ("short", short_messages, 6)):
        alone = oracle(host, messages, limit)
        assert answers[name].token_ids == alone.token_ids


def in_engine(host) -> int:
    counts = host.scheduler.counts()
    return counts["running"] + counts["prefilling"]


def test_running_rows_never_exceed_max_batch_rows(host, monkeypatch):
    monkeypatch.setattr(host.scheduler, "max_batch_rows", 2)
    conversations, limits = batch_of_conversations()
    jobs = [host.job("slm", messages, limit) for messages, limit in zip(conversations, limits, strict=True)]
    running = []
    answers = host.generate(
        jobs, on_step=lambda tokens: running.append(sum(host.scheduler.counts()[k] for k in ("running", "prefilling")))
    )
    assert max(running) <= 2
    assert [answer.token_ids for answer in answers] == [answer.token_ids for answer in host.generate(jobs)]


def test_a_failed_step_fails_its_requests_and_the_loop_goes_on(host, monkeypatch):
    from ray_app.engines.decode.running_batch import RunningBatch

    real_step = RunningBatch.step
    failures = iter([RuntimeError("out of memory (simulated)")])

    def failing_step(self):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real_step(self)

    monkeypatch.setattr(RunningBatch, "step", failing_step)
    job = host.job("slm", chat_messages("Name a colour."), 5)
    with pytest.raises(RuntimeError, match="simulated"):
        host.generate([job])
    assert not host.scheduler.has_work and not host.in_flight
    [answer] = host.generate([job])
    assert answer.completion_tokens == 5


def test_jobs_for_models_not_served_are_refused_before_they_queue(host):
    with pytest.raises(ValueError, match="slm-nope"):
        host.submit([host.job("slm-nope", chat_messages("x"), 2)], lambda tokens: None)
    assert not host.scheduler.has_work


def test_a_cancelled_job_leaves_its_batch_and_the_others_go_on(host):
    """A caller that leaves (a disconnect) frees its row at the next step; queued and not-yet-submitted
    jobs can be cancelled too; the rest of the batch answers as if nothing happened."""
    messages = chat_messages(toolcall_prompt([WEATHER], "Weather in Paris?"))
    stays = host.job("slm", messages, 12, request_id="stays")
    leaves = host.job("slm", messages, 400, request_id="leaves")
    host.cancel("never-submitted-yet")
    late = host.job("slm", messages, 12, request_id="never-submitted-yet")
    received: dict[str, list] = {"stays": [], "leaves": [], "late": []}
    done = threading.Event()
    cancelled_before = host.decode_stats()["cancelled"]

    def record(name):
        def on_tokens(tokens):
            received[name].extend(tokens)
            if name == "leaves" and len(received["leaves"]) == 2:
                host.cancel("leaves")
            if all(received[key] and received[key][-1].finished for key in received):
                done.set()

        return on_tokens

    host.submit([stays], record("stays"))
    host.submit([leaves], record("leaves"))
    host.submit([late], record("late"))
    assert done.wait(60)
    assert received["leaves"][-1].cancelled and len(received["leaves"]) < 400
    assert [token.cancelled for token in received["late"]] == [True]
    alone = oracle(host, messages, 12)
    assert received["stays"][-1].answer.token_ids == alone.token_ids
    assert host.decode_stats() == {"running": 0, "waiting": 0, "prefilling": 0, "cancelled": cancelled_before + 2}
    assert not host.scheduler.has_work and not host.cancel_requests


def test_a_fault_in_the_loop_itself_fails_its_requests_and_the_loop_keeps_serving(host, monkeypatch):
    real_apply_cancels = type(host)._apply_cancels
    faults = iter([KeyError("bookkeeping bug (simulated)")])

    def faulty_apply_cancels(self):
        fault = next(faults, None)
        if fault is not None:
            raise fault
        real_apply_cancels(self)

    monkeypatch.setattr(type(host), "_apply_cancels", faulty_apply_cancels)
    job = host.job("slm", chat_messages("Name a colour."), 4)
    with pytest.raises(KeyError, match="simulated"):
        host.generate([job])
    assert not host.scheduler.has_work and not host.in_flight
    [answer] = host.generate([job])
    assert answer.completion_tokens == 4


def test_prefill_pieces_end_at_shared_prefixes_and_every_chunk_between_them():
    from ray_app.engines.decode.prefill import prefill_piece_ends
    from ray_app.engines.decode.running_batch import GenerationJob

    job = GenerationJob("slm", list(range(100)), 4, prefix_ends=(30, 70))
    assert prefill_piece_ends(job, 1000) == (30, 70, 100)
    assert prefill_piece_ends(job, 25) == (25, 30, 55, 70, 95, 100)  # chunks restart at each prefix end
    assert prefill_piece_ends(GenerationJob("slm", list(range(10)), 4), 4) == (4, 8, 10)


def test_a_long_prompt_is_prefilled_in_chunks_while_a_short_request_joins_and_finishes(host):
    """Chunked prefill: a prompt far longer than the chunk takes many steps to prefill; a short request
    queued behind it is prefilled first (shortest remaining first), decodes and finishes meanwhile, and
    both answers equal HF generate's for the prompt alone."""
    from ray_app.engines.decode.scheduler import DecodeScheduler

    scheduler = DecodeScheduler(host.slm, max_batch_rows=4, prefill_chunk_tokens=16, prefix_cache_tokens=0)
    long_messages = chat_messages(toolcall_prompt([FLIGHTS, WEATHER], "Fly to Rome " * 80))
    short_messages = chat_messages("Name a colour.")
    long_job, short_job = host.job("slm", long_messages, 6), host.job("slm", short_messages, 3)
    scheduler.add(0, long_job)
    scheduler.add(1, short_job)
    steps: list[list[int]] = []
    answers = {}
    while scheduler.has_work:
        result = scheduler.iteration()
        assert not result.failed and result.prefill_tokens <= 2 * 16
        steps.append([token.job for token in result.tokens])
        answers.update({token.job: token.answer for token in result.tokens if token.answer is not None})
    first_long = next(number for number, jobs in enumerate(steps) if 0 in jobs)
    last_short = max(number for number, jobs in enumerate(steps) if 1 in jobs)
    assert len(long_job.prompt_ids) > 25 * 16 and first_long >= len(long_job.prompt_ids) // 16 - 2
    assert last_short < 8 < first_long  # the short answer was done long before the long prompt's first token
    for key, messages, limit in ((0, long_messages, 6), (1, short_messages, 3)):
        assert answers[key].token_ids == oracle(host, messages, limit).token_ids


def test_the_evaluation_engine_answers_each_row_as_hf_generate_and_the_same_every_run(tiny_model_dir):
    """`SlmEngine` (what the Ray Data actors run): more rows than batch rows, so rows join as others
    finish; answers in request order, each equal to HF generate's alone; byte-identical on a rerun."""
    from ray_app.engines.base import EngineRequest
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.engines.slm import SlmSettings

    engine = SlmEngine(SlmSettings(model_path=tiny_model_dir, precision="fp32", batch_size=3, max_new_tokens=7,
                                   prefill_chunk_tokens=64))  # fmt: skip
    queries = ["Weather in Paris?", "Oslo", "Rome, in Celsius", "Fly me to Rome", "Is it raining in Lima?"]
    prompts = [toolcall_prompt([WEATHER], query) for query in queries] + ["Name a colour.", "Count to three."]
    requests = [EngineRequest(index, "toolcall", prompt) for index, prompt in enumerate(prompts)]
    first = engine.generate(requests)
    second = engine.generate(requests)
    assert [answer.token_ids for answer in first] == [answer.token_ids for answer in second]
    for request, answer in zip(requests, first, strict=True):
        alone = oracle(engine, request.messages, 7)
        assert (answer.text, answer.token_ids, answer.prompt_tokens) == (
            alone.text,
            alone.token_ids,
            alone.prompt_tokens,
        )
    assert engine.describe()["precision"] == "fp32" and not engine.scheduler.has_work


def run_schedule(scheduler, host, conversations, limits) -> list[tuple[tuple[int, ...], int]]:
    """Each iteration's (rows that got a token, prompt tokens the schedule spent), keys 0..n-1."""
    for key, (messages, limit) in enumerate(zip(conversations, limits, strict=True)):
        scheduler.add(key, host.job("slm", messages, limit))
    schedule = []
    while scheduler.has_work:
        result = scheduler.iteration()
        assert not result.failed
        schedule.append((tuple(sorted(token.job for token in result.tokens)), result.prefill_tokens))
    return schedule


@pytest.mark.parametrize("schedule_as_uncached", [True, False])
def test_evaluation_schedules_a_group_the_same_whatever_the_prefix_cache_holds(host, schedule_as_uncached):
    """Evaluation's scheduler (`schedule_as_uncached`) spends the prefill budget on cached pieces too, so
    a group decodes in the same company at every step after a warm cache as after a cold one (in bf16
    that company changes answers); Serve's lets a cache hit join earlier, which is its latency gain."""
    from ray_app.engines.decode.scheduler import DecodeScheduler

    conversations, limits = batch_of_conversations()

    def fresh():
        return DecodeScheduler(host.slm, max_batch_rows=3, prefill_chunk_tokens=24, prefix_cache_tokens=4096,
                               schedule_as_uncached=schedule_as_uncached)  # fmt: skip

    cold = run_schedule(fresh(), host, conversations, limits)
    warmed = fresh()
    run_schedule(warmed, host, conversations[:2], limits[:2])  # another group first: the shared pieces are cached
    hits = warmed.prefix_cache.hits
    warm = run_schedule(warmed, host, conversations, limits)
    assert warmed.prefix_cache.hits > hits  # the second group did load cached prefixes
    assert (warm == cold) is schedule_as_uncached


def test_prompts_admitted_together_load_the_shared_prefix_the_first_of_them_prefilled(host):
    """A cold cache and three prompts with the same tool signature admitted in one iteration: all miss at
    admission, yet the second and third load the shared prefix the first one prefilled before they
    reach it (each looks again before each piece), and every answer is the prompt's answer alone."""
    from ray_app.engines.decode.scheduler import DecodeScheduler

    conversations, limits = batch_of_conversations()
    conversations, limits = conversations[:3], limits[:3]
    scheduler = DecodeScheduler(host.slm, max_batch_rows=3, prefill_chunk_tokens=24, prefix_cache_tokens=4096,
                                schedule_as_uncached=True)  # fmt: skip
    jobs = [host.job("slm", messages, limit) for messages, limit in zip(conversations, limits, strict=True)]
    answers = scheduler.run_to_completion(jobs)
    assert scheduler.prefix_cache.hits >= 2
    for messages, limit, answer in zip(conversations, limits, answers, strict=True):
        assert answer.token_ids == oracle(host, messages, limit).token_ids


def test_rows_prefilling_together_join_in_slots_kept_for_them_without_another_rebuild(host, monkeypatch):
    """The first row of a group to finish its prefill lays the buffers out with a dead slot, wide enough,
    for each prompt still prefilling: the others join in place (the buffers are laid out once, not once
    per row, each time copying every running row), and every answer is the prompt's answer alone."""
    from ray_app.engines.decode.running_batch import RunningBatch
    from ray_app.engines.decode.scheduler import DecodeScheduler

    rebuilds = []
    rebuild = RunningBatch._rebuild
    monkeypatch.setattr(RunningBatch, "_rebuild", lambda self, *args: rebuilds.append(1) or rebuild(self, *args))
    conversations, limits = batch_of_conversations()
    conversations, limits = conversations[:4], [40, 40, 40, 40]  # room for every row to join in place
    scheduler = DecodeScheduler(host.slm, max_batch_rows=4, prefill_chunk_tokens=24, prefix_cache_tokens=0,
                                schedule_as_uncached=True)  # fmt: skip
    jobs = [host.job("slm", messages, limit) for messages, limit in zip(conversations, limits, strict=True)]
    answers = scheduler.run_to_completion(jobs)
    assert len(rebuilds) == 1
    for messages, limit, answer in zip(conversations, limits, answers, strict=True):
        assert answer.token_ids == oracle(host, messages, limit).token_ids


def counted_batch_methods(monkeypatch, names):
    """Count calls of these `RunningBatch` methods (the calls still run)."""
    from ray_app.engines.decode.running_batch import RunningBatch

    calls = dict.fromkeys(names, 0)

    def counted(name):
        real = getattr(RunningBatch, name)

        def call(self, *args):
            calls[name] += 1
            return real(self, *args)

        return call

    for name in names:
        monkeypatch.setattr(RunningBatch, name, counted(name))
    return calls


def run_watching_buffers(scheduler, jobs):
    """Run the jobs; the answers by key and, after each iteration, the storage the batch's first key buffer
    lives in and the batch's slot count ((None, 0) when there is no batch)."""
    for key, job in enumerate(jobs):
        scheduler.add(key, job)
    answers, buffers_seen = {}, []
    while scheduler.has_work:
        result = scheduler.iteration()
        answers.update({token.job: token.answer for token in result.tokens if token.answer is not None})
        batch = scheduler.batches.get("slm")
        if batch and batch.layers:
            buffers_seen.append((batch.layers[0].buffer_keys.untyped_storage().data_ptr(), len(batch.slots)))
        else:
            buffers_seen.append((None, 0))
    return answers, buffers_seen


def test_a_row_joining_after_another_finished_takes_its_slot_in_place_and_answers_as_alone(host, monkeypatch):
    """A finished row leaves its slot dead without copying the others; a later row whose prompt and answer
    fit takes that slot in place (the buffers are not rebuilt) and still answers as HF generate alone."""
    from ray_app.engines.decode.scheduler import DecodeScheduler

    calls = counted_batch_methods(monkeypatch, ["_place", "_rebuild"])
    scheduler = DecodeScheduler(host.slm, max_batch_rows=2, prefill_chunk_tokens=4096, prefix_cache_tokens=0)
    long_messages = chat_messages(toolcall_prompt([FLIGHTS, WEATHER], "Fly to Rome " * 10))
    short_messages = chat_messages("Name a colour.")
    late_messages = chat_messages("Count to three.")
    cases = ((long_messages, 12), (short_messages, 2), (late_messages, 4))
    answers, buffers_seen = run_watching_buffers(scheduler, [host.job("slm", *case) for case in cases])
    # the short row finished, the late one took its slot: two slots all along, one buffer after the first join
    assert calls == {"_place": 1, "_rebuild": 1} and {slots for _, slots in buffers_seen if slots} == {2}
    for key, (messages, limit) in enumerate(cases):
        assert answers[key].token_ids == oracle(host, messages, limit).token_ids


def test_a_longer_prompt_joins_a_dead_slot_by_moving_the_rows_right_in_their_buffers(host, monkeypatch):
    """A row whose prompt is longer than the running rows' columns takes a dead slot after the running rows
    move right within the same buffers (no new buffers: on a VM fresh memory costs a page fault on the host
    too; a rebuild measured ~3 s for 2 GB), and every answer is still the prompt's answer alone."""
    from ray_app.engines.decode.scheduler import DecodeScheduler

    calls = counted_batch_methods(monkeypatch, ["_rebuild", "_shift_right", "_place"])
    scheduler = DecodeScheduler(host.slm, max_batch_rows=2, prefill_chunk_tokens=4096, prefix_cache_tokens=0)
    cases = [
        (chat_messages("Name a colour."), 30),  # decodes on while the others come and go
        (chat_messages("Hi"), 2),  # finishes at once: its slot is dead
        (chat_messages("Name a colour, then another, then one more, and say which you like."), 4),  # longer
    ]
    # longer than the first row's prompt and the tokens it wrote before the third one joins
    assert len(host.job("slm", *cases[2]).prompt_ids) > len(host.job("slm", *cases[0]).prompt_ids) + 4
    answers, buffers_seen = run_watching_buffers(scheduler, [host.job("slm", *case) for case in cases])
    assert calls == {"_rebuild": 1, "_shift_right": 1, "_place": 1}
    assert len({storage for storage, _ in buffers_seen if storage is not None}) == 1  # one buffer all along
    for key, (messages, limit) in enumerate(cases):
        assert answers[key].token_ids == oracle(host, messages, limit).token_ids


def test_a_layout_leaves_room_for_rows_that_come_later_with_longer_answers(host, monkeypatch):
    """The first layout leaves twice the longest answer's columns beside the running rows' (LATER_ROWS_SLACK):
    a row admitted later, when another finished, joins its slot in place though its answer may run longer
    than any row's in the layout; each answer is the prompt's alone."""
    from ray_app.engines.decode.scheduler import DecodeScheduler

    calls = counted_batch_methods(monkeypatch, ["_rebuild", "_place"])
    scheduler = DecodeScheduler(host.slm, max_batch_rows=2, prefill_chunk_tokens=4096, prefix_cache_tokens=0)
    cases = [(chat_messages("Name a colour."), 20), (chat_messages("Hi"), 15), (chat_messages("Count to three."), 30)]
    answers, _ = run_watching_buffers(scheduler, [host.job("slm", *case) for case in cases])
    assert [len(answers[key].token_ids) for key in range(3)] == [20, 15, 30]  # the tiny model writes to its limits
    assert calls == {"_rebuild": 1, "_place": 1}
    for key, (messages, limit) in enumerate(cases):
        assert answers[key].token_ids == oracle(host, messages, limit).token_ids


def test_when_most_slots_are_dead_the_live_rows_move_down_within_their_buffers(host, monkeypatch):
    """Rows finishing leave most slots dead: the live rows are copied to the first slots of the same buffers
    (no new buffers), and they answer as alone."""
    from ray_app.engines.decode.scheduler import DecodeScheduler

    calls = counted_batch_methods(monkeypatch, ["_rebuild", "_keep"])
    scheduler = DecodeScheduler(host.slm, max_batch_rows=3, prefill_chunk_tokens=4096, prefix_cache_tokens=0)
    cases = [(chat_messages("Hi"), 2), (chat_messages("Count to three."), 3), (chat_messages("Name a colour."), 20)]
    answers, buffers_seen = run_watching_buffers(scheduler, [host.job("slm", *case) for case in cases])
    assert calls["_rebuild"] == 1 and calls["_keep"] >= 1
    assert len({storage for storage, _ in buffers_seen if storage is not None}) == 1
    for key, (messages, limit) in enumerate(cases):
        assert answers[key].token_ids == oracle(host, messages, limit).token_ids


def test_a_stop_text_ends_the_answer_where_it_first_appears_and_is_left_out(tiny_model_dir):
    """OpenAI's `stop` (the CodeAct loop stops at `</code>`): the answer is HF generate's alone, cut
    before the first stop text, with the tokens up to the one that completed it; rows without stop
    texts in the same batch are untouched."""
    from ray_app.engines.base import ChatRequest
    from ray_app.engines.decode.engine import SlmEngine
    from ray_app.engines.slm import SlmSettings

    engine = SlmEngine(SlmSettings(model_path=tiny_model_dir, precision="fp32", batch_size=4, max_new_tokens=24))
    tokenizer = engine.slm.tokenizer
    conversations = [chat_messages(toolcall_prompt([WEATHER], query)) for query in ("Paris?", "Oslo", "Lima")]
    alone = [oracle(engine, messages, 24) for messages in conversations]
    # A stop text the first answer really contains (its first three tokens: the tiny random model
    # writes newlines), and one it never writes.
    stop_text = tokenizer.decode(alone[0].token_ids[:3], skip_special_tokens=True)
    assert stop_text in alone[0].text and len(alone[0].token_ids) > 3
    requests = [
        ChatRequest(conversations[0], (stop_text, "never written \x00"), 24),
        ChatRequest(conversations[1], (), 24),
        ChatRequest(conversations[2], ("never written \x00",), 24),
    ]
    stopped, plain, unmatched = engine.chat(requests)
    assert stopped.text == alone[0].text[: alone[0].text.index(stop_text)]
    assert stopped.stopped and stopped.stop_text == stop_text
    cut = next(
        n for n in range(1, 25) if stop_text in tokenizer.decode(alone[0].token_ids[:n], skip_special_tokens=True)
    )
    assert stopped.token_ids == alone[0].token_ids[:cut]
    for answer, expected in ((plain, alone[1]), (unmatched, alone[2])):
        assert (answer.text, answer.token_ids, answer.stop_text) == (expected.text, expected.token_ids, None)


@pytest.mark.parametrize("adapter_weights", ["merged", "unmerged"])
def test_switching_between_the_base_and_an_adapter_gives_each_its_own_logits(adapter_weights, tiny_model_dir, tmp_path):
    """Base, adapter, adapter, base, adapter: each call gives what that model alone gives (the base: the
    plain model without PEFT; the adapter: PEFT's unmerged LoRA, which a merged copy matches to rounding).
    Unmerged, `activate` switches only when the model changes; merged, each model is its own module and
    merging leaves the base as it was."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ray_app.engines.decode.loaded_slm import LoadedSlm
    from ray_app.engines.slm import SlmSettings
    from tests.test_serve import random_lora_adapter

    adapter_dir = tmp_path / "adapter_toolcall"
    random_lora_adapter(tiny_model_dir, adapter_dir)
    slm = LoadedSlm(  # torch's linear kernels, whatever this machine's probe chose: compared bitwise with HF's model
        SlmSettings(model_path=tiny_model_dir, precision="fp32", adapter_weights=adapter_weights, cpu_linear="torch"),
        {"slm-toolcall": adapter_dir},
    )
    assert slm.adapter_weights.name == adapter_weights
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])

    def logits(model_name: str):
        slm.activate(model_name)
        with torch.inference_mode():
            return slm.model_for(model_name)(input_ids=ids).logits

    with torch.inference_mode():
        base = plain(input_ids=ids).logits
        lora = (
            PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), adapter_dir
            )
            .eval()(input_ids=ids)
            .logits
        )
    adapted = logits("slm-toolcall")
    assert not torch.allclose(adapted, base)
    torch.testing.assert_close(adapted, lora, rtol=1e-4, atol=1e-4)
    for model_name, expected in [("slm", base), ("slm-toolcall", adapted), ("slm-toolcall", adapted), ("slm", base),
                                 ("slm", base), ("slm-toolcall", adapted)]:  # fmt: skip
        assert torch.equal(logits(model_name), expected), model_name


def test_a_host_that_claims_the_loop_on_its_loading_thread_decodes_there_without_a_warning(tiny_model_dir, caplog):
    """Serve's replica: load, claim the decode loop, then run it on that one thread. Forward calls on
    another thread than the loader's are ~2x slower on 2 cores (torch's OpenMP teams), so the engine
    warns when that happens: here it must not; with the loop started by `submit` (another thread) it does."""
    from ray_app.engines.slm import SlmSettings
    from ray_app.serve.model_host import ModelHost

    settings = SlmSettings(model_path=tiny_model_dir, precision="fp32")
    loaded: list = []
    ready = threading.Event()

    def load_and_decode() -> None:
        host = ModelHost(settings, adapter_root=None)
        host.claim_decode_loop()
        loaded.append(host)
        ready.set()
        host.run_decode_loop()

    threading.Thread(target=load_and_decode, daemon=True).start()
    assert ready.wait(120)
    [claimed] = loaded
    messages = chat_messages(toolcall_prompt([WEATHER], "Weather in Paris?"))
    with caplog.at_level("WARNING", logger="ray_app.engines.decode.loaded_slm"):
        [answer] = claimed.generate([claimed.job("slm", messages, 8)])
    assert claimed.loop_thread.ident == claimed.slm.loading_thread
    assert "another thread" not in caplog.text
    with pytest.raises(RuntimeError, match="already runs"):
        claimed.claim_decode_loop()

    lazy = ModelHost(settings, adapter_root=None)  # loaded here, its loop started by submit on a new thread
    with caplog.at_level("WARNING", logger="ray_app.engines.decode.loaded_slm"):
        [same] = lazy.generate([lazy.job("slm", messages, 8)])
        lazy.generate([lazy.job("slm", messages, 8)])
    assert caplog.text.count("decodes on another thread than the one that loaded it") == 1
    assert same.token_ids == answer.token_ids


def test_the_eval_actor_loads_its_engine_on_the_thread_that_answers_its_batches(tiny_model_dir):
    """Ray Data calls an actor's constructor and its batches on two threads: the engine loads on the first
    batch's thread, where every later batch runs too."""
    import json
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import asdict

    from ray_app.engines.slm import SlmSettings
    from ray_app.eval.ray_predictor import SlmPredictor

    settings = asdict(SlmSettings(model_path=tiny_model_dir, precision="fp32", max_new_tokens=4))
    predictor = SlmPredictor(settings, {})
    assert predictor.engine is None
    payload = json.dumps({"track": "toolcall", "model": "slm", "indices": [0],
                          "prompts": [toolcall_prompt([WEATHER], "Weather in Oslo?")],
                          "completions": ['<tool_call name="get_weather">{"city": "Oslo"}</tool_call>'],
                          "decodings": ["free"]})  # fmt: skip
    calls = ThreadPoolExecutor(1)
    [result] = calls.submit(lambda: list(predictor({"payload": [payload]}))).result()
    answered = json.loads(result["result"][0])
    assert answered["decoding"] == "free" and len(answered["records"]) == 1
    assert predictor.engine.slm.loading_thread == calls.submit(threading.get_ident).result()


def test_the_eval_actor_sends_a_groups_rows_as_they_finish_with_the_answers_of_one_result(tiny_model_dir, monkeypatch):
    """A group's answered rows go to the driver as they finish (here: one result per row), so its progress
    bar and store move during a group; the rows and their answers are those of one result per group."""
    import json
    from dataclasses import asdict

    from ray_app.engines.slm import SlmSettings
    from ray_app.eval import ray_predictor
    from ray_app.eval.ray_predictor import SlmPredictor

    settings = asdict(SlmSettings(model_path=tiny_model_dir, precision="fp32", max_new_tokens=12, batch_size=2))
    prompts = [toolcall_prompt([WEATHER], f"Weather in {city}?") for city in ("Oslo", "Lima", "Pune", "Kyiv", "Rome")]
    payload = json.dumps({"track": "toolcall", "model": "slm", "indices": [10, 11, 12, 13, 14], "prompts": prompts,
                          "completions": [""] * 5,
                          "decodings": ["free", "constrained"]})  # fmt: skip

    def results(every_s: float) -> list[dict]:
        monkeypatch.setattr(ray_predictor, "RESULT_EVERY_S", every_s)
        return [json.loads(out["result"][0]) for out in SlmPredictor(settings, {})({"payload": [payload]})]

    whole = results(3600.0)
    assert [result["decoding"] for result in whole] == ["free", "constrained"]
    as_finished = results(0.0)
    assert [result["decoding"] for result in as_finished] == ["free"] * 5 + ["constrained"] * 5
    assert all(len(result["records"]) == 1 and result["elapsed_s"] > 0 for result in as_finished)
    for decoding, result in zip(("free", "constrained"), whole, strict=True):
        rows = sorted((r for one in as_finished if one["decoding"] == decoding for r in one["records"]),
                      key=lambda record: record["index"])  # fmt: skip
        drop_latency = lambda records: [{k: v for k, v in r.items() if k != "latency_s"} for r in records]  # noqa: E731
        assert drop_latency(rows) == drop_latency(sorted(result["records"], key=lambda record: record["index"]))


def test_a_caller_that_stops_taking_answers_early_leaves_the_scheduler_idle(host):
    """`answers_as_finished` abandoned after the first answer drops the rest: the next group is answered
    as it would be on a fresh scheduler."""
    from ray_app.engines.decode.scheduler import DecodeScheduler

    conversations, limits = batch_of_conversations()
    scheduler = DecodeScheduler(host.slm, max_batch_rows=2, prefill_chunk_tokens=24, prefix_cache_tokens=0,
                                schedule_as_uncached=True)  # fmt: skip
    jobs = [host.job("slm", messages, limit) for messages, limit in zip(conversations, limits, strict=True)]
    answers = scheduler.answers_as_finished(jobs)
    next(answers)
    answers.close()
    assert not scheduler.has_work
    again = scheduler.run_to_completion(jobs[:2])
    for messages, limit, answer in zip(conversations[:2], limits[:2], again, strict=True):
        assert answer.token_ids == oracle(host, messages, limit).token_ids


def test_row_attention_reads_each_live_rows_own_columns_as_masked_sdpa_would():
    """`row_attention_forward` with row spans: each live row equals masked SDPA over the whole buffer
    (grouped query heads included); a dead slot is not computed; without spans it is transformers' SDPA."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from ray_app.engines.decode.row_attention import row_attention_forward

    torch.manual_seed(0)
    slots, heads, key_heads, width, head_dim = 4, 6, 2, 11, 8
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = heads // key_heads, True
    query = torch.randn(slots, heads, 1, head_dim)
    key, value = torch.randn(slots, key_heads, width, head_dim), torch.randn(slots, key_heads, width, head_dim)
    starts = [0, 5, 9, 3]  # slot 3 is dead
    key[1, :, :5] = float("nan")  # padding is never read
    value[2, :, :9] = float("nan")
    mask = torch.zeros(slots, 1, 1, width, dtype=torch.bool)
    for slot, start in enumerate(starts):
        mask[slot, ..., start:] = True
    spans = [(0, 0), (1, 5), (2, 9)]
    rows, _ = row_attention_forward(module, query, key, value, None, scaling=0.3, row_spans=spans)
    clean_key, clean_value = key.nan_to_num(), value.nan_to_num()
    masked, _ = sdpa_attention_forward(module, query, clean_key, clean_value, mask, scaling=0.3)
    assert rows.shape == masked.shape == (slots, 1, heads, head_dim)
    torch.testing.assert_close(rows[:3], masked[:3], rtol=1e-5, atol=1e-6)
    assert not rows[3].any()
    plain, _ = row_attention_forward(module, query, clean_key, clean_value, mask, scaling=0.3)
    assert torch.equal(plain, masked)


def test_cpu_decode_steps_read_only_live_rows_columns(host):
    """The engine's CPU models use row attention: garbage (NaN) written into every column a live row does
    not own — the padding left of its prompt and a dead slot's — changes no token of any answer."""
    import torch

    from ray_app.engines.decode.row_attention import uses_row_attention
    from ray_app.engines.decode.scheduler import DecodeScheduler

    assert uses_row_attention(host.slm.model_for("slm"))
    conversations = [chat_messages(toolcall_prompt([FLIGHTS, WEATHER], "Fly to Rome " * 6)),
                     chat_messages("Name a colour."), chat_messages("Count to three.")]  # fmt: skip
    limits = [10, 2, 8]

    def answer(poison: bool) -> dict:
        scheduler = DecodeScheduler(host.slm, max_batch_rows=3, prefill_chunk_tokens=4096, prefix_cache_tokens=0)
        for key, (messages, limit) in enumerate(zip(conversations, limits, strict=True)):
            scheduler.add(key, host.job("slm", messages, limit))
        answers, poisoned = {}, 0
        while scheduler.has_work:
            result = scheduler.iteration()
            answers.update({token.job: token.answer.token_ids for token in result.tokens if token.answer})
            batch = scheduler.batches.get("slm")
            if poison and batch is not None:
                for slot, row in enumerate(batch.slots):
                    unused = batch.attention[slot] == 0
                    unused[batch.filled :] = False  # the columns the next steps write
                    if row is None:
                        unused[: batch.filled] = True
                    with torch.inference_mode():  # the buffers are inference tensors
                        for layer in batch.layers:
                            layer.buffer_keys[slot, :, unused] = float("nan")
                            layer.buffer_values[slot, :, unused] = float("nan")
                    poisoned += int(unused.sum())
        assert not poison or poisoned > 0
        return answers

    assert answer(poison=True) == answer(poison=False)


def test_row_attention_is_for_cpu_models_in_either_precision(tiny_model_dir):
    """fp32 and bf16 on a CPU; a model whose attention is not transformers' SDPA is left as it is."""
    from ray_app.engines.decode.row_attention import ROW_ATTENTION, use_row_attention, uses_row_attention
    from ray_app.engines.slm import SlmSettings, load_model_and_tokenizer

    for precision in ("bf16", "fp32"):
        model, _, _, _ = load_model_and_tokenizer(SlmSettings(model_path=tiny_model_dir, precision=precision))
        assert use_row_attention(model) and uses_row_attention(model)
        assert model.config._attn_implementation == ROW_ATTENTION
    model.set_attn_implementation("eager")
    assert not use_row_attention(model) and not uses_row_attention(model)


def test_rows_sharing_a_prefix_read_one_copy_of_it_and_answer_as_over_their_own_columns():
    """`RowSpans.shared` (torch's kernel): rows whose first columns hold the same prefix attend over the
    source row's copy of it and their own columns after it, merged: equal to masked SDPA over each row's
    own columns; the other rows' copies are never read (NaN there changes nothing)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from ray_app.engines.decode.row_attention import RowSpans, SharedPrefix, row_attention_forward
    from tests.attention_rows import STARTS, rows_sharing_a_prefix

    width, length = 20, 7
    module, query, key, value = rows_sharing_a_prefix(width, head_dim=8, length=length)
    slots, starts = len(STARTS), STARTS  # slots 0, 2 and 4 share a 7-token prefix; 1 and 3 do not
    mask = torch.zeros(slots, 1, 1, width, dtype=torch.bool)
    for slot, start in enumerate(starts):
        mask[slot, ..., start:] = True
    masked, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    poisoned_key, poisoned_value = key.clone(), value.clone()
    for slot in (2, 4):  # only the source's copy (slot 0) is read
        poisoned_key[slot, :, : starts[slot] + length] = float("nan")
        poisoned_value[slot, :, : starts[slot] + length] = float("nan")
    spans = [(slot, start + (length if slot in (0, 2, 4) else 0)) for slot, start in enumerate(starts)]
    shared = [SharedPrefix((0, 2, 4), source=0, start=starts[0], length=length)]
    rows, _ = row_attention_forward(module, query, poisoned_key, poisoned_value, None, scaling=0.3,
                                    row_spans=RowSpans(tuple(spans), tuple(shared)))  # fmt: skip
    torch.testing.assert_close(rows, masked, rtol=1e-5, atol=1e-6)


def test_rows_decoding_together_group_by_the_longest_prefix_another_row_holds_too(host):
    """One agent's requests share the prompt up to its tool block; a prompt with other tools shares the
    instruction only, with the rows it shares that with; a prompt without template text shares nothing."""
    from ray_app.engines.decode.running_batch import Row, shared_prefix_groups

    same_tools = [chat_messages(toolcall_prompt([WEATHER], query)) for query in ("Paris?", "Oslo, in Celsius?")]
    other_tools = [chat_messages(toolcall_prompt([FLIGHTS, WEATHER], query)) for query in ("Rome", "Lima")]
    prompts = [same_tools[0], [{"role": "user", "content": "hi"}], *other_tools, same_tools[1]]
    jobs = [host.job("slm", messages, 4) for messages in prompts]
    slots = [Row(job, key, 0.0) for key, job in enumerate(jobs)]
    slots.insert(2, None)  # a dead slot
    groups = shared_prefix_groups(slots, min_columns=0)
    tools_end, flights_tools_end = jobs[0].prefix_ends[-1], jobs[2].prefix_ends[-1]
    assert jobs[0].prompt_ids[:tools_end] == jobs[4].prompt_ids[:tools_end]
    assert groups == {0: (0, tools_end), 5: (0, tools_end), 3: (3, flights_tools_end), 4: (3, flights_tools_end)}
    # A group sparing fewer columns than a call and a merge cost reads its own copies
    assert shared_prefix_groups(slots, min_columns=tools_end + 1) == {3: (3, flights_tools_end),
                                                                      4: (3, flights_tools_end)}  # fmt: skip
    assert shared_prefix_groups(slots, min_columns=flights_tools_end + 1) == {}


@pytest.mark.parametrize("kernel", ["compiled", "torch"])
def test_an_engine_step_reads_the_shared_prefix_from_one_row_and_answers_as_alone(host, monkeypatch, kernel):
    """Requests with the same tools decode together: the step passes their shared prefix to row attention,
    NaN in every copy of it but the source row's changes no token, and each answer is HF generate's,
    as rows leave the group too; through the compiled kernel (the group's copy read in each row's own
    pass) and torch's (one flash call per group, merged)."""
    import torch

    from ray_app.engines.decode.attention_kernel import DecodeAttentionChoice
    from ray_app.engines.decode.running_batch import RunningBatch
    from ray_app.engines.decode.scheduler import DecodeScheduler

    queries = ["Weather in Paris?", "And in Oslo, for the whole weekend, in Celsius please?", "Rome tomorrow"]
    conversations = [chat_messages(toolcall_prompt([WEATHER], query)) for query in queries]
    seen = []
    original = RunningBatch._row_spans

    def spy(self, starts):
        arguments = original(self, starts)
        if arguments["row_spans"].shared:
            seen.append([prefix.slots for prefix in arguments["row_spans"].shared])
        return arguments

    monkeypatch.setattr(RunningBatch, "_row_spans", spy)
    if kernel == "torch":
        monkeypatch.setattr(host.slm, "decode_attention", DecodeAttentionChoice("torch", "the test asks for it"))
    elif host.slm.decode_attention.compiled is None:
        pytest.skip(f"no compiled kernel here: {host.slm.decode_attention.reason}")
    monkeypatch.setattr(RunningBatch, "min_shared_columns", 0)  # the tiny model's prompts are short

    def answer(limits: list[int], share: bool = True, poison: bool = False) -> dict:
        monkeypatch.setattr(RunningBatch, "share_prefix_reads", share)
        scheduler = DecodeScheduler(host.slm, max_batch_rows=3, prefill_chunk_tokens=4096, prefix_cache_tokens=4096)
        # the tools cached first: the three rows then prefill in one step and join together (on a cold cache
        # the second and third wait a step for the prefix the first computes)
        scheduler.run_to_completion([host.job("slm", conversations[0], 1)])
        for key, (messages, limit) in enumerate(zip(conversations, limits, strict=True)):
            scheduler.add(key, host.job("slm", messages, limit))
        answers = {}
        while scheduler.has_work:
            result = scheduler.iteration()
            answers.update({token.job: token.answer.token_ids for token in result.tokens if token.answer})
            batch = scheduler.batches.get("slm")
            if poison and batch is not None and batch._sharing:  # every row in until the last step: sources stay
                with torch.inference_mode():
                    for slot, (source, length) in batch._sharing.items():
                        start = int(batch.attention[slot].argmax())
                        for layer in batch.layers if slot != source else ():
                            layer.buffer_keys[slot, :, start : start + length] = float("nan")
                            layer.buffer_values[slot, :, start : start + length] = float("nan")
        return answers

    poisoned = answer([10, 10, 10], poison=True)
    assert seen and max(len(slots) for step in seen for slots in step) == 3
    assert poisoned == answer([10, 10, 10], share=False)
    calls, limits = len(seen), [9, 12, 6]
    unshared = answer(limits, share=False)
    assert len(seen) == calls  # switched off: every row over its own columns
    shared = answer(limits)
    assert len(seen) > calls and shared == unshared
    for key, (messages, limit) in enumerate(zip(conversations, limits, strict=True)):
        assert shared[key] == oracle(host, messages, limit).token_ids


def counted_prefill_calls(monkeypatch):
    """The pieces of every `run_prefill_pieces` call the scheduler makes, as (key, start, end) tuples."""
    from ray_app.engines.decode import scheduler as scheduler_module

    calls: list[tuple[tuple[int, int, int], ...]] = []
    run = scheduler_module.run_prefill_pieces

    def counted(model, device, pieces):
        calls.append(tuple((piece.task.row.key, piece.start, piece.end) for piece in pieces))
        return run(model, device, pieces)

    monkeypatch.setattr(scheduler_module, "run_prefill_pieces", counted)
    return calls


def test_pieces_of_several_prompts_run_as_one_forward_call_and_fill_each_cache_as_alone(host):
    """Packed prefill: pieces of three prompts (two consecutive pieces of one of them) in one forward
    call leave each prompt's cache and last logits as prefilling each piece on its own does."""
    import torch

    from ray_app.engines.decode.prefill import PrefillTask, packs_prefill, run_prefill_pieces
    from ray_app.engines.decode.running_batch import Row

    conversations, limits = batch_of_conversations()
    jobs = [host.job("slm", messages, limit) for messages, limit in zip(conversations[2:], limits[2:], strict=True)]
    model = host.slm.model_for("slm")
    assert packs_prefill(model)

    def tasks():
        return [PrefillTask(Row(job, key, 0.0), 16, None) for key, job in enumerate(jobs)]

    packed, alone = tasks(), tasks()
    pieces = [packed[0].take_piece()[1], packed[0].take_piece()[1], packed[1].take_piece()[1]]
    while not packed[2].finished:  # the short prompt whole: its last piece gives logits
        pieces.append(packed[2].take_piece()[1])
    forward_calls = []
    hook = model.register_forward_pre_hook(lambda *args: forward_calls.append(1))
    try:
        run_prefill_pieces(model, host.slm.device, pieces)
    finally:
        hook.remove()
    assert len(forward_calls) == 1 and len(pieces) >= 4
    for task, count in zip(alone, (2, 1, len(pieces) - 3), strict=True):
        for _ in range(count):
            task.run_piece(model, host.slm.device)  # one forward call per piece
    for ours, reference in zip(packed, alone, strict=True):
        assert ours.done_tokens == reference.done_tokens
        for ours_layer, reference_layer in zip(ours.cache.layers, reference.cache.layers, strict=True):
            torch.testing.assert_close(ours_layer.keys, reference_layer.keys, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ours_layer.values, reference_layer.values, rtol=1e-5, atol=1e-5)
    assert packed[0].logits is None and packed[2].logits is not None
    torch.testing.assert_close(packed[2].logits, alone[2].logits, rtol=1e-4, atol=1e-4)


def test_serve_prefills_each_steps_pieces_in_one_call_and_answers_as_alone(host, monkeypatch):
    """Serve's scheduler packs every piece an iteration computes into one forward call per model; each
    answer is still the prompt's answer alone."""
    from ray_app.engines.decode.scheduler import DecodeScheduler

    calls = counted_prefill_calls(monkeypatch)
    conversations, limits = batch_of_conversations()
    scheduler = DecodeScheduler(host.slm, max_batch_rows=5, prefill_chunk_tokens=64, prefix_cache_tokens=0)
    jobs = [host.job("slm", messages, limit) for messages, limit in zip(conversations, limits, strict=True)]
    answers = scheduler.run_to_completion(jobs)
    assert max(len(call) for call in calls) >= 3  # several prompts' pieces in one call
    assert len({key for call in calls for key, _, _ in call if len(call) > 1}) >= 3
    for messages, limit, answer in zip(conversations, limits, answers, strict=True):
        assert answer.token_ids == oracle(host, messages, limit).token_ids


def test_serve_computes_a_prefix_prompts_prefilling_together_share_once(host, monkeypatch):
    """Three prompts with the same tool signature admitted together on a cold cache: the first computes
    the shared prefix, the others wait a step for it instead of computing it beside it in the same call,
    then load it from the cache; every answer is the prompt's answer alone."""
    from ray_app.engines.decode.scheduler import DecodeScheduler

    calls = counted_prefill_calls(monkeypatch)
    conversations, limits = batch_of_conversations()
    conversations, limits = conversations[:3], limits[:3]
    scheduler = DecodeScheduler(host.slm, max_batch_rows=3, prefill_chunk_tokens=512, prefix_cache_tokens=4096)
    jobs = [host.job("slm", messages, limit) for messages, limit in zip(conversations, limits, strict=True)]
    shared_end = max(set(jobs[0].prefix_ends) & set(jobs[1].prefix_ends) & set(jobs[2].prefix_ends))
    answers = scheduler.run_to_completion(jobs)
    computed_shared_prefix = {key for call in calls for key, start, _ in call if start < shared_end}
    assert len(computed_shared_prefix) == 1 and scheduler.prefix_cache.hits >= 2
    for messages, limit, answer in zip(conversations, limits, answers, strict=True):
        assert answer.token_ids == oracle(host, messages, limit).token_ids


def test_evaluation_packs_only_pieces_no_cache_hit_could_skip_so_its_calls_do_not_depend_on_the_cache(
    host, monkeypatch
):
    """Evaluation packs the pieces past each prompt's last shareable prefix (always computed) and runs a
    piece a hit could skip on its own: the packed calls are the same on a cold and a warm cache."""
    from ray_app.engines.decode.scheduler import DecodeScheduler

    calls = counted_prefill_calls(monkeypatch)
    conversations, limits = batch_of_conversations()

    def fresh():
        return DecodeScheduler(host.slm, max_batch_rows=5, prefill_chunk_tokens=1024, prefix_cache_tokens=4096,
                               schedule_as_uncached=True)  # fmt: skip

    cold = fresh()
    run_schedule(cold, host, conversations, limits)
    cold_packs = [call for call in calls if len(call) > 1]
    warm = fresh()
    run_schedule(warm, host, conversations[:2], limits[:2])
    calls.clear()
    run_schedule(warm, host, conversations, limits)
    assert warm.prefix_cache.hits > 0 and len(cold_packs) >= 1
    assert [call for call in calls if len(call) > 1] == cold_packs
