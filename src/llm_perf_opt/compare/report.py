"""Render a comparison: the compact terminal text and comparison.md (llm_perf_opt.reports.markdown).

Cells read `value (xratio)`: the run's metric and its ratio to the baseline. `n/a` marks a metric the run
did not log (NaN in comparison.csv), never a zero. Wide selections are cut to the first N runs here
(baseline first); comparison.csv always holds every run.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from llm_perf_opt.compare.directions import metric_direction
from llm_perf_opt.compare.stages import label
from llm_perf_opt.compare.summary import RATIO_PREFIX, metric_columns
from llm_perf_opt.compare.verdicts import NO_CHANGE
from llm_perf_opt.reports import markdown, throughput_latency
from llm_perf_opt.reports.markdown import bullets, header, new_document, table
from llm_perf_opt.schema import StageTree

_ARROW = {"lower": "lower is better", "higher": "higher is better", None: ""}


def fmt_value(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def fmt_ratio(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"x{value:.3f}"


def short_id(run_id: str) -> str:
    return str(run_id)[:8]


def _shown(summary: pd.DataFrame, max_runs: int) -> pd.DataFrame:
    """Baseline first, then candidates in selection order, at most max_runs."""
    ordered = pd.concat([summary[summary["baseline"]], summary[~summary["baseline"]]])
    return ordered.head(max_runs) if max_runs > 0 else ordered


def metric_matrix(summary: pd.DataFrame, max_runs: int) -> pd.DataFrame:
    """Rows: headline metrics; columns: runs (baseline marked [B]); cells 'value (xratio)'."""
    shown = _shown(summary, max_runs)
    matrix = pd.DataFrame(index=metric_columns(summary))
    for run_id, row in shown.iterrows():
        label = f"[B] {short_id(run_id)}" if row["baseline"] else short_id(run_id)
        cells = []
        for metric in matrix.index:
            value, ratio = row[metric], row[f"{RATIO_PREFIX}{metric}"]
            cells.append(fmt_value(value) if row["baseline"] or fmt_ratio(ratio) == ""
                         else f"{fmt_value(value)} ({fmt_ratio(ratio)})")
        matrix[label] = cells
    return matrix


def verdict_matrix(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Rows: metrics; columns: candidates; cells 'verdict xratio p=...'."""
    if verdicts.empty:
        return pd.DataFrame()
    cells = verdicts.assign(
        run=verdicts["run_id"].map(short_id),
        cell=[f"{v} {fmt_ratio(r)} p={p:.2g}" for v, r, p in
              zip(verdicts["verdict"], verdicts["median_ratio"], verdicts["p_value"])])
    return cells.pivot(index="metric", columns="run", values="cell").reindex(
        index=list(dict.fromkeys(verdicts["metric"])), columns=list(dict.fromkeys(cells["run"]))).fillna("")


def terminal_text(summary: pd.DataFrame, verdicts: pd.DataFrame, mismatches: dict[str, list[str]],
                  notes: list[str], settings_line: str, max_runs: int) -> str:
    baseline = summary.index[summary["baseline"]][0]
    lines = [f"Compared {len(summary)} profile runs; baseline {baseline}"]
    if len(summary) > max_runs > 0:
        lines.append(f"(showing {max_runs} of {len(summary)} runs; comparison.csv has all)")
    lines += ["cells: value (x ratio to the baseline [B]); n/a: not logged by that run", "",
              metric_matrix(summary, max_runs).to_string(), ""]
    for run_id, fields in list(mismatches.items())[:max(max_runs, 1)]:
        lines.append(f"environment differs for {short_id(run_id)}: {'; '.join(fields)}")
    if len(mismatches) > max(max_runs, 1):
        lines.append(f"... and {len(mismatches) - max(max_runs, 1)} more runs (column env.mismatch of comparison.csv)")
    if not verdicts.empty:
        counts = verdicts["verdict"].value_counts()
        lines += ["", f"Verdicts ({settings_line}): " + ", ".join(f"{k}: {v}" for k, v in counts.items()),
                  verdict_matrix(verdicts).to_string()]
    lines += [f"note: {note}" for note in notes]
    return "\n".join(lines)


