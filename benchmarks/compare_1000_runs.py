"""How long does `llm-perf-opt compare` take to summarise 1,000 tracked runs? (goal: <= 10 s)

Creates 1,000 profile runs in a temporary SQLite MLflow store, each with the metric, param and tag
set a real DeepSeek-OCR-2 GPU run logs (about 150 metrics named by llm_perf_opt.schema, 62 params,
8 tags; one `log_batch` per run; not timed), then times the summary the compare command builds: one
search_runs query, the headline table with ratios to the baseline, and the environment check from
tags (no per-sample verdicts, which read files per run; no run record, so stages in name order).
Prints the seconds and the machine; then, for reference, the whole compare command in-process
(config, summary, comparison.md/csv, plots of the first 30 runs, the comparison MLflow run with its
artifacts).

    python benchmarks/compare_1000_runs.py [--runs 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from llm_perf_opt.compare.comparison import summarize_runs  # noqa: E402
from llm_perf_opt.compare.environment import environment_mismatches  # noqa: E402
from llm_perf_opt.compare.selection import RunSelection  # noqa: E402
from llm_perf_opt.schema import DECODE, DEVICE_GROUP, E2E, PREFILL, RUN_GROUP, STATS, StageTree, metric_key  # noqa: E402

SUB_STAGES = [("vision", "sam"), ("vision", "encoder"), ("vision", "projector")]  # DeepSeek-OCR-2's stage map
EXPERIMENT = "bench-compare"


def metric_names() -> list[str]:
    """The metric names of a GPU profile run of that workload, made by the schema."""
    tree = StageTree.from_paths(SUB_STAGES)
    timed = {stage.key: ["ms"] for stage in tree}
    timed[DECODE] += ["tpot_ms", "step_ms", "tokens_per_s"]
    timed[E2E] += ["tokens_per_s"]
    timed[PREFILL] += ["peak_mem_mib"]
    timed[DECODE] += ["peak_mem_mib"]
    names = [metric_key(stage, quantity, stat) for stage, quantities in timed.items() for quantity in quantities
             for stat in STATS]
    for stage in tree:
        if stage.key == E2E:
            continue
        names += [metric_key(stage.key, q) for q in ("share_of_parent", f"{stage.cost_prefix}flops",
                                                     f"{stage.cost_prefix}bytes", "tflops", "gbps", "mfu", "mbu",
                                                     "intensity")]
    names += [metric_key(E2E, "energy_j", "mean"), metric_key(PREFILL, "energy_j", "mean"),
              metric_key(DECODE, "energy_j_per_token")]
    names += [metric_key(DEVICE_GROUP, q) for q in ("power_w_mean", "power_w_max", "sm_clock_mhz_mean",
                                                     "util_pct_mean", "temp_c_max")]
    return names + [metric_key(RUN_GROUP, "samples")]


def populate(uri: str, runs: int, seed: int = 0) -> float:
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    rng = np.random.default_rng(seed)
    names = metric_names()
    params = {f"model.param_{i}": str(i) for i in range(60)} | {"model.preset": "full", "profiling.repeats": "5"}
    start_ms = int(time.time() * 1000) - runs * 60_000
    started = time.perf_counter()
    for index in range(runs):
        run = client.create_run(experiment_id, start_time=start_ms + index * 60_000,
                                tags={"mlflow.runName": f"run-{index:04d}"})
        values = rng.uniform(0.5, 2.0, size=len(names)) * 100.0
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(n, float(v), start_ms + index * 60_000, 0) for n, v in zip(names, values)],
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in {
                "llm_perf_opt.kind": "profile", "model": "deepseek_ocr2", "preset": "full",
                "device": "NVIDIA H200" if index % 100 == 99 else "NVIDIA H100 80GB HBM3", "dtype": "bf16",
                "git_sha": f"{index:040x}", "run_dir": f"/runs/{index}"}.items()])
        client.set_terminated(run.info.run_id, "FINISHED")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed summaries (the first includes imports' warm-up)")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        os.chdir(tmp)  # MLflow's default artifact root (./mlruns) stays in the temporary directory
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        created_s = populate(uri, args.runs)
        print(f"created {args.runs} runs with {len(metric_names())} metrics each in {created_s:.1f} s (not timed)")
        timings = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = summarize_runs(uri, RunSelection(experiments=[EXPERIMENT]), None)
            mismatches = environment_mismatches(result.environment, result.baseline_run_id)
            timings.append(time.perf_counter() - started)
        summary = result.summary
        assert len(summary) == args.runs, len(summary)
        ratio_columns = [c for c in summary.columns if c.startswith("ratio:")]
        print(f"summary: {len(summary)} runs x {len(ratio_columns)} headline metrics (+ ratios), "
              f"{len(mismatches)} runs flagged for a different device")
        print(f"summary seconds: first {timings[0]:.2f}, best {min(timings):.2f}, all "
              + ", ".join(f"{t:.2f}" for t in timings) + " (goal <= 10 s)")
        from llm_perf_opt.compare import run_comparison
        from llm_perf_opt.config import compose

        cfg = compose("compare", [f"tracking.uri={uri}", f"select.experiment={EXPERIMENT}"])
        started = time.perf_counter()
        outcome = run_comparison(cfg, Path(tmp) / "out")
        print(f"whole compare command (in-process, {len(outcome.run_ids)} runs, plots and MLflow run included): "
              f"{time.perf_counter() - started:.2f} s")
        print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, Python {platform.python_version()}")


if __name__ == "__main__":
    main()
