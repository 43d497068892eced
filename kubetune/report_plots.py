"""The report's plots as PNG bytes: best so far over trials and wall time, and search against random search.

Drawn on bare matplotlib Figures with the Agg canvas (as kubetune.diagram does), never pyplot, so no
global figure state or GUI backend is touched.
"""

from __future__ import annotations

import io
from collections.abc import Callable

__all__ = ["history", "spread"]

X_LABELS = {"trial": "trial number", "minutes": "minutes since the study was created"}


def history(points: list[dict], x: str, metric: str) -> bytes:
    """Each completed trial's value and the best so far, over ``x``: "trial" (number) or "minutes"."""
    return _png(lambda axes: _draw_history(axes, points, x, metric), X_LABELS[x], integer_x=x == "trial")


def spread(groups: dict[str, dict], metric: str) -> bytes:
    """Best so far over completed trials per group (search, random search): the median, and min to max."""
    return _png(lambda axes: _draw_spread(axes, groups, metric), "completed trials")


def _png(draw: Callable, xlabel: str, *, integer_x: bool = True) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(5.4, 3.4), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    draw(axes)
    axes.set_xlabel(xlabel)
    axes.set_xlim(left=0)
    axes.xaxis.set_major_locator(MaxNLocator(integer=integer_x))
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _draw_history(axes, points: list[dict], x: str, metric: str) -> None:
    xs = [p[x] for p in points]
    axes.scatter(xs, [p["value"] for p in points], s=14, color="tab:gray", label="trial")
    axes.step(xs, [p["best"] for p in points], where="post", color="tab:blue", label="best so far")
    axes.set_ylabel(metric)


def _draw_spread(axes, groups: dict[str, dict], metric: str) -> None:
    for (label, group), colour in zip(groups.items(), ("tab:blue", "tab:orange"), strict=True):
        spread = group["spread"]
        if not spread:
            continue
        index = [row["index"] for row in spread]
        runs = len(group["runs"])
        axes.plot(
            index,
            [row["median"] for row in spread],
            color=colour,
            drawstyle="steps-post",
            marker=".",
            label=f"{label} (median of {runs})" if runs > 1 else label,
        )
        if runs > 1:
            axes.fill_between(
                index,
                [r["min"] for r in spread],
                [r["max"] for r in spread],
                step="post",
                color=colour,
                alpha=0.2,
                label=f"{label}: min to max",
            )
    axes.set_ylabel(f"best {metric} so far")
