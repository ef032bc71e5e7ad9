"""stage_breakdown.png: where one run's time goes, stage by stage, drawn from its record alone.

One horizontal bar per stage in the record's order (parents before children, each child indented
under its parent, so vision's parts sit under vision, vision under prefill): the bar is the stage's
mean time (ms), annotated with its share of its parent. Nested bars overlap in time with their parent
by construction: a child is part of its parent, never added to it.
"""

from __future__ import annotations

from pathlib import Path

from llm_perf_opt.record import RunRecord
from llm_perf_opt.reports.plotting import new_figure, save_figure, stage_color, style_axes

BREAKDOWN_FILE = "stage_breakdown.png"


def timed_stages(record: RunRecord) -> list[tuple[str, float, float | None, int]]:
    """(indented label, mean ms, share of parent, depth) of every stage with a mean time, in record order."""
    tree = record.tree()
    rows = []
    for stage in record.stages:
        mean = stage.mean()
        if mean is not None:
            depth = tree.depth(stage.key)
            rows.append(("    " * depth + stage.label, mean, stage.share_of_parent, depth))
    return rows


def plot_stage_breakdown(record: RunRecord, path: str | Path) -> Path | None:
    """The picture (None when no stage was timed)."""
    rows = timed_stages(record)
    if not rows:
        return None
    figure, ax = new_figure(8.0, 1.2 + 0.45 * len(rows))
    positions = range(len(rows))
    ax.barh(list(positions), [ms for _, ms, _, _ in rows], color=[stage_color(depth) for *_, depth in rows])
    labels = [label for label, *_ in rows]
    ax.set_yticks(list(positions), labels, fontsize=8, family="monospace")
    # Left-aligned (so the indentation shows), padded by the widest label: ~0.6 em per monospace character.
    ax.tick_params(axis="y", pad=0.6 * 8 * max(len(label) for label in labels) + 4)
    for tick in ax.get_yticklabels():
        tick.set_horizontalalignment("left")
    ax.invert_yaxis()  # record order top to bottom
    longest = max(ms for _, ms, _, _ in rows)
    for position, (_, ms, share, _) in zip(positions, rows):
        text = f"{ms:.3g} ms" + (f" ({share:.1%} of parent)" if share is not None else "")
        ax.text(ms + 0.01 * longest, position, text, va="center", fontsize=7)
    ax.set_xlim(0, longest * 1.45)  # room for the annotations
    workload = record.workload
    title = f"Stage times (mean) - {workload.family} {workload.preset or ''} on {record.env.get('device_name')}"
    style_axes(ax, title=title, xlabel="ms (nested stages are part of their parent, never added to it)")
    return save_figure(figure, path)
