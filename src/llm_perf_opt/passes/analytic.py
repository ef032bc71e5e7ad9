"""Analytic FLOPs and bytes per stage, from a model's configuration (docs/flops.md has the derivations).

Conventions (the same as the counted pass in `flops.py`, so that the two agree):
- A multiply-add is 2 FLOPs; only matrix products count (linear layers, convolutions, attention's
  QK^T and PV, SAM's relative-position einsums). Norms, activations, softmax, RoPE, residual adds,
  bias adds and interpolations count 0, as in `torch.utils.flop_counter.FlopCounterMode`.
- Attention, convention "dense" (default): scores and values over the full (query x key) rectangle,
  4 * heads_q * head_dim * q_len * k_len, whatever the mask. This is what FlopCounterMode counts for
  SDPA (it ignores `is_causal` and `attn_mask`) and what an explicit-mask kernel computes. GQA: the
  K/V projections use kv_heads, the attention products use the query heads (K/V are broadcast).
  Convention "masked": only the (query, key) pairs the mask keeps: q_len*(q_len+1)/2 for causal
  prefill, P*P + Q*P + Q*(Q+1)/2 for the DeepSeek-OCR-2 vision encoder (bidirectional over the P
  patches, causal over the Q learned queries). A causal flash kernel does about this much work.
- Logits: prefill computes the last position only (the generation loop passes logits_to_keep=1);
  each decode step one position. The LinearStack and DeepSeek-OCR v1's remote code (no `logits_to_keep`)
  compute every prompt position.
- MoE: the router GEMM for every token, k routed experts per token, the shared experts for every
  token. The FLOPs do not depend on which experts are picked.

Bytes (for MBU), with `dtype_bytes` per weight element (router weights at the size the model really keeps
them: fp32 in recent transformers for DeepSeek, read from the model when one is given):
- bytes_read: the weights a stage touches, once per call of the module (the vision tower runs once
  for the global view and once for the batch of tiles, so its weights count twice with tiles); the
  embedding rows gathered (T rows, not the table); MoE experts: per MoE layer the expected number of
  distinct experts touched by T tokens with uniform top-k routing, E * (1 - (1 - k/E)^T) (= k for one
  decode token at batch 1); the KV cache read by each decode step, 2 * layers * kv_heads * head_dim *
  context * dtype_bytes (context includes the new token).
- bytes_written: the KV cache entries written (T in prefill, 1 per decode step).
- Left out: activations (hidden states, attention scores and SAM's relative-position bias, MLP
  intermediates) and the logits. Decode is dominated by weights and KV; vision and prefill are
  compute-bound, where these byte counts are a lower bound.

Batches (`batch`, profiling.batch_size): one forward over B equal-shape prompts. FLOPs are B x those of
one prompt (every matmul row, attention pair, logit row and image view is per prompt). Bytes: weights
are read once per forward (per tower call for the vision tower: the batch's global views go through
one call, all its tiles through another), so they do not scale; embedding rows, KV cache reads and
writes scale with B; MoE experts touched are those of B x T tokens, E * (1 - (1 - k/E)^(B*T)).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llm_perf_opt.models.linear_stack import LinearStack
from llm_perf_opt.models.moe_routing import find_routers

ATTENTION_CONVENTIONS = ("dense", "masked")
VISION_STAGES = ("vision_sam", "vision_encoder", "vision_projector")


class UnsupportedArchitecture(Exception):
    """The analytic model does not describe this model (its FLOPs can still be counted, not derived)."""


@dataclass(frozen=True)
class StageCost:
    """FLOPs and bytes of one stage (one call sequence of it), in FLOPs and bytes."""

    flops: float
    bytes_read: float = 0.0
    bytes_written: float = 0.0

    @property
    def bytes(self) -> float:
        return self.bytes_read + self.bytes_written

    def __add__(self, other: StageCost) -> StageCost:
        return StageCost(self.flops + other.flops, self.bytes_read + other.bytes_read,
                         self.bytes_written + other.bytes_written)

    def scaled(self, factor: float) -> StageCost:
        return StageCost(self.flops * factor, self.bytes_read * factor, self.bytes_written * factor)


ZERO = StageCost(0.0)


@dataclass(frozen=True)
class VisionViews:
    """The image views of one DeepSeek-OCR-2 prompt: a square global view plus `tiles` square tiles."""

    global_px: int
    tiles: int = 0
    tile_px: int = 768


def _sum(costs) -> StageCost:
    total = ZERO
    for cost in costs:
        total = total + cost
    return total


def _check_attention(attention: str) -> None:
    if attention not in ATTENTION_CONVENTIONS:
        raise ValueError(f"attention={attention!r}: use one of {ATTENTION_CONVENTIONS}")


# --- DeepSeek-OCR-2 vision ------------------------------------------------------------------------


def _pair(value) -> int:
    if isinstance(value, (list, tuple)):
        if value[0] != value[1]:
            raise UnsupportedArchitecture(f"non-square SAM image/patch size {value}")
        return int(value[0])
    return int(value)


def sam_grid(sam, view_px: int) -> tuple[int, int, int]:
    """(G, G1, G2): SAM's patch grid side and the sides after the two stride-2 convs (3x3, pad 1)."""
    grid = view_px // _pair(sam.patch_size)
    grid1 = (grid - 1) // 2 + 1
    return grid, grid1, (grid1 - 1) // 2 + 1


