"""report.md: the technical report of one run, from its RunRecord (+ operators.csv / kernels.csv).

Sections, each only when its numbers exist: run, environment, workload, hardware peaks, stage
timings (every stage of the record in its order, with the stage it is nested in and its share of
it), latency and throughput (TTFT and every other per-stage quantity: TPOT, decode step, tokens/s,
peak memory), efficiency, profiled pass and profiler overhead, top operators and kernels per stage,
energy and device readings, takeaways and recommendations. Times are milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from llm_perf_opt.record import RelatedRuns, RunRecord, StageRecord
from llm_perf_opt.reports.markdown import bullets, header, new_document, table, write_markdown
from llm_perf_opt.reports.takeaways import derive_recommendations, derive_takeaways
from llm_perf_opt.reports.view import (
    operator_share,
    ordered_stage_names,
    parent_of,
    pct,
    resolve_stage,
    share_of_parent,
    stage_display,
)
from llm_perf_opt.schema import E2E, PREFILL

TITLE = "Technical report"
STATS_SHOWN = ("mean", "std", "p50", "p90", "p99", "min", "max", "count")
QUANTITY_LABELS = {
    "ms": "time (ms)",
    "tpot_ms": "time per output token, TPOT (ms)",
    "step_ms": "decode step (ms)",
    "tokens_per_s": "tokens/s",
    "peak_mem_mib": "peak memory (MiB)",
}
EFFICIENCY_COLUMNS = (  # (header, Efficiency field)
    ("time (ms)", "time_ms"), ("TFLOP/s", "achieved_tflops"), ("GB/s", "achieved_gbps"),
    ("FLOP/byte", "intensity_flop_per_byte"), ("MFU", "mfu"), ("MBU", "mbu"), ("MFU achievable", "mfu_achievable"),
    ("MBU achievable", "mbu_achievable"), ("attainable TFLOP/s", "attainable_tflops"), ("busy share", "busy_share"),
    ("bound", "bound"),
)
PROFILED_COLUMNS = (  # (header, ProfiledStage field)
    ("ranges", "ranges"), ("profiled (ms)", "profiled_ms"), ("per execution (ms)", "per_execution_ms"),
    ("overhead ratio", "profiler_overhead_ratio"), ("device busy (ms)", "device_busy_ms"),
    ("device span (ms)", "device_span_ms"), ("busy share", "busy_share"), ("host gap (ms)", "host_gap_ms"),
    ("no-formula share", "no_formula_share"),
)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def key_value_table(md: Any, entries: Mapping[str, Any]) -> None:
    rows = [[k, " ".join(map(str, v)) if isinstance(v, list) else v] for k, v in entries.items()
            if _scalar(v) or (isinstance(v, list) and all(_scalar(x) for x in v))]
    table(md, ["key", "value"], rows, digits=3)


def present_columns(columns: Sequence[str], rows: list[list[Any]], keep: int = 1) -> tuple[list[str], list[list[Any]]]:
    """Drop the columns (after the first `keep`) in which no row has a value."""
    kept = [i for i in range(len(columns)) if i < keep or any(row[i] is not None for row in rows)]
    return [columns[i] for i in kept], [[row[i] for i in kept] for row in rows]


def _nested_in(record: RunRecord, stage: StageRecord) -> str:
    parent = parent_of(record, stage)
    return parent.label if parent is not None else "-"


def _share_text(record: RunRecord, stage: StageRecord) -> str | None:
    parent = parent_of(record, stage)
    if parent is None:
        return "-"  # the root: the whole request
    share = share_of_parent(record, stage)
    return None if share is None else f"{pct(share)} of {parent.label}"


def _stats_cells(stage: StageRecord, quantity: str) -> list[Any]:
    stats = stage.stats[quantity]
    return [stats.count if s == "count" else getattr(stats, s) for s in STATS_SHOWN]


def stage_section(md: Any, record: RunRecord) -> None:
    rows = [[stage.label, _nested_in(record, stage), stage.kind, *_stats_cells(stage, "ms"), _share_text(record, stage)]
            for stage in record.stages if "ms" in stage.stats]
    if not rows:
        return
    header(md, "Stage timings (timed pass)")
    md.new_paragraph(
        "Per request, in ms, for every stage of the run in its order. A nested stage runs inside the stage named "
        "in `nested in`: its time is part of that stage's, never added to it (a `sum_of_children` stage is the sum "
        "of its parts). Prefill and decode are disjoint parts of end to end."
    )
    table(md, ["stage", "nested in", "kind", *STATS_SHOWN, "share"], rows, digits=3)


def latency_section(md: Any, record: RunRecord) -> None:
    rows = []
    prefill = record.stage(PREFILL)
    if prefill is not None and "ms" in prefill.stats:
        rows.append(["time to first token, TTFT (ms)", prefill.label, *_stats_cells(prefill, "ms")])
    for stage in record.stages:
        for quantity in stage.stats:
            if quantity != "ms":
                rows.append([QUANTITY_LABELS.get(quantity, quantity), stage.label, *_stats_cells(stage, quantity)])
    if rows:
        header(md, "Latency and throughput")
        md.new_paragraph("TTFT = prefill time; TPOT = decode time / decode tokens; tokens/s of end to end = new "
                         "tokens / end-to-end time; tokens/s of decode = decode tokens / decode time.")
        table(md, ["metric", "stage", *STATS_SHOWN], rows, digits=3)


def hardware_section(md: Any, record: RunRecord) -> None:
    if record.hardware is not None:
        header(md, "Hardware peaks")
        key_value_table(md, record.hardware.model_dump())


def efficiency_section(md: Any, record: RunRecord) -> None:
    stages = [stage for stage in record.stages if stage.efficiency is not None]
    if not stages:
        return
    rows = [[stage.label, stage.flops, stage.bytes, *(getattr(stage.efficiency, f) for _, f in EFFICIENCY_COLUMNS)]
            for stage in stages]
    columns, rows = present_columns(["stage", "FLOPs", "bytes", *(h for h, _ in EFFICIENCY_COLUMNS)], rows)
    header(md, "Efficiency (FLOPs, MFU, MBU, bound)")
    md.new_paragraph("Each stage's FLOPs and bytes (one execution; decode: one step) over its own mean time "
                     "(decode: TPOT). MFU / MBU are fractions of the spec peaks; bound is compute, memory or "
                     "launch (device busy less than the launch threshold).")
    table(md, columns, rows, digits=4)


def profiled_section(md: Any, record: RunRecord) -> None:
    stages = [stage for stage in record.stages if stage.profiled is not None]
    if not stages:
        return
    header(md, "Profiled pass and profiler overhead")
    info = record.profiled_pass
    if info is not None:
        md.new_paragraph(
            f"torch.profiler over {info.inputs} input(s) x (prefill + {info.decode_steps} decode steps), "
            f"{info.event_count} trace events; trace: {info.trace}. Profiled time: "
            + ("the device-side span of the kernels launched in the stage's ranges" if info.time_basis == "device_span"
               else "the stage ranges' host duration")
            + ". overhead ratio = profiled time per execution / timed mean of the same stage (decode: per step "
              "over TPOT). busy share = kernel time / device span (a lower bound: the profiler widens host gaps)."
        )
    rows = [[stage.label, *(getattr(stage.profiled, f) for _, f in PROFILED_COLUMNS),
             stage.mean(stage.time_quantity)] for stage in stages]
    columns, rows = present_columns(["stage", *(h for h, _ in PROFILED_COLUMNS), "timed mean (ms)"], rows)
    table(md, columns, rows, digits=3)


def operator_rows(record: RunRecord, frame: pd.DataFrame, columns: Sequence[str], by: str, top_n: int
                  ) -> list[tuple[str, list[list[Any]]]]:
    """[(stage display name, rows)] per stage of an operators/kernels table, in the record's stage order,
    each stage's top-N rows by `by` with their share of the stage's profiled time."""
    groups = {stage: group for stage, group in frame.groupby("stage", sort=False)}
    result = []
    for name in ordered_stage_names(record, list(groups)):
        stage = resolve_stage(record, name)
        top = groups[name].nlargest(top_n, by)
        rows = [[*(row[c] for c in columns), operator_share(row[by], stage)] for _, row in top.iterrows()]
        result.append((stage_display(record, name), rows))
    return result


def operator_section(md: Any, record: RunRecord, operators: pd.DataFrame | None, kernels: pd.DataFrame | None,
                     top_n: int) -> None:
    header(md, "Top operators per stage (profiled pass)")
    if operators is not None and len(operators):
        md.new_paragraph("Each operator is charged to the innermost stage range that contains it; ranked by total "
                         "time (children included). share = total time / the stage's profiled time. operators.md "
                         "has the full tables.")
        columns = ["name", "calls", "total_time_ms", "mean_time_ms", "self_cpu_ms", "total_cpu_ms"]
        if "total_device_ms" in operators and operators["total_device_ms"].notna().any():
            columns += ["self_device_ms", "total_device_ms"]
        for label, rows in operator_rows(record, operators, columns, "total_time_ms", top_n):
            header(md, label, level=3)
            table(md, [*columns, "share of stage"], rows, digits=3)
    elif record.top_operators_by_stage:
        keys = ordered_stage_names(record, list(record.top_operators_by_stage))
        for key in keys:
            stage = resolve_stage(record, key)
            header(md, stage_display(record, key), level=3)
            table(md, ["name", "calls", "total_time_ms", "mean_time_ms", "share of stage"],
                  [[r.name, r.calls, r.total_time_ms, r.mean_time_ms, operator_share(r.total_time_ms, stage)]
                   for r in record.top_operators_by_stage[key][:top_n]], digits=3)
    else:
        md.new_paragraph("No operator data: the profiled pass did not run.")
    if kernels is not None and len(kernels):
        header(md, "Top kernels per stage (device time)")
        columns = ["name", "calls", "device_ms", "mean_device_ms"]
        for label, rows in operator_rows(record, kernels, columns, "device_ms", top_n):
            header(md, label, level=3)
            table(md, [*columns, "share of stage"], rows, digits=3)


def energy_section(md: Any, record: RunRecord) -> None:
    methods = record.energy.methods if record.energy is not None else {}
    rows = [[stage.label, stage.energy_j.get("mean"), stage.energy_j.get("per_token"), methods.get(stage.key)]
            for stage in record.stages if stage.energy_j]
    if rows:
        header(md, "Energy")
        text = "Joules per execution of the stage (end to end: per page) and per output token (decode)."
        batch = (record.workload.model_extra or {}).get("batch_size")
        e2e = record.stage(E2E)
        if batch and batch > 1 and e2e is not None and "per_page" in e2e.energy_j:
            text = (f"Joules per execution of the stage (end to end: per batch of up to {batch} pages; "
                    f"{e2e.energy_j['per_page']:.3f} J per page) and per output token (decode).")
        if record.energy is not None and record.energy.power_source:
            text += f" Power source: {record.energy.power_source}."
        if record.energy is not None and record.energy.counter_period_ms is not None:
            text += f" Energy counter update period: {record.energy.counter_period_ms:.1f} ms."
        md.new_paragraph(text)
        table(md, ["stage", "J per execution", "J per token", "method"], rows, digits=3)
    if record.device:
        header(md, "Device readings (timed samples)")
        key_value_table(md, record.device)


def write_technical_report(record: RunRecord, path: str | Path, operators: pd.DataFrame | None = None,
                           kernels: pd.DataFrame | None = None, top_n: int = 10,
                           related: RelatedRuns | None = None) -> Path:
    """Write report.md for `record` to exactly `path`; operators / kernels are operators.csv / kernels.csv,
    `related` is related_runs.json (what recommended configurations measured in the experiment)."""
    md = new_document(TITLE)
    header(md, "Run")
    if record.status != "FINISHED":
        md.new_paragraph(f"**The run did not finish** ({record.status}: {record.error or 'no error recorded'}); "
                         "the numbers cover the samples measured before it stopped.")
    key_value_table(md, {**record.run.model_dump(), "status": record.status, "error": record.error,
                         "samples": record.samples, "schema_version": record.schema_version})
    if record.env:
        header(md, "Environment")
        key_value_table(md, record.env)
    header(md, "Workload")
    key_value_table(md, record.workload.model_dump(exclude={"inputs"}))
    if record.workload.inputs:
        table(md, ["input", "prompt tokens", "image tokens"],
              [[i.input_id, i.prompt_tokens, i.image_tokens] for i in record.workload.inputs])
    hardware_section(md, record)
    stage_section(md, record)
    latency_section(md, record)
    efficiency_section(md, record)
    profiled_section(md, record)
    operator_section(md, record, operators, kernels, top_n)
    energy_section(md, record)
    header(md, "Takeaways")
    takeaways = derive_takeaways(record, operators)
    if takeaways:
        bullets(md, [f"**{k}**: {v}" for k, v in takeaways.items()])
    else:
        md.new_paragraph("No takeaways: the run has no stage timings.")
    recommendations = derive_recommendations(record, related)
    if recommendations:
        header(md, "Recommendations")
        bullets(md, [f"**{k}**: {v}" for k, v in recommendations.items()])
    return write_markdown(md, path)
