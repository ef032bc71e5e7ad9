"""The counted pass: FLOPs per stage measured by `torch.utils.flop_counter.FlopCounterMode`.

One prefill (vision included) and `decode_steps` decode steps of one prepared input run under
`torch.inference_mode()` on the workload's device, with the same generation functions as the timed
pass. FlopCounterMode counts at the aten level: a multiply-add is 2 FLOPs, only ops with a formula
count (matmuls, convolutions, attention), and data-dependent work is counted as it ran (MoE: only
the token-expert pairs routed). Sub-stages ("vision/sam", ...) are read with forward hooks on their
modules: each call adds the FLOPs counted between its entry and exit, so a module called for the
global view and again for the tiles sums both calls.

FlopCounterMode's registry lacks a few ops our models run; `EXTRA_FLOP_FORMULAS` adds them (only
where torch has none, so a later torch's own formula wins):
- aten._grouped_mm (transformers' default MoE experts implementation, `grouped_mm`): 2 * M * K * N
  over the rows routed, i.e. 2 * K * numel(out) (both 2-D: 2 * M * K * N, K split in groups).
- aten._scaled_dot_product_flash_attention_for_cpu (SDPA on CPU) and
  aten._scaled_dot_product_fused_attention_overrideable: the SDPA formula torch uses on CUDA,
  4 * batch * heads_q * q_len * k_len * head_dim (full rectangle; causal/mask ignored).
- transformers::grouped_mm_fallback (transformers' own grouped-mm op), like aten._grouped_mm.

`flop_coverage` says how much of the profiled time the counts cannot see (operators without a
formula: copies, elementwise, norms, softmax, ...), per stage.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from llm_perf_opt.errors import InputError
from llm_perf_opt.profiling.generation import decode_one_token, prefill

aten = torch.ops.aten


def _grouped_mm_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """Grouped GEMM: every output element is a K-long dot product, except 2-D x 2-D where K is split."""
    if len(a_shape) == 2 and len(b_shape) == 2:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    numel = 1
    for size in out_shape:
        numel *= size
    return 2 * a_shape[-1] * numel


def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_formulas() -> dict[Any, Callable]:
    candidates: dict[Any, Callable] = {
        aten._grouped_mm: _grouped_mm_flop,
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flop,
    }
    if hasattr(aten, "_scaled_dot_product_fused_attention_overrideable"):
        candidates[aten._scaled_dot_product_fused_attention_overrideable] = _sdpa_flop
    try:  # registers torch.ops.transformers.grouped_mm_fallback when this transformers has it
        import transformers.integrations.moe  # noqa: F401

        candidates[torch.ops.transformers.grouped_mm_fallback] = _grouped_mm_flop
    except (ImportError, AttributeError):
        pass
    return {op: formula for op, formula in candidates.items() if op not in flop_counter.flop_registry}


EXTRA_FLOP_FORMULAS: dict[Any, Callable] = _extra_formulas()

# Operators with no formula of their own whose FLOPs are nevertheless counted: composite ops that
# dispatch to a counted op (linear -> addmm/mm, conv2d -> convolution, ...), and backend kernels
# that run *under* a counted op (CPU convolution's mkldnn kernel): their self time is covered work.
COVERED_WITHOUT_FORMULA = frozenset({
    "aten::linear", "aten::matmul", "aten::einsum", "aten::conv1d", "aten::conv2d", "aten::conv3d",
    "aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d",
    "aten::scaled_dot_product_attention", "aten::mkldnn_convolution", "aten::_nnpack_spatial_convolution",
    "aten::miopen_convolution", "aten::grouped_mm",
})


def _op_name(op: Any) -> str:
    """'aten::mm' for aten.mm (the profiler's spelling); HOPs and Triton kernels by their name."""
    return getattr(op, "_qualified_op_name", None) or getattr(op, "__name__", None) or str(op)


def formula_operator_names() -> frozenset[str]:
    """Profiler-style names of the operators whose FLOPs the counted pass counts."""
    registry = {**flop_counter.flop_registry, **EXTRA_FLOP_FORMULAS}
    return frozenset(_op_name(op) for op in registry) | COVERED_WITHOUT_FORMULA


def new_flop_counter() -> FlopCounterMode:
    """FlopCounterMode with our extra formulas, not printing a table on exit."""
    return FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)


def _global_ops(counter: FlopCounterMode) -> dict[str, int]:
    return {_op_name(op): int(flops) for op, flops in counter.flop_counts.get("Global", {}).items()}


