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
from dataclasses import dataclass
from typing import Any

from ray_app.json_text import compact_json
from ray_app.prompts import ToolCallFormatError, parse_model_tool_call
from ray_app.prompts.agent_requests import AgentRequestError, AgentRequestPrompt, agent_request_prompt


class OpenAiError(Exception):
    """An error the client caused (4xx) or the server hit (5xx), sent as an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

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


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise OpenAiError(400, f"request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise OpenAiError(400, "request body must be a JSON object", code="invalid_json")
    return body


def parse_chat_request(body: dict[str, Any], known_models: list[str], default_max_tokens: int) -> ChatRequest:
    """Check a chat-completions body; raise OpenAiError (4xx) naming the field that is wrong."""
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
    if body.get("n", 1) != 1:
        raise OpenAiError(400, "only n=1 is supported (decoding is greedy: every choice would be the same)", "n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise OpenAiError(400, "max_tokens must be a positive integer", "max_tokens")
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2):
        raise OpenAiError(400, "temperature must be a number from 0 to 2", "temperature")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise OpenAiError(400, "stream must be true or false", "stream")
    stream_options = body.get("stream_options") or {}
    try:
        prompt = agent_request_prompt(body["messages"], body.get("tools"), body.get("tool_choice"))
    except AgentRequestError as error:
        raise OpenAiError(400, str(error), error.param) from None
    return ChatRequest(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
    )


@dataclass(frozen=True)
class AssistantAnswer:
    content: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str  # "stop", "length" or "tool_calls"


def assistant_answer(text: str, stopped: bool) -> AssistantAnswer:
    """Model text → OpenAI assistant message: the wrapper becomes one tool call, anything else content."""
    if "<tool_call" in text:
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
            return AssistantAnswer(content=None, tool_calls=[tool_call], finish_reason="tool_calls")
    return AssistantAnswer(content=text, tool_calls=[], finish_reason="stop" if stopped else "length")


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion_response(
    model: str, answer: AssistantAnswer, prompt_tokens: int, completion_tokens: int, fingerprint: str
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
        "usage": usage_body(prompt_tokens, completion_tokens),
    }


def stream_chunks(
    model: str,
    answer: AssistantAnswer,
    content_pieces: list[str],
    prompt_tokens: int,
    completion_tokens: int,
    fingerprint: str,
    include_usage: bool,
) -> list[dict[str, Any]]:
    """The chunks of a streamed answer: role, then content pieces or tool-call deltas, then the finish.

    A tool call is sent as OpenAI sends one: a first delta with id, type and name (arguments ""),
    then the arguments text.
    """
    chunk_id, created = completion_id(), int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }

    chunks = [chunk({"role": "assistant", "content": ""})]
    for index, call in enumerate(answer.tool_calls):
        head = {"index": index, "id": call["id"], "type": "function"}
        chunks.append(
            chunk({"tool_calls": [{**head, "function": {"name": call["function"]["name"], "arguments": ""}}]})
        )
        chunks.append(
            chunk({"tool_calls": [{"index": index, "function": {"arguments": call["function"]["arguments"]}}]})
        )
    if not answer.tool_calls:
        chunks.extend(chunk({"content": piece}) for piece in content_pieces if piece)
    chunks.append(chunk({}, answer.finish_reason))
    if include_usage:
        chunks.append({**chunk({}), "choices": [], "usage": usage_body(prompt_tokens, completion_tokens)})
    return chunks


def server_sent_events(chunks: list[dict[str, Any]]) -> list[str]:
    return [f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n" for chunk in chunks] + ["data: [DONE]\n\n"]


def models_response(model_names: list[str], created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "slm-swap"} for name in model_names],
    }
