"""One profiling run, start to finish: config -> workload -> timed pass -> records -> sinks.

The run directory is written first and completely; MLflow mirrors it. A failure after measuring has
started keeps every sample measured so far, writes error.txt, and ends the MLflow run FAILED.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from llm_perf_opt.data import load_pages
from llm_perf_opt.models import build_workload
from llm_perf_opt.paths import PROJECT_ROOT
from llm_perf_opt.profiling.efficiency import bound_tags, efficiency_metrics, stage_efficiency, stage_times_from_summary
from llm_perf_opt.profiling.energy import NvmlSampler, energy_per_stage
from llm_perf_opt.profiling.environment import capture_environment
from llm_perf_opt.profiling.hardware import calibrate, lookup_peaks, matmul_dtype, with_calibration
from llm_perf_opt.profiling.profiled_pass import metrics_for_run, run_profiled_pass
from llm_perf_opt.reports import write_reports
from llm_perf_opt.profiling.summary_stats import flatten_metrics, summarize
from llm_perf_opt.profiling.timed_pass import SampleRecord, iter_timed_samples, stage_column
from llm_perf_opt.sinks.run_directory import RunDirectory
from llm_perf_opt.tracking.mlflow_tracker import MlflowTracker, flatten, resolve_tracking_uri

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1


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


def _mean_costs(per_input: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Average {stage: {flops, bytes}} over inputs (each input is timed equally often); a key missing
    for any input stays missing rather than averaged over fewer inputs."""
    merged: dict[str, dict[str, float]] = {}
    for stage in per_input[0]:
        keys = set.intersection(*(set(costs.get(stage, {})) for costs in per_input))
        merged[stage] = {key: sum(costs[stage][key] for costs in per_input) / len(per_input) for key in sorted(keys)}
    return merged


def _declared_costs(workload: Any) -> dict[str, Any] | None:
    """A factory's declared costs in the analytic model's shape (prefill, decode_step_mean)."""
    from llm_perf_opt.profiling.analytic import StageCost

    if not workload.declared_costs:
        return None
    names = {"prefill": "prefill", "decode": "decode_step_mean"}
    return {names.get(stage, stage): StageCost(float(cost.get("flops", 0.0)), float(cost.get("bytes", 0.0)), 0.0)
            for stage, cost in workload.declared_costs.items()}


def counted_pass(workload: Any, prof: DictConfig, out: RunDirectory) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """FLOPs measured with FlopCounterMode and bytes from the analytic model, per stage, averaged over
    the inputs; plus a whole-sample "model" stage (prefill + every decode step). Writes counts.json."""
    from llm_perf_opt.profiling.analytic import UnsupportedArchitecture, analytic_costs_for_workload
    from llm_perf_opt.profiling.flops import count_stage_flops, counting_metrics, efficiency_stage_costs

    new_tokens = int(prof.new_tokens)
    per_input, records, first = [], [], None
    for index in range(len(workload.inputs)):
        counted = count_stage_flops(workload, input_index=index, decode_steps=int(prof.counting.decode_steps))
        try:
            analytic = analytic_costs_for_workload(workload, index, new_tokens=new_tokens)
        except UnsupportedArchitecture as exc:
            analytic = _declared_costs(workload)
            if analytic is None and index == 0:
                log.warning("no analytic byte model for this workload (%s): FLOPs measured, bytes and MBU absent", exc)
        first = first or (counted, analytic)
        per_input.append(efficiency_stage_costs(counted, analytic))
        records.append({"input_id": workload.inputs[index].input_id, "counted": counted.as_record(),
                        "analytic": {stage: asdict(cost) for stage, cost in (analytic or {}).items()}})
    stage_costs = _mean_costs(per_input)
    # Group totals ("vision" = its disjoint sub-stages), nested within prefill like their parts.
    for group in {stage.split("/")[0] for stage in stage_costs if "/" in stage}:
        parts = [costs for stage, costs in stage_costs.items() if stage.startswith(group + "/")]
        keys = set.intersection(*(set(part) for part in parts))
        stage_costs[group] = {key: sum(part[key] for part in parts) for key in sorted(keys)}
    if "decode" in stage_costs and "prefill" in stage_costs:
        steps = max(new_tokens - 1, 0)
        stage_costs["model"] = {key: stage_costs["prefill"][key] + steps * stage_costs["decode"][key]
                                for key in stage_costs["prefill"] if key in stage_costs["decode"]}
    out.write_json("counts.json", {"per_input": records, "stage_costs": stage_costs})
    return stage_costs, counting_metrics(stage_costs, *first)


