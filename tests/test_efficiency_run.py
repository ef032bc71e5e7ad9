"""Ground truth through a whole run: a model of exactly known FLOPs and bytes, a configured peak."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from conftest import FAST, compose_config
from llm_perf_opt.profile_run import run_profile

VOCAB, HIDDEN, LAYERS, PROMPT = 256, 64, 3, 32
PEAK_TFLOPS, PEAK_GBPS = 0.5, 20.0


def test_linear_stack_gives_exact_flops_and_mfu_equals_flops_over_time_over_peak(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config(*FAST, "model=custom", f"model.factory.vocab_size={VOCAB}",
                         f"model.factory.hidden_size={HIDDEN}", f"model.factory.num_layers={LAYERS}",
                         f"model.prompt_tokens={PROMPT}", f"hardware.peak_tflops={PEAK_TFLOPS}",
                         f"hardware.peak_bandwidth_gbps={PEAK_GBPS}", f"tracking.uri={uri}")
    outcome = run_profile(cfg, tmp_path / "run")
    assert outcome.status == "FINISHED"
    result = json.loads((outcome.run_dir / "metrics.json").read_text())
    # Multiply-add = 2 FLOPs; bias-free Linear layers and the lm_head over every position.
    per_token = 2 * (LAYERS * HIDDEN**2 + HIDDEN * VOCAB)
    costs = result["stage_costs"]
    assert costs["prefill"]["flops"] == PROMPT * per_token
    assert costs["decode"]["flops"] == per_token  # no KV cache: a decode step feeds one token
    weights_bytes = 4 * (LAYERS * HIDDEN**2 + HIDDEN * VOCAB)  # fp32
    assert costs["decode"]["bytes"] >= weights_bytes
    samples = pd.read_csv(outcome.run_dir / "samples.csv")
    prefill_s = samples["prefill_ms"].mean() / 1e3
    tpot_s = samples["tpot_ms"].mean() / 1e3
    eff = result["efficiency"]
    assert eff["prefill"]["mfu"] == pytest.approx(PROMPT * per_token / prefill_s / (PEAK_TFLOPS * 1e12), rel=1e-12)
    assert eff["decode"]["mfu"] == pytest.approx(per_token / tpot_s / (PEAK_TFLOPS * 1e12), rel=1e-12)
    assert eff["decode"]["mbu"] == pytest.approx(costs["decode"]["bytes"] / tpot_s / (PEAK_GBPS * 1e9), rel=1e-12)
    # The whole sample's FLOPs over the whole sample's time: prefill and decode, nothing counted twice.
    new_tokens = int(cfg.profiling.new_tokens)
    model_flops = PROMPT * per_token + (new_tokens - 1) * per_token
    assert costs["model"]["flops"] == model_flops
    assert eff["model"]["mfu"] == pytest.approx(
        model_flops / (samples["e2e_ms"].mean() / 1e3) / (PEAK_TFLOPS * 1e12), rel=1e-12)
    run = mlflow.MlflowClient(uri).get_run(outcome.mlflow_run_id)
    assert run.data.metrics["efficiency/prefill_mfu"] == pytest.approx(eff["prefill"]["mfu"])
    assert run.data.metrics["prefill/flops"] == PROMPT * per_token
    assert run.data.tags["bound.decode"] in ("memory", "compute")
    assert "roofline.png" in {a.path for a in mlflow.MlflowClient(uri).list_artifacts(outcome.mlflow_run_id)}


def test_unknown_device_without_overrides_has_no_mfu(tmp_path):
    cfg = compose_config(*FAST, "model=custom", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.warns(UserWarning, match="peak"):
        outcome = run_profile(cfg, tmp_path / "run")
    result = json.loads((outcome.run_dir / "metrics.json").read_text())
    assert result["hardware"] is None
    assert not [name for name in outcome.metrics if name.endswith("_mfu") or name.endswith("_mbu")]
    assert result["efficiency"]["prefill"]["achieved_tflops"] > 0  # achieved rates need no peak
    assert not (outcome.run_dir / "roofline.png").exists()
