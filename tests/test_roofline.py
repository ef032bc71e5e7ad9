"""Roofline from a RunRecord: roofs where record.hardware puts them, stage points where each stage's efficiency
puts them (labelled by label, coloured by stage order), a real PNG."""

from __future__ import annotations

import matplotlib.colors
import matplotlib.image
import matplotlib.text
import numpy as np
import pandas as pd
import pytest

from llm_perf_opt.reports.plotting import DPI, stage_color
from llm_perf_opt.reports.roofline import build_roofline_figure, can_plot, plot_roofline
from records import COSTS, build_record, gpu_record, peaks_of

# vision › encoder moves bytes but has no FLOPs: it has efficiency numbers but no place on log axes.
ZERO_FLOP_COSTS = {**COSTS, "vision_encoder": (0.0, 1.0e9)}


def _points(axes) -> dict[str, tuple[float, float]]:
    return {c.get_label(): tuple(c.get_offsets()[0]) for c in axes.collections if c.get_label() != "operators"}


def test_stage_points_sit_at_intensity_and_achieved_tflops():
    record = gpu_record(costs=ZERO_FLOP_COSTS)
    axes = build_roofline_figure(record).axes[0]
    points = _points(axes)
    # prefill: 4e12 FLOPs / 2e10 bytes = 200 FLOP/B in 120 ms = 33.3 TFLOP/s; vision › sam 1000 FLOP/B, 20 TFLOP/s;
    # decode (per step, over TPOT 40 ms): 2e9 / 1.5e9 = 1.33 FLOP/B, 0.05 TFLOP/s.
    assert points == {"prefill": pytest.approx((200.0, 4e12 / 0.12 / 1e12)),
                      "vision › sam": pytest.approx((1000.0, 20.0)), "decode": pytest.approx((4 / 3, 0.05))}
    texts = [t.get_text() for t in axes.texts]
    assert {"prefill", "vision › sam", "decode"} <= set(texts)
    assert any(t.startswith("not on log axes") and "vision › encoder" in t for t in texts)
    assert "NVIDIA H100 80GB HBM3" in axes.get_title() and "bf16" in axes.get_title()
    assert axes.get_xscale() == axes.get_yscale() == "log"


def test_points_are_coloured_by_the_record_stage_order():
    record = gpu_record()
    axes = build_roofline_figure(record).axes[0]
    order = {stage.label: index for index, stage in enumerate(record.stages)}
    for collection in axes.collections:
        label = collection.get_label()
        expected = matplotlib.colors.to_rgba(stage_color(order[label]))
        assert tuple(collection.get_facecolor()[0]) == pytest.approx(expected), label


def test_roof_is_bandwidth_times_intensity_below_the_ridge_and_peak_above():
    record = gpu_record()
    axes = build_roofline_figure(record).axes[0]
    roof = next(line for line in axes.lines if line.get_label().startswith("spec roof"))
    xs, ys = roof.get_data()
    np.testing.assert_allclose(ys, np.minimum(xs * 3352.0 / 1e3, 989.4))  # H100 SXM bf16: 3352 GB/s, 989.4 TFLOP/s
    assert xs.min() < 989.4e12 / 3352e9 < xs.max()
    assert xs.min() == pytest.approx(4 / 3 / 10) and xs.max() == pytest.approx(1000.0 * 10)  # a decade around points


def test_calibrated_roof_and_operator_points_are_drawn():
    calibrated = peaks_of().model_copy(update={"achievable_tflops": 790.0, "achievable_bandwidth_gbps": 3000.0})
    operators = [{"name": "aten::mm", "intensity_flop_per_byte": 400.0, "achieved_tflops": 600.0}]
    axes = build_roofline_figure(gpu_record(hardware=calibrated), operator_points=operators).axes[0]
    achievable = next(line for line in axes.lines if line.get_label().startswith("achievable roof"))
    xs, ys = achievable.get_data()
    np.testing.assert_allclose(ys, np.minimum(xs * 3000.0 / 1e3, 790.0))
    scatter = next(c for c in axes.collections if c.get_label() == "operators")
    assert tuple(scatter.get_offsets()[0]) == (400.0, 600.0)
    assert "aten::mm" in [t.get_text() for t in axes.texts]


