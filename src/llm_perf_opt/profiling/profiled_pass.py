"""The profiled pass: torch.profiler over prefill + a few decode steps, separate from the timed numbers.

What runs: one untimed, unprofiled warmup sample (prefill + the same decode steps), then, under
torch.profiler (CPU activity, plus CUDA on a GPU), prefill + `decode_steps` decode steps for each of
the first `num_inputs` inputs, with the generation functions of the timed pass under
`torch.inference_mode()`. The profiler slows what it watches, so nothing here feeds the timed numbers;
instead the pass reports its own per-stage times so that the slowdown can be stated (profiler_overhead).

Stage ranges (record_function, and NVTX ranges of the same names on a GPU for Nsight users):
- `stage:prefill` around each prefill call (one range per input);
- `stage:decode` around each decode step (one range per step, so a step's time is read directly);
- `stage:<sub-stage>` (e.g. `stage:vision/sam`) opened and closed by forward pre/post hooks on the
  workload's stage modules, nested inside `stage:prefill`.

Profiled stage time (ProfiledPass.profiled_stage_ms, ms): on a GPU the device-side span of each
range (first start to last end of the kernels launched inside it: what the CUDA-event timed pass
measures); on a CPU the range's host duration (what the perf_counter timed pass measures). Prefill and
sub-stages are per input (a sub-stage called several times per input is summed, as in samples.csv),
`vision` is the sum of its sub-stages, and `decode_step` is per decode step, because the profiled pass
runs fewer steps than the timed one.

Profiler overhead per stage = profiled stage time / timed stage time (mean of the timed samples),
logged as `overhead/<stage>_ratio` (`overhead/vision_sam_ratio`, `overhead/prefill_ratio`,
`overhead/decode_step_ratio`). A ratio of 1.3 means the profiler's numbers are 30% slower than the
timed ones; operator shares stay usable, operator milliseconds are inflated by about that much.

Device busy share (GPU, ProfiledPass.busy_share): kernel time / device span of each stage's ranges,
the input of the efficiency module's "launch" verdict. The profiler widens host gaps, so it is a lower
bound of the unprofiled share.

Artifacts in the run directory: trace.json.gz (gzipped Chrome trace: Perfetto, chrome://tracing and
HTA's TraceAnalysis load it), operators.csv, operators.md, and on a GPU kernels.csv (operators.py).
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from llm_perf_opt.errors import InputError
from llm_perf_opt.models.workload import PreparedInput, Workload
from llm_perf_opt.profiling.clock import StageClock
from llm_perf_opt.profiling.stage_hooks import StageHooks
from llm_perf_opt.profiling.generation import decode_one_token, prefill
from llm_perf_opt.profiling.operators import (
    STAGE_PREFIX,
    attribute_trace,
    kernel_table,
    load_trace,
    operator_table,
    stage_time_table,
    write_operator_artifacts,
)
from llm_perf_opt.profiling.timed_pass import stage_column

log = logging.getLogger(__name__)
TRACE_FILE = "trace.json.gz"
DECODE_STEP = "decode_step"  # profiled_stage_ms key: one decode step (the timed pass's decode_step_ms)


@dataclass
class ProfiledPass:
    """What the profiled pass produced. Times are ms; DataFrames follow operators.py's columns."""

    trace_path: Path
    operators: pd.DataFrame
    kernels: pd.DataFrame
    stage_times: pd.DataFrame
    profiled_stage_ms: dict[str, float]
    device_type: str
    num_inputs: int
    decode_steps: int
    event_count: int
    artifacts: list[Path] = field(default_factory=list)

    @property
    def time_basis(self) -> str:
        return "device_span" if self.device_type == "cuda" else "cpu_range"

    @property
    def busy_share(self) -> dict[str, float]:
        """{stage: device busy share} on a GPU (empty on a CPU), groups included ("vision" from its parts).

        Kernel time / device span of the stage's ranges (operators.stage_time_table): the input the
        efficiency module's "launch" verdict needs (`stage_efficiency(..., busy_share=...)`). The
        profiler widens host gaps, so these are lower bounds of the unprofiled shares.
        """
        shares: dict[str, float] = {}
        groups: dict[str, list[float]] = {}
        for row in self.stage_times.itertuples(index=False):
            if not (math.isfinite(row.busy_share) and row.device_span_ms > 0):
                continue
            shares[row.stage] = float(row.busy_share)
            group, _, sub = row.stage.partition("/")
            if sub:
                totals = groups.setdefault(group, [0.0, 0.0])
                totals[0] += row.device_busy_ms
                totals[1] += row.device_span_ms
        for group, (busy_ms, span_ms) in groups.items():
            shares.setdefault(group, busy_ms / span_ms)
        return shares

    def metrics_record(self) -> dict[str, Any]:
        """The `profiled_pass` entry of metrics.json: what ran and each stage's profiled time."""
        return {
            "trace": self.trace_path.name,
            "inputs": self.num_inputs,
            "decode_steps": self.decode_steps,
            "device_type": self.device_type,
            "time_basis": self.time_basis,
            "event_count": self.event_count,
            "stage_ms": dict(self.profiled_stage_ms),
            "busy_share": self.busy_share,
            "stages": self.stage_times.to_dict(orient="records"),
        }


