"""The counted pass: FLOPs per stage measured by `torch.utils.flop_counter.FlopCounterMode`.

One prefill (vision included) and `decode_steps` decode steps of one prepared input run under
`torch.inference_mode()` on the workload's device, with the same generation functions as the timed
pass. FlopCounterMode counts at the aten level: a multiply-add is 2 FLOPs, only ops with a formula
count (matmuls, convolutions, attention), and data-dependent work is counted as it ran (MoE: only
the token-expert pairs routed). Sub-stages ("vision_sam", ...) are read with forward hooks on their
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
- On torch < 2.12 the CUDA SDPA formulas reject GQA shapes (they assert equal heads); there the
  three aten._scaled_dot_product_{flash,efficient,cudnn}_attention get our GQA-aware formula.

`formula_operator_names()` lists the operators the counts see; analysis.coverage uses it to say how
much of the profiled time the counts cannot see (copies, elementwise, norms, softmax, ...), per stage.

With batches (`profiling.batch_size` > 1) the pass counts what the timed pass times: one batch per
count (`workload.batches`), so a stage's FLOPs are those of one execution over the whole batch and
divide by that stage's (batch) time. The analytic model gets the batch size (passes/analytic.py: FLOPs
x B, weights read once per forward); a factory's declared costs scale the same way when each entry
says which of its bytes are weights (`weight_bytes`), else bytes and MBU are absent with one warning.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from llm_perf_opt.analysis.stages import group_totals
from llm_perf_opt.errors import InputError
from llm_perf_opt.models.generation import decode_one_token, prefill
from llm_perf_opt.models.stage_hooks import StageHooks
from llm_perf_opt.passes.analytic import StageCost, UnsupportedArchitecture, analytic_costs_for_workload
from llm_perf_opt.schema import DECODE, E2E, PREFILL

aten = torch.ops.aten
log = logging.getLogger(__name__)


def _grouped_mm_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """Grouped GEMM: every output element is a K-long dot product, except 2-D x 2-D where K is split."""
    if len(a_shape) == 2 and len(b_shape) == 2:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    numel = 1
    for size in out_shape:
        numel *= size
    return 2 * a_shape[-1] * numel


def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """QK^T and PV over the full rectangle; GQA-aware (K/V heads broadcast to the query heads)."""
    batch, heads_q, q_len, head_dim = query_shape
    k_len, v_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads_q * q_len * k_len * head_dim + 2 * batch * heads_q * q_len * k_len * v_dim


_TORCH_SDPA_OPS = ("_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
                   "_scaled_dot_product_cudnn_attention")


def _torch_sdpa_formula_handles_gqa() -> bool:
    # torch < 2.12 asserts equal query and key/value heads, so counting a GQA model through SDPA
    # (transformers passes enable_gqa=True on CUDA) raises inside the counter.
    try:
        flop_counter.sdpa_flop_count((1, 2, 1, 1), (1, 1, 1, 1), (1, 1, 1, 1))
    except AssertionError:
        return False
    return True


def _extra_formulas() -> dict[Any, Callable]:
    by_name = {"_grouped_mm": _grouped_mm_flop, "_scaled_dot_product_flash_attention_for_cpu": _sdpa_flop,
               "_scaled_dot_product_fused_attention_overrideable": _sdpa_flop}
    replace = set()
    if not _torch_sdpa_formula_handles_gqa():
        by_name.update({name: _sdpa_flop for name in _TORCH_SDPA_OPS})
        replace = {getattr(aten, name) for name in _TORCH_SDPA_OPS if hasattr(aten, name)}
    # Older torch builds lack some of these ops: only those that exist get a formula.
    candidates: dict[Any, Callable] = {getattr(aten, name): f for name, f in by_name.items() if hasattr(aten, name)}
    try:  # registers torch.ops.transformers.grouped_mm_fallback when this transformers has it
        import transformers.integrations.moe  # noqa: F401

        candidates[torch.ops.transformers.grouped_mm_fallback] = _grouped_mm_flop
    except (ImportError, AttributeError):
        pass
    return {op: formula for op, formula in candidates.items() if op not in flop_counter.flop_registry or op in replace}


EXTRA_FLOP_FORMULAS: dict[Any, Callable] = _extra_formulas()

# Operators with no formula of their own whose FLOPs are nevertheless counted: composite ops that
# dispatch to a counted op (linear -> addmm/mm, conv2d -> convolution, ...), and backend ops that
# run *under* a counted op and hold its kernels' self time (CPU convolution's mkldnn kernel, cuDNN
# attention's forward under aten::_scaled_dot_product_cudnn_attention): their time is counted work.
COVERED_WITHOUT_FORMULA = frozenset({
    "aten::linear", "aten::matmul", "aten::einsum", "aten::conv1d", "aten::conv2d", "aten::conv3d",
    "aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d",
    "aten::scaled_dot_product_attention", "aten::mkldnn_convolution", "aten::_nnpack_spatial_convolution",
    "aten::miopen_convolution", "aten::grouped_mm", "aten::_cudnn_attention_forward",
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


class _StageFlopHooks(StageHooks):
    """Adds, per stage, the FLOPs counted between each call's entry and exit (while enabled).

    Enabled during prefill only, like the timed pass's sub-stage timers (sub-stages nest in prefill).
    """

    def __init__(self, counter: FlopCounterMode, stage_modules: dict[str, torch.nn.Module]):
        self.counter = counter
        self.ops: dict[str, dict[str, int]] = {stage: defaultdict(int) for stage in stage_modules}
        self.calls: dict[str, int] = {stage: 0 for stage in stage_modules}
        self._entries: dict[str, list[dict[str, int]]] = {stage: [] for stage in stage_modules}
        super().__init__(stage_modules, self._enter, self._exit)

    def _enter(self, stage: str) -> None:
        self._entries[stage].append(_global_ops(self.counter))

    def _exit(self, stage: str) -> None:
        if self._entries[stage]:
            before = self._entries[stage].pop()
            for op, flops in _global_ops(self.counter).items():
                if flops - before.get(op, 0):
                    self.ops[stage][op] += flops - before.get(op, 0)
            self.calls[stage] += 1


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
    """Count FLOPs of prefill, of each sub-stage and of `decode_steps` decode steps for one entry of
    `workload.batches` (an input at batch_size 1, a whole batch otherwise)."""
    if not 0 <= input_index < len(workload.batches):
        raise InputError(f"counting input_index={input_index} but the workload has {len(workload.batches)} input(s) "
                         "or batches: lower profiling.counting inputs")
    if decode_steps < 0:
        raise InputError(f"profiling.counting.decode_steps={decode_steps} must be >= 0")
    prepared = workload.batches[input_index]
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
            with workload.decode_phase():
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


# --- what the efficiency metrics take -------------------------------------------------------------

AGREEMENT_TOLERANCE = 0.05


def efficiency_stage_costs(counted: CountedFlops | None,
                           analytic: dict[str, StageCost] | None) -> dict[str, dict[str, float]]:
    """{stage: {"flops": ..., "bytes": ...}} for "prefill", "decode" (one step, mean) and the sub-stages.

    FLOPs: measured by the counted pass where it ran (what really executed, for any model), else
    analytic. Bytes: analytic only (the counter sees no bytes); a stage without an analytic model has
    no "bytes" key rather than a made-up one. The measured decode mean covers the counted steps, the
    analytic one the timed steps: they differ only by attention over a few more positions. A measured
    and analytic FLOP count more than 5% apart gives one warning.
    """
    measured: dict[str, float] = {}
    if counted is not None:
        measured["prefill"] = counted.prefill_flops
        measured.update(counted.stage_flops)
        if counted.decode_step_mean_flops is not None:
            measured["decode"] = counted.decode_step_mean_flops
    modelled: dict[str, StageCost] = {}
    if analytic is not None:
        modelled = {stage: cost for stage, cost in analytic.items() if not stage.startswith("decode")}
        if "decode_step_mean" in analytic:
            modelled["decode"] = analytic["decode_step_mean"]
    stages: dict[str, dict[str, float]] = {}
    for stage in list(dict.fromkeys([*measured, *modelled])):
        entry: dict[str, float] = {}
        if stage in measured:
            entry["flops"] = float(measured[stage])
        elif stage in modelled:
            entry["flops"] = float(modelled[stage].flops)
        if stage in modelled:
            entry["bytes"] = float(modelled[stage].bytes)
            expected = modelled[stage].flops
            if stage in measured and expected > 0 and abs(measured[stage] / expected - 1) > AGREEMENT_TOLERANCE:
                log.warning("stage %s: measured FLOPs %.4g vs analytic %.4g (%+.1f%%): the analytic model misses "
                            "part of this model (see docs/flops.md)", stage, measured[stage], expected,
                            100 * (measured[stage] / expected - 1))
        stages[stage] = entry
    return stages


def measured_over_analytic(counted: CountedFlops, analytic: dict[str, StageCost]) -> dict[str, float]:
    """{stage: measured FLOPs / analytic FLOPs} where both exist (decode: mean over the steps both cover)."""
    pairs = {PREFILL: (counted.prefill_flops, analytic.get(PREFILL))}
    pairs.update({stage: (flops, analytic.get(stage)) for stage, flops in counted.stage_flops.items()})
    both = [(flops, analytic[f"decode_step_{i}"].flops) for i, flops in enumerate(counted.decode_step_flops, 1)
            if f"decode_step_{i}" in analytic]
    if both:
        pairs[DECODE] = (sum(m for m, _ in both) / len(both), StageCost(sum(a for _, a in both) / len(both)))
    return {stage: flops / cost.flops for stage, (flops, cost) in pairs.items() if cost is not None and cost.flops > 0}


# --- the pass -------------------------------------------------------------------------------------


@dataclass
class CountedResult:
    """FLOPs and bytes per stage of one execution (decode: one step), averaged over the inputs.

    `stage_costs` has prefill, decode, the measured sub-stages, their groups (sums of children) and
    e2e (prefill + (new_tokens - 1) decode steps: one whole sample). `per_input` is counts.json's
    per-input detail; `measured_over_analytic` the first input's measured/analytic FLOP ratios.
    """

    stage_costs: dict[str, dict[str, float]]
    per_input: list[dict[str, Any]]
    measured_over_analytic: dict[str, float]

    def as_counts_json(self) -> dict[str, Any]:
        return {"per_input": self.per_input, "stage_costs": self.stage_costs}


def _mean_costs(per_input: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Average {stage: {flops, bytes}} over inputs (each input is timed equally often); a key missing
    for any input stays missing rather than averaged over fewer inputs."""
    merged: dict[str, dict[str, float]] = {}
    for stage in per_input[0]:
        keys = set.intersection(*(set(costs.get(stage, {})) for costs in per_input))
        merged[stage] = {key: sum(costs[stage][key] for costs in per_input) / len(per_input) for key in sorted(keys)}
    return merged


