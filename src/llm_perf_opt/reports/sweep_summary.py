"""A sweep's summary from its children: one row per job, and plots against each swept parameter.

Input is the children's search_runs frame (params.sweep.<key> hold each child's swept values, metrics.*
its headline numbers). The table keeps, per child: job number, run name, status, GPU, the swept values,
each stage's p50 time, decode TPOT p50, pages/s and tokens/s. For each swept parameter a figure
`sweep_<key>.png` plots stage p50 times (left) and throughput (right) against its values; children that
differ in other swept parameters form separate series (labelled by those values). Numeric values are
placed on a numeric axis, others in the order they were swept.

When the children (their search_runs frame, `write_summary`'s `children`) differ in `profiling.batch_size`,
`throughput_latency.png` plots their throughput against per-request latency, one curve per configuration
(reports/throughput_latency.py); `throughput_latency.csv` holds the plotted points, and sweep_summary.md
shows both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from llm_perf_opt.reports import throughput_latency
from llm_perf_opt.reports.plotting import new_figure, save_figure, stage_color, style_axes
from llm_perf_opt.schema import DECODE, E2E, GPU_TAG, PREFILL, SWEEP_JOB_TAG, THROUGHPUT_GROUP, metric_key

SWEEP_PARAM = "sweep."
TIMES = [metric_key(PREFILL, "ms", "p50"), metric_key(DECODE, "tpot_ms", "p50"), metric_key(E2E, "ms", "p50")]
RATES = [metric_key(THROUGHPUT_GROUP, "pages_per_s"), metric_key(THROUGHPUT_GROUP, "tokens_per_s")]
INFO = {f"tags.{SWEEP_JOB_TAG}": "job", "tags.mlflow.runName": "run", "status": "status", f"tags.{GPU_TAG}": "gpu"}


def _stage_times(children: pd.DataFrame) -> list[str]:
    """Every `<stage>/ms_p50` the children logged (prefill, its sub-stages, decode, e2e), TPOT after decode."""
    names = [c[len("metrics."):] for c in children.columns if c.startswith("metrics.") and c.endswith("/ms_p50")]
    first = [n for n in TIMES if f"metrics.{n}" in children.columns]
    return first + sorted(n for n in names if n not in first)


def summary_table(children: pd.DataFrame, swept: Sequence[str]) -> pd.DataFrame:
    """One row per child (job order): job, run, status, gpu, the swept values, headline metrics."""
    table = pd.DataFrame({"run_id": children.get("run_id", pd.Series(dtype=str))})
    for column, name in INFO.items():
        table[name] = children[column] if column in children.columns else None
    for key in swept:
        column = f"params.{SWEEP_PARAM}{key}"
        table[key] = children[column] if column in children.columns else None
    for name in [*_stage_times(children), *RATES]:
        column = f"metrics.{name}"
        table[name] = children[column] if column in children.columns else np.nan
    table["job"] = pd.to_numeric(table["job"], errors="coerce")
    return table.sort_values("job", kind="stable").reset_index(drop=True)


def summary_markdown(table: pd.DataFrame, swept: Sequence[str]) -> str:
    columns = ["job", "status", "gpu", *swept, *[c for c in table.columns if "/" in c]]
    shown = table[[c for c in columns if c in table.columns]]
    head = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "---|" * len(shown.columns)
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([head, rule, *rows]) + "\n"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _positions(values: pd.Series) -> tuple[np.ndarray, list[str] | None]:
    """x positions of a parameter's values: numbers as they are, anything else by first appearance."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return numeric.to_numpy(float), None
    order = list(dict.fromkeys(values.astype(str)))
    return np.array([order.index(v) for v in values.astype(str)], float), order


def plot_parameter(table: pd.DataFrame, key: str, swept: Sequence[str], path: Path) -> Path | None:
    """Stage p50 times and throughput against the values of swept parameter `key` (None without data)."""
    data = table[table["status"] == "FINISHED"] if "status" in table else table
    if data.empty or data[key].isna().all():
        return None
    others = [k for k in swept if k != key]
    fig, (left, right) = new_figure(width=12.0, height=4.6, cols=2)
    x, categories = _positions(data[key])
    series = data[others].astype(str).agg(", ".join, axis=1) if others else pd.Series("", index=data.index)
    times, rates = _stage_times(data), [r for r in RATES if r in data.columns]
    for group_index, group in enumerate(dict.fromkeys(series)):
        rows = (series == group).to_numpy()
        order = np.argsort(x[rows], kind="stable")
        suffix = f" ({group})" if group else ""
        style = ["-", "--", ":", "-."][group_index % 4]
        for i, name in enumerate(times):
            left.plot(x[rows][order], data[name].to_numpy(float)[rows][order], style, marker="o",
                      color=stage_color(i), label=f"{name}{suffix}")
        for i, name in enumerate(rates):
            right.plot(x[rows][order], data[name].to_numpy(float)[rows][order], style, marker="s",
                       color=stage_color(i + len(times)), label=f"{name}{suffix}")
    for ax in (left, right):
        if categories is not None:
            ax.set_xticks(range(len(categories)), categories)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    style_axes(left, title=f"Stage times vs {key}", xlabel=key, ylabel="p50 (ms)")
    style_axes(right, title=f"Throughput vs {key}", xlabel=key, ylabel="per second")
    return save_figure(fig, path)


def write_summary(table: pd.DataFrame, swept: Sequence[str], out_dir: Path,
                  children: pd.DataFrame | None = None) -> list[Path]:
    """sweep_summary.csv, sweep_summary.md and one plot per swept parameter in `out_dir`; with `children` (the
    search_runs frame `table` was made from) differing in batch size, throughput_latency.png and .csv too."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "sweep_summary.csv", out_dir / "sweep_summary.md"]
    table.to_csv(written[0], index=False)
    markdown = "# Sweep summary\n\n" + summary_markdown(table, swept)
    for key in swept:
        plot = plot_parameter(table, key, swept, out_dir / f"sweep_{key.replace('/', '_')}.png")
        if plot is not None:
            written.append(plot)
    points = throughput_latency.points(children) if children is not None else None
    if points is not None and throughput_latency.differs_in_batch_size(points):
        plot = throughput_latency.plot(points, out_dir / throughput_latency.FIGURE_FILE)
        if plot is not None:
            points.to_csv(out_dir / throughput_latency.TABLE_FILE, index=False)
            written += [plot, out_dir / throughput_latency.TABLE_FILE]
            markdown += "\n" + throughput_latency.markdown_section(points, plot.name)
    written[1].write_text(markdown, encoding="utf-8")
    return written
