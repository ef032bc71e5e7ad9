"""One profiling run as a short pipeline: workload -> passes -> run record -> sinks.

    build the workload (bad input fails here, before anything is recorded)
    open the run directory and the MLflow run
    passes: timed (+ NVML sampler alongside), counted, profiled; each result written to disk as it comes
    assemble the run record (assembly.py), write metrics.json, the reports, and mirror it all to MLflow

The run directory is the truth and is written first; MLflow mirrors it. A failure after the MLflow run
has started keeps every sample measured so far, writes error.txt, marks metrics.json FAILED and ends
the MLflow run FAILED.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from llm_perf_opt.analysis.energy import energy_per_stage
from llm_perf_opt.analysis.peaks import lookup_peaks, with_calibration
from llm_perf_opt.assembly import ProfiledTables, RunParts, build_record
from llm_perf_opt.config import PROJECT_ROOT, validate
from llm_perf_opt.data import load_pages
from llm_perf_opt.models import build_workload
from llm_perf_opt.models.workload import Workload, resolve_device
from llm_perf_opt.passes.calibration import calibrate, matmul_dtype
from llm_perf_opt.passes.counted import formula_operator_names, run_counted_pass
from llm_perf_opt.passes.energy import NvmlSampler
from llm_perf_opt.passes.environment import capture_environment
from llm_perf_opt.passes.profiled import run_profiled_pass
from llm_perf_opt.passes.timed import TimedResult, TimedSample, iter_timed_samples
from llm_perf_opt.profiling.export import operator_summary_for_metrics
from llm_perf_opt.record import ProfiledPassInfo, RunInfo, RunRecord, WorkloadInfo, record_tags
from llm_perf_opt.reports import write_reports
from llm_perf_opt.sinks.run_directory import RunDirectory
from llm_perf_opt.tracking.mlflow_tracker import MlflowTracker, flatten, resolve_tracking_uri

log = logging.getLogger(__name__)


@dataclass
class ProfileOutcome:
    run_dir: Path
    status: str  # FINISHED | FAILED
    mlflow_run_id: str | None
    record: RunRecord
    error: str | None = None
    tracking_errors: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        return self.record.metrics


def run_profile(cfg: DictConfig, run_dir: Path) -> ProfileOutcome:
    """Profile the configured workload. Raises InputError for bad input before anything is recorded."""
    validate(cfg)
    device = resolve_device(cfg.device)
    workload = build_workload(cfg.model, load_pages(cfg.dataset), device, int(cfg.seed))
    out = RunDirectory(run_dir)
    parts = _start_parts(cfg, workload, out)
    tracker = _start_tracking(cfg, workload, parts, out)
    parts.run.mlflow_run_id, parts.run.tracking_uri = tracker.run_id, tracker.uri
    timed: list[TimedSample] = []
    try:
        _measure(cfg, workload, parts, out, timed)
        parts.status = "FINISHED"
    except (Exception, KeyboardInterrupt) as exc:
        _fail(parts, out, exc, f"profiling failed after {len(timed)} samples")
    finally:
        _keep_samples(workload, parts, out, timed)
    record = _finish_record(parts, out)
    _mirror(tracker, record, out)
    return ProfileOutcome(out.path, record.status, tracker.run_id, record, record.error, list(tracker.errors))


def _start_parts(cfg: DictConfig, workload: Workload, out: RunDirectory) -> RunParts:
    """config.yaml, env.json and workload.json on disk; the peaks MFU/MBU are measured against."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    out.write_text("config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    env = capture_environment(workload.device, PROJECT_ROOT, workload.info)
    out.write_json("env.json", env)
    prof = cfg.profiling
    info = WorkloadInfo(**{**workload.info, "device": str(workload.device), "new_tokens": int(prof.new_tokens),
                           "warmup": int(prof.warmup), "repeats": int(prof.repeats), "stages": workload.stages.keys(),
                           "inputs": [{"input_id": i.input_id, "prompt_tokens": i.prompt_tokens,
                                       "image_tokens": i.image_tokens, **i.meta} for i in workload.inputs]})
    out.write_json("workload.json", info.model_dump(mode="json"))
    peak_dtype = matmul_dtype(workload.info["dtype"])
    peaks = lookup_peaks(env["device_name"], peak_dtype, cfg.hardware)
    if cfg.hardware.calibrate:
        peaks = with_calibration(peaks, calibrate(workload.device, peak_dtype), env["device_name"], peak_dtype)
    run = RunInfo(run_dir=str(out.path), started_at=datetime.now(timezone.utc).isoformat())
    return RunParts(tree=workload.stages, run=run, workload=info, env=env, peaks=peaks,
                    launch_busy_share=float(cfg.hardware.launch_busy_share))


