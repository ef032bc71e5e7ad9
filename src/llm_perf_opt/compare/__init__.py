"""Compare profiler runs recorded in MLflow: `llm-perf-opt compare` and the MLproject `compare` entry point.

The pipe mirrors the profiler's: select runs (one search_runs query through llm_perf_opt.tracking.runs;
compare never imports mlflow) -> the baseline's stage tree from its metrics.json (llm_perf_opt.record) ->
summary table of headline metrics (named by llm_perf_opt.schema) and ratios to a baseline (vectorised
pandas) -> for the few runs whose samples are
needed: per-sample verdicts (Mann-Whitney U + bootstrap CI of the median ratio), environment checks
and operator diffs -> sinks: output directory (comparison.md through reports.markdown, comparison.csv,
plots through reports.plotting) mirrored to a new
MLflow run tagged `llm_perf_opt.kind=comparison`. docs/compare.md describes every output.
"""

from llm_perf_opt.compare.comparison import CompareOutcome, run_comparison

__all__ = ["CompareOutcome", "run_comparison"]
