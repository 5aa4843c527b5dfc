"""Figures of the composition report, rendered off-screen (matplotlib Agg, no pyplot state).

Each ``*_figure`` function returns a ``matplotlib.figure.Figure``; :func:`figure_png` turns it
into PNG bytes for embedding in HTML or sending to TensorBoard.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ssl_seg import PALETTE
from ssl_seg.report.composition import MACERALS, SampleSummary

SQRT3_2 = math.sqrt(3.0) / 2.0
MAX_CLOUD_POINTS = 300
MAX_LEGEND_ENTRIES = 15
MACERAL_COLOURS = [tuple(c / 255.0 for c in PALETTE[index + 1]) for index in range(len(MACERALS))]


def text_label(name: str) -> str:
    """A sample name as matplotlib shows it verbatim: '$' would start math text, and a
    leading '_' hides a legend entry."""
    name = name.replace("$", r"\$")
    return " " + name if name.startswith("_") else name


def figure_png(figure: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure (white background)."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def sample_colours(count: int) -> list[tuple[float, float, float, float]]:
    """Distinct colours for ``count`` samples (tab10, then tab20, then cycling)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(index % cmap.N) for index in range(count)]


def ternary_xy(fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inertinite, vitrinite, liptinite) fractions (..., 3) -> plot coordinates.

    Inertinite at the bottom-left corner, vitrinite bottom-right, liptinite at the top.
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    return fractions[..., 1] + fractions[..., 2] / 2.0, fractions[..., 2] * SQRT3_2


def _draw_ternary_frame(axes) -> None:
    corners = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=float)
    axes.plot(*ternary_xy(corners), color="black", linewidth=1.2)
    for step in (0.2, 0.4, 0.6, 0.8):
        rest = 1.0 - step
        for line in (
            [[step, rest, 0], [step, 0, rest]],  # constant inertinite
            [[rest, step, 0], [0, step, rest]],  # constant vitrinite
            [[rest, 0, step], [0, rest, step]],  # constant liptinite
        ):
            axes.plot(*ternary_xy(np.array(line)), color="0.85", linewidth=0.8, zorder=0)
        percent = f"{step * 100:.0f}%"
        x, y = ternary_xy(np.array([0, rest, step]))  # liptinite ticks on the right edge
        axes.text(x + 0.02, y, percent, fontsize=7, color="0.4", va="center")
        x, y = ternary_xy(np.array([rest, step, 0]))  # vitrinite ticks on the bottom edge
        axes.text(x, y - 0.035, percent, fontsize=7, color="0.4", ha="center")
        x, y = ternary_xy(np.array([step, 0, rest]))  # inertinite ticks on the left edge
        axes.text(x - 0.02, y, percent, fontsize=7, color="0.4", ha="right", va="center")
    labels = [
        ("Inertinite", (-0.03, -0.05), "right"),
        ("Vitrinite", (1.03, -0.05), "left"),
        ("Liptinite", (0.5, SQRT3_2 + 0.04), "center"),
    ]
    for text, (x, y), align in labels:
        axes.text(x, y, text, fontsize=11, fontweight="bold", ha=align, va="center")
    axes.set_xlim(-0.2, 1.2)
    axes.set_ylim(-0.12, SQRT3_2 + 0.1)
    axes.set_aspect("equal")
    axes.axis("off")


def ternary_figure(samples: Sequence[SampleSummary], rng_seed: int = 0) -> Figure:
    """Each sample's organic composition as a point in the inertinite-vitrinite-liptinite
    triangle, its images as small crosses and its bootstrap replicates as a faint cloud
    (the cloud's extent is the sampling uncertainty)."""
    figure = Figure(figsize=(7.0, 6.4))
    axes = figure.add_subplot(1, 1, 1)
    _draw_ternary_frame(axes)
    rng = np.random.default_rng(rng_seed)
    plotted = 0
    for summary, colour in zip(samples, sample_colours(len(samples))):
        point = np.array([summary.row[f"{m}_organic_fraction"] for m in MACERALS], dtype=float)
        if np.isnan(point).any():
            continue  # no organic matter: nothing to place in the triangle
        cloud = summary.replicates[~np.isnan(summary.replicates).any(axis=1)]
        if len(cloud) > MAX_CLOUD_POINTS:
            cloud = cloud[rng.choice(len(cloud), MAX_CLOUD_POINTS, replace=False)]
        if len(cloud):
            axes.scatter(*ternary_xy(cloud), s=5, color=colour, alpha=0.15, linewidths=0, zorder=1)
        images = np.array([[r[f"{m}_organic_fraction"] for m in MACERALS] for r in summary.image_rows], dtype=float)
        images = images[~np.isnan(images).any(axis=1)]
        if len(images):
            axes.scatter(*ternary_xy(images), s=16, marker="x", color=colour, alpha=0.6, linewidths=0.8, zorder=2)
        label = text_label(summary.name) if plotted < MAX_LEGEND_ENTRIES else None
        axes.scatter(*ternary_xy(point), s=70, color=colour, edgecolors="black", linewidths=0.8, zorder=3, label=label)
        plotted += 1
    if plotted:
        axes.legend(loc="upper right", fontsize=8, frameon=False, title="sample", title_fontsize=8)
    else:
        axes.text(0.5, 0.3, "no organic matter predicted", ha="center", fontsize=10, color="0.4")
    figure.suptitle("Organic composition per sample", fontsize=12)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.93)
    return figure


