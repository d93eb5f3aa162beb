"""A replica's model host: the base SLM with every trained adapter, and a thread driving the decode engine
(the replica's loading thread, which claims the loop: one thread does all of a model's torch work).

Each `<adapter_root>/adapter_<name>/` holding a PEFT adapter is served as `slm-<name>` beside the
base `slm` (`engines/decode/loaded_slm.py`). The generation itself is the project's one decode
engine (`engines/decode/scheduler.py`), the same that evaluation runs; what this module adds is
Serve's side of it: requests arrive at any time from the event loop, so one thread runs the
scheduler's iterations while there is work, takes submissions and cancels between two iterations,
and hands each step's tokens to the callback of the submission they belong to.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ray_app.engines.constrained import DecodingConstraint
from ray_app.engines.decode.loaded_slm import LoadedSlm, discover_adapters
from ray_app.engines.decode.running_batch import GenerationJob, StepToken
from ray_app.engines.decode.scheduler import DecodeScheduler
from ray_app.engines.slm import GreedyAnswer, SlmSettings
from ray_app.models.fingerprint import folder_fingerprint

MAX_PENDING_CANCELS = 4096  # cancels kept for jobs not submitted yet
# Iterations in a row that raised before the replica calls itself unhealthy (Serve then replaces it):
# one failure is a request's bad luck, several in a row is a broken engine (a GPU error, a bad state).
FAILED_ITERATIONS_UNHEALTHY = 3

logger = logging.getLogger("ray.serve")  # a replica's log (and the dashboard's)

TokensCallback = Callable[[list[StepToken] | Exception], None]


@dataclass
class Submission:
    """Jobs handed over together, and where their tokens go (StepToken.job indexes `jobs`)."""

    jobs: list[GenerationJob]
    on_tokens: TokensCallback  # called from the loop's thread, once per step with this submission's tokens


@dataclass
class SubmittedJob:
    index: int  # in its submission's jobs
    submission: Submission

    @property
    def job(self) -> GenerationJob:
        return self.submission.jobs[self.index]


class ModelHost:
    def __init__(self, settings: SlmSettings, adapter_root: Path | None, max_model_len: int | None = None):
        self.slm = LoadedSlm(settings, discover_adapters(adapter_root), max_model_len)
        self.scheduler = DecodeScheduler(
            self.slm, settings.batch_size, settings.prefill_chunk_tokens, settings.prefix_cache_tokens
        )
        self.model_names, self.context_limit, self.precision = (
            self.slm.model_names,
            self.slm.context_limit,
            self.slm.precision,
        )
        self.prefix_cache = self.scheduler.prefix_cache
        self.fingerprint = "slm-swap-" + folder_fingerprint(Path(settings.model_path))[:12]
        self.in_flight: dict[int, SubmittedJob] = {}  # by scheduler key: submitted, not finished
        self.keys = itertools.count()
        self.wakeup = threading.Condition()  # guards the scheduler's queue, in_flight and the cancels
        self.loop_thread: threading.Thread | None = None
        self.cancel_requests: OrderedDict[str, None] = OrderedDict()  # request ids to cancel, oldest first
        self.cancelled_count = 0
        self.failed_iterations = 0  # in a row; reset by an iteration that succeeds
        self.last_failure: str | None = None

    def job(
        self,
        model_name: str,
        messages: list[dict[str, str]],
        max_new_tokens: int,
        request_id: str | None = None,
        stop_texts: tuple[str, ...] = (),
        constraint: DecodingConstraint | None = None,
    ) -> GenerationJob:
        return self.slm.job(model_name, messages, max_new_tokens, request_id, stop_texts, constraint)

    def decode_text(self, token_ids: list[int]) -> str:
        return self.slm.decode_text(token_ids)

    def submit(self, jobs: list[GenerationJob], on_tokens: TokensCallback) -> None:
        """Queue `jobs` for the decode loop. `on_tokens` gets, from the loop's thread, each step's tokens
        of these jobs (the last token of a job carries its answer), or the exception that ended them."""
        unknown = sorted({job.model_name for job in jobs} - set(self.model_names))
        if unknown:
            raise ValueError(f"models {unknown} are not served here; served: {self.model_names}")
        submission = Submission(jobs, on_tokens)
        with self.wakeup:
            for index, job in enumerate(jobs):
                key = next(self.keys)
                self.in_flight[key] = SubmittedJob(index, submission)
                self.scheduler.add(key, job)
            if self.loop_thread is None:
                self.loop_thread = threading.Thread(target=self._decode_loop, name="slm-decode-loop", daemon=True)
                self.loop_thread.start()
            self.wakeup.notify()

    def claim_decode_loop(self) -> None:
        """The calling thread will run the decode loop (`run_decode_loop`), so `submit` starts none. Call it
        on the thread that loaded the model, before requests can reach the host: forward calls on another
        thread than the loader's are ~2x slower on 2 cores (`engines/decode/loaded_slm.py`)."""
        with self.wakeup:
            if self.loop_thread is not None:
                raise RuntimeError(f"the decode loop already runs on thread {self.loop_thread.name}")
            self.loop_thread = threading.current_thread()

    def run_decode_loop(self) -> None:
        """Run the decode loop in this thread, which claimed it (`claim_decode_loop`); never returns."""
        if self.loop_thread is not threading.current_thread():
            raise RuntimeError("run_decode_loop runs on the thread that called claim_decode_loop")
        self._decode_loop()

    def cancel(self, request_id: str) -> None:
        """Stop the job with this request id (its caller left): out of the queue, out of its prefill or
        out of its batch before the next step. Its submission gets a `cancelled` StepToken. A cancel
        that comes before the job is submitted is kept (the newest MAX_PENDING_CANCELS) and applied
        when it comes."""
        with self.wakeup:
            self.cancel_requests[request_id] = None
            while len(self.cancel_requests) > MAX_PENDING_CANCELS:
                self.cancel_requests.popitem(last=False)
            self.wakeup.notify()

    def decode_stats(self) -> dict[str, int]:
        with self.wakeup:
            counts = self.scheduler.counts()
            return {"running": counts["running"] + counts["prefilling"], "waiting": counts["waiting"],
                    "prefilling": counts["prefilling"], "cancelled": self.cancelled_count}  # fmt: skip

    def health_problem(self) -> str | None:
        """Why this host cannot serve (the decode loop's thread is gone, or it keeps failing), else None."""
        thread = self.loop_thread  # assigned just before it starts: no ident yet means starting, not stopped
        if thread is not None and thread.ident is not None and not thread.is_alive():
            return "the decode loop's thread has stopped"
        if self.failed_iterations >= FAILED_ITERATIONS_UNHEALTHY:
            return f"the decode loop failed {self.failed_iterations} iterations in a row; last: {self.last_failure}"
        return None

    def generate(
        self, jobs: list[GenerationJob], on_step: Callable[[list[StepToken]], None] | None = None
    ) -> list[GreedyAnswer]:
        """Submit `jobs` and wait for their answers (in order); `on_step` sees each step's tokens."""
        answers: list[GreedyAnswer | None] = [None] * len(jobs)
        failures: list[Exception] = []
        done = threading.Event()

        def on_tokens(tokens: list[StepToken] | Exception) -> None:
            if isinstance(tokens, Exception):
                failures.append(tokens)
                done.set()
                return
            if on_step is not None:
                on_step(tokens)
            if any(token.cancelled for token in tokens):
                failures.append(RuntimeError("a job of this call was cancelled"))
                done.set()
                return
            for token in tokens:
                if token.answer is not None:
                    answers[token.job] = token.answer
            if all(answer is not None for answer in answers):
                done.set()

        self.submit(jobs, on_tokens)
        done.wait()
        if failures:
            raise failures[0]
        return answers  # type: ignore[return-value]

    def _decode_loop(self) -> None:
        while True:
            try:
                self._decode_iteration()
                self.failed_iterations = 0
            except Exception as error:  # fail what is in it and keep serving; health_problem() counts these
                self.failed_iterations += 1
                self.last_failure = repr(error)
                with self.wakeup:
                    keys = self.scheduler.clear()
                    failed = [self.in_flight.pop(key) for key in keys if key in self.in_flight]
                    failed += list(self.in_flight.values())
                    self.in_flight.clear()
                logger.exception("decode loop: %d requests failed", len(failed))
                for submission in {id(item.submission): item.submission for item in failed}.values():
                    submission.on_tokens(error)

    def _decode_iteration(self) -> None:
        """Wait for work; apply cancels; one scheduler iteration; hand out its tokens and failures."""
        with self.wakeup:
            while not self.scheduler.has_work:
                self.wakeup.wait()
            self._apply_cancels()
        result = self.scheduler.iteration()  # only this thread touches the model and the batches
        for model_name, count in result.joined.items():
            logger.info(
                "%s: %d joined (%d prompt tokens prefilled in %.2f s this step); %s",
                model_name, count, result.prefill_tokens, result.prefill_s, self.scheduler.counts(),
            )  # fmt: skip
        with self.wakeup:
            failed = [(self.in_flight.pop(key), error) for keys, error in result.failed for key in keys
                      if key in self.in_flight]  # fmt: skip
            # per submission, lists of tokens in which each job has at most one (a row that joins gets
            # its first token from the prefill and its second from the same iteration's step)
            by_submission: dict[int, tuple[Submission, list[list[StepToken]]]] = {}
            for token in result.tokens:
                item = self.in_flight.get(token.job)
                if item is None:  # its job failed later in this iteration: the failure is what it gets
                    continue
                if token.finished:
                    del self.in_flight[token.job]
                lists = by_submission.setdefault(id(item.submission), (item.submission, [[]]))[1]
                if any(earlier.job == item.index for earlier in lists[-1]):
                    lists.append([])
                lists[-1].append(StepToken(item.index, token.token_id, token.answer))
        for item, error in failed:
            logger.error("%s: decoding failed: %r", item.job.model_name, error)
        for submission, error in {id(item.submission): (item.submission, error) for item, error in failed}.values():
            submission.on_tokens(error)
        for submission, token_lists in by_submission.values():
            for tokens in token_lists:
                submission.on_tokens(tokens)

    def _apply_cancels(self) -> None:
        """Take cancelled jobs out of the engine (the loop holds `wakeup`)."""
        if not self.cancel_requests:
            return
        wanted = {key for key, item in self.in_flight.items()
                  if item.job.request_id is not None and item.job.request_id in self.cancel_requests}  # fmt: skip
        if not wanted:
            return
        for key in self.scheduler.cancel(wanted):
            item = self.in_flight.pop(key)
            self.cancel_requests.pop(item.job.request_id, None)
            self.cancelled_count += 1
            item.submission.on_tokens([StepToken(item.index, -1, cancelled=True)])
