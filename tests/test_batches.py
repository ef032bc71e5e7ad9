"""Batches (`profiling.batch_size`): equal-shape inputs per forward, one timed sample per batch.

What is checked, on the CPU with tiny models:
- batch_size 1 is the default and leaves the workload, samples.csv's columns and the throughput keys as
  they were;
- DeepSeek-OCR-2 batches pages in global and tiled mode: batched logits equal per-page logits (fp32,
  the model's own routers: uniform routing draws a fresh random expert choice per call) and batched
  greedy tokens equal unbatched ones; pages of other tile counts only batch with their own shape;
- known-FLOP workloads (LinearStack, GEMM, copy) give exactly batch_size x one input's FLOPs, the bytes
  of weights read once, and MFU/MBU = FLOPs or bytes / the batch's time / peak;
- throughput totals recomputed from samples.csv; energy per token and per page count every request;
- bad batch settings fail with one InputError line before any run exists.
"""

from __future__ import annotations

import dataclasses
import math
import types

import mlflow
import pandas as pd
import pytest
import torch

from conftest import FAST, compose_config, requires_transformers5
from llm_perf_opt import record
from llm_perf_opt.analysis.energy import energy_per_stage
from llm_perf_opt.analysis.throughput import run_throughput
from llm_perf_opt.config import validate
from llm_perf_opt.data import load_pages
from llm_perf_opt.errors import InputError
from llm_perf_opt.models import build_workload
from llm_perf_opt.models.batching import BATCHING
from llm_perf_opt.models.deepseek_ocr2 import build_config
from llm_perf_opt.models.generation import decode_n_tokens, prefill
from llm_perf_opt.passes.analytic import analytic_costs, decoder_spec, distinct_experts, views_of
from llm_perf_opt.passes.counted import count_stage_flops
from llm_perf_opt.passes.timed import TimedResult, iter_timed_samples
from llm_perf_opt.runners.profile import run_profile
from llm_perf_opt.schema import INPUT_TAG
from llm_perf_opt.tracking.run_inputs import trace_input_id

CPU = torch.device("cpu")
PEAK_TFLOPS, PEAK_GBPS = 0.5, 20.0
PEAKS = [f"hardware.peak_tflops={PEAK_TFLOPS}", f"hardware.peak_bandwidth_gbps={PEAK_GBPS}"]
QUIET = ["profiling.operators.enabled=false", "tracking.enabled=false"]


def _workload(*overrides: str, batch_size: int = 1):
    cfg = compose_config(*FAST, *overrides)
    return build_workload(cfg.model, load_pages(cfg.dataset), CPU, 0, batch_size)


def _unbatched(workload):
    """The same model and pages, one page per forward (the batches' own inputs)."""
    return dataclasses.replace(workload, batches=[], batch_size=1)


def _generate(workload, model_inputs, new_tokens: int = 6) -> torch.Tensor:
    with torch.inference_mode():
        token, cache = prefill(workload.model, workload.convention, model_inputs)
        with workload.decode_phase():
            rest = decode_n_tokens(workload.model, workload.convention, token, cache, new_tokens - 1)
    return torch.cat([token, *rest], dim=1)


# --- batch_size 1 ------------------------------------------------------------------------------------


def test_batch_size_one_is_the_default_and_changes_nothing():
    assert compose_config().profiling.batch_size == 1
    workload = _workload("model=custom", "model.prompt_tokens=8")
    assert workload.batch_size == 1 and all(b is i for b, i in zip(workload.batches, workload.inputs, strict=True))
    assert not {"batch_size", "batching", "batches"} & set(workload.info)
    settings = types.SimpleNamespace(new_tokens=3, warmup=0, repeats=1, stop_at_eos=False)
    samples = TimedResult.from_samples(list(iter_timed_samples(workload, settings)), workload).samples
    # samples.csv's columns as before batches existed (LinearStack: sub-stages body_layers, body_lm_head).
    assert list(samples.columns) == [
        "repeat", "input_index", "input_id", "prompt_tokens", "image_tokens", "new_tokens", "prefill_ms",
        "body_layers_ms", "body_lm_head_ms", "body_ms", "decode_ms", "decode_tpot_ms", "decode_tokens_per_s",
        "e2e_ms", "e2e_tokens_per_s", "wall_start_ns", "wall_end_ns", "clock"]
    row = samples.iloc[0]
    assert row["e2e_tokens_per_s"] == 3 / row["e2e_ms"] * 1e3
    assert row["decode_tokens_per_s"] == 2 / row["decode_ms"] * 1e3
    throughput = run_throughput(samples)
    assert set(throughput) == {"pages_per_s", "tokens_per_s", "decode_tokens_per_s", "pages_per_day"}
    assert throughput["pages_per_s"] == len(samples) / samples["e2e_ms"].sum() * 1e3
    assert throughput["pages_per_day"] == throughput["pages_per_s"] * 86_400


