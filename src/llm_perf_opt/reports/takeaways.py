"""Takeaways and recommendations derived from one run's metrics.json, each citing its number.

Inputs (metrics.json keys; anything absent makes the statements that need it absent, never guessed):
- stages{name: {nested_in, ms: {mean, p50, ...}}} and summary{column: stats} (the timed pass);
- top_operators_by_stage{stage: [records]} and profiled_pass{stages: [...]} (the profiled pass);
- metrics{"overhead/<stage>_ratio": ...} (profiled / timed stage time);
- efficiency{stage: {mfu, mbu, bound, busy_share}} (fractions in [0, 1]; `bound` a label).

Rules (thresholds are stated in the text they produce):
- end_to_end: share of each top-level stage (prefill, decode) in the mean end-to-end time
  (summary e2e_ms; prefill + decode when e2e is absent); the larger share dominates.
- vision: the vision group's share of prefill (it is nested within prefill), and the sub-stage with
  the largest mean with its share of vision.
- decode: TPOT (p50 and mean) and decode tokens/s; with efficiency["decode"]: busy share, MBU and
  MFU as given, and a verdict: the efficiency module's `bound` label ("launch" | "memory" |
  "compute") when present, else busy_share below LAUNCH_BOUND_BUSY_SHARE reads as launch-bound (the
  device idles between small kernels) and MBU at or above MEMORY_BOUND_MBU as memory-bound.
- prefill: MFU/MBU/bound of prefill when efficiency["prefill"] gives them.
- operators: the largest operator (by total time) of the dominant stage or any stage nested in it,
  with its share of that stage's profiled time.
- profiler_overhead: the overhead ratios of prefill and of one decode step (sub-stages can be too
  short to time well), so readers know how inflated operator times are; a recommendation to read
  operator times as shares when either reaches INFLATED_OVERHEAD.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from llm_perf_opt.profiling.efficiency import DEFAULT_LAUNCH_BUSY_SHARE

# Used only when metrics.json's efficiency has no `bound` verdict of its own (which applies the run's
# hardware.launch_busy_share); the same default as profiling/efficiency.py.
LAUNCH_BOUND_BUSY_SHARE = DEFAULT_LAUNCH_BUSY_SHARE  # device busy < 50% of the stage: gaps between kernels
MEMORY_BOUND_MBU = 0.5  # >= 50% of peak memory bandwidth used: bandwidth is the limit to watch
INFLATED_OVERHEAD = 1.5  # profiled / timed stage time from which operator milliseconds mislead
TOP_LEVEL_STAGES = ("prefill", "decode")


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def stat(metrics_json: Mapping[str, Any], column: str, name: str = "mean") -> float | None:
    """metrics.json["summary"][column][name] when present and finite."""
    return _finite(((metrics_json.get("summary") or {}).get(column) or {}).get(name))


def stage_stat(metrics_json: Mapping[str, Any], stage: str, name: str = "mean") -> float | None:
    entry = (metrics_json.get("stages") or {}).get(stage) or {}
    return _finite((entry.get("ms") or {}).get(name))


def substages(metrics_json: Mapping[str, Any], group: str) -> list[str]:
    """Stages nested directly in `group` ('vision' -> ['vision/sam', ...]) in metrics.json order."""
    return [name for name, entry in (metrics_json.get("stages") or {}).items() if entry.get("nested_in") == group]


def groups_in_prefill(metrics_json: Mapping[str, Any]) -> list[str]:
    return [name for name in substages(metrics_json, "prefill") if "/" not in name]


def stages_within(metrics_json: Mapping[str, Any], stage: str) -> set[str]:
    """`stage` and every stage nested in it, transitively ('prefill' -> prefill, vision, vision/sam, ...)."""
    within = {stage}
    entries = metrics_json.get("stages") or {}
    while True:
        grown = within | {name for name, entry in entries.items() if entry.get("nested_in") in within}
        if grown == within:
            return within
        within = grown


def end_to_end_shares(metrics_json: Mapping[str, Any]) -> tuple[dict[str, float], float | None, str]:
    """({stage: mean ms}, denominator ms, what the denominator is) for the top-level stages."""
    means = {s: v for s in TOP_LEVEL_STAGES if (v := stage_stat(metrics_json, s)) is not None}
    e2e = stat(metrics_json, "e2e_ms")
    if e2e is not None and e2e > 0:
        return means, e2e, "mean end-to-end time per request"
    total = sum(means.values())
    return means, (total if total > 0 else None), "prefill + decode"


def percent(part: float, whole: float) -> float:
    return 100.0 * part / whole


def profiled_stage_total_ms(metrics_json: Mapping[str, Any], stage: str | None) -> float | None:
    """A stage's time in the profiled pass, summed over its ranges (metrics.json["profiled_pass"]["stages"])."""
    for row in (metrics_json.get("profiled_pass") or {}).get("stages") or []:
        if row.get("stage") == stage:
            return _finite(row.get("profiled_ms"))
    return None


