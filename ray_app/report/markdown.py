"""Markdown pieces of the report: tables, code blocks, and the one way each kind of number is printed.

Every number in report.md goes through a formatter here, so a reader (and the test that parses the
tables back) knows how many digits a printed value keeps.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import quote

NOT_AVAILABLE = "—"
BACKTICK_RUN = re.compile(r"`+")


# ---- numbers ----


def rate(value: float) -> str:
    """A rate in [0, 1], three decimals: 0.940."""
    return f"{value:.3f}"


def signed(value: float) -> str:
    """A difference of rates, three decimals with its sign: +0.120, -0.860."""
    return f"{value:+.3f}"


def interval(bounds: Sequence[float]) -> str:
    low, high = bounds
    return f"[{signed(low)}, {signed(high)}]"


def p_value(value: float) -> str:
    """Three significant digits, so 3.6e-05 never prints as 0.000."""
    return f"{value:.3g}"


def seconds(value: float | None) -> str:
    return NOT_AVAILABLE if value is None else f"{value:.3f}"


def count(value: int) -> str:
    return f"{value:,}"


def usd(value: float) -> str:
    """A price or a cost in USD, four significant digits: 0.02454."""
    return f"{value:.4g}"


# ---- text ----


def cell(text: str) -> str:
    """Text safe inside a table cell: no line breaks, pipes escaped (also inside code spans on GitHub)."""
    return " ".join(text.split("\n")).replace("|", "\\|")


def code(text: str) -> str:
    """An inline code span that survives backticks in `text`."""
    longest = max((len(run) for run in BACKTICK_RUN.findall(text)), default=0)
    fence = "`" * (longest + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return f"{fence}{padded}{fence}"


def link(text: str, target: str) -> str:
    """A link to a file relative to the report; the target is percent-encoded, so a folder name with
    spaces or parentheses stays one link (on GitHub and in report.html alike)."""
    return f"[{text}]({quote(target)})"


def code_block(text: str, info: str = "text") -> str:
    """A fenced block whose fence is longer than any backtick run inside (model outputs carry ``` fences)."""
    longest = max((len(run) for run in BACKTICK_RUN.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def one_line(text: str) -> str:
    """Line breaks and tabs written as \\n, \\r, \\t, so whitespace that changed a score shows on one line."""
    return text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def shorten(text: str, limit: int) -> str:
    """At most `limit` characters of `text`, saying how many were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… (+{len(text) - limit} chars)"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub table; cells are escaped here, so callers pass plain text or code spans."""
    lines = [
        "| " + " | ".join(cell(text) for text in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row has {len(row)} cells, header has {len(header)}: {row!r}")
        lines.append("| " + " | ".join(cell(text) for text in row) + " |")
    return "\n".join(lines)


def source_line(files: Sequence[str], fields: Sequence[str] = ()) -> str:
    """ "Source: `a`, `b` (fields `x`, `y`)." under a table: the files its numbers come from."""
    named = ", ".join(code(name) for name in files)
    if fields:
        named += " (fields " + ", ".join(code(field) for field in fields) + ")"
    return f"Source: {named}."
