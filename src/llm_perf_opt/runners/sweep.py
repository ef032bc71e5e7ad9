"""Sweeps: `llm-perf-opt profile -m ...` as one MLflow parent run with one child run per job.

Hydra runs the sweep (its sweeper, and whichever launcher: basic, joblib, submitit); this module only
hooks Hydra's callbacks (conf/config.yaml `hydra.callbacks.sweep`):

- `on_multirun_start` (the launching process): create the parent run (under `mlflow run`, the run
  the launcher made becomes the parent), log the swept parameters, and write `<sweep dir>/sweep.json`
  (parent run id, tracking URI, experiment id). `MLFLOW_RUN_ID` is removed from the environment so
  that no job resumes the parent.
- every job (any process, any host sharing the sweep directory) reads sweep.json (`sweep_job`), and
  its run is a child: tagged `mlflow.parentRunId`, params `sweep.<key>` = its own values. On a GPU
  the job first takes a GPU lease (gpu_lease.py) and profiles that device.
- `on_multirun_end`: read the children back, write the summary (table, plots: reports/sweep_summary.py)
  into the sweep directory and onto the parent, and end the parent with the children's status.
  When the sweep stops before that (an error, a signal), an exit hook ends the parent FAILED.
A job never raises into Hydra: a failed job is a FAILED child, and the sweep goes on; the command's exit
status is 1 when any child did not finish.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from llm_perf_opt.schema import KIND_TAG, PARENT_TAG, SWEEP_DIR_TAG, SWEEP_JOB_TAG

# MLflow, pandas and matplotlib load only when a sweep runs (reports/, tracking/ imported in the methods):
# a single run's bad input stays fast.
SWEEP_FILE = "sweep.json"
SUMMARY_DIR = "summary"
JOBS_DIR = ".jobs"  # one <job number>.json per job: its exit status and MLflow run (a job may fail before one exists)


def swept_parameters(task_overrides: list[str]) -> dict[str, list[str]]:
    """{key: values} of the sweep overrides among Hydra's task overrides (`a=1,2` -> {"a": ["1", "2"]})."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    return {o.get_key_element(): [str(v) for v in o.sweep_string_iterator()] for o in parsed if o.is_sweep_override()}


