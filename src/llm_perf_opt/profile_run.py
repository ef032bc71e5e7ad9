"""One profiling run, start to finish: config -> workload -> timed pass -> records -> sinks.

The run directory is written first and completely; MLflow mirrors it. A failure after measuring has
started keeps every sample measured so far, writes error.txt, and ends the MLflow run FAILED.
"""

from __future__ import annotations

import logging
import sys
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from llm_perf_opt.data import load_pages
from llm_perf_opt.models import build_workload
from llm_perf_opt.profiling.environment import capture_environment
from llm_perf_opt.profiling.summary_stats import flatten_metrics, summarize
from llm_perf_opt.profiling.timed_pass import SampleRecord, iter_timed_samples, stage_column
from llm_perf_opt.sinks.run_directory import RunDirectory
from llm_perf_opt.tracking.mlflow_tracker import MlflowTracker, flatten, resolve_tracking_uri

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ProfileOutcome:
    run_dir: Path
    status: str  # FINISHED | FAILED
    mlflow_run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    tracking_errors: list[str] = field(default_factory=list)


def _progress(setting: Any, total: int):
    disable = None if str(setting).lower() == "auto" else not bool(setting)
    return tqdm(total=total, desc="profiling", unit="sample", disable=disable, file=sys.stderr, dynamic_ncols=True)


def _frames(records: list[SampleRecord]) -> tuple[pd.DataFrame, pd.DataFrame]:
    samples = pd.DataFrame([r.row for r in records])
    steps = pd.DataFrame(
        [
            {"repeat": r.row["repeat"], "input_index": r.row["input_index"], "input_id": r.row["input_id"],
             "step": step + 1, "decode_step_ms": ms}
            for r in records
            for step, ms in enumerate(r.decode_step_ms)
        ],
        columns=["repeat", "input_index", "input_id", "step", "decode_step_ms"],
    )
    return samples, steps


def _stage_table(summary: dict[str, dict], stages: list[str]) -> dict[str, dict]:
    """Stages with their nesting: sub-stages and their groups are nested within prefill."""
    table: dict[str, dict] = {"prefill": {"column": "prefill_ms", "nested_in": None}}
    groups = []
    for stage in stages:
        group = stage.split("/")[0]
        if group != stage and group not in groups:
            groups.append(group)
    for group in groups:
        table[group] = {"column": f"{group}_ms", "nested_in": "prefill"}
    for stage in stages:
        group = stage.split("/")[0]
        table[stage] = {"column": stage_column(stage), "nested_in": group if group != stage else "prefill"}
    table["decode"] = {"column": "decode_ms", "nested_in": None}
    for entry in table.values():
        entry["ms"] = summary.get(entry["column"], {})
    return table


def run_profile(cfg: DictConfig, run_dir: Path) -> ProfileOutcome:
    """Profile the configured workload. Raises InputError for bad input before anything is measured."""
    from llm_perf_opt.models.workload import resolve_device

    started_at = datetime.now(timezone.utc).isoformat()
    device = resolve_device(cfg.device)
    pages = load_pages(cfg.dataset)
    log.info("building %s (%s) on %s", cfg.model.family, cfg.model.preset, device)
    workload = build_workload(cfg.model, pages, device, int(cfg.seed))
    stages = list(workload.stage_modules)

    out = RunDirectory(run_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    out.write_text("config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    env = capture_environment(device, PROJECT_ROOT, workload.info)
    out.write_json("env.json", env)
    prof = cfg.profiling
    workload_record = {
        **workload.info,
        "device": str(device),
        "new_tokens": int(prof.new_tokens),
        "warmup": int(prof.warmup),
        "repeats": int(prof.repeats),
        "stages": stages,
        "inputs": [{"input_id": i.input_id, "prompt_tokens": i.prompt_tokens, "image_tokens": i.image_tokens,
                    **i.meta} for i in workload.inputs],
    }
    out.write_json("workload.json", workload_record)

    tracker = MlflowTracker(resolve_tracking_uri(cfg.tracking.uri, Path.cwd()), cfg.tracking.experiment,
                            bool(cfg.tracking.enabled))
    run_name = cfg.tracking.run_name or f"{workload.family}-{workload.info.get('preset')}-{device.type}"
    tracker.start(run_name, {
        "llm_perf_opt.kind": "profile",
        "model": workload.family,
        "preset": workload.info.get("preset"),
        "device": env.get("device_name"),
        "dtype": workload.info.get("dtype"),
        "git_sha": env.get("git_sha"),
        "run_dir": str(out.path),
    })
    params = flatten(resolved)
    params.update({f"workload.{k}": v for k, v in workload.info.items() if not isinstance(v, (dict, list))})
    params["workload.num_inputs"] = len(workload.inputs)
    tracker.log_params(params)

    records: list[SampleRecord] = []
    status, error = "FINISHED", None
    total = int(prof.warmup) + int(prof.repeats) * len(workload.inputs)
    try:
        with _progress(prof.progress, total) as bar:
            for record in iter_timed_samples(workload, int(prof.new_tokens), int(prof.warmup), int(prof.repeats),
                                             bool(prof.stop_at_eos), bar):
                records.append(record)
    except (Exception, KeyboardInterrupt) as exc:
        status = "FAILED"
        error = f"{type(exc).__name__}: {exc}"
        out.write_text("error.txt", f"{error}\n\n{traceback.format_exc()}")
        log.error("profiling failed after %d samples: %s", len(records), error)

    samples, steps = _frames(records)
    out.write_csv("samples.csv", samples)
    out.write_csv("decode_steps.csv", steps)
    summary = summarize(samples, steps, stages) if len(samples) else {}
    metrics = flatten_metrics(summary, stages)
    metrics["samples/count"] = float(len(samples))
    out.write_json("metrics.json", {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "error": error,
        "run": {"run_dir": str(out.path), "mlflow_run_id": tracker.run_id, "tracking_uri": tracker.uri,
                "started_at": started_at, "finished_at": datetime.now(timezone.utc).isoformat()},
        "workload": workload_record,
        "env": env,
        "stages": _stage_table(summary, stages),
        "summary": summary,
        "metrics": metrics,
    })

    tracker.log_metrics(metrics)
    if tracker.errors:
        out.write_text("tracking_error.txt", "\n".join(tracker.errors) + "\n")
    tracker.log_artifacts(out.path)
    tracker.finish(status)
    if tracker.errors and not out.file("tracking_error.txt").exists():
        out.write_text("tracking_error.txt", "\n".join(tracker.errors) + "\n")
    return ProfileOutcome(out.path, status, tracker.run_id, metrics, error, list(tracker.errors))
