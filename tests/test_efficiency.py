"""Per-stage efficiency maths, bound verdicts, metric names, and the ground-truth GEMM/copy workloads."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llm_perf_opt.models import build_workload
from llm_perf_opt.models.kernels import build_copy, build_gemm, gemm_flops
from llm_perf_opt.profiling.efficiency import (
    bound_tags,
    bound_verdict,
    efficiency_metrics,
    stage_efficiency,
    stage_times_from_summary,
)
from llm_perf_opt.profiling.hardware import HardwarePeaks, lookup_peaks, with_calibration
from llm_perf_opt.profiling.timed_pass import iter_timed_samples

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def cpu_peaks(tflops: float = 2.0, gbps: float = 40.0) -> HardwarePeaks:
    return lookup_peaks("x86_64", "fp32", {"peak_tflops": tflops, "peak_bandwidth_gbps": gbps})


def test_mfu_and_mbu_are_the_ratios_of_achieved_to_configured_peaks():
    costs = {"prefill": {"flops": 3.0e9, "bytes": 5.0e7}}
    result = stage_efficiency(costs, {"prefill": 2.5}, cpu_peaks(2.0, 40.0))["prefill"]
    seconds = 2.5 / 1e3
    assert result["achieved_tflops"] == pytest.approx(3.0e9 / seconds / 1e12, rel=1e-12)
    assert result["mfu"] == pytest.approx(3.0e9 / seconds / 1e12 / 2.0, rel=1e-12)
    assert result["achieved_gbps"] == pytest.approx(5.0e7 / seconds / 1e9, rel=1e-12)
    assert result["mbu"] == pytest.approx(5.0e7 / seconds / 1e9 / 40.0, rel=1e-12)
    assert result["intensity_flop_per_byte"] == pytest.approx(3.0e9 / 5.0e7, rel=1e-12)
    assert result["ridge_flop_per_byte"] == pytest.approx(2.0e12 / 40.0e9, rel=1e-12)
    assert result["attainable_tflops"] == pytest.approx(min(2.0, 60.0 * 40.0 / 1e3), rel=1e-12)
    assert result["mfu_achievable"] is None and result["mbu_achievable"] is None


def test_peak_of_one_gives_mfu_equal_to_achieved_tflops():
    result = stage_efficiency({"decode": {"flops": 7.0e8, "bytes": 1.0e9}}, {"decode": 0.7}, cpu_peaks(1.0, 1.0))
    assert result["decode"]["mfu"] == result["decode"]["achieved_tflops"]
    assert result["decode"]["mbu"] == result["decode"]["achieved_gbps"]


def test_achievable_peaks_give_a_second_mfu():
    peaks = with_calibration(cpu_peaks(2.0, 40.0), {"achievable_tflops": 1.6, "achievable_bandwidth_gbps": 30.0})
    row = stage_efficiency({"prefill": {"flops": 1.0e9, "bytes": 1.0e7}}, {"prefill": 1.0}, peaks)["prefill"]
    assert row["mfu_achievable"] == pytest.approx(row["achieved_tflops"] / 1.6, rel=1e-12)
    assert row["mbu_achievable"] == pytest.approx(row["achieved_gbps"] / 30.0, rel=1e-12)
    assert row["mfu_achievable"] > row["mfu"]


def test_each_stage_divides_its_own_flops_by_its_own_time():
    # prefill's FLOPs include the vision encoder's; the model stage holds the whole sample's.
    costs = {"vision/sam": {"flops": 4e9, "bytes": 1e8}, "prefill": {"flops": 10e9, "bytes": 4e8},
             "decode": {"flops": 1e8, "bytes": 2e8}, "model": {"flops": 10e9 + 7 * 1e8, "bytes": 4e8 + 7 * 2e8}}
    times = {"vision/sam": 2.0, "prefill": 5.0, "decode": 1.0, "model": 13.0}
    result = stage_efficiency(costs, times, cpu_peaks())
    for stage in costs:
        assert result[stage]["achieved_tflops"] == pytest.approx(costs[stage]["flops"] / (times[stage] * 1e-3) / 1e12)
        assert result[stage]["time_ms"] == times[stage]


def test_bound_verdicts():
    peaks = cpu_peaks(2.0, 40.0)  # ridge = 50 FLOP/byte
    costs = {"compute": {"flops": 1e9, "bytes": 1e7},       # intensity 100
             "memory": {"flops": 1e8, "bytes": 1e8},        # intensity 1
             "ridge": {"flops": 5e8, "bytes": 1e7},         # intensity 50 == ridge: compute
             "launch": {"flops": 1e9, "bytes": 1e7}}        # compute-heavy but the device idles
    times = dict.fromkeys(costs, 1.0)
    result = stage_efficiency(costs, times, peaks, busy_share={"launch": 0.3, "compute": 0.9})
    assert {s: r["bound"] for s, r in result.items()} == {"compute": "compute", "memory": "memory",
                                                         "ridge": "compute", "launch": "launch"}
    assert result["launch"]["busy_share"] == 0.3
    lenient = stage_efficiency(costs, times, peaks, busy_share={"launch": 0.3}, launch_busy_share=0.2)
    assert lenient["launch"]["bound"] == "compute"
    assert bound_verdict(None, 50.0, flops=1e9) == "compute"  # no bytes at all
    assert bound_verdict(10.0, None) is None                  # no peaks: nothing to compare with
    assert bound_verdict(10.0, None, busy_share=0.1) == "launch"


def test_without_peaks_only_achieved_rates_are_reported():
    result = stage_efficiency({"prefill": {"flops": 1e9, "bytes": 1e8}}, {"prefill": 4.0}, None)["prefill"]
    assert result["achieved_tflops"] > 0 and result["mfu"] is None and result["mbu"] is None
    assert result["bound"] is None
    assert efficiency_metrics({"prefill": result}) == {
        "efficiency/prefill_tflops": result["achieved_tflops"],
        "efficiency/prefill_gbps": result["achieved_gbps"],
        "efficiency/prefill_intensity": result["intensity_flop_per_byte"],
    }


def test_stages_without_a_time_are_left_out():
    result = stage_efficiency({"prefill": {"flops": 1.0, "bytes": 1.0}, "vision/sam": {"flops": 1.0, "bytes": 1.0}},
                              {"prefill": 1.0, "vision/sam": float("nan")}, cpu_peaks())
    assert list(result) == ["prefill"]


def test_metric_names_and_bound_tags():
    result = stage_efficiency({"vision/sam": {"flops": 1e9, "bytes": 1e7}, "decode": {"flops": 1e7, "bytes": 1e8}},
                              {"vision/sam": 1.0, "decode": 1.0}, cpu_peaks())
    metrics = efficiency_metrics(result)
    for suffix in ("tflops", "mfu", "gbps", "mbu", "intensity"):
        assert f"efficiency/vision_sam_{suffix}" in metrics and f"efficiency/decode_{suffix}" in metrics
    assert metrics["efficiency/vision_sam_mfu"] == result["vision/sam"]["mfu"]
    assert all(isinstance(v, float) for v in metrics.values())
    assert bound_tags(result) == {"bound.vision/sam": "compute", "bound.decode": "memory"}


def test_stage_times_come_from_the_matching_summary_columns():
    summary = {"prefill_ms": {"mean": 10.0}, "tpot_ms": {"mean": 2.0}, "decode_ms": {"mean": 14.0},
               "e2e_ms": {"mean": 25.0}, "vision_sam_ms": {"mean": 3.0}, "vision_ms": {"mean": 6.0}}
    times = stage_times_from_summary(summary, ["prefill", "decode", "model", "vision/sam", "vision", "vision/encoder"])
    assert times == {"prefill": 10.0, "decode": 2.0, "model": 25.0, "vision/sam": 3.0, "vision": 6.0}


# -- ground-truth workloads -------------------------------------------------------------------------
def test_gemm_forward_is_exactly_2mnk_flops():
    built = build_gemm(m=24, n=40, k=16)
    with FlopCounterMode(display=False) as counter:
        logits = built["model"](**built["inputs"][0])
    assert counter.get_total_flops() == gemm_flops(24, 40, 16) == 2 * 24 * 40 * 16
    assert logits.shape == (1, 24, 40)
    assert built["inputs"][0]["input_ids"].shape == (1, 24)


def test_copy_forward_moves_the_buffer():
    built = build_copy(num_bytes=4096, dtype=torch.float32)
    model = built["model"]
    assert model.src.numel() * model.src.element_size() == 4096
    with FlopCounterMode(display=False) as counter:
        logits = model(**built["inputs"][0])
    assert counter.get_total_flops() == 0
    assert torch.equal(model.dst, model.src) and logits.shape == (1, 1, 8)
    with pytest.raises(ValueError):
        build_copy(num_bytes=6, dtype=torch.float32)


def _compose_model(name: str, overrides: list[str]):
    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra.compose("config", overrides=[f"model={name}", *overrides]).model


def test_gemm_config_runs_through_the_timed_pass_and_efficiency():
    model_cfg = _compose_model("gemm", ["model.factory.m=32", "model.factory.n=48", "model.factory.k=16"])
    workload = build_workload(model_cfg, [], torch.device("cpu"))
    assert workload.inputs[0].prompt_tokens == 32
    rows = [r.row for r in iter_timed_samples(workload, new_tokens=2, warmup=1, repeats=2)]
    prefill_ms = sum(r["prefill_ms"] for r in rows) / len(rows)
    flops = gemm_flops(32, 48, 16)
    result = stage_efficiency({"prefill": {"flops": flops, "bytes": (32 * 16 + 16 * 48 + 32 * 48) * 4}},
                              {"prefill": prefill_ms}, cpu_peaks(1.0, 10.0))
    assert result["prefill"]["mfu"] == pytest.approx(flops / (prefill_ms * 1e-3) / 1e12 / 1.0)


def test_copy_config_builds_its_workload():
    model_cfg = _compose_model("copy", ["model.factory.num_bytes=4096"])
    workload = build_workload(model_cfg, [], torch.device("cpu"))
    assert workload.model.dst.numel() * workload.model.dst.element_size() == 4096
    rows = [r.row for r in iter_timed_samples(workload, new_tokens=1, warmup=0, repeats=1)]
    assert rows[0]["prefill_ms"] > 0


def test_analytic_stage_cost_records_are_accepted():
    from llm_perf_opt.profiling.analytic import StageCost

    cost = StageCost(flops=2e9, bytes_read=3e7, bytes_written=1e7)
    from_record = stage_efficiency({"prefill": cost}, {"prefill": 1.0}, cpu_peaks())["prefill"]
    from_mapping = stage_efficiency({"prefill": {"flops": 2e9, "bytes": 4e7}}, {"prefill": 1.0}, cpu_peaks())["prefill"]
    assert from_record == from_mapping