class StageRanges(StageHooks):
    """record_function (and, on a GPU, NVTX) ranges for the stage modules' forward calls.

    While `enabled`, a stage module's pre-hook opens its range and its post-hook closes it. `stage()`
    opens a range around code the caller runs (prefill, one decode step) and, on the way out, closes
    whatever an exception left open, so the profiler never sees an unbalanced range.
    """

    def __init__(self, stage_modules: Mapping[str, torch.nn.Module], use_nvtx: bool):
        self.use_nvtx = use_nvtx
        self._open: list[tuple[str, Any]] = []
        super().__init__(stage_modules, lambda stage: self._push(STAGE_PREFIX + stage), self._on_exit)

    def _on_exit(self, stage: str) -> None:
        if self._open and self._open[-1][0] == STAGE_PREFIX + stage:
            self._pop()

    def _push(self, name: str) -> None:
        marker = record_function(name)
        marker.__enter__()
        self._open.append((name, marker))
        if self.use_nvtx:
            torch.cuda.nvtx.range_push(name)

    def _pop(self) -> None:
        if self.use_nvtx:
            torch.cuda.nvtx.range_pop()
        self._open.pop()[1].__exit__(None, None, None)

    @contextmanager
    def stage(self, stage: str) -> Iterator[None]:
        depth = len(self._open)
        self._push(STAGE_PREFIX + stage)
        try:
            yield
        finally:
            while len(self._open) > depth:
                self._pop()

    def remove(self) -> None:
        while self._open:
            self._pop()
        super().remove()


def _one_sample(workload: Workload, prepared: PreparedInput, decode_steps: int, ranges: StageRanges | None) -> None:
    model, convention = workload.model, workload.convention
    if ranges is None:
        token, cache = prefill(model, convention, prepared.model_inputs)
        with workload.decode_phase():
            for _ in range(decode_steps):
                token, cache = decode_one_token(model, convention, token, cache)
        return
    with ranges.stage("prefill"):
        ranges.enabled = True  # sub-stage hooks fire only inside prefill
        try:
            token, cache = prefill(model, convention, prepared.model_inputs)
        finally:
            ranges.enabled = False
    with workload.decode_phase():
        for _ in range(decode_steps):
            with ranges.stage("decode"):
                token, cache = decode_one_token(model, convention, token, cache)


