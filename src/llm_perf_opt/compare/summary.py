"""The summary table: each run's headline metrics and each run's ratio to the baseline.

Input is the search_runs frame (columns `metrics.<name>`, `tags.<name>`, ...). The default headline set
is made from the stage schema: every logged metric name is parsed (`schema.parse_metric_key`) and kept
when its (stage, quantity, statistic) matches a rule of DEFAULT_HEADLINE, for every stage the runs
logged, in the baseline's stage order (compare/stages.py). `summary.metrics` replaces the default set
with full-match regular expressions; `summary.extra_metrics` appends to either. ratio = run value /
baseline value (dimensionless; the baseline's own ratio is 1). A metric a run did not log is NaN and its
ratio NaN: never 0. Everything is column-wise pandas, so 1,000 runs summarise in well under a second
after the query.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from llm_perf_opt.compare.stages import NOT_STAGES, stage_order
from llm_perf_opt.errors import InputError
from llm_perf_opt.schema import DECODE, THROUGHPUT_GROUP, StageTree, parse_metric_key

EVERY_STAGE = None
# (stage or EVERY_STAGE, quantity, statistic or None), in display order: per-stage p50 times (e2e's
# included), TPOT, pages/s and tokens/s, per-stage MFU and MBU (%), J per decoded token, per-stage peak memory.
DEFAULT_HEADLINE: tuple[tuple[str | None, str, str | None], ...] = (
    (EVERY_STAGE, "ms", "p50"),
    (DECODE, "tpot_ms", "p50"),
    (THROUGHPUT_GROUP, "pages_per_s", None),
    (THROUGHPUT_GROUP, "tokens_per_s", None),
    (EVERY_STAGE, "mfu_pct", None),
    (EVERY_STAGE, "mbu_pct", None),
    (DECODE, "energy_j_per_token", None),
    (EVERY_STAGE, "peak_mem_mib", "max"),
)
RATIO_PREFIX = "ratio:"
RUN_COLUMNS = ("run_id", "run_name", "experiment_id", "start_time", "status")


def logged_metrics(runs: pd.DataFrame) -> list[str]:
    """The metric names of a search_runs frame (its `metrics.<name>` columns)."""
    return [c[len("metrics."):] for c in runs.columns if c.startswith("metrics.")]


def default_headline(names: Iterable[str], tree: StageTree | None = None) -> list[str]:
    """The names among `names` that DEFAULT_HEADLINE selects, stages in the tree's order."""
    parsed: dict[tuple[str, str, str | None], str] = {}
    for name in names:
        try:
            key = parse_metric_key(name)
        except ValueError:
            continue
        parsed[key] = name
    stages = stage_order({stage for stage, _, _ in parsed if stage not in NOT_STAGES}, tree)
    ordered: list[str] = []
    for rule_stage, quantity, stat in DEFAULT_HEADLINE:
        for stage in stages if rule_stage is EVERY_STAGE else [rule_stage]:
            name = parsed.get((stage, quantity, stat))
            if name is not None and name not in ordered:
                ordered.append(name)
    return ordered


def _matching(names: Sequence[str], patterns: Sequence[str], ordered: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise InputError(f"summary metric pattern {pattern!r} is not a regular expression ({exc}): "
                             "fix summary.metrics / summary.extra_metrics (e.g. 'decode/step_ms_p90')") from exc
        ordered += sorted(n for n in names if regex.fullmatch(n) and n not in ordered)
    return ordered


def headline_metrics(runs: pd.DataFrame, patterns: Sequence[str] | None = None, extra: Sequence[str] = (),
                     tree: StageTree | None = None) -> list[str]:
    """Metric names of the frame: the default set (patterns None) or those matching `patterns`, then `extra`'s;
    a name appears once."""
    names = logged_metrics(runs)
    ordered = default_headline(names, tree) if patterns is None else _matching(names, patterns, [])
    return _matching(names, extra, ordered)


def summary_table(runs: pd.DataFrame, baseline_run_id: str, patterns: Sequence[str] | None = None,
                  extra: Sequence[str] = (), tree: StageTree | None = None) -> pd.DataFrame:
    """One row per run (index run_id): run columns, `baseline`, metric values, then `ratio:<metric>`."""
    metrics = headline_metrics(runs, patterns, extra, tree)
    frame = pd.DataFrame({
        "run_id": runs["run_id"].astype(str),
        "run_name": runs.get("tags.mlflow.runName", pd.Series(np.nan, index=runs.index)),
        "experiment_id": runs.get("experiment_id"),
        "start_time": runs.get("start_time"),
        "status": runs.get("status"),
    }).set_index("run_id", drop=False)
    frame["baseline"] = frame["run_id"] == baseline_run_id
    values = runs[[f"metrics.{m}" for m in metrics]].apply(pd.to_numeric, errors="coerce").astype(float)
    values.columns = metrics
    values.index = frame.index
    baseline_values = values.loc[baseline_run_id]
    # 0 / 0 or x / 0 has no meaningful ratio: NaN, not inf.
    ratios = values.div(baseline_values.where(baseline_values != 0), axis=1)
    ratios.columns = [f"{RATIO_PREFIX}{m}" for m in metrics]
    return pd.concat([frame, values, ratios], axis=1)


def metric_columns(summary: pd.DataFrame) -> list[str]:
    """The metric value columns of a summary table, in order."""
    ratios = {c[len(RATIO_PREFIX):] for c in summary.columns if c.startswith(RATIO_PREFIX)}
    return [c for c in summary.columns if c in ratios]
