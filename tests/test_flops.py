"""The counted pass (FlopCounterMode per stage), the stage costs it hands on, and FLOP coverage."""

from __future__ import annotations

import types

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import FAST, compose_config, requires_transformers5
from llm_perf_opt.analysis.coverage import coverage_warning, flop_coverage
from llm_perf_opt.assembly import RunParts, build_record
from llm_perf_opt.data import load_pages
from llm_perf_opt.errors import InputError
from llm_perf_opt.models import build_workload
from llm_perf_opt.models.linear_stack import build_linear_stack
from llm_perf_opt.models.workload import PreparedInput, Workload, resolve_stage_map
from llm_perf_opt.passes.analytic import analytic_costs_for_workload
from llm_perf_opt.passes.counted import (
    EXTRA_FLOP_FORMULAS,
    count_stage_flops,
    efficiency_stage_costs,
    formula_operator_names,
    new_flop_counter,
    run_counted_pass,
)
from llm_perf_opt.record import RunInfo, WorkloadInfo

CPU = torch.device("cpu")


def _workload(*overrides: str) -> Workload:
    cfg = compose_config(*FAST, *overrides)
    return build_workload(cfg.model, load_pages(cfg.dataset), CPU, 0)


@pytest.fixture(scope="module")
def deepseek_global768() -> Workload:
    return _workload("model.image_mode=global768")


def _linear_stack_workload(prompt_tokens: int, vocab: int = 96, hidden: int = 32, layers: int = 3) -> Workload:
    built = build_linear_stack(vocab_size=vocab, hidden_size=hidden, num_layers=layers)
    model = built["model"].eval()
    ids = torch.arange(prompt_tokens).remainder(vocab).unsqueeze(0)
    return Workload("custom", model, [PreparedInput("p0", {"input_ids": ids}, prompt_tokens)],
                    *resolve_stage_map(model, built["stage_map"]), CPU, torch.float32)


def test_linear_stack_counts_exactly_and_substages_only_in_prefill():
    tokens, vocab, hidden, layers = 7, 96, 32, 3
    counted = count_stage_flops(_linear_stack_workload(tokens, vocab, hidden, layers), decode_steps=3)
    assert counted.prefill_flops == 2 * tokens * (layers * hidden**2 + hidden * vocab)
    assert counted.stage_flops == {"body_layers": 2 * tokens * layers * hidden**2,
                                   "body_lm_head": 2 * tokens * hidden * vocab}
    assert counted.stage_calls == {"body_layers": 1, "body_lm_head": 1}  # hooks are off during decode
    # No cache: each decode step feeds the one new token.
    assert counted.decode_step_flops == [2 * (layers * hidden**2 + hidden * vocab)] * 3
    assert counted.operator_flops["prefill"] == {"aten::mm": counted.prefill_flops}


@requires_transformers5
def test_counted_pass_sums_substages_nested_in_prefill(deepseek_global768):
    counted = count_stage_flops(deepseek_global768, decode_steps=2)
    assert set(counted.stage_flops) == {"vision_sam", "vision_encoder", "vision_projector"}
    assert all(flops > 0 for flops in counted.stage_flops.values())
    assert sum(counted.stage_flops.values()) < counted.prefill_flops  # the text decoder runs after vision
    # Per-operator counts add up to the stage totals.
    for stage, flops in counted.stage_flops.items():
        assert sum(counted.operator_flops[stage].values()) == flops
    assert sum(counted.operator_flops["prefill"].values()) == counted.prefill_flops
    assert sum(counted.operator_flops["decode"].values()) == sum(counted.decode_step_flops)
    # Each step attends to one more position: FLOPs grow by exactly 4 * layers * heads * head_dim.
    text = deepseek_global768.model.config.text_config
    growth = counted.decode_step_flops[1] - counted.decode_step_flops[0]
    assert growth == 4 * text.num_hidden_layers * text.hidden_size


@requires_transformers5
def test_moe_experts_and_cpu_attention_are_counted(deepseek_global768):
    """transformers' grouped_mm experts and CPU SDPA have no formula in torch: ours must count them."""
    counted = count_stage_flops(deepseek_global768, decode_steps=1)
    text = deepseek_global768.model.config.text_config
    sparse_layers = text.mlp_layer_types.count("sparse")
    step_ops = counted.operator_flops["decode"]
    experts_impl = deepseek_global768.info["experts_implementation"]
    if experts_impl == "grouped_mm":
        # One token, k experts, gate+up (2 * moe_inter outputs) and down: 6 * k * hidden * moe_inter.
        assert step_ops["aten::_grouped_mm"] == (
            sparse_layers * 6 * text.num_experts_per_tok * text.hidden_size * text.moe_intermediate_size)
    sdpa = "aten::_scaled_dot_product_flash_attention_for_cpu"
    context = counted.prompt_tokens + 1
    assert step_ops[sdpa] == 4 * text.num_hidden_layers * text.hidden_size * context


