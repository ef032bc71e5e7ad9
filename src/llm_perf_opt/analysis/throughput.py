"""Run-wide throughput from the timed samples: work done over the time it took, summed over samples.

- pages_per_s = inputs processed / sum of e2e_ms (one input, a page or a prompt, per sample; with
  batches, the `batch_size` inputs of every sample);
- tokens_per_s = tokens generated / sum of e2e_ms (whole requests: prefill included; a batch of B
  generates B x new_tokens);
- decode_tokens_per_s = decode tokens (all but the first of each request) / sum of decode_ms;
- pages_per_day = pages_per_s x 86,400 (pages a day on this one device, at the run's output length).

These are ratios of totals (the rate a server doing the same work back to back sustains), not means of
per-sample rates (which over-weight the fastest samples); the per-sample rates stay in samples.csv.
"""

from __future__ import annotations

import math

import pandas as pd

from llm_perf_opt.schema import DECODE, E2E, column

SECONDS_PER_DAY = 86_400
BATCH_COLUMN = "batch_size"  # samples.csv, with profiling.batch_size > 1: inputs in the sample's batch


def _numbers(samples: pd.DataFrame, name: str) -> pd.Series | None:
    """The column as numbers, or None when it is missing or any value is not a number."""
    if name not in samples.columns or not len(samples):
        return None
    values = pd.to_numeric(samples[name], errors="coerce")
    return values if values.notna().all() else None


def run_throughput(samples: pd.DataFrame) -> dict[str, float]:
    """{pages_per_s, tokens_per_s, decode_tokens_per_s[, pages_per_day]}: each present when its inputs were
    measured."""
    result: dict[str, float] = {}
    e2e_ms, decode_ms = _numbers(samples, column(E2E, "ms")), _numbers(samples, column(DECODE, "ms"))
    tokens = _numbers(samples, "new_tokens")
    batched = BATCH_COLUMN in samples.columns
    batch = _numbers(samples, BATCH_COLUMN) if batched else pd.Series(1, index=samples.index)
    if batch is None:
        return {}
    pages = float(batch.sum())
    if e2e_ms is not None and e2e_ms.sum():
        result["pages_per_s"] = pages / float(e2e_ms.sum()) * 1e3
        result["pages_per_day"] = result["pages_per_s"] * SECONDS_PER_DAY
        if tokens is not None:
            result["tokens_per_s"] = float((tokens * batch).sum()) / float(e2e_ms.sum()) * 1e3
    if decode_ms is not None and decode_ms.sum() and tokens is not None:
        decode_tokens = float(((tokens - 1) * batch).sum())
        if decode_tokens > 0:
            result["decode_tokens_per_s"] = decode_tokens / float(decode_ms.sum()) * 1e3
    return {key: value for key, value in result.items() if math.isfinite(value)}
