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
from llm_perf_opt.errors import InputError, RunInterrupted


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
    except RunInterrupted as exc:  # before measuring began: no MLflow run exists yet
        print(f"error: {exc} before measuring began; nothing was recorded", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # Ctrl-C while the model was being built
        print("error: interrupted by SIGINT before measuring began; nothing was recorded", file=sys.stderr)
        sys.exit(130)
    print(f"run directory: {outcome.run_dir}")
    if outcome.mlflow_run_id:
        print(f"mlflow run: {outcome.mlflow_run_id} ({outcome.status})")
    samples = outcome.record.samples
    if outcome.status == "KILLED":
        print(f"error: {outcome.error}; kept {samples} samples in {outcome.run_dir} (status KILLED)", file=sys.stderr)
    elif outcome.status != "FINISHED":
        print(f"error: profiling failed: {outcome.error}; kept {samples} samples (details in "
              f"{outcome.run_dir / 'error.txt'})", file=sys.stderr)
    elif outcome.tracking_errors:
        print(f"error: measured, but MLflow logging failed: {outcome.tracking_errors[0]}", file=sys.stderr)
    if outcome.upload_hint:
        print(outcome.upload_hint, file=sys.stderr)
    if outcome.exit_code:
        sys.exit(outcome.exit_code)


def main() -> None:
    run_hydra_main(profile_main)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *expand_overrides(sys.argv[1:])]
    main()
