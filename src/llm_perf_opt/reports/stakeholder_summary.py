"""stakeholder_summary.md: the run in plain language, built from its RunRecord alone.

Sections (each only when its numbers exist): what ran (one line), where the time goes (every stage
in the record's order, a nested stage marked with the stage it runs inside and its share of it),
speed (TTFT, TPOT, end to end, tokens/s), energy, top cost centres (operators with their stage and
share of the stage's profiled time), takeaways and recommendations (reports/takeaways.py, each citing
its number).

Top cost centres show one level of the operator tree: the operators the model code calls directly
(top-level calls), each with the time of everything it runs (device time on a GPU run, else CPU time).
No listed operator runs inside another, so no work is counted twice (aten::linear is listed with its
aten::addmm inside it; the addmm is not listed again). Rows come from the run's operators.csv when
there is one, else from the record's top_operators lists; without top-level columns (an older run)
operators rank by self time, and by total time only when they carry no self time; the table names
its basis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from llm_perf_opt.record import OperatorRecord, RelatedRuns, RunRecord
from llm_perf_opt.reports.markdown import bullets, header, new_document, table, write_markdown
from llm_perf_opt.reports.takeaways import (
    TOP_LEVEL,
    TOTAL,
    OperatorBasis,
    derive_recommendations,
    derive_takeaways,
    operator_basis,
    operator_rows,
    ranked_operators,
)
from llm_perf_opt.reports.view import (
    finite,
    operator_share,
    parent_of,
    pct,
    resolve_stage,
    share_of_parent,
    stage_display,
)
from llm_perf_opt.schema import DECODE, E2E, PREFILL

TITLE = "Stakeholder summary"
DEFAULT_TOP_N = 10


class CostCentre(NamedTuple):
    """One operator row of the summary, from an OperatorRecord or a seed-API dict; time_ms is its `field`."""

    name: Any
    stage: Any
    time_ms: Any
    calls: Any

    @classmethod
    def of(cls, op: OperatorRecord | Mapping[str, Any], field: str = TOTAL.field) -> CostCentre:
        """Calls are the top-level calls when the time is theirs (TOP_LEVEL), else every call."""
        calls = "top_level_calls" if field == TOP_LEVEL.field else "calls"
        if isinstance(op, OperatorRecord):
            return cls(op.name, op.stage, getattr(op, field), getattr(op, calls))
        return cls(op.get("name"), op.get("stage"), op.get(field), op.get(calls))


def environment_line(record: RunRecord) -> str:
    """'deepseek_ocr2 full (bf16, sdpa, image mode tiled) on <device>; torch ..., transformers ...;
    6 timed samples of 8 new tokens each.'"""
    workload, env = record.workload, record.env
    extra = workload.model_extra or {}
    model = " ".join(str(v) for v in (workload.family, workload.preset) if v)
    details = ", ".join(str(v) for v in (workload.dtype, env.get("attn_implementation"),
                                         extra.get("image_mode") and f"image mode {extra['image_mode']}") if v)
    device = env.get("device_name") or workload.device
    line = f"{model} ({details}) on {device}"
    versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "transformers") if env.get(k))
    if versions:
        line += f"; {versions}"
    batch = extra.get("batch_size")
    batches = f" (batches of {batch} pages)" if batch and batch > 1 else ""
    return line + f"; {record.samples} timed samples{batches} of {workload.new_tokens} new tokens each."


def stage_rows(record: RunRecord) -> list[list[Any]]:
    """[stage, mean ms, p50 ms, p90 ms, share of the stage it runs in] for every timed stage, in record order."""
    rows = []
    for stage in record.stages:
        stats = stage.stats.get("ms")
        if stats is None:
            continue
        parent = parent_of(record, stage)
        share = share_of_parent(record, stage)
        if stage.key == PREFILL:
            label = f"{stage.label} (time to first token)"
        elif parent is not None and parent.key != E2E:
            label = f"{stage.label} (inside {parent.label})"
        else:
            label = stage.label
        if parent is None:
            share_text = "whole request"
        else:
            share_text = f"{pct(share)} of {parent.label}" if share is not None else "n/a"
        rows.append([label, stats.mean, stats.p50, stats.p90, share_text])
    return rows


def speed_lines(record: RunRecord) -> list[str]:
    items = [("Time to first token (TTFT)", PREFILL, "ms", "ms"),
             ("Time per output token (TPOT)", DECODE, "tpot_ms", "ms"),
             ("End-to-end per request", E2E, "ms", "ms"),
             ("Tokens per second, whole request", E2E, "tokens_per_s", "tokens/s"),
             ("Tokens per second, decode only", DECODE, "tokens_per_s", "tokens/s")]
    lines = []
    for label, key, quantity, unit in items:
        stage = record.stage(key)
        stats = stage.stats.get(quantity) if stage is not None else None
        if stats is not None:
            lines.append(f"{label}: {stats.p50:.2f} {unit} (median; mean {stats.mean:.2f})")
    return lines


