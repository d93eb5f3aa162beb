"""One source of truth for prompt text, chat messages and the tool-call wrapper."""

from ray_app.prompts.builders import (
    PromptFormatError,
    ToolcallPrompt,
    chat_messages,
    openai_safe_tool_names,
    openai_tool,
    parameter_types,
    parse_toolcall_prompt,
    structured_prompt,
    structured_prompt_from_instruction,
    tool_signature,
    toolcall_prompt,
)
from ray_app.prompts.templates import TEMPLATES_PATH, load_templates, render_template
from ray_app.prompts.tool_call_format import (
    ParsedToolCall,
    ToolCallFormatError,
    answer_text,
    format_tool_call,
    parse_gold_tool_call,
    parse_model_tool_call,
    tool_calls_text,
)

__all__ = [
    "TEMPLATES_PATH",
    "ParsedToolCall",
    "PromptFormatError",
    "ToolCallFormatError",
    "ToolcallPrompt",
    "answer_text",
    "chat_messages",
    "format_tool_call",
    "load_templates",
    "openai_safe_tool_names",
    "openai_tool",
    "parameter_types",
    "parse_gold_tool_call",
    "parse_model_tool_call",
    "parse_toolcall_prompt",
    "render_template",
    "structured_prompt",
    "structured_prompt_from_instruction",
    "tool_calls_text",
    "tool_signature",
    "toolcall_prompt",
]