class _StageFlopHooks:
    """Forward hooks adding, per stage, the FLOPs counted between each call's entry and exit.

    Enabled during prefill only, like the timed pass's sub-stage timers (sub-stages nest in prefill).
    """

    def __init__(self, counter: FlopCounterMode, stage_modules: dict[str, torch.nn.Module]):
        self.counter = counter
        self.enabled = False
        self.ops: dict[str, dict[str, int]] = {stage: defaultdict(int) for stage in stage_modules}
        self.calls: dict[str, int] = {stage: 0 for stage in stage_modules}
        self._entries: dict[str, list[dict[str, int]]] = {stage: [] for stage in stage_modules}
        self._handles = []
        for stage, module in stage_modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(stage)))
            self._handles.append(module.register_forward_hook(self._post(stage)))

    def _pre(self, stage: str):
        def hook(module, args):
            if self.enabled:
                self._entries[stage].append(_global_ops(self.counter))
        return hook

    def _post(self, stage: str):
        def hook(module, args, output):
            if self.enabled and self._entries[stage]:
                before = self._entries[stage].pop()
                for op, flops in _global_ops(self.counter).items():
                    if flops - before.get(op, 0):
                        self.ops[stage][op] += flops - before.get(op, 0)
                self.calls[stage] += 1
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass
class CountedFlops:
    """FLOPs measured on one input. Sub-stages are nested in prefill (never add them to it).

    `stage_flops` has the sub-stages that ran (with `stage_calls` calls each); `decode_step_flops`
    the first `len(...)` decode steps after prefill; `operator_flops` per phase ("prefill", "decode"
    (all counted steps), and each sub-stage) and operator ("aten::mm": FLOPs).
    """

    input_index: int
    input_id: str
    prompt_tokens: int
    device: str
    prefill_flops: float
    stage_flops: dict[str, float]
    stage_calls: dict[str, int]
    decode_step_flops: list[float]
    operator_flops: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def decode_step_mean_flops(self) -> float | None:
        if not self.decode_step_flops:
            return None
        return sum(self.decode_step_flops) / len(self.decode_step_flops)

    @property
    def decode_flops(self) -> float:
        return float(sum(self.decode_step_flops))

    def as_record(self) -> dict[str, Any]:
        """Flat plain data (JSON-ready): stage -> flops, plus the per-step list and operators."""
        return {
            "input_index": self.input_index, "input_id": self.input_id, "prompt_tokens": self.prompt_tokens,
            "device": self.device, "prefill_flops": self.prefill_flops,
            "stage_flops": dict(self.stage_flops), "stage_calls": dict(self.stage_calls),
            "decode_step_flops": list(self.decode_step_flops), "decode_step_mean_flops": self.decode_step_mean_flops,
            "operator_flops": {k: dict(v) for k, v in self.operator_flops.items()},
        }


def count_stage_flops(workload, *, input_index: int = 0, decode_steps: int = 2) -> CountedFlops:
    """Count FLOPs of prefill, of each sub-stage and of `decode_steps` decode steps for one input."""
    if not 0 <= input_index < len(workload.inputs):
        raise InputError(f"counting input_index={input_index} but the workload has {len(workload.inputs)} input(s): "
                         "lower profiling.counting inputs")
    if decode_steps < 0:
        raise InputError(f"profiling.counting.decode_steps={decode_steps} must be >= 0")
    prepared = workload.inputs[input_index]
    model, convention = workload.model, workload.convention
    counter = new_flop_counter()
    hooks = _StageFlopHooks(counter, workload.stage_modules)
    steps: list[float] = []
    decode_ops: dict[str, int] = defaultdict(int)
    try:
        with torch.inference_mode():
            with counter:
                hooks.enabled = True
                token, cache = prefill(model, convention, prepared.model_inputs)
                hooks.enabled = False
            prefill_ops = _global_ops(counter)
            for _ in range(decode_steps):
                with counter:  # entering clears the counts: one step per context
                    token, cache = decode_one_token(model, convention, token, cache)
                step_ops = _global_ops(counter)
                steps.append(float(sum(step_ops.values())))
                for op, flops in step_ops.items():
                    decode_ops[op] += flops
    finally:
        hooks.remove()
    ran = [stage for stage, calls in hooks.calls.items() if calls]
    operators = {"prefill": prefill_ops, **({"decode": dict(decode_ops)} if steps else {})}
    operators.update({stage: dict(hooks.ops[stage]) for stage in ran})
    return CountedFlops(
        input_index=input_index,
        input_id=prepared.input_id,
        prompt_tokens=prepared.prompt_tokens,
        device=str(workload.device),
        prefill_flops=float(sum(prefill_ops.values())),
        stage_flops={stage: float(sum(hooks.ops[stage].values())) for stage in ran},
        stage_calls={stage: hooks.calls[stage] for stage in ran},
        decode_step_flops=steps,
        operator_flops=operators,
    )


# --- coverage -----------------------------------------------------------------------------------


def flop_coverage(operators: pd.DataFrame) -> dict[str, float]:
    """Share of each stage's profiled time spent in operators without a FLOP formula (0..1).

    Time is self_device_ms when that column sums to > 0 (a GPU run), else self_cpu_ms. Operators
    "with a formula" are those in FlopCounterMode's registry plus EXTRA_FLOP_FORMULAS, matched by
    profiler name ("aten::mm"), and COVERED_WITHOUT_FORMULA; everything else (copies, cat, views,
    elementwise, norms, softmax, ...) is time the FLOP counts do not explain. Stages with no time
    are left out (no share can be computed).
    """
    missing = {"stage", "name", "self_cpu_ms", "self_device_ms"} - set(operators.columns)
    if missing:
        raise ValueError(f"operators table lacks columns {sorted(missing)}")
    column = "self_device_ms" if operators["self_device_ms"].fillna(0).sum() > 0 else "self_cpu_ms"
    covered = operators["name"].isin(formula_operator_names())
    time_ms = operators[column].fillna(0.0)
    frame = pd.DataFrame({"stage": operators["stage"], "total": time_ms, "uncovered": time_ms.where(~covered, 0.0)})
    sums = frame.groupby("stage", sort=False)[["total", "uncovered"]].sum()
    sums = sums[sums["total"] > 0]
    return {str(stage): float(row.uncovered / row.total) for stage, row in sums.iterrows()}


def coverage_warning(coverage: dict[str, float], threshold: float = 0.5) -> str | None:
    """One line naming the stages where more than `threshold` of the time has no FLOP formula, else None."""
    over = {stage: share for stage, share in coverage.items() if share > threshold}
    if not over:
        return None
    listed = ", ".join(f"{stage} {share:.0%}" for stage, share in sorted(over.items(), key=lambda kv: -kv[1]))
    return (f"FLOP counts cover little of the time in {listed} (share of time in operators without a FLOP "
            f"formula, above {threshold:.0%}): MFU there reflects memory-bound or unmodelled work, not idle compute")