def _batch_bytes(cost: dict[str, float], batch: int) -> float | None:
    """Bytes of one forward over `batch` inputs: weights (`weight_bytes`) once, the rest per input; None
    when a batch runs and the factory did not say which of its bytes are weights."""
    if batch == 1:
        return float(cost.get("bytes", 0.0))
    if "weight_bytes" not in cost:
        return None
    weights = float(cost["weight_bytes"])
    return weights + batch * (float(cost.get("bytes", 0.0)) - weights)


def _declared_costs(workload: Any, batch: int = 1) -> tuple[dict[str, StageCost] | None, set[str]]:
    """A factory's declared costs (one input) in the analytic model's shape (prefill, decode_step_mean),
    scaled to a forward over `batch` inputs (FLOPs x batch; bytes: `_batch_bytes`), and the stages whose
    bytes cannot be scaled (their bytes must be dropped, not used)."""
    if not workload.declared_costs:
        return None, set()
    names = {PREFILL: PREFILL, DECODE: "decode_step_mean"}
    costs, unscaled = {}, set()
    for stage, cost in workload.declared_costs.items():
        moved = _batch_bytes(cost, batch)
        if moved is None:
            unscaled.add(names.get(stage, stage))
        costs[names.get(stage, stage)] = StageCost(float(cost.get("flops", 0.0)) * batch, moved or 0.0, 0.0)
    return costs, unscaled


