"""Throughput against per-request latency for runs that differ in batch size (throughput_latency.png).

Input: a search_runs-like frame (run_id, status, params.*, metrics.*, tags.*): a sweep's children
(reports/sweep_summary.py) or the runs `compare` selected (compare/plots.py). `points(runs)` is the
table that is plotted, one row per FINISHED run:

- `batch_size`: `profiling.batch_size` (1 for a run that did not log it);
- `e2e_ms_p50`: per-request latency, `e2e/ms_p50` (with batches a request waits for its whole batch:
  a sample is one batch, so this is each of its pages' latency);
- `tpot_ms_p50`: decode time per output token, `decode/tpot_ms_p50`;
- `pages_per_s`, `tokens_per_s`: `throughput/pages_per_s` and `throughput/tokens_per_s` (generated tokens
  over whole-request time, prefill included), the rates of the run's timed samples back to back;
- `series`: the run's configuration other than its batch size (reports/configuration.py), as a label:
  `cache=<model.cache>, compile=<model.compile>` (dynamic / none when not logged), then every other
  configuration value that differs between the runs (`model.image_mode=tiled`), so an eager, a
  static-cache and a compiled configuration are separate curves.

The figure: pages/s against e2e p50 (left) and tokens/s against decode TPOT p50 (right), each series a
line through its runs in batch-size order, each point labelled `b<batch size>`. A panel whose metrics no
run logged is left out. `differs_in_batch_size` says whether the figure is worth drawing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from llm_perf_opt.reports.configuration import batch_size, configuration, differences
from llm_perf_opt.reports.plotting import STYLE, new_figure, place_labels, save_figure, stage_color, style_axes
from llm_perf_opt.schema import BATCH_SIZE_PARAM, CACHE_PARAM, COMPILE_PARAM, DECODE, E2E, THROUGHPUT_GROUP, metric_key

FIGURE_FILE = "throughput_latency.png"
TABLE_FILE = "throughput_latency.csv"  # the plotted points (`points`), beside the figure
METRICS = {"e2e_ms_p50": metric_key(E2E, "ms", "p50"), "tpot_ms_p50": metric_key(DECODE, "tpot_ms", "p50"),
           "pages_per_s": metric_key(THROUGHPUT_GROUP, "pages_per_s"),
           "tokens_per_s": metric_key(THROUGHPUT_GROUP, "tokens_per_s")}
COLUMNS = ["series", "batch_size", *METRICS, "run_id", "run_name"]
# (x column, y column, x label, y label, title) of each panel
PANELS = (("e2e_ms_p50", "pages_per_s", "per-request latency, e2e p50 (ms)", "pages/s", "Pages/s vs latency"),
          ("tpot_ms_p50", "tokens_per_s", "decode TPOT p50 (ms)", "tokens/s (whole requests)",
           "Tokens/s vs time per output token"))


def _prefixed(row: pd.Series, prefix: str) -> dict[str, object]:
    return {name[len(prefix):]: value for name, value in row.items()
            if name.startswith(prefix) and value is not None and not (isinstance(value, float) and np.isnan(value))}


def series_label(config: dict[str, str], shown: list[str]) -> str:
    """`cache=<...>, compile=<...>` and `name=value` for each name in `shown`."""
    parts = [f"cache={config[CACHE_PARAM]}", f"compile={config[COMPILE_PARAM]}"]
    return ", ".join(parts + [f"{name}={config.get(name, 'n/a')}" for name in shown])


def points(runs: pd.DataFrame) -> pd.DataFrame:
    """The plotted table (module docstring): one row per FINISHED run, columns COLUMNS, ordered by series
    (first appearance) and batch size. Metrics a run did not log are NaN."""
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    finished = runs[runs["status"] == "FINISHED"] if "status" in runs.columns else runs
    configs = [configuration(_prefixed(row, "params."), _prefixed(row, "tags.")) for _, row in finished.iterrows()]
    others = [name for name in differences(configs) if name not in (BATCH_SIZE_PARAM, CACHE_PARAM, COMPILE_PARAM)]
    shown = [name for name in others if not name.startswith("workload.")] or others  # workload.* follow the config
    table = pd.DataFrame({
        "series": [series_label(config, shown) for config in configs],
        "batch_size": [batch_size(config) for config in configs],
        **{column: pd.to_numeric(finished[f"metrics.{name}"], errors="coerce").to_numpy(float)
           if f"metrics.{name}" in finished.columns else np.full(len(finished), np.nan)
           for column, name in METRICS.items()},
        "run_id": finished["run_id"].astype(str).to_numpy() if "run_id" in finished.columns else None,
        "run_name": (finished["tags.mlflow.runName"].to_numpy() if "tags.mlflow.runName" in finished.columns
                     else None),
    }, columns=COLUMNS)
    order = {label: i for i, label in enumerate(dict.fromkeys(table["series"]))}
    table["_series_order"] = table["series"].map(order)
    return (table.sort_values(["_series_order", "batch_size"], kind="stable").drop(columns="_series_order")
            .reset_index(drop=True))


def differs_in_batch_size(table: pd.DataFrame) -> bool:
    """Whether the plotted runs (a `points` table) hold at least two batch sizes with a throughput and a
    latency."""
    plotted = pd.concat([table[table[x].notna() & table[y].notna()] for x, y, *_ in PANELS])
    return plotted["batch_size"].nunique() >= 2


def plot(table: pd.DataFrame, path: Path) -> Path | None:
    """throughput_latency.png from a `points` table; None when no panel has a point."""
    panels = [panel for panel in PANELS if (table[panel[0]].notna() & table[panel[1]].notna()).any()]
    if not panels:
        return None
    fig, axes = new_figure(width=6.5 * len(panels), height=5.0, cols=len(panels))
    axes = list(axes.flat) if hasattr(axes, "flat") else [axes]
    labels: list[list] = [[] for _ in panels]
    for index, series in enumerate(dict.fromkeys(table["series"])):
        rows = table[table["series"] == series]
        for ax, (x, y, *_), marks in zip(axes, panels, labels):
            drawn = rows[rows[x].notna() & rows[y].notna()]
            if drawn.empty:
                continue
            ax.plot(drawn[x], drawn[y], "-o", color=stage_color(index), label=series, markersize=5)
            marks += [(f"b{b}", (px, py), {"fontsize": STYLE["tick_size"], "color": stage_color(index)})
                      for b, px, py in zip(drawn["batch_size"], drawn[x], drawn[y])]
    for ax, (_, _, xlabel, ylabel, title) in zip(axes, panels):
        style_axes(ax, title=title, xlabel=xlabel, ylabel=ylabel)
        ax.margins(0.15)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=STYLE["legend_size"], loc="lower right")
    fig.suptitle("Throughput vs per-request latency by batch size (labels: b<batch size>)",
                 fontsize=STYLE["title_size"])
    for ax, marks in zip(axes, labels):
        place_labels(fig, ax, marks)
    return save_figure(fig, path)


MARKDOWN_HEADER = ["configuration", "batch", "e2e p50 (ms)", "TPOT p50 (ms)", "pages/s", "tokens/s", "run"]


def markdown_rows(table: pd.DataFrame) -> list[list[str]]:
    """The points as Markdown table cells (MARKDOWN_HEADER); n/a where a run did not log the metric."""
    def cell(value: float) -> str:
        return "n/a" if pd.isna(value) else f"{value:.4g}"

    return [[row.series, str(row.batch_size), cell(row.e2e_ms_p50), cell(row.tpot_ms_p50), cell(row.pages_per_s),
             cell(row.tokens_per_s), row.run_name if isinstance(row.run_name, str) else str(row.run_id)]
            for row in table.itertuples()]


def markdown_section(table: pd.DataFrame, figure: str) -> str:
    """`## Throughput vs latency`: the figure (a path relative to the Markdown file) and the plotted points."""
    lines = ["## Throughput vs latency", "", f"![throughput vs latency]({figure})", "",
             "| " + " | ".join(MARKDOWN_HEADER) + " |", "|" + "---|" * len(MARKDOWN_HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in markdown_rows(table)]
    return "\n".join(lines) + "\n"
