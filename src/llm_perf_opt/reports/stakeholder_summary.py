"""stakeholder_summary.md: the run in plain language, built from metrics.json alone.

Sections (each only when its numbers exist): what ran (one line), where the time goes (stage table,
vision stated as nested within prefill), speed (TTFT, TPOT, tokens/s), top cost centres (operators
with their stage), takeaways and recommendations (reports/takeaways.py, each citing its number).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llm_perf_opt.reports.markdown import bullets, header, new_document, table, write_markdown
from llm_perf_opt.reports.takeaways import (
    profiled_stage_total_ms,
    derive_recommendations,
    derive_takeaways,
    end_to_end_shares,
    percent,
    stage_stat,
    stat,
)

TITLE = "Stakeholder summary"


def environment_line(metrics_json: Mapping[str, Any]) -> str | None:
    """'deepseek_ocr2 tiny (fp32, sdpa) on <device>; torch ..., transformers ...; 6 samples x 8 tokens'."""
    env, workload = metrics_json.get("env") or {}, metrics_json.get("workload") or {}
    if not env and not workload:
        return None
    model = " ".join(str(v) for v in (workload.get("family"), workload.get("preset")) if v)
    details = ", ".join(str(v) for v in (env.get("dtype") or workload.get("dtype"),
                                         env.get("attn_implementation"), workload.get("image_mode") and
                                         f"image mode {workload['image_mode']}") if v)
    line = f"{model or 'model'}{f' ({details})' if details else ''} on {env.get('device_name') or env.get('device_type') or 'n/a'}"
    versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "transformers") if env.get(k))
    if versions:
        line += f"; {versions}"
    samples = (metrics_json.get("metrics") or {}).get("samples/count")
    if samples is not None and workload.get("new_tokens") is not None:
        line += f"; {int(samples)} timed samples of {workload['new_tokens']} new tokens each"
    return line + "."


def stage_rows(metrics_json: Mapping[str, Any]) -> list[list[Any]]:
    """[stage, mean ms, p50 ms, p90 ms, share] with nested stages labelled by what they sit in."""
    means, whole, _ = end_to_end_shares(metrics_json)
    rows = []
    for name, entry in (metrics_json.get("stages") or {}).items():
        mean = stage_stat(metrics_json, name)
        if mean is None:
            continue
        parent = entry.get("nested_in")
        if parent is None:
            label = "prefill (time to first token)" if name == "prefill" else name
            share = f"{percent(mean, whole):.1f}% of end-to-end" if whole else "n/a"
        else:
            label = f"{name} (inside {parent})"
            parent_mean = stage_stat(metrics_json, parent)
            share = f"{percent(mean, parent_mean):.1f}% of {parent}" if parent_mean else "n/a"
        rows.append([label, mean, stage_stat(metrics_json, name, "p50"), stage_stat(metrics_json, name, "p90"), share])
    return rows


def speed_lines(metrics_json: Mapping[str, Any]) -> list[str]:
    items = [("Time to first token (TTFT)", "ttft_ms", "ms"), ("Time per output token (TPOT)", "tpot_ms", "ms"),
             ("End-to-end per request", "e2e_ms", "ms"), ("Tokens per second, whole request", "tokens_per_s", "tokens/s"),
             ("Tokens per second, decode only", "decode_tokens_per_s", "tokens/s")]
    lines = []
    for label, column, unit in items:
        p50, mean = stat(metrics_json, column, "p50"), stat(metrics_json, column)
        if p50 is not None:
            lines.append(f"{label}: {p50:.2f} {unit} (median; mean {mean:.2f})")
    return lines


def cost_centre_rows(top_ops: Sequence[Mapping[str, Any]], metrics_json: Mapping[str, Any] | None) -> list[list[Any]]:
    rows = []
    for rank, op in enumerate(top_ops, 1):
        stage_total = profiled_stage_total_ms(metrics_json, op.get("stage")) if metrics_json else None
        total = op.get("total_time_ms")
        share = f"{percent(total, stage_total):.1f}%" if stage_total and total is not None else "n/a"
        rows.append([rank, op.get("name"), op.get("stage", "n/a"), total, op.get("calls", "n/a"), share])
    return rows


def write_stakeholder_markdown(
    path: str | Path,
    *,
    top_ops: Sequence[Mapping[str, Any]],
    takeaways: Mapping[str, str],
    recommendations: Mapping[str, str] | None = None,
    metrics_json: Mapping[str, Any] | None = None,
) -> Path:
    """Write the summary; without `metrics_json` only cost centres and takeaways are written."""
    md = new_document(TITLE)
    if metrics_json is not None:
        if metrics_json.get("status") not in (None, "FINISHED"):
            md.new_paragraph(f"**The run did not finish** ({metrics_json.get('status')}: {metrics_json.get('error')}); "
                             "the numbers below cover the samples measured before it stopped.")
        line = environment_line(metrics_json)
        if line:
            header(md, "What ran")
            md.new_paragraph(line)
        rows = stage_rows(metrics_json)
        if rows:
            header(md, "Where the time goes")
            md.new_paragraph("Mean time per request, in milliseconds. Vision runs inside prefill: its time is part "
                             "of the prefill time, not added to it; its parts (sam, encoder, projector) are in turn "
                             "part of vision.")
            table(md, ["Stage", "Mean (ms)", "Median (ms)", "p90 (ms)", "Share"], rows)
        speed = speed_lines(metrics_json)
        if speed:
            header(md, "Speed")
            bullets(md, speed)
    header(md, "Top cost centres")
    if top_ops:
        md.new_paragraph("Operators with the most total time in the profiled pass (a separate run under the "
                         "profiler: milliseconds are inflated, shares are indicative), with the stage they ran in.")
        table(md, ["#", "Operator", "Stage", "Total (ms)", "Calls", "Share of stage"],
              cost_centre_rows(top_ops, metrics_json))
    else:
        md.new_paragraph("No operator data (the profiled pass did not run).")
    header(md, "Takeaways")
    if takeaways:
        bullets(md, [f"**{topic}**: {text}" for topic, text in takeaways.items()])
    else:
        md.new_paragraph("No takeaways: the run has no stage timings.")
    if recommendations:
        header(md, "Recommendations")
        bullets(md, [f"**{topic}**: {text}" for topic, text in recommendations.items()])
    return write_markdown(md, path)


def write_stakeholder_summary_from_metrics(metrics_json: Mapping[str, Any], path: str | Path) -> Path:
    return write_stakeholder_markdown(
        path,
        top_ops=list(metrics_json.get("top_operators") or []),
        takeaways=derive_takeaways(metrics_json),
        recommendations=derive_recommendations(metrics_json),
        metrics_json=metrics_json,
    )
