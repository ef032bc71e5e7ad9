"""Summary statistics derived from per-sample rows, and the MLflow metric names they are logged under.

Statistics: mean, std (sample, ddof=1), min, max, p50, p90, p99 (linear interpolation between order
statistics, numpy's default). Metric names are `<group>/<quantity>_<stat>` so the MLflow UI groups
them by stage: `prefill/ms_p50`, `vision/sam_ms_p90`, `latency/tpot_ms_mean`, ... (docs/metrics.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

STATS = ("mean", "std", "min", "max", "p50", "p90", "p99")

# samples.csv column -> metric base name (sub-stage columns are added per workload).
FIXED_METRIC_NAMES = {
    "prefill_ms": "prefill/ms",
    "decode_ms": "decode/ms",
    "decode_step_ms": "decode/step_ms",
    "ttft_ms": "latency/ttft_ms",
    "tpot_ms": "latency/tpot_ms",
    "e2e_ms": "latency/e2e_ms",
    "tokens_per_s": "throughput/tokens_per_s",
    "decode_tokens_per_s": "throughput/decode_tokens_per_s",
    "prefill_peak_mem_mib": "memory/prefill_peak_mib",
    "decode_peak_mem_mib": "memory/decode_peak_mib",
}


def describe(values: Iterable[float]) -> dict[str, float]:
    array = np.asarray(pd.to_numeric(pd.Series(list(values)), errors="coerce").dropna(), dtype=float)
    if array.size == 0:
        return {}
    p50, p90, p99 = np.percentile(array, [50, 90, 99])
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if array.size > 1 else float("nan"),
        "min": float(array.min()),
        "max": float(array.max()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "count": int(array.size),
    }


def metric_names_for(stages: Iterable[str]) -> dict[str, str]:
    """Column -> metric base name, including a workload's sub-stages and their group totals."""
    from llm_perf_opt.profiling.timed_pass import stage_column

    names = dict(FIXED_METRIC_NAMES)
    for stage in stages:
        group, _, name = stage.partition("/")
        names[stage_column(stage)] = f"{group}/{name.replace('/', '_')}_ms" if name else f"{stage}/ms"
        if name:
            names[f"{group}_ms"] = f"{group}/ms"
    return names


def summarize(samples: pd.DataFrame, decode_steps: pd.DataFrame | None, stages: Iterable[str]) -> dict[str, dict]:
    """Statistics per samples.csv column (and per decode step), keyed by samples.csv column name."""
    names = metric_names_for(stages)
    summary = {col: describe(samples[col]) for col in names if col in samples.columns}
    if decode_steps is not None and len(decode_steps):
        summary["decode_step_ms"] = describe(decode_steps["decode_step_ms"])
    return {col: stats for col, stats in summary.items() if stats}


def flatten_metrics(summary: dict[str, dict], stages: Iterable[str]) -> dict[str, float]:
    """{'prefill/ms_p50': 12.3, ...}: finite values only (a std of one sample is left out, not zeroed)."""
    names = metric_names_for(stages)
    flat = {}
    for column, stats in summary.items():
        for stat in STATS:
            value = stats.get(stat)
            if value is not None and math.isfinite(value):
                flat[f"{names[column]}_{stat}"] = value
    return flat
