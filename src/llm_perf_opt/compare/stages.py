"""Stages of the compared runs: their order, nesting and labels, from the baseline's run record.

The stage tree comes from the baseline run's metrics.json (`record.load(...).tree()`), never from the
spelling of metric names. Without a readable record (an older run, no artifact, no run directory) the
tree holds only the fixed stages (e2e > prefill, decode); sub-stages then keep their metrics in the
tables but are not nested in the stage plot.
"""

from __future__ import annotations

from collections.abc import Iterable

from llm_perf_opt.schema import DEVICE_GROUP, E2E, RUN_GROUP, THROUGHPUT_GROUP, StageTree, parse_metric_key

NOT_STAGES = frozenset({DEVICE_GROUP, RUN_GROUP, THROUGHPUT_GROUP})


def fixed_tree() -> StageTree:
    """e2e > prefill, decode: the stages every run has."""
    return StageTree.from_paths([])


def stage_order(stages: Iterable[str], tree: StageTree | None) -> list[str]:
    """The given stage keys in display order: the tree's (e2e last), then keys it lacks (sorted), then e2e."""
    stages = set(stages)
    known = [key for key in (tree or fixed_tree()).keys() if key in stages and key != E2E]
    unknown = sorted(stages - set(known) - {E2E})
    return known + unknown + ([E2E] if E2E in stages else [])


def metric_stage(name: str) -> str | None:
    """The stage a metric name belongs to; None for device/run groups and names outside the schema."""
    try:
        stage, _, _ = parse_metric_key(name)
    except ValueError:
        return None
    return None if stage in NOT_STAGES else stage


def label(key: str, tree: StageTree | None) -> str:
    tree = tree or fixed_tree()
    return tree.get(key).label if key in tree else key
