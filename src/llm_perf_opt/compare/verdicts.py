"""Per-sample verdicts: did a candidate run change a metric relative to the baseline?

For every samples.csv column with a direction (directions.py: `*_ms` lower is better, `*_per_s` higher):
- p: Mann-Whitney U, two-sided (scipy.stats.mannwhitneyu, method 'auto': exact when one side has <= 8
  samples and there are no ties, else the normal approximation with tie and continuity correction);
- median ratio = median(candidate) / median(baseline), with a bootstrap confidence interval
  (scipy.stats.bootstrap, independent resampling of both sides, seeded numpy Generator);
- verdict: `improved` / `regressed` when p < alpha AND |median ratio - 1| >= min_effect, in the
  metric's better / worse direction; otherwise `no significant change`.
- `too few samples` when the sample sizes cannot reach alpha at all: the smallest p the test can give
  is that of two completely separated samples (exact test: 2 / C(n1 + n2, n1); n1 = n2 = 3 gives 0.1,
  n1 = n2 = 4 gives 0.029), computed by scipy with the same method, so no table is hard-coded;
- `environment mismatch` when the runs' environments differ and allow_env_mismatch is false (the
  statistics are still reported, the verdict is withheld).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from math import comb

import numpy as np
import pandas as pd
from scipy import stats

from llm_perf_opt.compare.directions import metric_direction

IMPROVED = "improved"
REGRESSED = "regressed"
NO_CHANGE = "no significant change"
TOO_FEW = "too few samples"
ENV_MISMATCH = "environment mismatch"
VERDICTS = (IMPROVED, REGRESSED, NO_CHANGE, TOO_FEW, ENV_MISMATCH)

# samples.csv bookkeeping columns: sizes and indices, not measurements.
NOT_MEASURED = {"repeat", "input_index", "input_id", "prompt_tokens", "image_tokens", "new_tokens", "clock"}

VERDICT_COLUMNS = ["run_id", "metric", "direction", "n_baseline", "n_candidate", "baseline_median",
                   "candidate_median", "median_ratio", "ci_low", "ci_high", "p_value", "min_p_value", "verdict",
                   "note"]


@dataclass(frozen=True)
class VerdictSettings:
    alpha: float = 0.05
    min_effect: float = 0.02  # relative change of the median (0.02 = 2 %)
    confidence: float = 0.95
    bootstrap_resamples: int = 2000
    bootstrap_method: str = "percentile"  # percentile | BCa | basic (scipy.stats.bootstrap)
    seed: int = 0
    allow_env_mismatch: bool = False


@lru_cache(maxsize=None)
def min_achievable_p(n_baseline: int, n_candidate: int) -> float:
    """The smallest two-sided MWU p-value these sample sizes can produce (complete separation, no ties)."""
    if n_baseline < 1 or n_candidate < 1:
        return 1.0
    separated = stats.mannwhitneyu(np.arange(n_baseline), np.arange(n_baseline, n_baseline + n_candidate),
                                   alternative="two-sided", method="auto")
    return float(separated.pvalue)


def exact_min_p(n_baseline: int, n_candidate: int) -> float:
    """Closed form of the exact test's smallest two-sided p: 2 / C(n1 + n2, n1) (for docs and tests)."""
    return min(1.0, 2.0 / comb(n_baseline + n_candidate, n_baseline))


def min_samples_per_side(alpha: float) -> int:
    """Smallest n with equal sides (n vs n) whose achievable p is below alpha."""
    n = 1
    while min_achievable_p(n, n) >= alpha:
        n += 1
    return n


def measured_columns(samples: pd.DataFrame) -> list[str]:
    """samples.csv columns that are measurements with a better direction."""
    return [c for c in samples.columns if c not in NOT_MEASURED and metric_direction(c) is not None]


