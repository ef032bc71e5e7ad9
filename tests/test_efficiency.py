"""Per-stage efficiency maths, bound verdicts, metric names and tags, and the ground-truth GEMM/copy workloads."""

from __future__ import annotations

import types

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llm_perf_opt.analysis.efficiency import bound_verdict, stage_efficiency
from llm_perf_opt.analysis.peaks import HardwarePeaks, lookup_peaks, with_calibration
from llm_perf_opt.assembly import RunParts, build_record
from llm_perf_opt.config import compose
from llm_perf_opt.models import build_workload
from llm_perf_opt.models.kernels import build_copy, build_gemm, gemm_flops, gemm_min_bytes
from llm_perf_opt.passes.counted import run_counted_pass
from llm_perf_opt.passes.timed import TimedResult, iter_timed_samples
from llm_perf_opt.record import RunInfo, WorkloadInfo, record_tags
from llm_perf_opt.schema import StageTree


def cpu_peaks(tflops: float = 2.0, gbps: float = 40.0) -> HardwarePeaks:
    return lookup_peaks("x86_64", "fp32", {"peak_tflops": tflops, "peak_bandwidth_gbps": gbps})


def test_mfu_and_mbu_are_the_ratios_of_achieved_to_configured_peaks():
    # 3 GFLOP and 50 MB in 2.5 ms against 2 TFLOP/s and 40 GB/s peaks.
    costs = {"prefill": {"flops": 3.0e9, "bytes": 5.0e7}}
    result = stage_efficiency(costs, {"prefill": 2.5}, cpu_peaks(2.0, 40.0))["prefill"]
    assert result["achieved_tflops"] == pytest.approx(1.2, rel=1e-12)
    assert result["mfu"] == pytest.approx(0.6, rel=1e-12)
    assert result["achieved_gbps"] == pytest.approx(20.0, rel=1e-12)
    assert result["mbu"] == pytest.approx(0.5, rel=1e-12)
    assert result["intensity_flop_per_byte"] == pytest.approx(60.0, rel=1e-12)
    assert result["ridge_flop_per_byte"] == pytest.approx(50.0, rel=1e-12)
    assert result["attainable_tflops"] == pytest.approx(2.0, rel=1e-12)  # min(2, 60 x 40 GB/s = 2.4)
    assert result["mfu_achievable"] is None and result["mbu_achievable"] is None
    # Below the ridge the memory roof binds: 10 FLOP/byte x 40 GB/s = 0.4 TFLOP/s.
    low = stage_efficiency({"decode": {"flops": 1.0e9, "bytes": 1.0e8}}, {"decode": 1.0}, cpu_peaks(2.0, 40.0))
    assert low["decode"]["attainable_tflops"] == pytest.approx(0.4, rel=1e-12)


def test_achievable_peaks_give_a_second_mfu():
    # 1 GFLOP and 10 MB in 1 ms: 1 TFLOP/s and 10 GB/s, against 1.6 TFLOP/s and 30 GB/s measured.
    peaks = with_calibration(cpu_peaks(2.0, 40.0), {"achievable_tflops": 1.6, "achievable_bandwidth_gbps": 30.0})
    row = stage_efficiency({"prefill": {"flops": 1.0e9, "bytes": 1.0e7}}, {"prefill": 1.0}, peaks)["prefill"]
    assert row["mfu_achievable"] == pytest.approx(0.625, rel=1e-12)
    assert row["mbu_achievable"] == pytest.approx(1 / 3, rel=1e-12)
    assert row["mfu"] == pytest.approx(0.5, rel=1e-12) and row["mbu"] == pytest.approx(0.25, rel=1e-12)


