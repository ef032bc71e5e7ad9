"""Signals inside a run: SIGINT, SIGTERM and SIGHUP become `RunInterrupted` while measuring, and are
only remembered while the run's record is being finished.

Python delivers a signal to the main thread between bytecodes. While measuring, the handler raises
`RunInterrupted` there, so the pipeline's `except BaseException` ends the run with what it measured
(status KILLED). Once finishing has begun (`defer()`), a further signal does not interrupt writing
metrics.json or ending the MLflow run: it is remembered and the process still exits 128 + signal.
Previous handlers are restored on the way out. Outside the main thread nothing is installed (Python
allows handlers only there): a KeyboardInterrupt then still ends the run KILLED.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from llm_perf_opt.errors import RunInterrupted

HANDLED = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


@dataclass
class Interrupts:
    raising: bool = True
    received: int | None = None  # the first signal received, if any

    def handle(self, signum: int, _frame: object) -> None:
        if self.received is None:
            self.received = signum
        if self.raising:
            self.raising = False  # one exception per run: a second signal does not interrupt the unwinding
            raise RunInterrupted(signum)

    def defer(self) -> None:
        """From now on signals are remembered, not raised (the record is being written)."""
        self.raising = False


@contextmanager
def interrupts() -> Iterator[Interrupts]:
    state = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED}
    for signum in HANDLED:
        signal.signal(signum, state.handle)
    try:
        yield state
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
