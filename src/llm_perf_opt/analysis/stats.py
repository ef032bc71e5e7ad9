"""Summary statistics of per-sample rows, per stage and quantity.

Statistics: mean, std (sample, ddof=1; absent for one sample), min, max, p50, p90, p99 (linear
interpolation between order statistics, numpy's default). Which columns exist for a stage comes from
the stage schema (`column(stage, quantity)`); metric names are made from the same pair by
`schema.metric_key` when the record is flattened.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from llm_perf_opt.schema import DECODE, StageTree, column

# Quantities a timed sample carries per stage (samples.csv columns `<stage>_<quantity>`).
SAMPLE_QUANTITIES = ("ms", "tpot_ms", "tokens_per_s", "peak_mem_mib")
STEP_QUANTITY = "step_ms"  # decode_steps.csv: one row per decode step


def describe(values: Iterable[float]) -> dict[str, float] | None:
    """Statistics of the finite values, or None when there are none."""
    array = np.asarray(pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").dropna(), dtype=float)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return None
    p50, p90, p99 = np.percentile(array, [50, 90, 99])
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if array.size > 1 else None,
        "min": float(array.min()),
        "max": float(array.max()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "count": int(array.size),
    }


def stage_statistics(samples: pd.DataFrame, decode_steps: pd.DataFrame | None,
                     tree: StageTree) -> dict[str, dict[str, dict[str, float]]]:
    """{stage: {quantity: statistics}} for every samples.csv column the schema names, plus decode step_ms."""
    result: dict[str, dict[str, dict[str, float]]] = {}
    for stage in tree:
        for quantity in SAMPLE_QUANTITIES:
            name = column(stage.key, quantity)
            if name in samples.columns and (stats := describe(samples[name])) is not None:
                result.setdefault(stage.key, {})[quantity] = stats
    step_column = column(DECODE, STEP_QUANTITY)
    if decode_steps is not None and step_column in decode_steps.columns:
        if (stats := describe(decode_steps[step_column])) is not None:
            result.setdefault(DECODE, {})[STEP_QUANTITY] = stats
    return result
