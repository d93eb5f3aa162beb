"""Loading and rendering of `templates.json`, the one file of prompt text.

Placeholders are `{{name}}`; rendering is plain substitution so the TypeScript client can do the
same in three lines. A missing or unknown placeholder is an error, never a silent blank.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

TEMPLATES_PATH = Path(__file__).with_name("templates.json")
PLACEHOLDER_PATTERN = re.compile(r"\{\{([a-z_]+)\}\}")


@functools.cache
def load_templates() -> dict[str, Any]:
    return json.loads(TEMPLATES_PATH.read_text(encoding="utf-8"))


def template_text(name: str) -> str:
    templates = load_templates()
    if name not in templates or not isinstance(templates[name], str):
        raise KeyError(f"{TEMPLATES_PATH}: no text template named {name!r}")
    return templates[name]


def render_template(template_name: str, /, **values: str) -> str:
    """Substitute every `{{key}}` of the template with `values[key]`, in one pass."""
    text = template_text(template_name)
    wanted = set(PLACEHOLDER_PATTERN.findall(text))
    if wanted != set(values):
        raise KeyError(f"template {template_name!r} takes {sorted(wanted)}, got {sorted(values)}")
    # One pass, so a value that itself contains "{{x}}" is never substituted again.
    return PLACEHOLDER_PATTERN.sub(lambda match: values[match.group(1)], text)


def template_parts(name: str, placeholder: str) -> tuple[str, str]:
    """The template text before and after `{{placeholder}}` (for parsing rendered prompts back)."""
    text = template_text(name)
    marker = "{{" + placeholder + "}}"
    if text.count(marker) != 1:
        raise KeyError(f"template {name!r} must contain {marker} exactly once")
    before, after = text.split(marker)
    return before, after