def sam_parameters(sam) -> int:
    c, p, o = sam.hidden_size, _pair(sam.patch_size), sam.output_channels
    hd, m = c // sam.num_attention_heads, sam.mlp_dim
    d0, d1 = sam.downsample_channels
    pretrain_grid = _pair(sam.image_size) // p
    total = c * sam.num_channels * p * p + c
    total += pretrain_grid**2 * c if sam.use_abs_pos else 0
    for layer in range(sam.num_hidden_layers):
        span = pretrain_grid if layer in sam.global_attn_indexes else sam.window_size
        total += 4 * c  # two LayerNorms
        total += 3 * c * c + (3 * c if sam.qkv_bias else 0) + c * c + c  # qkv, proj
        total += 2 * (2 * span - 1) * hd if sam.use_rel_pos else 0
        total += c * m + m + m * c + c  # MLP
    total += o * c + 2 * o + o * o * 9 + 2 * o  # neck: 1x1 conv, LN, 3x3 conv, LN
    total += d0 * o * 9 + d1 * d0 * 9  # two stride-2 convs
    return total


def sam_cost(sam, view_px: int, views: int, dtype_bytes: int) -> StageCost:
    """SAM ViT (windowed + global attention, decomposed relative positions), neck and downsampling."""
    if views == 0:
        return ZERO
    c, p, o = sam.hidden_size, _pair(sam.patch_size), sam.output_channels
    m, w = sam.mlp_dim, sam.window_size
    d0, d1 = sam.downsample_channels
    grid, grid1, grid2 = sam_grid(sam, view_px)
    n = grid * grid
    flops = 2 * n * c * sam.num_channels * p * p  # patch embedding (conv, stride = kernel)
    for layer in range(sam.num_hidden_layers):
        if layer in sam.global_attn_indexes:
            tokens, keys, side = n, n, grid
        else:
            # Windowed layers pad the grid to a multiple of the window: padded tokens are computed.
            tokens, keys, side = math.ceil(grid / w) ** 2 * w * w, w * w, w
        flops += 2 * tokens * c * 3 * c + 2 * tokens * c * c  # qkv, proj
        flops += 4 * tokens * keys * c  # QK^T and PV over heads * head_dim = c
        if sam.use_rel_pos:
            # einsum bhwc,hkc and bhwc,wkc: 2 * tokens * (side + side) * head_dim per head.
            flops += 4 * tokens * side * c
        flops += 4 * n * c * m  # MLP
    flops += 2 * n * c * o + 2 * n * o * o * 9  # neck convs
    flops += 2 * grid1**2 * d0 * o * 9 + 2 * grid2**2 * d1 * d0 * 9  # downsampling convs
    return StageCost(views * flops, bytes_read=sam_parameters(sam) * dtype_bytes)


def encoder_queries(sam, view_px: int) -> int:
    """Learned queries for a view: 144 (768 px set) when SAM yields <= 144 patches, else 256."""
    return 144 if sam_grid(sam, view_px)[2] ** 2 <= 144 else 256


def encoder_parameters(enc) -> int:
    h, d = enc.hidden_size, getattr(enc, "head_dim", None) or enc.hidden_size // enc.num_attention_heads
    q, kv = enc.num_attention_heads * d, enc.num_key_value_heads * d
    layer = (h * q + q) + 2 * (h * kv + kv) + q * h + 3 * h * enc.intermediate_size + 2 * h
    return enc.num_hidden_layers * layer + h


def encoder_cost(enc, patches: int, queries: int, views: int, dtype_bytes: int, attention: str) -> StageCost:
    """Qwen2-style encoder over [patches + learned queries]: bidirectional over patches, causal over queries."""
    if views == 0:
        return ZERO
    h, d = enc.hidden_size, getattr(enc, "head_dim", None) or enc.hidden_size // enc.num_attention_heads
    heads, kv_heads = enc.num_attention_heads, enc.num_key_value_heads
    tokens = patches + queries
    if attention == "dense":
        pairs = tokens * tokens
    else:  # patches see all patches; query i sees all patches and queries 0..i
        pairs = patches * patches + queries * patches + queries * (queries + 1) / 2
    per_layer = 2 * tokens * h * (2 * heads * d + 2 * kv_heads * d)  # q, k, v, o
    per_layer += 4 * heads * d * pairs
    per_layer += 6 * tokens * h * enc.intermediate_size  # gate, up, down
    return StageCost(views * enc.num_hidden_layers * per_layer, bytes_read=encoder_parameters(enc) * dtype_bytes)