def energy_lines(record: RunRecord) -> list[str]:
    lines = []
    e2e, prefill, decode = record.stage(E2E), record.stage(PREFILL), record.stage(DECODE)
    # With batches a sample's energy is its batch's: per page is the energy over the pages (per_page).
    page = "per_page" if e2e is not None and "per_page" in e2e.energy_j else "mean"
    for label, stage, kind, unit, digits in (("Energy per page, end to end", e2e, page, "J", 2),
                                             ("Energy of prefill", prefill, "mean", "J", 2),
                                             ("Energy per output token, decode", decode, "per_token", "J", 3)):
        value = finite(stage.energy_j.get(kind)) if stage is not None else None
        if value is not None:
            lines.append(f"{label}: {value:.{digits}f} {unit}")
    for label, key, unit in (("Mean GPU power", "power_w_mean", "W"), ("Peak GPU power", "power_w_max", "W")):
        value = finite(record.device.get(key))
        if value is not None:
            lines.append(f"{label}: {value:.1f} {unit}")
    return lines


def cost_centre_rows(top_ops: Sequence[OperatorRecord | Mapping[str, Any]], record: RunRecord | None,
                     basis: OperatorBasis = TOTAL) -> list[list[Any]]:
    """[rank, operator, stage, time on `basis`, calls, share of the stage's profiled time], in the given order."""
    rows = []
    for rank, op in enumerate((CostCentre.of(op, basis.field) for op in top_ops), 1):
        stage = resolve_stage(record, op.stage) if record is not None else None
        share = operator_share(op.time_ms, stage)
        rows.append([rank, op.name, stage_display(record, op.stage), finite(op.time_ms),
                     op.calls if op.calls is not None else "n/a", f"{pct(share)}" if share is not None else "n/a"])
    return rows


def cost_centres(record: RunRecord, operators: pd.DataFrame | None = None,
                 top_n: int | None = None) -> tuple[list[OperatorRecord], OperatorBasis]:
    """The run's `top_n` operators by exclusive time (takeaways.operator_basis) over all stages, and the basis;
    rows from `operators` (operators.csv) when given, else the record's lists. `top_n` defaults to the length
    of the record's top_operators, else DEFAULT_TOP_N."""
    rows = operator_rows(record, operators)
    basis = operator_basis(rows)
    top_n = top_n if top_n is not None else (len(record.top_operators) or DEFAULT_TOP_N)
    return [row for row, _ in ranked_operators(rows, basis)[:top_n]], basis


def _cost_centre_note(basis: OperatorBasis) -> str:
    profiled = ("in the profiled pass (a separate run under the profiler: milliseconds are inflated, shares are "
                "indicative), with the stage they ran in and their share of its profiled time.")
    if basis is TOTAL:
        return (f"Operators with the most total time {profiled} Total time includes the operators each one calls, "
                "so an operator and the operators inside it can both appear.")
    if basis is TOP_LEVEL:
        return (f"The operators the model code calls directly, with the most time {profiled} Each one's time "
                "includes the operators it calls (an aten::linear includes its aten::addmm), and no listed operator "
                "runs inside another, so no work is counted twice.")
    return (f"Operators with the most {basis.name} {profiled} Self time is the time in the operator itself, not in "
            "the operators it calls, so no work is counted twice.")


def write_stakeholder_markdown(
    path: str | Path,
    *,
    top_ops: Sequence[OperatorRecord | Mapping[str, Any]],
    takeaways: Mapping[str, str],
    recommendations: Mapping[str, str] | None = None,
    record: RunRecord | None = None,
    basis: OperatorBasis = TOTAL,
) -> Path:
    """Write the summary to exactly `path`; without `record` only cost centres and takeaways are written.
    `top_ops` are rendered in the order given, with their time on `basis` (default: total time)."""
    md = new_document(TITLE)
    if record is not None:
        if record.status != "FINISHED":
            md.new_paragraph(f"**The run did not finish** ({record.status}: {record.error or 'no error recorded'}); "
                             "the numbers below cover the samples measured before it stopped.")
        header(md, "What ran")
        md.new_paragraph(environment_line(record))
        rows = stage_rows(record)
        if rows:
            header(md, "Where the time goes")
            md.new_paragraph("Mean time per request, in milliseconds. A stage marked (inside ...) runs within that "
                             "stage: its time is part of it, not added to it.")
            table(md, ["Stage", "Mean (ms)", "Median (ms)", "p90 (ms)", "Share"], rows)
        speed = speed_lines(record)
        if speed:
            header(md, "Speed")
            bullets(md, speed)
        energy = energy_lines(record)
        if energy:
            header(md, "Energy")
            bullets(md, energy)
    header(md, "Top cost centres")
    if top_ops:
        md.new_paragraph(_cost_centre_note(basis))
        table(md, ["#", "Operator", "Stage", basis.heading, "Calls", "Share of stage"],
              cost_centre_rows(top_ops, record, basis))
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


def write_stakeholder_summary(record: RunRecord, path: str | Path, operators: pd.DataFrame | None = None,
                              related: RelatedRuns | None = None) -> Path:
    """stakeholder_summary.md of `record`, written to exactly `path`. Cost centres from `operators`
    (operators.csv's table, which write_reports passes) when given, else from the record's operator lists;
    `related` (related_runs.json) lets recommendations cite what their configuration measured here."""
    path = Path(path)
    top_ops, basis = cost_centres(record, operators)
    return write_stakeholder_markdown(path, top_ops=top_ops, takeaways=derive_takeaways(record, operators),
                                      recommendations=derive_recommendations(record, related), record=record,
                                      basis=basis)
