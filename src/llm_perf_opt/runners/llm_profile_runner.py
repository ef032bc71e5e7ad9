"""Hydra main for `llm-perf-opt profile` and the MLproject `main` entry point: wiring only.

Composition (conf/config.yaml against the schemas of llm_perf_opt.config) happens before the task;
`validate` then checks ranges before anything is built. Both kinds of bad input end as one
`error: ...` line on stderr and exit status 2 (llm_perf_opt.config.run_hydra_main).

In a sweep (`-m`) each job is a child of the sweep's parent run (runners/sweep.py); on a GPU host it
first leases a GPU of its own (runners/gpu_lease.py). A job never exits the process or raises into Hydra:
its failure is a FAILED child and one `error:` line, and the sweep goes on; the command's exit status is
then 1 (the sweep callback knows how the children ended).
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from llm_perf_opt.config import CONF_DIR, PROFILE_CONFIG, expand_overrides, run_hydra_main, task_started, validate
from llm_perf_opt.errors import InputError, RunInterrupted
from llm_perf_opt.runners.sweep import SweepCallback, SweepJob, sweep_job


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=PROFILE_CONFIG)
def profile_main(cfg: DictConfig) -> None:
    task_started()
    job = sweep_job()
    code, run_id, lease = _profile(cfg, job)
    if job is not None:
        job.record_exit(code, run_id, lease)
    elif code:
        sys.exit(code)


def _gpu_lease(cfg: DictConfig, job: SweepJob | None):
    """A lease on a GPU of the sweep's own (cfg.device set to it), or nothing outside a GPU sweep."""
    if job is None or not bool(cfg.sweep.gpu_assignment) or str(cfg.device) == "cpu":
        return contextlib.nullcontext(None)
    import torch

    from llm_perf_opt.runners.gpu_lease import gpu_lease

    if not torch.cuda.is_available():
        return contextlib.nullcontext(None)
    gpus = list(cfg.sweep.gpus) if cfg.sweep.gpus is not None else list(range(torch.cuda.device_count()))
    return gpu_lease(job.sweep_dir, gpus, int(cfg.sweep.jobs_per_gpu))


def _profile(cfg: DictConfig, job: SweepJob | None) -> tuple[int, str | None, dict | None]:
    """Profile once: (exit status, MLflow run id, the GPU lease held: {gpu, from, to} in epoch s, or None).
    Status 0 finished, 1 failed, 2 bad input, 3 MLflow incomplete, 128+N stopped by signal N."""
    held = None
    try:
        validate(cfg)  # before torch and transformers load: --help, --cfg and bad input stay fast
        from llm_perf_opt.runners.profile import run_profile

        with _gpu_lease(cfg, job) as lease:
            if lease is not None:
                with open_dict(cfg):
                    cfg.device = f"cuda:{lease.index}"
                print(f"job {job.job}: GPU {lease.index} (waited {lease.waited_s:.1f} s)")
                held = {"gpu": lease.index, "from": time.time()}
            outcome = run_profile(cfg, Path(HydraConfig.get().runtime.output_dir), job,
                                  gpu=lease.index if lease is not None else None)
            if held is not None:
                held["to"] = time.time()  # still held: released when the block ends
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2, None, held
    except RunInterrupted as exc:  # before measuring began: no MLflow run exists yet
        print(f"error: {exc} before measuring began; nothing was recorded", file=sys.stderr)
        return exc.exit_code, None, held
    except KeyboardInterrupt:  # Ctrl-C while the model was being built
        print("error: interrupted by SIGINT before measuring began; nothing was recorded", file=sys.stderr)
        return 130, None, held
    _report(outcome)
    return outcome.exit_code, outcome.mlflow_run_id, held


def _report(outcome) -> None:
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


def main() -> None:
    run_hydra_main(profile_main)
    if SweepCallback.outcome not in (None, "FINISHED"):  # a sweep ended with a child that did not finish
        sys.exit(1)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *expand_overrides(sys.argv[1:])]
    main()
