"""The run directory: the source of truth. Everything is written here first; MLflow mirrors it.

Layout (docs/metrics.md describes each file):
  config.yaml          the resolved Hydra config
  env.json             device, driver, versions, git sha, dtype, attention implementation
  workload.json        what ran: family, preset, routing, image mode, each input's token counts
  samples.csv          one row per input x repeat (all times in ms)
  decode_steps.csv     one row per decode step of every sample (decode_step_ms)
  metrics.json         the run record (llm_perf_opt.record.RunRecord): stages, statistics, costs, rates, metrics
  counts.json          counted FLOPs and analytic FLOPs/bytes per input and stage
  trace.json.gz        the profiled pass's Chrome trace (Perfetto, chrome://tracing, HTA)
  operators.csv        operators by stage; kernels.csv on a GPU; operators.md (reports)
  report.md            the technical report; stakeholder_summary.md the plain-language one
  roofline.png         stages against the device's roofs (when peaks are known)
  nvml_timeline.csv    power/clock samples (GPU with NVML); energy_samples.csv per sample
  error.txt            only when the run did not finish (FAILED or KILLED): each error, its step, traceback
  tracking_error.txt   only when MLflow logging failed
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from llm_perf_opt.errors import InputError
from llm_perf_opt.record import RECORD_FILE, RunRecord, save


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; absent is the honest encoding
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class RunDirectory:
    """A run's directory. `new_run=True` refuses a directory that already holds a run's record or samples:
    one directory, one run (its metrics.json and its MLflow run name each other)."""

    def __init__(self, path: str | Path, new_run: bool = False):
        self.path = Path(path).resolve()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the run directory {self.path} ({exc.strerror or exc}): choose a "
                             "writable place (LLM_PERF_OPT_RUNS_DIR or hydra.run.dir)") from None
        taken = [name for name in (RECORD_FILE, "samples.csv") if (self.path / name).exists()]
        if new_run and taken:
            raise InputError(f"{self.path} already holds a run ({', '.join(taken)}): give this run its own "
                             "directory (the default names are unique; check hydra.run.dir)")

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, payload: Any) -> Path:
        target = self.file(name)
        target.write_text(json.dumps(_jsonable(payload), indent=2, sort_keys=False) + "\n")
        return target

    def write_text(self, name: str, text: str) -> Path:
        target = self.file(name)
        target.write_text(text)
        return target

    def write_csv(self, name: str, frame: pd.DataFrame) -> Path:
        target = self.file(name)
        frame.to_csv(target, index=False)
        return target

    def write_record(self, record: RunRecord) -> Path:
        return save(record, self.file(RECORD_FILE))
