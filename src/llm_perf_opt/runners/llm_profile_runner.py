"""Hydra main for `llm-perf-opt profile` and the MLproject `main` entry point: wiring only.

Composition (conf/config.yaml against the schemas of llm_perf_opt.config) happens before the task;
`validate` then checks ranges before anything is built. Both kinds of bad input end as one
`error: ...` line on stderr and exit status 2 (llm_perf_opt.config.run_hydra_main).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from llm_perf_opt.config import CONF_DIR, PROFILE_CONFIG, expand_overrides, run_hydra_main, task_started, validate
from llm_perf_opt.errors import InputError


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=PROFILE_CONFIG)
def profile_main(cfg: DictConfig) -> None:
    task_started()
    try:
        validate(cfg)  # before torch and transformers load: --help, --cfg and bad input stay fast
        from llm_perf_opt.runners.profile import run_profile

        outcome = run_profile(cfg, Path(HydraConfig.get().runtime.output_dir))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"run directory: {outcome.run_dir}")
    if outcome.mlflow_run_id:
        print(f"mlflow run: {outcome.mlflow_run_id}")
    if outcome.status != "FINISHED":
        print(f"error: profiling failed: {outcome.error} (details in {outcome.run_dir / 'error.txt'})", file=sys.stderr)
        sys.exit(1)
    if outcome.tracking_errors:
        print(f"error: measured, but MLflow logging failed: {outcome.tracking_errors[0]}", file=sys.stderr)
        sys.exit(3)


def main() -> None:
    run_hydra_main(profile_main)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *expand_overrides(sys.argv[1:])]
    main()
