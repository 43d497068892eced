"""A picture of an architecture (PNG): a cell's DAG with each edge labelled by its operation, or a macro
network's stack of blocks. Logged with every trial's MLflow run and with the experiment's champion.

Drawn on a bare matplotlib Figure with the Agg canvas, never pyplot, so no global figure state or GUI
backend is touched by a pipeline step.
"""

from __future__ import annotations

from pathlib import Path

from kubetune.encoding import complete_block, encode, is_cell

__all__ = ["FILE_NAME", "draw"]

FILE_NAME = "architecture.png"
COLOURS = {
    "conv3": "tab:blue",
    "conv1": "tab:cyan",
    "linear": "tab:purple",
    "avgpool": "tab:green",
    "skip": "tab:orange",
}
DPI = 100
OPERATION_RAD = 0.4  # arcs of operations bend up, those into the output down (matplotlib's arc3 "rad")
OUTPUT_RAD = 0.3


def draw(architecture: dict, path: str | Path) -> Path:
    """Write the diagram of a cell or macro ``architecture`` to ``path`` (a PNG file); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    figure = Figure(figsize=_size(architecture), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    (_draw_cell if is_cell(architecture) else _draw_blocks)(axes, architecture)
    axes.set_axis_off()
    figure.savefig(path, format="png", bbox_inches="tight")
    return path


def _size(architecture: dict) -> tuple[float, float]:
    if is_cell(architecture):
        return (max(6.0, 1.8 * (int(architecture["nodes"]) + 2)), 5.0)
    return (6.0, 1.2 * (len(architecture["blocks"]) + 2) + 0.8)


def _node(axes, x: float, y: float, text: str, colour: str = "white") -> None:
    axes.text(x, y, text, ha="center", va="center", zorder=3, bbox={"boxstyle": "round", "fc": colour, "ec": "black"})


def _draw_cell(axes, architecture: dict) -> None:
    """States on a line, input left and output right; each non-zero edge an arc above the line labelled with
    its operation (zero edges contribute nothing and are left out); dashed arcs below the line into the
    output, the mean of the nodes, so that they never cross an operation's arc."""
    from matplotlib.patches import FancyArrowPatch

    nodes = int(architecture["nodes"])
    height = 0.5
    for node, operations in enumerate(architecture["edges"], start=1):
        for source, operation in enumerate(operations):
            if operation == "zero":
                continue
            span = node - source
            axes.add_patch(
                FancyArrowPatch(
                    (source, 0),
                    (node, 0),
                    connectionstyle=f"arc3,rad={-OPERATION_RAD}",
                    arrowstyle="-|>",
                    mutation_scale=12,
                    color=COLOURS.get(operation, "black"),
                    lw=1.5,
                    shrinkA=12,
                    shrinkB=12,
                )
            )
            y = OPERATION_RAD * span / 2  # the arc's midpoint: arc3's control point is rad x span off the line
            height = max(height, y)
            axes.text(
                (source + node) / 2,
                y,
                operation,
                ha="center",
                va="center",
                fontsize=8,
                zorder=4,
                color=COLOURS.get(operation, "black"),
                bbox={"fc": "white", "ec": "none", "pad": 1},
            )
    for node in range(1, nodes + 1):
        axes.annotate(
            "",
            (nodes + 1, 0),
            (node, 0),
            arrowprops={
                "arrowstyle": "-",
                "ls": "--",
                "color": "grey",
                "alpha": 0.6,
                "lw": 0.8,
                "connectionstyle": f"arc3,rad={OUTPUT_RAD}",
                "shrinkA": 12,
                "shrinkB": 12,
            },
        )
    _node(axes, 0, 0, "input", "lightgrey")
    for node in range(1, nodes + 1):
        _node(axes, node, 0, str(node))
    _node(axes, nodes + 1, 0, "mean", "lightgrey")
    axes.set_xlim(-0.7, nodes + 1.7)
    axes.set_ylim(-OUTPUT_RAD * nodes / 2 - 0.3, height + 0.5)
    axes.set_aspect("equal")
    axes.set_title(
        f"cell of {_count(nodes, 'node')}, stacked {_count(int(architecture['cells']), 'time')}, "
        f"width {int(architecture['width'])}, "
        f"{_count(int(architecture['reductions']), 'reduction')}\n{encode(architecture)}",
        fontsize=9,
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _draw_blocks(axes, architecture: dict) -> None:
    """Input at the top, one box per block, the linear head at the bottom; a skip is an arc round its block."""
    blocks = architecture["blocks"]
    labels = ["input"] + [_block_label(block) for block in blocks] + ["flatten + linear head"]
    for row, label in enumerate(labels):
        y = -row
        if row:
            axes.annotate("", (0, y + 0.25), (0, y + 0.75), arrowprops={"arrowstyle": "-|>"})
        colour = "lightgrey" if row in (0, len(labels) - 1) else "white"
        _node(axes, 0, y, label, colour)
    for index, block in enumerate(blocks):
        if block.get("skip"):  # from the arrow into the block to the arrow out of it, round its right side
            axes.annotate(
                "",
                (1.9, -index - 1.5),
                (1.9, -index - 0.5),
                arrowprops={"arrowstyle": "-|>", "connectionstyle": "arc3,rad=-0.5", "color": "tab:orange"},
            )
    axes.set_xlim(-2.5, 2.5)
    axes.set_ylim(-len(labels) + 0.4, 0.6)
    axes.set_title(f"{_count(len(blocks), 'block')}\n{encode(architecture)}", fontsize=9, wrap=True)


def _block_label(block: dict) -> str:
    block = complete_block(block)
    kernel = f" k{block['kernelSize']}" if "kernelSize" in block else ""
    extras = [block["activation"], f"norm {block['norm']}"]
    extras += [f"dropout {block['dropout']:g}"] if block["dropout"] else []
    extras += ["skip"] if block["skip"] else []
    return f"{block['kind']} {block['width']}{kernel}: " + ", ".join(extras)
