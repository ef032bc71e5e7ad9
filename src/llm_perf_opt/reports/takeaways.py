"""Takeaways and recommendations derived from one run's RunRecord, each citing its numbers.

Everything is read from the record (stage nesting from `parent`, names from `label`); a statement
whose numbers are absent is left out, never made from a zero.

Takeaways ({topic: sentence}):
- end_to_end: each child of e2e (prefill, decode) as a share of e2e's mean time (the record's
  share_of_parent); the largest dominates. Only when every child is timed (else which one dominates
  is unknown); the same holds for a group's dominant child.
- <group> (each sum_of_children stage nested in prefill, e.g. vision): its share of its parent and
  its child with the largest mean, with that child's share of the group.
- decode: TPOT (p50, mean) and decode tokens/s; with decode's efficiency: busy share, MBU, MFU and a
  verdict: the efficiency's `bound` ("launch" | "memory" | "compute") when present, else a busy share
  below DEFAULT_LAUNCH_BUSY_SHARE reads as launch-bound and MBU at or above MEMORY_BOUND_MBU as
  memory-bound.
- prefill: TTFT (prefill's mean) with prefill's MFU / MBU / verdict, when its efficiency gives them.
- top operator, <stage label>: per stage with operators, the one with the most exclusive (self) time
  and its share of the stage's profiled time (profiled.profiled_ms). Self time is the time in the
  operator itself, not in the operators it calls, so nested operators (aten::linear and the
  aten::addmm it runs) are never counted twice: `self_device_ms` when the run measured device time
  (a GPU run), else `self_cpu_ms`; total time only for operator lists that carry no self time at all
  (`operator_basis`). Rows come from operators.csv when given, else the record's top_operators lists.
- profiler_overhead: profiler_overhead_ratio of prefill and decode (per step).
- flop_coverage: stages with MFU where more than HIGH_NO_FORMULA_SHARE of the profiled time is in
  operators without a FLOP formula.
- energy: e2e energy per page, decode energy per output token, mean board power.

Recommendations follow the same numbers: work on the dominant stage of e2e (decode: launch overhead
or memory traffic by its verdict; prefill: the group that is at least half of prefill, and its
largest part), and read operator times as shares when an overhead ratio reaches INFLATED_OVERHEAD.
A recommended configuration (launch-bound decode: a compiled decode with a static cache, larger batches;
memory-bound decode: larger batches) names what a run of it in the same experiment measured, or says it
is untested here (reports/measured_effects.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import ValidationError

from llm_perf_opt.analysis.efficiency import DEFAULT_LAUNCH_BUSY_SHARE
from llm_perf_opt.record import Efficiency, OperatorRecord, RelatedRuns, RunRecord, StageRecord
from llm_perf_opt.reports.measured_effects import compiled_decode_effect, larger_batch_effect
from llm_perf_opt.reports.view import finite, operator_share, pct, resolve_stage, share_of_parent

if TYPE_CHECKING:
    import pandas as pd
from llm_perf_opt.schema import DECODE, E2E, PREFILL

# Used only when a stage's efficiency has no `bound` verdict of its own (the pipeline's verdict
# applies the run's hardware.launch_busy_share).
LAUNCH_BOUND_BUSY_SHARE = DEFAULT_LAUNCH_BUSY_SHARE  # device busy < 50% of the stage: gaps between kernels
MEMORY_BOUND_MBU = 0.5  # >= 50% of peak memory bandwidth used: bandwidth is the limit to watch
INFLATED_OVERHEAD = 1.5  # profiled / timed stage time from which operator milliseconds mislead
DOMINANT_GROUP_SHARE = 0.5  # a group at least this share of prefill earns a recommendation
HIGH_NO_FORMULA_SHARE = 0.5  # above this share of time without FLOP formulas, MFU understates the work

VERDICTS = {
    "launch": "launch-bound (the device waits for the host between kernels)",
    "memory": "memory-bound (bytes moved, not arithmetic, set the pace)",
    "compute": "compute-bound (arithmetic sets the pace)",
}


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _mean(stage: StageRecord | None, quantity: str = "ms", stat: str = "mean") -> float | None:
    if stage is None or quantity not in stage.stats:
        return None
    return finite(getattr(stage.stats[quantity], stat))


def shares_of_children(record: RunRecord, key: str) -> list[tuple[StageRecord, float, float]] | None:
    """(child, mean ms, share of `key`) for every child of `key`, largest first; None unless `key` and all
    its children are timed (which child dominates is unknown while one of them is missing)."""
    children = record.children(key)
    rows = [(child, _mean(child), share_of_parent(record, child)) for child in children]
    if _mean(record.stage(key)) is None or not rows or any(m is None or s is None for _, m, s in rows):
        return None
    return sorted(rows, key=lambda row: row[1], reverse=True)


def dominant_child(record: RunRecord, key: str) -> tuple[StageRecord, float] | None:
    """The child of `key` with the largest mean ms and its share of `key` (0..1), or None."""
    rows = shares_of_children(record, key)
    return (rows[0][0], rows[0][2]) if rows else None


def groups_in(record: RunRecord, key: str) -> list[StageRecord]:
    """The sum_of_children stages nested (at any depth) in `key`, in record order."""
    within = {s.key for s in record.tree().descendants(key)}
    return [s for s in record.stages if s.key in within and s.kind == "sum_of_children"]


def boundness(eff: Efficiency | None) -> tuple[str, str] | None:
    """(verdict, its source): the efficiency's `bound` label when given, else busy share / MBU."""
    if eff is None:
        return None
    if eff.bound:
        return eff.bound, "efficiency verdict"
    busy, mbu = finite(eff.busy_share), finite(eff.mbu)
    if busy is not None and busy < LAUNCH_BOUND_BUSY_SHARE:
        return "launch", f"busy share below {LAUNCH_BOUND_BUSY_SHARE:.0%}"
    if mbu is not None and mbu >= MEMORY_BOUND_MBU:
        return "memory", f"MBU at or above {MEMORY_BOUND_MBU:.0%}"
    return None