@dataclass
class SweepJob:
    """What a job knows of its sweep: the parent run and its own values of the swept parameters."""

    parent_run_id: str
    tracking_uri: str
    experiment_id: str
    sweep_dir: Path
    job: int
    values: dict[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        return {PARENT_TAG: self.parent_run_id, SWEEP_JOB_TAG: str(self.job), SWEEP_DIR_TAG: str(self.sweep_dir)}

    def params(self) -> dict[str, str]:
        return {f"sweep.{key}": value for key, value in self.values.items()}

    def name_suffix(self) -> str:
        return f" #{self.job} " + " ".join(f"{k}={v}" for k, v in self.values.items())

    def record_exit(self, code: int, run_id: str | None, lease: dict | None = None) -> None:
        """`.jobs/<n>.json`: exit status, run id, swept values and the GPU lease ({gpu, from, to}: epoch s)."""
        folder = self.sweep_dir / JOBS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        result = {"job": self.job, "exit_code": code, "run_id": run_id, "values": self.values, "gpu_lease": lease}
        (folder / f"{self.job}.json").write_text(json.dumps(result) + "\n", encoding="utf-8")


def job_results(sweep_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((sweep_dir / JOBS_DIR).glob("*.json"))]


def expected_jobs(swept: dict[str, list[str]]) -> int:
    """Jobs of a grid sweep (Hydra's basic sweeper): the product of the swept values' counts."""
    count = 1
    for values in swept.values():
        count *= len(values)
    return count


def sweep_job() -> SweepJob | None:
    """The current job's sweep (a multirun job whose sweep directory has sweep.json), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra_cfg = HydraConfig.get()
    sweep_dir = Path(hydra_cfg.sweep.dir)
    path = sweep_dir / SWEEP_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text(encoding="utf-8"))
    mine = {}
    for override in hydra_cfg.overrides.task:
        key, _, value = override.partition("=")
        if key.lstrip("+~") in info["swept"]:
            mine[key.lstrip("+~")] = value
    return SweepJob(info["parent_run_id"], info["tracking_uri"], info["experiment_id"], sweep_dir,
                    int(hydra_cfg.job.num), mine)


class SweepCallback(Callback):
    """Hydra callback: the sweep's parent run (see the module docstring). Does nothing for single runs."""

    outcome: str | None = None  # the parent's final status, read by the CLI for its exit status

    def __init__(self) -> None:
        self.parent: dict[str, Any] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not bool(config.tracking.enabled):
            return
        from llm_perf_opt.tracking.mlflow_tracker import resolve_tracking_uri
        from llm_perf_opt.tracking.sweep import start_parent

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        swept = swept_parameters(list(config.hydra.overrides.task))
        uri = resolve_tracking_uri(config.tracking.uri, Path.cwd())
        resumed = os.environ.pop("MLFLOW_RUN_ID", None)  # jobs must not resume the parent
        name = config.tracking.run_name or f"sweep {sweep_dir.name}"
        params = {f"sweep.{key}": ",".join(values) for key, values in swept.items()}
        try:
            run_id, experiment_id = start_parent(uri, config.tracking.experiment, name, params,
                                                 {KIND_TAG: "sweep", SWEEP_DIR_TAG: str(sweep_dir)},
                                                 resumed)
        except Exception as exc:  # the jobs still run and record their run directories
            print(f"error: the sweep's parent run could not be created ({type(exc).__name__}: {exc}); jobs run "
                  "without it", file=sys.stderr)
            return
        self.parent = {"parent_run_id": run_id, "tracking_uri": uri, "experiment_id": experiment_id,
                       "swept": list(swept), "jobs": expected_jobs(swept)}
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(self.parent, indent=2) + "\n", encoding="utf-8")
        (sweep_dir / SUMMARY_DIR).mkdir(exist_ok=True)  # the parent's artifacts: the config now, the summary at the end
        (sweep_dir / SUMMARY_DIR / "sweep_config.yaml").write_text(OmegaConf.to_yaml(config), encoding="utf-8")
        atexit.register(self._abandoned)
        print(f"sweep: parent mlflow run {run_id}, {len(swept)} swept parameter(s), directory {sweep_dir}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent is None:
            return
        from llm_perf_opt.reports.sweep_summary import summary_markdown, summary_table, write_summary
        from llm_perf_opt.tracking.sweep import children, finish_parent, parent_status

        parent, self.parent = self.parent, None
        sweep_dir = Path(config.hydra.sweep.dir)
        found = children(parent["tracking_uri"], parent["experiment_id"], parent["parent_run_id"])
        table = summary_table(found, parent["swept"])
        out = sweep_dir / SUMMARY_DIR
        write_summary(table, parent["swept"], out, found)
        statuses = [str(s) for s in table["status"]]
        results = job_results(sweep_dir)
        jobs = max(parent["jobs"], len(results), len(statuses))
        finished = sum(1 for r in results if r["exit_code"] == 0) if results else statuses.count("FINISHED")
        # A job that failed before its MLflow run existed (bad input) or never reported is a failed job too.
        status = parent_status(statuses + ["FAILED"] * (jobs - len(statuses)))
        counts = {"sweep/jobs": jobs, "sweep/finished": finished, "sweep/failed": jobs - finished}
        note = (f"**Sweep** of {', '.join(parent['swept']) or 'nothing'}: {counts['sweep/finished']} of "
                f"{counts['sweep/jobs']} jobs finished.\n\n" + summary_markdown(table, parent["swept"]))
        finish_parent(parent["tracking_uri"], parent["parent_run_id"], status, counts, note, out)
        type(self).outcome = status
        print(f"sweep: {counts['sweep/finished']}/{counts['sweep/jobs']} jobs finished; parent run "
              f"{parent['parent_run_id']} {status}; summary in {out}")

    def _abandoned(self) -> None:
        """Exit hook: a sweep that stopped before on_multirun_end leaves no parent RUNNING."""
        if self.parent is not None:
            from llm_perf_opt.tracking.sweep import end_parent

            try:
                end_parent(self.parent["tracking_uri"], self.parent["parent_run_id"], "FAILED")
            except Exception as exc:
                print(f"error: could not end the sweep's parent run: {exc}", file=sys.stderr)
