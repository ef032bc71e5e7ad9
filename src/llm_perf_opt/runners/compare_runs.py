"""Hydra main for `llm-perf-opt compare` and the MLproject `compare` entry point: wiring only.

Composition (conf/compare.yaml against llm_perf_opt.config.CompareConfig) happens before the task;
`validate` then checks ranges. Bad input ends as one `error: ...` line and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from llm_perf_opt.config import COMPARE_CONFIG, CONF_DIR, expand_overrides, run_hydra_main, task_started, validate
from llm_perf_opt.errors import InputError


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=COMPARE_CONFIG)
def compare_main(cfg: DictConfig) -> None:
    task_started()
    try:
        validate(cfg)
        from llm_perf_opt.compare import run_comparison

        outcome = run_comparison(cfg, Path(HydraConfig.get().runtime.output_dir))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(outcome.text)
    print(f"\noutput directory: {outcome.out_dir} (comparison.md, comparison.csv, verdicts.csv, plots/)")
    if outcome.mlflow_run_id:
        print(f"mlflow comparison run: {outcome.mlflow_run_id}")
    if outcome.tracking_errors:
        print(f"error: compared, but MLflow logging failed: {outcome.tracking_errors[0]}", file=sys.stderr)
        sys.exit(3)


def main() -> None:
    run_hydra_main(compare_main)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *expand_overrides(sys.argv[1:])]
    main()
