"""CUDA paths: run on a GPU host (`python -m pytest -m gpu`); skipped on CPU-only machines."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from conftest import FAST, compose_config, requires_cuda
from llm_perf_opt.data import load_pages
from llm_perf_opt.models import build_workload
from llm_perf_opt.profile_run import run_profile
from llm_perf_opt.profiling.clock import StageClock
from llm_perf_opt.profiling.timed_pass import iter_timed_samples

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
    records = list(iter_timed_samples(workload, new_tokens=8, warmup=2, repeats=3))
    for record in records:
        row = record.row
        assert row["clock"] == "cuda_event"
        assert 0 < row["vision_ms"] <= row["prefill_ms"]
        staged = row["prefill_ms"] + row["decode_ms"]
        assert staged <= row["e2e_ms"] + 0.05  # events sit inside the host window (50 us of event resolution slack)
        assert row["prefill_peak_mem_mib"] > 0 and row["decode_peak_mem_mib"] > 0


def test_full_run_on_cuda_records_memory_metrics(tmp_path):
    cfg = compose_config(*FAST, "device=cuda", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")
    outcome = run_profile(cfg, tmp_path / "run")
    assert outcome.status == "FINISHED"
    env = json.loads((outcome.run_dir / "env.json").read_text())
    assert env["device_name"].startswith("NVIDIA") and env["cuda"]
    assert outcome.metrics["memory/prefill_peak_mib_max"] > 0
    assert (pd.read_csv(outcome.run_dir / "samples.csv")["clock"] == "cuda_event").all()