def test_each_stage_divides_its_own_flops_by_its_own_time():
    # prefill's FLOPs include the vision encoder's; e2e holds the whole sample's. Nothing is summed across
    # nested stages: each rate is that stage's FLOPs over that stage's time.
    costs = {"vision_sam": {"flops": 4e9, "bytes": 1e8}, "prefill": {"flops": 10e9, "bytes": 4e8},
             "decode": {"flops": 1e8, "bytes": 2e8}, "e2e": {"flops": 10e9 + 7 * 1e8, "bytes": 4e8 + 7 * 2e8}}
    times = {"vision_sam": 2.0, "prefill": 5.0, "decode": 1.0, "e2e": 13.0}
    result = stage_efficiency(costs, times, cpu_peaks())
    expected_tflops = {"vision_sam": 2.0, "prefill": 2.0, "decode": 0.1, "e2e": 10.7 / 13.0}
    assert {stage: row["achieved_tflops"] for stage, row in result.items()} == pytest.approx(expected_tflops)
    assert {stage: row["time_ms"] for stage, row in result.items()} == times


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


def _record(tree: StageTree, **parts):
    workload = WorkloadInfo(family="test", dtype="fp32", device="cpu", new_tokens=8, warmup=0, repeats=2, inputs=[])
    return build_record(RunParts(tree=tree, run=RunInfo(
        run_dir="run", run_uid="test-run", started_at="t0"), workload=workload, env={},
                                 **parts))


def test_without_peaks_only_achieved_rates_are_reported():
    result = stage_efficiency({"prefill": {"flops": 1e9, "bytes": 1e8}}, {"prefill": 4.0}, None)["prefill"]
    assert result["achieved_tflops"] == pytest.approx(0.25) and result["mfu"] is None and result["mbu"] is None
    assert result["bound"] is None
    samples = pd.DataFrame({"prefill_ms": [4.0, 4.0]})
    record = _record(StageTree.from_paths([]), samples=samples, stage_costs={"prefill": {"flops": 1e9, "bytes": 1e8}})
    prefill = record.stage("prefill")
    assert (prefill.flops, prefill.bytes) == (1e9, 1e8)
    assert prefill.efficiency.achieved_tflops == pytest.approx(0.25)
    assert prefill.efficiency.achieved_gbps == pytest.approx(25.0)
    assert prefill.efficiency.intensity_flop_per_byte == pytest.approx(10.0)
    # MLflow gets the percentages only: without peaks there are none, and no rate keys either.
    assert not [k for k in record.metrics if k.startswith("prefill/") and ("mfu" in k or "mbu" in k)]
    assert record_tags(record) == {}


def test_stages_without_a_time_are_left_out():
    result = stage_efficiency({"prefill": {"flops": 1.0, "bytes": 1.0}, "vision_sam": {"flops": 1.0, "bytes": 1.0}},
                              {"prefill": 1.0, "vision_sam": float("nan")}, cpu_peaks())
    assert list(result) == ["prefill"]


def test_record_takes_each_stage_time_from_its_own_column_and_names_metrics_and_tags():
    """Through the run record: decode per step over tpot, e2e over e2e_ms, groups over their own column.

    Metric names are <stage>/<quantity> (decode's costs per step: decode/step_flops), tags <stage>/bound.
    """
    tree = StageTree.from_paths([("vision", "sam"), ("vision", "encoder")])
    samples = pd.DataFrame({"prefill_ms": [9.0, 11.0], "vision_sam_ms": [2.0, 4.0], "vision_encoder_ms": [1.0, 1.0],
                            "vision_ms": [3.0, 5.0], "decode_ms": [14.0, 14.0], "decode_tpot_ms": [2.0, 2.0],
                            "e2e_ms": [24.0, 26.0]})
    costs = {"prefill": {"flops": 1e10, "bytes": 1e8}, "vision_sam": {"flops": 3e9, "bytes": 3e7},
             "vision": {"flops": 4e9, "bytes": 4e8}, "decode": {"flops": 2e7, "bytes": 2e8},
             "e2e": {"flops": 1e10 + 7 * 2e7, "bytes": 1e8 + 7 * 2e8}}
    record = _record(tree, samples=samples, stage_costs=costs, peaks=cpu_peaks(2.0, 40.0))
    time_ms = {s.key: s.efficiency.time_ms for s in record.stages if s.efficiency is not None}
    assert time_ms == {"prefill": 10.0, "vision_sam": 3.0, "vision": 4.0, "decode": 2.0, "e2e": 25.0}
    assert record.stage("vision_encoder").efficiency is None, "no costs, no rates"
    eff = {s.key: s.efficiency for s in record.stages if s.efficiency is not None}
    assert eff["vision_sam"].achieved_tflops == pytest.approx(1.0)      # 3 GFLOP in 3 ms
    assert eff["vision_sam"].mfu == pytest.approx(0.5)
    assert eff["decode"].achieved_tflops == pytest.approx(0.01)         # 20 MFLOP per step in 2 ms
    assert eff["decode"].mbu == pytest.approx(2.5)                      # 200 MB in 2 ms = 100 GB/s over 40
    assert eff["e2e"].achieved_tflops == pytest.approx(10.14e9 / 25e-3 / 1e12)
    metrics = record.metrics  # MLflow: MFU and MBU in percent, in each stage's section
    assert metrics["vision_sam/mfu_pct"] == pytest.approx(50.0) and metrics["decode/mbu_pct"] == pytest.approx(250.0)
    for stage in ("vision_sam", "decode", "prefill", "vision", "e2e"):
        assert f"{stage}/mfu_pct" in metrics and f"{stage}/mbu_pct" in metrics, stage
    assert not [k for k in metrics if k.startswith("efficiency/")], "the old spelling is gone"
    # Ridge 50 FLOP/byte: vision_sam 100 (compute), vision 10 and decode 0.1 (memory).
    assert record_tags(record) == {"prefill/bound": "compute", "vision_sam/bound": "compute",
                                   "vision/bound": "memory", "decode/bound": "memory", "e2e/bound": "memory"}


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
    return compose("config", [f"model={name}", *overrides]).model


