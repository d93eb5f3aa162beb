"""The CodeAct prompt: tools as short Python signatures, the system message and a task's chat turns.

The student is a 135M model on CPU, so every token of the system prompt is paid on every step of
every task. A tool is therefore one line (two when long) of Python, not its JSON Schema:

    def crm_create_ticket(customer_id: str, priority: Literal["low", "high"] = None) -> dict: \"\"\"Open a ticket.\"\"\"

Required parameters come first, optional ones default to None; JSON types map to Python annotations;
the docstring is the first sentence of the tool's description. Parameter descriptions are left out
(they are what makes JSON signatures long). The prompt text itself lives in `templates.json`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ray_app.codeact.records import CodeactTask, ToolSpec, python_identifier
from ray_app.codeact.sandbox import SandboxLimits
from ray_app.codeact.tool_stubs import parameter_order
from ray_app.prompts import render_template

# The modules the sandbox lets code import by default; the system prompt shows them.
AUTHORIZED_IMPORTS: tuple[str, ...] = SandboxLimits().authorized_imports

DOCSTRING_MAX_CHARS = 100
ONE_LINE_MAX_CHARS = 120  # longer signatures put the docstring on a second line

SCALAR_ANNOTATIONS = {
    "string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None", "object": "dict",
}  # fmt: skip

# A sentence ends at . ! ? before the end or before whitespace and a non-lowercase character; "e.g." and
# "i.e." never end one.
SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)[.!?](?=\s+[^a-z\s]|\s*$)")


def annotation(schema: Any) -> str | None:
    """Python annotation for a JSON Schema, or None when the schema says nothing usable about the type."""
    if not isinstance(schema, dict):
        return None
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return "Literal[" + ", ".join(json.dumps(value, ensure_ascii=False) for value in schema["enum"]) + "]"
    if "const" in schema:
        return f"Literal[{json.dumps(schema['const'], ensure_ascii=False)}]"
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list) and options:
        return _union([annotation(option) for option in options])
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union([annotation({**schema, "type": one}) for one in kind])
    if kind == "array":
        return _array_annotation(schema)
    return SCALAR_ANNOTATIONS.get(kind) if isinstance(kind, str) else None


def _union(parts: list[str | None]) -> str | None:
    if any(part is None for part in parts):
        return None  # one option of unknown type makes the whole union unknown
    unique = list(dict.fromkeys(part for part in parts if part))
    return " | ".join(unique) if unique else None


def _array_annotation(schema: dict[str, Any]) -> str:
    prefix = schema.get("prefixItems")
    if isinstance(prefix, list) and prefix:  # a fixed-length tuple in JSON Schema; still a list in JSON
        item = _union([annotation(option) for option in prefix])
    else:
        item = annotation(schema.get("items"))
    return f"list[{item}]" if item else "list"


def first_sentence(description: str, max_chars: int = DOCSTRING_MAX_CHARS) -> str:
    """The description's first sentence, cut at a word boundary to `max_chars`, safe inside a docstring."""
    text = " ".join(description.split()).replace("\\", "/").replace('"', "'")
    match = SENTENCE_END.search(text)
    sentence = text[: match.end()] if match else text
    if len(sentence) > max_chars:
        cut = sentence[: max_chars - 3].rsplit(" ", 1)[0].rstrip(",;:")
        sentence = cut + "..."
    return sentence


def return_annotation(spec: ToolSpec) -> str:
    """`dict` (what a stub returns), or the type of a results table's values when they share one."""
    if not spec.results:
        return "dict"
    kinds = {type(value) for value in spec.results.values()}
    names = {str: "str", int: "int", float: "float", bool: "bool", list: "list", dict: "dict"}
    return names.get(kinds.pop(), "dict") if len(kinds) == 1 else "dict"


def python_signature(spec: ToolSpec) -> str:
    """One (or, when long, two) lines of Python: `def name(required, optional = None) -> T: \"\"\"Doc.\"\"\"`."""
    properties = spec.parameters.get("properties") or {}
    required_names = spec.parameters.get("required") or []
    parameters = []
    for name in parameter_order(spec.parameters):
        type_text = annotation(properties[name])
        # A name Python cannot take (none in the committed data) is shown as the tools' alias would be.
        text = f"{python_identifier(name)}: {type_text}" if type_text else python_identifier(name)
        parameters.append(text if name in required_names else f"{text} = None")
    head = f"def {spec.python_name}({', '.join(parameters)}) -> {return_annotation(spec)}:"
    doc = first_sentence(spec.description)
    if not doc:
        return f"{head} ..."
    if len(head) + len(doc) + 7 <= ONE_LINE_MAX_CHARS:
        return f'{head} """{doc}"""'
    return f'{head}\n    """{doc}"""'


def tools_block(specs: Iterable[ToolSpec]) -> str:
    """Every tool's signature, one after another (the `{{tools}}` of the system prompt)."""
    return "\n".join(python_signature(spec) for spec in specs)


def system_message(tools: Iterable[ToolSpec], authorized_imports: Sequence[str] = AUTHORIZED_IMPORTS) -> str:
    """The CodeAct system prompt for these tools (`codeact_system` in templates.json); pass the sandbox's
    `authorized_imports` when its limits are not the default ones."""
    return render_template("codeact_system", tools=tools_block(tools), imports=", ".join(authorized_imports))


def user_message(task: CodeactTask) -> str:
    """The task turn: the request, or for a structured task its instruction and then the request."""
    if task.kind == "structured":
        return render_template("codeact_structured_task", instruction=task.instruction, request=task.request)
    return render_template("codeact_task", request=task.request)


def task_messages(task: CodeactTask, authorized_imports: Sequence[str] = AUTHORIZED_IMPORTS) -> list[dict[str, Any]]:
    """The first two chat messages of a CodeAct run: system (tools) and user (the task)."""
    return [
        {"role": "system", "content": system_message(task.tools, authorized_imports)},
        {"role": "user", "content": user_message(task)},
    ]