def _start_tracking(cfg: DictConfig, workload: Workload, parts: RunParts, out: RunDirectory) -> MlflowTracker:
    tracker = MlflowTracker(resolve_tracking_uri(cfg.tracking.uri, Path.cwd()), cfg.tracking.experiment,
                            bool(cfg.tracking.enabled))
    info, env = workload.info, parts.env
    tracker.start(cfg.tracking.run_name or f"{workload.family}-{info.get('preset')}-{workload.device.type}", {
        "llm_perf_opt.kind": "profile", "model": workload.family, "preset": info.get("preset"),
        "device": env.get("device_name"), "dtype": info.get("dtype"), "torch": env.get("torch"),
        "driver_version": env.get("driver_version"), "git_sha": env.get("git_sha"), "run_dir": str(out.path),
    })
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    params.update({f"workload.{k}": v for k, v in info.items() if not isinstance(v, (dict, list))})
    params["workload.num_inputs"] = len(workload.inputs)
    tracker.log_params(params)
    return tracker


def _progress(setting: Any, total: int) -> tqdm:
    disable = None if str(setting).lower() == "auto" else not bool(setting)
    return tqdm(total=total, desc="profiling", unit="sample", disable=disable, file=sys.stderr, dynamic_ncols=True)


def _measure(cfg: DictConfig, workload: Workload, parts: RunParts, out: RunDirectory,
             timed: list[TimedSample]) -> None:
    """The passes, in order: timed (NVML sampler alongside), counted, profiled. Timed samples land in
    `timed` as they are measured, so a failure later keeps them."""
    prof = cfg.profiling
    on_gpu = workload.device.type == "cuda"
    sampler = NvmlSampler(parts.env.get("device_index", 0), float(prof.energy.interval_ms)) \
        if bool(prof.energy.enabled) and on_gpu else None
    total = (int(prof.warmup) + int(prof.repeats)) * len(workload.inputs)
    with sampler or contextlib.nullcontext(), _progress(prof.progress, total) as bar:
        timed.extend(iter_timed_samples(workload, prof, bar))
    if sampler is not None and sampler.available:
        out.write_csv("nvml_timeline.csv", sampler.timeline)
        parts.energy = energy_per_stage(sampler.timeline, TimedResult.from_samples(timed, workload).samples)
        if len(parts.energy.per_sample):
            out.write_csv("energy_samples.csv", parts.energy.per_sample)
    if bool(prof.counting.enabled):
        counted = run_counted_pass(workload, prof.counting, int(prof.new_tokens))
        out.write_json("counts.json", counted.as_counts_json())
        parts.stage_costs, parts.measured_over_analytic = counted.stage_costs, counted.measured_over_analytic
    if bool(prof.operators.enabled):  # after the timed and counted passes, never inside them
        result = run_profiled_pass(workload, prof.operators, out.path)
        out.write_csv("operators.csv", result.operators)
        if on_gpu and len(result.kernels):
            out.write_csv("kernels.csv", result.kernels)
        info = ProfiledPassInfo(trace=result.trace_path.name, inputs=result.num_inputs,
                                decode_steps=result.decode_steps, device_type=result.device_type,
                                time_basis=result.time_basis, event_count=result.event_count)
        parts.profiled = ProfiledTables(result.operators, result.stage_times, info, formula_operator_names())
        parts.operator_summary = operator_summary_for_metrics(result.operators, int(prof.operators.top_n))


def _fail(parts: RunParts, out: RunDirectory, exc: BaseException, what: str) -> None:
    parts.status, parts.error = "FAILED", f"{type(exc).__name__}: {exc}"
    out.write_text("error.txt", f"{parts.error}\n\n{traceback.format_exc()}")
    log.error("%s: %s", what, parts.error)


def _keep_samples(workload: Workload, parts: RunParts, out: RunDirectory, timed: list[TimedSample]) -> None:
    frames = TimedResult.from_samples(timed, workload)
    parts.samples, parts.decode_steps = frames.samples, frames.decode_steps
    out.write_csv("samples.csv", frames.samples)
    out.write_csv("decode_steps.csv", frames.decode_steps)


def _finish_record(parts: RunParts, out: RunDirectory) -> RunRecord:
    """metrics.json, then the reports rendered from it; a report failure marks the run FAILED."""
    parts.run.finished_at = datetime.now(timezone.utc).isoformat()
    record = build_record(parts)
    out.write_record(record)
    try:
        write_reports(out.path)
    except Exception as exc:  # measurements are on disk already; the run still says it is incomplete
        _fail(parts, out, exc, "writing the reports failed")
        record = record.model_copy(update={"status": parts.status, "error": f"report: {parts.error}"})
        out.write_record(record)
    return record


def _mirror(tracker: MlflowTracker, record: RunRecord, out: RunDirectory) -> None:
    """Metrics, tags and every file of the run directory to the MLflow run, then its end status."""
    tracker.log_metrics(record.metrics)
    tracker.set_tags(record_tags(record))
    if tracker.errors:
        out.write_text("tracking_error.txt", "\n".join(tracker.errors) + "\n")
    tracker.log_artifacts(out.path)
    tracker.finish(record.status)
    if tracker.errors and not out.file("tracking_error.txt").exists():
        out.write_text("tracking_error.txt", "\n".join(tracker.errors) + "\n")