def _flop_coverage_metrics(operators: pd.DataFrame) -> dict[str, float]:
    """coverage/<stage>_no_formula_share: profiled time in operators FlopCounterMode has no formula
    for (copies, elementwise, norms, ...); one warning when it is large, since MFU then understates
    the stage's work rather than measuring idle compute."""
    import warnings

    from llm_perf_opt.profiling.flops import coverage_warning, flop_coverage

    coverage = flop_coverage(operators)
    message = coverage_warning(coverage)
    if message:
        warnings.warn(message, stacklevel=2)
    return {f"coverage/{stage.replace('/', '_')}_no_formula_share": share for stage, share in coverage.items()}


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
    # Peaks for MFU/MBU: the table by the reported device name, or config overrides; else one warning.
    peak_dtype = matmul_dtype(workload.info["dtype"])
    peaks = lookup_peaks(env["device_name"], peak_dtype, cfg.hardware)
    if cfg.hardware.calibrate:
        peaks = with_calibration(peaks, calibrate(device, peak_dtype), env["device_name"], peak_dtype)
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
        "torch": env.get("torch"),
        "driver_version": env.get("driver_version"),
        "git_sha": env.get("git_sha"),
        "run_dir": str(out.path),
    })
    params = flatten(resolved)
    params.update({f"workload.{k}": v for k, v in workload.info.items() if not isinstance(v, (dict, list))})
    params["workload.num_inputs"] = len(workload.inputs)
    tracker.log_params(params)

    records: list[SampleRecord] = []
    status, error = "FINISHED", None
    total = (int(prof.warmup) + int(prof.repeats)) * len(workload.inputs)
    sampler = (NvmlSampler(env.get("device_index", 0), float(prof.energy.interval_ms))
               if bool(prof.energy.enabled) and device.type == "cuda" else None)
    stage_costs: dict[str, dict[str, float]] = {}
    count_metrics: dict[str, float] = {}
    try:
        with sampler or contextlib.nullcontext(), _progress(prof.progress, total) as bar:
            for record in iter_timed_samples(workload, int(prof.new_tokens), int(prof.warmup), int(prof.repeats),
                                             bool(prof.stop_at_eos), bar):
                records.append(record)
        if bool(prof.counting.enabled):
            stage_costs, count_metrics = counted_pass(workload, prof, out)
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
    metrics.update(count_metrics)

    energy_record = None
    if sampler is not None and sampler.available and len(samples):
        out.write_csv("nvml_timeline.csv", sampler.timeline)
        energy = energy_per_stage(sampler.timeline, samples)
        metrics.update(energy.metrics)
        energy_record = energy.as_record()
        if len(energy.per_sample):
            out.write_csv("energy_samples.csv", energy.per_sample)

    # The profiled pass (torch.profiler) runs after the timed and counted passes, never inside them.
    profiled, profiled_entries = None, {}
    ops_cfg = prof.operators
    if bool(ops_cfg.enabled) and status == "FINISHED":
        try:
            profiled = run_profiled_pass(workload, num_inputs=int(ops_cfg.inputs),
                                         decode_steps=int(ops_cfg.decode_steps), run_dir=out.path,
                                         record_shapes=bool(ops_cfg.record_shapes), top_n=int(ops_cfg.top_n))
            overhead, profiled_entries = metrics_for_run(profiled, summary, int(ops_cfg.top_n))
            metrics.update(overhead)
            metrics.update(_flop_coverage_metrics(profiled.operators))
        except Exception as exc:
            status, error = "FAILED", f"{type(exc).__name__}: {exc}"
            out.write_text("error.txt", f"{error}\n\n{traceback.format_exc()}")
            log.error("profiled pass failed: %s", error)

    efficiency = stage_efficiency(stage_costs, stage_times_from_summary(summary, list(stage_costs)), peaks,
                                  profiled.busy_share if profiled else None,
                                  float(cfg.hardware.launch_busy_share)) if stage_costs else {}
    metrics.update(efficiency_metrics(efficiency))
    if efficiency and peaks is not None:
        from llm_perf_opt.profiling.roofline import plot_roofline

        plot_roofline(efficiency, peaks, out.file("roofline.png"), device_name=env.get("device_name"))
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
        "hardware": peaks.as_record() if peaks else None,
        "stage_costs": stage_costs,
        "efficiency": efficiency,
        "energy": energy_record,
        **profiled_entries,
        "metrics": metrics,
    })
    try:
        write_reports(out.path)
    except Exception as exc:  # measurements are on disk already; the run still says it is incomplete
        status, error = "FAILED", f"report: {type(exc).__name__}: {exc}"
        out.write_text("error.txt", f"{error}\n\n{traceback.format_exc()}")
        log.error("writing report.md / stakeholder_summary.md failed: %s", exc)

    tracker.log_metrics(metrics)
    tracker.set_tags(bound_tags(efficiency))
    if tracker.errors:
        out.write_text("tracking_error.txt", "\n".join(tracker.errors) + "\n")
    tracker.log_artifacts(out.path)
    tracker.finish(status)
    if tracker.errors and not out.file("tracking_error.txt").exists():
        out.write_text("tracking_error.txt", "\n".join(tracker.errors) + "\n")
    return ProfileOutcome(out.path, status, tracker.run_id, metrics, error, list(tracker.errors))
