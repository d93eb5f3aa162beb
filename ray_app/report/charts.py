"""The report's PNG charts, drawn with matplotlib's Agg renderer (no display, no pyplot state).

Two charts per track: core metrics (rates per model, and each paired gap with its 95% bootstrap
interval), and latency per row with cost per 1,000 calls. Charts take plain numbers that the caller
read from the files the report names; they read nothing themselves. PNGs carry no software or date
metadata, so the same numbers give the same bytes.
"""

from __future__ import annotations

import io
import os
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

DPI = 100
# each constrained configuration in a lighter shade of its free one's colour
LABEL_COLORS = {
    "teacher": "#4C72B0",
    "slm": "#DD8452",
    "slm-constrained": "#F0B98D",
    "slm-adapter": "#55A868",
    "slm-adapter-constrained": "#A2D4AB",
}
OTHER_COLORS = ("#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD")
# Above this max/min ratio the latency axis is logarithmic: a hosted call and a CPU batch differ ~30x.
LOG_SCALE_RATIO = 20
GAP_ROW_INCHES = 0.2  # height per paired gap: 9 pt tick labels with room between them
LEGEND_COLUMNS = 5  # model names per legend row; more wrap to a second row instead of leaving the image
TICK_LABEL_CHARS = 14  # longer model names under a bar or box wrap (at hyphens) instead of overlapping


@dataclass(frozen=True)
class Gap:
    """delta = rate(reference) - rate(candidate) with its paired bootstrap interval (> 0: candidate worse)."""

    metric: str
    reference: str
    candidate: str
    delta: float
    interval_95: tuple[float, float]


def label_color(label: str, labels: Sequence[str]) -> str:
    if label in LABEL_COLORS:
        return LABEL_COLORS[label]
    others = [name for name in labels if name not in LABEL_COLORS]
    return OTHER_COLORS[others.index(label) % len(OTHER_COLORS)] if label in others else OTHER_COLORS[0]


def wrapped(label: str) -> str:
    return textwrap.fill(label, TICK_LABEL_CHARS)


def write_png(figure: Figure, path: Path) -> Path:
    """Render to memory, then write beside the target and rename: never a half-written PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(buffer.getvalue())
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def core_metrics_chart(
    path: Path, track: str, rates: Mapping[str, Mapping[str, float]], metrics: Sequence[str], gaps: Sequence[Gap]
) -> Path:
    return write_png(core_metrics_figure(track, rates, metrics, gaps), path)


def core_metrics_figure(
    track: str, rates: Mapping[str, Mapping[str, float]], metrics: Sequence[str], gaps: Sequence[Gap]
) -> Figure:
    """Left: each model's core rates (`rates[label][metric]`). Right: the paired gaps with intervals."""
    labels = list(rates)
    # One gap per row on the right: the figure grows with their count so tick labels never overlap.
    height = max(4.2, 1.6 + GAP_ROW_INCHES * len(gaps))
    figure = Figure(figsize=(12, height) if gaps else (6.5, 4.2), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, 2 if gaps else 1, squeeze=False)[0]
    bars = axes[0]
    width = 0.8 / max(1, len(labels))
    for position, label in enumerate(labels):
        xs = [m + (position - (len(labels) - 1) / 2) * width for m in range(len(metrics))]
        values = [rates[label][metric] for metric in metrics]
        drawn = bars.bar(xs, values, width, label=label, color=label_color(label, labels))
        bars.bar_label(drawn, labels=[f"{value:.2f}" for value in values], fontsize=7, padding=2)
    bars.set_xticks(range(len(metrics)), [metric.removesuffix("_rate") for metric in metrics])
    bars.set_ylim(0, 1.1)
    bars.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    bars.set_ylabel("rate over every test row")
    bars.set_title(f"{track}: core metrics")
    # Above the panels, outside both: one colour key for the bars and the gaps, never over a bar label.
    figure.legend(loc="outside upper center", fontsize=8, ncols=min(len(labels), LEGEND_COLUMNS))
    if gaps:
        chart = axes[1]
        ys = list(range(len(gaps)))[::-1]
        for y, gap in zip(ys, gaps, strict=True):
            low, high = gap.interval_95
            color = label_color(gap.candidate, labels)
            chart.errorbar(gap.delta, y, xerr=[[gap.delta - low], [high - gap.delta]], fmt="o", color=color, capsize=4)
        chart.axvline(0, color="#444444", linewidth=0.8)
        chart.set_yticks(ys, [f"{gap.metric.removesuffix('_rate')}: {gap.reference} - {gap.candidate}" for gap in gaps])
        chart.tick_params(axis="y", labelsize=9)
        chart.set_xlim(-1.05, 1.05)
        chart.set_ylim(-0.7, len(gaps) - 0.3)
        # Two lines: on one, the label is wider than the panel and the PNG cut its end.
        chart.set_xlabel("delta with 95% paired bootstrap interval\n(> 0: the second is worse)")
        chart.set_title(f"{track}: paired gaps")
    return figure


def latency_cost_chart(
    path: Path, track: str, latencies_s: Mapping[str, Sequence[float]], cost_per_1k_usd: Mapping[str, float]
) -> Path:
    return write_png(latency_cost_figure(track, latencies_s, cost_per_1k_usd), path)


def latency_cost_figure(
    track: str, latencies_s: Mapping[str, Sequence[float]], cost_per_1k_usd: Mapping[str, float]
) -> Figure:
    """Left: per-row latency distribution per model (box and points). Right: USD per 1,000 calls."""
    panels = (1 if latencies_s else 0) + (1 if cost_per_1k_usd else 0)
    if not panels:
        raise ValueError(f"{track}: no latencies and no costs to draw")
    figure = Figure(figsize=(6 * panels, 4.2), dpi=DPI, layout="constrained")
    axes = list(figure.subplots(1, panels, squeeze=False)[0])
    if latencies_s:
        chart = axes.pop(0)
        labels = list(latencies_s)
        values = [list(latencies_s[label]) for label in labels]
        chart.boxplot(values, tick_labels=[wrapped(label) for label in labels], showfliers=False, widths=0.5)
        for position, (label, points) in enumerate(zip(labels, values, strict=True), start=1):
            # Even spread instead of random jitter: the same data always draws the same picture.
            spread = [position - 0.18 + 0.36 * i / max(1, len(points) - 1) for i in range(len(points))]
            chart.scatter(spread, points, s=8, alpha=0.6, color=label_color(label, labels), zorder=3)
        flat = [value for points in values for value in points if value > 0]
        if flat and max(flat) / min(flat) > LOG_SCALE_RATIO:
            chart.set_yscale("log")
            # Plain seconds at 1, 2, 5 x 10^k: the default labels only powers of ten, often none in range.
            chart.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            chart.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            chart.yaxis.set_minor_formatter(NullFormatter())
        chart.set_ylabel("seconds per row")
        chart.set_title(f"{track}: latency per row")
    if cost_per_1k_usd:
        chart = axes.pop(0)
        labels = list(cost_per_1k_usd)
        costs = [cost_per_1k_usd[label] for label in labels]
        drawn = chart.bar(
            [wrapped(label) for label in labels], costs, color=[label_color(label, labels) for label in labels]
        )
        chart.bar_label(drawn, labels=[f"${cost:.4g}" for cost in costs], fontsize=8, padding=2)
        chart.set_ylim(0, max(costs) * 1.2 if max(costs) > 0 else 1)
        chart.set_ylabel("USD per 1,000 calls (price table)")
        chart.set_title(f"{track}: estimated cost")
    return figure
