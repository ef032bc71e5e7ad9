"""Comparison plots (matplotlib, Agg backend: no display needed).

- stage_times.png: per run, a stacked bar of p50 stage times. Vision runs inside prefill, so the stack is
  vision sub-stages + "prefill (other)" + decode, where prefill (other) = prefill p50 - sum of the
  vision sub-stage p50s (clipped at 0: p50s are not additive, so this is an approximation of the
  remainder). The bar's prefill part therefore equals the prefill p50; vision is never counted twice.
- efficiency.png: MFU and MBU per stage and run (only when runs logged `efficiency/<stage>_mfu|_mbu`).
- latency_distributions.png: box plots per run of the per-sample times from samples.csv.
A metric a run lacks is left out of its bar (no zero-height stand-in).
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# ttft_ms equals prefill_ms (the first token comes out of prefill), so it is not drawn twice.
DISTRIBUTION_COLUMNS = ("prefill_ms", "vision_ms", "decode_ms", "tpot_ms", "e2e_ms")
_VISION_SUB = re.compile(r"vision/(.+)_ms_p50")
_PIPELINE_ORDER = ("sam", "encoder", "projector")  # DeepSeek-OCR-2's vision pipeline; other names follow


def _pipeline_rank(column: str) -> tuple[int, str]:
    name = _VISION_SUB.fullmatch(column).group(1)
    return (_PIPELINE_ORDER.index(name) if name in _PIPELINE_ORDER else len(_PIPELINE_ORDER), name)


def run_labels(summary: pd.DataFrame) -> list[str]:
    labels = []
    for run_id, row in summary.iterrows():
        name = row.get("run_name")
        name = f"{name} " if isinstance(name, str) and name else ""
        labels.append(f"{'[B] ' if row['baseline'] else ''}{name}{str(run_id)[:8]}")
    return labels


def stage_stack(summary: pd.DataFrame) -> pd.DataFrame:
    """Segments (columns) per run (rows), in ms: vision sub-stages, prefill (other), decode."""
    segments = pd.DataFrame(index=summary.index)
    vision_subs = sorted((c for c in summary.columns if _VISION_SUB.fullmatch(str(c))), key=_pipeline_rank)
    if not vision_subs and "vision/ms_p50" in summary.columns:
        vision_subs = ["vision/ms_p50"]
    for column in vision_subs:
        match = _VISION_SUB.fullmatch(column)
        segments[f"vision/{match.group(1)}" if match else "vision"] = summary[column]
    if "prefill/ms_p50" in summary.columns:
        vision_total = segments.sum(axis=1, min_count=1).fillna(0.0) if vision_subs else 0.0
        segments["prefill (other)"] = (summary["prefill/ms_p50"] - vision_total).clip(lower=0.0)
    if "decode/ms_p50" in summary.columns:
        segments["decode"] = summary["decode/ms_p50"]
    return segments


def plot_stage_times(summary: pd.DataFrame, path: Path) -> Path | None:
    segments = stage_stack(summary)
    if segments.empty or segments.isna().all().all():
        return None
    labels = run_labels(summary)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(labels) + 3), 4.5))
    bottom = np.zeros(len(segments))
    x = np.arange(len(segments))
    for column in segments.columns:
        heights = segments[column].to_numpy(float)
        ax.bar(x, heights, bottom=bottom, label=column)
        bottom = bottom + np.nan_to_num(heights)
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("p50 time per sample (ms)")
    ax.set_title("Stage times (vision nested in prefill)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_efficiency(summary: pd.DataFrame, path: Path) -> Path | None:
    kinds = {kind: [c for c in summary.columns if re.fullmatch(rf"efficiency/(.+)_{kind}", str(c))]
             for kind in ("mfu", "mbu")}
    kinds = {k: v for k, v in kinds.items() if v and summary[v].notna().any().any()}
    if not kinds:
        return None
    labels = run_labels(summary)
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5), squeeze=False)
    for ax, (kind, columns) in zip(axes[0], kinds.items()):
        stages = [c[len("efficiency/"):-len(kind) - 1] for c in columns]
        width = 0.8 / len(labels)
        for i, (label, (_, row)) in enumerate(zip(labels, summary.iterrows())):
            ax.bar(np.arange(len(stages)) + i * width, row[columns].to_numpy(float), width, label=label)
        ax.set_xticks(np.arange(len(stages)) + 0.4 - width / 2, stages)
        ax.set_ylabel(f"{kind.upper()} (fraction of peak)")
        ax.set_title(kind.upper())
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_distributions(samples: dict[str, pd.DataFrame], summary: pd.DataFrame, path: Path) -> Path | None:
    run_ids = [r for r in summary.index if r in samples]
    columns = [c for c in DISTRIBUTION_COLUMNS if any(c in samples[r].columns for r in run_ids)]
    if not run_ids or not columns:
        return None
    labels = dict(zip(summary.index, run_labels(summary)))
    fig, axes = plt.subplots(1, len(columns), figsize=(max(4.0, 1.2 * len(run_ids) + 1.5) * len(columns) / 2 + 2, 4.5),
                             squeeze=False)
    for ax, column in zip(axes[0], columns):
        present = [r for r in run_ids if column in samples[r].columns]
        data = [pd.to_numeric(samples[r][column], errors="coerce").dropna().to_numpy(float) for r in present]
        ax.boxplot(data, tick_labels=[labels[r] for r in present])
        ax.set_title(column)
        ax.set_ylabel("ms")
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    fig.suptitle("Per-sample latency distributions (samples.csv)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
