"""Do two runs share an environment? Device name, driver, torch and dtype, from tags and env.json.

Sources, first known value wins: the run's MLflow tags (in the search frame, free for every run), then
its params, then its env.json artifact (read only for runs whose samples are fetched anyway). A field
counts as a mismatch only when both runs know it and the values differ; a field one side lacks is
reported as unknown, not as a mismatch (a CPU run has no driver version).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

# field -> (tag names, param names, env.json keys), each tried in order.
ENV_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "device_name": (("device", "device_name"), (), ("device_name",)),
    "driver_version": (("driver_version", "driver"), (), ("driver_version",)),
    "torch": (("torch", "torch_version"), (), ("torch",)),
    "dtype": (("dtype",), ("workload.dtype",), ("dtype",)),
}


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    if name in runs.columns:
        return runs[name].where(runs[name].notna() & (runs[name].astype(str) != ""))
    return pd.Series(None, index=runs.index, dtype=object)


def environment_from_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Index run_id, one column per ENV_FIELDS entry, from tags then params (vectorised)."""
    table = pd.DataFrame(index=runs["run_id"].astype(str))
    for field, (tags, params, _) in ENV_FIELDS.items():
        sources = [_column(runs, c) for c in [f"tags.{t}" for t in tags] + [f"params.{p}" for p in params]]
        first_known = pd.concat(sources, axis=1).astype(object).bfill(axis=1).iloc[:, 0]
        table[field] = first_known.to_numpy()
    return table.astype(object)


def fill_from_env_json(table: pd.DataFrame, run_id: str, env: Mapping[str, Any]) -> None:
    """Fill the fields a run's tags/params left unknown from its env.json (in place)."""
    for field, (_, _, keys) in ENV_FIELDS.items():
        if pd.notna(table.at[run_id, field]):
            continue
        for key in keys:
            if env.get(key) not in (None, ""):
                table.at[run_id, field] = str(env[key])
                break


def environment_mismatches(table: pd.DataFrame, baseline_run_id: str) -> dict[str, list[str]]:
    """run_id -> ['device_name: <baseline> != <run>', ...] for every run that differs from the baseline."""
    base = table.loc[baseline_run_id]
    known = table.notna() & base.notna()
    differs = known & table.astype(str).ne(base.astype(str))
    mismatches: dict[str, list[str]] = {}
    for run_id in differs.index[differs.any(axis=1)]:
        fields = [f for f in table.columns if differs.at[run_id, f]]
        mismatches[str(run_id)] = [f"{f}: {base[f]} != {table.at[run_id, f]}" for f in fields]
    return mismatches


def environment_unknowns(table: pd.DataFrame, baseline_run_id: str) -> dict[str, list[str]]:
    """run_id -> fields known on one side only (reported, not blocking)."""
    base = table.loc[baseline_run_id]
    one_sided = table.isna() ^ base.isna()
    return {str(r): [f for f in table.columns if one_sided.at[r, f]] for r in one_sided.index[one_sided.any(axis=1)]}