def run_counted_pass(workload: Any, settings: Any, new_tokens: int) -> CountedResult:
    """Count every input (settings: the `profiling.counting` section, decode_steps) and model its bytes."""
    per_input, records, first = [], [], None
    for index, prepared in enumerate(workload.batches):
        counted = count_stage_flops(workload, input_index=index, decode_steps=int(settings.decode_steps))
        unscaled: set[str] = set()
        try:
            analytic = analytic_costs_for_workload(workload, index, new_tokens=new_tokens)
        except UnsupportedArchitecture as exc:
            analytic, unscaled = _declared_costs(workload, prepared.batch_size)
            if analytic is None and index == 0:
                log.warning("no analytic byte model for this workload (%s): FLOPs measured, bytes and MBU absent", exc)
        if unscaled and index == 0:
            log.warning("model.factory declares costs of %s without 'weight_bytes': in batches of %d its bytes cannot "
                        "be scaled, so their bytes and MBU are absent (declare the bytes a forward reads once, "
                        "whatever the batch, as weight_bytes)", ", ".join(sorted(unscaled)), prepared.batch_size)
        first = first or (counted, analytic)
        costs = efficiency_stage_costs(counted, analytic)
        for stage in unscaled:  # their 0.0 bytes are a placeholder, never a measurement
            costs.get(DECODE if stage == "decode_step_mean" else stage, {}).pop("bytes", None)
        per_input.append(costs)
        record = {"input_id": prepared.input_id, **({"batch_size": prepared.batch_size} if workload.batch_size > 1
                                                      else {})}
        records.append({**record, "counted": counted.as_record(),
                        "analytic": {stage: ({"flops": cost.flops} if stage in unscaled else asdict(cost))
                                     for stage, cost in (analytic or {}).items()}})
    means = _mean_costs(per_input)
    by_quantity = {q: group_totals({stage: c[q] for stage, c in means.items() if q in c}, workload.stages)
                   for q in ("flops", "bytes")}
    stage_costs = {stage: {q: values[stage] for q, values in by_quantity.items() if stage in values}
                   for stage in workload.stages.keys()}
    if PREFILL in means and DECODE in means:  # one whole sample: prefill + every decode step
        steps = max(new_tokens - 1, 0)
        stage_costs[E2E] = {q: means[PREFILL][q] + steps * means[DECODE][q]
                            for q in means[PREFILL] if q in means[DECODE]}
    stage_costs = {stage: costs for stage, costs in stage_costs.items() if costs}
    counted, analytic = first
    return CountedResult(stage_costs, records, measured_over_analytic(counted, analytic) if analytic else {})
