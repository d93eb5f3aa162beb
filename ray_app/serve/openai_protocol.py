"""The OpenAI chat-completions wire format: request checks, responses, stream chunks, error bodies.

Pure functions over dicts, so the HTTP layer stays thin and every shape is unit-tested without Ray.
A model answer that is the project's `<tool_call name=...>{...}</tool_call>` wrapper goes out as
OpenAI `tool_calls` with `finish_reason: "tool_calls"`, so OpenAI-compatible agents use it natively.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray_app.engines.constrained import DecodingConstraint
from ray_app.json_text import compact_json
from ray_app.prompts import ToolCallFormatError, parse_model_tool_call
from ray_app.prompts.agent_requests import AgentRequestError, AgentRequestPrompt, agent_request_prompt
from ray_app.serve.request_constraint import ConstrainedMode, ConstraintRequestError, request_constraint


class OpenAiError(Exception):
    """An error the client caused (4xx) or the server hit (5xx), sent as an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,  # e.g. Retry-After on a 429
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    @property
    def error_type(self) -> str:
        if self.status == 404:
            return "not_found_error"
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    model: str
    prompt: AgentRequestPrompt
    max_tokens: int
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with token usage
    stop: tuple[str, ...] = ()  # OpenAI `stop`: the answer ends before the first of these
    constraint: DecodingConstraint | None = None  # the grammar the answer decodes under (serve/request_constraint.py)


@dataclass(frozen=True)
class RequestLimits:
    """What one chat request may hold (the body's size and nesting are bounded in `serve/guard.py`)."""

    max_messages: int = 256  # the SLM serves single requests: an agent's call is a handful of messages
    max_tools: int = 128  # OpenAI's own limit on `tools`


def max_tokens_of(body: dict[str, Any], default_max_tokens: int) -> int:
    """`max_completion_tokens`, else the older `max_tokens`; null means "not given" for both."""
    param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(param)
    if max_tokens is None:
        return default_max_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise OpenAiError(400, f"{param} must be a positive integer", param)
    return max_tokens


def parse_chat_request(
    body: dict[str, Any],
    known_models: list[str],
    default_max_tokens: int,
    limits: RequestLimits = RequestLimits(),
    constrained: ConstrainedMode = "auto",
) -> ChatRequest:
    """Check a chat-completions body; raise OpenAiError (4xx) naming the field that is wrong.

    Fields it does not know (top_p, seed, user, metadata...) are ignored, as OpenAI-compatible servers do;
    fields whose meaning it cannot honour (n > 1) are refused. `response_format`, `tool_choice` and a
    tool's `strict` choose the grammar the answer decodes under, with the server's `constrained` mode."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAiError(400, f"model is required; served models: {', '.join(known_models)}", "model")
    if model not in known_models:
        raise OpenAiError(
            404,
            f"model {model!r} is not served here; served models: {', '.join(known_models)}",
            "model",
            "model_not_found",
        )
    if "messages" not in body:
        raise OpenAiError(400, "messages is required", "messages")
    messages, tools = body["messages"], body.get("tools")
    if isinstance(messages, list) and len(messages) > limits.max_messages:
        raise OpenAiError(400, f"{len(messages)} messages: at most {limits.max_messages} are served", "messages")
    if isinstance(tools, list) and len(tools) > limits.max_tools:
        raise OpenAiError(400, f"{len(tools)} tools: at most {limits.max_tools} are served", "tools")
    if body.get("n") not in (None, 1):
        raise OpenAiError(400, "only n=1 is supported (decoding is greedy: every choice would be the same)", "n")
    max_tokens = max_tokens_of(body, default_max_tokens)
    temperature = body.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2
    ):
        raise OpenAiError(400, "temperature must be a number from 0 to 2", "temperature")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise OpenAiError(400, "stream must be true or false", "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise OpenAiError(400, "stream_options must be an object or null", "stream_options")
    stop = parse_stop(body.get("stop"))
    try:
        prompt = agent_request_prompt(messages, tools, body.get("tool_choice"))
        constraint = request_constraint(body, prompt.source, constrained)
    except AgentRequestError as error:
        raise OpenAiError(400, str(error), error.param) from None
    except ConstraintRequestError as error:
        raise OpenAiError(400, str(error), error.param) from None
    return ChatRequest(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=bool(stream_options.get("include_usage")),
        stop=stop,
        constraint=constraint,
    )


MAX_STOP_SEQUENCES = 4  # OpenAI's limit


def parse_stop(stop: Any) -> tuple[str, ...]:
    """OpenAI's `stop`: null, one string, or a list of up to 4 non-empty strings."""
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or not 0 < len(stops) <= MAX_STOP_SEQUENCES
        or not all(isinstance(item, str) and item for item in stops)
    ):
        raise OpenAiError(
            400, f"stop must be a non-empty string or a list of 1 to {MAX_STOP_SEQUENCES} such strings", "stop"
        )
    return tuple(stops)


@dataclass(frozen=True)
class AssistantAnswer:
    content: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str  # "stop", "length" or "tool_calls"


