"""Analytic FLOPs and bytes against the counted pass (tiny models on CPU, the full preset on meta)."""

from __future__ import annotations

import types

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import FAST, compose_config, requires_transformers5
from llm_perf_opt.data import load_pages
from llm_perf_opt.models import build_workload
from llm_perf_opt.models.deepseek_ocr2 import IMAGE_MODES, build_config, image_token_count
from llm_perf_opt.models.linear_stack import build_linear_stack
from llm_perf_opt.models.moe_routing import find_routers
from llm_perf_opt.models.workload import PreparedInput, Workload, resolve_stage_map
from llm_perf_opt.passes.analytic import (
    StageCost,
    UnsupportedArchitecture,
    VisionViews,
    analytic_costs,
    analytic_costs_for_workload,
    decoder_spec,
    deepseek_ocr2_parameters,
    distinct_experts,
)
from llm_perf_opt.passes.counted import count_stage_flops

CPU = torch.device("cpu")
META = torch.device("meta")
AGREE = 0.05  # measured vs analytic, relative
VISION = ("vision_sam", "vision_encoder", "vision_projector")


def _assert_agree(counted, costs, stages=VISION) -> None:
    assert counted.prefill_flops == pytest.approx(costs["prefill"].flops, rel=AGREE)
    for stage in stages:
        assert counted.stage_flops[stage] == pytest.approx(costs[stage].flops, rel=AGREE), stage
    assert counted.decode_step_flops, "no decode step was counted"
    for step, flops in enumerate(counted.decode_step_flops, start=1):
        assert flops == pytest.approx(costs[f"decode_step_{step}"].flops, rel=AGREE), step


def _workload(*overrides: str) -> Workload:
    cfg = compose_config(*FAST, *overrides)
    return build_workload(cfg.model, load_pages(cfg.dataset), CPU, 0)


# --- tiny models on the CPU -------------------------------------------------------------------------


@pytest.mark.parametrize("image_mode", ["global768", "tiled"])
@requires_transformers5
def test_deepseek_tiny_measured_and_analytic_agree(image_mode):
    workload = _workload(f"model.image_mode={image_mode}")
    counted = count_stage_flops(workload, decode_steps=2)
    costs = analytic_costs_for_workload(workload, 0, new_tokens=3)
    _assert_agree(counted, costs)
    tiles = workload.inputs[0].meta["tiles"]
    assert (tiles > 0) == (image_mode == "tiled")
    # With tiles the tower runs twice (global view, batch of tiles): both calls are in the stage sums.
    assert counted.stage_calls["vision_sam"] == (2 if tiles else 1)
    # Vision is nested in prefill: the sub-stages never exceed it.
    assert sum(costs[s].flops for s in VISION) < costs["prefill"].flops


@requires_transformers5
def test_generic_llama_tiny_measured_and_analytic_agree():
    workload = _workload("model=hf_causal_lm", "model.prompt_tokens=48")
    counted = count_stage_flops(workload, decode_steps=2)
    costs = analytic_costs_for_workload(workload, 0, new_tokens=3)
    _assert_agree(counted, costs, stages=())
    config = workload.model.config
    assert decoder_spec(config).parameters() == sum(p.numel() for p in workload.model.parameters())


