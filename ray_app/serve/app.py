"""The Ray Serve app: an OpenAI-compatible chat endpoint for the base SLM and its adapters.

One deployment is both the HTTP ingress (FastAPI) and the model host, so a request is checked
(model name, messages, context length) before it queues, and concurrent requests are grouped by
`@serve.batch` into one greedy `generate` per model. Routes:

    POST /v1/chat/completions   GET /v1/models   GET /health

In front of them, each replica's `serve/guard.RequestGuard` checks the API key (all but /health) and
the body's size; the replica admits at most `max_ongoing_requests` chat requests (429 beyond) and
stops one at `request_timeout_s`. Every error, 404 and 405 included, has the OpenAI error shape.

Start it with `slm-swap serve` (binds 127.0.0.1:8000 unless told otherwise) or
`serve run slm_swap/serve_config.yaml` (the config names `build_app` below). No
`from __future__ import annotations` here: FastAPI reads the route signatures' real types.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException

from ray_app import ray_runtime
from ray_app.engines.constrained import ConstraintError
from ray_app.engines.decode.running_batch import GenerationJob, StepToken
from ray_app.engines.slm import GreedyAnswer, SlmSettings, precision_choice
from ray_app.memory_allocator import allocator_in_use
from ray_app.models.model_path import resolve_served_model_path, resolve_slm_model_path
from ray_app.serve.guard import (
    AdmissionBound,
    ApiKeys,
    RequestGuard,
    access_notes,
    check_exposure,
    keys_from_env,
    parse_json_body,
    server_error,
)
from ray_app.serve.model_host import ModelHost
from ray_app.serve.openai_protocol import (
    SERVER_SENT_EVENTS_END,
    AnswerStream,
    OpenAiError,
    assistant_answer,
    completion_response,
    models_response,
    parse_chat_request,
    server_sent_event,
)
from ray_app.serve.serve_settings import ServeSettings

APP_NAME = "slm-swap"
MAX_CONCURRENT_BATCHES = 1024  # groups of requests in flight at once; the decode loop bounds the real work
# Serve lets this many more requests reach a replica than it admits to chat, so the ones over the bound
# get their 429 in milliseconds (and /health answers) instead of waiting, unbounded, in Serve's router.
REFUSAL_HEADROOM = 256


fastapi_app = FastAPI(title="slm-swap", docs_url=None, redoc_url=None)  # /openapi.json: behind the key
ROUTES = "POST /v1/chat/completions, GET /v1/models and GET /health"
logger = logging.getLogger("ray.serve")  # a replica's log (and the dashboard's)


def error_response(error: OpenAiError) -> JSONResponse:
    return JSONResponse(status_code=error.status, content=error.body(), headers=error.headers)


def error_event(error: OpenAiError) -> str:
    """An error in the middle of a stream, as OpenAI sends one (the SDKs raise it)."""
    return server_sent_event(error.body())


def timed_out(timeout_s: float) -> OpenAiError:
    return OpenAiError(
        504,
        f"no answer within this server's {timeout_s:g} s request timeout (request_timeout_s): the request was "
        "stopped and its row freed. Ask for fewer tokens (max_tokens) or raise --request-timeout-s",
        None,
        "timeout",
        {"x-should-retry": "false"},  # greedy: a retry would spend the same time again
    )


@fastapi_app.exception_handler(HTTPException)
async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    """404 and 405 from the router, in the OpenAI shape."""
    method, path = request.method, request.url.path
    if error.status_code == 404:
        message, code = f"no route {method} {path}: this server answers {ROUTES}", "unknown_url"
    elif error.status_code == 405:
        message, code = f"{method} is not allowed on {path}: this server answers {ROUTES}", "method_not_allowed"
    else:
        message, code = str(error.detail), None
    return error_response(OpenAiError(error.status_code, message, None, code, dict(error.headers or {})))


@fastapi_app.exception_handler(RequestValidationError)
async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return error_response(OpenAiError(400, f"invalid request: {error.errors()}", None, "invalid_request"))


@fastapi_app.exception_handler(Exception)
async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
    """Whatever a route did not expect: an OpenAI-style 500 (the traceback goes to the replica's log)."""
    return error_response(server_error(error))


async def final_answer(tokens: AsyncIterator[StepToken | None]) -> GreedyAnswer:
    answer = None
    async for token in tokens:  # to the end (it ends right after the answer), so no future is left unread
        if token is not None and token.answer is not None:
            answer = token.answer
    if answer is None:
        raise RuntimeError("the batch ended without an answer for this request")
    return answer


class GroupingNoticeFilter(logging.Filter):
    """Drops @serve.batch's advice to raise max_ongoing_requests to max_batch_size × max_concurrent_batches.

    Here a @serve.batch group only hands requests to the decode loop, which bounds the rows itself;
    groups may be as many as the requests in flight, so the advice does not apply.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "`max_concurrent_batches`" not in record.getMessage()


# Everything the deployment class uses is defined above it: `@serve.deployment` pickles the class
# (and the module globals it refers to) as it is declared.
@serve.deployment(name="SlmChat")
@serve.ingress(fastapi_app)
class SlmChatDeployment:
    def __init__(self, settings_json: dict[str, Any], api_keys: tuple[str, ...] = ()):
        import os
        import threading

        settings = ServeSettings.from_json(settings_json)
        model_path = resolve_slm_model_path(settings.model_path)
        threads = settings.cpu_threads or (None if settings.gpus_per_replica else os.cpu_count())
        slm_settings = SlmSettings(
            model_path=model_path,
            precision=settings.precision,
            adapter_weights=settings.adapter_weights,
            cpu_linear=settings.cpu_linear,
            decode_attention=settings.decode_attention,
            cpu_threads=threads,
            batch_size=settings.max_batch_size,
            prefill_chunk_tokens=settings.prefill_chunk_tokens,
            prefix_cache_tokens=settings.prefix_cache_tokens,
        )
        self.settings = settings
        self.api_keys = ApiKeys(api_keys, settings.api_key_file)
        self.admission = AdmissionBound(settings.max_ongoing_requests, settings.retry_after_s)
        self.precision = precision_choice(slm_settings)  # what the host loads on this replica, and why
        self.started = int(time.time())
        logging.getLogger("ray.serve").addFilter(GroupingNoticeFilter())
        self.generate_batch.set_max_batch_size(settings.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        # The weights load in a thread, so the replica answers /health (503, "loading") meanwhile: a
        # restarted replica says what it is doing instead of leaving probes waiting in Serve's router.
        self.host: ModelHost | None = None
        self.load_error: str | None = None
        threading.Thread(target=self._load, args=(slm_settings,), name="slm-load", daemon=True).start()

    def _load(self, slm_settings: SlmSettings) -> None:
        """Load the weights, then run the decode loop in this same thread: one thread does a model's torch
        work (torch's OpenMP teams on two live threads slow every call: engines/decode/loaded_slm.py)."""
        try:
            host = ModelHost(slm_settings, self.settings.adapter_root, self.settings.max_model_len)
        except Exception as error:
            logger.exception("loading the model failed")
            self.load_error = f"{type(error).__name__}: {error}"
            return
        host.claim_decode_loop()  # before requests can reach it: submit() then starts no other loop thread
        self.host = host
        host.run_decode_loop()

    def check_health(self) -> None:
        """Serve calls this every few seconds; raising makes Serve replace the replica."""
        if self.load_error is not None:
            raise RuntimeError(f"the model did not load: {self.load_error}")
        problem = self.host.health_problem() if self.host is not None else None
        if problem is not None:
            raise RuntimeError(problem)

    def loaded_host(self) -> ModelHost:
        """The model host, or a 503 (with Retry-After) while the weights load or after they failed to."""
        if self.host is not None:
            return self.host
        if self.load_error is not None:
            raise OpenAiError(503, f"the model failed to load on this replica: {self.load_error}", None, "model_failed")
        raise OpenAiError(
            503, "the model is still loading on this replica; retry shortly", None, "model_loading",
            {"retry-after": str(self.settings.retry_after_s)},
        )  # fmt: skip

    def __serve_build_asgi_app__(self):
        """Serve calls this on each replica after __init__: the routes behind this replica's guard."""
        return RequestGuard(self.app, self.api_keys, self.settings.max_body_bytes)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05, max_concurrent_batches=MAX_CONCURRENT_BATCHES)
    async def generate_batch(self, jobs: list[GenerationJob]) -> AsyncIterator[list[StepToken | None]]:
        """Requests that arrived together, handed to the decode loop together (it admits them between
        two steps of whatever is already decoding, up to max_batch_size rows).

        Yields, whenever the loop has tokens for them, for each job: its new token (a StepToken; the
        last one carries the whole answer), None when it has nothing new, and StopIteration once it
        is done, which ends that caller's stream.
        """
        loop = asyncio.get_running_loop()
        steps: asyncio.Queue = asyncio.Queue()
        self.host.submit(jobs, lambda tokens: loop.call_soon_threadsafe(steps.put_nowait, tokens))
        done: set[int] = set()
        while len(done) < len(jobs):
            step = await steps.get()
            if isinstance(step, Exception):
                raise step
            results: list = [StopIteration if index in done else None for index in range(len(jobs))]
            for token in step:
                results[token.job] = token
            yield results
            finished_now = {token.job for token in step if token.finished}
            if finished_now:  # end those callers' streams now, not at the next step
                done |= finished_now
                yield [StopIteration if index in done else None for index in range(len(jobs))]

    @fastapi_app.get("/health")
    async def health(self):
        """200 with the replica's state once the model is loaded; 503 while it loads or after it failed."""
        if self.host is None:
            status, detail = ("failed", self.load_error) if self.load_error else ("loading", None)
            return JSONResponse(status_code=503, content={"status": status, "error": detail})
        problem = self.host.health_problem()
        prefix_cache = self.host.prefix_cache.stats() if self.host.prefix_cache else None
        state = {
            "status": "ok" if problem is None else "unhealthy",
            "models": self.host.model_names,
            "precision": self.host.precision,
            "precision_reason": self.precision.reason,
            "adapter_weights": self.host.slm.adapter_weights.name,
            "adapter_weights_reason": self.host.slm.adapter_weights.reason,
            "cpu_linear": self.host.slm.cpu_linear.kernels,
            "cpu_linear_reason": self.host.slm.cpu_linear.reason,
            "decode_attention": self.host.slm.decode_attention.kernel,
            "decode_attention_reason": self.host.slm.decode_attention.reason,
            **allocator_in_use(),
            "constrained": self.settings.constrained,
            "prefix_cache": prefix_cache,
            "decode": self.host.decode_stats(),
            "admission": self.admission.stats(),
        }
        return state if problem is None else JSONResponse(status_code=503, content={**state, "error": problem})

    @fastapi_app.get("/v1/models")
    async def models(self):
        try:
            return models_response(self.loaded_host().model_names, self.started)
        except OpenAiError as error:
            return error_response(error)

    @fastapi_app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        deadline = time.monotonic() + self.settings.request_timeout_s
        try:
            host = self.loaded_host()
            self.admission.admit()  # counted until this request's task ends (its stream included)
            chat = parse_chat_request(
                parse_json_body(await request.body()),
                host.model_names,
                self.settings.default_max_tokens,
                self.settings.request_limits,
                self.settings.constrained,
            )
            try:
                job = host.job(chat.model, chat.prompt.messages, chat.max_tokens, uuid.uuid4().hex, chat.stop,
                               chat.constraint)  # fmt: skip
            except ConstraintError as error:  # a schema the grammar library cannot compile
                param = "tools" if chat.prompt.offered_tool_names else "response_format"
                raise OpenAiError(400, str(error), param) from None
            prompt_tokens = len(job.prompt_ids)
            if prompt_tokens + chat.max_tokens > host.context_limit:
                raise OpenAiError(
                    400,
                    f"this model's context is {host.context_limit} tokens; the messages take {prompt_tokens} "
                    f"and max_tokens asks for {chat.max_tokens} more: shorten the messages or lower max_tokens",
                    "messages",
                    "context_length_exceeded",
                )
        except OpenAiError as error:
            return error_response(error)
        tokens = self.generate_batch(job)  # queued for the next batch now
        if not chat.stream:
            try:
                answer = await asyncio.wait_for(final_answer(tokens), deadline - time.monotonic())
            except TimeoutError:
                host.cancel(job.request_id)
                return error_response(timed_out(self.settings.request_timeout_s))
            except asyncio.CancelledError:  # the client left: free its row for the others
                host.cancel(job.request_id)
                raise
            message = assistant_answer(answer.text, answer.stopped)
            return completion_response(
                chat.model,
                message,
                answer.prompt_tokens,
                answer.completion_tokens,
                host.fingerprint,
                answer.cached_prompt_tokens,
            )
        stream = AnswerStream(chat.model, host.fingerprint, chat.include_usage, host.decode_text, chat.stop)

        async def events() -> AsyncIterator[str]:
            answered = False
            upcoming = aiter(tokens)

            async def next_token() -> StepToken | None:
                return await anext(upcoming)

            try:
                for chunk in stream.opening():
                    yield server_sent_event(chunk)
                while True:
                    try:
                        token = await asyncio.wait_for(next_token(), deadline - time.monotonic())
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        yield error_event(timed_out(self.settings.request_timeout_s))
                        return
                    if token is None or token.cancelled:
                        continue
                    chunks = stream.add(token.token_id)
                    if token.answer is not None:
                        answered, answer = True, token.answer
                        chunks += stream.finish(
                            answer.text,
                            answer.stopped,
                            answer.prompt_tokens,
                            answer.completion_tokens,
                            answer.cached_prompt_tokens,
                        )
                    for chunk in chunks:
                        yield server_sent_event(chunk)
                yield SERVER_SENT_EVENTS_END
            except Exception as error:  # the status line is gone: the error goes out as an event
                logger.exception("streamed request %s failed", job.request_id)
                yield error_event(server_error(error))
            finally:
                if not answered:  # the client left mid-answer, or time ran out: free its row for the others
                    host.cancel(job.request_id)

        return StreamingResponse(events(), media_type="text/event-stream")


def proxy_host() -> str | None:
    """The address Serve's HTTP proxies bind (http_options.host), or None where Serve is not running."""
    import ray

    if not ray.is_initialized():  # building the app for a check, not for Serve: nothing to ask
        return None
    try:
        from ray.serve.context import _get_global_client  # no public API says it

        client = _get_global_client(raise_if_no_controller_running=False)
        return client.http_config.host if client is not None else None
    except Exception:
        return None


def build_app(args: dict[str, Any] | None = None, api_keys: tuple[str, ...] | None = None):
    """The Serve application for `serve run` / `serve deploy` (the config's `args` are ServeSettings).

    Keys: `api_keys` when given (start_server), else SLM_SWAP_API_KEY where the app is built; with
    `api_key_file` in args, its keys too. From a config file, a proxy bound beyond loopback without
    a key is refused here, as `slm-swap serve` refuses it."""
    settings = ServeSettings.from_json(dict(args or {}))
    keys = keys_from_env() if api_keys is None else api_keys
    host = proxy_host() if api_keys is None else None
    if host is not None:
        check_exposure(host, ApiKeys(keys, settings.api_key_file).required, settings.allow_unauthenticated)
    actor_options: dict[str, Any] = {"num_cpus": settings.cpus_per_replica}
    if settings.gpus_per_replica:
        actor_options["num_gpus"] = settings.gpus_per_replica
    return SlmChatDeployment.options(
        num_replicas=settings.num_replicas,
        max_ongoing_requests=settings.max_ongoing_requests + REFUSAL_HEADROOM,
        ray_actor_options=actor_options,
        graceful_shutdown_timeout_s=settings.shutdown_grace_s,
        graceful_shutdown_wait_loop_s=0.5,  # how often a stopping replica looks whether its requests are done
    ).bind(settings.to_json(), tuple(keys))


@dataclass
class RunningServer:
    settings: ServeSettings
    url: str  # where this machine reaches it (127.0.0.1 when bound to every interface)
    models: list[str] = field(default_factory=list)
    precision: str = ""  # what the replica loaded, and why (its /health)
    precision_reason: str = ""
    adapter_weights: str | None = None  # how the replica applies the adapters, and why (None: no adapter)
    access: list[str] = field(default_factory=list)  # who can reach it: bind address, keys (for the banner)
    model_note: str | None = None  # why this checkpoint, when the user named none (the demo SLM)


def start_server(settings: ServeSettings, api_keys: tuple[str, ...] = ()) -> RunningServer:
    """Start (or join) Ray, bind the HTTP proxy, deploy the app and wait until it answers.

    `api_keys` (with the settings' key file) are the keys every route but /health then needs."""
    from ray_app.ray_runtime import ensure_ray

    accepted = ApiKeys(api_keys, settings.api_key_file)  # a bad key or key file fails here, before Ray starts
    check_exposure(settings.host, accepted.required, settings.allow_unauthenticated)
    key_file = str(Path(settings.api_key_file).resolve()) if settings.api_key_file else None  # replicas' cwd differs
    model_path, model_note = resolve_served_model_path(settings.model_path)
    settings = replace(settings, model_path=str(model_path), api_key_file=key_file)
    ensure_ray()
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(settings.to_json(), tuple(api_keys)), name=APP_NAME, route_prefix="/")
    probe_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{probe_host}:{settings.port}"
    health = wait_until_loaded(url, settings.load_timeout_s)
    access = access_notes(settings.host, settings.port, accepted)
    adapter_weights = (
        f"{health['adapter_weights']}: {health['adapter_weights_reason']}" if len(health["models"]) > 1 else None
    )
    return RunningServer(
        settings,
        url,
        health["models"],
        health["precision"],
        health["precision_reason"],
        adapter_weights,
        access,
        model_note,
    )


