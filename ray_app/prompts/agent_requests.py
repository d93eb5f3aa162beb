"""An agent's OpenAI-style chat request → the chat messages the SLM was evaluated on.

The SLM is measured on the project's prompts (`chat_messages(prompt)`), so Serve rebuilds that
prompt from what an agent sends, with the same builders the trace conversion uses:

- messages already in the project's format (first message is the project's system text, then one
  user message) are served as they are — that is what the thin clients send;
- a CodeAct conversation (the CodeAct loop's system text, then the task and alternating assistant
  actions and observations, `ray_app/codeact/`) is served as it is, multi-turn included: that is
  the conversation the CodeAct student is trained and evaluated on;
- with OpenAI `tools` (and `tool_choice` other than "none"): the toolcall prompt over the offered
  tools (only the named one for `tool_choice: {"type": "function", ...}`) and the user text;
- without tools: the structured prompt from the agent's own instruction (its system/developer
  messages) and the user text.

Tool results an agent sends back (`assistant` tool_calls followed by `role: "tool"` messages) are
appended to the user text as `<tool_result name="...">...</tool_result>` lines. Any other
multi-turn history (a second user turn, assistant text) is refused: the SLM was measured on single
requests, and silently dropping history would serve something that was never measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray_app.json_text import compact_json
from ray_app.prompts.builders import (
    PromptFormatError,
    chat_messages,
    structured_prompt_from_instruction,
    tool_signature,
    toolcall_prompt,
)
from ray_app.prompts.templates import load_templates, render_template, template_parts

MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool")


class AgentRequestError(PromptFormatError):
    """The request cannot be turned into a prompt; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class AgentRequestPrompt:
    messages: list[dict[str, str]]  # what the model gets (chat template applied by the engine)
    offered_tool_names: tuple[str, ...]  # tools put in the prompt (empty: no tools)
    source: str  # "project-format", "codeact", "toolcall" or "structured": how the prompt was built


def message_text(content: Any, param: str) -> str:
    """Message content as text: a string, OpenAI text parts, or null."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                raise AgentRequestError("only text content parts are supported", f"{param}[{index}]")
            if not isinstance(part.get("text", ""), str):
                raise AgentRequestError("a text part's text must be a string", f"{param}[{index}].text")
            texts.append(part.get("text", ""))
        return "".join(texts)
    raise AgentRequestError("content must be a string, a list of text parts or null", param)


def validated_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise AgentRequestError("messages must be a non-empty list of chat messages", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise AgentRequestError("each message must be an object", f"messages[{index}]")
        if message.get("role") not in MESSAGE_ROLES:
            raise AgentRequestError(
                f"role must be one of {', '.join(MESSAGE_ROLES)}, got {message.get('role')!r}",
                f"messages[{index}].role",
            )
        message_text(message.get("content"), f"messages[{index}].content")
    return messages


def is_project_format(messages: list[dict[str, Any]]) -> bool:
    return (
        len(messages) == 2
        and messages[0]["role"] == "system"
        and messages[0].get("content") == load_templates()["system"]
        and messages[1]["role"] == "user"
        and isinstance(messages[1].get("content"), str)
    )


def is_codeact_format(messages: list[dict[str, Any]]) -> bool:
    """The CodeAct loop's conversation: its system text, then user, assistant, user, ... turns."""
    system_head, _ = template_parts("codeact_system", "tools")
    if len(messages) < 2 or messages[0]["role"] != "system":
        return False
    if not isinstance(messages[0].get("content"), str) or not messages[0]["content"].startswith(system_head):
        return False
    turns = messages[1:]
    return (
        all(
            message["role"] == ("user" if index % 2 == 0 else "assistant") and isinstance(message.get("content"), str)
            for index, message in enumerate(turns)
        )
        and turns[-1]["role"] == "user"
    )


def instruction_of(messages: list[dict[str, Any]]) -> str:
    """The agent's system/developer text (the project's own system message excluded), as traces do."""
    project_system = load_templates()["system"]
    texts = [
        message_text(message.get("content"), f"messages[{index}].content").strip()
        for index, message in enumerate(messages)
        if message["role"] in ("system", "developer")
    ]
    return "\n\n".join(text for text in texts if text and text != project_system)


