"""FLOP coverage: how much of a stage's profiled time the FLOP counts can explain."""

from __future__ import annotations

import pandas as pd


def flop_coverage(operators: pd.DataFrame, formula_operators: frozenset[str]) -> dict[str, float]:
    """Share of each stage's profiled time spent in operators without a FLOP formula (0..1).

    One row per (stage, operator) is expected, without CUDA-kernel rows (their time is already the
    self device time of the operator that launched them). Time is self_device_ms when that column
    sums to > 0 (a GPU run), else self_cpu_ms. Operators
    "with a formula" are `formula_operators` (profiler names such as "aten::mm": the counted pass's
    `CountedResult.formula_operators`); everything else (copies, cat, views,
    elementwise, norms, softmax, ...) is time the FLOP counts do not explain. Stages with no time
    are left out (no share can be computed).
    """
    missing = {"stage", "name", "self_cpu_ms", "self_device_ms"} - set(operators.columns)
    if missing:
        raise ValueError(f"operators table lacks columns {sorted(missing)}")
    column = "self_device_ms" if operators["self_device_ms"].fillna(0).sum() > 0 else "self_cpu_ms"
    covered = operators["name"].isin(formula_operators)
    time_ms = operators[column].fillna(0.0)
    frame = pd.DataFrame({"stage": operators["stage"], "total": time_ms, "uncovered": time_ms.where(~covered, 0.0)})
    sums = frame.groupby("stage", sort=False)[["total", "uncovered"]].sum()
    sums = sums[sums["total"] > 0]
    return {str(stage): float(row.uncovered / row.total) for stage, row in sums.iterrows()}


def coverage_warning(coverage: dict[str, float], threshold: float = 0.5) -> str | None:
    """One line naming the stages where more than `threshold` of the time has no FLOP formula, else None."""
    over = {stage: share for stage, share in coverage.items() if share > threshold}
    if not over:
        return None
    listed = ", ".join(f"{stage} {share:.0%}" for stage, share in sorted(over.items(), key=lambda kv: -kv[1]))
    return (f"FLOP counts cover little of the time in {listed} (share of time in operators without a FLOP "
            f"formula, above {threshold:.0%}): MFU there reflects memory-bound or unmodelled work, not idle compute")
