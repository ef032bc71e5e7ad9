"""Logging a run directory to MLflow after the fact (`llm-perf-opt log-run`): runs measured while the
tracking store was down, or whose mirror is incomplete.

One MLflow run per run record, found again by its tag `llm_perf_opt.run_uid`:
- none yet: a run is created (start and end times from the record), metrics.json is rewritten to name
  it (`run.mlflow_run_id`, `run.tracking_uri`), then params, metrics, tags, every file of the run
  directory, the dataset input and the stage traces (run_inputs.py) are logged and the run ends with the
  record's status;
- one that is complete: nothing is logged ("already logged");
- one that is incomplete (still RUNNING, or tagged `llm_perf_opt.incomplete_mirror` by a tracker whose
  MLflow calls failed): the same steps complete it (params it lacks, metrics, tags, artifacts) and its
  incomplete tags are removed.
A failure after the run exists ends it FAILED and tagged incomplete, so that the next log-run completes it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from llm_perf_opt.record import RECORD_FILE, RunRecord, save
from llm_perf_opt.tracking.mlflow_tracker import (
    INCOMPLETE_TAG,
    RECORD_STATUS_TAG,
    RUN_UID_TAG,
    TAG_NOTE_LIMIT,
    log_new_params,
    mark_experiment_kind,
)
from llm_perf_opt.tracking.run_inputs import log_dataset_input, log_stage_traces, read_timeline, run_trace_count
from llm_perf_opt.tracking.store import prepare_sqlite

UPLOADED_BY_TAG = "llm_perf_opt.uploaded_by"  # "log-run": the run was logged from its directory afterwards
METRIC_BATCH = 1000  # MLflow's per-request limits
TAG_BATCH = 100


class UploadError(Exception):
    """Logging one run directory failed; the message is one line."""


@dataclass
class RunUpload:
    """What to log for one run directory (built by runners/log_run.py from the record and config.yaml)."""

    run_dir: Path
    record: RunRecord
    experiment: str
    run_name: str
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class UploadResult:
    run_id: str
    outcome: Literal["logged", "completed", "already"]
    status: str  # the MLflow run's status afterwards


def _ms(iso: str | None) -> int | None:
    if not iso:
        return None
    moment = datetime.fromisoformat(iso)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def find_logged_run(uri: str, run_uid: str):
    """The active MLflow run (any active experiment) tagged llm_perf_opt.run_uid = run_uid, or None."""
    import mlflow

    uid = run_uid.replace("\\", "\\\\").replace("'", "\\'")
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`{RUN_UID_TAG}` = '{uid}'",
                               output_format="list", max_results=10, order_by=["attributes.start_time ASC"])
    return found[0] if found else None


def is_complete(run) -> bool:
    return run.info.status != "RUNNING" and INCOMPLETE_TAG not in run.data.tags


def experiment_id(uri: str, name: str) -> str:
    """Get or create the experiment (a SQLite store: under its lock, see store.py)."""
    import mlflow

    if uri.lower().startswith("sqlite:"):
        found = prepare_sqlite(uri, name)
        if found is not None:
            mark_experiment_kind(uri, found)
            return found
    mlflow.set_tracking_uri(uri)
    found = mlflow.set_experiment(name).experiment_id
    mark_experiment_kind(uri, found)  # the UI's model-development view, as for runs logged live
    return found


def name_run(run_dir: Path, record: RunRecord, run_id: str, uri: str) -> None:
    """metrics.json names its MLflow run and store (rewritten only when it does not already)."""
    if record.run.mlflow_run_id == run_id and record.run.tracking_uri == uri:
        return
    record.run.mlflow_run_id, record.run.tracking_uri = run_id, uri
    save(record, run_dir / RECORD_FILE)


def upload_run(upload: RunUpload, uri: str) -> UploadResult:
    """Log one run directory to the store at `uri` (see the module docstring). UploadError when it fails."""
    import mlflow

    record = upload.record
    client = mlflow.MlflowClient(uri)
    try:
        existing = find_logged_run(uri, record.run.run_uid)
        if existing is not None and is_complete(existing):
            name_run(upload.run_dir, record, existing.info.run_id, uri)
            return UploadResult(existing.info.run_id, "already", existing.info.status)
        if existing is not None:
            run_id, outcome = existing.info.run_id, "completed"
        else:
            run = client.create_run(experiment_id(uri, upload.experiment), start_time=_ms(record.run.started_at),
                                    tags={RUN_UID_TAG: record.run.run_uid, UPLOADED_BY_TAG: "log-run"},
                                    run_name=upload.run_name)
            run_id, outcome = run.info.run_id, "logged"
    except Exception as exc:
        raise UploadError(f"MLflow logging failed: {_first_line(exc)}") from exc
    try:
        name_run(upload.run_dir, record, run_id, uri)  # before the artifacts: the uploaded metrics.json names it
        _log_contents(client, uri, run_id, upload, incomplete_before=existing is not None)
        client.set_terminated(run_id, status=record.status, end_time=_ms(record.run.finished_at))
    except Exception as exc:
        note = f"log-run: {_first_line(exc)}"[:TAG_NOTE_LIMIT]
        with contextlib.suppress(Exception):
            client.log_batch(run_id, tags=_tags({INCOMPLETE_TAG: note, RECORD_STATUS_TAG: record.status}))
            client.set_terminated(run_id, status="FAILED")
        raise UploadError(f"MLflow logging failed after creating run {run_id} (ended FAILED, tagged "
                          f"{INCOMPLETE_TAG}; run log-run again to complete it): {_first_line(exc)}") from exc
    return UploadResult(run_id, outcome, record.status)


def _tags(tags: dict[str, Any]):
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in tags.items() if v is not None]


def _log_contents(client, uri: str, run_id: str, upload: RunUpload, incomplete_before: bool) -> None:
    from mlflow.entities import Metric

    log_new_params(uri, run_id, upload.params)
    timestamp = _ms(upload.record.run.finished_at) or int(datetime.now(timezone.utc).timestamp() * 1000)
    metrics = [Metric(k, float(v), timestamp, 0) for k, v in upload.record.metrics.items()]
    for start in range(0, len(metrics), METRIC_BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + METRIC_BATCH])
    tags = _tags({**upload.tags, RUN_UID_TAG: upload.record.run.run_uid, UPLOADED_BY_TAG: "log-run"})
    for start in range(0, len(tags), TAG_BATCH):
        client.log_batch(run_id, tags=tags[start:start + TAG_BATCH])
    client.log_artifacts(run_id, str(upload.run_dir))
    log_dataset_input(uri, run_id, upload.record)
    timeline = read_timeline(upload.run_dir)
    experiment = client.get_run(run_id).info.experiment_id
    if timeline is not None and not (incomplete_before and run_trace_count(uri, run_id, experiment)):
        log_stage_traces(uri, run_id, experiment, timeline, upload.record.run.run_uid)
    if incomplete_before:
        present = client.get_run(run_id).data.tags
        for key in (INCOMPLETE_TAG, RECORD_STATUS_TAG):
            if key in present:
                client.delete_tag(run_id, key)
