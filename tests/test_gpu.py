"""CUDA paths: run on a GPU host (`python -m pytest -m gpu`); skipped on CPU-only machines."""

from __future__ import annotations

import json
import types

import pandas as pd
import pytest
import torch

from conftest import FAST, compose_config, requires_cuda
from llm_perf_opt.data import load_pages
from llm_perf_opt.models import build_workload
from llm_perf_opt.passes.clock import StageClock
from llm_perf_opt.passes.timed import TimedResult, iter_timed_samples
from llm_perf_opt.runners.profile import run_profile

pytestmark = [pytest.mark.gpu, requires_cuda]


def test_cuda_clock_times_device_work_not_launches():
    clock = StageClock("cuda")
    a = torch.randn(4096, 4096, device="cuda")
    clock.synchronize()
    start = clock.mark()
    for _ in range(20):
        a = a @ a / 64.0
    end = clock.mark()
    clock.synchronize()
    # 20 GEMMs of 2*4096^3 FLOPs run far longer on the device than launching them takes on the host.
    assert clock.kind == "cuda_event" and clock.elapsed_ms(start, end) > 0.5


def test_tiny_deepseek_on_cuda_nests_and_adds_up():
    cfg = compose_config(*FAST, "device=cuda", "model.dtype=bf16")
    workload = build_workload(cfg.model, load_pages(cfg.dataset), torch.device("cuda"), 0)
    settings = types.SimpleNamespace(new_tokens=8, warmup=2, repeats=3, stop_at_eos=False)
    records = list(iter_timed_samples(workload, settings))
    samples = TimedResult.from_samples(records, workload).samples
    assert len(samples) == 3 * len(workload.inputs)
    for row in samples.to_dict(orient="records"):
        assert row["clock"] == "cuda_event"
        assert 0 < row["vision_sam_ms"] and 0 < row["vision_ms"] <= row["prefill_ms"]
        staged = row["prefill_ms"] + row["decode_ms"]
        assert staged <= row["e2e_ms"] + 0.05  # events sit inside the host window (50 us of event resolution slack)
        assert row["prefill_peak_mem_mib"] > 0 and row["decode_peak_mem_mib"] > 0


def test_full_run_on_cuda_records_memory_energy_and_efficiency_metrics(tmp_path):
    cfg = compose_config(*FAST, "device=cuda", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")
    outcome = run_profile(cfg, tmp_path / "run")
    assert outcome.status == "FINISHED", outcome.error
    env = json.loads((outcome.run_dir / "env.json").read_text())
    assert env["device_name"].startswith("NVIDIA") and env["cuda"] and env["device_uuid"].startswith("GPU-")
    metrics = outcome.metrics
    assert metrics["prefill/peak_mem_mib_max"] > 0 and metrics["decode/peak_mem_mib_max"] > 0
    assert (pd.read_csv(outcome.run_dir / "samples.csv")["clock"] == "cuda_event").all()
    # Busy share and overhead come from the profiled pass's device spans; MFU from counted FLOPs over timed ms.
    rec = outcome.record
    assert 0 < rec.stage("prefill").profiled.busy_share <= 1.001
    assert rec.stage("prefill").profiled.profiler_overhead_ratio > 0
    assert rec.stage("decode").profiled.profiler_overhead_ratio > 0
    assert rec.stage("vision_sam").efficiency.achieved_tflops > 0 and rec.stage("decode").flops > 0
    assert metrics["vision_sam/mfu_pct"] > 0 and metrics["decode/mbu_pct"] > 0
    assert outcome.record.profiled_pass.time_basis == "device_span"
    if outcome.record.energy is not None:  # NVML present: energy per stage and the device readings
        assert metrics["e2e/energy_j_mean"] > 0 and metrics["decode/energy_j_per_token"] > 0
        assert metrics["gpu/power_w_max"] > 0


def _greedy_tokens(workload, prepared, new_tokens: int) -> torch.Tensor:
    with torch.inference_mode():
        return workload.greedy_tokens(prepared, new_tokens)


def test_reduce_overhead_decode_generates_the_eager_tokens_on_cuda():
    """Static cache + torch.compile(mode="reduce-overhead") (CUDA graphs): the eager loop's greedy tokens."""
    from llm_perf_opt.models.decoding import compile_decode

    base = [*FAST, "device=cuda", "model.dtype=fp32", "model.moe_routing=model"]
    pages = load_pages(compose_config(*base).dataset)
    eager_cfg = compose_config(*base)
    eager = build_workload(eager_cfg.model, pages, torch.device("cuda"), 0)
    graphs_cfg = compose_config(*base, "model.cache=static", "model.compile=reduce-overhead")
    graphs = build_workload(graphs_cfg.model, pages, torch.device("cuda"), 0)
    graphs.model.load_state_dict(eager.model.state_dict())  # the same random weights
    assert compile_decode(graphs, 12) > 0
    prepared = graphs.batches[0]
    expected = _greedy_tokens(eager, eager.batches[0], 12)
    assert torch.equal(_greedy_tokens(graphs, prepared, 12), expected)
    assert torch.equal(_greedy_tokens(graphs, prepared, 12), expected)  # replayed graphs, reset cache


def test_reduce_overhead_run_on_cuda_times_each_step(tmp_path):
    cfg = compose_config(*FAST, "device=cuda", "model.cache=static", "model.compile=reduce-overhead",
                         "profiling.new_tokens=16", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")
    outcome = run_profile(cfg, tmp_path / "run")
    assert outcome.status == "FINISHED", outcome.error
    rec = outcome.record
    assert (rec.workload.cache, rec.workload.compile) == ("static", "reduce-overhead")
    assert rec.workload.compile_s > 0 and outcome.metrics["run/compile_s"] == pytest.approx(rec.workload.compile_s,
                                                                                            rel=1e-6)
    steps = pd.read_csv(outcome.run_dir / "decode_steps.csv")
    assert len(steps) == 15 * rec.samples and (steps["decode_step_ms"] > 0).all()
    samples = pd.read_csv(outcome.run_dir / "samples.csv")
    assert (samples["vision_sam_ms"] > 0).all() and (samples["prefill_ms"] + samples["decode_ms"]
                                                     <= samples["e2e_ms"] + 0.05).all()