def _known(value: object) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def write_markdown(path: Path, summary: pd.DataFrame, environment: pd.DataFrame, mismatches: dict[str, list[str]],
                   verdicts: pd.DataFrame, operators: pd.DataFrame, plots: list[Path], notes: list[str],
                   context: dict, max_runs: int, tree: StageTree | None = None,
                   throughput: pd.DataFrame | None = None) -> Path:
    """comparison.md; `throughput` (compare/plots.throughput_latency_points), when the runs differ in batch size,
    adds the section "Throughput vs latency by batch size" with the plotted points."""
    md = new_document("Run comparison")
    baseline = summary.index[summary["baseline"]][0]
    md.new_paragraph(f"Baseline **{baseline}**; {len(summary)} profile runs compared. "
                     f"Tracking store: `{context.get('tracking_uri')}`. Selection: `{context.get('selection')}`. "
                     f"Verdict settings: {context.get('settings_line')}.")
    shown = _shown(summary, max_runs)
    if len(shown) < len(summary):
        md.new_paragraph(f"Tables show {len(shown)} of {len(summary)} runs; comparison.csv holds all of them.")

    header(md, "Runs and environments")
    env_columns = list(environment.columns)
    table(md, ["run", "name", "started", *env_columns, "environment vs baseline"], [
        [("[B] " if row["baseline"] else "") + str(run_id), _known(row.get("run_name")), _known(row.get("start_time")),
         *[_known(environment.at[run_id, c]) if run_id in environment.index else "n/a" for c in env_columns],
         "; ".join(mismatches.get(run_id, [])) or ("baseline" if row["baseline"] else "same")]
        for run_id, row in shown.iterrows()])

    header(md, "Headline metrics (value and ratio to the baseline)")
    matrix = metric_matrix(summary, max_runs)
    table(md, ["metric", "better", *matrix.columns],
          [[metric, _ARROW[metric_direction(metric)], *matrix.loc[metric]] for metric in matrix.index])

    header(md, "Verdicts (per-sample tests)")
    if verdicts.empty:
        md.new_paragraph("No per-sample verdicts (see the notes).")
    for run_id, group in verdicts.groupby("run_id", sort=False):
        changed = (group["verdict"] != NO_CHANGE).sum()
        header(md, f"{run_id} vs baseline ({changed} of {len(group)} metrics not 'no change')", level=3)
        table(md, ["metric", "samples", "n (base/cand)", "baseline median", "candidate median", "median ratio [CI]",
                   "p", "verdict", "note"], [
            [r.metric, f"{r.source} {r.column}", f"{r.n_baseline}/{r.n_candidate}", fmt_value(r.baseline_median),
             fmt_value(r.candidate_median),
             f"{fmt_ratio(r.median_ratio)} [{fmt_value(r.ci_low)}, {fmt_value(r.ci_high)}]", f"{r.p_value:.3g}",
             f"**{r.verdict}**", r.note] for r in group.itertuples()])

    header(md, "Operator diff (largest time changes per stage)")
    if operators.empty:
        md.new_paragraph("No operator diff (see the notes).")
    for (run_id, stage), group in operators.groupby(["run_id", "stage"], sort=False):
        header(md, f"{short_id(run_id)}: {label(str(stage), tree)} ({group['time_column'].iloc[0]})", level=3)
        table(md, ["operator", "baseline ms", "candidate ms", "delta ms", "ratio", "calls (base/cand)", "presence"], [
            [r.name, fmt_value(r.baseline_ms), fmt_value(r.candidate_ms), f"{r.delta_ms:+.4g}", fmt_ratio(r.ratio),
             f"{fmt_value(r.baseline_calls)}/{fmt_value(r.candidate_calls)}", r.presence]
            for r in group.itertuples()])

    if throughput is not None:
        header(md, "Throughput vs latency by batch size")
        figure = next((p for p in plots if p.name == "throughput_latency.png"), None)
        where = f" ({figure.relative_to(path.parent).as_posix()} draws one curve per configuration)" if figure else ""
        md.new_paragraph(f"One row per run{where}: throughput (pages/s; tokens/s of whole requests) against "
                         "per-request latency (e2e p50) and decode time per output token (TPOT p50).")
        table(md, throughput_latency.MARKDOWN_HEADER, throughput_latency.markdown_rows(throughput))
    if plots:
        header(md, "Plots")
        for plot in plots:
            md.new_paragraph(f"![{plot.stem}]({plot.relative_to(path.parent).as_posix()})")
    if notes:
        header(md, "Notes")
        bullets(md, notes)
    return markdown.write_markdown(md, path)
