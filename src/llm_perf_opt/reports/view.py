"""Reading a RunRecord for display: shares, parents, labels and operator stages, all from the record.

Nesting comes from `StageRecord.parent` (never from a key's spelling); a stage is shown by its
`label`. Absent numbers stay None: nothing here turns a missing value into a zero.
"""

from __future__ import annotations

import math
from typing import Any

from llm_perf_opt.record import RunRecord, StageRecord


def finite(value: Any) -> float | None:
    """`value` as a float when it is a finite number, else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def pct(fraction: float) -> str:
    """A fraction as a percentage with one decimal; two significant digits below 0.1%, so a small
    measured share never reads as '0.0%'."""
    return f"{fraction:.1%}" if fraction == 0 or abs(fraction) >= 0.001 else f"{100 * fraction:.2g}%"


def parent_of(record: RunRecord, stage: StageRecord) -> StageRecord | None:
    return record.stage(stage.parent) if stage.parent is not None else None


def share_of_parent(record: RunRecord, stage: StageRecord) -> float | None:
    """The stage's share of its parent's mean time, as the record holds it (None: not computable)."""
    return stage.share_of_parent


def resolve_stage(record: RunRecord, name: Any) -> StageRecord | None:
    """The record's stage an operator row names (its stage key, as the profiler's ranges spell it). None
    for `other`, name hints ('attention') and anything else that is not a stage of this run."""
    return record.stage(name) if isinstance(name, str) and name else None


def stage_display(record: RunRecord | None, name: Any) -> str:
    """A stage's label when `name` is one of the record's stages, else the name as given."""
    stage = resolve_stage(record, name) if record is not None else None
    return stage.label if stage is not None else ("n/a" if name is None or name == "" else str(name))


def profiled_ms(stage: StageRecord | None) -> float | None:
    """The stage's time in the profiled pass, summed over its ranges (what operator totals sum within)."""
    if stage is None or stage.profiled is None:
        return None
    value = finite(stage.profiled.profiled_ms)
    return value if value is not None and value > 0 else None


def operator_share(total_time_ms: Any, stage: StageRecord | None) -> float | None:
    """An operator's total time over its stage's profiled time (0..1), or None when either is absent."""
    total, whole = finite(total_time_ms), profiled_ms(stage)
    return None if total is None or whole is None else total / whole


def ordered_stage_names(record: RunRecord, names: list[Any]) -> list[Any]:
    """`names` (operator table stages) in the record's stage order; names that are not stages last, as given."""
    order = {stage.key: index for index, stage in enumerate(record.stages)}

    def rank(item: tuple[int, Any]) -> tuple[int, int]:
        position, name = item
        stage = resolve_stage(record, name)
        return (order[stage.key], position) if stage is not None else (len(order), position)

    return [name for _, name in sorted(enumerate(names), key=rank)]