# --- bad settings ------------------------------------------------------------------------------------


def test_bad_batch_settings_fail_with_one_input_error_line():
    problems = []
    for overrides in (["profiling.batch_size=0"], ["profiling.batch_size=2", "profiling.stop_at_eos=true"]):
        with pytest.raises(InputError) as caught:
            validate(compose_config(*FAST, *overrides))
        problems.append(str(caught.value))
    # Too few inputs of one shape: batches are never padded, so the run is refused before it exists.
    with pytest.raises(InputError) as caught:
        _workload("model=custom", "model.prompt_tokens=8", batch_size=2)  # FAST: one page
    problems.append(str(caught.value))
    # A module that drops the batch (logits for the first sequence only) is refused when built.
    with pytest.raises(InputError) as caught:
        _workload("model=custom", "model.factory._target_=user_factories.unbatched.build", "model.prompt_tokens=4",
                  "dataset.num_pages=2", batch_size=2)
    problems.append(str(caught.value))
    assert "profiling.batch_size=0" in problems[0] and "stop_at_eos" in problems[1]
    assert "largest equal-shape group: 1" in problems[2] and "does not batch" in problems[3]
    assert all("\n" not in problem for problem in problems), problems


# --- DeepSeek-OCR-2: what the model really accepts ---------------------------------------------------------


@pytest.mark.parametrize(("mode", "size", "tiles"), [("global1024", "[[1240,1754]]", 0), ("tiled", "[[1000,500]]", 2)])
@requires_transformers5
def test_deepseek_batched_logits_and_tokens_equal_per_page(mode, size, tiles):
    workload = _workload(f"model.image_mode={mode}", f"dataset.sizes={size}", "dataset.num_pages=2",
                         "model.moe_routing=model", batch_size=2)
    (batch,) = workload.batches
    inputs = batch.model_inputs
    assert batch.batch_size == 2 and batch.members == ("synthetic-0000", "synthetic-0001")
    assert inputs["input_ids"].shape == (2, batch.prompt_tokens) and inputs["num_local_patches"] == [tiles, tiles]
    assert inputs["pixel_values"].shape[0] == 2 and (tiles == 0 or inputs["pixel_values_local"].shape[0] == 2 * tiles)
    assert workload.info["batching"] == BATCHING and workload.info["batches"] == [list(batch.members)]
    with torch.inference_mode():
        batched = workload.model(**inputs, use_cache=False).logits
        single = [workload.model(**page.model_inputs, use_cache=False).logits[0] for page in workload.inputs]
    assert batched.dtype == torch.float32
    for row, logits in enumerate(single):
        assert torch.allclose(batched[row], logits, rtol=1e-5, atol=1e-5), (row, (batched[row] - logits).abs().max())
    assert not torch.allclose(single[0], single[1])  # two different pages: the check can fail
    tokens = _generate(workload, inputs)
    assert tokens.shape == (2, 6)
    assert tokens.tolist() == [_generate(workload, page.model_inputs)[0].tolist() for page in workload.inputs]


@requires_transformers5
def test_pages_of_other_tile_counts_batch_only_with_their_own_shape():
    workload = _workload("model.image_mode=tiled", "dataset.sizes=[[1000,500],[900,900]]", "dataset.num_pages=5",
                         batch_size=2)
    # Tiles 2, 4, 2, 4, 2: groups {0, 2, 4} and {1, 3}, cut in dataset order; the last 2-tile page alone.
    assert [b.members for b in workload.batches] == [("synthetic-0000", "synthetic-0002"), ("synthetic-0004",),
                                                     ("synthetic-0001", "synthetic-0003")]
    assert [b.model_inputs["num_local_patches"] for b in workload.batches] == [[2, 2], [2], [4, 4]]
    assert [b.model_inputs["pixel_values_local"].shape[0] for b in workload.batches] == [4, 2, 8]
    assert [b.model_inputs["input_ids"].shape[0] for b in workload.batches] == [2, 1, 2]
    assert workload.batches[0].input_id == "synthetic-0000+synthetic-0002" and workload.batches[0].meta["tiles"] == 2
    assert views_of(workload.batches[2].model_inputs, 2).tiles == 4


