"""One base SLM with every trained adapter loaded beside it, and the decode loop that serves them.

The base model is loaded once (same loader and precision rules as evaluation); each
`<adapter_root>/adapter_<name>/` holding a PEFT adapter is added to the same PeftModel under the
model name `slm-<name>`.

One thread runs the decode loop (continuous batching): submitted jobs wait in a queue; between
two steps the loop admits as many as `max_batch_rows` allows (each prefilled on its own, see
`batched_decode.py`) into the running batch of their model, then runs one step of each model's
batch with that model's adapter active (the base with adapters disabled). A job that finishes
leaves at once and the next waiting one takes its row, so nobody waits for a whole batch to end.
Greedy decoding of the project's chat messages, as in evaluation.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ray_app.engines.determinism import apply_determinism
from ray_app.engines.slm import GreedyAnswer, SlmSettings, chat_text, load_model_and_tokenizer
from ray_app.models.fingerprint import folder_fingerprint
from ray_app.serve.batched_decode import GenerationJob, RunningBatch, StepToken
from ray_app.serve.prefix_cache import PrefixKvCache, shared_prefix_ends, template_anchors

BASE_MODEL_NAME = "slm"
DEFAULT_PREFIX_CACHE_TOKENS = 32768
DEFAULT_MAX_BATCH_ROWS = 8
MAX_PENDING_CANCELS = 4096  # cancels kept for jobs not submitted yet

logger = logging.getLogger("ray.serve")  # a replica's log (and the dashboard's)

TokensCallback = Callable[[list[StepToken] | Exception], None]


@dataclass
class Submission:
    """Jobs handed over together, and where their tokens go (StepToken.job indexes `jobs`)."""

    jobs: list[GenerationJob]
    on_tokens: TokensCallback  # called from the loop's thread, once per step with this submission's tokens
    started: float


@dataclass
class WaitingJob:
    key: int  # unique in this host: how the running batch names the row
    index: int  # in its submission's jobs
    submission: Submission


def discover_adapters(adapter_root: Path | None) -> dict[str, Path]:
    """`{"slm-toolcall": <root>/adapter_toolcall, ...}` for every folder with an adapter_config.json."""
    if adapter_root is None or not Path(adapter_root).is_dir():
        return {}
    found = {}
    for folder in sorted(Path(adapter_root).glob("adapter_*")):
        if (folder / "adapter_config.json").is_file() and any(folder.glob("adapter_model.*")):
            found[f"{BASE_MODEL_NAME}-{folder.name.removeprefix('adapter_')}"] = folder
    return found


class MultiAdapterModel:
    def __init__(
        self,
        settings: SlmSettings,
        adapter_root: Path | None,
        max_model_len: int | None = None,
        prefix_cache_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS,
        max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
    ):
        import torch

        apply_determinism(settings.seed)
        if settings.cpu_threads:
            torch.set_num_threads(settings.cpu_threads)
        self.adapters = discover_adapters(adapter_root)
        self.model, self.tokenizer, self.device, self.precision = load_model_and_tokenizer(settings)
        if self.adapters:
            from peft import PeftModel

            names = list(self.adapters)
            self.model = PeftModel.from_pretrained(self.model, self.adapters[names[0]], adapter_name=names[0])
            for name in names[1:]:
                self.model.load_adapter(self.adapters[name], adapter_name=name)
            self.model.eval()
        self.model_names = [BASE_MODEL_NAME, *self.adapters]
        self.context_limit = max_model_len or int(
            getattr(self.model.config, "max_position_embeddings", 0) or self.tokenizer.model_max_length
        )
        self.fingerprint = "slm-swap-" + folder_fingerprint(Path(settings.model_path))[:12]
        self.prefix_cache = PrefixKvCache(prefix_cache_tokens) if prefix_cache_tokens > 0 else None
        self.anchors = template_anchors()
        self.max_batch_rows = max_batch_rows
        self.waiting: deque[WaitingJob] = deque()
        self.running: dict[int, WaitingJob] = {}  # by key: admitted, not finished
        self.batches: dict[str, RunningBatch] = {}  # by model name
        self.keys = itertools.count()
        self.wakeup = threading.Condition()
        self.loop_thread: threading.Thread | None = None
        self.cancel_requests: OrderedDict[str, None] = OrderedDict()  # request ids to cancel, oldest first
        self.cancelled_count = 0

    def job(
        self, model_name: str, messages: list[dict[str, str]], max_new_tokens: int, request_id: str | None = None
    ) -> GenerationJob:
        """The messages with the chat template applied (as `engines.slm.prompt_ids`), and where their
        shareable prefixes end."""
        text = chat_text(self.tokenizer, messages)
        if getattr(self.tokenizer, "is_fast", False):
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ends = shared_prefix_ends(text, [end for _, end in encoded["offset_mapping"]], self.anchors)
        else:  # no offsets: the prompt is prefilled whole
            encoded, ends = self.tokenizer(text, add_special_tokens=False), ()
        return GenerationJob(model_name, list(encoded["input_ids"]), max_new_tokens, ends, request_id)

    def submit(self, jobs: list[GenerationJob], on_tokens: TokensCallback) -> None:
        """Queue `jobs` for the decode loop. `on_tokens` gets, from the loop's thread, each step's tokens
        of these jobs (the last token of a job carries its answer), or the exception that ended them."""
        unknown = sorted({job.model_name for job in jobs} - set(self.model_names))
        if unknown:
            raise ValueError(f"models {unknown} are not served here; served: {self.model_names}")
        submission = Submission(jobs, on_tokens, time.perf_counter())
        with self.wakeup:
            self.waiting.extend(WaitingJob(next(self.keys), index, submission) for index in range(len(jobs)))
            if self.loop_thread is None:
                self.loop_thread = threading.Thread(target=self._decode_loop, name="slm-decode-loop", daemon=True)
                self.loop_thread.start()
            self.wakeup.notify()

    def cancel(self, request_id: str) -> None:
        """Stop the job with this request id (its caller left): out of the queue, or out of its batch at the
        next step. Its submission gets a `cancelled` StepToken. A cancel that comes before the job is
        submitted is kept (the newest MAX_PENDING_CANCELS) and applied when it comes."""
        with self.wakeup:
            self.cancel_requests[request_id] = None
            while len(self.cancel_requests) > MAX_PENDING_CANCELS:
                self.cancel_requests.popitem(last=False)
            self.wakeup.notify()

    def decode_stats(self) -> dict[str, int]:
        with self.wakeup:
            return {"running": len(self.running), "waiting": len(self.waiting), "cancelled": self.cancelled_count}

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
            except Exception as error:  # a bug in the loop's own bookkeeping: fail what is in it, keep serving
                logger.exception("decode loop: %d running and %d waiting requests failed", len(self.running),
                                 len(self.waiting))  # fmt: skip
                with self.wakeup:
                    failed = [*self.running.values(), *self.waiting]
                    self.running.clear()
                    self.waiting.clear()
                    self.batches.clear()
                for submission in {id(waiting.submission): waiting.submission for waiting in failed}.values():
                    submission.on_tokens(error)

    def _decode_iteration(self) -> None:
        """Wait for work; apply cancels; admit waiting jobs up to max_batch_rows; one step of each batch."""
        with self.wakeup:
            while not self.waiting and not self.batches:
                self.wakeup.wait()
            self._apply_cancels()
            admitted = []
            while self.waiting and len(self.running) + len(admitted) < self.max_batch_rows:
                admitted.append(self.waiting.popleft())
            self.running.update((waiting.key, waiting) for waiting in admitted)
        for model_name in dict.fromkeys(waiting.submission.jobs[waiting.index].model_name for waiting in admitted):
            group = [waiting for waiting in admitted if waiting.submission.jobs[waiting.index].model_name == model_name]
            batch = self.batches.setdefault(
                model_name, RunningBatch(self.model, self.tokenizer, self.device, self.prefix_cache)
            )
            rows = [
                (waiting.key, waiting.submission.jobs[waiting.index], waiting.submission.started) for waiting in group
            ]
            started = time.perf_counter()
            self._run(model_name, batch, group, lambda batch=batch, rows=rows: batch.admit(rows))
            logger.info(
                "%s: %d joined (%d prompt tokens prefilled in %.2f s); %d decoding",
                model_name, len(rows), sum(len(job.prompt_ids) for _, job, _ in rows),
                time.perf_counter() - started, len(self.running),
            )  # fmt: skip
        for model_name, batch in list(self.batches.items()):
            if batch:
                self._run(model_name, batch, [self.running[row.key] for row in batch.rows], batch.step)
            if not batch:
                del self.batches[model_name]

    def _apply_cancels(self) -> None:
        """Take cancelled jobs out of the queue and the running batches (the loop holds `wakeup`)."""
        if not self.cancel_requests:
            return
        cancelled: list[WaitingJob] = []
        for waiting in list(self.waiting):
            request_id = waiting.submission.jobs[waiting.index].request_id
            if request_id is not None and request_id in self.cancel_requests:
                del self.cancel_requests[request_id]
                self.waiting.remove(waiting)
                cancelled.append(waiting)
        for batch in self.batches.values():
            keys = {row.key for row in batch.rows
                    if row.job.request_id is not None and row.job.request_id in self.cancel_requests}  # fmt: skip
            for row in batch.drop(keys):
                self.cancel_requests.pop(row.job.request_id, None)
                cancelled.append(self.running.pop(row.key))
        for model_name in [name for name, batch in self.batches.items() if not batch]:
            del self.batches[model_name]
        self.cancelled_count += len(cancelled)
        for waiting in cancelled:
            waiting.submission.on_tokens([StepToken(waiting.index, -1, cancelled=True)])

    def _run(self, model_name: str, batch: RunningBatch, rows: list[WaitingJob], work) -> None:
        """Run `work` (an admit or a step of `batch`) with the model's adapter active; hand out the tokens."""
        try:
            with self._active(model_name):
                tokens = work()
        except Exception as error:  # the rows of this batch fail; the loop and the other models go on
            logger.exception("%s: decoding failed for %d requests", model_name, len(rows))
            self.batches.pop(model_name, None)
            failed = {waiting.key: waiting for waiting in rows} | {row.key: self.running[row.key] for row in batch.rows}
            for waiting in failed.values():
                self.running.pop(waiting.key, None)
            for submission in {id(waiting.submission): waiting.submission for waiting in failed.values()}.values():
                submission.on_tokens(error)
            return
        by_submission: dict[int, tuple[Submission, list[StepToken]]] = {}
        for token in tokens:
            waiting = self.running[token.job]
            if token.finished:
                del self.running[token.job]
            entry = by_submission.setdefault(id(waiting.submission), (waiting.submission, []))
            entry[1].append(StepToken(waiting.index, token.token_id, token.answer))
        for submission, submission_tokens in by_submission.values():
            submission.on_tokens(submission_tokens)

    def _active(self, model_name: str):
        """The adapter of `model_name` active on the shared PeftModel (none for the base)."""
        if model_name == BASE_MODEL_NAME:
            return self.model.disable_adapter() if self.adapters else contextlib.nullcontext()
        self.model.set_adapter(model_name)
        return contextlib.nullcontext()

    def decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)
