"""Run-wide throughput from the timed samples: work done over the time it took, summed over samples.

- pages_per_s = inputs processed / sum of e2e_ms (one input, a page or a prompt, per sample);
- tokens_per_s = tokens generated / sum of e2e_ms (whole requests: prefill included);
- decode_tokens_per_s = decode tokens (all but the first of each sample) / sum of decode_ms.

These are ratios of totals (the rate a server doing the same work back to back sustains), not means of
per-sample rates (which over-weight the fastest samples); the per-sample rates stay in samples.csv.
"""

from __future__ import annotations

import math

import pandas as pd

from llm_perf_opt.schema import DECODE, E2E, column


def _total(samples: pd.DataFrame, name: str) -> float | None:
    if name not in samples.columns:
        return None
    values = pd.to_numeric(samples[name], errors="coerce")
    return float(values.sum()) if values.notna().all() and len(values) else None


def run_throughput(samples: pd.DataFrame) -> dict[str, float]:
    """{pages_per_s, tokens_per_s, decode_tokens_per_s}: each present when its inputs were measured."""
    result: dict[str, float] = {}
    e2e_ms, decode_ms = _total(samples, column(E2E, "ms")), _total(samples, column(DECODE, "ms"))
    tokens = _total(samples, "new_tokens")
    if e2e_ms:
        result["pages_per_s"] = len(samples) / e2e_ms * 1e3
        if tokens is not None:
            result["tokens_per_s"] = tokens / e2e_ms * 1e3
    if decode_ms and tokens is not None and tokens > len(samples):
        result["decode_tokens_per_s"] = (tokens - len(samples)) / decode_ms * 1e3
    return {key: value for key, value in result.items() if math.isfinite(value)}
