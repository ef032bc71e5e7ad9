"""The roofline plot (log-log PNG) of one run, from its RunRecord: where each stage sits against the roofs.

x = arithmetic intensity (FLOP/byte), y = achieved TFLOP/s, both from each stage's `efficiency`;
a point is coloured by its place in the record's stage order and labelled with the stage's label in
that colour, placed where it overlaps no other label, marker or the legend (plotting.place_labels: a
label moved off its point gets a leader line to it).
Roofs come from `record.hardware`: memory roof y = x * bandwidth (GB/s) / 1e3 and compute roof
y = peak TFLOP/s, meeting at the ridge point; dashed roofs for the calibrated (achievable) peaks when
present. Operator points are optional dicts with `name`, `intensity_flop_per_byte` and
`achieved_tflops`. Stages whose efficiency has no positive intensity or achieved rate cannot sit on
log axes: they are listed in a note on the plot instead.

Drawn in the project's one plotting style (reports/plotting.py): no pyplot state, no display needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from llm_perf_opt.analysis.peaks import ridge_point
from llm_perf_opt.record import Peaks, RunRecord, StageRecord
from llm_perf_opt.reports.plotting import STYLE, new_figure, place_labels, save_figure, stage_color, style_axes
from llm_perf_opt.reports.view import finite

ROOFLINE_SIZE = (8.0, 5.5)


def _positive(value: Any) -> float | None:
    value = finite(value)
    return value if value is not None and value > 0 else None


def stage_point(stage: StageRecord) -> tuple[float, float] | None:
    """(intensity FLOP/byte, achieved TFLOP/s) of a stage when both are positive and finite."""
    if stage.efficiency is None:
        return None
    x, y = _positive(stage.efficiency.intensity_flop_per_byte), _positive(stage.efficiency.achieved_tflops)
    return (x, y) if x is not None and y is not None else None


def has_peaks(peaks: Peaks | None) -> bool:
    return peaks is not None and any(_positive(v) is not None for v in (
        peaks.peak_tflops, peaks.peak_bandwidth_gbps, peaks.achievable_tflops, peaks.achievable_bandwidth_gbps))


def can_plot(record: RunRecord) -> bool:
    """A roofline needs at least one stage point and some roof to set it against."""
    return has_peaks(record.hardware) and any(stage_point(stage) is not None for stage in record.stages)


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _operator_point(row: Mapping[str, Any]) -> tuple[float, float] | None:
    x, y = _positive(row.get("intensity_flop_per_byte")), _positive(row.get("achieved_tflops"))
    return (x, y) if x is not None and y is not None else None


def _ridge(tflops: float | None, gbps: float | None, stored: float | None) -> float | None:
    return stored if _positive(stored) is not None else ridge_point(tflops, gbps)


def _draw_roof(axes, xs: np.ndarray, tflops: float | None, gbps: float | None, ridge: float | None, style: str,
               label: str, label_dy: int = 4) -> None:
    tflops, gbps = _positive(tflops), _positive(gbps)
    if tflops is None and gbps is None:
        return
    memory = xs * gbps / 1e3 if gbps is not None else np.full_like(xs, np.inf)
    compute = np.full_like(xs, tflops if tflops is not None else np.inf)
    axes.plot(xs, np.minimum(memory, compute), style, color="black", linewidth=1.5, label=label)
    if ridge is not None and tflops is not None and gbps is not None:
        axes.axvline(ridge, color="grey", linestyle=":", linewidth=0.8)
        axes.annotate(f"ridge {ridge:.0f} FLOP/B", (ridge, tflops), textcoords="offset points", xytext=(4, label_dy),
                      fontsize=STYLE["tick_size"] - 1, color="grey")


def build_roofline_figure(record: RunRecord, operator_points: list[Mapping[str, Any]] | None = None) -> Figure:
    """The roofline of `record` as a matplotlib Figure (one point per stage with efficiency numbers)."""
    figure, axes = new_figure(*ROOFLINE_SIZE)
    peaks = record.hardware if has_peaks(record.hardware) else None
    points = [(index, stage, point) for index, stage in enumerate(record.stages)
              if (point := stage_point(stage)) is not None]
    skipped = [stage.label for stage in record.stages if stage.efficiency is not None and stage_point(stage) is None]
    operators = [(row, point) for row in operator_points or [] if (point := _operator_point(row)) is not None]

    xs_points = [p[0] for _, _, p in points] + [p[0] for _, p in operators]
    ys_points = [p[1] for _, _, p in points] + [p[1] for _, p in operators]
    spec_ridge = achievable_ridge = None
    if peaks is not None:
        spec_ridge = _ridge(peaks.peak_tflops, peaks.peak_bandwidth_gbps, peaks.ridge_flop_per_byte)
        achievable_ridge = _ridge(peaks.achievable_tflops, peaks.achievable_bandwidth_gbps,
                                  peaks.achievable_ridge_flop_per_byte)
    anchors = xs_points + [r for r in (spec_ridge, achievable_ridge) if r]
    low, high = (min(anchors) / 10, max(anchors) * 10) if anchors else (0.1, 1e4)
    xs = np.logspace(np.log10(low), np.log10(high), 256)

    if peaks is not None:
        _draw_roof(axes, xs, peaks.peak_tflops, peaks.peak_bandwidth_gbps, spec_ridge, "-",
                   f"spec roof ({_number(peaks.peak_tflops)} TFLOP/s, "
                   f"{_number(peaks.peak_bandwidth_gbps)} GB/s)")
        if peaks.achievable_tflops is not None or peaks.achievable_bandwidth_gbps is not None:
            _draw_roof(axes, xs, peaks.achievable_tflops, peaks.achievable_bandwidth_gbps, achievable_ridge, "--",
                       "achievable roof (calibrated)", label_dy=-14)
    labels = []
    for index, stage, (x, y) in points:
        axes.scatter([x], [y], s=60, zorder=3, color=stage_color(index), label=stage.label)
        labels.append((stage.label, (x, y), {"fontsize": STYLE["tick_size"], "color": stage_color(index)}))
    if operators:
        axes.scatter([p[0] for _, p in operators], [p[1] for _, p in operators], s=14, marker="x", color="dimgrey",
                     zorder=2, label="operators")
        labels += [(str(row.get("name", "")), point, {"fontsize": STYLE["tick_size"] - 2, "color": "dimgrey"})
                   for row, point in operators]
    if skipped:
        axes.text(0.01, 0.01, "not on log axes (no FLOPs or no bytes): " + ", ".join(skipped),
                  transform=axes.transAxes, fontsize=STYLE["tick_size"] - 1, color="grey")

    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low, high)
    roofs = [v for v in (peaks.peak_tflops, peaks.achievable_tflops) if _positive(v)] if peaks else []
    heights = ys_points + roofs
    if heights:
        top = max(heights)
        bottom = min(ys_points) if ys_points else top / 1e4
        axes.set_ylim(min(bottom / 5, top / 1e4), top * 3)
    device = peaks.name if peaks else (record.env.get("device_name") or "unknown device")
    dtype = peaks.dtype if peaks else record.workload.dtype
    style_axes(axes, title=f"Roofline: {device}, {dtype}" + ("" if peaks else " (no peaks known: points only)"),
               xlabel="arithmetic intensity (FLOP/byte)", ylabel="achieved TFLOP/s")
    axes.grid(True, which="both", linewidth=0.3, alpha=STYLE["grid_alpha"])
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=STYLE["legend_size"] - 1, loc="lower right")
    place_labels(figure, axes, labels)  # last: it measures everything else on the axes
    return figure


def plot_roofline(record: RunRecord, path: str | Path, operator_points: list[Mapping[str, Any]] | None = None) -> Path:
    """Write the roofline PNG of `record` to `path` and return it."""
    return save_figure(build_roofline_figure(record, operator_points), path)
