"""The MLflow run description (tag `mlflow.note.content`): a few Markdown lines read from the record alone.

`run_note(record)`: status, the headline latencies (TTFT = prefill ms p50, TPOT = decode tpot_ms p50,
e2e ms p50, tokens/s p50), each stage's ms p50 with MFU/MBU when known, nested by parent, and the run
directory. `comparison_note(runs, baseline)`: the compared runs as links to their MLflow pages.
Missing numbers are left out (or shown as n/a), never 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from llm_perf_opt.record import RunRecord, StageRecord
from llm_perf_opt.schema import DECODE, E2E, PREFILL

# MLflow 3.17's UI picks its GenAI or Model training view from this URL parameter, else from the browser's
# last choice (default GenAI); the experiment tag mlflow.experimentKind does not decide it. Links carry it.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def number(value: float | None) -> str:
    """2 decimals from 1 up, 3 significant digits below (a 0.04 ms sub-stage is not 0.00)."""
    if value is None:
        return "n/a"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def percent(share: float) -> str:
    return f"{share * 100:.3g}%"


def _p50(stage: StageRecord | None, quantity: str = "ms") -> float | None:
    stats = stage.stats.get(quantity) if stage is not None else None
    return stats.p50 if stats is not None else None


def _stage_line(stage: StageRecord, depth: int) -> str:
    parts = [f"{stage.label}: {number(_p50(stage))} ms"]
    efficiency = stage.efficiency
    if efficiency is not None and efficiency.mfu is not None:
        parts.append(f"MFU {percent(efficiency.mfu)}")
    if efficiency is not None and efficiency.mbu is not None:
        parts.append(f"MBU {percent(efficiency.mbu)}")
    return "  " * depth + "- " + " · ".join(parts)


def _stage_lines(record: RunRecord) -> list[str]:
    """The record's stages in its order, indented by their depth (parents from the record, not names)."""
    parents = {stage.key: stage.parent for stage in record.stages}
    lines = []
    for stage in record.stages:
        depth, parent = 0, stage.parent
        while parent is not None and depth < len(parents):
            depth, parent = depth + 1, parents.get(parent)
        lines.append(_stage_line(stage, depth))
    return lines


def run_note(record: RunRecord) -> str:
    """The run's description in Markdown (see the module's docstring)."""
    work = record.workload
    extra = work.model_extra or {}
    what = " · ".join(str(v) for v in (work.family, work.preset, extra.get("image_mode"), work.dtype,
                                        record.env.get("device_name") or work.device) if v)
    lines = [f"**{record.status}** · {what} · {record.samples} samples"]
    if record.error:
        lines.append(f"error: {record.error.strip().splitlines()[0]}")
    e2e = record.stage(E2E)
    lines += ["", f"- TTFT (prefill p50): {number(_p50(record.stage(PREFILL)))} ms",
              f"- TPOT (decode p50): {number(_p50(record.stage(DECODE), 'tpot_ms'))} ms",
              f"- e2e p50: {number(_p50(e2e))} ms · {number(_p50(e2e, 'tokens_per_s'))} tokens/s"]
    if record.stages:
        lines += ["", "Stages (ms p50):", *_stage_lines(record)]
    lines += ["", f"Run directory: `{record.run.run_dir}`"]
    return "\n".join(lines) + "\n"


def run_link(run: Mapping[str, Any]) -> str:
    """`[name](#/experiments/<id>/runs/<run id>)`: a link the MLflow UI resolves (its routes are hash routes)."""
    run_id = str(run["run_id"])
    name = run.get("name")
    label = str(name) if name and str(name) not in ("nan", "None") else run_id
    label = label.replace("[", "(").replace("]", ")")
    return f"[{label}](#/experiments/{run['experiment_id']}/runs/{run_id}?{MODEL_TRAINING_VIEW})"


def comparison_note(runs: Iterable[Mapping[str, Any]], baseline: str) -> str:
    """The compared runs (each with run_id, experiment_id and name) as links, the baseline first and marked."""
    runs = list(runs)
    ordered = sorted(runs, key=lambda run: str(run["run_id"]) != baseline)  # stable: the rest keep their order
    lines = [f"Comparison of {len(runs)} runs against baseline `{baseline[:8]}`:", ""]
    lines += [f"- {run_link(run)}" + (" (baseline)" if str(run["run_id"]) == baseline else "") for run in ordered]
    return "\n".join(lines) + "\n"
