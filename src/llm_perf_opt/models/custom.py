"""User workloads: any `nn.Module` built by a Hydra `_target_` factory.

The factory (config `model.factory`, instantiated with `device` and `dtype` added) returns either
- an `nn.Module`, whose stage map then comes from `model.stage_map` (stage name -> dotted path), or
- a mapping with `model` and optionally `stage_map` (names -> modules or dotted paths), `eos_token_id`,
  `inputs` (a list of dicts of forward kwargs; default: one prompt of `model.prompt_tokens`
  random token ids per page, passed as `input_ids`) and `costs` (known FLOPs and bytes of one
  prefill and one decode step of one input: {"prefill": {"flops", "bytes"}, "decode": {...}}), which
  MFU/MBU use when no analytic model covers the module. With `profiling.batch_size` > 1 the FLOPs
  scale with the batch and the bytes as `weight_bytes` (read once per forward, optional) + batch x the
  rest; without `weight_bytes` a batched run has no bytes (and no MBU) for that stage.

The module's forward takes `input_ids` (plus whatever `inputs` carries) and returns logits
(batch, seq, vocab) or an object with `.logits`. A module without a KV cache gets only the new
token at each decode step. Batches concatenate inputs along dim 0 (models.batching): a module whose
logits do not keep the batch is refused when the workload is built.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from llm_perf_opt.data.pages import Page
from llm_perf_opt.errors import InputError
from llm_perf_opt.models.workload import (
    PreparedInput,
    Workload,
    count_parameters,
    dtype_name,
    resolve_dtype,
    resolve_stage_map,
)


def build_workload(cfg: Any, pages: list[Page], device: torch.device, seed: int = 0) -> Workload:
    dtype = resolve_dtype(cfg.dtype, device)
    built = instantiate(cfg.factory, device=device, dtype=dtype, _convert_="all")
    if isinstance(built, nn.Module):
        built = {"model": built}
    if not isinstance(built, Mapping) or not isinstance(built.get("model"), nn.Module):
        raise InputError(
            f"model.factory {cfg.factory._target_} returned {type(built).__name__}: "
            "return an nn.Module or a dict with 'model' (and optional 'stage_map', 'inputs')"
        )
    model = built["model"].to(device=device, dtype=dtype).eval()
    stage_map = built.get("stage_map", dict(cfg.stage_map or {}))

    inputs = []
    if built.get("inputs"):
        for index, kwargs in enumerate(built["inputs"]):
            kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
            prompt_tokens = int(kwargs["input_ids"].shape[-1]) if "input_ids" in kwargs else 0
            inputs.append(PreparedInput(f"input-{index:04d}", kwargs, prompt_tokens))
    else:
        vocab = int(built.get("vocab_size", cfg.get("vocab_size", 2)))
        for index, page in enumerate(pages):
            rng = random.Random(seed * 100_003 + index)
            ids = [rng.randrange(vocab) for _ in range(int(cfg.prompt_tokens))]
            inputs.append(PreparedInput(page.page_id, {"input_ids": torch.tensor([ids], device=device)}, len(ids)))

    info = {
        "family": "custom",
        "preset": cfg.factory._target_,
        "weights": "factory",
        "dtype": dtype_name(dtype),
        "moe_routing": "model",
        "parameters": count_parameters(model),
    }
    stages, stage_modules = resolve_stage_map(model, stage_map)
    return Workload(
        family="custom",
        model=model,
        inputs=inputs,
        stages=stages,
        stage_modules=stage_modules,
        device=device,
        dtype=dtype,
        eos_token_id=built.get("eos_token_id"),
        info=info,
        declared_costs=built.get("costs"),
    )
