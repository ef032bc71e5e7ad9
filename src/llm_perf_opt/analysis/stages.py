"""Group totals over the stage tree: the one place a group's value is made from its children's.

A `sum_of_children` stage (e.g. `vision`) holds disjoint sub-stages that run one after another inside
prefill, so its time, FLOPs and bytes are the sums of its children's. Groups are filled deepest first,
so a group of groups sums totals that already exist. A group is left absent when any child lacks the
value (a partial sum would understate it).
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from llm_perf_opt.schema import StageTree, column


def group_totals(values: Mapping[str, float], tree: StageTree) -> dict[str, float]:
    """{stage: value} with every group's total added (children must all be present)."""
    result = dict(values)
    for group in tree.bottom_up_groups():
        children = [child.key for child in tree.children(group.key)]
        if children and all(key in result for key in children):
            result[group.key] = float(sum(result[key] for key in children))
    return result


def add_group_columns(frame: pd.DataFrame, tree: StageTree, quantity: str = "ms") -> pd.DataFrame:
    """Per-row group totals as `<group>_<quantity>` columns (per-sample rows: samples.csv)."""
    for group in tree.bottom_up_groups():
        children = [column(child.key, quantity) for child in tree.children(group.key)]
        if children and all(name in frame.columns for name in children):
            total = frame[children].sum(axis=1, min_count=len(children))
            # Right after the group's children: samples.csv reads in stage order.
            after = max(frame.columns.get_loc(name) for name in children)
            frame.insert(after + 1, column(group.key, quantity), total)
    return frame
