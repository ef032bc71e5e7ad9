"""Reading tracked runs back: experiment look-up, one `search_runs` query, artifact downloads.

The read side of the tracking store (mlflow_tracker.py is the write side). Readers such as `compare`
go through these functions and never import mlflow themselves. MLflow's errors are turned into the
two exceptions below, whose messages are one line; callers add what the user should change.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from llm_perf_opt.analysis.gc_paused import gc_paused


class TrackingQueryError(Exception):
    """The tracking store rejected a query (e.g. an invalid filter string)."""


class ArtifactUnavailable(Exception):
    """A run's artifact could not be downloaded; the message says why."""


def experiment_ids(tracking_uri: str, names: Sequence[str]) -> dict[str, str | None]:
    """Experiment name -> id, None for a name the store does not know."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    found = {}
    for name in names:
        experiment = client.get_experiment_by_name(name)
        found[name] = experiment.experiment_id if experiment is not None else None
    return found


def search_runs(tracking_uri: str, experiment_ids: Sequence[str] | None, filter_string: str, max_results: int,
                order_by: Sequence[str] = ("attributes.start_time DESC",)) -> pd.DataFrame:
    """One `mlflow.search_runs` query as its pandas frame (columns run_id, start_time, metrics.*, tags.*, ...).

    experiment_ids None searches every experiment. The cyclic GC is paused during the query: the SQL
    store builds one ORM object per metric, param and tag row, and collections dominated its time.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    try:
        with gc_paused():
            return mlflow.search_runs(
                experiment_ids=list(experiment_ids) if experiment_ids is not None else None,
                search_all_experiments=experiment_ids is None,
                filter_string=filter_string,
                max_results=max_results,
                order_by=list(order_by),
                output_format="pandas",
            )
    except MlflowException as exc:
        raise TrackingQueryError(exc.message.splitlines()[0] if exc.message else type(exc).__name__) from exc


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No per-file progress bar (one per file per run would flood the terminal); the user's value wins."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(name)
    os.environ.setdefault(name, "false")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)


def download_artifact(tracking_uri: str, run_id: str, artifact_path: str, dst_dir: str | Path) -> Path:
    """Download one artifact of a run into dst_dir; ArtifactUnavailable (with the reason) when it cannot."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    try:
        with _quiet_downloads():
            local = download_artifacts(run_id=run_id, artifact_path=artifact_path, tracking_uri=tracking_uri,
                                       dst_path=str(dst_dir))
    except (MlflowException, OSError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise ArtifactUnavailable(f"{type(exc).__name__}: {first_line}") from exc
    return Path(local)