WRAPPER_OPENING = "<tool_call"  # where a call starts: the answer's content ends there, streamed or not


def assistant_answer(text: str, stopped: bool) -> AssistantAnswer:
    """Model text → OpenAI assistant message.

    Exactly one valid wrapper becomes one tool call; text before it (if any is not whitespace) is the
    message's content, as OpenAI sends a model's words before its call; text after it is dropped.
    Anything else is content, whole.
    """
    if WRAPPER_OPENING in text:
        try:
            call = parse_model_tool_call(text)
        except ToolCallFormatError:
            call = None
        if call is not None:
            call_id = "call_" + hashlib.sha256(text.encode()).hexdigest()[:24]
            tool_call = {
                "id": call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": compact_json(call.arguments)},
            }
            before = text[: text.index(WRAPPER_OPENING)]
            return AssistantAnswer(content=before if before.strip() else None, tool_calls=[tool_call],
                                   finish_reason="tool_calls")  # fmt: skip
    return AssistantAnswer(content=text, tool_calls=[], finish_reason="stop" if stopped else "length")


def usage_body(prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object; `prompt_tokens_details.cached_tokens`: the prompt tokens the prefix cache
    held (prefilled for an earlier request and not computed again), as OpenAI and llama-server report."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_prompt_tokens},
    }


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion_response(
    model: str,
    answer: AssistantAnswer,
    prompt_tokens: int,
    completion_tokens: int,
    fingerprint: str,
    cached_prompt_tokens: int = 0,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.content}
    if answer.tool_calls:
        message["tool_calls"] = answer.tool_calls
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason, "logprobs": None}],
        "usage": usage_body(prompt_tokens, completion_tokens, cached_prompt_tokens),
    }


def held_back_from(text: str, marker: str) -> int:
    """Where `marker` starts in `text`, or where a tail that may be its start begins (else len(text))."""
    end = text.find(marker)
    if end != -1:
        return end
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-length:]):
            return len(text) - length
    return len(text)


def streamable_content_end(text: str, stop: tuple[str, ...] = ()) -> int:
    """How much of an unfinished answer can go out as content now, whatever the model writes next.

    Not a wrapper (it becomes a tool call, known only once closed), nor a stop text (the answer ends
    before it), nor a tail that may be the start of either, nor leading whitespace (dropped if a
    call follows). The rest is content in `assistant_answer` whatever comes later, so a stream never
    sends what the final message lacks.
    """
    end = min(held_back_from(text, marker) for marker in (WRAPPER_OPENING, *stop))
    return end if text[:end].strip() else 0


class AnswerStream:
    """The chunks of one streamed answer, made as its tokens arrive.

    `opening()` first (the role), then `add(token_id)` per token (content deltas as soon as they are
    safe to send), then `finish(...)` (the held-back rest: content, or the tool call as OpenAI
    streams one — a delta with id, type and name, then the arguments —, the finish reason, and the
    usage when asked). Joined, the deltas are exactly the unstreamed message.
    """

    def __init__(
        self,
        model: str,
        fingerprint: str,
        include_usage: bool,
        decode: Callable[[list[int]], str],
        stop: tuple[str, ...] = (),
    ):
        self.model, self.fingerprint, self.include_usage, self.decode = model, fingerprint, include_usage, decode
        self.stop = stop
        self.id, self.created = completion_id(), int(time.time())
        self.token_ids: list[int] = []
        self.sent = 0  # characters of content sent

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }

    def opening(self) -> list[dict[str, Any]]:
        return [self.chunk({"role": "assistant", "content": ""})]

    def add(self, token_id: int) -> list[dict[str, Any]]:
        self.token_ids.append(token_id)
        text = self.decode(self.token_ids)
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest of it
            return []
        end = streamable_content_end(text, self.stop)
        if end <= self.sent:
            return []
        piece, self.sent = text[self.sent : end], end
        return [self.chunk({"content": piece})]

    def finish(
        self, text: str, stopped: bool, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0
    ) -> list[dict[str, Any]]:
        answer = assistant_answer(text, stopped)
        chunks = []
        content = answer.content or ""
        if len(content) > self.sent:
            chunks.append(self.chunk({"content": content[self.sent :]}))
            self.sent = len(content)
        for index, call in enumerate(answer.tool_calls):
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            head = {"index": index, "id": call["id"], "type": "function", "function": {"name": name, "arguments": ""}}
            chunks.append(self.chunk({"tool_calls": [head]}))
            chunks.append(self.chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}))
        chunks.append(self.chunk({}, answer.finish_reason))
        if self.include_usage:
            chunks.append({**self.chunk({}), "choices": [], "usage": usage_body(prompt_tokens, completion_tokens,
                                                                              cached_prompt_tokens)})  # fmt: skip
        return chunks


def server_sent_event(chunk: dict[str, Any]) -> str:
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


SERVER_SENT_EVENTS_END = "data: [DONE]\n\n"


def models_response(model_names: list[str], created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "slm-swap"} for name in model_names],
    }
