"""What a run's inputs were, as one dataset description: name, source, content digest, where it came from.

- digest: the first 16 hex digits of a SHA-256 over every page's id, size and RGB pixels, in input
  order: two runs with the same digest profiled the same pages, whatever their names or paths;
- name: `synthetic-<N>p-seed<S>` or `omnidocbench-<subset file stem | all>[-first<L>]-<N>p`;
- uri: the OmniDocBench root (absolute path); synthetic pages have none, `generator` holds the
  settings that regenerate them instead.
The tracker logs it as the MLflow run's dataset input (the runs table's Dataset column).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_perf_opt.data.pages import Page


def pages_digest(pages: Sequence[Page]) -> str:
    sha = hashlib.sha256()
    for page in pages:
        image = page.image.convert("RGB")
        sha.update(f"{page.page_id}\0{image.width}x{image.height}\0".encode())
        sha.update(image.tobytes())
    return sha.hexdigest()[:16]


def describe_pages(dataset_cfg: Any, pages: Sequence[Page]) -> dict[str, Any]:
    """The dataset description of the loaded pages (see the module docstring)."""
    source = str(dataset_cfg.source)
    described: dict[str, Any] = {"source": source, "pages": len(pages), "digest": pages_digest(pages)}
    if source == "synthetic":
        sizes = ["x".join(str(int(v)) for v in size) for size in dataset_cfg.sizes]
        described["name"] = f"synthetic-{len(pages)}p-seed{int(dataset_cfg.seed)}"
        described["generator"] = {"module": "llm_perf_opt.data.synthetic", "num_pages": int(dataset_cfg.num_pages),
                                  "seed": int(dataset_cfg.seed), "sizes": ",".join(sizes)}
        return described
    subset = dataset_cfg.get("subset_file")
    limit = dataset_cfg.get("limit")
    described["name"] = (f"{source}-{Path(str(subset)).stem if subset else 'all'}"
                         f"{f'-first{int(limit)}' if limit else ''}-{len(pages)}p")
    described["uri"] = str(Path(str(dataset_cfg.root)).expanduser().resolve())
    if subset:
        described["subset_file"] = str(subset)
    return described
