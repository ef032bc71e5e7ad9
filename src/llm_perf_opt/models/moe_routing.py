"""Uniform expert routing for MoE models with random weights.

A router with random weights sends tokens to experts in a pattern no trained model shows (often a few
experts take most tokens), which distorts MoE time and bytes. `uniform` routing keeps the router's own
logits GEMM (so its cost stays in the profile) but picks each token's top-k experts uniformly at random,
without repeats, with equal weights. The choice is recorded with every run (`moe_routing`).

Two router shapes are known: transformers' DeepSeek-style `...TopkRouter` (forward -> logits, weights,
indices) and the `MoEGate` of DeepSeek-V2's remote code (DeepSeek-OCR v1; forward -> indices, weights,
aux loss). Each keeps its own return shape under uniform routing.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def _is_topk_router(module: nn.Module) -> bool:
    # transformers' DeepSeek-style routers (DeepseekOcr2TextTopkRouter, ...): a `weight` of shape
    # (num_experts, hidden), attributes top_k / num_experts, forward -> (logits, weights, indices).
    return (
        type(module).__name__.endswith("TopkRouter")
        and hasattr(module, "top_k")
        and hasattr(module, "num_experts")
        and isinstance(getattr(module, "weight", None), torch.Tensor)
    )


def _is_moe_gate(module: nn.Module) -> bool:
    # DeepSeek-V2 remote code (modeling_deepseekv2.MoEGate): weight (n_routed_experts, hidden), top_k,
    # forward -> (topk_idx, topk_weight, aux_loss), weights used as given by DeepseekV2MoE.moe_infer.
    return (
        type(module).__name__ == "MoEGate"
        and hasattr(module, "top_k")
        and hasattr(module, "n_routed_experts")
        and isinstance(getattr(module, "weight", None), torch.Tensor)
    )


def _uniform_forward(self: nn.Module, hidden_states: torch.Tensor):
    hidden_states = hidden_states.view(-1, self.weight.shape[-1])
    router_logits = F.linear(hidden_states.type(torch.float32), self.weight.type(torch.float32))
    # Inside torch.compile (model.compile) the draw comes from the global generator (seeded with the run's
    # seed): compiled graphs cannot take a torch.Generator, and CUDA graphs replay the global one's offsets.
    generator = None if torch.compiler.is_compiling() else self._uniform_generator
    noise = torch.rand(router_logits.shape, device=router_logits.device, generator=generator)
    topk_indices = noise.topk(self.top_k, dim=-1, sorted=False).indices
    scale = getattr(self, "routed_scaling_factor", 1.0) / self.top_k
    topk_weights = torch.full(topk_indices.shape, scale, dtype=torch.float32, device=router_logits.device)
    return router_logits, topk_weights, topk_indices


def _uniform_gate_forward(self: nn.Module, hidden_states: torch.Tensor):
    """The same choice (router GEMM kept) in MoEGate's return shape: (indices, weights, no aux loss)."""
    _, topk_weights, topk_indices = _uniform_forward(self, hidden_states)
    return topk_indices, topk_weights, None


def find_routers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if _is_topk_router(m) or _is_moe_gate(m)]


def apply_uniform_routing(model: nn.Module, seed: int = 0) -> int:
    """Switch every top-k router of `model` to uniform routing; returns how many were switched."""
    routers = find_routers(model)
    for index, router in enumerate(routers):
        device = router.weight.device
        router._uniform_generator = torch.Generator(device=device).manual_seed(seed + index)
        forward = _uniform_gate_forward if _is_moe_gate(router) else _uniform_forward
        router.forward = types.MethodType(forward, router)
    return len(routers)


def apply_routing_choice(model: nn.Module, requested: str, weights: str, seed: int = 0) -> tuple[str, int]:
    """Resolve `model.moe_routing` and apply it: returns (routing that ran, routers switched).

    `auto` is uniform for random weights when the model has top-k routers, else the model's own.
    """
    routing = str(requested)  # auto | uniform | model (the config's MoeRouting enum)
    if routing == "auto":
        routing = "uniform" if weights == "random" and find_routers(model) else "model"
    return routing, (apply_uniform_routing(model, seed) if routing == "uniform" else 0)