def _timed(workload, new_tokens: int, warmup: int, repeats: int) -> pd.DataFrame:
    settings = types.SimpleNamespace(new_tokens=new_tokens, warmup=warmup, repeats=repeats, stop_at_eos=False)
    return TimedResult.from_samples(list(iter_timed_samples(workload, settings)), workload).samples


def test_gemm_config_runs_through_the_timed_and_counted_passes():
    model_cfg = _compose_model("gemm", ["model.factory.m=32", "model.factory.n=48", "model.factory.k=16"])
    workload = build_workload(model_cfg, [], torch.device("cpu"))
    assert workload.inputs[0].prompt_tokens == 32
    samples = _timed(workload, new_tokens=2, warmup=1, repeats=2)
    assert len(samples) == 2 and (samples["prefill_ms"] > 0).all() and (samples["decode_tpot_ms"] > 0).all()
    # The counted pass sees exactly the one 2*M*N*K matmul per forward; bytes are the factory's declared minimum.
    counted = run_counted_pass(workload, types.SimpleNamespace(decode_steps=1), new_tokens=2)
    flops, nbytes = gemm_flops(32, 48, 16), gemm_min_bytes(32, 48, 16, 4)
    assert counted.stage_costs["prefill"] == {"flops": flops, "bytes": nbytes}
    assert counted.stage_costs["decode"]["flops"] == flops
    assert counted.stage_costs["e2e"] == {"flops": 2 * flops, "bytes": 2 * nbytes}  # prefill + 1 decode step


def test_copy_config_builds_its_workload():
    model_cfg = _compose_model("copy", ["model.factory.num_bytes=4096"])
    workload = build_workload(model_cfg, [], torch.device("cpu"))
    assert workload.model.dst.numel() * workload.model.dst.element_size() == 4096
    samples = _timed(workload, new_tokens=1, warmup=0, repeats=1)
    assert samples["prefill_ms"].iloc[0] > 0
    counted = run_counted_pass(workload, types.SimpleNamespace(decode_steps=1), new_tokens=1)
    assert counted.stage_costs["prefill"] == {"flops": 0.0, "bytes": 2 * 4096.0}


def test_analytic_stage_cost_records_are_accepted():
    from llm_perf_opt.passes.analytic import StageCost

    cost = StageCost(flops=2e9, bytes_read=3e7, bytes_written=1e7)
    from_record = stage_efficiency({"prefill": cost}, {"prefill": 1.0}, cpu_peaks())["prefill"]
    from_mapping = stage_efficiency({"prefill": {"flops": 2e9, "bytes": 4e7}}, {"prefill": 1.0}, cpu_peaks())["prefill"]
    assert from_record == from_mapping
