"""xLAM function-calling rows → structured and toolcall splits.

Reads the project's copy of the xLAM sample (`slm_swap/01_source/xlam_sample.jsonl`), keeps rows
with exactly one answer, converts the row's tools to OpenAI function signatures (JSON Schema),
builds both tracks' prompts from the shared templates and writes
`<output_root>/{structured,toolcall}/{train,val,test}.jsonl`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_app.data.rows import TRACKS, Row, Track
from ray_app.data.splits import Candidate, SplitSizes, assign_splits, dedup_candidates, write_track_splits
from ray_app.json_text import readable_json
from ray_app.paths import PROJECT_ROOT
from ray_app.prompts import format_tool_call, structured_prompt, toolcall_prompt

DEFAULT_XLAM_PATH = PROJECT_ROOT / "slm_swap" / "01_source" / "xlam_sample.jsonl"

SCALAR_TYPES = {
    "str": "string", "string": "string", "int": "integer", "integer": "integer",
    "float": "number", "number": "number", "bool": "boolean", "boolean": "boolean",
    "any": None, "none": "null",
}  # fmt: skip


class XlamFormatError(ValueError):
    pass


def _split_top_level(text: str) -> list[str]:
    """Split `a, List[b, c]` on commas that are not inside brackets."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return [part for part in parts if part]


def xlam_type_schema(type_text: str) -> dict[str, Any]:
    """JSON Schema for an xLAM Python-style type string (`List[int]`, `Dict`, `Tuple[float, float]`…)."""
    text = type_text.strip()
    head, _, inner = text.partition("[")
    inner = inner[:-1] if inner.endswith("]") else inner
    kind = head.strip().lower()
    arguments = _split_top_level(inner) if inner else []
    if kind in SCALAR_TYPES:
        json_type = SCALAR_TYPES[kind]
        return {"type": json_type} if json_type else {}
    if kind in ("list", "sequence", "iterable"):
        return {"type": "array", "items": xlam_type_schema(arguments[0])} if arguments else {"type": "array"}
    if kind == "set":
        schema = {"type": "array", "uniqueItems": True}
        return {**schema, "items": xlam_type_schema(arguments[0])} if arguments else schema
    if kind == "tuple":
        items = [xlam_type_schema(argument) for argument in arguments]
        schema = {"type": "array", "minItems": len(items), "maxItems": len(items)} if items else {"type": "array"}
        return {**schema, "prefixItems": items} if items else schema
    if kind in ("dict", "mapping"):
        return {"type": "object"}
    if kind in ("union", "optional"):
        return {"anyOf": [xlam_type_schema(argument) for argument in arguments]}
    # Callable[...] and other Python-only types have no JSON type; keep the text for the model.
    return {"x-python-type": text}


_MISSING = object()


def typed_default(schema: dict[str, Any], default: Any) -> Any:
    """xLAM often writes defaults as text ("10" for an int, "" for none); give them the schema's type.

    Returns `_MISSING` when the default means "no default" or cannot be read as the declared type,
    so the schema never states a default of the wrong type.
    """
    kind = schema.get("type")
    if not isinstance(default, str) or kind not in ("integer", "number", "boolean"):
        return default
    text = default.strip()
    if kind == "boolean":
        return {"true": True, "false": False}.get(text.lower(), _MISSING)
    try:
        number = float(text)
    except ValueError:
        return _MISSING
    if kind == "integer":
        return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else _MISSING
    return int(text) if text.lstrip("-").isdigit() else number


def xlam_tool_signature(tool: dict[str, Any]) -> dict[str, Any]:
    """OpenAI function signature (JSON Schema parameters) for one xLAM tool."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, spec in (tool.get("parameters") or {}).items():
        # "int, optional" / "str, optional, default 'London'": the first piece is the type.
        type_pieces = _split_top_level(str(spec.get("type") or "any"))
        optional = any(piece.lower().startswith("optional") for piece in type_pieces[1:])
        base_type = type_pieces[0] if type_pieces else "any"
        schema = dict(xlam_type_schema(base_type))
        if spec.get("description"):
            schema["description"] = spec["description"]
        default = typed_default(schema, spec["default"]) if optional and "default" in spec else _MISSING
        if default is not _MISSING:
            schema["default"] = default
        properties[name] = schema
        if not optional:
            required.append(name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return {"name": tool["name"], "description": tool.get("description", ""), "parameters": parameters}


@dataclass
class XlamSummary:
    rows_read: int = 0
    skipped: Counter = field(default_factory=Counter)
    written: dict[str, dict[str, int]] = field(default_factory=dict)
    paths: dict[str, dict[str, Path]] = field(default_factory=dict)


def read_xlam(path: Path) -> list[dict[str, Any]]:
    """Parsed xLAM rows; a malformed line raises with `file:line: field`."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
                for key in ("query", "tools", "answers"):
                    if not isinstance(record.get(key), str):
                        raise XlamFormatError(f"{where}: field {key!r} must be a string (JSON text for tools/answers)")
                tools, answers = json.loads(record["tools"]), json.loads(record["answers"])
            except json.JSONDecodeError as error:
                raise XlamFormatError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(tools, list) or not isinstance(answers, list):
                raise XlamFormatError(f"{where}: fields 'tools' and 'answers' must decode to JSON arrays")
            records.append({"line": line_number, "query": record["query"], "tools": tools, "answers": answers})
    return records


def xlam_candidates(records: list[dict[str, Any]], summary: XlamSummary) -> dict[Track, list[Candidate]]:
    candidates: dict[Track, list[Candidate]] = {track: [] for track in TRACKS}
    for record in records:
        summary.rows_read += 1
        if len(record["answers"]) != 1:
            summary.skipped["answers != 1"] += 1
            continue
        answer = record["answers"][0]
        signatures = [xlam_tool_signature(tool) for tool in record["tools"]]
        by_name = {signature["name"]: signature for signature in signatures}
        if answer.get("name") not in by_name or not isinstance(answer.get("arguments"), dict):
            summary.skipped["answer names no offered tool"] += 1
            continue
        query = record["query"].strip()
        completion_call = format_tool_call(answer["name"], answer["arguments"])
        candidates["toolcall"].append(Candidate(query, Row(toolcall_prompt(signatures, query), completion_call)))
        structured_row = Row(structured_prompt(by_name[answer["name"]], query), readable_json(answer["arguments"]))
        candidates["structured"].append(Candidate(query, structured_row))
    return candidates


def build_xlam_splits(
    output_root: Path, input_path: Path = DEFAULT_XLAM_PATH, sizes: SplitSizes = SplitSizes()
) -> XlamSummary:
    """Read xLAM, build both tracks, write the six split files; return counts and paths."""
    summary = XlamSummary()
    candidates = xlam_candidates(read_xlam(input_path), summary)
    for track, track_candidates in candidates.items():
        unique, duplicates = dedup_candidates(track_candidates)
        if duplicates:
            summary.skipped[f"{track}: duplicate request"] += duplicates
        if len(unique) < sizes.total():
            raise XlamFormatError(
                f"{input_path}: only {len(unique)} usable {track} rows for {sizes.total()} requested "
                f"(train {sizes.train} + val {sizes.val} + test {sizes.test}); lower the sizes"
            )
        splits = assign_splits(unique, sizes)
        summary.paths[track] = write_track_splits(output_root, track, splits)
        summary.written[track] = {split: len(rows) for split, rows in splits.items()}
    return summary