def test_extra_formulas_only_fill_gaps_in_torch_registry():
    from torch.utils import flop_counter

    assert EXTRA_FLOP_FORMULAS, "torch lacks grouped_mm/CPU SDPA formulas here; nothing to add is suspicious"
    replaced = set(EXTRA_FLOP_FORMULAS) & set(flop_counter.flop_registry)
    assert all("scaled_dot_product" in str(op) for op in replaced)  # only torch's non-GQA SDPA formulas
    # Plain torch misses CPU SDPA; ours counts it like CUDA SDPA: 4 * b * h * s_q * s_k * d.
    q = torch.randn(2, 3, 5, 8)
    k = torch.randn(2, 3, 7, 8)
    with FlopCounterMode(display=False) as plain:
        torch.nn.functional.scaled_dot_product_attention(q, k, k)
    with new_flop_counter() as ours:
        torch.nn.functional.scaled_dot_product_attention(q, k, k)
    assert plain.get_total_flops() == 0
    assert ours.get_total_flops() == 4 * 2 * 3 * 5 * 7 * 8


def test_sdpa_formula_is_gqa_aware():
    from llm_perf_opt.passes.counted import _sdpa_flop

    # 8 query heads sharing 2 K/V heads: the products run over all 8 query heads.
    assert _sdpa_flop((2, 8, 5, 16), (2, 2, 7, 16), (2, 2, 7, 16)) == 4 * 2 * 8 * 5 * 7 * 16
    q, kv = torch.randn(1, 8, 5, 16), torch.randn(1, 2, 7, 16)
    with new_flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
    assert counter.get_total_flops() == 4 * 8 * 5 * 7 * 16


def test_grouped_mm_formula_counts_routed_rows():
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no _grouped_mm")
    rows, k_dim, n_dim, experts = 12, 16, 8, 3
    a = torch.randn(rows, k_dim)
    b = torch.randn(experts, k_dim, n_dim)
    offsets = torch.tensor([4, 9, 12], dtype=torch.int32)
    try:
        with new_flop_counter() as counter:
            torch._grouped_mm(a, b, offs=offsets)
    except RuntimeError as exc:  # some builds have no CPU kernel for fp32
        pytest.skip(f"_grouped_mm does not run here: {exc}")
    assert counter.get_total_flops() == 2 * rows * k_dim * n_dim


@requires_transformers5
def test_counting_rejects_bad_arguments(deepseek_global768):
    with pytest.raises(InputError):
        count_stage_flops(deepseek_global768, input_index=len(deepseek_global768.inputs))
    with pytest.raises(InputError):
        count_stage_flops(deepseek_global768, decode_steps=-1)


def test_errors_in_the_model_propagate_instead_of_zero_counts():
    workload = _linear_stack_workload(4)
    workload.inputs[0].model_inputs["input_ids"] = torch.tensor([[10_000]])  # out of the vocabulary
    with pytest.raises(IndexError):
        count_stage_flops(workload)
    # Hooks are removed even after a failure: a later count is unaffected.
    workload.inputs[0].model_inputs["input_ids"] = torch.tensor([[1, 2, 3, 4]])
    assert count_stage_flops(workload, decode_steps=0).stage_calls == {"body_layers": 1, "body_lm_head": 1}


def _operators(rows: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["stage", "name", "self_cpu_ms", "self_device_ms"])
    frame["calls"] = 1
    for column in ("total_cpu_ms", "total_device_ms", "total_time_ms", "mean_time_ms"):
        frame[column] = 0.0
    return frame


def test_flop_coverage_uses_device_time_and_registry_names():
    frame = _operators([
        ("prefill", "aten::mm", 1.0, 6.0),
        ("prefill", "aten::_scaled_dot_product_efficient_attention", 1.0, 2.0),
        ("prefill", "aten::copy_", 50.0, 1.0),
        ("prefill", "aten::add", 50.0, 1.0),
        ("decode", "aten::_grouped_mm", 1.0, 1.0),
        ("decode", "aten::cat", 1.0, 3.0),
        ("vision_sam", "aten::view", 1.0, 0.0),
    ])
    coverage = flop_coverage(frame, formula_operator_names())
    # Device time is used (it sums > 0); a stage with no device time has no share.
    assert coverage == {"prefill": pytest.approx(2 / 10), "decode": pytest.approx(3 / 4)}
    assert coverage_warning(coverage) is not None and "decode 75%" in coverage_warning(coverage)
    assert coverage_warning(coverage, threshold=0.8) is None


def test_flop_coverage_falls_back_to_cpu_time():
    frame = _operators([
        ("prefill", "aten::addmm", 3.0, 0.0),
        ("prefill", "aten::linear", 1.0, 0.0),  # composite around addmm: its FLOPs are counted
        ("prefill", "aten::mkldnn_convolution", 2.0, 0.0),  # CPU kernel under aten::convolution
        ("prefill", "aten::softmax", 4.0, 0.0),
    ])
    assert flop_coverage(frame, formula_operator_names()) == {"prefill": pytest.approx(4 / 10)}
    with pytest.raises(ValueError):
        flop_coverage(frame.drop(columns=["self_cpu_ms"]), formula_operator_names())


