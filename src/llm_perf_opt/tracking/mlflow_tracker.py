"""The one place that talks to MLflow.

- Tracking URI: `tracking.uri` when set, else $MLFLOW_TRACKING_URI (set by `mlflow run` for its child),
  else MLflow's default store `sqlite:///<cwd>/mlflow.db`; relative sqlite paths are made absolute so a
  changed working directory cannot move the store.
- Under `mlflow run`, $MLFLOW_RUN_ID names the run the launcher created: it is resumed, not duplicated.
- Before the run starts, the store is checked (store.py): a server must answer `GET /health` within
  3 s; a SQLite store is created, migrated and given its experiment under `<db>.lock`, so that several
  processes may start at once against a new store. A store that is not usable makes the tracker
  `offline`: one error line, no MLflow call afterwards, and `upload_hint(run_dir)` says how to log
  the run directory later (`llm-perf-opt log-run`). HTTP retries and timeouts are bounded (store.HTTP_LIMITS).
- A tracking failure never loses a measurement: the run directory is already complete. The first
  failure is reported once, remembered in `errors`, and later calls are skipped.
- A run whose mirror is incomplete (an MLflow call failed after the run was created) does not end
  FINISHED: `finish` ends it FAILED, tagged `llm_perf_opt.incomplete_mirror` with the first error
  (and `llm_perf_opt.record_status` with the run's own status); `log-run` completes such a run.
- How runs read in the UI: the run's experiment (ours, or the launcher's under `mlflow run`) is tagged
  `mlflow.experimentKind=custom_model_development` unless it has a kind already (the experiment header's
  kind; MLflow 3.17's UI picks its Model training view from the URL parameter
  `workflowType=machine_learning` or the browser's last choice, so links the project writes carry it);
  under `mlflow run` the launcher's random run name is replaced by ours; `set_note`
  writes the run's description (`mlflow.note.content`).
- What MLflow shows besides metrics: the inputs as the run's dataset input, one trace per input with the
  stage waterfall (run_inputs.py), and, when asked, MLflow's own system metrics (CPU, memory, GPU
  utilisation, memory and power) sampled by its monitor thread every `system_metrics_interval_s`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import RunTag

from llm_perf_opt.record import RelatedRuns, RunRecord
from llm_perf_opt.schema import RUN_UID_TAG  # noqa: F401  (re-exported: upload.py, identity.py)
from llm_perf_opt.tracking.related import related_runs
from llm_perf_opt.tracking.run_inputs import log_dataset_input, log_stage_traces, read_timeline
from llm_perf_opt.tracking.store import StoreUnavailable, prepare_store, unavailable_message

PARAM_VALUE_LIMIT = 6000  # MLflow rejects longer param values
TAG_NOTE_LIMIT = 500      # the error quoted in the incomplete-mirror tag
BATCH = 100  # MLflow's per-request limit for params
INCOMPLETE_TAG = "llm_perf_opt.incomplete_mirror"  # the MLflow run lacks data the run directory has
RECORD_STATUS_TAG = "llm_perf_opt.record_status"   # the run's own status, when the MLflow run ended otherwise
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"      # the run's description in the UI (Markdown)
NOTE_LIMIT = 8000                     # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the UI's runs view; without the tag it opens the GenAI view


def resolve_tracking_uri(uri: str | None, base_dir: str | Path) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    base = Path(base_dir).resolve()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{base / uri[len('sqlite:///'):]}"
    if "://" not in uri:  # a bare path: a file store directory
        return Path(base / uri).resolve().as_uri()
    return uri


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def upload_command(run_dir: str | Path, tracking_uri: str | None = None) -> str:
    """`llm-perf-opt log-run <run_dir>`, with `--tracking-uri` unless the store is sqlite:///<cwd>/mlflow.db.

    $MLFLOW_TRACKING_URI is not consulted: MLflow itself sets it in this process (mlflow.set_tracking_uri),
    and the shell the command is pasted into may not have it."""
    command = f"llm-perf-opt log-run {shlex.quote(str(run_dir))}"
    if tracking_uri and tracking_uri != f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}":
        command += f" --tracking-uri {shlex.quote(tracking_uri)}"
    return command


def upload_hint(run_dir: str | Path, tracking_uri: str | None = None) -> str:
    return f"upload it later with: {upload_command(run_dir, tracking_uri)}"


def mark_experiment_kind(uri: str, experiment_id: str) -> None:
    """Tag the experiment EXPERIMENT_KIND_TAG=EXPERIMENT_KIND, unless it has a kind already (set by its owner)."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def cut_note(text: str, limit: int = NOTE_LIMIT) -> str:
    """`text` within a tag value's limit, cut at a line end with a last line saying so."""
    if len(text) <= limit:
        return text
    marker = "\n... (cut: the run's artifacts hold the full text)\n"
    head = text[:limit - len(marker)]
    return head[:head.rfind("\n")] + marker if "\n" in head else head + marker


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else text


