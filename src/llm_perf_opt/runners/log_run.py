"""`llm-perf-opt log-run RUN_DIR [RUN_DIR ...]`: log run directories to MLflow after the fact.

For runs measured while the tracking store was unreachable (the profile prints this command), or
whose MLflow mirror is incomplete. Each directory's record (metrics.json) and resolved config.yaml
give what the profile itself would have logged: params (the flattened config plus `workload.*`), the
record's metrics, the profile's tags (plus `<stage>/bound`, `llm_perf_opt.run_uid` and
`llm_perf_opt.uploaded_by=log-run`), every file of the directory as artifacts, and the record's
status. Idempotent: a run already in the store (found by `llm_perf_opt.run_uid`) is not logged again.

Tracking URI: --tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db. Experiment:
--experiment, else the run's `tracking.experiment`. One line per directory; exit status 0 when every
directory is logged (or already was), 1 when logging one failed, 2 when one is not a run directory.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from omegaconf import OmegaConf

from llm_perf_opt import record as run_record
from llm_perf_opt.errors import InputError
from llm_perf_opt.record import record_tags
from llm_perf_opt.reports.run_note import run_note
from llm_perf_opt.runners.identity import run_name, run_params, run_tags
from llm_perf_opt.tracking.mlflow_tracker import NOTE_TAG, cut_note, resolve_tracking_uri
from llm_perf_opt.tracking.store import StoreUnavailable, prepare_store
from llm_perf_opt.tracking.upload import RunUpload, UploadError, upload_run

DEFAULT_EXPERIMENT = "llm-perf-opt"  # TrackingConfig.experiment's default
TERMINAL = ("FINISHED", "FAILED", "KILLED")


class NotLoggable(Exception):
    """A valid run directory that cannot be logged now (its record is still RUNNING)."""


def _config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as exc:  # YAML or OmegaConf syntax
        raise InputError(f"{path} is not readable YAML ({type(exc).__name__}): fix or remove it") from None
    return loaded if isinstance(loaded, dict) else {}


def plan_upload(run_dir: Path, experiment: str | None) -> RunUpload:
    """What to log for one directory. InputError: not a run directory; NotLoggable: still RUNNING."""
    run_dir = run_dir.resolve()
    record = run_record.load(run_dir)
    if record.status not in TERMINAL:
        raise NotLoggable(f"{run_dir}: metrics.json says {record.status} (the profile is still running, or it "
                          "died before ending its record): not logged")
    config = _config(run_dir)
    tracking = config.get("tracking") if isinstance(config.get("tracking"), dict) else {}
    tags = {**run_tags(record.workload, record.env, run_dir, record.run.run_uid), **record_tags(record),
            NOTE_TAG: cut_note(run_note(record))}
    return RunUpload(run_dir=run_dir, record=record, experiment=experiment or tracking.get("experiment")
                     or DEFAULT_EXPERIMENT, run_name=str(tracking.get("run_name") or run_name(record.workload)),
                     params=run_params(config, record.workload), tags=tags)


def log_runs(run_dirs: list[str], uri: str, experiment: str | None = None, out: TextIO | None = None,
             err: TextIO | None = None) -> int:
    """Log each directory; one line each (stdout when logged or already there, stderr `error: ...` else).
    Returns the exit status: 2 if a directory is not a run directory, else 1 if any failed, else 0."""
    out, err = out or sys.stdout, err or sys.stderr
    uploads: list[RunUpload] = []
    status = 0
    for run_dir in run_dirs:
        try:
            uploads.append(plan_upload(Path(run_dir), experiment))
        except InputError as exc:
            print(f"error: {exc}", file=err)
            status = 2
        except NotLoggable as exc:
            print(f"error: {exc}", file=err)
            status = status or 1
    if not uploads:
        return status
    try:
        prepare_store(uri, None)  # reachable? (a server's /health; a SQLite store created under its lock)
    except StoreUnavailable as exc:
        print(f"error: MLflow tracking store {uri} is unreachable ({exc}): nothing logged", file=err)
        return status or 1
    for upload in uploads:
        try:
            result = upload_run(upload, uri)
        except UploadError as exc:
            print(f"error: {upload.run_dir}: {exc}", file=err)
            status = status or 1
            continue
        if result.outcome == "already":
            print(f"{upload.run_dir}: already logged as run {result.run_id}", file=out)
        else:
            verb = "logged as run" if result.outcome == "logged" else "completed run"
            print(f"{upload.run_dir}: {verb} {result.run_id} ({result.status}) to {uri}", file=out)
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-perf-opt log-run", description=(
        "Log run directories (each with its metrics.json) to MLflow: params, metrics, tags, every file as an "
        "artifact, and the run's status. A run already logged (same llm_perf_opt.run_uid) is skipped."))
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run directory written by the profile")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    parser.add_argument("--experiment", help="default: the run's tracking.experiment (config.yaml)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    # One line per run directory: not MLflow's "View run ... at" lines it prints for a tracking server.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    sys.exit(log_runs(args.run_dirs, resolve_tracking_uri(args.tracking_uri, Path.cwd()), args.experiment))


if __name__ == "__main__":
    main()
