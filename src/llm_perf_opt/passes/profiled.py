"""The profiled pass: torch.profiler over prefill + a few decode steps, separate from the timed numbers.

What runs: one untimed, unprofiled warmup sample (prefill + the same decode steps), then, under
torch.profiler (CPU activity, plus CUDA on a GPU), prefill + `decode_steps` decode steps for each of
the first `num_inputs` inputs (batches, with `profiling.batch_size` > 1: what the timed pass times),
with the generation functions of the timed pass under `torch.inference_mode()`. The profiler slows what
it watches, so nothing here feeds the timed numbers; instead the pass reports its own per-stage times
so that the slowdown can be stated (profiler_overhead).

Stage ranges (record_function, and NVTX ranges of the same names on a GPU for Nsight users):
- `stage:prefill` around each prefill call (one range per input);
- `stage:decode` around each decode step (one range per step, so a step's time is read directly);
- `stage:<sub-stage>` (e.g. `stage:vision_sam`) opened and closed by forward pre/post hooks on the
  workload's stage modules, nested inside `stage:prefill`.

What it returns (ProfiledResult): the operator, kernel and stage-time tables of the trace
(analysis.operators: every event charged to the innermost stage range containing it). Per-stage
profiled times, the profiler's overhead against the timed pass and the device busy share are derived
from them when the run record is assembled (assembly.py), not here.

The trace is written to `out_dir/trace.json.gz` (gzipped Chrome trace: Perfetto, chrome://tracing and
HTA's TraceAnalysis load it); the tables are returned as data for the sinks.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from llm_perf_opt.analysis.operators import (
    STAGE_PREFIX,
    attribute_trace,
    kernel_table,
    load_trace,
    operator_table,
    stage_time_table,
)
from llm_perf_opt.errors import InputError
from llm_perf_opt.models.stage_hooks import StageHooks
from llm_perf_opt.models.workload import PreparedInput, Workload
from llm_perf_opt.passes.clock import StageClock
from llm_perf_opt.schema import DECODE, PREFILL

log = logging.getLogger(__name__)
TRACE_FILE = "trace.json.gz"


@dataclass
class ProfiledResult:
    """What the profiled pass produced. Times are ms; DataFrames follow analysis.operators' columns."""

    trace_path: Path
    operators: pd.DataFrame
    kernels: pd.DataFrame
    stage_times: pd.DataFrame
    device_type: str
    num_inputs: int
    decode_steps: int
    event_count: int

    @property
    def time_basis(self) -> str:
        return "device_span" if self.device_type == "cuda" else "cpu_range"


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
    """Prefill and decode steps as the timed pass runs them (workload.prefill / decode_step: the configured
    cache and, with model.compile, the compiled step), inside stage ranges when `ranges` is given."""
    if ranges is None:
        token, cache = workload.prefill(prepared)
        with workload.decode_phase():
            for _ in range(decode_steps):
                token, cache = workload.decode_step(token, cache)
        return
    with ranges.stage(PREFILL):
        ranges.enabled = True  # sub-stage hooks fire only inside prefill
        try:
            token, cache = workload.prefill(prepared)
        finally:
            ranges.enabled = False
    with workload.decode_phase():
        for _ in range(decode_steps):
            with ranges.stage(DECODE):
                token, cache = workload.decode_step(token, cache)


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


def run_profiled_pass(workload: Workload, settings: Any, out_dir: Path, profile_memory: bool = True) -> ProfiledResult:
    """Profile prefill + `decode_steps` decode steps of the first `inputs` inputs; write out_dir/trace.json.gz.

    `settings` is the `profiling.operators` section (inputs, decode_steps, record_shapes). More inputs
    than the dataset has profiles every input (logged). `profile_memory` adds the
    self_cpu_memory_bytes column (allocator events in the trace).
    """
    num_inputs, decode_steps = int(settings.inputs), int(settings.decode_steps)
    batches = workload.batches  # what the timed pass times: the inputs, or their batches (profiling.batch_size)
    if num_inputs < 1:
        raise InputError(f"profiling.operators.inputs={num_inputs}: profile at least 1 input, or set "
                         "profiling.operators.enabled=false")
    if decode_steps < 0:
        raise InputError(f"profiling.operators.decode_steps={decode_steps} is negative: use 0 or more")
    if num_inputs > len(batches):
        log.info("profiled pass: %d inputs requested, the dataset has %d%s: profiling all of them",
                 num_inputs, len(batches), " batches" if workload.batch_size > 1 else "")
        num_inputs = len(batches)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = workload.device
    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])

    ranges = StageRanges(workload.stage_modules, use_nvtx=on_cuda)
    try:
        with torch.inference_mode():
            _one_sample(workload, batches[0], max(decode_steps, 1), None)  # warmup, not profiled
            StageClock(device).synchronize()
            with profile(activities=activities, record_shapes=bool(settings.record_shapes),
                         profile_memory=profile_memory) as prof:
                for prepared in batches[:num_inputs]:
                    _one_sample(workload, prepared, decode_steps, ranges)
                StageClock(device).synchronize()  # the last kernels must finish inside the profiling window
    finally:
        ranges.remove()

    trace_path = out_dir / TRACE_FILE
    _export_gzipped_trace(prof, trace_path)
    trace = load_trace(trace_path)
    attribution = attribute_trace(trace)
    return ProfiledResult(
        trace_path=trace_path,
        operators=operator_table(attribution),
        kernels=kernel_table(attribution),
        stage_times=stage_time_table(attribution),
        device_type=device.type,
        num_inputs=num_inputs,
        decode_steps=decode_steps,
        event_count=len(trace.get("traceEvents", [])),
    )
