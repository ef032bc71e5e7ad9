"""The one place that talks to MLflow.

- Tracking URI: `tracking.uri` when set, else $MLFLOW_TRACKING_URI (set by `mlflow run` for its child),
  else MLflow's default store `sqlite:///<cwd>/mlflow.db`; relative sqlite paths are made absolute so a
  changed working directory cannot move the store.
- Under `mlflow run`, $MLFLOW_RUN_ID names the run the launcher created: it is resumed, not duplicated.
- A tracking failure never loses a measurement: the run directory is already complete. The first
  failure is reported once, remembered in `errors`, and later calls are skipped.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import RunTag

PARAM_VALUE_LIMIT = 6000  # MLflow rejects longer param values
BATCH = 100  # MLflow's per-request limit for params


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


class MlflowTracker:
    def __init__(self, uri: str, experiment: str, enabled: bool = True):
        self.uri = uri
        self.experiment = experiment
        self.enabled = enabled
        self.run_id: str | None = None
        self.errors: list[str] = []

    @property
    def active(self) -> bool:
        return self.enabled and not self.errors

    def _guard(self, action: str, call: Callable[[], Any]) -> Any:
        if not self.active:
            return None
        try:
            return call()
        except Exception as exc:  # any MLflow/client/storage failure: record it, keep the run directory
            message = f"MLflow {action} failed: {type(exc).__name__}: {exc}"
            self.errors.append(message)
            warnings.warn(f"{message} (the run directory still holds every result)", stacklevel=3)
            return None

    def start(self, run_name: str | None, tags: Mapping[str, str]) -> str | None:
        def _start() -> str:
            import mlflow

            mlflow.set_tracking_uri(self.uri)
            if os.environ.get("MLFLOW_RUN_ID"):
                run = mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"])
            else:
                mlflow.set_experiment(self.experiment)
                run = mlflow.start_run(run_name=run_name)
            return run.info.run_id

        self.run_id = self._guard("start_run", _start)
        self.set_tags(tags)
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        def _log() -> None:
            import mlflow
            from mlflow.entities import Param

            client = mlflow.MlflowClient(self.uri)
            existing = client.get_run(self.run_id).data.params
            items = [Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in params.items() if k not in existing]
            for start in range(0, len(items), BATCH):
                client.log_batch(self.run_id, params=items[start:start + BATCH])

        self._guard("log_params", _log)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        def _set() -> None:
            import mlflow

            mlflow.MlflowClient(self.uri).log_batch(
                self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items() if v is not None])

        if tags:
            self._guard("set_tags", _set)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        def _log() -> None:
            import mlflow

            mlflow.log_metrics(dict(metrics), run_id=self.run_id)

        self._guard("log_metrics", _log)

    def log_artifacts(self, directory: Path) -> None:
        def _log() -> None:
            import mlflow

            mlflow.log_artifacts(str(directory), run_id=self.run_id)

        self._guard("log_artifacts", _log)

    def finish(self, status: str) -> None:
        """End the run; tried even after an earlier failure so the run is not left RUNNING."""
        if not self.enabled or self.run_id is None:
            return
        try:
            import mlflow

            mlflow.MlflowClient(self.uri).set_terminated(self.run_id, status=status)
            if mlflow.active_run() is not None:
                mlflow.end_run(status=status)
        except Exception as exc:
            self.errors.append(f"MLflow end_run failed: {type(exc).__name__}: {exc}")
            warnings.warn(self.errors[-1], stacklevel=2)
