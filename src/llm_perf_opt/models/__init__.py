"""Workload builders, one per model family (config `model.family`)."""

from __future__ import annotations

from typing import Any

import torch

from llm_perf_opt.data.pages import Page
from llm_perf_opt.errors import InputError
from llm_perf_opt.models.workload import Workload

FAMILIES = ("deepseek_ocr2", "hf_causal_lm", "custom")


def build_workload(model_cfg: Any, pages: list[Page], device: torch.device, seed: int = 0) -> Workload:
    family = model_cfg.family
    if family == "deepseek_ocr2":
        from llm_perf_opt.models.deepseek_ocr2 import build_workload as build
    elif family == "hf_causal_lm":
        from llm_perf_opt.models.hf_causal_lm import build_workload as build
    elif family == "custom":
        from llm_perf_opt.models.custom import build_workload as build
    else:
        raise InputError(f"model.family={family} is unknown: choose one of {', '.join(FAMILIES)} (conf/model/)")
    return build(model_cfg, pages, device, seed)
