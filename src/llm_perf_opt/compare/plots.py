"""Comparison plots, drawn with the project's one plotting style (llm_perf_opt.reports.plotting).

Stages, their nesting, labels and colours come from the baseline's stage tree (its metrics.json,
compare/stages.py); metric names are made with the schema (`metric_key`, `column`).

- stage_times.png: per run, a stacked bar of p50 stage times. Sub-stages run inside prefill, so the
  stack is prefill's sub-stages + "prefill (other)" + decode. A group (a stage with children) is drawn as
  its children, at any depth, never as itself and its children; a group whose children were not logged
  is drawn as itself. prefill (other) = prefill p50 - the sum of the drawn sub-stage p50s (clipped at 0:
  p50s are not additive, so this is an approximation of the remainder). The bar's prefill part
  therefore equals the prefill p50; no sub-stage is counted twice.
- efficiency.png: MFU and MBU per run, one bar per stage (only when runs logged `<stage>/mfu_pct|mbu_pct`). Run
  labels are wrapped to TICK_WRAP characters a line and the figure widens with the runs, so labels sit
  side by side unrotated; only if two would still overlap are they turned upright
  (plotting.fit_x_tick_labels). One legend of the stages, outside the axes, for both panels.
- latency_distributions.png: box plots per run of the per-sample times from samples.csv: prefill, its
  direct sub-stages and groups, decode, decode TPOT, e2e.
- throughput_latency.png: when the compared runs differ in `profiling.batch_size`, pages/s against
  per-request latency (e2e p50) and tokens/s against decode TPOT p50, one curve per configuration other
  than the batch size (eager, static cache, compiled), points labelled by batch size
  (reports/throughput_latency.py draws it, from the runs' params and metrics in the search frame).
A metric a run lacks is left out of its bar (no zero-height stand-in).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from llm_perf_opt.compare.stages import fixed_tree, label, metric_stage, stage_order
from llm_perf_opt.compare.summary import metric_columns
from llm_perf_opt.reports import throughput_latency
from llm_perf_opt.reports.plotting import STYLE, fit_x_tick_labels, new_figure, save_figure, stage_color, style_axes
from llm_perf_opt.schema import DECODE, E2E, PREFILL, StageTree, column, metric_key

PREFILL_OTHER = "prefill (other)"
TICK_WRAP = 14  # characters per line of a wrapped run label
RUN_SLOT_IN = 1.2  # inches of axis per run in the efficiency plot: room for a TICK_WRAP-wide label


def run_labels(summary: pd.DataFrame) -> list[str]:
    labels = []
    for run_id, row in summary.iterrows():
        name = row.get("run_name")
        name = f"{name} " if isinstance(name, str) and name else ""
        labels.append(f"{'[B] ' if row['baseline'] else ''}{name}{str(run_id)[:8]}")
    return labels


def _axes_list(axes) -> list:
    return list(axes.flat) if hasattr(axes, "flat") else [axes]


def _p50(stage: str) -> str:
    return metric_key(stage, "ms", "p50")


def stacked_stages(tree: StageTree, logged: set[str]) -> list[str]:
    """The stages drawn inside prefill, in tree order: each child of prefill, a group replaced by its
    drawn descendants (recursively), a stage kept only when its p50 was logged (`logged`)."""

    def drawn(key: str) -> list[str]:
        below = [segment for child in tree.children(key) for segment in drawn(child.key)]
        return below or ([key] if key in logged else [])

    return [segment for child in tree.children(PREFILL) for segment in drawn(child.key)]


def stage_stack(summary: pd.DataFrame, tree: StageTree | None = None) -> pd.DataFrame:
    """Segments (columns: stage keys, 'prefill (other)', 'decode') per run (rows), in ms."""
    tree = tree or fixed_tree()
    logged = {key for key in tree.keys() if _p50(key) in summary.columns}
    segments = pd.DataFrame(index=summary.index)
    for key in stacked_stages(tree, logged):
        segments[key] = summary[_p50(key)]
    if _p50(PREFILL) in summary.columns:
        inside = segments.sum(axis=1, min_count=1).fillna(0.0) if len(segments.columns) else 0.0
        segments[PREFILL_OTHER] = (summary[_p50(PREFILL)] - inside).clip(lower=0.0)
    if _p50(DECODE) in summary.columns:
        segments[DECODE] = summary[_p50(DECODE)]
    return segments


def _color(tree: StageTree, key: str) -> str:
    keys = tree.keys()
    key = PREFILL if key == PREFILL_OTHER else key
    return stage_color(keys.index(key) if key in keys else len(keys))


def plot_stage_times(summary: pd.DataFrame, path: Path, tree: StageTree | None = None) -> Path | None:
    tree = tree or fixed_tree()
    segments = stage_stack(summary, tree)
    if segments.empty or segments.isna().all().all():
        return None
    labels = run_labels(summary)
    fig, ax = new_figure(width=max(6.0, 0.6 * len(labels) + 3), height=4.5)
    bottom = np.zeros(len(segments))
    x = np.arange(len(segments))
    for key in segments.columns:
        heights = segments[key].to_numpy(float)
        ax.bar(x, heights, bottom=bottom, color=_color(tree, key),
               label=key if key in (PREFILL_OTHER, DECODE) else label(key, tree))
        bottom = bottom + np.nan_to_num(heights)
    ax.set_xticks(x, labels, rotation=45, ha="right")
    style_axes(ax, title="Stage times (sub-stages nested in prefill)", ylabel="p50 time per sample (ms)")
    ax.legend(fontsize=STYLE["legend_size"])
    return save_figure(fig, path)


def wrapped(labels: list[str], width: int = TICK_WRAP) -> list[str]:
    """Each label broken into lines of at most `width` characters (at spaces and hyphens where it can)."""
    return ["\n".join(textwrap.wrap(text, width)) or text for text in labels]


def efficiency_figure(summary: pd.DataFrame, tree: StageTree | None = None):
    """The MFU / MBU bars per run and stage as a Figure, or None when no run logged either."""
    tree = tree or fixed_tree()
    stages = stage_order({metric_stage(name) for name in metric_columns(summary)} - {None}, tree)
    kinds = {kind: [s for s in stages if metric_key(s, kind) in summary.columns
                    and summary[metric_key(s, kind)].notna().any()] for kind in ("mfu_pct", "mbu_pct")}
    kinds = {kind: found for kind, found in kinds.items() if found}
    if not kinds:
        return None
    labels = wrapped(run_labels(summary))
    fig, axes = new_figure(width=max(6.0, RUN_SLOT_IN * len(labels) + 1.0) * len(kinds), height=5.0, cols=len(kinds))
    x = np.arange(len(labels))
    legend: dict[str, object] = {}
    for ax, (kind, kind_stages) in zip(_axes_list(axes), kinds.items()):
        width = 0.8 / len(kind_stages)
        for i, stage in enumerate(kind_stages):
            bars = ax.bar(x + i * width, summary[metric_key(stage, kind)].to_numpy(float), width,
                          color=_color(tree, stage), label=label(stage, tree))
            legend.setdefault(label(stage, tree), bars)
        ax.set_xticks(x + 0.4 - width / 2, labels)
        name = kind.removesuffix("_pct").upper()
        style_axes(ax, title=name, ylabel=f"{name} (% of peak)")
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=min(len(legend), 5),
               fontsize=STYLE["legend_size"])
    fit_x_tick_labels(fig, _axes_list(axes))
    return fig


def plot_efficiency(summary: pd.DataFrame, path: Path, tree: StageTree | None = None) -> Path | None:
    fig = efficiency_figure(summary, tree)
    return save_figure(fig, path) if fig is not None else None


def distribution_columns(tree: StageTree | None = None) -> list[str]:
    """samples.csv columns drawn: prefill, its direct children, decode, decode TPOT, e2e."""
    tree = tree or fixed_tree()
    stages = [PREFILL, *(child.key for child in tree.children(PREFILL)), DECODE]
    return [column(stage, "ms") for stage in stages] + [column(DECODE, "tpot_ms"), column(E2E, "ms")]


def plot_distributions(samples: Mapping[str, Mapping[str, pd.DataFrame]], summary: pd.DataFrame, path: Path,
                       tree: StageTree | None = None) -> Path | None:
    tables = {r: samples[r]["samples.csv"] for r in summary.index if r in samples and "samples.csv" in samples[r]}
    columns = [c for c in distribution_columns(tree) if any(c in frame.columns for frame in tables.values())]
    if not tables or not columns:
        return None
    labels = dict(zip(summary.index, run_labels(summary)))
    fig, axes = new_figure(width=max(4.0, 1.2 * len(tables) + 1.5) * len(columns) / 2 + 2, height=4.5,
                           cols=len(columns))
    for ax, name in zip(_axes_list(axes), columns):
        present = [r for r, frame in tables.items() if name in frame.columns]
        data = [pd.to_numeric(tables[r][name], errors="coerce").dropna().to_numpy(float) for r in present]
        ax.boxplot(data, tick_labels=[labels[r] for r in present])
        style_axes(ax, title=name, ylabel="ms")
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle("Per-sample latency distributions (samples.csv)", fontsize=STYLE["title_size"])
    return save_figure(fig, path)


def throughput_latency_points(runs: pd.DataFrame) -> pd.DataFrame | None:
    """The throughput-latency table of the runs (a search_runs frame), or None when they do not differ in batch
    size (then there is no figure)."""
    table = throughput_latency.points(runs)
    return table if throughput_latency.differs_in_batch_size(table) else None


def plot_throughput_latency(points: pd.DataFrame | None, path: Path) -> Path | None:
    """throughput_latency.png from `throughput_latency_points`; None without points."""
    return throughput_latency.plot(points, path) if points is not None else None
