"""Roofline: roofs where the peaks put them, stage points where the efficiency puts them, a real PNG."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from llm_perf_opt.profiling.efficiency import stage_efficiency
from llm_perf_opt.profiling.hardware import lookup_peaks, with_calibration
from llm_perf_opt.profiling.roofline import build_roofline_figure, plot_roofline


@pytest.fixture
def peaks():
    return lookup_peaks("NVIDIA H100 80GB HBM3", "bf16")


@pytest.fixture
def efficiency(peaks):
    costs = {"prefill": {"flops": 4e12, "bytes": 2e10}, "decode": {"flops": 2e9, "bytes": 1.5e9},
             "vision/sam": {"flops": 1e12, "bytes": 1e9}, "copy": {"flops": 0.0, "bytes": 1e9}}
    return stage_efficiency(costs, {"prefill": 10.0, "decode": 1.0, "vision/sam": 3.0, "copy": 0.5}, peaks)


def _stage_offsets(axes) -> dict[str, tuple[float, float]]:
    return {c.get_label(): tuple(c.get_offsets()[0]) for c in axes.collections if c.get_label() != "operators"}


def test_stage_points_and_labels_sit_at_intensity_and_achieved_tflops(efficiency, peaks):
    figure = build_roofline_figure(efficiency, peaks)
    axes = figure.axes[0]
    offsets = _stage_offsets(axes)
    for stage in ("prefill", "decode", "vision/sam"):
        x, y = offsets[stage]
        assert x == pytest.approx(efficiency[stage]["intensity_flop_per_byte"])
        assert y == pytest.approx(efficiency[stage]["achieved_tflops"])
    texts = [t.get_text() for t in axes.texts]
    assert {"prefill", "decode", "vision/sam"} <= set(texts)
    assert any("copy" in t and "not on log axes" in t for t in texts)  # zero FLOPs: listed, not plotted
    assert "NVIDIA H100 80GB HBM3" in axes.get_title() and "bf16" in axes.get_title()
    assert axes.get_xscale() == axes.get_yscale() == "log"


def test_roof_is_bandwidth_times_intensity_below_the_ridge_and_peak_above(efficiency, peaks):
    axes = build_roofline_figure(efficiency, peaks).axes[0]
    roof = next(line for line in axes.lines if line.get_label().startswith("spec roof"))
    xs, ys = roof.get_data()
    expected = np.minimum(xs * peaks.peak_bandwidth_gbps / 1e3, peaks.peak_tflops)
    np.testing.assert_allclose(ys, expected)
    assert xs.min() < peaks.ridge_flop_per_byte < xs.max()


def test_calibrated_roof_and_operator_points_are_drawn(efficiency, peaks):
    calibrated = with_calibration(peaks, {"achievable_tflops": 790.0, "achievable_bandwidth_gbps": 3000.0})
    operators = [{"name": "aten::mm", "intensity_flop_per_byte": 400.0, "achieved_tflops": 600.0}]
    axes = build_roofline_figure(efficiency, calibrated, operator_points=operators).axes[0]
    labels = [line.get_label() for line in axes.lines]
    assert any(label.startswith("achievable roof") for label in labels)
    scatter = next(c for c in axes.collections if c.get_label() == "operators")
    assert tuple(scatter.get_offsets()[0]) == (400.0, 600.0)
    assert "aten::mm" in [t.get_text() for t in axes.texts]


def test_png_is_written_with_content(tmp_path, efficiency, peaks):
    path = plot_roofline(efficiency, peaks, tmp_path / "sub" / "roofline.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (round(5.5 * 120), 8 * 120)
    assert image[..., :3].std() > 0.05  # lines, points and text, not a blank canvas
    assert path.stat().st_size > 20_000


def test_without_peaks_points_are_still_plotted(tmp_path, efficiency):
    unpeaked = stage_efficiency({"prefill": {"flops": 1e9, "bytes": 1e7}}, {"prefill": 2.0}, None)
    axes = build_roofline_figure(unpeaked, None, device_name="x86_64").axes[0]
    assert not any("roof" in line.get_label() for line in axes.lines)
    assert "prefill" in _stage_offsets(axes)
    assert "no peaks known" in axes.get_title()
    assert plot_roofline(unpeaked, None, tmp_path / "r.png").stat().st_size > 5_000
