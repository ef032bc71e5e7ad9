"""One GPU per sweep job: a lease on a device index, held for the job's whole run.

Jobs of a sweep may run in parallel (Hydra's joblib launcher: several processes on one host). Timing two
jobs on one GPU at once would make both wrong, so each job takes a lease before it builds its model: a
file lock `<sweep dir>/.gpu-leases/<host>-gpu<index>-<slot>.lock` (filelock: an OS lock, released when
the process ends, even by a crash or a signal; per host, since device indices are per host: Slurm jobs on
different nodes never wait for each other). A job takes the first free (index, slot) among the sweep's
GPUs, else waits, polling, until one frees: with more jobs than GPUs the jobs queue. `slots` > 1 lets
that many jobs share one GPU, only when asked (`sweep.jobs_per_gpu`).

The device list is plain data (indices), so the assignment is tested on a CPU with fake lists; the job
then profiles `cuda:<index>`, and the run records the index it used.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

LEASE_DIR = ".gpu-leases"
POLL_S = 0.5


@dataclass(frozen=True)
class Lease:
    index: int
    slot: int
    waited_s: float


def _candidates(gpus: Sequence[int], slots: int) -> list[tuple[int, int]]:
    return [(index, slot) for slot in range(slots) for index in gpus]


@contextlib.contextmanager
def gpu_lease(sweep_dir: str | Path, gpus: Sequence[int], slots: int = 1, poll_s: float = POLL_S,
              timeout_s: float | None = None) -> Iterator[Lease]:
    """Hold a lease on one of `gpus` (device indices) for the body; waits while all are taken.

    Raises TimeoutError when `timeout_s` passes without a free GPU; ValueError for an empty list."""
    if not gpus:
        raise ValueError("no GPU to lease: the sweep's GPU list is empty (set sweep.gpus or run on a GPU host)")
    if slots < 1:
        raise ValueError(f"sweep.jobs_per_gpu={slots}: set it to 1 or more")
    folder = Path(sweep_dir) / LEASE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    started, told = time.monotonic(), False
    while True:
        for index, slot in _candidates(gpus, slots):
            lock = FileLock(str(folder / f"{socket.gethostname()}-gpu{index}-{slot}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                yield Lease(index, slot, time.monotonic() - started)
            finally:
                lock.release()
            return
        waited = time.monotonic() - started
        if timeout_s is not None and waited > timeout_s:
            raise TimeoutError(f"no free GPU among {list(gpus)} after {waited:.0f} s")
        if not told:
            print(f"waiting for a free GPU among {list(gpus)} (each timed job has one to itself)", file=sys.stderr)
            told = True
        time.sleep(poll_s)
