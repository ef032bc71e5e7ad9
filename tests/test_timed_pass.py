"""The timed pass on tiny models: stage nesting, end-to-end consistency, the clock, the loop itself."""

from __future__ import annotations

import time
import types

import pytest
import torch

from conftest import FAST, compose_config, requires_transformers5
from llm_perf_opt.data import load_pages
from llm_perf_opt.models import build_workload
from llm_perf_opt.models.generation import CallConvention, decode_n_tokens, prefill
from llm_perf_opt.models.moe_routing import find_routers
from llm_perf_opt.passes.clock import StageClock
from llm_perf_opt.passes.timed import TimedResult, iter_timed_samples
from llm_perf_opt.schema import column

CPU = torch.device("cpu")


def _settings(new_tokens: int, warmup: int, repeats: int, stop_at_eos: bool = False):
    """What iter_timed_samples reads from the `profiling` section."""
    return types.SimpleNamespace(new_tokens=new_tokens, warmup=warmup, repeats=repeats, stop_at_eos=stop_at_eos)


def _workload(*overrides: str):
    cfg = compose_config(*FAST, *overrides)
    return build_workload(cfg.model, load_pages(cfg.dataset), CPU, 0)


@pytest.fixture(scope="module")
def deepseek_tiny():
    return _workload()


def test_cpu_clock_measures_elapsed_time():
    clock = StageClock("cpu")
    start = clock.mark()
    time.sleep(0.02)
    end = clock.mark()
    clock.synchronize()
    assert clock.kind == "perf_counter"
    assert 19.0 <= clock.elapsed_ms(start, end) < 200.0


@requires_transformers5
def test_vision_substages_nest_within_prefill_and_stages_add_up_to_e2e(deepseek_tiny):
    records = list(iter_timed_samples(deepseek_tiny, _settings(new_tokens=5, warmup=1, repeats=3)))
    assert len(records) == 3 * len(deepseek_tiny.inputs)
    frames = TimedResult.from_samples(records, deepseek_tiny)
    samples = frames.samples
    # Every stage of the tree has its samples.csv column, spelled by the schema.
    assert {column(stage, "ms") for stage in deepseek_tiny.stages.keys()} <= set(samples.columns)
    assert {"decode_tpot_ms", "decode_tokens_per_s", "e2e_tokens_per_s"} <= set(samples.columns)
    subs = ["vision_sam_ms", "vision_encoder_ms", "vision_projector_ms"]
    for row in samples.to_dict(orient="records"):
        assert all(row[name] > 0 for name in subs)
        # The group column holds exactly its three children, never prefill or the group itself.
        assert row["vision_ms"] == pytest.approx(sum(row[name] for name in subs))
        # Sub-stages run inside the first forward pass: their sum can never exceed prefill.
        assert row["vision_ms"] <= row["prefill_ms"]
        assert row["new_tokens"] == 5
        # prefill + decode vs the synchronised wall time around the same sample: the difference is the
        # loop's own host gaps (a few marks and Python calls). Tolerance: 5% of e2e + 1 ms.
        staged = row["prefill_ms"] + row["decode_ms"]
        assert staged <= row["e2e_ms"] + 1e-6
        assert row["e2e_ms"] - staged <= 0.05 * row["e2e_ms"] + 1.0
    # decode_steps.csv: one row per decode step (new_tokens - 1 per sample), numbered from 1.
    steps = frames.decode_steps
    assert list(steps.columns) == ["repeat", "input_index", "input_id", "step", "decode_step_ms"]
    assert len(steps) == 4 * len(records) and steps["step"].tolist() == [1, 2, 3, 4] * len(records)
    assert (steps["decode_step_ms"] > 0).all()