def efficiency_clauses(eff: Efficiency | None) -> list[str]:
    if eff is None:
        return []
    clauses = []
    busy, mbu, mfu = finite(eff.busy_share), finite(eff.mbu), finite(eff.mfu)
    if busy is not None:
        clauses.append(f"the device is busy {busy:.0%} of the time")
    if mbu is not None:
        clauses.append(f"MBU {pct(mbu)}")
    if mfu is not None:
        clauses.append(f"MFU {pct(mfu)}")
    verdict = boundness(eff)
    if verdict is not None:
        label, source = verdict
        clauses.append(f"{VERDICTS.get(label, label)} ({source})")
    return clauses


def _end_to_end(record: RunRecord) -> str | None:
    shares = shares_of_children(record, E2E)
    if shares is None:
        return None
    e2e_mean = _mean(record.stage(E2E))
    first, mean, share = shares[0]
    text = (f"{_capital(first.label)} dominates end-to-end time: {pct(share)} "
            f"({mean:.2f} ms of {e2e_mean:.2f} ms mean per request).")
    for child, child_mean, child_share in shares[1:]:
        text += f" {_capital(child.label)} takes {pct(child_share)} ({child_mean:.2f} ms)."
    return text


def _group(record: RunRecord, group: StageRecord) -> str | None:
    parent = record.stage(group.parent) if group.parent else None
    group_ms, parent_ms, share = _mean(group), _mean(parent), share_of_parent(record, group)
    if parent is None or group_ms is None or parent_ms is None or share is None:
        return None
    text = (f"{_capital(group.label)} runs inside {parent.label} and takes {pct(share)} of it "
            f"({group_ms:.2f} of {parent_ms:.2f} ms).")
    top = dominant_child(record, group.key)
    if top is not None:
        child, child_share = top
        text += (f" Within {group.label}, {child.label} dominates with {pct(child_share)} "
                 f"({_mean(child):.2f} ms).")
    return text


