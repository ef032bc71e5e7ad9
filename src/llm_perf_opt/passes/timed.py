"""The timed pass: warmup, then repeats x inputs of prefill + a fixed number of decode steps.

Every boundary is a clock mark (CUDA event on a GPU): prefill start, prefill end (first token ready),
each decode step's end, and the start/end of every sub-stage call (forward hooks on the stage
modules). The device is synchronised once before and once after each sample, never inside it, so the
loop runs as a bare loop would. Elapsed times are read after the closing synchronisation.

Definitions (per sample):
- prefill_ms (= TTFT): start of the first forward pass to the first token on the device. Sub-stages
  (vision_sam_ms, ...) run inside it and nest within it, never added to it; group columns
  (vision_ms) are the sums of their children (analysis.stages).
- decode_ms: the (new_tokens - 1) decode steps after the first token; decode_step_ms: each step.
- decode_tpot_ms (time per output token) = decode_ms / (new_tokens - 1).
- e2e_ms: host wall time between the two synchronisations that bracket the sample; it contains
  prefill + decode plus the loop's own host gaps, and is the check on the stage times.
- e2e_tokens_per_s = new_tokens / e2e_ms * 1000; decode_tokens_per_s = (new_tokens - 1) / decode_ms * 1000.
Column names come from the stage schema: column(stage, quantity).

Batches (`profiling.batch_size` > 1, models.batching): a sample is one batch, one prefill and one
decode loop over its B prompts together. Its times are every request's latency (the requests of a
batch start and end together); `new_tokens` and `decode_tpot_ms` stay per request; the token rates
count the whole batch (B x new_tokens / e2e_ms, B x (new_tokens - 1) / decode_ms); peak memory is the
batch's. The row adds `batch_size`, and `input_id` is the batch's input ids joined with "+".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from llm_perf_opt.analysis.stages import add_group_columns
from llm_perf_opt.models.generation import decode_n_tokens
from llm_perf_opt.models.stage_hooks import StageHooks
from llm_perf_opt.models.workload import PreparedInput, Workload
from llm_perf_opt.passes.clock import Mark, StageClock
from llm_perf_opt.schema import DECODE, E2E, PREFILL, column


class SubStageRecorder(StageHooks):
    """Marks the clock at the start and end of every call of the stage modules (while enabled)."""

    def __init__(self, clock: StageClock, stage_modules: dict[str, torch.nn.Module]):
        self.clock = clock
        self.intervals: list[tuple[str, Mark, Mark]] = []
        self._open: dict[str, list[Mark]] = {}
        super().__init__(stage_modules, self._enter, self._exit)

    def _enter(self, stage: str) -> None:
        self._open.setdefault(stage, []).append(self.clock.mark())

    def _exit(self, stage: str) -> None:
        self.intervals.append((stage, self._open[stage].pop(), self.clock.mark()))

    def take(self) -> list[tuple[str, Mark, Mark]]:
        intervals, self.intervals = self.intervals, []
        return intervals


@dataclass
class TimedSample:
    """One row of samples.csv, the per-step decode latencies of that sample, and its timeline: every
    sub-stage call as (stage, start_ms, end_ms) from the sample's start mark, and the host wall-clock
    time (ns since the epoch) of that start, so the stages can be drawn where they ran."""

    row: dict[str, Any]
    decode_step_ms: list[float] = field(default_factory=list)
    calls: list[tuple[str, float, float]] = field(default_factory=list)
    epoch_start_ns: int | None = None

    def timeline(self) -> dict[str, Any]:
        """The sample as plain data (analysis.timeline picks and lays out representative samples)."""
        return {"row": self.row, "decode_step_ms": self.decode_step_ms,
                "calls": [list(call) for call in self.calls], "epoch_start_ns": self.epoch_start_ns}


@dataclass
class TimedResult:
    """The timed pass's tables: samples.csv and decode_steps.csv as DataFrames."""

    samples: pd.DataFrame
    decode_steps: pd.DataFrame

    @classmethod
    def from_samples(cls, samples: list[TimedSample], workload: Workload) -> TimedResult:
        # No sample (a run stopped during warmup): the header still names the columns a sample has.
        rows = pd.DataFrame([s.row for s in samples]) if samples else pd.DataFrame(columns=_sample_columns(workload))
        frame = add_group_columns(rows, workload.stages)
        step_column = column(DECODE, "step_ms")
        steps = pd.DataFrame(
            [{"repeat": s.row["repeat"], "input_index": s.row["input_index"], "input_id": s.row["input_id"],
              "step": step + 1, step_column: ms} for s in samples for step, ms in enumerate(s.decode_step_ms)],
            columns=["repeat", "input_index", "input_id", "step", step_column],
        )
        return cls(frame, steps)


def _sample_columns(workload: Workload) -> list[str]:
    """samples.csv's columns, in order (the keys `time_one_sample` and `iter_timed_samples` write)."""
    stages = [column(stage, "ms") for stage in workload.stage_modules]
    memory = [column(PREFILL, "peak_mem_mib"), column(DECODE, "peak_mem_mib")] if workload.device.type == "cuda" else []
    batch = ["batch_size"] if workload.batch_size > 1 else []
    return ["repeat", "input_index", "input_id", *batch, "prompt_tokens", "image_tokens", "new_tokens",
            column(PREFILL, "ms"), *stages, column(DECODE, "ms"), column(DECODE, "tpot_ms"),
            column(DECODE, "tokens_per_s"), column(E2E, "ms"), column(E2E, "tokens_per_s"), *memory,
            "wall_start_ns", "wall_end_ns", "clock"]


