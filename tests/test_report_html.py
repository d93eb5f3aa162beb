"""report.html and the predictions links, on the eval folders of tests/test_report.py's fixture.

The HTML is parsed back with the standard library's HTMLParser: every table of report.md is there
with the same cells, every chart is embedded as the PNG bytes it was written as, nothing points
outside the file except the relative links to the predictions files, which resolve beside it.
"""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from ray_app.data.splits import write_track_splits
from ray_app.report import ReportError, write_report
from ray_app.report import markdown as md
from ray_app.report.html import render_html
from tests.test_report import PRICES, ROWS, Workspace, answers, decide, parse_tables, split_rows, write_evaluation

PREDICTIONS = {
    "structured": ("teacher", "slm", "slm-adapter"),
    "toolcall": ("teacher", "slm"),
}
HOSTILE_ANSWER = '<img src="http://example.com/x.png"> <script>fetch("http://example.com")</script>'


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """tests/test_report.py's fixture, with one toolcall answer that is raw HTML pointing outside."""
    dataset_root, eval_root, price_table = tmp_path / "02_dataset", tmp_path / "05_eval", tmp_path / "prices.json"
    price_table.write_text(json.dumps(PRICES), encoding="utf-8")
    for track, labels in PREDICTIONS.items():
        write_track_splits(dataset_root, track, {"test": split_rows(track)})
        for label in labels:
            given = answers(track, label)
            if (track, label) == ("toolcall", "slm"):
                given = [HOSTILE_ANSWER, *given[1:]]
            write_evaluation(eval_root, dataset_root, track, label, given)
    decide(eval_root, price_table)
    return Workspace(eval_root, dataset_root, price_table)


