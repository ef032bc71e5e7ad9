"""Assemble the run record from the passes' results: pure functions from plain data to a RunRecord.

Each derived number is made here once, for every stage of the tree alike:
- statistics per stage and quantity (analysis.stats) and each stage's share of its parent (means);
- FLOPs/bytes from the counted pass and the rates over that same stage's time (analysis.efficiency);
- the profiled pass's per-stage times, the profiler's overhead against the timed pass, the device busy
  share and the share of time without a FLOP formula (analysis.coverage);
- energy per stage and device-wide readings (analysis.energy).
Nothing here imports torch: the passes' results arrive as DataFrames and dicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from llm_perf_opt.analysis.coverage import flop_coverage
from llm_perf_opt.analysis.efficiency import DEFAULT_LAUNCH_BUSY_SHARE, stage_efficiency
from llm_perf_opt.analysis.energy import EnergyReport
from llm_perf_opt.analysis.peaks import HardwarePeaks
from llm_perf_opt.analysis.stages import group_totals
from llm_perf_opt.analysis.stats import stage_statistics
from llm_perf_opt.analysis.throughput import run_throughput
from llm_perf_opt.record import (
    Efficiency,
    EnergyInfo,
    Peaks,
    ProfiledPassInfo,
    ProfiledStage,
    RunInfo,
    RunRecord,
    StageRecord,
    Stats,
    WorkloadInfo,
    flat_metrics,
)
from llm_perf_opt.schema import DECODE, StageTree


@dataclass
class ProfiledTables:
    """The profiled pass's result as data (passes.profiled.ProfiledResult carries the same fields)."""

    operators: pd.DataFrame
    stage_times: pd.DataFrame
    info: ProfiledPassInfo
    formula_operators: frozenset[str] | None = None  # from the counted pass's registry; None: no coverage


@dataclass
class RunParts:
    """Everything a run measured so far; any part may be missing (a pass disabled, failed or not reached)."""

    tree: StageTree
    run: RunInfo
    workload: WorkloadInfo
    env: dict[str, Any]
    status: str = "RUNNING"
    error: str | None = None
    peaks: HardwarePeaks | None = None
    samples: pd.DataFrame | None = None
    decode_steps: pd.DataFrame | None = None
    stage_costs: dict[str, dict[str, float]] = field(default_factory=dict)
    measured_over_analytic: dict[str, float] = field(default_factory=dict)
    profiled: ProfiledTables | None = None
    energy: EnergyReport | None = None
    operator_summary: dict[str, Any] = field(default_factory=dict)
    launch_busy_share: float = DEFAULT_LAUNCH_BUSY_SHARE


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and isinstance(value, (int, float)) and math.isfinite(value) else None


def _share(stages: Mapping[str, StageRecord], stage: StageRecord) -> float | None:
    parent = stages.get(stage.parent) if stage.parent else None
    mine, theirs = stage.mean(), parent.mean() if parent else None
    return mine / theirs if mine is not None and theirs else None


def _profiled_stages(tables: ProfiledTables, tree: StageTree,
                     timed_mean: Mapping[str, float]) -> dict[str, ProfiledStage]:
    """Per stage: the stage-time table's row, time per execution, overhead ratio, busy share, coverage.

    Per execution: prefill and sub-stages per profiled input, decode per step (one range each). Groups
    have no range of their own: their time and busy share come from their children's sums.
    """
    rows = {row["stage"]: row for row in tables.stage_times.to_dict(orient="records")}
    per_execution = {stage: row["profiled_ms"] / (row["ranges"] if stage == DECODE else tables.info.inputs)
                     for stage, row in rows.items() if _finite(row["profiled_ms"]) is not None}
    per_execution = group_totals(per_execution, tree)
    busy = group_totals({s: r["device_busy_ms"] for s, r in rows.items() if _finite(r["device_busy_ms"])}, tree)
    span = group_totals({s: r["device_span_ms"] for s, r in rows.items() if _finite(r["device_span_ms"])}, tree)
    coverage = flop_coverage(tables.operators, tables.formula_operators) if tables.formula_operators else {}
    result = {}
    for stage in tree:
        row = rows.get(stage.key)
        if row is None and stage.key not in per_execution:
            continue
        derived = {"ranges", "device_busy_ms", "device_span_ms", "busy_share"}
        fields = {k: _finite(v) for k, v in (row or {}).items() if k in ProfiledStage.model_fields and k not in derived}
        own = per_execution.get(stage.key)
        timed = timed_mean.get(stage.key)
        result[stage.key] = ProfiledStage(
            **fields,
            ranges=int(row["ranges"]) if row else 0,
            per_execution_ms=own,
            device_busy_ms=busy.get(stage.key), device_span_ms=span.get(stage.key),
            busy_share=busy[stage.key] / span[stage.key] if span.get(stage.key) and stage.key in busy else None,
            profiler_overhead_ratio=own / timed if own is not None and timed else None,
            no_formula_share=coverage.get(stage.key),
        )
    return result


def build_record(parts: RunParts) -> RunRecord:
    """The run record of what `parts` holds; `metrics` is its flat view (exactly what MLflow gets)."""
    tree = parts.tree
    samples = parts.samples if parts.samples is not None else pd.DataFrame()
    stats = stage_statistics(samples, parts.decode_steps, tree)
    stages = {s.key: StageRecord(key=s.key, parent=s.parent, label=s.label, kind=s.kind, time_quantity=s.time_quantity,
                                 cost_prefix=s.cost_prefix,
                                 stats={q: Stats(**v) for q, v in stats.get(s.key, {}).items()})
              for s in tree}
    # The profiler's per-step decode time compares with the timed per-step mean, the rest with ms.
    timed_mean = {key: (record.mean("step_ms") if key == DECODE else record.mean()) for key, record in stages.items()}
    profiled = _profiled_stages(parts.profiled, tree, timed_mean) if parts.profiled else {}
    times = {key: record.mean(record.time_quantity) for key, record in stages.items()}
    efficiency = stage_efficiency(parts.stage_costs, {k: v for k, v in times.items() if v is not None}, parts.peaks,
                                  {k: p.busy_share for k, p in profiled.items() if p.busy_share is not None},
                                  parts.launch_busy_share)
    energy = parts.energy
    for key, record in stages.items():
        record.share_of_parent = _share(stages, record)
        costs = parts.stage_costs.get(key, {})
        record.flops, record.bytes = costs.get("flops"), costs.get("bytes")
        record.flops_measured_over_analytic = parts.measured_over_analytic.get(key)
        if key in efficiency:
            record.efficiency = Efficiency(**{k: v for k, v in efficiency[key].items() if k in Efficiency.model_fields})
        record.profiled = profiled.get(key)
        record.energy_j = dict(energy.stage_energy_j.get(key, {})) if energy else {}
    record = RunRecord(
        status=parts.status, error=parts.error, run=parts.run, workload=parts.workload, env=parts.env,
        hardware=Peaks(**parts.peaks.as_record()) if parts.peaks else None,
        samples=len(samples), stages=list(stages.values()), throughput=run_throughput(samples),
        device=dict(energy.device) if energy else {},
        profiled_pass=parts.profiled.info if parts.profiled else None,
        energy=EnergyInfo(methods=energy.methods, counter_period_ms=energy.counter_period_ms,
                          power_source=energy.power_source) if energy else None,
        **parts.operator_summary,
    )
    record.metrics = flat_metrics(record)
    return record
