"""Ground truth through whole runs: models of exactly known FLOPs and bytes, a configured peak."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from conftest import FAST, compose_config
from llm_perf_opt import record
from llm_perf_opt.runners.profile import run_profile

VOCAB, HIDDEN, LAYERS, PROMPT = 256, 64, 3, 32
PEAK_TFLOPS, PEAK_GBPS = 0.5, 20.0


def test_linear_stack_gives_exact_flops_and_mfu_equals_flops_over_time_over_peak(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config(*FAST, "model=custom", f"++model.factory.vocab_size={VOCAB}",
                         f"++model.factory.hidden_size={HIDDEN}", f"++model.factory.num_layers={LAYERS}",
                         f"model.prompt_tokens={PROMPT}", f"hardware.peak_tflops={PEAK_TFLOPS}",
                         f"hardware.peak_bandwidth_gbps={PEAK_GBPS}", f"tracking.uri={uri}")
    outcome = run_profile(cfg, tmp_path / "run")
    assert outcome.status == "FINISHED"
    run = record.load(outcome.run_dir)
    prefill, decode, e2e = run.stage("prefill"), run.stage("decode"), run.stage("e2e")
    # Multiply-add = 2 FLOPs; bias-free Linear layers and the lm_head over every position.
    per_token = 2 * (LAYERS * HIDDEN**2 + HIDDEN * VOCAB)
    assert prefill.flops == PROMPT * per_token
    assert decode.flops == per_token  # no KV cache: a decode step feeds one token
    assert run.stage("body_layers").flops == PROMPT * 2 * LAYERS * HIDDEN**2
    assert run.stage("body").flops == PROMPT * per_token  # the group: layers + lm_head
    weights_bytes = 4 * (LAYERS * HIDDEN**2 + HIDDEN * VOCAB)  # fp32
    assert decode.bytes >= weights_bytes
    samples = pd.read_csv(outcome.run_dir / "samples.csv")
    prefill_s = samples["prefill_ms"].mean() / 1e3
    tpot_s = samples["decode_tpot_ms"].mean() / 1e3
    assert prefill.efficiency.mfu == pytest.approx(PROMPT * per_token / prefill_s / (PEAK_TFLOPS * 1e12), rel=1e-12)
    assert decode.efficiency.mfu == pytest.approx(per_token / tpot_s / (PEAK_TFLOPS * 1e12), rel=1e-12)
    assert decode.efficiency.mbu == pytest.approx(decode.bytes / tpot_s / (PEAK_GBPS * 1e9), rel=1e-12)
    # The whole sample's FLOPs over the whole sample's time: prefill and decode, nothing counted twice.
    new_tokens = int(cfg.profiling.new_tokens)
    sample_flops = PROMPT * per_token + (new_tokens - 1) * per_token
    assert e2e.flops == sample_flops
    assert e2e.efficiency.mfu == pytest.approx(
        sample_flops / (samples["e2e_ms"].mean() / 1e3) / (PEAK_TFLOPS * 1e12), rel=1e-12)
    client = mlflow.MlflowClient(uri)
    logged = client.get_run(outcome.mlflow_run_id).data
    assert logged.metrics["prefill/mfu_pct"] == pytest.approx(100 * prefill.efficiency.mfu)
    assert logged.metrics["decode/mbu_pct"] == pytest.approx(100 * decode.efficiency.mbu)
    assert prefill.flops == PROMPT * per_token and decode.flops == per_token
    assert logged.tags["decode/bound"] == decode.efficiency.bound and decode.efficiency.bound in ("memory", "compute")
    assert "roofline.png" in {a.path for a in client.list_artifacts(outcome.mlflow_run_id)}


@pytest.mark.parametrize(("model", "overrides", "flops", "bytes_moved"), [
    # A factory's declared costs through a whole run: 2*M*N*K FLOPs and (MK + KN + MN) * 4 bytes (fp32).
    ("gemm", ["++model.factory.m=48", "++model.factory.n=40", "++model.factory.k=32"],
     2 * 48 * 40 * 32, (48 * 32 + 32 * 40 + 48 * 40) * 4),
    # A copy moves 2 * num_bytes (read + write) and does no arithmetic.
    ("copy", ["++model.factory.num_bytes=65536"], 0.0, 2 * 65536),
])
def test_declared_costs_of_a_factory_reach_the_record_and_mlflow(tmp_path, model, overrides, flops, bytes_moved):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config(*FAST, f"model={model}", *overrides, f"hardware.peak_tflops={PEAK_TFLOPS}",
                         f"hardware.peak_bandwidth_gbps={PEAK_GBPS}", f"tracking.uri={uri}")
    outcome = run_profile(cfg, tmp_path / "run")
    assert outcome.status == "FINISHED"
    run = record.load(outcome.run_dir)
    for key in ("prefill", "decode"):
        stage = run.stage(key)
        assert stage.flops == flops and stage.bytes == bytes_moved, key
        seconds = stage.mean(stage.time_quantity) / 1e3
        assert stage.efficiency.mbu == pytest.approx(bytes_moved / seconds / (PEAK_GBPS * 1e9), rel=1e-12)
    logged = mlflow.MlflowClient(uri).get_run(outcome.mlflow_run_id).data.metrics
    for key in ("prefill", "decode"):
        assert logged[f"{key}/mbu_pct"] == pytest.approx(100 * run.stage(key).efficiency.mbu), key


def test_a_device_without_a_spec_peak_is_measured_and_gets_mfu(tmp_path):
    cfg = compose_config(*FAST, "model=custom", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")
    outcome = run_profile(cfg, tmp_path / "run")
    run = record.load(outcome.run_dir)
    # The CPU is not in the peak table: its GEMM and copy rates are measured and used as the peaks, labelled.
    assert run.hardware.source.startswith("measured on this device") and run.hardware.name == run.env["device_name"]
    # The device is named by its CPU model (/proc/cpuinfo), not its architecture.
    cpuinfo = Path("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")), None) if cpuinfo.exists() else None
    assert run.env["device_name"] == run.env["cpu"] == (model or run.env["cpu"]) and run.env["cpu_arch"]
    prefill = run.stage("prefill")
    assert prefill.efficiency.mfu == pytest.approx(prefill.efficiency.achieved_tflops / run.hardware.peak_tflops)
    assert outcome.metrics["prefill/mfu_pct"] > 0 and outcome.metrics["decode/mbu_pct"] > 0
    assert (outcome.run_dir / "roofline.png").exists()
