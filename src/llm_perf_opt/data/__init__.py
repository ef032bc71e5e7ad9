"""Input pages: synthetic documents or OmniDocBench pages (config `dataset.source`)."""

from __future__ import annotations

from typing import Any

from llm_perf_opt.data.describe import describe_pages
from llm_perf_opt.data.omnidocbench import load_omnidocbench
from llm_perf_opt.data.pages import Page
from llm_perf_opt.data.synthetic import generate_pages

__all__ = ["Page", "describe_pages", "load_pages"]


def load_pages(dataset_cfg: Any) -> list[Page]:
    source = dataset_cfg.source
    if source == "synthetic":
        return generate_pages(int(dataset_cfg.num_pages), [list(s) for s in dataset_cfg.sizes], int(dataset_cfg.seed))
    # omnidocbench (config.validate checked the source and that dataset.root is set)
    return load_omnidocbench(dataset_cfg.root, dataset_cfg.get("subset_file"), dataset_cfg.get("limit"))
