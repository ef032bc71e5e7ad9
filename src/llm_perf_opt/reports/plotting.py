"""One plotting style for every figure the project writes (roofline.png, the comparison plots).

matplotlib's object API on an Agg canvas: no pyplot state, no display needed, safe in threads and
in processes without a GUI. Figures share a size scale, font sizes, grid and the stage colours.

Point labels that must not collide (`place_labels`): the layout is drawn once and frozen, then each
label takes the first spot around its point, nearest first (rings of LABEL_RADII points, eight
directions), whose box overlaps no label placed before it, no text or legend already on the axes and
no marker, and stays inside the axes; a label moved off its point gets a thin leader line to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

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


LABEL_RADII = (6, 12, 20, 30, 42, 56, 72, 90, 110, 135)  # points between a label and its point
LABEL_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1), (0, -1), (1, 0), (-1, 0))
_ALIGN = {1: "left", 0: "center", -1: "right"}
_VALIGN = {1: "bottom", 0: "center", -1: "top"}
LABEL_PAD_PX = 2.0


def freeze_layout(figure: Figure):
    """Draw once (the constrained layout places the axes) and keep the axes there; returns the renderer, so
    positions measured from now on are those of the saved file."""
    figure.canvas.draw()
    figure.set_layout_engine("none")
    return figure.canvas.get_renderer()


def boxes_overlap(boxes: Sequence[Bbox]) -> bool:
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def fit_x_tick_labels(figure: Figure, axes_list: Sequence) -> None:
    """Keep x tick labels horizontal (easiest to read) unless two of them would overlap once drawn; then
    turn every axes' labels upright (rotated 90 degrees), where only a line's height sits side by side."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    if any(boxes_overlap([t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()])
           for ax in axes_list):
        for ax in axes_list:
            ax.tick_params(axis="x", labelrotation=90)


def _overlap(box: Bbox, boxes: list[Bbox]) -> float:
    area = 0.0
    for other in boxes:
        width = min(box.x1, other.x1) - max(box.x0, other.x0)
        height = min(box.y1, other.y1) - max(box.y0, other.y0)
        area += max(width, 0.0) * max(height, 0.0)
    return area


def _outside(box: Bbox, frame: Bbox) -> float:
    inside = _overlap(box, [frame])
    return box.width * box.height - inside


def place_labels(figure: Figure, axes, labels: Sequence[tuple[str, tuple[float, float], dict[str, Any]]],
                 marker_pt: float = 4.0) -> list:
    """Annotate each (text, data point, text properties) so that no two labels overlap (module docstring);
    when no spot is free, the one with the least overlap. Call after everything else is on the axes."""
    renderer = freeze_layout(figure)
    pixels = figure.dpi / 72.0
    frame = axes.get_window_extent(renderer)
    taken = [text.get_window_extent(renderer) for text in axes.texts]
    legend = axes.get_legend()
    taken += [legend.get_window_extent(renderer)] if legend is not None else []
    for _, point, _ in labels:  # every marker, so no label covers another label's point
        x, y = axes.transData.transform(point)
        half = marker_pt * pixels
        taken.append(Bbox([[x - half, y - half], [x + half, y + half]]))
    placed = []
    for text, point, props in labels:
        probe = axes.annotate(text, point, xytext=(0, 0), textcoords="offset points", **props)
        best = None
        for radius in LABEL_RADII:
            for dx, dy in LABEL_DIRECTIONS:
                probe.xyann = (dx * radius, dy * radius)
                probe.set_horizontalalignment(_ALIGN[dx])
                probe.set_verticalalignment(_VALIGN[dy])
                box = probe.get_window_extent(renderer).padded(LABEL_PAD_PX)
                cost = _overlap(box, taken) + _outside(box, frame)
                if best is None or cost < best[0]:
                    best = (cost, radius, dx, dy, box)
            if best[0] == 0:
                break
        probe.remove()
        _, radius, dx, dy, box = best
        leader = ({"arrowprops": {"arrowstyle": "-", "color": props.get("color", "grey"), "linewidth": 0.6,
                                  "shrinkA": 1, "shrinkB": marker_pt}} if radius > LABEL_RADII[0] else {})
        placed.append(axes.annotate(text, point, xytext=(dx * radius, dy * radius), textcoords="offset points",
                                    ha=_ALIGN[dx], va=_VALIGN[dy], **props, **leader))
        taken.append(box)
    return placed