def composition_bars_figure(samples: Sequence[SampleSummary]) -> Figure:
    """Grouped bars of each sample's organic fractions with 95% error bars: the bootstrap
    interval over images, or the point-count interval for a single-image sample."""
    width_inches = min(14.0, 3.0 + 1.2 * len(samples))
    figure = Figure(figsize=(width_inches, 4.2))
    axes = figure.add_subplot(1, 1, 1)
    positions = np.arange(len(samples))
    bar_width = 0.8 / len(MACERALS)
    for index, (maceral, colour) in enumerate(zip(MACERALS, MACERAL_COLOURS)):
        values, lows, highs = [], [], []
        for summary in samples:
            row = summary.row
            value = float(row[f"{maceral}_organic_fraction"])
            low, high = (
                float(row[f"{maceral}_organic_fraction_ci_low"]),
                float(row[f"{maceral}_organic_fraction_ci_high"]),
            )
            if math.isnan(low):
                low, high = float(row[f"{maceral}_points_ci_low"]), float(row[f"{maceral}_points_ci_high"])
            values.append(0.0 if math.isnan(value) else value * 100)
            lows.append(0.0 if math.isnan(low) else max(0.0, value - low) * 100)
            highs.append(0.0 if math.isnan(high) else max(0.0, high - value) * 100)
        axes.bar(
            positions + (index - 1) * bar_width,
            values,
            bar_width,
            color=colour,
            edgecolor="0.3",
            linewidth=0.5,
            yerr=[lows, highs],
            capsize=3,
            error_kw={"elinewidth": 0.9},
            label=maceral,
        )
    axes.set_xticks(positions)
    crowded = len(samples) > 6
    axes.set_xticklabels([text_label(s.name) for s in samples], rotation=30 if crowded else 0,
                         ha="right" if crowded else "center")
    axes.set_ylabel("% of organic matter")
    axes.set_ylim(0, 105)
    axes.legend(fontsize=8, frameon=False, ncols=3, loc="upper center")
    axes.spines[["top", "right"]].set_visible(False)
    # Fixed margins: tight_layout costs more than the drawing itself.
    figure.subplots_adjust(
        left=0.85 / width_inches, right=1 - 0.2 / width_inches, bottom=0.2 if len(samples) > 6 else 0.1, top=0.95
    )
    return figure


def size_histogram_figure(areas: dict[str, dict[str, np.ndarray]], sample_names: Sequence[str]) -> Figure:
    """Object area histograms (log-spaced bins), one panel per maceral, one line per sample.

    ``areas[sample][maceral]`` holds the object areas in pixels.
    """
    figure = Figure(figsize=(12.0, 3.8))
    colours = sample_colours(len(sample_names))
    for index, maceral in enumerate(MACERALS):
        axes = figure.add_subplot(1, len(MACERALS), index + 1)
        all_areas = np.concatenate([areas[s][maceral] for s in sample_names]) if sample_names else np.empty(0)
        if all_areas.size == 0:
            axes.text(0.5, 0.5, "no objects", ha="center", va="center", transform=axes.transAxes, color="0.4")
            axes.set_xticks([])
            axes.set_yticks([])
        else:
            # Log-spaced edges at half-integers: areas are whole pixels, so no bin falls between two.
            top = max(2.0, float(all_areas.max()) + 1.0)
            bins = np.unique(np.round(np.logspace(0, math.log10(top), 30))) - 0.5
            for sample, colour in zip(sample_names, colours):
                values = areas[sample][maceral]
                if values.size:
                    axes.hist(values, bins=bins, histtype="step", color=colour, linewidth=1.4, label=text_label(sample))
            axes.set_xscale("log")
            # Counts span decades (specks vs. large bodies): a log count axis keeps both visible.
            axes.set_yscale("log")
            axes.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axes.yaxis.set_minor_formatter(NullFormatter())
            axes.set_ylim(bottom=0.7)
            axes.set_xlabel("object area (pixels)")
            axes.set_ylabel("objects")
            if index == 0 and len(sample_names) <= MAX_LEGEND_ENTRIES:
                axes.legend(fontsize=7, frameon=False)
        axes.set_title(maceral, color=MACERAL_COLOURS[index] if maceral != "liptinite" else (0.7, 0.55, 0.0))
        axes.spines[["top", "right"]].set_visible(False)
    figure.subplots_adjust(left=0.07, right=0.99, bottom=0.15, top=0.9, wspace=0.3)
    return figure
