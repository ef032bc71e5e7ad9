"""Which way is better for a metric, decided from its name's unit suffix (one rule for every table).

lower is better: times (`*_ms`, `*_ms_p50`, ...), memory (`*_mib*`), energy (`*j_per_token`, `*_j`);
higher is better: rates (`*_per_s*`), utilisation (`*_mfu`, `*_mbu`). Anything else has no direction:
it is shown, but never judged improved or regressed.
"""

from __future__ import annotations

import re
from typing import Literal

Direction = Literal["lower", "higher"]

# Statistic suffixes the profiler appends to a quantity (summary_stats.STATS, plus `count`).
_STAT_SUFFIX = re.compile(r"_(mean|std|min|max|p50|p90|p99|count)$")
_LOWER = re.compile(r"(?:^|[_/])(?:ms|mib|j)$|j_per_token$")
_HIGHER = re.compile(r"(?:^|[_/])(?:per_s|mfu|mbu)$")


def metric_direction(name: str) -> Direction | None:
    """'lower' / 'higher' / None for an MLflow metric name or a samples.csv column."""
    quantity = _STAT_SUFFIX.sub("", name)
    if _HIGHER.search(quantity):
        return "higher"
    if _LOWER.search(quantity):
        return "lower"
    return None
