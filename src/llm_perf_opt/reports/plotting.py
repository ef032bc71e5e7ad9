"""One plotting style for every figure the project writes (roofline.png, the comparison plots).

matplotlib's object API on an Agg canvas: no pyplot state, no display needed, safe in threads and
in processes without a GUI. Figures share a size scale, font sizes, grid and the stage colours.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 120
STYLE = {"title_size": 11, "label_size": 9, "tick_size": 8, "legend_size": 8, "grid_alpha": 0.3}
# Colours by role; a stage's colour comes from its position in the run's stage order (stage_color).
PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C",
           "#CCB974", "#64B5CD")


def new_figure(width: float = 8.0, height: float = 5.0, rows: int = 1, cols: int = 1):
    """(figure, axes) with the project's style; axes is one Axes or an array when rows*cols > 1."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=True)
    for ax in (axes.flat if hasattr(axes, "flat") else [axes]):
        ax.tick_params(labelsize=STYLE["tick_size"])
        ax.grid(True, alpha=STYLE["grid_alpha"], linewidth=0.6)
        ax.set_axisbelow(True)
    return figure, axes


def style_axes(ax, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> None:
    if title:
        ax.set_title(title, fontsize=STYLE["title_size"])
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=STYLE["label_size"])
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=STYLE["label_size"])


def stage_color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def save_figure(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path