def _median_ratio(candidate: np.ndarray, baseline: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.median(candidate, axis=axis) / np.median(baseline, axis=axis)


def compare_metric(baseline: np.ndarray, candidate: np.ndarray, direction: str, settings: VerdictSettings,
                   rng: np.random.Generator) -> dict:
    """Statistics and verdict for one metric (environment not considered here)."""
    n_base, n_cand = len(baseline), len(candidate)
    min_p = min_achievable_p(n_base, n_cand)
    base_median, cand_median = float(np.median(baseline)), float(np.median(candidate))
    ratio = cand_median / base_median if base_median != 0 else float("nan")
    p_value = float(stats.mannwhitneyu(candidate, baseline, alternative="two-sided", method="auto").pvalue)
    ci_low = ci_high = float("nan")
    if n_base >= 2 and n_cand >= 2 and base_median != 0 and settings.bootstrap_resamples > 0:
        with warnings.catch_warnings():
            # A degenerate resample distribution (e.g. constant samples) gives a NaN interval, reported as such.
            warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
            warnings.simplefilter("ignore", category=RuntimeWarning)
            interval = stats.bootstrap((candidate, baseline), _median_ratio, vectorized=True, paired=False,
                                       n_resamples=settings.bootstrap_resamples,
                                       confidence_level=settings.confidence, method=settings.bootstrap_method,
                                       rng=rng).confidence_interval
        ci_low, ci_high = float(interval.low), float(interval.high)
    if min_p >= settings.alpha:
        verdict = TOO_FEW
    elif np.isfinite(p_value) and p_value < settings.alpha and np.isfinite(ratio) \
            and abs(ratio - 1.0) >= settings.min_effect:
        better = ratio < 1.0 if direction == "lower" else ratio > 1.0
        verdict = IMPROVED if better else REGRESSED
    else:
        verdict = NO_CHANGE
    return {"direction": direction, "n_baseline": n_base, "n_candidate": n_cand, "baseline_median": base_median,
            "candidate_median": cand_median, "median_ratio": ratio, "ci_low": ci_low, "ci_high": ci_high,
            "p_value": p_value, "min_p_value": min_p, "verdict": verdict}


def verdict_table(samples: dict[str, pd.DataFrame], baseline_run_id: str, candidate_run_ids: list[str],
                  env_mismatches: dict[str, list[str]], settings: VerdictSettings) -> pd.DataFrame:
    """One row per (candidate, metric measured in both runs). Warns once per candidate with too few samples."""
    base_frame = samples[baseline_run_id]
    rng = np.random.default_rng(settings.seed)
    rows = []
    for run_id in candidate_run_ids:
        if run_id not in samples:
            continue
        cand_frame = samples[run_id]
        mismatch = env_mismatches.get(run_id, [])
        too_few: list[str] = []
        for metric in measured_columns(base_frame):
            if metric not in cand_frame.columns:
                continue
            base = pd.to_numeric(base_frame[metric], errors="coerce").dropna().to_numpy(float)
            cand = pd.to_numeric(cand_frame[metric], errors="coerce").dropna().to_numpy(float)
            if len(base) == 0 or len(cand) == 0:
                continue
            row = {"run_id": run_id, "metric": metric,
                   **compare_metric(base, cand, metric_direction(metric), settings, rng), "note": ""}
            if row["verdict"] == TOO_FEW:
                too_few.append(metric)
                row["note"] = (f"{len(base)} vs {len(cand)} samples: the smallest possible p is "
                               f"{row['min_p_value']:.3g} >= alpha {settings.alpha}")
            if mismatch:
                row["note"] = "; ".join(filter(None, [row["note"], "environment differs: " + ", ".join(mismatch)]))
                if not settings.allow_env_mismatch:
                    row["verdict"] = ENV_MISMATCH
            rows.append(row)
        if too_few:
            warnings.warn(f"run {run_id}: too few samples for a verdict at alpha={settings.alpha} on "
                          f"{', '.join(too_few)} (needs at least {min_samples_per_side(settings.alpha)} "
                          "per side with equal sizes): profile with more profiling.repeats or inputs",
                          stacklevel=2)
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)
