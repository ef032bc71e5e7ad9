"""Which runs to compare: one `search_runs` query (llm_perf_opt.tracking.runs), returned as its pandas frame.

Only runs tagged `llm_perf_opt.kind=profile` are candidates (the profiler sets the tag; comparison runs
carry `comparison` and are never selected). The user narrows the set with any combination of:
experiment names, an MLflow filter string (ANDed), explicit run ids, and the last N by start time.
Rows come back oldest first; the baseline defaults to the oldest selected run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from llm_perf_opt.errors import InputError
from llm_perf_opt.schema import KIND_TAG, PARENT_TAG
from llm_perf_opt.tracking.runs import TrackingQueryError, experiment_ids, search_runs

PROFILE_KIND = "profile"
COMPARISON_KIND = "comparison"


@dataclass
class RunSelection:
    experiments: list[str] = field(default_factory=list)  # names; empty: every experiment
    filter_string: str | None = None
    run_ids: list[str] = field(default_factory=list)
    last: int | None = None
    status: str | None = "FINISHED"  # null: any status
    sweep: str | None = None  # a sweep's parent run id: its children (tag mlflow.parentRunId)

    def describe(self) -> dict:
        return {"experiments": self.experiments, "filter": self.filter_string, "run_ids": self.run_ids,
                "last": self.last, "status": self.status, "sweep": self.sweep}


def as_list(value: str | Iterable[str] | None) -> list[str]:
    """A Hydra value that may be null, one string, a comma-separated string or a list -> list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part).strip() for part in value if str(part).strip()]


def _quote(value: str) -> str:
    if "'" in value:
        raise InputError(f"run id or status {value!r} contains a quote; run ids are hex strings: check the value")
    return f"'{value}'"


def build_filter(selection: RunSelection) -> str:
    """The filter string sent to MLflow: the profile-kind tag AND the user's clauses."""
    clauses = [f"tags.`{KIND_TAG}` = '{PROFILE_KIND}'"]
    if selection.status:
        clauses.append(f"attributes.status = {_quote(selection.status)}")
    if selection.sweep:
        clauses.append(f"tags.`{PARENT_TAG}` = {_quote(selection.sweep)}")
    if selection.run_ids:
        clauses.append(f"attributes.run_id IN ({', '.join(_quote(r) for r in selection.run_ids)})")
    if selection.filter_string and selection.filter_string.strip():
        clauses.append(f"{selection.filter_string.strip()}")
    return " AND ".join(clauses)


def _experiment_ids(tracking_uri: str, names: Sequence[str]) -> list[str] | None:
    """Experiment ids for names (None: search every experiment); an unknown name is an input error."""
    if not names:
        return None
    found = experiment_ids(tracking_uri, names)
    for name, experiment_id in found.items():
        if experiment_id is None:
            raise InputError(f"experiment {name!r} not found in {tracking_uri}: check select.experiment "
                             "(null searches every experiment)")
    return [str(found[name]) for name in names]


def search_profile_runs(tracking_uri: str, selection: RunSelection) -> pd.DataFrame:
    """One search_runs query; rows sorted oldest first. Raises InputError for an invalid filter."""
    ids = _experiment_ids(tracking_uri, selection.experiments)
    try:
        runs = search_runs(tracking_uri, ids, build_filter(selection),
                           max_results=selection.last if selection.last else 100_000,
                           order_by=["attributes.start_time DESC"])
    except TrackingQueryError as exc:
        raise InputError(f"MLflow rejected the run selection ({exc}): "
                         "check select.filter (MLflow search syntax, e.g. params.model.preset = 'tiny')") from exc
    if runs.empty:
        return runs
    return runs.sort_values("start_time", kind="stable").reset_index(drop=True)


def select_runs(tracking_uri: str, selection: RunSelection, baseline_run_id: str | None) -> tuple[pd.DataFrame, str]:
    """The runs to compare (oldest first, baseline included) and the baseline's run id."""
    runs = search_profile_runs(tracking_uri, selection)
    if selection.run_ids:
        missing = sorted(set(selection.run_ids) - set(runs.get("run_id", pd.Series(dtype=str))))
        if missing:
            raise InputError(f"run ids not found among {selection.status or 'any-status'} profile runs: "
                             f"{', '.join(missing)}; only runs tagged {KIND_TAG}={PROFILE_KIND} can be compared")
    if baseline_run_id and (runs.empty or baseline_run_id not in set(runs["run_id"])):
        # A baseline outside the narrowed set (e.g. older than the last N) is fetched on its own.
        extra = search_profile_runs(tracking_uri, RunSelection(run_ids=[baseline_run_id], status=None))
        if extra.empty:
            raise InputError(f"baseline run {baseline_run_id} not found among profile runs in {tracking_uri}: "
                             "check the run id (only runs tagged llm_perf_opt.kind=profile qualify)")
        runs = pd.concat([extra, runs], ignore_index=True).sort_values("start_time", kind="stable")
        runs = runs.reset_index(drop=True)
    if len(runs) < 2:
        raise InputError(f"{len(runs)} profile run(s) match the selection {selection.describe()} in "
                         f"{tracking_uri}: a comparison needs at least two; widen select.* or profile more runs")
    baseline = baseline_run_id or str(runs["run_id"].iloc[0])
    return runs, baseline
