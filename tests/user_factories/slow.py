"""A deliberately slow model for fault tests: each forward sleeps, and marker files say which pass runs.

`$FAULT_MARKERS/timed` appears once the module has run `MARK_AFTER` forward calls outside the profiler
(the timed pass is under way); `$FAULT_MARKERS/profiled` once a forward runs under torch.profiler (the
profiled pass). A test waits for a marker, then sends its signal.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

MARK_AFTER = 13  # the first forward of the 4th sample: 3 whole samples (4 forwards each) are done
VOCAB, HIDDEN = 64, 16


class Slow(nn.Module):
    def __init__(self, step_s: float, profiled_step_s: float):
        super().__init__()
        self.embed, self.head = nn.Embedding(VOCAB, HIDDEN), nn.Linear(HIDDEN, VOCAB, bias=False)
        self.step_s, self.profiled_step_s, self.calls = step_s, profiled_step_s, 0
        self.markers = Path(os.environ["FAULT_MARKERS"]) if os.environ.get("FAULT_MARKERS") else None

    def _mark(self, name: str) -> None:
        if self.markers is not None:
            (self.markers / name).touch()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if torch.autograd._profiler_enabled():
            self._mark("profiled")
            time.sleep(self.profiled_step_s)
        else:
            self.calls += 1
            if self.calls == MARK_AFTER:
                self._mark("timed")
            time.sleep(self.step_s)
        return self.head(self.embed(input_ids))


def build(device: torch.device, dtype: torch.dtype, step_s: float = 0.02, profiled_step_s: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return Slow(step_s, profiled_step_s).to(device=device, dtype=dtype)
