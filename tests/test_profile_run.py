"""Whole runs in-process: run directory, MLflow content read back, failures, workloads, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from conftest import FAST, compose_config, requires_transformers5
from llm_perf_opt import record, schema
from llm_perf_opt.errors import InputError
from llm_perf_opt.passes import timed
from llm_perf_opt.runners.profile import run_profile
from llm_perf_opt.schema import STATS

RUN_FILES = {"config.yaml", "env.json", "workload.json", "samples.csv", "decode_steps.csv", "metrics.json"}


def _run(tmp_path: Path, tracking_uri: str, *overrides: str):
    cfg = compose_config(*FAST, f"tracking.uri={tracking_uri}", *overrides)
    return run_profile(cfg, tmp_path / "run")


def _mlflow_run(tracking_uri: str, run_id: str):
    client = mlflow.MlflowClient(tracking_uri)
    return client, client.get_run(run_id)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("default")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = _run(tmp_path, uri, "dataset.num_pages=2", "profiling.repeats=3")
    return outcome, uri


@requires_transformers5
def test_run_directory_is_complete(default_run):
    outcome, _ = default_run
    assert outcome.status == "FINISHED" and outcome.error is None
    assert RUN_FILES <= {p.name for p in outcome.run_dir.iterdir()}
    env = json.loads((outcome.run_dir / "env.json").read_text())
    for key in ("device_name", "torch", "transformers", "python", "dtype", "attn_implementation"):
        assert env[key], key
    assert env["dtype"] == "fp32" and env["attn_implementation"] == "sdpa"


@requires_transformers5
def test_summary_statistics_equal_those_recomputed_from_samples_csv(default_run):
    outcome, _ = default_run
    samples = pd.read_csv(outcome.run_dir / "samples.csv")
    steps = pd.read_csv(outcome.run_dir / "decode_steps.csv")
    run = record.load(outcome.run_dir)
    metrics = run.metrics
    assert len(samples) == 2 * 3 and len(steps) == 6 * 3  # 2 pages x 3 repeats; 3 decode steps each
    for column, stage, quantity in [("prefill_ms", "prefill", "ms"), ("vision_sam_ms", "vision_sam", "ms"),
                                    ("vision_ms", "vision", "ms"), ("decode_ms", "decode", "ms"),
                                    ("decode_tpot_ms", "decode", "tpot_ms"),
                                    ("e2e_tokens_per_s", "e2e", "tokens_per_s")]:
        values = samples[column]
        expected = {"mean": values.mean(), "std": values.std(ddof=1), "min": values.min(), "max": values.max(),
                    "p50": values.quantile(0.5), "p90": values.quantile(0.9), "p99": values.quantile(0.99)}
        stats = run.stage(stage).stats[quantity]
        for stat in STATS:
            assert getattr(stats, stat) == pytest.approx(expected[stat], rel=1e-9), f"{stage} {quantity} {stat}"
            if quantity != "tokens_per_s" and stat in record.UI_STATS:  # MLflow: p50, p90, p99, mean of times
                assert metrics[f"{stage}/{quantity}_{stat}"] == pytest.approx(expected[stat], rel=1e-6)  # 7 digits
            else:
                assert f"{stage}/{quantity}_{stat}" not in metrics
    assert run.stage("decode").stats["step_ms"].p50 == pytest.approx(steps["decode_step_ms"].median(), rel=1e-9)
    # Throughput: totals over totals.
    assert metrics["throughput/pages_per_s"] == pytest.approx(len(samples) / samples["e2e_ms"].sum() * 1e3)
    assert metrics["throughput/tokens_per_s"] == pytest.approx(samples["new_tokens"].sum() / samples["e2e_ms"].sum()
                                                               * 1e3)
    assert metrics["throughput/decode_tokens_per_s"] == pytest.approx(
        (samples["new_tokens"] - 1).sum() / samples["decode_ms"].sum() * 1e3)


@requires_transformers5
def test_stages_nest_as_the_record_says_and_groups_sum_their_children(default_run):
    outcome, _ = default_run
    run = record.load(outcome.run_dir)
    tree = run.tree()
    assert [(s.key, s.parent, s.kind) for s in tree] == [
        ("e2e", None, "measured"), ("prefill", "e2e", "measured"), ("vision", "prefill", "sum_of_children"),
        ("vision_sam", "vision", "measured"), ("vision_encoder", "vision", "measured"),
        ("vision_projector", "vision", "measured"), ("decode", "e2e", "measured")]
    samples = pd.read_csv(outcome.run_dir / "samples.csv")
    parts = samples[["vision_sam_ms", "vision_encoder_ms", "vision_projector_ms"]].sum(axis=1)
    assert samples["vision_ms"].to_numpy() == pytest.approx(parts.to_numpy(), rel=1e-12)
    assert (samples["vision_ms"] < samples["prefill_ms"]).all()  # nested: inside prefill, never added to it
    assert (samples["prefill_ms"] + samples["decode_ms"] <= samples["e2e_ms"]).all()
    vision, prefill = run.stage("vision"), run.stage("prefill")
    assert vision.share_of_parent == pytest.approx(vision.mean() / prefill.mean(), rel=1e-12)
    assert vision.flops == pytest.approx(sum(run.stage(k).flops for k in
                                             ("vision_sam", "vision_encoder", "vision_projector")), rel=1e-12)
    assert vision.flops < prefill.flops


@requires_transformers5
def test_every_metric_key_and_column_is_the_schemas(default_run):
    outcome, _ = default_run
    run = record.load(outcome.run_dir)
    stages = set(run.tree().keys())
    for name in run.metrics:
        group, quantity, _ = schema.parse_metric_key(name)
        assert group in stages | {"gpu", "run", "throughput"}, name
    samples = pd.read_csv(outcome.run_dir / "samples.csv")
    for column in samples.columns:
        if column.endswith(("_ms", "_per_s")):
            assert any(column.startswith(key + "_") for key in stages), column


@requires_transformers5
def test_mlflow_run_mirrors_the_run_directory(default_run):
    outcome, uri = default_run
    client, run = _mlflow_run(uri, outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["model.family"] == "deepseek_ocr2" and params["model.preset"] == "tiny"
    assert params["profiling.repeats"] == "3" and params["workload.moe_routing"] == "uniform"
    assert tags["llm_perf_opt.kind"] == "profile" and tags["preset"] == "tiny" and tags["model"] == "deepseek_ocr2"
    assert tags["device"]
    for name in ("prefill/ms_p50", "decode/ms_p50", "vision_sam/ms_p50", "vision_encoder/ms_p50",
                 "vision_projector/ms_p50", "vision/ms_p50", "decode/tpot_ms_p50", "e2e/ms_p50"):
        assert metrics[name] > 0, name
    local = record.load(outcome.run_dir)
    ours = {k: v for k, v in metrics.items() if not k.startswith("system/")}  # system/: MLflow's own monitor
    assert ours == pytest.approx(local.metrics)
    assert ours == pytest.approx(record.flat_metrics(local))
    assert 0 <= local.stage("prefill").profiled.no_formula_share <= 1
    assert 0 <= local.stage("vision_sam").profiled.no_formula_share <= 1
    assert local.stage("prefill").profiled.profiler_overhead_ratio > 0
    artifacts = {a.path for a in client.list_artifacts(outcome.mlflow_run_id)}
    assert RUN_FILES <= artifacts
    # The profiled pass's and the reports' artifacts are there too (kernels.csv only on a GPU).
    assert {"trace.json.gz", "operators.csv", "operators.md", "report.md", "stakeholder_summary.md",
            "counts.json"} <= artifacts
    # And through the tracking API users query with.
    found = mlflow.search_runs(experiment_names=["llm-perf-opt"], filter_string="tags.preset = 'tiny'",
                               output_format="pandas") if mlflow.set_tracking_uri(uri) is None else None
    assert outcome.mlflow_run_id in set(found["run_id"])


@requires_transformers5
def test_failure_mid_run_keeps_samples_and_ends_failed(tmp_path, tracking_uri, monkeypatch):
    real = timed.time_one_sample
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # warmup + 2 measured samples, then the device "fails"
            raise RuntimeError("simulated device failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(timed, "time_one_sample", failing)
    outcome = _run(tmp_path, tracking_uri, "profiling.repeats=5")
    assert outcome.status == "FAILED" and "simulated device failure" in outcome.error
    samples = pd.read_csv(outcome.run_dir / "samples.csv")
    assert len(samples) == 2
    assert "simulated device failure" in (outcome.run_dir / "error.txt").read_text()
    client, run = _mlflow_run(tracking_uri, outcome.mlflow_run_id)
    assert run.info.status == "FAILED"
    assert run.data.metrics["run/samples"] == 2
    failed = record.load(outcome.run_dir)
    assert failed.status == "FAILED" and "simulated device failure" in failed.error
    assert failed.stage("prefill").stats["ms"].count == 2
    assert {"error.txt", "samples.csv", "metrics.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


@requires_transformers5
def test_tracking_failure_loses_nothing(tmp_path):
    outcome = _run(tmp_path, "sqlite:////proc/no-such-dir/mlflow.db")
    assert outcome.status == "FINISHED"
    assert outcome.tracking_errors and outcome.mlflow_run_id is None
    assert RUN_FILES <= {p.name for p in outcome.run_dir.iterdir()}
    assert "MLflow" in (outcome.run_dir / "tracking_error.txt").read_text()
    assert record.load(outcome.run_dir).metrics["prefill/ms_p50"] > 0


@requires_transformers5
def test_hf_causal_lm_workload_has_no_vision_stages(tmp_path, tracking_uri):
    outcome = _run(tmp_path, tracking_uri, "model=hf_causal_lm", "model.prompt_tokens=24")
    assert outcome.status == "FINISHED"
    samples = pd.read_csv(outcome.run_dir / "samples.csv")
    assert not [c for c in samples.columns if c.startswith("vision")]
    assert (samples["prompt_tokens"] == 24).all() and (samples["decode_ms"] > 0).all()
    _, run = _mlflow_run(tracking_uri, outcome.mlflow_run_id)
    assert run.data.params["workload.family"] == "hf_causal_lm" and run.data.metrics["prefill/ms_p50"] > 0


def test_target_factory_workload_with_its_stage_map(tmp_path, tracking_uri):
    outcome = _run(tmp_path, tracking_uri, "model=custom", "++model.factory.num_layers=3")
    assert outcome.status == "FINISHED"
    samples = pd.read_csv(outcome.run_dir / "samples.csv")
    assert (samples["body_layers_ms"] > 0).all() and (samples["body_lm_head_ms"] > 0).all()
    assert (samples["body_ms"] <= samples["prefill_ms"]).all()
    _, run = _mlflow_run(tracking_uri, outcome.mlflow_run_id)
    assert run.data.params["model.factory._target_"] == "llm_perf_opt.models.linear_stack.build_linear_stack"
    assert run.data.metrics["body_layers/ms_p50"] > 0
    assert [(s.key, s.parent) for s in record.load(outcome.run_dir).tree() if s.key.startswith("body")] == [
        ("body", "prefill"), ("body_layers", "body"), ("body_lm_head", "body")]


def test_a_users_factory_taking_only_device_and_dtype_needs_no_other_override(tmp_path, tracking_uri):
    outcome = _run(tmp_path, tracking_uri, "model=custom", "model.factory._target_=user_factories.tiny_mlp.build",
                   "model.prompt_tokens=16")
    assert outcome.status == "FINISHED", outcome.error
    run = record.load(outcome.run_dir)
    assert run.workload.preset == "user_factories.tiny_mlp.build"
    # Counted FLOPs of the module: 2 * tokens * (hidden^2 + hidden * vocab) per forward, no KV cache.
    assert run.stage("prefill").flops == 2 * 16 * (32 * 32 + 32 * 128)
    assert run.stage("decode").flops == 2 * (32 * 32 + 32 * 128)
    assert run.stage("prefill").stats["ms"].count == 2


@requires_transformers5
def test_omnidocbench_pages_run_tiled(tmp_path, tracking_uri, demo_root):
    outcome = _run(tmp_path, tracking_uri, "dataset=omnidocbench", f"dataset.root={demo_root}", "dataset.limit=2",
                   "model.image_mode=tiled", "profiling.repeats=1")
    assert outcome.status == "FINISHED"
    workload = json.loads((outcome.run_dir / "workload.json").read_text())
    assert [i["source"] for i in workload["inputs"]] == ["omnidocbench"] * 2
    assert all(i["image_tokens"] == 256 + 144 * i["tiles"] + 1 for i in workload["inputs"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.path=/no/such/checkpoint"], "not a checkpoint directory"),
        (["dataset=omnidocbench", "dataset.root=/no/such/root"], "/no/such/root"),
        (["model.stage_map.vision.sam=model.no_such_module"], "names no submodule"),
    ],
)
@requires_transformers5
def test_bad_input_is_one_clear_error(tmp_path, tracking_uri, overrides, message):
    with pytest.raises(InputError, match=message.replace("/", ".")) as caught:
        _run(tmp_path, tracking_uri, *overrides)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is missing")
def test_cuda_requested_without_cuda(tmp_path, tracking_uri):
    with pytest.raises(InputError, match="no CUDA device"):
        _run(tmp_path, tracking_uri, "device=cuda")


def test_empty_subset_file_is_an_input_error(tmp_path, tracking_uri, demo_root):
    subset = tmp_path / "empty.txt"
    subset.write_text("# nothing selected\n")
    with pytest.raises(InputError):
        _run(tmp_path, tracking_uri, "dataset=omnidocbench", f"dataset.root={demo_root}",
             f"dataset.subset_file={subset}")
