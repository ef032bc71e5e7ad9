"""One clock for every stage boundary.

On a GPU a mark is a CUDA event recorded on the current stream: it costs a few microseconds of host
time, never blocks, and its timestamp is taken when the GPU reaches it, so stage times are execution
times, not kernel-launch times. On a CPU (synchronous execution) a mark is a `perf_counter_ns` reading.

Callers mark boundaries freely and call `synchronize()` once, when the pass they time is over; only
then are elapsed times read. This is the only place in the project that branches on the clock type.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class Mark:
    """A recorded boundary: a CUDA event or a host timestamp in nanoseconds."""

    event: torch.cuda.Event | None = None
    ns: int | None = None


class StageClock:
    """Marks boundaries and measures milliseconds between them on one device."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.uses_cuda_events = self.device.type == "cuda"

    @property
    def kind(self) -> str:
        return "cuda_event" if self.uses_cuda_events else "perf_counter"

    def mark(self) -> Mark:
        if self.uses_cuda_events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return Mark(event=event)
        return Mark(ns=time.perf_counter_ns())

    def synchronize(self) -> None:
        """Wait for the device; required before `elapsed_ms` on marks recorded since the last call."""
        if self.uses_cuda_events:
            torch.cuda.synchronize(self.device)

    def elapsed_ms(self, start: Mark, end: Mark) -> float:
        if self.uses_cuda_events:
            return float(start.event.elapsed_time(end.event))
        return (end.ns - start.ns) / 1e6
