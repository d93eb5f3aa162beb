"""The report's charts keep every piece of text inside the image.

Each chart is drawn by matplotlib's Agg renderer at the DPI the PNG is written with; every text that
renderer draws (titles, axis labels, tick labels, legend entries, bar labels) must lie inside the
figure, or the PNG cuts it. The inputs are the largest the report draws: the toolcall track's three
core metrics, teacher, base SLM and two adapted SLMs (five paired comparisons, 15 gaps).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from ray_app.report.charts import (
    DPI,
    Gap,
    core_metrics_chart,
    core_metrics_figure,
    latency_cost_chart,
    latency_cost_figure,
)

METRICS = ("valid_call_rate", "name_match_rate", "args_exact_rate")
LABELS = ("teacher", "slm", "slm-adapter", "slm-adapter-2")
RATES = {
    label: {metric: rate for metric, rate in zip(METRICS, rates, strict=True)}
    for label, rates in zip(
        LABELS, ((1.0, 0.98, 0.9), (0.41, 0.4, 0.12), (0.86, 0.85, 0.6), (0.9, 0.9, 0.7)), strict=True
    )
}
PAIRS = [("teacher", "slm")] + [(reference, adapted) for adapted in LABELS[2:] for reference in ("teacher", "slm")]
GAPS = [
    Gap(metric, reference, candidate, delta, (delta - 0.08, delta + 0.08))
    for (reference, candidate) in PAIRS
    for metric, delta in zip(METRICS, (0.59, -0.45, 0.3), strict=True)
]
# A hosted teacher (~0.3 s a call) and a CPU batch (~9 s a row): a logarithmic latency axis.
LATENCIES_S = {label: [0.25 + 0.01 * i if label == "teacher" else 6.0 + 0.2 * i for i in range(20)] for label in LABELS}
COSTS = {"teacher": 0.5125, "slm": 0.02454, "slm-adapter": 0.03111, "slm-adapter-2": 0.03119}
LONG_LABEL = "slm-adapter-codeact-masked-r64"  # an adapted SLM's label is its folder name: any length

FIGURES = {
    "core metrics and paired gaps": lambda: core_metrics_figure("toolcall", RATES, METRICS, GAPS),
    "core metrics, not decided (no gaps)": lambda: core_metrics_figure("structured", RATES, METRICS, []),
    "core metrics, one model": lambda: core_metrics_figure("structured", {"teacher": RATES["teacher"]}, METRICS, []),
    "core metrics, a long model name": lambda: core_metrics_figure(
        "toolcall",
        {**RATES, LONG_LABEL: RATES["slm"]},
        METRICS,
        [*GAPS, *(Gap(metric, "teacher", LONG_LABEL, 0.5, (0.4, 0.6)) for metric in METRICS)],
    ),
    "latency and cost": lambda: latency_cost_figure("toolcall", LATENCIES_S, COSTS),
    "latency and cost, a long model name": lambda: latency_cost_figure(
        "toolcall", {**LATENCIES_S, LONG_LABEL: LATENCIES_S["slm"]}, {**COSTS, LONG_LABEL: 0.02}
    ),
    "latency only": lambda: latency_cost_figure("toolcall", LATENCIES_S, {}),
    "cost only": lambda: latency_cost_figure("toolcall", {}, COSTS),
}


def drawn_texts(figure: Figure, monkeypatch: pytest.MonkeyPatch) -> tuple[FigureCanvasAgg, list[Text]]:
    """Draw the figure with Agg at the PNG's DPI and return every Text the renderer actually drew."""
    drawn: list[Text] = []
    draw = Text.draw

    def recording_draw(text: Text, renderer) -> None:
        if text.get_visible() and text.get_text().strip():
            drawn.append(text)
        draw(text, renderer)

    monkeypatch.setattr(Text, "draw", recording_draw)
    figure.set_dpi(DPI)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    monkeypatch.setattr(Text, "draw", draw)
    return canvas, drawn


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_text_lies_inside_the_image(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    canvas, texts = drawn_texts(FIGURES[name](), monkeypatch)
    renderer, bounds = canvas.get_renderer(), canvas.figure.bbox
    assert len(texts) > 5, name  # titles, labels and ticks were drawn, so the check below checks something
    outside = []
    for text in texts:
        box = text.get_window_extent(renderer)
        if box.x0 < bounds.x0 - 0.5 or box.y0 < bounds.y0 - 0.5 or box.x1 > bounds.x1 + 0.5 or box.y1 > bounds.y1 + 0.5:
            outside.append(f"{text.get_text()!r} at x {box.x0:.0f}..{box.x1:.0f}, y {box.y0:.0f}..{box.y1:.0f}")
    assert not outside, f"{name}: image is {bounds.width:.0f} x {bounds.height:.0f} px; cut: {outside}"


@pytest.mark.parametrize("name", list(FIGURES))
def test_no_text_covers_another(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the image is not enough: a tick label under a legend or a neighbour's label is unreadable too."""
    canvas, texts = drawn_texts(FIGURES[name](), monkeypatch)
    boxes = [(text.get_text(), text.get_window_extent(canvas.get_renderer())) for text in texts]
    covered = [
        f"{first!r} and {second!r}"
        for i, (first, box) in enumerate(boxes)
        for second, other in boxes[i + 1 :]
        if box.overlaps(other)
    ]
    assert not covered, f"{name}: {covered}"


def test_the_paired_gaps_axis_says_which_side_is_worse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The label the PNG used to cut, read back from what was drawn (wrapping keeps every word)."""
    _, texts = drawn_texts(FIGURES["core metrics and paired gaps"](), monkeypatch)
    words = " ".join(" ".join(text.get_text().split()) for text in texts)
    assert "(> 0: the second is worse)" in words
    assert "args_exact: teacher - slm-adapter-2" in words


def test_pngs_have_the_figure_size(tmp_path: Path) -> None:
    """The written PNG is the figure the test above measured: same pixels, nothing cropped or padded."""
    for path, figure in (
        (
            core_metrics_chart(tmp_path / "core.png", "toolcall", RATES, METRICS, GAPS),
            FIGURES["core metrics and paired gaps"](),
        ),
        (latency_cost_chart(tmp_path / "latency.png", "toolcall", LATENCIES_S, COSTS), FIGURES["latency and cost"]()),
    ):
        data = path.read_bytes()
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        inches = figure.get_size_inches()
        assert (width, height) == (round(inches[0] * DPI), round(inches[1] * DPI))
