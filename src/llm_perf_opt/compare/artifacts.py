"""Read a compared run's files (samples.csv, env.json, operators.csv): MLflow artifact first, run dir second.

The MLflow artifact is what the tracking store holds for that run (it may come from another machine);
the `run_dir` tag's local directory is the fallback when the artifact was never uploaded (the run
directory is the source of truth, GUIDE.md). Called only for the runs whose samples are needed, never
for every selected run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


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


class RunFiles:
    """Downloads into `cache_dir/<run_id>/`; `missing` maps a file name to {run_id: why it was not found}."""

    def __init__(self, tracking_uri: str, cache_dir: Path):
        self.tracking_uri = tracking_uri
        self.cache_dir = Path(cache_dir)
        self.missing: dict[str, dict[str, str]] = {}

    def path(self, run_id: str, name: str, run_dir: str | None = None) -> Path | None:
        from mlflow.artifacts import download_artifacts
        from mlflow.exceptions import MlflowException

        try:
            with _quiet_downloads():
                    local = download_artifacts(run_id=run_id, artifact_path=name, tracking_uri=self.tracking_uri,
                                           dst_path=str(self.cache_dir / run_id))
            return Path(local)
        except (MlflowException, OSError) as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if run_dir and (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
        self.missing.setdefault(name, {})[run_id] = (f"not in its MLflow artifacts ({reason}) nor its run "
                                                     f"directory ({run_dir or 'no run_dir tag'})")
        return None

    def csv(self, run_id: str, name: str, run_dir: str | None = None) -> pd.DataFrame | None:
        path = self.path(run_id, name, run_dir)
        return pd.read_csv(path) if path is not None else None

    def json(self, run_id: str, name: str, run_dir: str | None = None) -> dict[str, Any] | None:
        path = self.path(run_id, name, run_dir)
        return json.loads(path.read_text()) if path is not None else None
