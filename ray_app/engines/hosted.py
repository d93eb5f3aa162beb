"""Hosted LLM engine (the "teacher"): Azure OpenAI or any OpenAI-compatible server, through the openai SDK.

Structured rows (and toolcall rows in `toolcall_mode="prompt"`) send the project's chat messages.
Toolcall rows in the default native mode send the prompt's tool signatures as OpenAI `tools`
(dotted names under OpenAI-safe aliases), a short system message and the user's request; the
answer's `tool_calls` come back as the project's wrapper under the real tool names.

Every call is greedy and seeded. Retries (408/409/429/5xx, timeouts, connection errors) are the
SDK's own, with exponential backoff that honours `retry-after-ms` / `retry-after` up to 120 s;
`latency_s` is the monotonic time around the call, retries included. 401/403/404 and unreachable
endpoints raise TeacherConfigError naming the variable to fix.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from ray_app.engines.base import ChatRequest, EngineKind, EngineRequest, Generation
from ray_app.engines.teacher_settings import (
    TEACHER_SEED,
    TEACHER_TEMPERATURE,
    TeacherConfigError,
    TeacherSettings,
    teacher_settings_from_env,
)
from ray_app.prompts import (
    PromptFormatError,
    answer_text,
    load_templates,
    openai_safe_tool_names,
    openai_tool,
    parse_toolcall_prompt,
)

ERROR_DETAIL_CHARS = 300

__all__ = [
    "HostedLlmEngine",
    "TeacherConfigError",
    "TeacherRequestError",
    "TeacherSettings",
    "chat_request",
    "teacher_settings_from_env",
]


class TeacherRequestError(RuntimeError):
    """A call failed for a reason other than configuration (retries exhausted, bad request, empty answer)."""


def chat_request(request: EngineRequest, settings: TeacherSettings) -> tuple[dict[str, Any], list[str]]:
    """The `chat.completions.create` arguments for one row (besides the fixed ones) and its tool names."""
    if request.track != "toolcall" or settings.toolcall_mode == "prompt":
        return {"messages": request.messages}, []
    try:
        parsed = parse_toolcall_prompt(request.prompt)
    except PromptFormatError as error:
        raise PromptFormatError(f"row {request.index} (toolcall): {error}") from None
    names = [signature["name"] for signature in parsed.signatures]
    aliases = openai_safe_tool_names(names)
    body = {
        "messages": [
            {"role": "system", "content": load_templates()["toolcall_native_system"]},
            {"role": "user", "content": parsed.query},
        ],
        "tools": [openai_tool(signature, name=aliases[signature["name"]]) for signature in parsed.signatures],
        "tool_choice": settings.tool_choice,
    }
    return body, names


def teacher_client(settings: TeacherSettings) -> openai.OpenAI:
    """The SDK client; with `base_url` ending in the deployment, Azure calls `<base_url>/chat/completions`."""
    if settings.mode == "azure":
        return openai.AzureOpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key,
            api_version=settings.api_version,
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
        )
    return openai.OpenAI(
        base_url=settings.base_url,
        api_key=settings.api_key,
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
    )


def _variables(settings: TeacherSettings) -> dict[str, str]:
    """What the user sets for each part of the connection, in this mode (used in error messages)."""
    if settings.mode == "azure":
        return {
            "key": "AZURE_API_KEY",
            "endpoint": "AZURE_ENDPOINT",
            "not_found": f"the deployment {settings.model!r} at the end of AZURE_ENDPOINT "
            f"(and AZURE_API_VERSION={settings.api_version!r})",
        }
    return {
        "key": "SLM_SWAP_TEACHER_API_KEY",
        "endpoint": "SLM_SWAP_TEACHER_BASE_URL",
        "not_found": f"SLM_SWAP_TEACHER_BASE_URL (usually ends in /v1) and SLM_SWAP_TEACHER_MODEL={settings.model!r}",
    }


def call_error(error: openai.OpenAIError, request: EngineRequest, settings: TeacherSettings) -> Exception:
    """The project's error for an SDK error: configuration errors name the variable to fix."""
    where = f"{settings.mode} teacher at {settings.endpoint_host}"
    variables = _variables(settings)
    if isinstance(error, openai.APIStatusError):
        detail = str(error.message)[:ERROR_DETAIL_CHARS]
        if error.status_code in (401, 403):
            return TeacherConfigError(
                f"{where} rejected the API key (HTTP {error.status_code}): check {variables['key']}. {detail}"
            )
        if error.status_code == 404:
            return TeacherConfigError(f"{where} answered 404 Not Found: check {variables['not_found']}. {detail}")
        return TeacherRequestError(
            f"{where}: row {request.index} failed with HTTP {error.status_code} after up to "
            f"{settings.max_retries} retries: {detail}"
        )
    if isinstance(error, openai.APITimeoutError):
        return TeacherRequestError(
            f"{where}: row {request.index} timed out ({settings.timeout_s} s per attempt, "
            f"{settings.max_retries} retries); raise timeout_s or lower concurrency"
        )
    if isinstance(error, openai.APIConnectionError):
        return TeacherConfigError(
            f"cannot connect to the {where} after {settings.max_retries} retries: "
            f"check {variables['endpoint']} and that the server is running"
        )
    return TeacherRequestError(f"{where}: row {request.index}: {error}")


