"""Forward hooks on the stage modules: the one mechanism that tells every pass when a sub-stage
(vision_sam, ...) starts and ends. The timed pass marks the clock there, the counted pass snapshots
FLOP counts, the profiled pass opens record_function/NVTX ranges.

Hooks fire only while `enabled` (the passes enable them around prefill: sub-stages nest in prefill).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn


class StageHooks:
    def __init__(self, stage_modules: Mapping[str, nn.Module], on_enter: Callable[[str], None],
                 on_exit: Callable[[str], None]):
        self.enabled = False
        self._handles = []
        for stage, module in stage_modules.items():
            self._handles.append(module.register_forward_pre_hook(
                lambda _module, _args, stage=stage: on_enter(stage) if self.enabled else None))
            self._handles.append(module.register_forward_hook(
                lambda _module, _args, _output, stage=stage: on_exit(stage) if self.enabled else None))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
