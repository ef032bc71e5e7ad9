"""The other profile runs of a run's experiment, as plain data (record.RelatedRuns) for the reports.

The stakeholder summary recommends configurations (a compiled decode, larger batches); when the
experiment holds a run of one, the summary cites what it measured. The reports layer cannot talk to
MLflow, so the runner looks the runs up here when a run ends and writes them to related_runs.json in
the run directory, before the reports are written (llm_perf_opt.reports.measured_effects matches them).

One `get_run` (this run's params and tags, logged when it started) and one `search_runs` query: the
experiment's profile runs of the same model family (`workload.family`), newest first, at most
`max_runs`; every status (the matcher, not the query, decides which runs count).
"""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd

from llm_perf_opt.record import RELATED_METRICS, RelatedRun, RelatedRuns
from llm_perf_opt.schema import DEVICE_NAME_TAG, KIND_TAG
from llm_perf_opt.tracking.runs import search_runs

MAX_RELATED_RUNS = 500
FAMILY_PARAM = "workload.family"
KEPT_TAGS = (DEVICE_NAME_TAG, "mlflow.runName")  # what the matcher and the wording read


def _run_of(row: pd.Series) -> RelatedRun:
    params = {name[len("params."):]: str(value) for name, value in row.items()
              if name.startswith("params.") and isinstance(value, str)}
    tags = {tag: str(row[f"tags.{tag}"]) for tag in KEPT_TAGS
            if isinstance(row.get(f"tags.{tag}"), str)}
    metrics = {name: float(row[f"metrics.{name}"]) for name in RELATED_METRICS
               if pd.notna(row.get(f"metrics.{name}"))}
    start = row.get("start_time")
    start_ms = int(pd.Timestamp(start).timestamp() * 1000) if start is not None and pd.notna(start) else None
    return RelatedRun(run_id=str(row["run_id"]), run_name=tags.get("mlflow.runName"), status=str(row["status"]),
                      start_time_ms=start_ms, params=params, tags=tags, metrics=metrics)


def related_runs(tracking_uri: str, run_id: str, max_runs: int = MAX_RELATED_RUNS) -> RelatedRuns:
    """This run (params, tags) and the other profile runs of its experiment with its model family."""
    from mlflow import MlflowClient

    this = MlflowClient(tracking_uri).get_run(run_id)
    params, tags = dict(this.data.params), dict(this.data.tags)
    clauses = [f"tags.`{KIND_TAG}` = 'profile'"]
    family = params.get(FAMILY_PARAM)
    if family is not None and "'" not in family:
        clauses.append(f"params.`{FAMILY_PARAM}` = '{family}'")
    found = search_runs(tracking_uri, [this.info.experiment_id], " AND ".join(clauses), max_results=max_runs)
    others = [_run_of(row) for _, row in found.iterrows() if str(row["run_id"]) != run_id]
    run = RelatedRun(run_id=run_id, run_name=this.info.run_name, status=this.info.status,
                     start_time_ms=this.info.start_time, params=params,
                     tags={k: v for k, v in tags.items() if k in KEPT_TAGS})
    return RelatedRuns(tracking_uri=tracking_uri, experiment_id=this.info.experiment_id,
                       looked_up_at=datetime.now(timezone.utc).isoformat(), run=run, others=others)