class HostedLlmEngine:
    """The teacher over HTTP: one chat completion per row, `concurrency` calls in flight."""

    def __init__(self, settings: TeacherSettings | None = None) -> None:
        self.settings = settings or teacher_settings_from_env()
        self.kind: EngineKind = self.settings.mode
        self.model_name = self.settings.model
        self._client = teacher_client(self.settings)

    def _generate_one(self, request: EngineRequest, body: dict[str, Any], tool_names: list[str]) -> Generation:
        """One call: `body` holds the messages (and tools); `request` names the row in errors."""
        start = time.monotonic()
        try:
            completion = self._client.chat.completions.create(
                model=self.settings.model,
                temperature=TEACHER_TEMPERATURE,
                seed=TEACHER_SEED,
                **{"max_tokens": self.settings.max_tokens, **body},
            )
        except openai.OpenAIError as error:
            raise call_error(error, request, self.settings) from error
        latency_s = time.monotonic() - start
        if not completion.choices:
            raise TeacherRequestError(f"{self.settings.endpoint_host}: row {request.index}: response has no choices")
        message = completion.choices[0].message
        calls = [call.model_dump() for call in message.tool_calls or []]
        content = message.content if message.content is not None else message.refusal
        usage = completion.usage
        return Generation(
            text=answer_text(content, calls, tool_names),
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            latency_s=latency_s,
        )

    def generate(self, requests: list[EngineRequest]) -> list[Generation]:
        # Every request body is built before the first call, so a bad prompt costs no API call.
        bodies = [chat_request(request, self.settings) for request in requests]
        return self._answer_all(requests, bodies)

    def chat(self, requests: list[ChatRequest]) -> list[Generation]:
        """Whole conversations continued as they are (the CodeAct loop): no tools, `stop` passed on."""
        rows = [EngineRequest(index=index, track="structured", prompt="") for index in range(len(requests))]
        bodies = []
        for request in requests:
            body: dict[str, Any] = {"messages": request.messages, "max_tokens": request.max_tokens}
            if request.stop:
                body["stop"] = list(request.stop)
            bodies.append((body, []))
        return self._answer_all(rows, bodies)

    def _answer_all(self, requests: list[EngineRequest], bodies: list[tuple[dict[str, Any], list[str]]]):
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(requests))) as pool:
            futures = [
                pool.submit(self._generate_one, request, body, tool_names)
                for request, (body, tool_names) in zip(requests, bodies, strict=True)
            ]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:  # fail fast: rows not yet started are never sent
                    future.cancel()
                raise

    def describe(self) -> dict[str, object]:
        settings = self.settings
        described: dict[str, object] = {"kind": self.kind, "mode": settings.mode, "model": settings.model}
        if settings.mode == "azure":
            described["deployment"] = settings.model
        return {
            **described,
            "endpoint_host": settings.endpoint_host,
            "api_version": settings.api_version,
            "toolcall_mode": settings.toolcall_mode,
            "tool_choice": settings.tool_choice if settings.toolcall_mode == "native" else None,
            "temperature": TEACHER_TEMPERATURE,
            "seed": TEACHER_SEED,
            "max_tokens": settings.max_tokens,
            "simulated": False,
        }