@requires_transformers5
def test_hf_causal_lm_batched_tokens_and_flops_equal_the_pages():
    workload = _workload("model=hf_causal_lm", "model.prompt_tokens=16", "dataset.num_pages=2", batch_size=2)
    (batch,) = workload.batches
    assert batch.model_inputs["input_ids"].shape == (2, 16)
    assert _generate(workload, batch.model_inputs).tolist() == [
        _generate(workload, page.model_inputs)[0].tolist() for page in workload.inputs]
    counted = count_stage_flops(workload, decode_steps=2)
    singles = [count_stage_flops(_unbatched(workload), input_index=i, decode_steps=2) for i in range(2)]
    assert counted.prefill_flops == sum(s.prefill_flops for s in singles)
    assert counted.decode_step_flops == [a + b for a, b in zip(*(s.decode_step_flops for s in singles), strict=True)]


# --- the analytic byte model -----------------------------------------------------------------------------


@requires_transformers5
def test_analytic_batch_scales_flops_and_reads_weights_once():
    workload = _workload("model=hf_causal_lm", "model.prompt_tokens=16")
    by_batch = {b: analytic_costs(workload.model.config, prompt_tokens=16, new_tokens=3, dtype_bytes=4, batch=b)
                for b in (1, 2, 3)}
    spec = decoder_spec(workload.model.config)
    assert not spec.tied_embeddings
    weights = (spec.parameters() - spec.vocab * spec.hidden) * 4  # every weight but the embedding table
    for stage in ("prefill", "decode_step_1", "decode_step_2"):
        one, two, three = (by_batch[b][stage] for b in (1, 2, 3))
        assert two.flops == 2 * one.flops and three.flops == 3 * one.flops, stage
        per_sequence = two.bytes - one.bytes  # embedding rows, KV cache read and written: linear in the batch
        assert three.bytes - two.bytes == pytest.approx(per_sequence, rel=1e-12)
        assert one.bytes - per_sequence == pytest.approx(weights, rel=1e-12), stage
    # MoE (DeepSeek-OCR-2's decoder): experts touched by B tokens of a decode step, not B x k.
    moe = build_config("tiny").text_config
    text = decoder_spec(moe)
    one, two = (analytic_costs(moe, prompt_tokens=8, new_tokens=2, dtype_bytes=4, batch=b)["decode_step_1"]
                for b in (1, 2))
    extra_experts = distinct_experts(text.experts, text.experts_per_token, 2) - text.experts_per_token
    kv_and_rows = 2 * text.layers * text.kv_heads * text.head_dim * 4 * (9 + 1) + text.hidden * 4
    assert two.bytes - one.bytes == pytest.approx(
        text.sparse_layers() * extra_experts * text.expert_parameters() * 4 + kv_and_rows, rel=1e-9)


# --- whole runs ----------------------------------------------------------------------------------------------


def _check_throughput(run_dir, metrics):
    """Totals over totals, recomputed from samples.csv; per-sample rates count the batch."""
    samples = pd.read_csv(run_dir / "samples.csv")
    batch, e2e_s = samples["batch_size"], samples["e2e_ms"].sum() / 1e3
    assert metrics["throughput/pages_per_s"] == pytest.approx(batch.sum() / e2e_s, rel=1e-6)
    assert metrics["throughput/pages_per_day"] == pytest.approx(batch.sum() / e2e_s * 86_400, rel=1e-6)
    assert metrics["throughput/tokens_per_s"] == pytest.approx((batch * samples["new_tokens"]).sum() / e2e_s, rel=1e-6)
    assert metrics["throughput/decode_tokens_per_s"] == pytest.approx(
        (batch * (samples["new_tokens"] - 1)).sum() / (samples["decode_ms"].sum() / 1e3), rel=1e-6)
    assert samples["e2e_tokens_per_s"].tolist() == pytest.approx(
        (batch * samples["new_tokens"] / samples["e2e_ms"] * 1e3).tolist())
    assert samples["decode_tpot_ms"].tolist() == pytest.approx(  # latency per request: not divided by the batch
        (samples["decode_ms"] / (samples["new_tokens"] - 1)).tolist())
    return samples


