"""How long does `llm-perf-opt compare` take to summarise 1,000 tracked runs? (goal: <= 10 s)

Creates 1,000 profile runs in a temporary SQLite MLflow store, each with the metric, param and tag
set a real DeepSeek-OCR-2 run logs (about 100 metrics, 70 params, 10 tags; one `log_batch` per run; not
timed), then times the summary the compare command builds: one `mlflow.search_runs` query, the
headline table with ratios to the baseline, and the environment check from tags (no per-sample
verdicts, which read files per run). Prints the seconds and the machine; then, for reference, the
whole compare command in-process (config, summary, comparison.md/csv, plots of the first 30 runs, the
comparison MLflow run with its artifacts).

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
from llm_perf_opt.profiling.summary_stats import STATS, metric_names_for  # noqa: E402

STAGES = ["vision/sam", "vision/encoder", "vision/projector"]
EXPERIMENT = "bench-compare"


def metric_names() -> list[str]:
    names = [f"{base}_{stat}" for base in metric_names_for(STAGES).values() for stat in STATS]
    names = [n for n in names if not n.startswith("memory/")]  # CPU-like: no peak memory...
    names += ["memory/prefill_peak_mib_max", "memory/decode_peak_mib_max"]  # ...but a GPU run logs these
    names += [f"efficiency/{s}_{k}" for s in ("prefill", "decode") for k in ("mfu", "mbu")]
    return names + ["energy/j_per_token", "samples/count"]


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
        from hydra import compose, initialize_config_dir

        from llm_perf_opt.compare import run_comparison

        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
            cfg = compose("compare", overrides=[f"tracking.uri={uri}", f"select.experiment={EXPERIMENT}"])
        started = time.perf_counter()
        outcome = run_comparison(cfg, Path(tmp) / "out")
        print(f"whole compare command (in-process, {len(outcome.run_ids)} runs, plots and MLflow run included): "
              f"{time.perf_counter() - started:.2f} s")
        print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, Python {platform.python_version()}")


if __name__ == "__main__":
    main()