def _cuda_peak_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20


def time_one_sample(
    workload: Workload,
    prepared: PreparedInput,
    new_tokens: int,
    clock: StageClock,
    recorder: SubStageRecorder,
    stop_at_eos: bool = False,
) -> TimedSample:
    model, convention, device = workload.model, workload.convention, workload.device
    on_cuda = device.type == "cuda"
    step_marks: list[Mark] = []
    memory: dict[str, float] = {}

    clock.synchronize()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    epoch_start_ns = time.time_ns()
    wall_start_ns = time.perf_counter_ns()
    start = clock.mark()
    recorder.enabled = True
    token, cache = workload.prefill(prepared)  # eager, into the configured KV cache (models.decoding)
    recorder.enabled = False
    prefill_end = clock.mark()
    if on_cuda:
        # The caching allocator's statistics are host-side: reading them does not synchronise.
        memory[column(PREFILL, "peak_mem_mib")] = _cuda_peak_mib(device)
        torch.cuda.reset_peak_memory_stats(device)
    with workload.decode_phase():  # the experts implementation generate() decodes with
        decode_n_tokens(
            model, convention, token, cache, new_tokens - 1,
            on_step=lambda: step_marks.append(clock.mark()),
            eos_token_id=workload.eos_token_id if stop_at_eos else None,
            step=workload.decode_step,  # eager, or the compiled step (compiled before the run: compile_decode)
        )
    if on_cuda:
        memory[column(DECODE, "peak_mem_mib")] = _cuda_peak_mib(device)
    clock.synchronize()
    wall_end_ns = time.perf_counter_ns()
    e2e_ms = (wall_end_ns - wall_start_ns) / 1e6

    step_ms = []
    previous = prefill_end
    for mark in step_marks:
        step_ms.append(clock.elapsed_ms(previous, mark))
        previous = mark
    row = _sample_row(workload, prepared, clock.elapsed_ms(start, prefill_end), step_ms, e2e_ms)
    calls = []
    for stage, begin, end in recorder.take():
        row[column(stage, "ms")] += clock.elapsed_ms(begin, end)
        calls.append((stage, clock.elapsed_ms(start, begin), clock.elapsed_ms(start, end)))
    row.update(memory)
    # Host timestamps of the synchronised window: the NVML sampler's timeline is cut with them.
    row.update(wall_start_ns=wall_start_ns, wall_end_ns=wall_end_ns)
    return TimedSample(row=row, decode_step_ms=step_ms, calls=calls, epoch_start_ns=epoch_start_ns)


def _sample_row(workload: Workload, prepared: PreparedInput, prefill_ms: float, step_ms: list[float],
                e2e_ms: float) -> dict[str, Any]:
    """samples.csv's row of one sample (sub-stage times start at 0: the caller adds each call's time).

    Latencies are the batch's (every request of it); token rates count every request of the batch."""
    decode_ms = float(sum(step_ms))
    generated = 1 + len(step_ms)
    batch = prepared.batch_size
    row: dict[str, Any] = {"input_id": prepared.input_id}
    if workload.batch_size > 1:
        row["batch_size"] = batch
    row.update({
        "prompt_tokens": prepared.prompt_tokens,
        "image_tokens": prepared.image_tokens,
        "new_tokens": generated,
        column(PREFILL, "ms"): prefill_ms,
    })
    for stage in workload.stage_modules:
        row[column(stage, "ms")] = 0.0
    row.update({
        column(DECODE, "ms"): decode_ms,
        column(DECODE, "tpot_ms"): decode_ms / len(step_ms) if step_ms else float("nan"),
        column(DECODE, "tokens_per_s"): batch * len(step_ms) / decode_ms * 1e3 if decode_ms > 0 else float("nan"),
        column(E2E, "ms"): e2e_ms,
        column(E2E, "tokens_per_s"): batch * generated / e2e_ms * 1e3,
    })
    return row


def iter_timed_samples(workload: Workload, settings: Any, progress: Any = None) -> Iterator[TimedSample]:
    """Yield one record per (repeat, input) after `warmup` untimed samples of every input.

    With batches (`workload.batch_size` > 1) an "input" is a batch: one record per (repeat, batch),
    `input_index` the batch's index in `workload.batches`.

    Every input is warmed, not just the first: inputs of other shapes (another tile count, another
    prompt length) select other kernels and grow the allocator on first use, which measured on an
    H200 as a 4x slower first decode of the second page when only the first page was warmed.

    A generator, so that whatever was measured before a failure is already in the caller's hands.
    `settings` is the `profiling` config section (new_tokens, warmup, repeats, stop_at_eos);
    `progress` is a tqdm-like object (`update(n)`) or None.
    """
    new_tokens, warmup, repeats = int(settings.new_tokens), int(settings.warmup), int(settings.repeats)
    stop_at_eos = bool(settings.stop_at_eos)
    if new_tokens < 1:
        raise ValueError("new_tokens must be >= 1")
    clock = StageClock(workload.device)
    recorder = SubStageRecorder(clock, workload.stage_modules)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                for prepared in workload.batches:
                    time_one_sample(workload, prepared, new_tokens, clock, recorder, stop_at_eos)
                    if progress is not None:
                        progress.update(1)
            for repeat in range(repeats):
                for sample_index, prepared in enumerate(workload.batches):
                    record = time_one_sample(workload, prepared, new_tokens, clock, recorder, stop_at_eos)
                    record.row = {"repeat": repeat, "input_index": sample_index, **record.row,
                                  "clock": clock.kind}
                    if progress is not None:
                        progress.update(1)
                    yield record
    finally:
        recorder.remove()
