"""The MLflow side of a sweep: its parent run, the children that name it, and the parent's summary.

- The parent is created when the sweep starts (or, under `mlflow run`, is the run the launcher made),
  tagged `llm_perf_opt.kind=sweep`, with the swept parameters as params (`sweep.<key>` = the values
  swept, e.g. `global768,tiled`), in the experiment its children go to.
- A child is an ordinary profile run tagged `mlflow.parentRunId=<parent>` (the UI nests it under the
  parent) and `llm_perf_opt.sweep_job=<job number>` (tag names: llm_perf_opt.schema), with
  `sweep.<key>` params holding its own values.
- When the sweep ends, the parent gets the summary (table, plots) as artifacts, counts as metrics
  (`sweep/jobs`, `sweep/finished`, `sweep/failed`), a description, and a status from its children:
  FINISHED when every child finished, KILLED when one was killed, else FAILED.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from llm_perf_opt.schema import PARENT_TAG
from llm_perf_opt.tracking.mlflow_tracker import (
    NOTE_TAG,
    RUN_NAME_TAG,
    cut_note,
    log_new_params,
    mark_experiment_kind,
)
from llm_perf_opt.tracking.store import prepare_store


def start_parent(uri: str, experiment: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
                 resume_run_id: str | None = None) -> tuple[str, str]:
    """(run id, experiment id) of the sweep's parent run, created (or resumed: `mlflow run`'s own run)."""
    import mlflow
    from mlflow.entities import RunTag

    client = mlflow.MlflowClient(uri)
    if resume_run_id:
        run = client.get_run(resume_run_id)
        experiment_id = run.info.experiment_id
    else:
        experiment_id = prepare_store(uri, experiment) or _experiment_id(uri, experiment)
        run = client.create_run(experiment_id, run_name=run_name)
    mark_experiment_kind(uri, experiment_id)
    client.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in {**tags, RUN_NAME_TAG: run_name}.items()])
    log_new_params(uri, run.info.run_id, params)
    return run.info.run_id, experiment_id


def _experiment_id(uri: str, name: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.set_experiment(name).experiment_id


def children(uri: str, experiment_id: str, parent_run_id: str) -> pd.DataFrame:
    """The parent's children as a search_runs frame (params.*, metrics.*, tags.*), oldest first."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_ids=[experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"])


def parent_status(statuses: list[str]) -> str:
    if statuses and all(status == "FINISHED" for status in statuses):
        return "FINISHED"
    return "KILLED" if "KILLED" in statuses else "FAILED"


def finish_parent(uri: str, run_id: str, status: str, metrics: Mapping[str, float], note: str,
                  artifacts: Path | None) -> None:
    """Log the sweep's summary to its parent and end it with `status`."""
    import mlflow
    from mlflow.entities import Metric, RunTag

    client = mlflow.MlflowClient(uri)
    try:
        client.log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
                         tags=[RunTag(NOTE_TAG, cut_note(note))])
        if artifacts is not None and artifacts.is_dir():
            client.log_artifacts(run_id, str(artifacts))
    finally:
        client.set_terminated(run_id, status=status)
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            with contextlib.suppress(Exception):
                mlflow.end_run(status=status)


def end_parent(uri: str, run_id: str, status: str) -> None:
    """End the parent without a summary (the sweep stopped before it ended)."""
    import mlflow

    mlflow.MlflowClient(uri).set_terminated(run_id, status=status)
