"""Per-stage efficiency: achieved rates, MFU/MBU, arithmetic intensity and a bound verdict.

Inputs: `stage_costs[stage] = {"flops": F, "bytes": B}` (from the counted pass / analytic model: F in
FLOPs with a multiply-add = 2, B in bytes moved to/from device memory) and `stage_time_ms[stage] = t`
(the timed pass's mean time of *that same stage*). For a stage:

    achieved_tflops          = F / (t * 1e-3) / 1e12
    achieved_gbps            = B / (t * 1e-3) / 1e9
    mfu                      = achieved_tflops / peak_tflops
    mbu                      = achieved_gbps / peak_bandwidth_gbps
    mfu_achievable, mbu_...  = the same against `calibrate`'s measured peaks
    intensity_flop_per_byte  = F / B
    ridge_flop_per_byte      = peak_tflops * 1e12 / (peak_bandwidth_gbps * 1e9)
    attainable_tflops        = min(peak_tflops, intensity * peak_bandwidth_gbps / 1e3)   (the roofline)
    bound = "launch"  if busy_share < launch_busy_share (device busy less than that share of the stage)
            "compute" if intensity >= ridge
            "memory"  otherwise

A stage's FLOPs divide by that stage's time only (its `time_quantity` in the stage schema). Vision
sub-stages run inside prefill: "prefill" carries the FLOPs of the whole first forward pass (vision
included) over prefill ms, "vision_sam" its own FLOPs over its own ms, and "e2e" the FLOPs of prefill
plus every decode step over the sample's e2e ms; nothing is ever summed across nested stages here.
"decode" is per step: costs of one step (mean over steps) over tpot_ms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from llm_perf_opt.analysis.peaks import HardwarePeaks

DEFAULT_LAUNCH_BUSY_SHARE = 0.5


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _cost(cost: Any, key: str) -> float | None:
    """cost["flops"] of a mapping, or cost.flops of a record such as analytic.StageCost (bytes = read + written).

    None when the cost is not known (e.g. no analytic byte model): the derived metrics are then absent,
    never computed from a zero."""
    value = cost.get(key) if isinstance(cost, Mapping) else getattr(cost, key, None)
    return None if value is None else float(value)


def _finite_positive(value: Any) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def stage_efficiency(
    stage_costs: Mapping[str, Any],
    stage_time_ms: Mapping[str, float],
    peaks: HardwarePeaks | None,
    busy_share: Mapping[str, float] | None = None,
    launch_busy_share: float = DEFAULT_LAUNCH_BUSY_SHARE,
) -> dict[str, dict[str, Any]]:
    """Derived metrics per stage (formulas in the module docstring; None = not computable).

    `stage_costs` values are {"flops", "bytes"} mappings or records with `.flops` and `.bytes`
    (`analytic.StageCost`).
    Stages without a positive, finite time are left out (nothing was measured to divide by).
    """
    result: dict[str, dict[str, Any]] = {}
    for stage, cost in stage_costs.items():
        time_ms = stage_time_ms.get(stage)
        if not _finite_positive(time_ms):
            continue
        flops, bytes_moved = _cost(cost, "flops"), _cost(cost, "bytes")
        seconds = time_ms * 1e-3
        tflops = None if flops is None else flops / seconds / 1e12
        gbps = None if bytes_moved is None else bytes_moved / seconds / 1e9
        intensity = flops / bytes_moved if flops is not None and bytes_moved else None
        peak_tflops = peaks.peak_tflops if peaks else None
        peak_gbps = peaks.peak_bandwidth_gbps if peaks else None
        ridge = peaks.ridge_flop_per_byte if peaks else None
        attainable = None
        if peak_tflops is not None and peak_gbps is not None and intensity is not None:
            attainable = min(peak_tflops, intensity * peak_gbps / 1e3)
        share = (busy_share or {}).get(stage)
        result[stage] = {
            "flops": flops,
            "bytes": bytes_moved,
            "time_ms": float(time_ms),
            "achieved_tflops": tflops,
            "achieved_gbps": gbps,
            "intensity_flop_per_byte": intensity,
            "mfu": _ratio(tflops, peak_tflops),
            "mbu": _ratio(gbps, peak_gbps),
            "mfu_achievable": _ratio(tflops, peaks.achievable_tflops if peaks else None),
            "mbu_achievable": _ratio(gbps, peaks.achievable_bandwidth_gbps if peaks else None),
            "ridge_flop_per_byte": ridge,
            "attainable_tflops": attainable,
            "busy_share": None if share is None else float(share),
            # Unknown bytes say nothing about memory vs compute: only the busy share can decide then.
            "bound": (bound_verdict(intensity, ridge, share, launch_busy_share, flops or 0.0)
                      if bytes_moved is not None else bound_verdict(None, None, share, launch_busy_share)),
        }
    return result


def bound_verdict(
    intensity: float | None,
    ridge: float | None,
    busy_share: float | None = None,
    launch_busy_share: float = DEFAULT_LAUNCH_BUSY_SHARE,
    flops: float = 0.0,
) -> str | None:
    """'launch' | 'compute' | 'memory', or None when neither the busy share nor the ridge decides."""
    if busy_share is not None and busy_share < launch_busy_share:
        return "launch"  # the device idles most of the stage: launches/host gaps, not math or memory
    if ridge is None:
        return None
    if intensity is None:  # no bytes moved: pure arithmetic (or nothing at all)
        return "compute" if flops > 0 else None
    return "compute" if intensity >= ridge else "memory"
