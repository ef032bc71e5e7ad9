"""The roofline plot (log-log PNG): where each stage sits against the device's roofs.

x = arithmetic intensity (FLOP/byte), y = achieved TFLOP/s. Roofs: memory roof y = x * bandwidth
(GB/s) / 1e3 and compute roof y = peak TFLOP/s, meeting at the ridge point; dashed roofs for the
calibrated (achievable) peaks when present. Stages come from `efficiency.stage_efficiency`; operator
points are dicts with `name`, `intensity_flop_per_byte` and `achieved_tflops` (e.g. rows of
`stage_efficiency` run over per-operator costs). Points with zero FLOPs or no intensity cannot sit on
log axes: they are listed in a note on the plot instead.

Drawn with matplotlib's object API on an Agg canvas: no pyplot state, no display needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from llm_perf_opt.profiling.hardware import HardwarePeaks


def _plottable(row: Mapping[str, Any]) -> bool:
    x, y = row.get("intensity_flop_per_byte"), row.get("achieved_tflops")
    return x is not None and y is not None and np.isfinite(x) and np.isfinite(y) and x > 0 and y > 0


def _draw_roof(axes, xs: np.ndarray, tflops: float | None, gbps: float | None, style: str, label: str,
               label_dy: int = -12) -> None:
    if tflops is None and gbps is None:
        return
    memory = xs * gbps / 1e3 if gbps is not None else np.full_like(xs, np.inf)
    compute = np.full_like(xs, tflops if tflops is not None else np.inf)
    axes.plot(xs, np.minimum(memory, compute), style, color="black", linewidth=1.5, label=label)
    if tflops is not None and gbps is not None:
        ridge = tflops * 1e3 / gbps
        axes.axvline(ridge, color="grey", linestyle=":", linewidth=0.8)
        axes.annotate(f"ridge {ridge:.0f} FLOP/B", (ridge, tflops), textcoords="offset points", xytext=(4, label_dy),
                      fontsize=7, color="grey")


def build_roofline_figure(
    efficiency: Mapping[str, Mapping[str, Any]],
    peaks: HardwarePeaks | None,
    operator_points: list[Mapping[str, Any]] | None = None,
    device_name: str | None = None,
) -> Figure:
    """The roofline as a matplotlib Figure (stage points labelled with their names)."""
    figure = Figure(figsize=(8, 5.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    stages = {name: row for name, row in efficiency.items() if _plottable(row)}
    operators = [row for row in operator_points or [] if _plottable(row)]
    skipped = [name for name in efficiency if name not in stages]

    xs_points = [row["intensity_flop_per_byte"] for row in [*stages.values(), *operators]]
    ys_points = [row["achieved_tflops"] for row in [*stages.values(), *operators]]
    anchors = list(xs_points)
    for ridge in (peaks.ridge_flop_per_byte, peaks.achievable_ridge_flop_per_byte) if peaks else ():
        if ridge:
            anchors.append(ridge)
    low, high = (min(anchors) / 10, max(anchors) * 10) if anchors else (0.1, 1e4)
    xs = np.logspace(np.log10(low), np.log10(high), 256)

    if peaks is not None:
        _draw_roof(axes, xs, peaks.peak_tflops, peaks.peak_bandwidth_gbps, "-",
                   f"spec roof ({peaks.peak_tflops or '?'} TFLOP/s, {peaks.peak_bandwidth_gbps or '?'} GB/s)")
        if peaks.achievable_tflops is not None or peaks.achievable_bandwidth_gbps is not None:
            _draw_roof(axes, xs, peaks.achievable_tflops, peaks.achievable_bandwidth_gbps, "--",
                       "achievable roof (calibrated)", label_dy=-24)
    for name, row in stages.items():
        axes.scatter([row["intensity_flop_per_byte"]], [row["achieved_tflops"]], s=60, zorder=3, label=name)
        axes.annotate(name, (row["intensity_flop_per_byte"], row["achieved_tflops"]), textcoords="offset points",
                      xytext=(5, 5), fontsize=8)
    if operators:
        axes.scatter([r["intensity_flop_per_byte"] for r in operators], [r["achieved_tflops"] for r in operators],
                     s=14, marker="x", color="dimgrey", zorder=2, label="operators")
        for row in operators:
            axes.annotate(str(row.get("name", "")), (row["intensity_flop_per_byte"], row["achieved_tflops"]),
                          textcoords="offset points", xytext=(3, -9), fontsize=6, color="dimgrey")
    if skipped:
        axes.text(0.01, 0.01, "not on log axes (no FLOPs or no bytes): " + ", ".join(skipped),
                  transform=axes.transAxes, fontsize=7, color="grey")

    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low, high)
    heights = [*ys_points, *(v for v in (peaks.peak_tflops, peaks.achievable_tflops) if v)] if peaks else ys_points
    if heights:
        top = max(heights)
        bottom = min(ys_points) if ys_points else top / 1e4
        axes.set_ylim(min(bottom / 5, top / 1e4), top * 3)
    axes.set_xlabel("arithmetic intensity (FLOP/byte)")
    axes.set_ylabel("achieved TFLOP/s")
    device = device_name or (peaks.name if peaks else "unknown device")
    dtype = peaks.dtype if peaks else "?"
    axes.set_title(f"Roofline: {device}, {dtype}" + ("" if peaks else " (no peaks known: points only)"))
    axes.grid(True, which="both", linewidth=0.3, alpha=0.5)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def plot_roofline(
    efficiency: Mapping[str, Mapping[str, Any]],
    peaks: HardwarePeaks | None,
    path: Path,
    operator_points: list[Mapping[str, Any]] | None = None,
    device_name: str | None = None,
) -> Path:
    """Write the roofline PNG to `path` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = build_roofline_figure(efficiency, peaks, operator_points, device_name)
    figure.savefig(path, format="png")
    return path