def _decode(record: RunRecord) -> str | None:
    decode = record.stage(DECODE)
    tpot_p50, tpot_mean = _mean(decode, "tpot_ms", "p50"), _mean(decode, "tpot_ms")
    if tpot_p50 is None or tpot_mean is None:
        return None
    text = f"Decode costs {tpot_p50:.2f} ms per output token (TPOT p50; mean {tpot_mean:.2f} ms)"
    rate = _mean(decode, "tokens_per_s")
    text += f", {rate:.1f} tokens/s per sequence." if rate is not None else "."
    clauses = efficiency_clauses(decode.efficiency)
    if clauses:
        text += " During decode " + "; ".join(clauses) + "."
    return text


def _prefill(record: RunRecord) -> str | None:
    prefill = record.stage(PREFILL)
    ttft = _mean(prefill)
    clauses = efficiency_clauses(prefill.efficiency) if prefill is not None else []
    if ttft is None or not clauses:
        return None
    return f"Prefill (TTFT {ttft:.2f} ms mean): " + "; ".join(clauses) + "."


class OperatorBasis(NamedTuple):
    """What operators are ranked on: an OperatorRecord field, named in a sentence and as a table column."""

    field: str
    name: str
    heading: str


TOP_LEVEL = OperatorBasis("top_level_ms", "time in calls made by the model code itself (what they call included)",
                          "Time incl. what it calls (ms)")
SELF_DEVICE = OperatorBasis("self_device_ms", "self device time", "Self device time (ms)")
SELF_CPU = OperatorBasis("self_cpu_ms", "self CPU time", "Self CPU time (ms)")
TOTAL = OperatorBasis("total_time_ms", "total time", "Total (ms)")


def _row(values: dict[str, Any]) -> OperatorRecord | None:
    try:
        return OperatorRecord.model_validate({k: v for k, v in values.items() if k in OperatorRecord.model_fields})
    except ValidationError:
        return None  # a row without a stage, name or call count cannot be shown


def operator_rows(record: RunRecord, operators: pd.DataFrame | None = None) -> list[OperatorRecord]:
    """Every operator row of the run: operators.csv's table when given, else the record's top_operators and
    top_operators_by_stage lists, each (stage, name) once."""
    if operators is not None and len(operators):
        return [row for values in operators.to_dict(orient="records") if (row := _row(values)) is not None]
    rows: dict[tuple[str, str], OperatorRecord] = {}
    for row in [*record.top_operators, *(r for listed in record.top_operators_by_stage.values() for r in listed)]:
        rows.setdefault((row.stage, row.name), row)
    return list(rows.values())


def operator_basis(rows: list[OperatorRecord]) -> OperatorBasis:
    """One level of the operator tree: the operators the model code calls directly, with their inclusive time
    (no listed operator runs inside another, nothing counted twice); for rows without that column (older
    runs), self device time on a GPU run, else self CPU time; total time only when the rows carry no self
    time at all (then nested operators can each appear)."""
    for basis in (TOP_LEVEL, SELF_DEVICE, SELF_CPU):
        if sum(value for row in rows if (value := finite(getattr(row, basis.field))) is not None) > 0:
            return basis
    return TOTAL


def ranked_operators(rows: list[OperatorRecord], basis: OperatorBasis) -> list[tuple[OperatorRecord, float]]:
    """(row, its time on `basis`) for every row with a time above zero on it, largest first (ties keep the rows'
    order): an operator with no time on the basis (no top-level calls, no self time) is no cost centre."""
    ranked = [(row, value) for row in rows if (value := finite(getattr(row, basis.field))) is not None and value > 0]
    return sorted(ranked, key=lambda item: item[1], reverse=True)


def top_operator(record: RunRecord, stage: StageRecord, rows: list[OperatorRecord] | None = None,
                 basis: OperatorBasis | None = None) -> tuple[OperatorRecord, float, float | None] | None:
    """(row, its time on `basis`, share of the stage's profiled time or None) of the stage's largest operator;
    `rows` default to the record's lists, `basis` to `operator_basis(rows)`."""
    rows = operator_rows(record) if rows is None else rows
    basis = basis or operator_basis(rows)
    own = [row for row in rows if (resolved := resolve_stage(record, row.stage)) is not None
           and resolved.key == stage.key]
    ranked = ranked_operators(own, basis)
    if not ranked:
        return None
    top, value = ranked[0]
    return top, value, operator_share(value, stage)