@requires_transformers5
def test_loop_generates_what_generate_generates():
    """Greedy tokens from prefill/decode_n_tokens equal model.generate() on the same model and prompt."""
    workload = _workload("model=hf_causal_lm", "model.prompt_tokens=16")
    model, prepared = workload.model, workload.inputs[0]
    with torch.inference_mode():
        first, cache = prefill(model, workload.convention, prepared.model_inputs)
        rest = decode_n_tokens(model, workload.convention, first, cache, 7)
        ours = torch.cat([first, *rest], dim=1)
        reference = model.generate(**prepared.model_inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(ours, reference[:, prepared.prompt_tokens:])


@requires_transformers5
def test_deepseek_prompt_layout_and_cache_convention(deepseek_tiny):
    prepared = deepseek_tiny.inputs[0]
    ids = prepared.model_inputs["input_ids"][0]
    image_token_id = deepseek_tiny.model.config.image_token_id
    # global768: 144 learned queries + 1 view separator; 12 instruction tokens; 1 BOS.
    assert prepared.image_tokens == 145
    assert int((ids == image_token_id).sum()) == 145
    assert prepared.prompt_tokens == 1 + 145 + 12
    assert deepseek_tiny.convention == CallConvention.detect(deepseek_tiny.model)
    assert deepseek_tiny.convention.cache_kwarg in ("cache", "past_key_values")


@requires_transformers5
def test_tiled_mode_counts_tiles_into_image_tokens():
    workload = _workload("model.image_mode=tiled")
    prepared = workload.inputs[0]
    tiles = prepared.meta["tiles"]
    assert 2 <= tiles <= 6  # an A4 page is taller than 768 px: the processor tiles it
    assert prepared.image_tokens == 256 + tiles * 144 + 1
    with torch.inference_mode():  # the model accepts exactly that many placeholders
        token, _ = prefill(workload.model, workload.convention, prepared.model_inputs)
    assert token.shape == (1, 1)


@requires_transformers5
def test_uniform_routing_is_applied_and_balanced(deepseek_tiny):
    routers = find_routers(deepseek_tiny.model)
    assert deepseek_tiny.info["moe_routing"] == "uniform"
    assert len(routers) == deepseek_tiny.info["moe_routers_switched"] == 1  # tiny: layer 0 dense, layer 1 MoE
    router = routers[0]
    hidden = torch.randn(4000, router.weight.shape[1])
    _, weights, indices = router(hidden)
    assert indices.shape == (4000, router.top_k)
    # k distinct experts per token, equal weights, and every expert gets about the same load.
    assert all(len(set(row.tolist())) == router.top_k for row in indices[:200])
    assert torch.allclose(weights, torch.full_like(weights, 1.0 / router.top_k))
    load = torch.bincount(indices.flatten(), minlength=router.num_experts).float()
    assert (load / load.mean() - 1).abs().max() < 0.1


@requires_transformers5
def test_model_routing_keeps_the_router():
    workload = _workload("model.moe_routing=model")
    assert workload.info["moe_routing"] == "model" and workload.info["moe_routers_switched"] == 0


@requires_transformers5
def test_decode_experts_switch_mirrors_generate_and_restores(deepseek_tiny):
    from llm_perf_opt.models.generation import decode_experts_plan, decode_phase

    model = deepseek_tiny.model
    before = model.get_experts_implementation()
    # generate() decodes with batched_mm instead of grouped_mm off the CPU, and leaves the CPU alone.
    assert decode_experts_plan(model, "auto", torch.device("cpu")) is None
    plan = decode_experts_plan(model, "auto", torch.device("cuda"))
    assert plan == {k: ("batched_mm" if v == "grouped_mm" else v) for k, v in before.items()}
    assert decode_experts_plan(model, "same", torch.device("cuda")) is None
    with decode_phase(model, plan):
        assert model.get_experts_implementation() == plan
    assert model.get_experts_implementation() == before


@requires_transformers5
def test_timed_pass_decodes_with_the_planned_experts_and_restores():
    workload = _workload("model.decode_experts_implementation=batched_mm", "model.experts_implementation=grouped_mm")
    assert workload.info["decode_experts_implementation"] == "batched_mm"
    seen = []
    experts = next(m for m in workload.model.modules() if type(m).__name__.endswith("TextExperts"))
    experts.register_forward_pre_hook(lambda module, args: seen.append(module.config._experts_implementation))
    records = list(iter_timed_samples(workload, _settings(new_tokens=3, warmup=0, repeats=1)))
    assert records and seen == ["grouped_mm", "batched_mm", "batched_mm"]  # prefill, then 2 decode steps
    assert workload.model.get_experts_implementation()["text_config"] == "grouped_mm"


@requires_transformers5
def test_warmup_covers_every_input(monkeypatch):
    from llm_perf_opt.passes import timed as timed_pass

    workload = _workload("dataset.num_pages=2")
    seen = []
    real = timed_pass.time_one_sample
    monkeypatch.setattr(timed_pass, "time_one_sample",
                        lambda wl, prepared, *a, **k: seen.append(prepared.input_id) or real(wl, prepared, *a, **k))
    records = list(iter_timed_samples(workload, _settings(new_tokens=2, warmup=1, repeats=1)))
    ids = [p.input_id for p in workload.inputs]
    assert seen == ids + ids and [r.row["input_id"] for r in records] == ids


@requires_transformers5
def test_a_run_stopped_before_its_first_sample_still_names_the_columns(deepseek_tiny):
    # samples.csv of a run killed during warmup: no rows, the same header a measured run has.
    measured = TimedResult.from_samples(list(iter_timed_samples(deepseek_tiny, _settings(3, 0, 1))), deepseek_tiny)
    empty = TimedResult.from_samples([], deepseek_tiny)
    assert len(empty.samples) == 0 and list(empty.samples.columns) == list(measured.samples.columns)
    assert list(empty.decode_steps.columns) == ["repeat", "input_index", "input_id", "step", "decode_step_ms"]