def _check_rates(run, samples):
    """MFU/MBU of prefill, decode and e2e: the batch's FLOPs and bytes over the batch's time over the peak."""
    for key, column in (("prefill", "prefill_ms"), ("decode", "decode_tpot_ms"), ("e2e", "e2e_ms")):
        stage = run.stage(key)
        seconds = samples[column].mean() / 1e3
        if stage.flops:
            assert stage.efficiency.mfu == pytest.approx(stage.flops / seconds / (PEAK_TFLOPS * 1e12), rel=1e-12)
        assert stage.efficiency.mbu == pytest.approx(stage.bytes / seconds / (PEAK_GBPS * 1e9), rel=1e-12), key


def test_linear_stack_batched_run_counts_the_batch(tmp_path):
    vocab, hidden, layers, prompt, batch = 96, 32, 3, 16, 2
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config(*FAST, "model=custom", f"++model.factory.vocab_size={vocab}",
                         f"++model.factory.hidden_size={hidden}", f"++model.factory.num_layers={layers}",
                         f"model.prompt_tokens={prompt}", "dataset.num_pages=4", f"profiling.batch_size={batch}",
                         *PEAKS, f"tracking.uri={uri}")
    outcome = run_profile(cfg, tmp_path / "run")
    assert outcome.status == "FINISHED", outcome.error
    run = record.load(outcome.run_dir)
    per_token = 2 * (layers * hidden**2 + hidden * vocab)  # one token of one sequence, exact
    assert run.stage("prefill").flops == batch * prompt * per_token
    assert run.stage("decode").flops == batch * per_token
    assert run.stage("e2e").flops == batch * (prompt + 3) * per_token
    weights = 4 * (layers * hidden**2 + hidden * vocab)  # fp32, read once per forward
    assert run.stage("decode").bytes == weights + batch * hidden * 4  # + one embedding row per sequence
    assert run.stage("prefill").bytes == weights + batch * prompt * hidden * 4
    samples = _check_throughput(outcome.run_dir, outcome.metrics)
    assert samples["batch_size"].tolist() == [2, 2] * 2 and len(samples) == 2 * 2  # 2 repeats x 2 batches
    assert samples["input_id"].tolist()[:2] == ["synthetic-0000+synthetic-0001", "synthetic-0002+synthetic-0003"]
    _check_rates(run, samples)
    assert run.workload.model_extra["batching"] == BATCHING and run.workload.model_extra["batch_size"] == batch
    logged = mlflow.MlflowClient(uri).get_run(outcome.mlflow_run_id)
    assert logged.data.metrics["throughput/pages_per_day"] == pytest.approx(outcome.metrics["throughput/pages_per_day"])
    assert logged.data.params["workload.batching"] == BATCHING and logged.info.run_name.endswith("-b2")
    # One trace per batch, tagged with its input ids; the plain-language summary says how pages were batched.
    mlflow.set_tracking_uri(uri)
    traces = mlflow.search_traces(run_id=outcome.mlflow_run_id, locations=[logged.info.experiment_id],
                                  return_type="list")
    assert sorted(t.info.tags[INPUT_TAG] for t in traces) == sorted(samples["input_id"].unique())
    summary = (outcome.run_dir / "stakeholder_summary.md").read_text()
    assert "4 timed samples (batches of 2 pages) of 4 new tokens each" in summary
    many = "+".join(f"page-{i:04d}" for i in range(64))
    assert trace_input_id(many) == "page-0000+...+page-0063 (64 inputs)" and trace_input_id("a+b") == "a+b"