def wait_until_loaded(url: str, timeout_s: float) -> dict[str, Any]:
    """Poll /health until the replica has loaded the model (200), or say why it did not."""
    import json
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            state = json.loads(error.read() or b"{}") if error.code == 503 else {}
            if state.get("status") == "failed":
                raise ValueError(f"the replica could not load the model: {state.get('error')}") from None
            if error.code != 503:
                raise
        if time.monotonic() > deadline:
            raise ValueError(f"the replica did not load the model within {timeout_s:g} s (load_timeout_s)")
        time.sleep(0.25)


def stop_server() -> str:
    """Stop the app, then Serve, then the local Ray this process started (a cluster is only left).

    Deleting the app first is Serve's graceful shutdown: its replicas take no new requests and give
    the running ones up to `shutdown_grace_s` (their graceful_shutdown_timeout_s) while the HTTP proxy
    still carries their answers out. Returns what was stopped, or "" when Ray was never started."""
    import ray

    if not ray.is_initialized():
        return ""
    started = time.monotonic()
    try:
        serve.delete(APP_NAME)
    except Exception as error:  # already gone, or Serve never started: the shutdown below still runs
        logger.warning("deleting the Serve app failed: %r", error)
    serve.shutdown()
    local = ray_runtime.started_local_ray()
    ray.shutdown()
    where = "the local Ray this command started" if local else "disconnected from the Ray cluster"
    return f"Serve stopped in {time.monotonic() - started:.1f} s; {where}" + (" is stopped" if local else "")
