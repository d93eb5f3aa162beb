"""The project's one greedy generation engine: which job prefills and which rows decode, step by step.

Jobs wait in arrival order. Each `iteration()`:
1. admits waiting jobs while the rows decoding plus the prompts prefilling are fewer than
   `max_batch_rows`;
2. prefills: a prompt runs in pieces (`prefill.PrefillTask`, at most `prefill_chunk_tokens`
   each); the iteration spends up to that many prompt tokens, shortest remaining prompt first, so a
   6,900-token prompt is spread over many iterations while short requests join and every running
   row keeps decoding in between (as vLLM's and llama.cpp's chunked prefill do);
3. a prompt whose last piece ran joins its model's `RunningBatch` with its first token;
4. one decode step of each model's batch, that model's adapter active.

Everything here is driven by steps, never by the clock: given the same jobs in the same order, the
same rows prefill and decode together at every step, so the tokens are the same bytes on every run;
with `schedule_as_uncached` (evaluation's engine) also whatever the prefix cache held. Evaluation
feeds fixed groups of rows this way (`run_to_completion`); Serve's replica runs the same iterations
in a thread as requests arrive (`serve/model_host.py`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from ray_app.engines.decode.loaded_slm import LoadedSlm
from ray_app.engines.decode.prefill import PrefillPiece, PrefillTask, packs_prefill, run_prefill_pieces
from ray_app.engines.decode.prefix_cache import PrefixKvCache
from ray_app.engines.decode.running_batch import GenerationJob, Row, RunningBatch, StepToken
from ray_app.engines.slm import GreedyAnswer


@dataclass
class IterationResult:
    tokens: list[StepToken] = field(default_factory=list)  # StepToken.job is the key the job was added with
    failed: list[tuple[list[int], Exception]] = field(default_factory=list)  # keys a failed forward call took down
    joined: dict[str, int] = field(default_factory=dict)  # model name → prompts that finished their prefill
    prefill_tokens: int = 0
    prefill_s: float = 0.0


class DecodeScheduler:
    def __init__(
        self,
        slm: LoadedSlm,
        max_batch_rows: int,
        prefill_chunk_tokens: int,
        prefix_cache_tokens: int,
        schedule_as_uncached: bool = False,  # prefix-cache hits save computation only (`PrefillTask`)
    ):
        if max_batch_rows < 1 or prefill_chunk_tokens < 1 or prefix_cache_tokens < 0:
            raise ValueError(
                "need max_batch_rows ≥ 1, prefill_chunk_tokens ≥ 1 and prefix_cache_tokens ≥ 0; got "
                f"{max_batch_rows}, {prefill_chunk_tokens}, {prefix_cache_tokens}"
            )
        self.slm = slm
        self.max_batch_rows = max_batch_rows
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.prefix_cache = PrefixKvCache(prefix_cache_tokens) if prefix_cache_tokens > 0 else None
        self.schedule_as_uncached = schedule_as_uncached
        self.waiting: deque[tuple[int, GenerationJob]] = deque()
        self.prefilling: list[PrefillTask] = []
        self.batches: dict[str, RunningBatch] = {}  # by model name

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or any(self.batches.values()))

    def counts(self) -> dict[str, int]:
        return {
            "running": sum(len(batch) for batch in self.batches.values()),
            "prefilling": len(self.prefilling),
            "waiting": len(self.waiting),
        }

    def add(self, key: int, job: GenerationJob) -> None:
        if job.model_name not in self.slm.model_names:
            raise ValueError(f"model {job.model_name!r} is not loaded here; loaded: {self.slm.model_names}")
        self.waiting.append((key, job))

    def cancel(self, keys: set[int]) -> list[int]:
        """Take the jobs with these keys out, wherever they are; returns the keys that were found."""
        found = [key for key, _ in self.waiting if key in keys]
        self.waiting = deque((key, job) for key, job in self.waiting if key not in keys)
        found += [task.row.key for task in self.prefilling if task.row.key in keys]
        self.prefilling = [task for task in self.prefilling if task.row.key not in keys]
        for batch in self.batches.values():
            found += [row.key for row in batch.drop(keys)]
        self._forget_empty_batches()
        return found

    def keys_in_flight(self) -> list[int]:
        return ([key for key, _ in self.waiting] + [task.row.key for task in self.prefilling]
                + [row.key for batch in self.batches.values() for row in batch.rows])  # fmt: skip

    def clear(self) -> list[int]:
        """Drop every job (after a fault in the caller's bookkeeping); returns their keys."""
        keys = self.keys_in_flight()
        self.waiting.clear()
        self.prefilling.clear()
        self.batches.clear()
        return keys

    def iteration(self) -> IterationResult:
        self.slm.check_thread()
        result = IterationResult()
        self._admit(result)
        self._prefill(result)
        for model_name, batch in list(self.batches.items()):
            if batch:
                self._guarded(result, model_name, [row.key for row in batch.rows], lambda batch=batch: batch.step())
        self._forget_empty_batches()
        return result

    def _admit(self, result: IterationResult) -> None:
        decoding = sum(len(batch) for batch in self.batches.values())
        while self.waiting and decoding + len(self.prefilling) < self.max_batch_rows:
            key, job = self.waiting.popleft()
            row = Row(job, key, time.perf_counter())
            if job.constraint is not None:
                try:  # compiled at the job's ingress (LoadedSlm.job) already, unless it was built by hand
                    row.grammar = self.slm.grammars.start(job.constraint)
                except Exception as error:  # a constraint that does not compile fails its own job only
                    result.failed.append(([key], error))
                    continue
            self.prefilling.append(
                PrefillTask(row, self.prefill_chunk_tokens, self.prefix_cache, self.schedule_as_uncached)
            )

    def _prefill(self, result: IterationResult) -> None:
        """Spend up to `prefill_chunk_tokens` prompt tokens, shortest remaining prompt first (a piece
        starts while the budget is not spent); the pieces to compute run packed, one forward call per
        model (`prefill.run_prefill_pieces`); prompts done join their model's batch.

        Evaluation (`schedule_as_uncached`) packs only pieces no cache hit could skip (past a prompt's
        last shareable prefix), so what runs in one call depends on the schedule alone; a piece a hit
        could skip runs on its own, as it would have with any cache. Serve packs every piece it
        computes, and a prompt whose next piece computes a shareable prefix another prompt computes in
        this call waits a step and takes it from the cache instead."""
        started = time.perf_counter()
        order = sorted(self.prefilling, key=lambda task: task.remaining_tokens)  # stable
        packs: dict[str, list[PrefillPiece]] = {}
        in_progress: dict[tuple[int, ...], PrefillTask] = {}  # shareable prefix → the prompt computing it
        for task in order:
            if result.prefill_tokens >= self.prefill_chunk_tokens:
                break
            model_name = task.row.job.model_name
            pack = packs.setdefault(model_name, [])

            def plan(task=task, pack=pack, model=self.slm.model_for(model_name)) -> list[StepToken]:
                packs_model, packed = packs_prefill(model), False
                while not task.finished and result.prefill_tokens < self.prefill_chunk_tokens:
                    if task.shareable and not packed:  # (a load replaces the cache its packed pieces will fill)
                        task.load_cached_prefix()  # a prompt admitted beside this one may have cached more of it
                    prefix_end = task.covering_prefix_end()
                    prefix = None
                    if not self.schedule_as_uncached and prefix_end is not None and prefix_end > task.cached_tokens:
                        prefix = tuple(task.row.job.prompt_ids[:prefix_end])
                        if in_progress.setdefault(prefix, task) is not task:
                            break  # another prompt computes this prefix in this call
                    tokens, piece = task.take_piece()
                    result.prefill_tokens += tokens
                    if piece is None:
                        continue
                    if packs_model and not (self.schedule_as_uncached and prefix_end is not None):
                        pack.append(piece)
                        packed = True
                    else:
                        run_prefill_pieces(model, self.slm.device, [piece])
                return []

            if not self._guarded(result, model_name, [task.row.key], plan, prefill_tasks=[task]):
                pack[:] = [piece for piece in pack if piece.task is not task]
        for model_name, pack in packs.items():
            tasks = list(dict.fromkeys(piece.task for piece in pack))
            if tasks:

                def run(pack=pack, model=self.slm.model_for(model_name)) -> list[StepToken]:
                    run_prefill_pieces(model, self.slm.device, pack)
                    return []

                self._guarded(result, model_name, [task.row.key for task in tasks], run, prefill_tasks=tasks)
        done = [task for task in order if task.finished and task in self.prefilling]
        self.prefilling = [task for task in self.prefilling if task not in done]
        for model_name in dict.fromkeys(task.row.job.model_name for task in done):
            group = [task for task in done if task.row.job.model_name == model_name]
            batch = self.batches.setdefault(
                model_name,
                RunningBatch(
                    self.slm.model_for(model_name),
                    self.slm.tokenizer,
                    self.slm.device,
                    self.slm.decode_attention.compiled,
                ),
            )
            upcoming = [task.row.job for task in self.prefilling if task.row.job.model_name == model_name]

            def join(batch=batch, group=group, upcoming=upcoming) -> list[StepToken]:
                return batch.join(group, upcoming)

            if self._guarded(result, model_name, [task.row.key for task in group], join):
                result.joined[model_name] = result.joined.get(model_name, 0) + len(group)
        result.prefill_s = time.perf_counter() - started

    def _guarded(self, result: IterationResult, model_name: str, keys: list[int], work, prefill_tasks=()) -> bool:
        """Run `work` with the model's adapter active and collect its tokens. A failure fails only the
        jobs it touched (a prefill its own, a step or a join its whole batch); the others go on."""
        try:
            self.slm.activate(model_name)
            result.tokens.extend(work())
            return True
        except Exception as error:
            if prefill_tasks:
                self.prefilling = [task for task in self.prefilling if task not in prefill_tasks]
            else:
                batch = self.batches.pop(model_name, None)
                keys = list(dict.fromkeys(keys + ([row.key for row in batch.rows] if batch else [])))
            result.failed.append((keys, error))
            return False

    def _forget_empty_batches(self) -> None:
        for model_name in [name for name, batch in self.batches.items() if not batch]:
            del self.batches[model_name]

    def answers_as_finished(self, jobs: list[GenerationJob]) -> Iterator[tuple[int, GreedyAnswer]]:
        """Answer `jobs` (admitted in this order), yielding `(position in jobs, answer)` as each finishes:
        how evaluation uses the engine. The schedule is the same however fast the caller takes them.
        Nothing else may be queued on this scheduler meanwhile; a caller that stops early leaves it idle."""
        if self.has_work:
            raise RuntimeError("answers_as_finished needs an idle scheduler")
        for key, job in enumerate(jobs):
            self.add(key, job)
        try:
            while self.has_work:
                result = self.iteration()
                if result.failed:
                    raise result.failed[0][1]
                for token in result.tokens:
                    if token.answer is not None:
                        yield token.job, token.answer
        finally:
            self.clear()  # nothing left over for the next caller, whether it stopped early or a job failed

    def run_to_completion(self, jobs: list[GenerationJob]) -> list[GreedyAnswer]:
        """Answer `jobs` (admitted in this order) and return their answers in the same order."""
        answers: list[GreedyAnswer | None] = [None] * len(jobs)
        for position, answer in self.answers_as_finished(jobs):
            answers[position] = answer
        return answers  # type: ignore[return-value]