def test_png_is_written_with_content(tmp_path):
    path = plot_roofline(gpu_record(), tmp_path / "sub" / "roofline.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (round(5.5 * DPI), 8 * DPI)
    assert image[..., :3].std() > 0.05  # lines, points and text, not a blank canvas


def test_can_plot_needs_points_and_peaks(tmp_path):
    assert can_plot(gpu_record())
    assert not can_plot(build_record(costs=COSTS)), "no peaks: no roofs to set the points against"
    assert not can_plot(gpu_record(costs={"vision_encoder": (0.0, 1.0e9)})), "no plottable stage"
    assert not can_plot(build_record(hardware=peaks_of())), "no efficiency at all"
    # Drawn anyway (e.g. by hand), a record without peaks gives points only.
    axes = build_roofline_figure(build_record(costs=COSTS)).axes[0]
    assert not any("roof" in line.get_label() for line in axes.lines)
    assert set(_points(axes)) == {"prefill", "vision › sam", "decode"}
    assert "no peaks known" in axes.get_title()


# Seven stages within a few percent of each other on both axes: labels at a fixed offset would pile up.
CROWDED = {key: {"intensity_flop_per_byte": 120.0 * (1 + 0.04 * i), "achieved_tflops": 30.0 * (1 + 0.05 * i)}
           for i, key in enumerate(["e2e", "prefill", "vision", "vision_sam", "vision_encoder", "vision_projector",
                                    "decode"])}


def _text_boxes(figure, texts) -> list:
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    return [matplotlib.text.Text.get_window_extent(text, renderer) for text in texts]  # the text, not its leader


def _overlapping(boxes, names) -> list[tuple[str, str]]:
    return [(names[i], names[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if boxes[i].overlaps(boxes[j])]


def test_crowded_stage_labels_do_not_overlap_and_point_at_their_stage():
    record = build_record(hardware=peaks_of(), efficiency=CROWDED)
    figure = build_roofline_figure(record)
    axes = figure.axes[0]
    labels = {stage.label: stage for stage in record.stages}
    assert len(labels) == 7
    stage_texts = [t for t in axes.texts if t.get_text() in labels]
    assert sorted(t.get_text() for t in stage_texts) == sorted(labels)
    for text in stage_texts:  # each label is anchored at its own stage's point
        eff = labels[text.get_text()].efficiency
        assert text.xy == pytest.approx((eff.intensity_flop_per_byte, eff.achieved_tflops))
    texts = list(axes.texts)  # stage labels, the ridge label
    names = [t.get_text() for t in texts]
    boxes = _text_boxes(figure, texts)
    assert not _overlapping(boxes, names)
    frame = axes.get_window_extent()
    legend = axes.get_legend().get_window_extent()
    for box, name in zip(boxes, names):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, name
        assert not box.overlaps(legend), name


def test_comparison_efficiency_tick_labels_do_not_collide(tmp_path):
    from llm_perf_opt.compare import plots
    from llm_perf_opt.compare.summary import RATIO_PREFIX

    record = build_record(substages={("vision", "sam"): 50.0, ("vision", "encoder"): 30.0,
                                     ("vision", "projector"): 2.0, ("audio", "encoder"): 9.0})
    tree = record.tree()
    stages = [key for key in tree.keys() if key != "e2e"]
    assert len(stages) == 8
    runs = [f"{i:032x}" for i in range(5)]
    names = ["baseline-bf16-sdpa-tiled-1024", "candidate-fp8-kv-cache", "candidate-flash-attention-3",
             "candidate-cuda-graphs-decode", "candidate-global1024-image-mode"]
    summary = pd.DataFrame({"run_name": names, "baseline": [True] + [False] * 4}, index=runs)
    for i, stage in enumerate(stages):
        for kind in ("mfu_pct", "mbu_pct"):
            summary[f"{stage}/{kind}"] = np.linspace(10.0, 50.0, 5) / (i + 1)
            summary[f"{RATIO_PREFIX}{stage}/{kind}"] = 1.0
    figure = plots.efficiency_figure(summary, tree)
    assert figure is not None and len(figure.axes) == 2
    for axes in figure.axes:
        ticks = axes.get_xticklabels()
        texts = [t.get_text() for t in ticks]
        assert len(ticks) == 5 and all(text.replace("\n", "") for text in texts)
        for name, text in zip(names, texts):
            assert text.replace("\n", "").replace(" ", "").startswith(
                ("[B]" if name.startswith("baseline") else "") + name.replace(" ", "")[:10])
        assert not _overlapping(_text_boxes(figure, ticks), texts)
    assert plots.plot_efficiency(summary, tmp_path / "efficiency.png", tree).stat().st_size > 0