def request_text(messages: list[dict[str, Any]]) -> str:
    """The single user message, followed by the tool results sent back after it."""
    user_positions = [index for index, message in enumerate(messages) if message["role"] == "user"]
    if not user_positions:
        raise AgentRequestError("messages need one user message", "messages")
    if len(user_positions) > 1:
        raise AgentRequestError(
            "multi-turn conversations are not served: the SLM was measured on single requests "
            "(one user message, optionally followed by tool calls and their results)",
            f"messages[{user_positions[1]}]",
        )
    user_index = user_positions[0]
    user_text = message_text(messages[user_index].get("content"), f"messages[{user_index}].content").strip()
    if not user_text:
        raise AgentRequestError("the user message is empty", f"messages[{user_index}].content")
    call_names: dict[str, str] = {}
    results: list[str] = []
    for index in range(user_index + 1, len(messages)):
        message = messages[index]
        if message["role"] in ("system", "developer"):
            continue  # instructions, wherever they sit, go into the instruction (as the trace conversion does)
        if message["role"] == "assistant":
            if message_text(message.get("content"), f"messages[{index}].content").strip():
                raise AgentRequestError(
                    "assistant text after the user message is a multi-turn conversation, which is not served",
                    f"messages[{index}]",
                )
            tool_calls = message.get("tool_calls") or []
            if not isinstance(tool_calls, list):
                raise AgentRequestError("tool_calls must be a list", f"messages[{index}].tool_calls")
            for call_index, call in enumerate(tool_calls):
                if not isinstance(call, dict) or not isinstance(call.get("function") or {}, dict):
                    raise AgentRequestError(
                        "a tool call must be an object", f"messages[{index}].tool_calls[{call_index}]"
                    )
                call_names[str(call.get("id"))] = str((call.get("function") or {}).get("name") or "tool")
        elif message["role"] == "tool":
            content = message_text(message.get("content"), f"messages[{index}].content")
            if not isinstance(message.get("name") or "", str):
                raise AgentRequestError("a tool message's name must be a string", f"messages[{index}].name")
            name = call_names.get(str(message.get("tool_call_id")), message.get("name") or "tool")
            results.append(render_template("tool_result", name=name, content=content))
        else:
            raise AgentRequestError(
                f"a {message['role']} message after the user message is not served", f"messages[{index}].role"
            )
    return "\n\n".join([user_text, *results])


def offered_signatures(tools: Any, tool_choice: Any) -> list[dict[str, Any]]:
    """The tools to put in the prompt ([] when the request offers none or says tool_choice "none")."""
    if tools in (None, []) or tool_choice == "none":
        return []
    if not isinstance(tools, list):
        raise AgentRequestError("tools must be a list of OpenAI function tools", "tools")
    signatures = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise AgentRequestError("each tool must be an object", f"tools[{index}]")
        try:
            signatures.append(tool_signature(tool))
        except PromptFormatError as error:
            raise AgentRequestError(str(error), f"tools[{index}]") from None
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        if tool_choice.get("type") != "function" or not isinstance(function, dict):
            raise AgentRequestError(
                'tool_choice must be "auto", "required", "none" or {"type": "function", "function": {"name": ...}}',
                "tool_choice",
            )
        wanted = function.get("name")
        chosen = [signature for signature in signatures if signature["name"] == wanted]
        if not chosen:
            raise AgentRequestError(f"tool_choice names {wanted!r}, which is not in tools", "tool_choice")
        return chosen
    if tool_choice not in (None, "auto", "required"):
        raise AgentRequestError(
            'tool_choice must be "auto", "required", "none" or {"type": "function", ...}', "tool_choice"
        )
    return signatures


def agent_request_prompt(messages: Any, tools: Any = None, tool_choice: Any = None) -> AgentRequestPrompt:
    messages = validated_messages(messages)
    if is_project_format(messages):
        return AgentRequestPrompt(
            messages=[{"role": m["role"], "content": m["content"]} for m in messages],
            offered_tool_names=tuple(signature["name"] for signature in offered_signatures(tools, tool_choice)),
            source="project-format",
        )
    if is_codeact_format(messages):
        return AgentRequestPrompt(
            messages=[{"role": m["role"], "content": m["content"]} for m in messages],
            offered_tool_names=(),
            source="codeact",
        )
    signatures = offered_signatures(tools, tool_choice)
    text = request_text(messages)
    if signatures:
        names = [signature["name"] for signature in signatures]
        if len(set(names)) != len(names):
            raise AgentRequestError(f"tool names must be distinct: {compact_json(names)}", "tools")
        return AgentRequestPrompt(chat_messages(toolcall_prompt(signatures, text)), tuple(names), "toolcall")
    prompt = structured_prompt_from_instruction(instruction_of(messages), text)
    return AgentRequestPrompt(chat_messages(prompt), (), "structured")
