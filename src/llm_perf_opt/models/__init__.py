"""Workload builders, one per model family (config `model.family`)."""

from __future__ import annotations

from typing import Any

import torch

from llm_perf_opt.data.pages import Page
from llm_perf_opt.models import custom, deepseek_ocr, deepseek_ocr2, hf_causal_lm
from llm_perf_opt.models.batching import batch_workload
from llm_perf_opt.models.decoding import Decoding
from llm_perf_opt.models.workload import Workload

BUILDERS = {"deepseek_ocr2": deepseek_ocr2.build_workload, "deepseek_ocr": deepseek_ocr.build_workload,
            "hf_causal_lm": hf_causal_lm.build_workload, "custom": custom.build_workload}


def build_workload(model_cfg: Any, pages: list[Page], device: torch.device, seed: int = 0,
                   batch_size: int = 1) -> Workload:
    """The family's workload; with `batch_size` > 1 its passes run equal-shape batches (models.batching);
    `model.cache` / `model.compile` choose how its passes decode (models.decoding: the runner then calls
    `compile_decode` before recording anything)."""
    workload = BUILDERS[str(model_cfg.family)](model_cfg, pages, device, seed)  # config.validate checked the family
    cache, mode = str(model_cfg.get("cache", "dynamic")), str(model_cfg.get("compile", "none"))
    if mode != "none":
        torch.manual_seed(seed)  # compiled uniform MoE routing draws from the global generator (models.moe_routing)
    if (cache, mode) != ("dynamic", "none"):
        workload.decoding = Decoding(workload.model, workload.convention, device, cache, mode,
                                     what=f"{workload.family} ({workload.info.get('preset')})")
    if "cache" in model_cfg:  # the transformers families: recorded with the run (workload.json, params)
        workload.info.update(cache=cache, compile=mode)
    return batch_workload(workload, int(batch_size))
