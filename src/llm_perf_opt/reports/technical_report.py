"""report.md: the technical report of one run, from metrics.json (+ operators.csv / kernels.csv).

Sections: run, environment (metrics.json["env"]), workload, stage timings (mean, std, p50, p90, p99
per stage with its nesting: vision sub-stages within vision, vision within prefill), latency and
throughput (TTFT, TPOT, end-to-end, tokens/s, peak memory), top operators (and kernels) per stage,
profiler overhead per stage, efficiency (FLOPs/MFU/MBU/bound, when metrics.json has "efficiency"),
takeaways and recommendations. All times are milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from llm_perf_opt.profiling.profiled_pass import DECODE_STEP, overhead_metric_name, timed_stage_ms
from llm_perf_opt.reports.markdown import bullets, frame_table, header, new_document, table, write_markdown
from llm_perf_opt.reports.takeaways import derive_recommendations, derive_takeaways

TITLE = "Technical report"
STATS_SHOWN = ("mean", "std", "p50", "p90", "p99", "min", "max", "count")
LATENCY_COLUMNS = {
    "ttft_ms": "TTFT (ms)",
    "tpot_ms": "TPOT (ms)",
    "e2e_ms": "end-to-end (ms)",
    "tokens_per_s": "tokens/s (whole request)",
    "decode_tokens_per_s": "tokens/s (decode)",
    "prefill_peak_mem_mib": "prefill peak memory (MiB)",
    "decode_peak_mem_mib": "decode peak memory (MiB)",
}


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _key_value_table(md: Any, entries: Mapping[str, Any]) -> None:
    rows = [[k, " ".join(map(str, v)) if isinstance(v, list) else v] for k, v in entries.items()
            if _scalar(v) or (isinstance(v, list) and all(_scalar(x) for x in v))]
    table(md, ["key", "value"], rows, digits=3)


def _stats_row(label: list[Any], stats: Mapping[str, Any]) -> list[Any]:
    return label + [stats.get(s) if s != "count" else (int(stats["count"]) if "count" in stats else None)
                    for s in STATS_SHOWN]


def _stage_section(md: Any, metrics_json: Mapping[str, Any]) -> None:
    header(md, "Stage timings (timed pass)")
    md.new_paragraph(
        "Per request, in ms. Nesting: the vision sub-stages (vision/sam, vision/encoder, vision/projector) are "
        "nested within vision, and vision is nested within prefill: their times are part of prefill's, never "
        "added to it. Prefill and decode are disjoint; decode step is one decode token."
    )
    rows = [_stats_row([name, entry.get("nested_in") or "-"], entry.get("ms") or {})
            for name, entry in (metrics_json.get("stages") or {}).items() if entry.get("ms")]
    step = (metrics_json.get("summary") or {}).get("decode_step_ms")
    if step:
        rows.append(_stats_row(["decode step", "decode"], step))
    table(md, ["stage", "nested in", *STATS_SHOWN], rows, digits=3)


def _latency_section(md: Any, metrics_json: Mapping[str, Any]) -> None:
    summary = metrics_json.get("summary") or {}
    rows = [_stats_row([label], summary[col]) for col, label in LATENCY_COLUMNS.items() if summary.get(col)]
    if rows:
        header(md, "Latency and throughput")
        md.new_paragraph("TTFT = prefill time; TPOT = decode time / decode tokens; tokens/s (whole request) = new "
                         "tokens / end-to-end time; tokens/s (decode) = decode tokens / decode time.")
        table(md, ["metric", *STATS_SHOWN], rows, digits=3)


def _operator_section(md: Any, metrics_json: Mapping[str, Any], operators: pd.DataFrame | None,
                      kernels: pd.DataFrame | None, top_n: int) -> None:
    header(md, "Top operators per stage (profiled pass)")
    profiled = metrics_json.get("profiled_pass") or {}
    if profiled:
        md.new_paragraph(
            f"torch.profiler over {profiled.get('inputs')} input(s) x (prefill + {profiled.get('decode_steps')} decode "
            f"steps); trace: {profiled.get('trace')}. Each operator is charged to the innermost stage range that "
            "contains it; ranked by total time (children included)."
        )
    if operators is not None and len(operators):
        columns = ["name", "calls", "total_time_ms", "mean_time_ms", "self_cpu_ms", "total_cpu_ms"]
        if operators["total_device_ms"].notna().any():
            columns += ["self_device_ms", "total_device_ms"]
        for stage, group in operators.groupby("stage", sort=False):
            header(md, f"{stage}", level=3)
            frame_table(md, group.nlargest(top_n, "total_time_ms"), columns)
    elif metrics_json.get("top_operators_by_stage"):
        for stage, records in metrics_json["top_operators_by_stage"].items():
            header(md, f"{stage}", level=3)
            table(md, ["name", "calls", "total_time_ms", "mean_time_ms"],
                  [[r.get("name"), r.get("calls"), r.get("total_time_ms"), r.get("mean_time_ms")] for r in records],
                  digits=3)
    else:
        md.new_paragraph("No operator data: the profiled pass did not run.")
    if kernels is not None and len(kernels):
        header(md, "Top kernels per stage (device time)")
        for stage, group in kernels.groupby("stage", sort=False):
            header(md, f"{stage}", level=3)
            frame_table(md, group.nlargest(top_n, "device_ms"), ["name", "calls", "device_ms", "mean_device_ms"])


def _overhead_section(md: Any, metrics_json: Mapping[str, Any]) -> None:
    profiled = (metrics_json.get("profiled_pass") or {}).get("stage_ms") or {}
    if not profiled:
        return
    timed = timed_stage_ms(metrics_json.get("summary") or {}, list(profiled))
    flat = metrics_json.get("metrics") or {}
    rows = []
    for stage, profiled_ms in profiled.items():
        timed_ms = timed.get(stage)
        ratio = flat.get(overhead_metric_name(stage))
        if ratio is None and timed_ms and profiled_ms is not None and math.isfinite(profiled_ms):
            ratio = profiled_ms / timed_ms
        rows.append([stage if stage != DECODE_STEP else "decode step", profiled_ms, timed_ms, ratio])
    header(md, "Profiler overhead per stage")
    basis = (metrics_json.get("profiled_pass") or {}).get("time_basis")
    md.new_paragraph(
        "ratio = profiled stage time / timed stage time (mean). Profiled time: "
        + ("the device-side span of the kernels launched in the stage range" if basis == "device_span"
           else "the stage range's host duration")
        + "; prefill and sub-stages per input, decode per step."
    )
    table(md, ["stage", "profiled (ms)", "timed (ms)", "ratio"], rows, digits=3)
    busy = [[row.get("stage"), row.get("device_busy_ms"), row.get("device_span_ms"), row.get("busy_share")]
            for row in (metrics_json.get("profiled_pass") or {}).get("stages") or []
            if isinstance(row.get("busy_share"), (int, float)) and math.isfinite(row["busy_share"])]
    if busy:
        md.new_paragraph("Device busy share in the profiled pass: kernel time / device span of the stage ranges "
                         "(nested stages included). Low values mean the device waits for the host between "
                         "launches; the profiler widens those gaps, so this is a lower bound.")
        table(md, ["stage", "kernel time (ms)", "device span (ms)", "busy share"], busy, digits=3)


def _efficiency_section(md: Any, metrics_json: Mapping[str, Any]) -> None:
    efficiency = metrics_json.get("efficiency")
    if not isinstance(efficiency, Mapping) or not efficiency:
        return
    stages = {k: v for k, v in efficiency.items() if isinstance(v, Mapping)}
    columns: list[str] = []
    for entry in stages.values():
        columns += [k for k, v in entry.items() if _scalar(v) and k not in columns]
    if stages and columns:
        header(md, "Efficiency (FLOPs, MFU, MBU, bound)")
        table(md, ["stage", *columns], [[stage, *(entry.get(c) for c in columns)] for stage, entry in stages.items()],
              digits=4)
    extra = {k: v for k, v in efficiency.items() if _scalar(v)}
    if extra:
        _key_value_table(md, extra)


def write_technical_report(metrics_json: Mapping[str, Any], path: str | Path, operators: pd.DataFrame | None = None,
                           kernels: pd.DataFrame | None = None, top_n: int = 10) -> Path:
    md = new_document(TITLE)
    header(md, "Run")
    run = dict(metrics_json.get("run") or {})
    run.update(status=metrics_json.get("status"), error=metrics_json.get("error"))
    _key_value_table(md, run)
    if metrics_json.get("env"):
        header(md, "Environment")
        _key_value_table(md, metrics_json["env"])
    workload = metrics_json.get("workload") or {}
    if workload:
        header(md, "Workload")
        _key_value_table(md, workload)
        inputs = workload.get("inputs") or []
        if inputs:
            table(md, ["input", "prompt tokens", "image tokens"],
                  [[i.get("input_id"), i.get("prompt_tokens"), i.get("image_tokens")] for i in inputs])
    _stage_section(md, metrics_json)
    _latency_section(md, metrics_json)
    _operator_section(md, metrics_json, operators, kernels, top_n)
    _overhead_section(md, metrics_json)
    _efficiency_section(md, metrics_json)
    header(md, "Takeaways")
    bullets(md, [f"**{k}**: {v}" for k, v in derive_takeaways(metrics_json).items()])
    recommendations = derive_recommendations(metrics_json)
    if recommendations:
        header(md, "Recommendations")
        bullets(md, [f"**{k}**: {v}" for k, v in recommendations.items()])
    return write_markdown(md, path)