def overhead_ratios(metrics_json: Mapping[str, Any]) -> dict[str, float]:
    flat = metrics_json.get("metrics") or {}
    return {k: float(v) for k, v in flat.items() if k.startswith("overhead/") and _finite(v) is not None}


def headline_overheads(metrics_json: Mapping[str, Any]) -> dict[str, tuple[str, float]]:
    """{label: (metric name, ratio)} for prefill and one decode step, the stages long enough to time well."""
    ratios = overhead_ratios(metrics_json)
    labels = {"overhead/prefill_ratio": "prefill", "overhead/decode_step_ratio": "a decode step"}
    return {label: (name, ratios[name]) for name, label in labels.items() if name in ratios}


def efficiency_of(metrics_json: Mapping[str, Any], stage: str) -> Mapping[str, Any]:
    entry = (metrics_json.get("efficiency") or {}).get(stage)
    return entry if isinstance(entry, Mapping) else {}


VERDICTS = {
    "launch": "launch-bound (the device waits for the host between kernels)",
    "memory": "memory-bound (bytes moved, not arithmetic, set the pace)",
    "compute": "compute-bound (arithmetic sets the pace)",
}


def boundness(eff: Mapping[str, Any]) -> tuple[str, str] | None:
    """(verdict, its source): the efficiency module's `bound` label when given, else busy share / MBU."""
    if eff.get("bound"):
        return str(eff["bound"]), "efficiency verdict"
    busy, mbu = _finite(eff.get("busy_share")), _finite(eff.get("mbu"))
    if busy is not None and busy < LAUNCH_BOUND_BUSY_SHARE:
        return "launch", f"busy share below {LAUNCH_BOUND_BUSY_SHARE:.0%}"
    if mbu is not None and mbu >= MEMORY_BOUND_MBU:
        return "memory", f"MBU at or above {MEMORY_BOUND_MBU:.0%}"
    return None


def _efficiency_clauses(eff: Mapping[str, Any]) -> list[str]:
    clauses = []
    busy, mbu, mfu = _finite(eff.get("busy_share")), _finite(eff.get("mbu")), _finite(eff.get("mfu"))
    if busy is not None:
        clauses.append(f"the device is busy {busy:.0%} of the time")
    if mbu is not None:
        clauses.append(f"MBU {mbu:.1%}")
    if mfu is not None:
        clauses.append(f"MFU {mfu:.1%}")
    verdict = boundness(eff)
    if verdict is not None:
        label, source = verdict
        clauses.append(f"{VERDICTS.get(label, label)} ({source})")
    return clauses


def dominant_stage(metrics_json: Mapping[str, Any]) -> tuple[str, float] | None:
    """(stage, share %) of the top-level stage with the largest mean, or None."""
    means, whole, _ = end_to_end_shares(metrics_json)
    if not means or whole is None:
        return None
    stage = max(means, key=means.get)
    return stage, percent(means[stage], whole)


def _largest_operator(metrics_json: Mapping[str, Any], stage: str) -> dict | None:
    # Ops directly in prefill exclude its sub-stages' ops: look at every stage nested in it too.
    within = stages_within(metrics_json, stage)
    candidates = [row for s, rows in (metrics_json.get("top_operators_by_stage") or {}).items() if s in within
                  for row in rows if _finite(row.get("total_time_ms")) is not None]
    return max(candidates, key=lambda r: r["total_time_ms"]) if candidates else None