@pytest.mark.parametrize("model_type, extra", [
    ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2)),
    ("qwen2_moe", dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                       shared_expert_intermediate_size=48, decoder_sparse_step=1, mlp_only_layers=[0])),
])
@requires_transformers5
def test_generic_moe_measured_and_analytic_agree(model_type, extra):
    config = AutoConfig.for_model(model_type, vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(2, 500, (1, 40))
    workload = Workload("hf_causal_lm", model, [PreparedInput("p", {"input_ids": ids}, 40)],
                        *resolve_stage_map(model, {}), CPU, torch.float32)
    counted = count_stage_flops(workload, decode_steps=2)
    _assert_agree(counted, analytic_costs_for_workload(workload, 0, new_tokens=3), stages=())
    assert decoder_spec(config).parameters() == sum(p.numel() for p in model.parameters())


def test_linear_stack_is_exact():
    tokens, vocab, hidden, layers, new_tokens = 9, 80, 24, 5, 4
    model = build_linear_stack(vocab, hidden, layers)["model"]
    costs = analytic_costs(model, prompt_tokens=tokens, new_tokens=new_tokens, dtype_bytes=4)
    weights = layers * hidden**2 + hidden * vocab
    assert costs["prefill"] == StageCost(2 * tokens * weights, bytes_read=(weights + tokens * hidden) * 4)
    assert costs["body_layers"].flops == 2 * tokens * layers * hidden**2
    assert costs["decode_step_mean"].flops == 2 * weights
    assert costs["decode"].flops == (new_tokens - 1) * 2 * weights
    assert [k for k in costs if k.startswith("decode_step_") and k[-1].isdigit()] == ["decode_step_1", "decode_step_2",
                                                                                      "decode_step_3"]
    # And the counter agrees to the FLOP.
    ids = torch.arange(tokens).unsqueeze(0)
    built = build_linear_stack(vocab, hidden, layers)
    workload = Workload("custom", built["model"], [PreparedInput("p", {"input_ids": ids}, tokens)],
                        *resolve_stage_map(built["model"], built["stage_map"]), CPU, torch.float32)
    counted = count_stage_flops(workload, decode_steps=3)
    assert counted.prefill_flops == costs["prefill"].flops
    assert counted.stage_flops == {stage: costs[stage].flops for stage in ("body_layers", "body_lm_head")}
    assert counted.decode_step_flops == [costs["decode_step_1"].flops] * 3


# --- the full preset on the meta device -----------------------------------------------------------------


def _placeholder_mask(self, input_ids, inputs_embeds, image_features):
    # The stock check compares a count with .item(), impossible on meta tensors; the mask itself is not.
    return (input_ids == self.config.image_token_id).unsqueeze(-1)


@pytest.fixture(scope="module")
def full_on_meta() -> Workload:
    """The released dimensions without weights: shapes only, no memory, FLOPs counted all the same.

    bf16, since the meta kernel of grouped_mm (the default MoE experts implementation) wants bf16;
    MoE routing shapes are static there (sort/histc/offsets), so no data-dependent op stops it.
    """
    from transformers import DeepseekOcr2ForConditionalGeneration

    config = build_config("full")
    extra = {} if hasattr(torch, "_grouped_mm") else {"experts_implementation": "batched_mm"}
    with META:
        model = DeepseekOcr2ForConditionalGeneration._from_config(config, dtype=torch.bfloat16,
                                                                 attn_implementation="sdpa", **extra)
    model.eval()
    model.model.get_placeholder_mask = types.MethodType(_placeholder_mask, model.model)
    inputs = []
    for mode_name, tiles in (("tiled", 6), ("global768", 0), ("tiled", 2)):
        mode = IMAGE_MODES[mode_name]
        prompt = 1 + image_token_count(mode, tiles) + 12
        with META:
            model_inputs = {"input_ids": torch.zeros(1, prompt, dtype=torch.long),
                            "pixel_values": torch.empty(1, 3, mode.global_size, mode.global_size, dtype=torch.bfloat16),
                            "num_local_patches": [tiles]}
            if tiles:
                model_inputs["pixel_values_local"] = torch.empty(tiles, 3, 768, 768, dtype=torch.bfloat16)
        inputs.append(PreparedInput(f"{mode_name}-{tiles}", model_inputs, prompt, prompt - 13, {"tiles": tiles}))
    stage_map = dict(compose_config().model.stage_map)
    return Workload("deepseek_ocr2", model, inputs, *resolve_stage_map(model, stage_map), META, torch.bfloat16)


@pytest.mark.parametrize("input_index", [0, 1, 2])
@requires_transformers5
def test_deepseek_full_on_meta_measured_and_analytic_agree(full_on_meta, input_index):
    counted = count_stage_flops(full_on_meta, input_index=input_index, decode_steps=2)
    costs = analytic_costs_for_workload(full_on_meta, input_index, new_tokens=3)
    _assert_agree(counted, costs)
    assert counted.stage_calls["vision_sam"] == (2 if full_on_meta.inputs[input_index].meta["tiles"] else 1)


@requires_transformers5
def test_parameter_counts_behind_the_byte_model(full_on_meta):
    full = full_on_meta.model
    assert deepseek_ocr2_parameters(full.config) == sum(p.numel() for p in full.parameters())
    tiny = _workload("model.image_mode=global768").model
    assert deepseek_ocr2_parameters(tiny.config) == sum(p.numel() for p in tiny.parameters())


def _bytes_of(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@requires_transformers5
def test_decode_bytes_are_used_weights_plus_kv_cache(full_on_meta):
    """Decode reads the text weights except unused experts, one embedding row and the KV cache."""
    model = full_on_meta.model
    text = model.config.text_config
    prompt = full_on_meta.inputs[0].prompt_tokens
    costs = analytic_costs_for_workload(full_on_meta, 0, new_tokens=5)
    language = model.model.language_model
    embed = language.embed_tokens.weight
    moe_layers = [layer.mlp for layer in language.layers if hasattr(layer.mlp, "experts")]
    unused = sum(_bytes_of(mlp.experts) for mlp in moe_layers) * (1 - text.num_experts_per_tok / text.n_routed_experts)
    weights = _bytes_of(language) + _bytes_of(model.lm_head) - embed.numel() * 2 + embed.shape[1] * 2 - unused
    head_dim = text.hidden_size // text.num_attention_heads
    kv_entry = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * 2  # bf16
    for step in range(1, 5):
        cost = costs[f"decode_step_{step}"]
        assert cost.bytes_read == pytest.approx(weights + kv_entry * (prompt + step), rel=1e-9)
        assert cost.bytes_written == kv_entry
    # Vision weights: once per tower call (global view + batch of tiles).
    assert costs["vision_sam"].bytes_read == 2 * _bytes_of(model.model.vision_tower.sam_encoder)
    assert costs["vision_encoder"].bytes_read == 2 * _bytes_of(model.model.vision_tower.vision_encoder)
    assert costs["prefill"].bytes_written == kv_entry * prompt


@requires_transformers5
def test_distinct_experts_matches_uniform_routing():
    workload = _workload("model.image_mode=global768")
    router = find_routers(workload.model)[0]
    experts, k, tokens, trials = router.num_experts, router.top_k, 3, 4000
    # One router call routes trials x tokens rows; each trial's `tokens` rows form one prompt.
    picks = router(torch.zeros(trials * tokens, router.weight.shape[-1]))[2].reshape(trials, tokens * k)
    used = torch.zeros(trials, experts).scatter_(1, picks, 1.0).sum(dim=1)
    assert used.mean().item() == pytest.approx(distinct_experts(experts, k, tokens), abs=0.05)  # ~4 sigma
    assert distinct_experts(experts, k, 1) == pytest.approx(k)
    assert distinct_experts(64, 6, 4000) == pytest.approx(64)


@requires_transformers5
def test_masked_attention_convention_counts_only_kept_pairs():
    config = AutoConfig.for_model("llama", vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2)
    tokens = 50
    dense = analytic_costs(config, prompt_tokens=tokens, new_tokens=3, dtype_bytes=2)
    masked = analytic_costs(config, prompt_tokens=tokens, new_tokens=3, dtype_bytes=2, attention="masked")
    pairs_removed = tokens * tokens - tokens * (tokens + 1) / 2
    assert dense["prefill"].flops - masked["prefill"].flops == 4 * 3 * 64 * pairs_removed
    assert dense["decode_step_2"] == masked["decode_step_2"]  # one query sees every cached key
    # Vision encoder: bidirectional patches, causal queries.
    ocr = build_config("tiny")
    views = VisionViews(global_px=768)
    d = analytic_costs(ocr, prompt_tokens=158, new_tokens=1, dtype_bytes=4, views=views)
    m = analytic_costs(ocr, prompt_tokens=158, new_tokens=1, dtype_bytes=4, views=views, attention="masked")
    patches, queries, enc = 144, 144, ocr.vision_config.encoder_config
    removed = (patches + queries) ** 2 - (patches**2 + queries * patches + queries * (queries + 1) / 2)
    encoder_gap = d["vision_encoder"].flops - m["vision_encoder"].flops
    assert encoder_gap == 4 * enc.num_hidden_layers * enc.hidden_size * removed
    assert d["vision_sam"] == m["vision_sam"]
    assert "decode" not in d  # new_tokens=1: no decode step, no decode cost (absent, not zero)


@requires_transformers5
def test_unsupported_models_say_so():
    mla = AutoConfig.for_model("deepseek_v3", vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                               num_attention_heads=4, kv_lora_rank=16, q_lora_rank=24)
    with pytest.raises(UnsupportedArchitecture):
        analytic_costs(mla, prompt_tokens=8, new_tokens=2, dtype_bytes=2)
    with pytest.raises(UnsupportedArchitecture):
        analytic_costs(torch.nn.Linear(4, 4), prompt_tokens=8, new_tokens=2, dtype_bytes=2)
