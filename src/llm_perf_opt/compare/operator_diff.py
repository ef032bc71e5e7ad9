"""Per stage, the operators whose time changed most between the baseline and a candidate.

Input: each run's operators.csv (columns stage (a stage key of the schema), name, calls, self_cpu_ms,
total_cpu_ms, self_device_ms, total_device_ms, total_time_ms, mean_time_ms; written by the profiled
pass). The compared time is a self time, so a parent and its children are not counted twice: `auto`
picks self_device_ms when both runs measured device time (a GPU run), else self_cpu_ms. delta_ms =
candidate - baseline; an operator one run did not call has 0 ms there (it did not run), marked `new` /
`gone`. Rows are ranked by |delta_ms| within each stage; the top N per stage are kept. Stages come in
the baseline's stage order (the run record's tree; compare/stages.py), not alphabetically.
"""

from __future__ import annotations

import pandas as pd

from llm_perf_opt.compare.stages import stage_order
from llm_perf_opt.schema import StageTree

OPERATOR_DIFF_COLUMNS = ["run_id", "stage", "name", "time_column", "baseline_ms", "candidate_ms", "delta_ms",
                         "ratio", "baseline_calls", "candidate_calls", "presence"]


def pick_time_column(baseline: pd.DataFrame, candidate: pd.DataFrame, time_column: str = "auto") -> str | None:
    """The self-time column both tables share (device first), or the configured one; None when absent."""
    if time_column != "auto":
        return time_column if time_column in baseline.columns and time_column in candidate.columns else None
    for column in ("self_device_ms", "self_cpu_ms", "total_time_ms"):
        if column in baseline.columns and column in candidate.columns:
            measured = pd.to_numeric(baseline[column], errors="coerce").fillna(0).abs().sum() > 0 and \
                pd.to_numeric(candidate[column], errors="coerce").fillna(0).abs().sum() > 0
            if measured:
                return column
    return None


def _per_operator(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    grouped = frame.assign(**{column: pd.to_numeric(frame[column], errors="coerce")})
    calls = pd.to_numeric(grouped["calls"], errors="coerce") if "calls" in grouped else pd.Series(float("nan"),
                                                                                                  index=grouped.index)
    return grouped.assign(calls=calls).groupby(["stage", "name"], as_index=True).agg(
        ms=(column, "sum"), calls=("calls", "sum"))


def operator_diff(baseline: pd.DataFrame, candidate: pd.DataFrame, run_id: str, top_n: int = 10,
                  time_column: str = "auto", tree: StageTree | None = None) -> tuple[pd.DataFrame, str | None]:
    """(rows ranked per stage, note). The note explains an empty result."""
    column = pick_time_column(baseline, candidate, time_column)
    if column is None:
        return pd.DataFrame(columns=OPERATOR_DIFF_COLUMNS), (
            f"run {run_id}: no operator time column ({time_column}) measured in both operators.csv files")
    base, cand = _per_operator(baseline, column), _per_operator(candidate, column)
    joined = base.join(cand, how="outer", lsuffix="_base", rsuffix="_cand")
    presence = pd.Series("both", index=joined.index)
    presence[joined["ms_base"].isna()] = "new"
    presence[joined["ms_cand"].isna()] = "gone"
    base_ms, cand_ms = joined["ms_base"].fillna(0.0), joined["ms_cand"].fillna(0.0)
    diff = pd.DataFrame({
        "run_id": run_id,
        "time_column": column,
        "baseline_ms": base_ms,
        "candidate_ms": cand_ms,
        "delta_ms": cand_ms - base_ms,
        "ratio": cand_ms / base_ms.where(base_ms != 0),
        "baseline_calls": joined["calls_base"],
        "candidate_calls": joined["calls_cand"],
        "presence": presence,
    }).reset_index()
    rank = {stage: i for i, stage in enumerate(stage_order(diff["stage"].astype(str).unique(), tree))}
    diff["abs_delta"] = diff["delta_ms"].abs()
    diff["stage_rank"] = diff["stage"].astype(str).map(rank)
    diff = diff.sort_values(["stage_rank", "abs_delta"], ascending=[True, False], kind="stable")
    diff = diff.groupby("stage", sort=False).head(top_n).drop(columns=["abs_delta", "stage_rank"])
    return diff[OPERATOR_DIFF_COLUMNS].reset_index(drop=True), None