@requires_transformers5
def test_efficiency_stage_costs_take_measured_flops_and_analytic_bytes(deepseek_global768, caplog):
    counted = count_stage_flops(deepseek_global768, decode_steps=2)
    analytic = analytic_costs_for_workload(deepseek_global768, 0, new_tokens=4)
    stages = efficiency_stage_costs(counted, analytic)
    assert set(stages) == {"prefill", "decode", "vision_sam", "vision_encoder", "vision_projector"}
    assert stages["prefill"] == {"flops": counted.prefill_flops, "bytes": analytic["prefill"].bytes}
    assert stages["vision_sam"]["flops"] == counted.stage_flops["vision_sam"]
    # decode is one step (the mean), never all steps.
    assert stages["decode"] == {"flops": counted.decode_step_mean_flops, "bytes": analytic["decode_step_mean"].bytes}
    assert not [r for r in caplog.records if "analytic" in r.getMessage()]  # they agree: no warning


@requires_transformers5
def test_counted_pass_stage_costs_groups_e2e_and_metric_names(deepseek_global768):
    """run_counted_pass: per stage one execution's costs, the vision group as its children's sum, e2e as a
    whole sample; the run record names them <stage>/flops, decode/step_flops, <stage>/flops_measured_over_analytic."""
    new_tokens = 4
    result = run_counted_pass(deepseek_global768, types.SimpleNamespace(decode_steps=2), new_tokens)
    counted = count_stage_flops(deepseek_global768, decode_steps=2)
    analytic = analytic_costs_for_workload(deepseek_global768, 0, new_tokens=new_tokens)
    costs = result.stage_costs
    subs = ("vision_sam", "vision_encoder", "vision_projector")
    assert set(costs) == {"e2e", "prefill", "vision", *subs, "decode"}
    assert costs["prefill"] == {"flops": counted.prefill_flops, "bytes": analytic["prefill"].bytes}
    assert costs["vision"]["flops"] == pytest.approx(sum(counted.stage_flops[s] for s in subs), rel=1e-12)
    assert costs["vision"]["bytes"] == pytest.approx(sum(analytic[s].bytes for s in subs), rel=1e-12)
    assert costs["e2e"]["flops"] == pytest.approx(counted.prefill_flops + 3 * counted.decode_step_mean_flops)
    assert costs["vision"]["flops"] < costs["prefill"]["flops"] < costs["e2e"]["flops"]
    assert result.per_input[0]["counted"]["stage_flops"] == counted.stage_flops
    ratios = result.measured_over_analytic
    assert set(ratios) == {"prefill", *subs, "decode"}
    assert all(ratio == pytest.approx(1.0, rel=0.05) for ratio in ratios.values()), ratios

    workload = WorkloadInfo(family="deepseek_ocr2", dtype="fp32", device="cpu", new_tokens=new_tokens, warmup=0,
                            repeats=1, inputs=[])
    record = build_record(RunParts(tree=deepseek_global768.stages, run=RunInfo(
        run_dir="run", run_uid="test-run", started_at="t0"),
                                   workload=workload, env={}, stage_costs=costs,
                                   measured_over_analytic=result.measured_over_analytic))
    assert record.stage("prefill").flops == counted.prefill_flops
    assert record.stage("vision_sam").bytes == analytic["vision_sam"].bytes
    assert record.stage("vision").flops == costs["vision"]["flops"]
    assert record.stage("decode").flops == counted.decode_step_mean_flops  # decode's costs are per step
    for stage in ("prefill", *subs, "decode"):
        assert record.stage(stage).flops_measured_over_analytic == pytest.approx(1.0, rel=0.05)


def test_efficiency_stage_costs_without_an_analytic_model_have_no_bytes(caplog):
    counted = count_stage_flops(_linear_stack_workload(5), decode_steps=1)
    stages = efficiency_stage_costs(counted, None)
    assert stages["prefill"] == {"flops": counted.prefill_flops}
    assert "bytes" not in stages["decode"]
    # A disagreement beyond 5% is reported once per stage.
    from llm_perf_opt.passes.analytic import StageCost

    efficiency_stage_costs(counted, {"prefill": StageCost(counted.prefill_flops * 2, 1.0)})
    assert any("prefill" in r.getMessage() and "analytic" in r.getMessage() for r in caplog.records)


def test_torch_sdpa_formulas_without_gqa_are_replaced(monkeypatch):
    """torch < 2.12 asserts equal heads in its SDPA formula; we then count CUDA SDPA ourselves."""
    from torch.utils import flop_counter

    from llm_perf_opt.passes import counted as flops

    def equal_heads_only(query_shape, key_shape, value_shape):
        assert query_shape[1] == key_shape[1]
        return 0

    monkeypatch.setattr(flop_counter, "sdpa_flop_count", equal_heads_only)
    extra = flops._extra_formulas()
    assert extra[torch.ops.aten._scaled_dot_product_flash_attention] is flops._sdpa_flop
    assert extra[torch.ops.aten._scaled_dot_product_efficient_attention] is flops._sdpa_flop