def _operators(record: RunRecord, operators: pd.DataFrame | None = None) -> dict[str, str]:
    takeaways = {}
    rows = operator_rows(record, operators)
    basis = operator_basis(rows)
    for stage in record.stages:
        top = top_operator(record, stage, rows, basis)
        if top is None:
            continue
        row, value, share = top
        where = (f"directly in {stage.label} (outside the stages nested in it)" if record.children(stage.key)
                 else f"in {stage.label}")
        if basis is TOTAL:
            text = f"The largest operator {where} is {row.name}: {value:.2f} ms total"
        elif basis is TOP_LEVEL:
            text = (f"The operator the model code calls {where} that takes the most time (including the operators "
                    f"it calls) is {row.name}: {value:.2f} ms")
        else:
            text = (f"The operator with the most {basis.name} {where} (its own time, not that of the operators it "
                    f"calls) is {row.name}: {value:.2f} ms")
        calls = row.top_level_calls if basis is TOP_LEVEL else row.calls
        text += f" over {calls} calls in the profiled pass"
        if share is not None:
            text += f", {pct(share)} of {stage.label}'s profiled time ({stage.profiled.profiled_ms:.2f} ms)"
        takeaways[f"top operator, {stage.label}"] = text + "."
    return takeaways


def headline_overheads(record: RunRecord) -> dict[str, float]:
    """{label: profiler overhead ratio} of prefill and a decode step, the stages long enough to time well."""
    result = {}
    for key, label in ((PREFILL, "prefill"), (DECODE, "a decode step")):
        stage = record.stage(key)
        ratio = finite(stage.profiled.profiler_overhead_ratio) if stage and stage.profiled else None
        if ratio is not None:
            result[label] = ratio
    return result


def _coverage(record: RunRecord) -> str | None:
    low = [(stage, share) for stage in record.stages
           if stage.profiled is not None and stage.efficiency is not None and finite(stage.efficiency.mfu) is not None
           and (share := finite(stage.profiled.no_formula_share)) is not None and share > HIGH_NO_FORMULA_SHARE]
    if not low:
        return None
    listed = ", ".join(f"{stage.label} {share:.0%}" for stage, share in low)
    return (f"FLOP counts cover little of the profiled time in {listed} (time in operators without a FLOP "
            f"formula, above {HIGH_NO_FORMULA_SHARE:.0%}): MFU there understates the work done.")


def _energy(record: RunRecord) -> str | None:
    e2e, decode = record.stage(E2E), record.stage(DECODE)
    # With batches, e2e's mean is one batch's energy; per_page divides by the pages.
    per_page = finite(e2e.energy_j.get("per_page", e2e.energy_j.get("mean"))) if e2e is not None else None
    per_token = finite(decode.energy_j.get("per_token")) if decode is not None else None
    parts = []
    if per_page is not None:
        parts.append(f"{per_page:.2f} J per page end to end")
    if per_token is not None:
        parts.append(f"{per_token:.3f} J per output token in decode")
    if not parts:
        return None
    text = "Energy: " + ", ".join(parts)
    power = finite(record.device.get("power_w_mean"))
    return text + (f"; the GPU drew {power:.1f} W on average." if power is not None else ".")


def derive_takeaways(record: RunRecord, operators: pd.DataFrame | None = None) -> dict[str, str]:
    """{topic: one sentence with its supporting numbers} (topics and rules in the module docstring);
    `operators` is the run's operators.csv table when there is one (else the record's operator lists)."""
    takeaways: dict[str, str] = {}
    end_to_end = _end_to_end(record)
    if end_to_end:
        takeaways["end_to_end"] = end_to_end
    for group in groups_in(record, PREFILL):
        text = _group(record, group)
        if text:
            takeaways[group.label] = text
    for topic, text in (("decode", _decode(record)), ("prefill", _prefill(record))):
        if text:
            takeaways[topic] = text
    takeaways.update(_operators(record, operators))
    headline = headline_overheads(record)
    if headline:
        parts = [f"{label} {ratio:.2f}x" for label, ratio in headline.items()]
        takeaways["profiler_overhead"] = (
            "Under the profiler, " + " and ".join(parts) + " of their timed times; operator milliseconds carry "
            "that inflation, their shares within a stage much less.")
    for topic, text in (("flop_coverage", _coverage(record)), ("energy", _energy(record))):
        if text:
            takeaways[topic] = text
    return takeaways


