"""Read a compared run's files (metrics.json, samples.csv, decode_steps.csv, env.json, operators.csv).

MLflow artifact first (through llm_perf_opt.tracking.runs), run dir second. The MLflow artifact is what
the tracking store holds for that run (it may come from another machine); the `run_dir` tag's local
directory is the fallback when the artifact was never uploaded (the run directory is the source of
truth, GUIDE.md). Called only for the baseline (its record) and the runs whose samples are needed,
never for every selected run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from llm_perf_opt import record
from llm_perf_opt.errors import InputError
from llm_perf_opt.record import RunRecord
from llm_perf_opt.tracking.runs import ArtifactUnavailable, download_artifact


class RunFiles:
    """Downloads into `cache_dir/<run_id>/`; `missing` maps a file name to {run_id: why it was not read}."""

    def __init__(self, tracking_uri: str, cache_dir: Path):
        self.tracking_uri = tracking_uri
        self.cache_dir = Path(cache_dir)
        self.missing: dict[str, dict[str, str]] = {}

    def path(self, run_id: str, name: str, run_dir: str | None = None) -> Path | None:
        try:
            return download_artifact(self.tracking_uri, run_id, name, self.cache_dir / run_id)
        except ArtifactUnavailable as exc:
            reason = str(exc)
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

    def record(self, run_id: str, run_dir: str | None = None) -> RunRecord | None:
        """The run's metrics.json through `record.load`; None (noted in `missing`) when absent or unreadable."""
        path = self.path(run_id, record.RECORD_FILE, run_dir)
        if path is None:
            return None
        try:
            return record.load(path)
        except (InputError, ValidationError, ValueError, OSError) as exc:  # another schema version, malformed
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.missing.setdefault(record.RECORD_FILE, {})[run_id] = f"not a readable run record ({first_line})"
            return None