def _export_gzipped_trace(prof: profile, target: Path) -> None:
    """Chrome trace -> target (.json.gz). Written uncompressed first: older torch cannot gzip itself."""
    handle, raw = tempfile.mkstemp(suffix=".json", dir=target.parent)
    os.close(handle)
    try:
        prof.export_chrome_trace(raw)
        with open(raw, "rb") as src, gzip.open(target, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
    finally:
        os.unlink(raw)


def profiled_stage_ms(stage_times: pd.DataFrame, num_inputs: int) -> dict[str, float]:
    """Per-input stage times (ms) and the per-step decode time from a stage_time_table (see module doc)."""
    result: dict[str, float] = {}
    groups: dict[str, float] = {}
    for row in stage_times.itertuples(index=False):
        value = float(row.profiled_ms)
        if not math.isfinite(value):
            continue
        if row.stage == "decode":
            result[DECODE_STEP] = value / row.ranges
            continue
        result[row.stage] = value / num_inputs
        group, _, sub = row.stage.partition("/")
        if sub:
            groups[group] = groups.get(group, 0.0) + value / num_inputs
    for group, value in groups.items():
        result.setdefault(group, value)
    return result


def timed_stage_ms(summary: Mapping[str, Mapping[str, float]], stages: Iterable[str]) -> dict[str, float]:
    """Mean timed time of each stage (keys as in profiled_stage_ms) from metrics.json["summary"].

    'prefill' -> summary['prefill_ms'], 'vision/sam' -> summary['vision_sam_ms'], 'vision' ->
    summary['vision_ms'], 'decode_step' -> summary['decode_step_ms']; stages without a column are left out.
    """
    result = {}
    for stage in stages:
        column = "decode_step_ms" if stage == DECODE_STEP else stage_column(stage)
        mean = (summary.get(column) or {}).get("mean")
        if mean is not None and math.isfinite(mean):
            result[stage] = float(mean)
    return result


def overhead_metric_name(stage: str) -> str:
    """'vision/sam' -> 'overhead/vision_sam_ratio'."""
    return f"overhead/{stage.replace('/', '_')}_ratio"


def profiler_overhead(profiled_stage_ms: Mapping[str, float], timed_stage_ms: Mapping[str, float]) -> dict[str, float]:
    """{'overhead/<stage>_ratio': profiled / timed} for stages both passes measured (timed > 0)."""
    ratios = {}
    for stage, profiled in profiled_stage_ms.items():
        timed = timed_stage_ms.get(stage)
        if timed is None or not (math.isfinite(timed) and timed > 0 and math.isfinite(profiled)):
            continue
        ratios[overhead_metric_name(stage)] = profiled / timed
    return ratios


def metrics_for_run(profiled: ProfiledPass, summary: Mapping[str, Mapping[str, float]],
                    top_n: int) -> tuple[dict[str, float], dict[str, Any]]:
    """What a run records from its profiled pass, given the timed pass's metrics.json["summary"].

    Returns (flat metrics for metrics.json["metrics"] and MLflow: the `overhead/<stage>_ratio` values,
    entries for metrics.json: "profiled_pass" plus operator_summary_for_metrics's keys).
    """
    from llm_perf_opt.profiling.export import operator_summary_for_metrics

    overhead = profiler_overhead(profiled.profiled_stage_ms, timed_stage_ms(summary, profiled.profiled_stage_ms))
    entries = {"profiled_pass": profiled.metrics_record(), **operator_summary_for_metrics(profiled.operators, top_n)}
    return overhead, entries


def run_profiled_pass(
    workload: Workload,
    *,
    num_inputs: int,
    decode_steps: int,
    run_dir: Path,
    record_shapes: bool = False,
    profile_memory: bool = True,
    top_n: int = 10,
) -> ProfiledPass:
    """Profile prefill + `decode_steps` decode steps of the first `num_inputs` inputs; write the artifacts.

    `num_inputs` larger than the dataset profiles every input (logged). `profile_memory` adds the
    self_cpu_memory_bytes column (allocator events in the trace).
    """
    if num_inputs < 1:
        raise InputError(f"profiling.operators.inputs={num_inputs}: profile at least 1 input, or set "
                         "profiling.operators.enabled=false")
    if decode_steps < 0:
        raise InputError(f"profiling.operators.decode_steps={decode_steps} is negative: use 0 or more")
    if num_inputs > len(workload.inputs):
        log.info("profiled pass: %d inputs requested, the dataset has %d: profiling all of them",
                 num_inputs, len(workload.inputs))
        num_inputs = len(workload.inputs)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = workload.device
    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])

    ranges = StageRanges(workload.stage_modules, use_nvtx=on_cuda)
    try:
        with torch.inference_mode():
            _one_sample(workload, workload.inputs[0], max(decode_steps, 1), None)  # warmup, not profiled
            StageClock(device).synchronize()
            with profile(activities=activities, record_shapes=record_shapes, profile_memory=profile_memory) as prof:
                for prepared in workload.inputs[:num_inputs]:
                    _one_sample(workload, prepared, decode_steps, ranges)
                StageClock(device).synchronize()  # the last kernels must finish inside the profiling window
    finally:
        ranges.remove()

    trace_path = run_dir / TRACE_FILE
    _export_gzipped_trace(prof, trace_path)
    trace = load_trace(trace_path)
    attribution = attribute_trace(trace)
    operators = operator_table(attribution)
    kernels = kernel_table(attribution)
    stage_times = stage_time_table(attribution)
    artifacts = [trace_path] + write_operator_artifacts(run_dir, operators, kernels if on_cuda else None, top_n,
                                                        stage_times)
    return ProfiledPass(
        trace_path=trace_path,
        operators=operators,
        kernels=kernels,
        stage_times=stage_times,
        profiled_stage_ms=profiled_stage_ms(stage_times, num_inputs),
        device_type=device.type,
        num_inputs=num_inputs,
        decode_steps=decode_steps,
        event_count=len(trace.get("traceEvents", [])),
        artifacts=artifacts,
    )