def derive_takeaways(metrics_json: Mapping[str, Any]) -> dict[str, str]:
    """{topic: one sentence with its supporting numbers} (topics and rules in the module docstring)."""
    takeaways: dict[str, str] = {}

    means, whole, basis = end_to_end_shares(metrics_json)
    if means and whole is not None:
        ordered = sorted(means, key=means.get, reverse=True)
        first = ordered[0]
        text = (f"{first.capitalize()} dominates end-to-end time: {percent(means[first], whole):.1f}% "
                f"({means[first]:.2f} ms of {whole:.2f} ms, {basis}).")
        for other in ordered[1:]:
            text += f" {other.capitalize()} takes {percent(means[other], whole):.1f}% ({means[other]:.2f} ms)."
        takeaways["end_to_end"] = text

    prefill_ms = stage_stat(metrics_json, "prefill")
    for group in groups_in_prefill(metrics_json):
        group_ms = stage_stat(metrics_json, group)
        if group_ms is None or not prefill_ms:
            continue
        text = (f"{group.capitalize()} runs inside prefill and takes {percent(group_ms, prefill_ms):.1f}% of it "
                f"({group_ms:.2f} of {prefill_ms:.2f} ms).")
        subs = {s: v for s in substages(metrics_json, group) if (v := stage_stat(metrics_json, s)) is not None}
        if subs and group_ms > 0:
            top = max(subs, key=subs.get)
            text += f" Within {group}, {top} dominates with {percent(subs[top], group_ms):.1f}% ({subs[top]:.2f} ms)."
        takeaways[group] = text

    tpot_p50, tpot_mean = stat(metrics_json, "tpot_ms", "p50"), stat(metrics_json, "tpot_ms")
    if tpot_p50 is not None:
        text = f"Decode costs {tpot_p50:.2f} ms per output token (TPOT p50; mean {tpot_mean:.2f} ms)"
        rate = stat(metrics_json, "decode_tokens_per_s")
        text += f", {rate:.1f} tokens/s per sequence." if rate is not None else "."
        clauses = _efficiency_clauses(efficiency_of(metrics_json, "decode"))
        if clauses:
            text += " During decode " + "; ".join(clauses) + "."
        takeaways["decode"] = text

    prefill_clauses = _efficiency_clauses(efficiency_of(metrics_json, "prefill"))
    if prefill_clauses and prefill_ms is not None:
        takeaways["prefill"] = f"Prefill (TTFT {prefill_ms:.2f} ms mean): " + "; ".join(prefill_clauses) + "."

    dominant = dominant_stage(metrics_json)
    top = _largest_operator(metrics_json, dominant[0]) if dominant else None
    if top is not None:
        stage = dominant[0]
        text = (f"The largest operator in {stage} is {top['name']} (stage {top.get('stage', 'n/a')}): "
                f"{top['total_time_ms']:.2f} ms total over {top.get('calls', 'n/a')} calls in the profiled pass")
        stage_total = profiled_stage_total_ms(metrics_json, stage)
        if stage_total:
            text += f", {percent(top['total_time_ms'], stage_total):.1f}% of {stage}'s profiled time"
        takeaways["operators"] = text + "."

    headline = headline_overheads(metrics_json)
    if headline:
        parts = [f"{label} {ratio:.2f}x ({name})" for label, (name, ratio) in headline.items()]
        takeaways["profiler_overhead"] = (
            "Under the profiler, " + " and ".join(parts) + " of their timed times; operator milliseconds carry "
            "that inflation, their shares within a stage much less."
        )
    return takeaways


def derive_recommendations(metrics_json: Mapping[str, Any]) -> dict[str, str]:
    """{topic: recommendation} that follow from the same numbers as derive_takeaways."""
    recommendations: dict[str, str] = {}
    dominant = dominant_stage(metrics_json)
    if dominant is not None:
        stage, share = dominant
        if stage == "decode":
            text = f"Optimise decode first: it is {share:.1f}% of end-to-end time."
            eff = efficiency_of(metrics_json, "decode")
            busy, mbu = _finite(eff.get("busy_share")), _finite(eff.get("mbu"))
            verdict = boundness(eff)
            if verdict is not None and verdict[0] == "launch":
                busy_text = f"the device busy only {busy:.0%} of decode" if busy is not None else "decode launch-bound"
                text += (f" With {busy_text}, cut per-token launch overhead: CUDA graphs (torch.compile "
                         "mode='reduce-overhead') or more sequences per batch.")
            elif mbu is not None and mbu >= MEMORY_BOUND_MBU:
                text += (f" At MBU {mbu:.0%} decode is limited by memory traffic: lower-precision weights / KV "
                         "cache or larger batches raise tokens/s.")
            recommendations["decode"] = text
        else:
            text = f"Optimise prefill (time to first token) first: it is {share:.1f}% of end-to-end time."
            prefill_ms = stage_stat(metrics_json, "prefill")
            for group in groups_in_prefill(metrics_json):
                group_ms = stage_stat(metrics_json, group)
                if group_ms is None or not prefill_ms or group_ms / prefill_ms < 0.5:
                    continue
                subs = {s: v for s in substages(metrics_json, group) if (v := stage_stat(metrics_json, s)) is not None}
                top = max(subs, key=subs.get) if subs else group
                mode = (metrics_json.get("workload") or {}).get("image_mode")
                text += (f" {group.capitalize()} is {percent(group_ms, prefill_ms):.1f}% of prefill and {top} its "
                         f"largest part: fewer or smaller image views (image mode now: {mode or 'n/a'}) cut it most.")
            recommendations["prefill"] = text

    worst = max(headline_overheads(metrics_json).items(), key=lambda item: item[1][1], default=None)
    if worst is not None and worst[1][1] >= INFLATED_OVERHEAD:
        label, (name, ratio) = worst
        recommendations["profiling"] = (f"Read operator times as shares, not milliseconds: under the profiler "
                                        f"{label} took {ratio:.2f}x its timed time ({name}).")
    return recommendations