@pytest.mark.parametrize(("model", "overrides", "flops", "weight_bytes", "input_bytes"), [
    # One bmm over the batch: 2*B*M*N*K FLOPs; the K x N weight once, each input's M x K and M x N.
    ("gemm", ["++model.factory.m=24", "++model.factory.n=20", "++model.factory.k=16"],
     2 * 24 * 20 * 16, 16 * 20 * 4, (24 * 16 + 24 * 20) * 4),
    # One copy per forward whatever the batch: no FLOPs, 2 * num_bytes moved.
    ("copy", ["++model.factory.num_bytes=65536"], 0, 2 * 65536, 0),
])
def test_known_flop_factories_batched(tmp_path, model, overrides, flops, weight_bytes, input_bytes):
    batch = 2
    cfg = compose_config(*FAST, f"model={model}", *overrides, f"++model.factory.num_inputs={batch}",
                         f"profiling.batch_size={batch}", *PEAKS, *QUIET)
    outcome = run_profile(cfg, tmp_path / "run")
    assert outcome.status == "FINISHED", outcome.error
    run = record.load(outcome.run_dir)
    for key in ("prefill", "decode"):
        stage = run.stage(key)
        assert stage.flops == batch * flops, key  # counted: exactly batch_size x one input's FLOPs
        assert stage.bytes == weight_bytes + batch * input_bytes, key
    samples = _check_throughput(outcome.run_dir, outcome.metrics)
    _check_rates(run, samples)


@requires_transformers5
def test_deepseek_batched_run_counts_the_batch(tmp_path):
    cfg = compose_config(*FAST, "dataset.num_pages=2", "profiling.batch_size=2", *PEAKS, *QUIET)
    outcome = run_profile(cfg, tmp_path / "run")
    assert outcome.status == "FINISHED", outcome.error
    run = record.load(outcome.run_dir)
    # The same pages counted one by one: the batch's FLOPs are their sum, stage by stage (uniform routing
    # routes every token to k experts, so the expert FLOPs do not depend on which were drawn).
    workload = _workload("dataset.num_pages=2", batch_size=2)
    singles = [count_stage_flops(_unbatched(workload), input_index=i, decode_steps=2) for i in range(2)]
    assert run.stage("prefill").flops == sum(s.prefill_flops for s in singles)
    for key in ("vision_sam", "vision_encoder", "vision_projector"):
        assert run.stage(key).flops == sum(s.stage_flops[key] for s in singles), key
    assert run.stage("decode").flops == sum(s.decode_step_mean_flops for s in singles)
    assert run.stage("vision").flops == sum(run.stage(k).flops for k in ("vision_sam", "vision_encoder",
                                                                         "vision_projector"))
    # The analytic model of the batch agrees with the counted batch (docs/flops.md: within 5%).
    for key in ("prefill", "vision_sam", "vision_encoder", "decode"):
        assert math.isclose(run.stage(key).flops_measured_over_analytic, 1.0, rel_tol=0.05), key
    samples = _check_throughput(outcome.run_dir, outcome.metrics)
    assert samples["batch_size"].tolist() == [2, 2]
    _check_rates(run, samples)
    assert run.stage("vision_sam").efficiency.mfu == pytest.approx(
        run.stage("vision_sam").flops / (samples["vision_sam_ms"].mean() / 1e3) / (PEAK_TFLOPS * 1e12), rel=1e-12)


# --- energy ---------------------------------------------------------------------------------------------------


def test_energy_per_token_and_per_page_count_every_request_of_a_batch():
    ms = 1_000_000
    times = [t * ms for t in range(0, 1201)]
    timeline = pd.DataFrame({"t_ns": times, "power_w": 100.0, "energy_mj": math.nan, "sm_clock_mhz": 1.0,
                             "mem_clock_mhz": 1.0, "gpu_util_pct": 1.0, "temp_c": 1.0})
    samples = pd.DataFrame({"repeat": [0, 1], "input_index": [0, 0], "batch_size": [2, 2],
                            "wall_start_ns": [100 * ms, 600 * ms], "wall_end_ns": [500 * ms, 1100 * ms],
                            "prefill_ms": [150.0, 200.0], "decode_ms": [240.0, 280.0], "new_tokens": [5, 8]})
    report = energy_per_stage(timeline, samples)
    per = report.per_sample
    assert per["decode_tokens"].tolist() == [8, 14] and per["pages"].tolist() == [2, 2]
    # Constant 100 W: energy = 100 x seconds.
    assert report.stage_energy_j["decode"]["per_token"] == pytest.approx(100 * (0.24 + 0.28) / 22)
    assert report.stage_energy_j["e2e"] == {"mean": pytest.approx(100 * 0.45), "per_page": pytest.approx(100 * 0.9 / 4)}
    unbatched = energy_per_stage(timeline, samples.drop(columns="batch_size"))
    assert "pages" not in unbatched.per_sample and set(unbatched.stage_energy_j["e2e"]) == {"mean"}
