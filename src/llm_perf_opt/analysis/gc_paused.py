"""Pause the cyclic garbage collector while many acyclic objects are built.

Each collection of the oldest generation walks every live object; when a step builds millions of
acyclic tuples and dicts (a 1M-event trace, the rows of 1,000 MLflow runs) those pauses are pure
cost (40-65% of the time in benchmarks/). The collector's previous state is restored afterwards.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
