"""The generation loop: greedy prefill and decode, small enough to read in one sitting.

The loop does what `generate()` does for one unpadded sequence, or a batch of equal-length ones
(models.batching never pads), and nothing more: the first forward pass computes only the last
position's logits (`logits_to_keep=1`), later passes feed one token per sequence and the KV cache, no
attention mask is passed (unpadded sequences need none: a growing mask only adds work), and MoE models
decode with the experts implementation `generate()` switches to (`decode_phase`: batched_mm instead of
grouped_mm on a GPU; 1.6x faster decode on an H200 for DeepSeek-OCR-2, docs/benchmarks.md). The next
token stays on the device: no host synchronisation per step unless `eos_token_id` is given (stopping at
EOS needs the token's value on the host).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class CallConvention:
    """How a model's forward takes and returns the KV cache.

    transformers renamed `past_key_values` to `cache` (5.2x); checking the signature keeps one loop
    working on both. `cache_kwarg=None` means a plain module without a cache: each decode step feeds
    only the new token.
    """

    cache_kwarg: str | None
    logits_to_keep: bool

    @classmethod
    def detect(cls, model: nn.Module) -> CallConvention:
        params = inspect.signature(model.forward).parameters
        cache_kwarg = next((name for name in ("cache", "past_key_values") if name in params), None)
        return cls(cache_kwarg=cache_kwarg, logits_to_keep="logits_to_keep" in params)


def decode_experts_plan(model: nn.Module, requested: str | None, device: torch.device) -> dict[str, str] | None:
    """The MoE experts implementation to decode with, as `set_experts_implementation` takes it, or None.

    `auto` does what `generate()` does: off the CPU, every `grouped_mm` becomes `batched_mm` for the
    decode phase (one token per step: gathering k experts' weights beats grouped GEMMs). `same` keeps
    the prefill implementation; a name (eager, grouped_mm, batched_mm) is used for decode.
    """
    if not hasattr(model, "get_experts_implementation") or requested in (None, "same"):
        return None
    current = model.get_experts_implementation()
    if requested == "auto":
        if device.type == "cpu" or "grouped_mm" not in current.values():
            return None
        plan = {k: ("batched_mm" if v == "grouped_mm" else v) for k, v in current.items()}
    else:
        plan = {k: (requested if v is not None else v) for k, v in current.items()}
    return plan if plan != current else None


@contextlib.contextmanager
def decode_phase(model: nn.Module, plan: dict[str, str] | None) -> Iterator[None]:
    """Run the block (the decode steps) with the planned experts implementation, then switch back."""
    if plan is None:
        yield
        return
    original = model.get_experts_implementation()
    model.set_experts_implementation(plan)
    try:
        yield
    finally:
        model.set_experts_implementation(original)


def _logits(output: Any) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


def _cache(output: Any, convention: CallConvention) -> Any:
    if convention.cache_kwarg is None:
        return None
    return getattr(output, convention.cache_kwarg)


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """Next token ids, shape (batch, 1), kept on the device."""
    return logits[:, -1].argmax(dim=-1, keepdim=True)


def prefill(
    model: nn.Module, convention: CallConvention, model_inputs: Mapping[str, Any]
) -> tuple[torch.Tensor, Any]:
    """First forward pass over the whole prompt (vision included): returns (first token, cache)."""
    kwargs = dict(model_inputs)
    if convention.cache_kwarg is not None:
        kwargs["use_cache"] = True
    if convention.logits_to_keep:
        kwargs["logits_to_keep"] = 1
    output = model(**kwargs)
    return greedy(_logits(output)), _cache(output, convention)


def decode_one_token(
    model: nn.Module, convention: CallConvention, token: torch.Tensor, cache: Any
) -> tuple[torch.Tensor, Any]:
    """One decode step: feed the last token (and the cache), return (next token, cache)."""
    if convention.cache_kwarg is None:
        output = model(input_ids=token)
    else:
        output = model(input_ids=token, use_cache=True, **{convention.cache_kwarg: cache})
    return greedy(_logits(output)), _cache(output, convention)


def decode_n_tokens(
    model: nn.Module,
    convention: CallConvention,
    token: torch.Tensor,
    cache: Any,
    num_steps: int,
    on_step: Callable[[], None] | None = None,
    eos_token_id: int | None = None,
    step: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]] | None = None,
) -> list[torch.Tensor]:
    """Run `num_steps` decode steps; `on_step` is called after each (the timed pass marks there).

    Returns the generated tokens (device tensors). With `eos_token_id`, stops after EOS: this reads
    the token on the host every step, a synchronisation a fixed-length loop does not have. `step`
    replaces the eager step (models.decoding: the compiled one).
    """
    tokens = []
    for _ in range(num_steps):
        if step is None:
            token, cache = decode_one_token(model, convention, token, cache)
        else:
            token, cache = step(token, cache)
        tokens.append(token)
        if on_step is not None:
            on_step()
        if eos_token_id is not None and int(token[0, 0]) == eos_token_id:
            break
    return tokens
