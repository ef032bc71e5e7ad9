"""Compare profiler runs recorded in MLflow: `llm-perf-opt compare` and the MLproject `compare` entry point.

The pipe mirrors the profiler's: select runs (one `mlflow.search_runs` query) -> summary table of
headline metrics and ratios to a baseline (vectorised pandas) -> for the few runs whose samples are
needed: per-sample verdicts (Mann-Whitney U + bootstrap CI of the median ratio), environment checks
and operator diffs -> sinks: output directory (comparison.md, comparison.csv, plots) mirrored to a new
MLflow run tagged `llm_perf_opt.kind=comparison`. docs/compare.md describes every output.
"""

from llm_perf_opt.compare.comparison import CompareOutcome, run_comparison

__all__ = ["CompareOutcome", "run_comparison"]
