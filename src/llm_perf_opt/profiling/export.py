"""The seed project's public export API: top operators, the stakeholder summary, and its rebuild.

    top_n_operators(records, n=10) -> list[dict]
    write_stakeholder_summary(path, top_ops, stage_takeaways) -> None
    build_summary(metrics_path, out_md) -> None
    operator_summary_for_metrics(operators_df, top_n) -> dict   # what the profiler adds to metrics.json

metrics.json contract: `build_summary` needs nothing but metrics.json, read through the run record
(`llm_perf_opt.record.load`, schema_version 2; a related_runs.json beside it, when there is one, lets the
recommendations cite the experiment's other runs); an older or malformed metrics.json is an InputError that
says what is wrong and to re-run the profile. For the operator part of the summary the profiler adds
the keys `operator_summary_for_metrics` returns:
- "top_operators": the top-N operator records over all stages, by total_time_ms;
- "top_operators_by_stage": {stage: its top-N records};
each record {stage, name, calls, total_time_ms, mean_time_ms, self_cpu_ms, total_cpu_ms,
self_device_ms, total_device_ms, self_cpu_memory_bytes} (device and memory fields only when
measured). Takeaways are not stored: they are derived from metrics.json each time
(llm_perf_opt.reports.takeaways.derive_takeaways), so a rebuilt summary always matches its numbers.
No torch is imported here.

Stage hint (top_n_operators): a record's own "stage" (where the trace placed it) wins. A record
without one gets a hint from its name, first matching rule, case-insensitive, with
"stage_inferred": True so it is never mistaken for a measurement:
  attn | attention | sdpa | flash | fmha           -> "attention"
  conv | sam | vision | patch | upsample | im2col  -> "vision"
  mm (aten::mm, addmm, bmm) | matmul | linear | gemm -> "matmul"
  norm                                              -> "normalization"
  embedding                                         -> "embedding"
  anything else                                     -> "other"
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from llm_perf_opt.record import load_related
from llm_perf_opt.reports import read_record
from llm_perf_opt.reports.stakeholder_summary import write_stakeholder_markdown
from llm_perf_opt.reports.stakeholder_summary import write_stakeholder_summary as write_summary_of_record

STAGE_HINT_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("attention", re.compile(r"attn|attention|sdpa|flash|fmha", re.IGNORECASE)),
    ("vision", re.compile(r"conv|sam|vision|patch|upsample|im2col", re.IGNORECASE)),
    ("matmul", re.compile(r"(^|[^a-z])(add|b|addb)?mm([^a-z]|$)|matmul|linear|gemm", re.IGNORECASE)),
    ("normalization", re.compile(r"norm", re.IGNORECASE)),
    ("embedding", re.compile(r"embedding", re.IGNORECASE)),
)
RECORD_FIELDS = ("stage", "name", "calls", "total_time_ms", "mean_time_ms", "self_cpu_ms", "total_cpu_ms",
                 "self_device_ms", "total_device_ms", "self_cpu_memory_bytes")


def infer_stage_hint(name: str) -> str:
    """A category from an operator name (rules in the module docstring)."""
    for hint, pattern in STAGE_HINT_RULES:
        if pattern.search(name or ""):
            return hint
    return "other"


def _time_key(record: Mapping[str, Any]) -> float:
    value = record.get("total_time_ms")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return -math.inf
    return value if math.isfinite(value) else -math.inf


def top_n_operators(records: Iterable[dict], n: int = 10) -> list[dict]:
    """The n records with the largest total_time_ms (largest first), each with a "stage" key.

    Records without a total_time_ms sort last. Inputs are not modified: each result is a copy.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    ranked = sorted(records, key=_time_key, reverse=True)[:n]
    result = []
    for record in ranked:
        record = dict(record)
        if not record.get("stage"):
            record["stage"] = infer_stage_hint(str(record.get("name", "")))
            record["stage_inferred"] = True
        result.append(record)
    return result


def write_stakeholder_summary(path: str, top_ops: list[dict], stage_takeaways: dict[str, str]) -> None:
    """Markdown (mdutils) with the top operators and the takeaways, written to exactly `path`."""
    write_stakeholder_markdown(path, top_ops=top_ops, takeaways=stage_takeaways)


def build_summary(metrics_path: str, out_md: str) -> None:
    """Regenerate stakeholder_summary.md from a run's metrics.json (InputError when it is not a readable
    schema_version 2 run record). A related_runs.json beside it is read too, so the rebuilt summary's
    recommendations match the one the run wrote; without it they say no other runs were consulted."""
    path = Path(metrics_path)
    write_summary_of_record(read_record(path), out_md, related=load_related(path if path.is_dir() else path.parent))


def _records(frame: pd.DataFrame) -> list[dict]:
    fields = [c for c in RECORD_FIELDS if c in frame.columns]
    records = []
    for row in frame[fields].to_dict(orient="records"):
        clean = {}
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                continue  # not measured (device fields on a CPU run): absent, not zero
            clean[key] = int(value) if key == "calls" else value
        records.append(clean)
    return records


def operator_summary_for_metrics(operators_df: pd.DataFrame, top_n: int) -> dict:
    """{"top_operators": [...], "top_operators_by_stage": {stage: [...]}} for metrics.json (see module doc)."""
    return {
        "top_operators": top_n_operators(_records(operators_df), top_n),
        "top_operators_by_stage": {
            stage: _records(group.nlargest(top_n, "total_time_ms"))
            for stage, group in operators_df.groupby("stage", sort=False)
        },
    }