class Page(HTMLParser):
    """What a browser would fetch or show: tags, image sources, link targets, table cells as text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.images: list[str] = []
        self.links: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        named = dict(attrs)
        if tag == "img":
            self.images.append(str(named["src"]))
        if tag == "a":
            self.links.append(str(named["href"]))
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self.tables[-1].append([])
        if tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def parse_page(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def plain(cell: str) -> str:
    """A markdown cell as the browser shows it: code spans without their backticks."""
    return re.sub(r"(`+) ?(.*?) ?\1", r"\2", cell)


def test_html_has_every_table_and_chart_and_fetches_nothing(workspace: Workspace) -> None:
    outcome = write_report(workspace.eval_root, workspace.dataset_root, formats=("md", "html"))
    assert outcome.report_path == workspace.eval_root / "report.md"
    assert outcome.html_path == workspace.eval_root / "report.html"
    text = outcome.html_path.read_text(encoding="utf-8")
    page = parse_page(text)

    # The same tables, cell for cell, as report.md (the HTML is rendered from that markdown).
    tables = parse_tables(workspace.markdown())
    assert len(tables) == len(page.tables) > 10
    for table, shown in zip(tables, page.tables, strict=True):
        assert shown == [[plain(cell) for cell in row] for row in [table.header, *table.rows]]
    assert page.tables[0][1][:4] == ["structured", "10", "replay (simulated)", "1"]  # the decision table's first row

    # Every chart embedded as its own PNG bytes; nothing else is an image.
    assert len(outcome.chart_paths) == 4
    prefix = "data:image/png;base64,"
    assert all(source.startswith(prefix) for source in page.images)
    embedded = sorted(base64.b64decode(source.removeprefix(prefix)) for source in page.images)
    assert embedded == sorted(path.read_bytes() for path in outcome.chart_paths)

    # Nothing to fetch: no script, stylesheet link, frame or remote URL; the model's raw HTML shows as text.
    assert page.tags.isdisjoint({"script", "link", "iframe", "object", "embed", "base"})
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "url(" not in text and "@import" not in text
    assert "&lt;script&gt;fetch(&quot;http://example.com&quot;)&lt;/script&gt;" in text

    # The predictions links: relative, one per evaluated model, each a file beside report.html.
    expected = {f"{track}/{label}/predictions.jsonl" for track, labels in PREDICTIONS.items() for label in labels}
    assert {link for link in page.links if link.endswith("predictions.jsonl")} == expected
    for link in page.links:
        assert not re.match(r"[a-z]+:|/", link), link
        assert (outcome.html_path.parent / unquote(link)).is_file(), link


def test_markdown_links_each_models_predictions(workspace: Workspace) -> None:
    outcome = workspace.report()
    markdown = workspace.markdown()
    section = markdown.split("\n## Predictions\n")[1].split("\n## ")[0]
    lines = section.strip().splitlines()[-2:]
    assert lines == [
        "- structured: [`teacher`](structured/teacher/predictions.jsonl), [`slm`](structured/slm/predictions.jsonl), "
        "[`slm-adapter`](structured/slm-adapter/predictions.jsonl)",
        "- toolcall: [`teacher`](toolcall/teacher/predictions.jsonl), [`slm`](toolcall/slm/predictions.jsonl)",
    ]
    for target in re.findall(r"\]\(([^)]+)\)", section):
        assert len((outcome.report_path.parent / target).read_text(encoding="utf-8").splitlines()) == ROWS
    assert outcome.html_path is None and not (workspace.eval_root / "report.html").exists()


def test_codeact_trajectories_are_linked_when_there(workspace: Workspace) -> None:
    for label in ("slm-codeact", "teacher"):
        folder = workspace.eval_root / "codeact" / label
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text("{}", encoding="utf-8")
        (folder / "trajectories.jsonl").write_text("", encoding="utf-8")
    section = render_section(workspace)
    assert "- codeact (one trajectory per task): [`teacher`](codeact/teacher/trajectories.jsonl), " \
           "[`slm-codeact`](codeact/slm-codeact/trajectories.jsonl)" in section  # fmt: skip


def render_section(workspace: Workspace) -> str:
    """The Predictions section alone: the CodeAct section itself needs far more files than this test writes."""
    from ray_app.report.inputs import load_decision, load_track
    from ray_app.report.report import decided_labels, predictions_section
    from ray_app.report.track_view import track_view

    decision = load_decision(workspace.eval_root)
    labels = decided_labels(workspace.eval_root, decision)
    views = [
        track_view(track, load_track(track, workspace.dataset_root, labels), decision, labels) for track in PREDICTIONS
    ]
    return predictions_section(views, workspace.eval_root, labels)


def test_html_only_writes_no_markdown_and_the_same_bytes_twice(workspace: Workspace) -> None:
    first = write_report(workspace.eval_root, workspace.dataset_root, formats=("html",))
    assert first.report_path == first.html_path == workspace.eval_root / "report.html"
    assert not (workspace.eval_root / "report.md").exists()
    html_bytes = first.report_path.read_bytes()
    assert write_report(workspace.eval_root, workspace.dataset_root, formats=("html",)).report_path.read_bytes() == (
        html_bytes
    )
    assert html_bytes.startswith(b"<!DOCTYPE html>") and b"<title>slm-swap parity report</title>" in html_bytes
    with pytest.raises(ReportError, match=r"formats must be 'md', 'html' or both, got \['pdf'\]"):
        write_report(workspace.eval_root, workspace.dataset_root, formats=("pdf",))  # type: ignore[list-item]


def test_only_local_pngs_are_embedded(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="only PNG charts beside the report can be embedded"):
        render_html("![chart](https://example.com/chart.png)", tmp_path)
    with pytest.raises(ReportError, match="chart.png: the chart report.md links is missing"):
        render_html("![chart](report_charts/chart.png)", tmp_path)
    (tmp_path / "fake.png").write_text("not a png", encoding="utf-8")
    with pytest.raises(ReportError, match="fake.png: not a PNG file"):
        render_html("![chart](fake.png)", tmp_path)


def test_a_label_with_spaces_stays_one_link(tmp_path: Path) -> None:
    link = md.link(md.code("slm adapter (r64)"), "toolcall/slm adapter (r64)/predictions.jsonl")
    assert link == "[`slm adapter (r64)`](toolcall/slm%20adapter%20%28r64%29/predictions.jsonl)"
    page = parse_page(render_html(link, tmp_path))
    assert [unquote(href) for href in page.links] == ["toolcall/slm adapter (r64)/predictions.jsonl"]


def test_raw_html_in_the_markdown_stays_text(tmp_path: Path) -> None:
    """A model's answer quoted in a table cell or a line of text is shown, never run or fetched."""
    markdown = '| answer |\n|---|\n| <img src="https://example.com/x.png"> |\n\n<script>alert(1)</script>'
    page = parse_page(render_html(markdown, tmp_path))
    assert page.tables == [[["answer"], ['<img src="https://example.com/x.png">']]]
    assert page.images == [] and "script" not in page.tags


def test_the_main_jobs_report_step_writes_both_and_skips_when_unchanged(workspace: Workspace) -> None:
    from ray_app.pipeline.config import PipelineConfig
    from ray_app.pipeline.ledger import StepLedger
    from ray_app.pipeline.run import write_the_report

    config = PipelineConfig(eval_root=workspace.eval_root, dataset_root=workspace.dataset_root)
    ledger = StepLedger(workspace.eval_root / "pipeline_state.json")
    assert write_the_report(config, ledger) == workspace.eval_root / "report.md"
    html_path = workspace.eval_root / "report.html"
    assert parse_page(html_path.read_text(encoding="utf-8")).tables
    assert str(html_path) in workspace.json("pipeline_state.json")["report"]["outputs"]
    html_path.unlink()  # an output gone: the step runs again although its inputs did not change
    write_the_report(config, StepLedger(workspace.eval_root / "pipeline_state.json"))
    assert html_path.is_file()
