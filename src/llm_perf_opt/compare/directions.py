"""Which way is better for a metric, decided from its schema quantity (one rule for every table).

A metric name is parsed with `schema.parse_metric_key` ("decode/tpot_ms_p50" -> quantity "tpot_ms");
the quantity's unit decides:

- a rate per second (`tokens_per_s`): higher is better;
- otherwise the unit is the quantity's last word, ignoring an `_achievable` qualifier, a `_pct`
  scale (`mfu_pct` is MFU in percent) and a `_per_<thing>` denominator (`energy_j_per_token` -> `j`):
  lower is better for time (`ms`), memory (`mib`) and energy (`j`); higher for utilisation and achieved
  rates (`mfu`, `mbu`, `tflops`, `gbps`).

Anything else (FLOPs, bytes, shares, ratios, clocks, power) has no direction: it is shown, but never
judged improved or regressed.
"""

from __future__ import annotations

from typing import Literal

from llm_perf_opt.schema import parse_metric_key

Direction = Literal["lower", "higher"]

LOWER_UNITS = frozenset({"ms", "mib", "j"})
HIGHER_UNITS = frozenset({"mfu", "mbu", "tflops", "gbps"})
_QUALIFIERS = ("_pct", "_achievable")


def quantity_direction(quantity: str) -> Direction | None:
    """'lower' / 'higher' / None for a schema quantity ("ms", "tpot_ms", "tokens_per_s", "mfu", ...)."""
    numerator, per, denominator = quantity.partition("_per_")
    if per and denominator == "s":
        return "higher"
    for qualifier in _QUALIFIERS:
        numerator = numerator.removesuffix(qualifier)
    unit = numerator.rsplit("_", 1)[-1]
    if unit in HIGHER_UNITS:
        return "higher"
    if unit in LOWER_UNITS:
        return "lower"
    return None


def metric_direction(name: str) -> Direction | None:
    """The direction of an MLflow metric name (`<stage>/<quantity>[_<stat>]`); None for other names."""
    try:
        _, quantity, _ = parse_metric_key(name)
    except ValueError:
        return None
    return quantity_direction(quantity)