def _decode_recommendation(record: RunRecord, share: float, related: RelatedRuns | None = None) -> str:
    decode = record.stage(DECODE)
    text = f"Optimise decode first: it is {pct(share)} of end-to-end time."
    eff = decode.efficiency if decode is not None else None
    verdict = boundness(eff)
    busy = finite(eff.busy_share) if eff is not None else None
    mbu = finite(eff.mbu) if eff is not None else None
    compiled = record.workload.compile == "reduce-overhead"
    if verdict is not None and verdict[0] == "launch" and compiled:
        busy_text = f"the device busy only {busy:.0%} of decode" if busy is not None else "decode launch-bound"
        text += (f" With {busy_text} although it already replays CUDA graphs (static KV cache + "
                 "reduce-overhead), give each step more work: more sequences per batch "
                 f"({larger_batch_effect(record, related)}).")
    elif verdict is not None and verdict[0] == "launch":
        busy_text = f"the device busy only {busy:.0%} of decode" if busy is not None else "decode launch-bound"
        text += (f" With {busy_text}, cut per-token launch overhead: CUDA graphs (torch.compile "
                 f"mode='reduce-overhead' with a static KV cache; {compiled_decode_effect(record, related)}) or "
                 f"more sequences per batch ({larger_batch_effect(record, related)}).")
    elif mbu is not None and mbu >= MEMORY_BOUND_MBU:
        text += (f" At MBU {mbu:.0%} decode is limited by memory traffic: lower-precision weights / KV "
                 f"cache or larger batches raise tokens/s (larger batches: {larger_batch_effect(record, related)}).")
    return text


def _prefill_recommendation(record: RunRecord, share: float) -> str:
    text = f"Optimise prefill (time to first token) first: it is {pct(share)} of end-to-end time."
    prefill = record.stage(PREFILL)
    for group in record.children(PREFILL):
        group_share = share_of_parent(record, group)
        if group.kind != "sum_of_children" or group_share is None or group_share < DOMINANT_GROUP_SHARE:
            continue
        top = dominant_child(record, group.key)
        part = top[0].label if top is not None else group.label
        text += f" {_capital(group.label)} is {pct(group_share)} of {prefill.label} and {part} its largest part"
        image_mode = (record.workload.model_extra or {}).get("image_mode")
        text += (f": fewer or smaller image views (image mode now: {image_mode}) cut it most." if image_mode
                 else ": work on it first.")
    return text


def derive_recommendations(record: RunRecord, related: RelatedRuns | None = None) -> dict[str, str]:
    """{topic: recommendation} that follow from the same numbers as derive_takeaways. A recommended configuration
    (a compiled decode, larger batches) cites what a run of it in `related` (related_runs.json: the experiment's
    other runs) measured, or says it is untested here (reports/measured_effects.py)."""
    recommendations: dict[str, str] = {}
    dominant = dominant_child(record, E2E)
    if dominant is not None:
        stage, share = dominant
        if stage.key == DECODE:
            recommendations["decode"] = _decode_recommendation(record, share, related)
        elif stage.key == PREFILL:
            recommendations["prefill"] = _prefill_recommendation(record, share)
    worst = max(headline_overheads(record).items(), key=lambda item: item[1], default=None)
    if worst is not None and worst[1] >= INFLATED_OVERHEAD:
        label, ratio = worst
        recommendations["profiling"] = (f"Read operator times as shares, not milliseconds: under the profiler "
                                        f"{label} took {ratio:.2f}x its timed time.")
    return recommendations