# --- decoder LMs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecoderSpec:
    """What the FLOP/byte model needs of a decoder LM (Llama/Qwen2/Mixtral/Qwen2-MoE/DeepSeek-MoE style)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int  # dense MLP
    mlp_kinds: tuple[str, ...]  # "dense" | "sparse" per layer
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int = 0
    shared_intermediate: int = 0  # all shared experts together
    shared_expert_gate: bool = False  # Qwen2-MoE: sigmoid(Linear(hidden, 1)) on the shared expert
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each head's q and k (parameters only, no FLOPs)
    tied_embeddings: bool = False
    router_bytes: int | None = None  # bytes per router weight when it is kept in another dtype

    def sparse_layers(self) -> int:
        return sum(kind == "sparse" for kind in self.mlp_kinds)

    def attention_parameters(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        params = self.hidden * q * 2 + self.hidden * kv * 2
        params += (q + 2 * kv) if self.qkv_bias else 0
        params += self.hidden if self.o_bias else 0
        params += 2 * self.head_dim if self.qk_norm else 0
        return params

    def dense_mlp_parameters(self, intermediate: int) -> int:
        return 3 * self.hidden * intermediate + ((2 * intermediate + self.hidden) if self.mlp_bias else 0)

    def expert_parameters(self) -> int:
        return 3 * self.hidden * self.expert_intermediate

    def parameters(self) -> int:
        """Parameter count (embeddings, layers, final norm, lm_head unless tied)."""
        total = self.vocab * self.hidden + self.hidden
        total += 0 if self.tied_embeddings else self.vocab * self.hidden
        for kind in self.mlp_kinds:
            total += self.attention_parameters() + 2 * self.hidden
            if kind == "dense":
                total += self.dense_mlp_parameters(self.intermediate)
            else:
                total += self.experts * self.expert_parameters() + self.experts * self.hidden
                total += self.dense_mlp_parameters(self.shared_intermediate) if self.shared_intermediate else 0
                total += self.hidden if self.shared_expert_gate else 0
        return total


def distinct_experts(experts: int, experts_per_token: int, tokens: int) -> float:
    """Expected number of distinct experts touched by `tokens` tokens under uniform top-k routing.

    Each token picks k of E experts without repeats, so an expert is missed by one token with
    probability 1 - k/E: E * (1 - (1 - k/E)^T). One token: exactly k.
    """
    if tokens <= 0 or experts == 0:
        return 0.0
    return experts * (1.0 - (1.0 - experts_per_token / experts) ** tokens)


def decoder_spec(config) -> DecoderSpec:
    """Read a DecoderSpec from a transformers text config; raises UnsupportedArchitecture otherwise."""
    model_type = getattr(config, "model_type", "")
    if getattr(config, "kv_lora_rank", None) or getattr(config, "q_lora_rank", None):
        raise UnsupportedArchitecture(f"{model_type}: multi-head latent attention (MLA) is not modelled")
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [name for name in required if getattr(config, name, None) is None]
    if missing:
        raise UnsupportedArchitecture(f"{model_type or type(config).__name__}: no {', '.join(missing)} in the config")
    hidden, layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    experts = (getattr(config, "n_routed_experts", None) or getattr(config, "num_local_experts", None)
               or getattr(config, "num_experts", None) or 0)
    top_k = getattr(config, "num_experts_per_tok", None) or 0
    kinds: list[str]
    if experts and top_k:
        if getattr(config, "mlp_layer_types", None):
            kinds = [str(kind) for kind in config.mlp_layer_types]
        elif getattr(config, "first_k_dense_replace", None) is not None:
            # DeepSeek-V2 (remote code): MoE from layer first_k_dense_replace on, every moe_layer_freq-th layer.
            freq = getattr(config, "moe_layer_freq", None) or 1
            kinds = ["sparse" if i >= config.first_k_dense_replace and i % freq == 0 else "dense"
                     for i in range(layers)]
        elif getattr(config, "decoder_sparse_step", None) is not None:
            only_mlp = set(getattr(config, "mlp_only_layers", None) or [])
            step = config.decoder_sparse_step
            kinds = ["sparse" if i not in only_mlp and (i + 1) % step == 0 else "dense" for i in range(layers)]
        else:
            kinds = ["sparse"] * layers
    else:
        experts, top_k, kinds = 0, 0, ["dense"] * layers
    if len(kinds) != layers or set(kinds) - {"dense", "sparse"}:
        raise UnsupportedArchitecture(f"{model_type}: MLP layer types {kinds} do not describe {layers} layers")
    expert_intermediate = getattr(config, "moe_intermediate_size", None) or (config.intermediate_size if experts else 0)
    shared = 0
    if getattr(config, "n_shared_experts", None):
        shared = config.n_shared_experts * expert_intermediate
    elif getattr(config, "shared_expert_intermediate_size", None):
        shared = config.shared_expert_intermediate_size
    attention_bias = bool(getattr(config, "attention_bias", False))
    qwen2_like = model_type in ("qwen2", "qwen2_moe")  # q/k/v carry a bias, o does not
    return DecoderSpec(
        hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab=config.vocab_size,
        intermediate=getattr(config, "intermediate_size", 0) or 0, mlp_kinds=tuple(kinds), experts=experts,
        experts_per_token=top_k, expert_intermediate=expert_intermediate if experts else 0,
        shared_intermediate=shared if experts else 0,
        shared_expert_gate=bool(experts and model_type == "qwen2_moe" and shared),
        qkv_bias=attention_bias or qwen2_like, o_bias=attention_bias and not qwen2_like,
        mlp_bias=bool(getattr(config, "mlp_bias", False)), qk_norm=model_type.startswith("qwen3"),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        router_bytes=4 if model_type.startswith("deepseek_ocr2") else None,
    )


def decoder_pass_cost(spec: DecoderSpec, tokens: int, past: int, logit_positions: int, dtype_bytes: int,
                      attention: str, batch: int = 1) -> StageCost:
    """One forward pass of `tokens` new tokens after `past` cached ones, for each of `batch` sequences.

    Attention pairs: dense = tokens * (past + tokens); masked = causal pairs only (per sequence).
    """
    keys = past + tokens
    pairs = tokens * keys if attention == "dense" else tokens * past + tokens * (tokens + 1) / 2
    rows = batch * tokens  # token rows through every linear layer
    h, q, kv = spec.hidden, spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    attn_flops = 2 * rows * h * (2 * q + 2 * kv) + 4 * spec.heads * spec.head_dim * pairs * batch
    router_bytes = spec.router_bytes or dtype_bytes
    flops = 0.0
    weight_bytes = 0.0
    for kind in spec.mlp_kinds:
        flops += attn_flops
        weight_bytes += (spec.attention_parameters() + 2 * h) * dtype_bytes
        if kind == "dense":
            flops += 6 * rows * h * spec.intermediate
            weight_bytes += spec.dense_mlp_parameters(spec.intermediate) * dtype_bytes
            continue
        flops += 2 * rows * h * spec.experts  # router logits
        flops += 6 * rows * spec.experts_per_token * h * spec.expert_intermediate
        weight_bytes += spec.experts * h * router_bytes
        touched = distinct_experts(spec.experts, spec.experts_per_token, rows)
        weight_bytes += touched * spec.expert_parameters() * dtype_bytes
        if spec.shared_intermediate:
            flops += 6 * rows * h * spec.shared_intermediate
            weight_bytes += spec.dense_mlp_parameters(spec.shared_intermediate) * dtype_bytes
        if spec.shared_expert_gate:
            flops += 2 * rows * h
            weight_bytes += h * dtype_bytes
    flops += 2 * batch * logit_positions * h * spec.vocab  # lm_head
    weight_bytes += (spec.vocab * h + h) * dtype_bytes  # lm_head (or the tied table) + final norm: once per forward
    embedding_rows = rows * h * dtype_bytes
    kv_entry = 2 * spec.layers * kv * dtype_bytes  # K and V of one position in every layer
    kv_read = kv_entry * keys * batch if past else 0.0  # prefill attends to K/V it just computed (activations)
    return StageCost(flops, bytes_read=weight_bytes + embedding_rows + kv_read, bytes_written=kv_entry * rows)


def _decode_stages(step_costs: list[StageCost]) -> dict[str, StageCost]:
    if not step_costs:
        return {}
    stages = {f"decode_step_{i + 1}": cost for i, cost in enumerate(step_costs)}
    total = _sum(step_costs)
    stages["decode"] = total
    stages["decode_step_mean"] = total.scaled(1.0 / len(step_costs))
    return stages


def _with_router_bytes(spec: DecoderSpec, router_bytes: int | None) -> DecoderSpec:
    return dataclasses.replace(spec, router_bytes=router_bytes) if router_bytes else spec


def decoder_costs(config, *, prompt_tokens: int, new_tokens: int, dtype_bytes: int, attention: str = "dense",
                  prefill_logit_positions: int = 1, router_bytes: int | None = None,
                  batch: int = 1) -> dict[str, StageCost]:
    """Generic decoder LM: prefill over the prompt, then new_tokens - 1 decode steps (as the timed pass)."""
    _check_attention(attention)
    spec = _with_router_bytes(decoder_spec(config), router_bytes)
    stages = {"prefill": decoder_pass_cost(spec, prompt_tokens, 0, prefill_logit_positions, dtype_bytes, attention,
                                           batch)}
    steps = [decoder_pass_cost(spec, 1, prompt_tokens + i, 1, dtype_bytes, attention, batch)
             for i in range(new_tokens - 1)]
    stages.update(_decode_stages(steps))
    return stages


# --- DeepSeek-OCR-2 -----------------------------------------------------------------------------------


def deepseek_ocr2_parameters(config) -> int:
    """Parameter count of DeepseekOcr2ForConditionalGeneration (checks the byte model's weight sizes)."""
    vision, text = config.vision_config, config.text_config
    he, ht = vision.encoder_config.hidden_size, text.hidden_size
    total = sam_parameters(vision.sam_config) + encoder_parameters(vision.encoder_config)
    total += (144 + 256) * he  # learned query sets
    total += he * ht + ht + ht  # projector, view separator
    return total + decoder_spec(text).parameters()


def vision_costs(config, views: VisionViews, dtype_bytes: int, attention: str, batch: int = 1) -> dict[str, StageCost]:
    """The three vision sub-stages, summed over the global view and the tiles (one tower call each).

    A batch of B pages: B global views in one call, B x tiles in the other (weights read once per call)."""
    sam, enc = config.vision_config.sam_config, config.vision_config.encoder_config
    ht = config.text_config.hidden_size
    stages = {name: ZERO for name in VISION_STAGES}
    for px, count in ((views.global_px, batch), (views.tile_px, views.tiles * batch)):
        if count == 0:
            continue
        patches = sam_grid(sam, px)[2] ** 2
        queries = encoder_queries(sam, px)
        stages["vision_sam"] += sam_cost(sam, px, count, dtype_bytes)
        stages["vision_encoder"] += encoder_cost(enc, patches, queries, count, dtype_bytes, attention)
        stages["vision_projector"] += StageCost(2 * count * queries * enc.hidden_size * ht,
                                                bytes_read=(enc.hidden_size * ht + ht) * dtype_bytes)
    return stages


def deepseek_ocr2_costs(config, *, prompt_tokens: int, new_tokens: int, dtype_bytes: int,
                        views: VisionViews | None, attention: str = "dense",
                        router_bytes: int | None = None, batch: int = 1) -> dict[str, StageCost]:
    """Prefill = vision sub-stages (nested in it) + text decoder over the whole prompt + lm_head (1 row per
    page); `batch` equal-shape pages per forward."""
    _check_attention(attention)
    spec = _with_router_bytes(decoder_spec(config.text_config), router_bytes)
    text_prefill = decoder_pass_cost(spec, prompt_tokens, 0, 1, dtype_bytes, attention, batch)
    stages: dict[str, StageCost] = {}
    if views is not None:
        stages.update(vision_costs(config, views, dtype_bytes, attention, batch))
        # Outside the sub-stages: the learned queries (one set per tower call, expanded over the batch) and
        # the view separator (one vector).
        he = config.vision_config.encoder_config.hidden_size
        query_bytes = sum(encoder_queries(config.vision_config.sam_config, px) * he * dtype_bytes
                          for px, n in ((views.global_px, 1), (views.tile_px, views.tiles)) if n)
        glue = StageCost(0.0, bytes_read=query_bytes + config.text_config.hidden_size * dtype_bytes)
        stages["prefill"] = _sum(stages[name] for name in VISION_STAGES) + glue + text_prefill
    else:
        stages["prefill"] = text_prefill
    steps = [decoder_pass_cost(spec, 1, prompt_tokens + i, 1, dtype_bytes, attention, batch)
             for i in range(new_tokens - 1)]
    stages.update(_decode_stages(steps))
    return stages


# --- DeepSeek-OCR (v1, remote code) -----------------------------------------------------------------

V1_VISION_STAGES = ("vision_sam", "vision_clip", "vision_projector")
V1_MODEL_CLASS = "DeepseekOCRForCausalLM"


@dataclass(frozen=True)
class SamSpec:
    """SAM ViT image encoder dimensions, under the attribute names sam_cost/sam_parameters read."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    mlp_dim: int
    global_attn_indexes: tuple[int, ...]
    window_size: int
    output_channels: int
    downsample_channels: tuple[int, int]
    patch_size: int = 16
    image_size: int = 1024
    num_channels: int = 3
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    qkv_bias: bool = True


@dataclass(frozen=True)
class ClipSpec:
    """CLIP-L as DeepSeek-OCR v1 runs it: its transformer over SAM's features (its own patch conv unused)."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    patch_size: int
    positions: int  # position-embedding rows (pretraining grid^2 + the class token)
    channels: int = 3

    def parameters(self) -> int:
        h, f = self.hidden, self.ffn
        embeddings = h + self.channels * h * self.patch_size**2 + self.positions * h  # class, patch conv, positions
        layer = 4 * h + (3 * h * h + 3 * h) + (h * h + h) + (h * f + f) + (f * h + h)  # 2 LN, qkv, out, fc1, fc2
        return embeddings + 2 * h + self.layers * layer  # + pre_layrnorm

    def parameters_read(self) -> int:
        """What a forward reads: everything but the patch conv (the SAM features replace it)."""
        return self.parameters() - self.channels * self.hidden * self.patch_size**2


@dataclass(frozen=True)
class V1Vision:
    sam: SamSpec
    clip: ClipSpec
    projector_in: int
    projector_out: int


# deepencoder.py's constants (build_sam_vit_b, vit_model_cfg, MlpProjector(input_dim=2048, n_embed=1280)): the
# released code takes none of them from config.json. v1_vision(model) reads the same from a built model.
RELEASED_V1_VISION = V1Vision(
    sam=SamSpec(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_dim=3072,
                global_attn_indexes=(2, 5, 8, 11), window_size=14, output_channels=256,
                downsample_channels=(512, 1024)),
    clip=ClipSpec(hidden=1024, layers=24, heads=16, ffn=4096, patch_size=14, positions=257),
    projector_in=2048, projector_out=1280,
)


def is_deepseek_ocr_v1(config) -> bool:
    return V1_MODEL_CLASS in (getattr(config, "architectures", None) or [])


def v1_vision(model: nn.Module | None) -> V1Vision:
    """The vision tower's dimensions, read from a built DeepseekOCRForCausalLM (else the released constants)."""
    if model is None:
        return RELEASED_V1_VISION
    inner = getattr(model, "model", None)
    sam, clip, projector = (getattr(inner, name, None) for name in ("sam_model", "vision_model", "projector"))
    if sam is None or clip is None or not isinstance(getattr(projector, "layers", None), nn.Linear):
        raise UnsupportedArchitecture(f"{type(model).__name__}: no sam_model / vision_model / linear projector")
    blocks = list(sam.blocks)
    conv = sam.patch_embed.proj
    sam_spec = SamSpec(
        hidden_size=conv.out_channels, num_hidden_layers=len(blocks), num_attention_heads=blocks[0].attn.num_heads,
        mlp_dim=blocks[0].mlp.lin1.out_features,
        global_attn_indexes=tuple(i for i, block in enumerate(blocks) if block.window_size == 0),
        window_size=next((block.window_size for block in blocks if block.window_size), 0),
        output_channels=sam.neck[0].out_channels,
        downsample_channels=(sam.net_2.out_channels, sam.net_3.out_channels),
        patch_size=conv.kernel_size[0], image_size=sam.img_size, num_channels=conv.in_channels,
        use_abs_pos=sam.pos_embed is not None, use_rel_pos=blocks[0].attn.use_rel_pos,
        qkv_bias=blocks[0].attn.qkv.bias is not None,
    )
    embeddings, layers = clip.embeddings, list(clip.transformer.layers)
    clip_spec = ClipSpec(hidden=embeddings.embed_dim, layers=len(layers), heads=layers[0].self_attn.num_heads,
                         ffn=layers[0].mlp.fc1.out_features, patch_size=embeddings.patch_size,
                         positions=embeddings.position_embedding.num_embeddings,
                         channels=embeddings.patch_embedding.in_channels)
    return V1Vision(sam_spec, clip_spec, projector.layers.in_features, projector.layers.out_features)


def deepseek_ocr_parameters(config, model: nn.Module | None = None) -> int:
    """Parameter count of DeepseekOCRForCausalLM: SAM + CLIP-L + projector + image_newline and view_seperator +
    the decoder (checks the byte model's weight sizes)."""
    vision = v1_vision(model)
    total = sam_parameters(vision.sam) + vision.clip.parameters()
    total += vision.projector_in * vision.projector_out + vision.projector_out
    total += 2 * config.hidden_size
    return total + decoder_spec(config).parameters()


def clip_cost(clip: ClipSpec, tokens: int, views: int, dtype_bytes: int) -> StageCost:
    """CLIP-L's transformer over `tokens` (SAM patches + the class token) per view: qkv, out, fc1, fc2, SDPA."""
    h, f = clip.hidden, clip.ffn
    per_layer = 2 * tokens * h * 3 * h + 2 * tokens * h * h + 4 * tokens * h * f + 4 * tokens * tokens * h
    return StageCost(views * clip.layers * per_layer, bytes_read=clip.parameters_read() * dtype_bytes)


def v1_vision_costs(vision: V1Vision, views: VisionViews, dtype_bytes: int, batch: int = 1) -> dict[str, StageCost]:
    """SAM -> CLIP-L -> projector per page: the tiles in one call of each module, the global view in another
    (the forward loops over the pages of a batch: weights are read once per call, calls = pages x views sets)."""
    stages = {name: ZERO for name in V1_VISION_STAGES}
    for px, count in ((views.tile_px, views.tiles), (views.global_px, 1)):
        if count == 0:
            continue
        patches = sam_grid(vision.sam, px)[2] ** 2
        for _ in range(batch):
            stages["vision_sam"] += sam_cost(vision.sam, px, count, dtype_bytes)
            stages["vision_clip"] += clip_cost(vision.clip, patches + 1, count, dtype_bytes)
            stages["vision_projector"] += StageCost(
                2 * count * patches * vision.projector_in * vision.projector_out,
                bytes_read=(vision.projector_in * vision.projector_out + vision.projector_out) * dtype_bytes)
    return stages


def deepseek_ocr_costs(config, *, prompt_tokens: int, new_tokens: int, dtype_bytes: int,
                       views: VisionViews | None, attention: str = "dense", router_bytes: int | None = None,
                       batch: int = 1, model: nn.Module | None = None) -> dict[str, StageCost]:
    """DeepSeek-OCR v1: prefill = vision sub-stages (nested in it) + the MoE decoder over the whole prompt + the
    lm_head over every prompt position (the remote forward has no logits_to_keep); decode steps as any decoder."""
    _check_attention(attention)
    spec = _with_router_bytes(decoder_spec(config), router_bytes)

    def rope(tokens: int) -> StageCost:
        # transformers 4.46's LlamaAttention (the remote decoder's "mha_eager") computes its RoPE angles in every
        # layer: inv_freq (head_dim/2) x positions, one matmul over the (unbatched) position ids.
        return StageCost(float(spec.layers * spec.head_dim * tokens))

    text_prefill = decoder_pass_cost(spec, prompt_tokens, 0, prompt_tokens, dtype_bytes, attention, batch)
    text_prefill += rope(prompt_tokens)
    stages: dict[str, StageCost] = {}
    if views is not None:
        stages.update(v1_vision_costs(v1_vision(model), views, dtype_bytes, batch))
        # Outside the sub-stages: image_newline and view_seperator, read once per page.
        glue = StageCost(0.0, bytes_read=batch * 2 * config.hidden_size * dtype_bytes)
        stages["prefill"] = _sum(stages[name] for name in V1_VISION_STAGES) + glue + text_prefill
    else:
        stages["prefill"] = text_prefill
    steps = [decoder_pass_cost(spec, 1, prompt_tokens + i, 1, dtype_bytes, attention, batch) + rope(1)
             for i in range(new_tokens - 1)]
    stages.update(_decode_stages(steps))
    return stages


# --- LinearStack ----------------------------------------------------------------------------------


def linear_stack_costs(model: nn.Module, *, prompt_tokens: int, new_tokens: int,
                       dtype_bytes: int, batch: int = 1) -> dict[str, StageCost]:
    """Exact: FLOPs = 2 * T * (L * h^2 + h * V) for T tokens; logits for every position, no cache.

    Sub-stages follow build_linear_stack's stage map: body/layers (2*T*L*h^2), body/lm_head (2*T*h*V).
    Each decode step feeds one token (no cache): T = 1. A batch of B sequences: T = B x tokens, the
    weights read once.
    """
    hidden, vocab = model.embed.embedding_dim, model.embed.num_embeddings
    layers = len(model.layers)

    def one_pass(tokens: int) -> dict[str, StageCost]:
        tokens = batch * tokens
        body = StageCost(2 * tokens * layers * hidden**2, bytes_read=layers * hidden**2 * dtype_bytes)
        head = StageCost(2 * tokens * hidden * vocab, bytes_read=hidden * vocab * dtype_bytes)
        embed = StageCost(0.0, bytes_read=tokens * hidden * dtype_bytes)
        return {"body_layers": body, "body_lm_head": head, "total": body + head + embed}

    prefill = one_pass(prompt_tokens)
    stages = {"prefill": prefill["total"], "body_layers": prefill["body_layers"],
              "body_lm_head": prefill["body_lm_head"]}
    stages.update(_decode_stages([one_pass(1)["total"] for _ in range(new_tokens - 1)]))
    return stages


# --- entry points ---------------------------------------------------------------------------------


def analytic_costs(
    source: Any,
    *,
    prompt_tokens: int,
    new_tokens: int,
    dtype_bytes: int,
    views: VisionViews | None = None,
    attention: str = "dense",
    batch: int = 1,
) -> dict[str, StageCost]:
    """Analytic costs per stage for a model, its config, or a Workload.

    `new_tokens` follows the timed pass: prefill yields the first token, then new_tokens - 1 decode
    steps; step i (1-based) attends to prompt_tokens + i positions. Keys: "prefill", the sub-stages
    ("vision_sam", "vision_encoder", "vision_projector" for DeepSeek-OCR-2 with `views`; "vision_sam",
    "vision_clip", "vision_projector" for DeepSeek-OCR v1 with `views`; "body_layers",
    "body_lm_head" for the LinearStack), and with at least one decode step "decode_step_1".. ,
    "decode_step_mean" and "decode" (all steps). `batch`: equal-shape prompts per forward (every cost is
    that of the whole batch). Raises UnsupportedArchitecture for other models.
    """
    if prompt_tokens < 1 or new_tokens < 1 or batch < 1:
        raise ValueError(f"prompt_tokens={prompt_tokens}, new_tokens={new_tokens} and batch={batch} must be >= 1")
    config, router_bytes = source, None
    model = source if isinstance(source, nn.Module) else getattr(source, "model", None)  # a Workload has .model
    if isinstance(model, nn.Module):
        # The dtype routers are really kept in: transformers versions differ (fp32 or the model's dtype).
        routers = find_routers(model)
        router_bytes = routers[0].weight.element_size() if routers else None
        if isinstance(model, LinearStack):
            return linear_stack_costs(model, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                                      dtype_bytes=dtype_bytes, batch=batch)
        config = getattr(model, "config", None)
        if config is None:
            raise UnsupportedArchitecture(f"{type(model).__name__} has no transformers config to derive costs from")
    if is_deepseek_ocr_v1(config):
        return deepseek_ocr_costs(config, prompt_tokens=prompt_tokens, new_tokens=new_tokens, dtype_bytes=dtype_bytes,
                                  views=views, attention=attention, router_bytes=router_bytes, batch=batch,
                                  model=model if isinstance(model, nn.Module) else None)
    if getattr(config, "model_type", None) == "deepseek_ocr2":
        return deepseek_ocr2_costs(config, prompt_tokens=prompt_tokens, new_tokens=new_tokens, dtype_bytes=dtype_bytes,
                                   views=views, attention=attention, router_bytes=router_bytes, batch=batch)
    if hasattr(config, "text_config") and getattr(config, "vision_config", None) is not None:
        raise UnsupportedArchitecture(
            f"{config.model_type}: only DeepSeek-OCR-2 is modelled among vision-language models")
    return decoder_costs(config, prompt_tokens=prompt_tokens, new_tokens=new_tokens, dtype_bytes=dtype_bytes,
                         attention=attention, router_bytes=router_bytes, batch=batch)


def views_of(model_inputs: dict[str, Any], batch: int = 1) -> VisionViews | None:
    """The image views of one page of prepared DeepSeek-OCR-2 inputs of `batch` equal-shape pages:
    pixel_values (B,3,S,S), pixel_values_local (B*n,3,s,s); or of DeepSeek-OCR v1 inputs: images, a list of
    B (tiles [n,3,s,s], global [1,3,S,S]) pairs, and images_spatial_crop [[w, h]] * B (tiles when w or h > 1)."""
    if "images" in model_inputs and "images_spatial_crop" in model_inputs:
        return _v1_views(model_inputs["images"], model_inputs["images_spatial_crop"], batch)
    pixels = model_inputs.get("pixel_values")
    if pixels is None:
        return None
    if pixels.shape[0] != batch or pixels.shape[-1] != pixels.shape[-2]:
        raise UnsupportedArchitecture(f"pixel_values of shape {tuple(pixels.shape)}: {batch} square global view(s) "
                                      "expected")
    local = model_inputs.get("pixel_values_local")
    if local is not None and local.shape[0] % batch:
        raise UnsupportedArchitecture(f"pixel_values_local of shape {tuple(local.shape)}: not {batch} equal tile sets")
    tiles = 0 if local is None else int(local.shape[0]) // batch
    tile_px = 768 if local is None else int(local.shape[-1])
    return VisionViews(global_px=int(pixels.shape[-1]), tiles=tiles, tile_px=tile_px)


def _v1_views(images, spatial_crop, batch: int) -> VisionViews | None:
    if images is None:
        return None
    if len(images) != batch or len(spatial_crop) != batch:
        raise UnsupportedArchitecture(f"{len(images)} image pairs for a batch of {batch} pages")
    views = set()
    for (tiles, global_view), (width, height) in zip(images, spatial_crop):
        if global_view.shape[-1] != global_view.shape[-2] or tiles.shape[-1] != tiles.shape[-2]:
            raise UnsupportedArchitecture(f"non-square views {tuple(tiles.shape)}, {tuple(global_view.shape)}")
        count = int(tiles.shape[0]) if int(width) > 1 or int(height) > 1 else 0
        views.add(VisionViews(global_px=int(global_view.shape[-1]), tiles=count, tile_px=int(tiles.shape[-1])))
    if len(views) != 1:
        raise UnsupportedArchitecture(f"pages of one batch with different views: {sorted(views, key=str)}")
    return views.pop()


def analytic_costs_for_workload(workload, input_index: int = 0, *, new_tokens: int,
                                attention: str = "dense") -> dict[str, StageCost]:
    """analytic_costs for one entry of a Workload's `batches` (its inputs at batch_size 1): prompt length,
    image views, batch size and dtype from it."""
    prepared = workload.batches[input_index]
    dtype_bytes = torch.empty((), dtype=workload.dtype).element_size()
    return analytic_costs(workload.model, prompt_tokens=prepared.prompt_tokens, new_tokens=new_tokens,
                          dtype_bytes=dtype_bytes, views=views_of(prepared.model_inputs, prepared.batch_size),
                          attention=attention, batch=prepared.batch_size)