class MlflowTracker:
    """Writes one MLflow run. Pipeline: `start`, `log_params`/`set_tags`/`log_metrics`/`log_artifacts`,
    `finish(record.status)`; then, when `needs_upload`, print `upload_hint(run_dir)`."""

    def __init__(self, uri: str, experiment: str, enabled: bool = True, system_metrics_interval_s: float | None = None,
                 experiment_id: str | None = None):
        self.uri = uri
        self.experiment = experiment
        self.enabled = enabled
        # MLflow's system-metrics monitor (CPU, memory, GPU utilisation/memory/power), sampled every this
        # many seconds while the run is open; None: off.
        self.system_metrics_interval_s = system_metrics_interval_s
        self.run_id: str | None = None
        self.experiment_id: str | None = experiment_id  # given: runs go there (a sweep's children: the parent's)
        self.errors: list[str] = []
        self.offline = False  # the store was unusable at start: nothing was sent to MLflow

    @property
    def active(self) -> bool:
        return self.enabled and not self.errors

    @property
    def needs_upload(self) -> bool:
        """Tracking was on, but MLflow lacks (part of) this run: `llm-perf-opt log-run` can log it later."""
        return self.enabled and (self.offline or self.run_id is None or bool(self.errors))

    def upload_hint(self, run_dir: str | Path) -> str:
        """'upload it later with: llm-perf-opt log-run <run_dir>' (plus --tracking-uri when not the default)."""
        return upload_hint(run_dir, self.uri)

    def _record(self, message: str, warning: str | None = None) -> None:
        self.errors.append(message)
        warnings.warn(warning or message, stacklevel=3)

    def _guard(self, action: str, call: Callable[[], Any]) -> Any:
        if not self.active:
            return None
        try:
            return call()
        except Exception as exc:  # any MLflow/client/storage failure: record it, keep the run directory
            message = f"MLflow {action} failed: {type(exc).__name__}: {exc}"
            self._record(message, f"{message} (the run directory still holds every result)")
            return None

    def start(self, run_name: str | None, tags: Mapping[str, str]) -> str | None:
        """Check the store, then start (or, under `mlflow run`, resume and rename to `run_name`) the run, and
        mark its experiment's kind. An unusable store makes the tracker offline with one error line, quickly
        (a 3 s health check, or the SQLite set-up)."""
        if not self.enabled:
            return None
        resumed = os.environ.get("MLFLOW_RUN_ID")
        try:
            given = self.experiment_id
            experiment_id = prepare_store(self.uri, None if resumed or given else self.experiment) or given
        except StoreUnavailable as exc:
            self.offline = True
            self._record(unavailable_message(self.uri, str(exc)))
            return None

        def _start() -> tuple[str, str]:
            import mlflow

            mlflow.set_tracking_uri(self.uri)
            nonlocal resumed
            resumed = self._launcher_run(resumed)
            system = self.system_metrics_interval_s is not None
            if system:
                mlflow.set_system_metrics_sampling_interval(self.system_metrics_interval_s)
                mlflow.set_system_metrics_samples_before_logging(1)
            if resumed:
                run = mlflow.start_run(run_id=resumed, log_system_metrics=system)
            else:
                exp_id = experiment_id or mlflow.set_experiment(self.experiment).experiment_id
                run = mlflow.start_run(run_name=run_name, experiment_id=exp_id, log_system_metrics=system)
            return run.info.run_id, run.info.experiment_id

        started = self._guard("start_run", _start)
        if started is not None:
            self.run_id, self.experiment_id = started
            self._guard("set_experiment_tag", lambda: mark_experiment_kind(self.uri, self.experiment_id))
        self.set_tags({**tags, RUN_NAME_TAG: run_name} if resumed and run_name else tags)
        return self.run_id

    def _launcher_run(self, resumed: str | None) -> str | None:
        """The run `mlflow run` created ($MLFLOW_RUN_ID), when it exists in this tracker's store; a run of
        another store (tracking.uri set to a server while `mlflow run` used its local default) is not
        resumed: this run is created in tracking.uri, and one warning says so."""
        if not resumed:
            return None
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            mlflow.MlflowClient(self.uri).get_run(resumed)
        except MlflowException:
            os.environ.pop("MLFLOW_RUN_ID", None)  # else mlflow.start_run would try to resume it all the same
            warnings.warn(f"the run `mlflow run` started ({resumed}) is not in tracking.uri ({self.uri}): this run is "
                          "recorded there as a new run, and mlflow run's own run stays empty; to have one run, give "
                          "both the same store: MLFLOW_TRACKING_URI=<uri> mlflow run .", stacklevel=4)
            return None
        return resumed

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._guard("log_params", lambda: log_new_params(self.uri, self.run_id, params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        def _set() -> None:
            import mlflow

            mlflow.MlflowClient(self.uri).log_batch(
                self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items() if v is not None])

        if tags:
            self._guard("set_tags", _set)

    def set_note(self, text: str) -> None:
        """The run's description in the MLflow UI (Markdown), cut to a tag value's limit."""
        self.set_tags({NOTE_TAG: cut_note(text)})

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        def _log() -> None:
            import mlflow

            mlflow.log_metrics(dict(metrics), run_id=self.run_id)

        self._guard("log_metrics", _log)

    def log_dataset(self, record: RunRecord) -> None:
        """The record's inputs as the run's MLflow dataset input (run_inputs.py)."""
        self._guard("log_inputs", lambda: log_dataset_input(self.uri, self.run_id, record))

    def log_stage_traces(self, run_dir: Path, run_uid: str | None = None) -> None:
        """One MLflow trace per input from the run directory's timeline.json (run_inputs.py), when it has one."""
        timeline = read_timeline(run_dir)
        if timeline is not None:
            self._guard("log_traces",
                        lambda: log_stage_traces(self.uri, self.run_id, self.experiment_id, timeline, run_uid))

    def log_artifacts(self, directory: Path) -> None:
        def _log() -> None:
            import mlflow

            mlflow.log_artifacts(str(directory), run_id=self.run_id)

        self._guard("log_artifacts", _log)

    def related_runs(self) -> RelatedRuns | None:
        """This run and the other profile runs of its experiment (tracking/related.py), for the stakeholder
        summary's recommendations; None when there is no MLflow run. A failed look-up is one warning and None:
        it reads the store, so it never marks the mirror incomplete."""
        if not self.active or self.run_id is None:
            return None
        try:
            return related_runs(self.uri, self.run_id)
        except Exception as exc:
            warnings.warn(f"looking up the experiment's other runs failed ({type(exc).__name__}: "
                          f"{_first_line(str(exc))}): the recommendations cite no other runs", stacklevel=2)
            return None

    def finish(self, status: str) -> str | None:
        """End the run with `status` (FINISHED, FAILED, KILLED); tried even after an earlier failure so the run
        is not left RUNNING. When an earlier call failed, MLflow lacks data: a FINISHED run ends FAILED and
        is tagged INCOMPLETE_TAG (the first error) and RECORD_STATUS_TAG. Returns the status MLflow was
        asked to end with (None when there is no MLflow run)."""
        if not self.enabled or self.run_id is None:
            return None
        import mlflow

        client = mlflow.MlflowClient(self.uri)
        final = status
        if self.errors:
            final = "FAILED" if status == "FINISHED" else status
            note = _first_line(self.errors[0])[:TAG_NOTE_LIMIT]
            self._attempt("set_tags", lambda: client.log_batch(
                self.run_id, tags=[RunTag(INCOMPLETE_TAG, note), RunTag(RECORD_STATUS_TAG, status)]))

        def _end() -> None:
            active = mlflow.active_run()
            try:
                client.set_terminated(self.run_id, status=final)
            finally:  # off the fluent stack, so that MLflow's exit hook does not end it FINISHED
                if active is not None and active.info.run_id == self.run_id:
                    with contextlib.suppress(Exception):
                        mlflow.end_run(status=final)

        self._attempt("end_run", _end)
        return final

    def _attempt(self, action: str, call: Callable[[], Any]) -> None:
        """A call made even when inactive (ending the run); a failure is recorded and reported."""
        try:
            call()
        except Exception as exc:
            self._record(f"MLflow {action} failed: {type(exc).__name__}: {_first_line(str(exc))}")


def log_new_params(uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log the params the run does not have yet (MLflow refuses to change a logged param), in batches."""
    import mlflow
    from mlflow.entities import Param

    client = mlflow.MlflowClient(uri)
    existing = client.get_run(run_id).data.params
    items = [Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in params.items() if k not in existing]
    for start in range(0, len(items), BATCH):
        client.log_batch(run_id, params=items[start:start + BATCH])
