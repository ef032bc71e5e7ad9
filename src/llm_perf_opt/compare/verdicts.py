"""Per-sample verdicts: did a candidate run change a metric relative to the baseline?

Which metrics: every (stage, quantity) the baseline logged with statistics (`<stage>/<quantity>_<stat>`,
parsed with `schema.parse_metric_key`) whose quantity has a direction (directions.py: `ms` lower is better,
`tokens_per_s` higher); its samples are the column `schema.column(stage, quantity)` of samples.csv (one
row per input and repeat), else of decode_steps.csv (one row per decode step: `decode/step_ms`). For each:
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from math import comb

import numpy as np
import pandas as pd
from scipy import stats

from llm_perf_opt.compare.directions import Direction, quantity_direction
from llm_perf_opt.compare.stages import NOT_STAGES, stage_order
from llm_perf_opt.schema import StageTree, column, metric_key, parse_metric_key

IMPROVED = "improved"
REGRESSED = "regressed"
NO_CHANGE = "no significant change"
TOO_FEW = "too few samples"
ENV_MISMATCH = "environment mismatch"
VERDICTS = (IMPROVED, REGRESSED, NO_CHANGE, TOO_FEW, ENV_MISMATCH)

# Per-sample files of a run, searched in this order for a metric's column.
SAMPLE_FILES = ("samples.csv", "decode_steps.csv")

VERDICT_COLUMNS = ["run_id", "metric", "source", "column", "direction", "n_baseline", "n_candidate", "baseline_median",
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


@cache
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


@dataclass(frozen=True)
class SampledMetric:
    """A metric with per-sample values: `metric` is `<stage>/<quantity>`, `column` its per-sample column."""

    stage: str
    quantity: str
    direction: Direction

    @property
    def metric(self) -> str:
        return metric_key(self.stage, self.quantity)

    @property
    def column(self) -> str:
        return column(self.stage, self.quantity)


def sampled_metrics(names: Iterable[str], tree: StageTree | None = None) -> list[SampledMetric]:
    """The (stage, quantity) pairs logged with a statistic and a direction: stages in the tree's order, each
    stage's `ms` first, then its other quantities by name."""
    quantities: dict[str, set[str]] = {}
    for name in names:
        try:
            stage, quantity, stat = parse_metric_key(name)
        except ValueError:
            continue
        if stat is None or stage in NOT_STAGES or quantity_direction(quantity) is None:
            continue
        quantities.setdefault(stage, set()).add(quantity)
    return [SampledMetric(stage, quantity, quantity_direction(quantity))
            for stage in stage_order(quantities, tree)
            for quantity in sorted(quantities[stage], key=lambda q: (q != "ms", q))]


def sample_values(tables: Mapping[str, pd.DataFrame], name: str) -> tuple[str, np.ndarray] | None:
    """(file, finite values) of a per-sample column, from the first SAMPLE_FILES table that has it."""
    for source in SAMPLE_FILES:
        frame = tables.get(source)
        if frame is not None and name in frame.columns:
            return source, pd.to_numeric(frame[name], errors="coerce").dropna().to_numpy(float)
    return None


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


def verdict_table(samples: Mapping[str, Mapping[str, pd.DataFrame]], baseline_run_id: str,
                  candidate_run_ids: Sequence[str], env_mismatches: Mapping[str, list[str]],
                  settings: VerdictSettings, metrics: Sequence[SampledMetric]) -> pd.DataFrame:
    """One row per (candidate, metric sampled in both runs). `samples[run_id][file]` is a SAMPLE_FILES table.
    Warns once per candidate with too few samples."""
    base_tables = samples[baseline_run_id]
    rng = np.random.default_rng(settings.seed)
    rows = []
    for run_id in candidate_run_ids:
        if run_id not in samples:
            continue
        mismatch = env_mismatches.get(run_id, [])
        too_few: list[str] = []
        for sampled in metrics:
            base, cand = sample_values(base_tables, sampled.column), sample_values(samples[run_id], sampled.column)
            if base is None or cand is None or len(base[1]) == 0 or len(cand[1]) == 0:
                continue
            row = {"run_id": run_id, "metric": sampled.metric, "source": base[0], "column": sampled.column,
                   **compare_metric(base[1], cand[1], sampled.direction, settings, rng), "note": ""}
            if row["verdict"] == TOO_FEW:
                too_few.append(sampled.metric)
                row["note"] = (f"{len(base[1])} vs {len(cand[1])} samples: the smallest possible p is "
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
