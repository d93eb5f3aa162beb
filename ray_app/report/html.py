"""report.html: the parity report as one self-contained HTML file, for readers without a markdown viewer.

It is rendered from the very markdown report.md holds (markdown-it-py: CommonMark plus GitHub
tables), so the two formats show the same tables and words and cannot drift apart. Each chart the
markdown links (`report_charts/*.png`) is embedded as a `data:image/png;base64,` URI and the style
sheet is inline: the file fetches nothing, so it opens offline or as an e-mail attachment. Links to
the predictions files stay relative, as in report.md, and work when report.html sits beside it.
Raw HTML in the markdown (a model's answer quoted in a table) is shown as text, never interpreted.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

from ray_app.atomic_files import atomic_write_text
from ray_app.report.inputs import ReportError

HTML_FILE = "report.html"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STYLE = """
body { margin: 0; background: #fff; color: #1f2328; font: 15px/1.5 -apple-system, "Segoe UI", Helvetica,
  Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 32px 64px; }
h1, h2 { border-bottom: 1px solid #d1d9e0; padding-bottom: .3em; }
h2 { margin-top: 2em; }
table { display: block; overflow-x: auto; border-collapse: collapse; margin: 0 0 1em; }
th, td { border: 1px solid #d1d9e0; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr:nth-child(2n) td { background: #fafbfc; }
code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #eff1f3;
  padding: .1em .3em; border-radius: 4px; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; border-radius: 6px; }
pre code { background: none; padding: 0; white-space: pre; }
img { max-width: 100%; height: auto; }
a { color: #0969da; }
""".strip()


def markdown_parser() -> MarkdownIt:
    """CommonMark with GitHub's tables; raw HTML off, so text from model answers stays text."""
    return MarkdownIt("commonmark", {"html": False}).enable("table")


def inline_tokens(tokens: list[Token]) -> Iterator[Token]:
    for token in tokens:
        yield token
        if token.children:
            yield from inline_tokens(token.children)


def embedded_png(source: str, base: Path) -> str:
    """`source` (a PNG path relative to `base`, as report.md links its charts) as a data URI."""
    parts = urlsplit(source)
    if parts.scheme or parts.netloc or source.startswith("/") or not parts.path.endswith(".png"):
        raise ReportError(f"report.md links the image {source!r}: only PNG charts beside the report can be embedded")
    path = base / unquote(parts.path)
    if not path.is_file():
        raise ReportError(f"{path}: the chart report.md links is missing; run `slm-swap report` again")
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ReportError(f"{path}: not a PNG file; run `slm-swap report` again")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def page_title(tokens: list[Token]) -> str:
    """The text of the first heading, for the browser tab."""
    for opening, inline in zip(tokens, tokens[1:], strict=False):
        if opening.type == "heading_open":
            return inline.content
    return "slm-swap report"


def render_html(markdown: str, base: Path) -> str:
    """The report's markdown as a complete HTML page; images under `base` embedded, links untouched."""
    parser = markdown_parser()
    tokens = parser.parse(markdown)
    for token in inline_tokens(tokens):
        if token.type == "image":
            token.attrSet("src", embedded_png(str(token.attrGet("src")), base))
    body = parser.renderer.render(tokens, parser.options, {})
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(page_title(tokens))}</title>",
            f"<style>\n{STYLE}\n</style>",
            "</head>",
            "<body>",
            "<main>",
            body.rstrip("\n"),
            "</main>",
            "</body>",
            "</html>",
            "",
        ]
    )


def write_html_report(markdown: str, eval_root: Path) -> Path:
    """`<eval_root>/report.html` from the report's markdown; charts read from under eval_root."""
    return atomic_write_text(eval_root / HTML_FILE, render_html(markdown, eval_root))
