"""One profiling run as a short pipeline: workload -> passes -> run record -> sinks.

    build the workload (bad input fails here, before anything is recorded)
    open the run directory and the MLflow run
    passes: timed (+ NVML sampler alongside), counted, profiled; each result written to disk as it comes
    assemble the run record (assembly.py), write metrics.json, the reports, and mirror it all to MLflow

The run directory is the truth and is written first; MLflow mirrors it. One lifecycle boundary holds
everything after the MLflow run starts: an exception ends the run FAILED, SIGINT/SIGTERM/SIGHUP end it
KILLED (runners/lifecycle.py), and either way the samples measured so far, a metrics.json saying how
far the run got (status, error, phase) and error.txt are written, and the MLflow run ends with the same
status. Each finishing step (samples.csv, the record, metrics.json, the reports, the MLflow mirror) is
guarded on its own: one that fails (a full disk included) marks the run FAILED and the rest still runs.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import sys
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from llm_perf_opt.analysis.energy import energy_per_stage
from llm_perf_opt.analysis.peaks import lookup_peaks, measured_peaks, with_calibration
from llm_perf_opt.analysis.timeline import TIMELINE_FILE, timelines
from llm_perf_opt.assembly import ProfiledTables, RunParts, build_record
from llm_perf_opt.config import PROJECT_ROOT, validate
from llm_perf_opt.data import describe_pages, load_pages
from llm_perf_opt.errors import RunInterrupted
from llm_perf_opt.models import build_workload
from llm_perf_opt.models.decoding import compile_decode
from llm_perf_opt.models.workload import Workload, resolve_device
from llm_perf_opt.passes.calibration import calibrate, matmul_dtype
from llm_perf_opt.passes.counted import formula_operator_names, run_counted_pass
from llm_perf_opt.passes.energy import NvmlSampler
from llm_perf_opt.passes.environment import capture_environment
from llm_perf_opt.passes.profiled import run_profiled_pass
from llm_perf_opt.passes.timed import TimedResult, TimedSample, iter_timed_samples
from llm_perf_opt.profiling.export import operator_summary_for_metrics
from llm_perf_opt.record import RELATED_RUNS_FILE, ProfiledPassInfo, RunInfo, RunRecord, WorkloadInfo, record_tags
from llm_perf_opt.reports import write_reports
from llm_perf_opt.reports.run_note import run_note
from llm_perf_opt.runners.identity import run_name, run_params, run_tags
from llm_perf_opt.runners.lifecycle import interrupts
from llm_perf_opt.runners.sweep import SweepJob
from llm_perf_opt.schema import GPU_TAG
from llm_perf_opt.sinks.run_directory import RunDirectory
from llm_perf_opt.tracking.mlflow_tracker import MlflowTracker, resolve_tracking_uri

log = logging.getLogger(__name__)


@dataclass
class ProfileOutcome:
    run_dir: Path
    status: str  # FINISHED | FAILED
    mlflow_run_id: str | None
    record: RunRecord
    error: str | None = None
    tracking_errors: list[str] = field(default_factory=list)
    signal: int | None = None  # the signal that ended the run (status KILLED)
    upload_hint: str | None = None  # the log-run command, when MLflow lacks part or all of the run

    @property
    def metrics(self) -> dict[str, float]:
        return self.record.metrics

    @property
    def exit_code(self) -> int:
        """0 finished; 128 + signal when killed (130 SIGINT, 143 SIGTERM); 1 failed; 3 measured, MLflow failed."""
        if self.status == "KILLED":
            return 128 + (self.signal or 2)
        if self.status != "FINISHED":
            return 1
        return 3 if self.tracking_errors else 0


def run_profile(cfg: DictConfig, run_dir: Path, sweep: SweepJob | None = None, gpu: int | None = None
                ) -> ProfileOutcome:
    """Profile the configured workload. Raises InputError for bad input before anything is recorded.

    `sweep`: the sweep this run is a job of (its MLflow run becomes the parent's child); `gpu`: the device
    index the job leased (tag `llm_perf_opt.gpu`)."""
    validate(cfg)
    device = resolve_device(cfg.device)
    pages = load_pages(cfg.dataset)
    workload = build_workload(cfg.model, pages, device, int(cfg.seed), int(cfg.profiling.batch_size))
    # Static caches sized, decode step compiled and captured: before any run exists, outside every timed sample.
    compile_decode(workload, _decoded_tokens(cfg.profiling))
    if "cache" in workload.info:  # the transformers families record their decoding (models/__init__.py)
        workload.info.update(workload.decoding.describe())
    dataset = describe_pages(cfg.dataset, pages)
    out = RunDirectory(run_dir, new_run=True)
    with interrupts() as signals:
        parts = _start_parts(cfg, workload, out, dataset)
        tracker = MlflowTracker(sweep.tracking_uri if sweep else resolve_tracking_uri(cfg.tracking.uri, Path.cwd()),
                                cfg.tracking.experiment, bool(cfg.tracking.enabled),
                                _system_metrics_interval(cfg.tracking), sweep.experiment_id if sweep else None)
        timed: list[TimedSample] = []
        try:  # from the MLflow run's start on, every way out ends it with the status the record gives
            _start_tracking(tracker, cfg, parts, out, sweep, gpu)
            _measure(cfg, workload, parts, out, timed)
            parts.status, parts.run.phase = "FINISHED", None
        except BaseException as exc:  # exceptions, Ctrl-C and signals alike: what was measured is kept
            _end_early(parts, out, exc, f"profiling stopped after {len(timed)} samples")
        signals.defer()  # from here on a signal is remembered, not raised: the record is being written
        record = _finish(workload, parts, out, timed, tracker)
    return ProfileOutcome(out.path, record.status, tracker.run_id, record, record.error, list(tracker.errors),
                          signals.received, tracker.upload_hint(out.path) if tracker.needs_upload else None)


def _decoded_tokens(prof: DictConfig) -> int:
    """Tokens a sample generates in the longest pass (the static cache holds the prompt and these)."""
    profiled = int(prof.operators.decode_steps) + 1 if bool(prof.operators.enabled) else 0
    return max(int(prof.new_tokens), profiled)


def _start_parts(cfg: DictConfig, workload: Workload, out: RunDirectory, dataset: dict[str, Any]) -> RunParts:
    """config.yaml, env.json and workload.json on disk; the peaks MFU/MBU are measured against."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    out.write_text("config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    env = capture_environment(workload.device, PROJECT_ROOT, workload.info)
    out.write_json("env.json", env)
    prof = cfg.profiling
    info = WorkloadInfo(**{**workload.info, "device": str(workload.device), "new_tokens": int(prof.new_tokens),
                           "warmup": int(prof.warmup), "repeats": int(prof.repeats), "stages": workload.stages.keys(),
                           "dataset": dataset,
                           "inputs": [{"input_id": i.input_id, "prompt_tokens": i.prompt_tokens,
                                       "image_tokens": i.image_tokens, **i.meta} for i in workload.inputs]})
    out.write_json("workload.json", info.model_dump(mode="json"))
    peak_dtype = matmul_dtype(workload.info["dtype"])
    peaks = lookup_peaks(env["device_name"], peak_dtype, cfg.hardware, warn_unknown=False)
    if peaks is None or cfg.hardware.calibrate:  # not in the peak table: measure it (bounded), so MFU/MBU exist
        measured = calibrate(workload.device, peak_dtype)
        peaks = (with_calibration(peaks, measured, env["device_name"], peak_dtype) if peaks is not None
                 else measured_peaks(env["device_name"], peak_dtype, measured) if measured else None)
    run = RunInfo(run_dir=str(out.path), run_uid=uuid.uuid4().hex, started_at=_now())
    return RunParts(tree=workload.stages, run=run, workload=info, env=env, peaks=peaks,
                    launch_busy_share=float(cfg.hardware.launch_busy_share))


def _start_tracking(tracker: MlflowTracker, cfg: DictConfig, parts: RunParts, out: RunDirectory,
                    sweep: SweepJob | None, gpu: int | None) -> None:
    info = parts.workload
    name = cfg.tracking.run_name or run_name(info)
    tags = run_tags(info, parts.env, out.path, parts.run.run_uid)
    params = run_params(OmegaConf.to_container(cfg, resolve=True), info)
    if sweep is not None:
        name, tags, params = name + sweep.name_suffix(), {**tags, **sweep.tags()}, {**params, **sweep.params()}
    if gpu is not None:
        tags[GPU_TAG] = str(gpu)
    tracker.start(name, tags)
    tracker.log_params(params)
    parts.run.mlflow_run_id, parts.run.tracking_uri = tracker.run_id, tracker.uri


def _system_metrics_interval(tracking: DictConfig) -> float | None:
    return float(tracking.system_metrics_interval_s) if bool(tracking.system_metrics) else None


def _progress(setting: Any, total: int) -> tqdm:
    disable = None if str(setting).lower() == "auto" else not bool(setting)
    return tqdm(total=total, desc="profiling", unit="sample", disable=disable, file=sys.stderr, dynamic_ncols=True)


def _energy_sampler(prof: DictConfig, workload: Workload, env: dict[str, Any]) -> NvmlSampler | None:
    """The NVML sampler that runs alongside the timed pass (GPU, profiling.energy.enabled), else None."""
    if not (bool(prof.energy.enabled) and workload.device.type == "cuda"):
        return None
    return NvmlSampler(env.get("device_index", 0), float(prof.energy.interval_ms))


def _measure(cfg: DictConfig, workload: Workload, parts: RunParts, out: RunDirectory,
             timed: list[TimedSample]) -> None:
    """The passes, in order: timed (NVML sampler alongside), counted, profiled. Timed samples land in
    `timed` as they are measured, so a failure later keeps them."""
    prof = cfg.profiling
    on_gpu = workload.device.type == "cuda"
    sampler = _energy_sampler(prof, workload, parts.env)
    total = (int(prof.warmup) + int(prof.repeats)) * len(workload.batches)
    parts.run.phase = "timed"
    with sampler or contextlib.nullcontext(), _progress(prof.progress, total) as bar:
        for sample in iter_timed_samples(workload, prof, bar):
            timed.append(sample)
            parts.run.first_sample_at = parts.run.first_sample_at or _now()
    if sampler is not None and sampler.available:
        parts.run.phase = "energy"
        out.write_csv("nvml_timeline.csv", sampler.timeline)
        parts.energy = energy_per_stage(sampler.timeline, TimedResult.from_samples(timed, workload).samples)
        if len(parts.energy.per_sample):
            out.write_csv("energy_samples.csv", parts.energy.per_sample)
    if bool(prof.counting.enabled):
        parts.run.phase = "counted"
        counted = run_counted_pass(workload, prof.counting, int(prof.new_tokens))
        out.write_json("counts.json", counted.as_counts_json())
        parts.stage_costs, parts.measured_over_analytic = counted.stage_costs, counted.measured_over_analytic
    if bool(prof.operators.enabled):  # after the timed and counted passes, never inside them
        parts.run.phase = "profiled"
        result = run_profiled_pass(workload, prof.operators, out.path)
        out.write_csv("operators.csv", result.operators)
        if on_gpu and len(result.kernels):
            out.write_csv("kernels.csv", result.kernels)
        info = ProfiledPassInfo(trace=result.trace_path.name, inputs=result.num_inputs,
                                decode_steps=result.decode_steps, device_type=result.device_type,
                                time_basis=result.time_basis, event_count=result.event_count)
        parts.profiled = ProfiledTables(result.operators, result.stage_times, info, formula_operator_names())
        parts.operator_summary = operator_summary_for_metrics(result.operators, int(prof.operators.top_n))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _end_early(parts: RunParts, out: RunDirectory, exc: BaseException, what: str) -> None:
    """Status KILLED for a signal or Ctrl-C, FAILED otherwise (a KILLED run stays KILLED); error.txt."""
    killed = isinstance(exc, (RunInterrupted, KeyboardInterrupt))
    if parts.status != "KILLED":
        parts.status = "KILLED" if killed else "FAILED"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    parts.error = parts.error or (f"{text} during the {parts.run.phase} step" if parts.run.phase else text)
    log.error("%s: %s", what, text)
    try:
        with open(out.file("error.txt"), "a", encoding="utf-8") as handle:
            handle.write(f"{text} (step: {parts.run.phase})\n\n{traceback.format_exc()}\n")
    except OSError as write_error:
        _report_write_error(out, "error.txt", write_error)


def _report_write_error(out: RunDirectory, name: str, exc: OSError) -> None:
    if exc.errno == errno.ENOSPC:
        print(f"error: disk full while writing {name} in {out.path}: what was written before is kept; "
              "free space, then upload the directory with llm-perf-opt log-run", file=sys.stderr)
    else:
        print(f"error: cannot write {name} in {out.path} ({exc.strerror or exc})", file=sys.stderr)


def _step(parts: RunParts, out: RunDirectory, phase: str, action: Callable[[], Any], name: str) -> Any:
    """One finishing step: a failure (a full disk included) marks the run FAILED; the next steps still run."""
    try:
        return action()
    except Exception as exc:
        if isinstance(exc, OSError):
            _report_write_error(out, name, exc)
        parts.run.phase = parts.run.phase or phase
        _end_early(parts, out, exc, f"{phase} step ({name}) failed")
        return None


def _finish(workload: Workload, parts: RunParts, out: RunDirectory, timed: list[TimedSample],
            tracker: MlflowTracker) -> RunRecord:
    """samples.csv, the record (metrics.json), the reports, the MLflow mirror; the MLflow run always ends."""
    record = None
    try:
        frames = TimedResult.from_samples(timed, workload)
        parts.samples, parts.decode_steps = frames.samples, frames.decode_steps
        _step(parts, out, "samples", lambda: out.write_csv("samples.csv", frames.samples), "samples.csv")
        _step(parts, out, "samples", lambda: out.write_csv("decode_steps.csv", frames.decode_steps),
              "decode_steps.csv")
        if timed:
            _step(parts, out, "samples", lambda: out.write_json(TIMELINE_FILE, timelines(
                [s.timeline() for s in timed], workload.stages, str(timed[0].row.get("clock")))), TIMELINE_FILE)
        parts.run.finished_at = _now()
        record = _step(parts, out, "record", lambda: build_record(parts), "metrics.json")
        record = record or _step(parts, out, "record", lambda: _timed_only_record(parts), "metrics.json")
        record = record or _bare_record(parts)
        _step(parts, out, "record", lambda: out.write_record(record), "metrics.json")
        related = tracker.related_runs()  # the experiment's other runs, which recommendations cite (None: untracked)
        if related is not None:
            _step(parts, out, "reports", lambda: out.write_json(RELATED_RUNS_FILE, related.model_dump()),
                  RELATED_RUNS_FILE)
        _step(parts, out, "reports", lambda: write_reports(out.path), "the reports")
        if (record.status, record.error) != (parts.status, parts.error):  # a later step failed: say so on disk
            record = record.model_copy(update={"status": parts.status, "error": parts.error, "run": parts.run})
            _step(parts, out, "record", lambda: out.write_record(record), "metrics.json")
        _step(parts, out, "tracking", lambda: _mirror(tracker, record, out), "tracking_error.txt")
    finally:  # whatever happened above, the MLflow run ends, with the status the run directory gives
        tracker.finish(parts.status if parts.status != "RUNNING" else "FAILED")
    return record


def _timed_only_record(parts: RunParts) -> RunRecord:
    """The record from the timed samples alone, when assembling the full record failed."""
    return build_record(RunParts(tree=parts.tree, run=parts.run, workload=parts.workload, env=parts.env,
                                 status=parts.status, error=parts.error, samples=parts.samples,
                                 decode_steps=parts.decode_steps))


def _bare_record(parts: RunParts) -> RunRecord:
    """Status, error and stages without numbers: what is left when not even the samples assemble."""
    return build_record(RunParts(tree=parts.tree, run=parts.run, workload=parts.workload, env=parts.env,
                                 status=parts.status, error=parts.error))


def _mirror(tracker: MlflowTracker, record: RunRecord, out: RunDirectory) -> None:
    """Metrics, tags and every file of the run directory to the MLflow run."""
    tracker.log_metrics(record.metrics)
    tracker.set_tags(record_tags(record))
    tracker.set_note(run_note(record))
    tracker.log_dataset(record)
    tracker.log_stage_traces(out.path, record.run.run_uid)
    if tracker.errors:
        out.write_text("tracking_error.txt", "\n".join(tracker.errors) + "\n")
    tracker.log_artifacts(out.path)
    if tracker.errors and not out.file("tracking_error.txt").exists():
        out.write_text("tracking_error.txt", "\n".join(tracker.errors) + "\n")
