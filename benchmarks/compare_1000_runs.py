"""How long does `llm-perf-opt compare` take to summarise 1,000 tracked runs? (goal: <= 10 s)

Creates 1,000 profile runs in a temporary SQLite MLflow store (or, with `--server`, in a real
`mlflow server` on a throwaway PostgreSQL, started with tests/servers.py: the team set-up of docs/team.md),
each with the metric, param and tag set a real DeepSeek-OCR-2 GPU run logs (its 70 MLflow metrics named
by llm_perf_opt.schema, 62 params, 8 tags; one `log_batch` per run; not timed), then times the summary
the compare command builds: one search_runs query, the headline table with ratios to the baseline, and
the environment check from tags (no per-sample verdicts, which read files per run; no run record, so
stages in name order).
Prints the seconds and the machine; then, for reference, the whole compare command in-process
(config, summary, comparison.md/csv, plots of the first 30 runs, the comparison MLflow run with its
artifacts).

    python benchmarks/compare_1000_runs.py [--runs 1000] [--repeats 3] [--server]
"""

from __future__ import annotations

import argparse
import contextlib
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
from llm_perf_opt.record import UI_STATS  # noqa: E402
from llm_perf_opt.schema import (  # noqa: E402
    DECODE,
    DEVICE_GROUP,
    E2E,
    PREFILL,
    RUN_GROUP,
    THROUGHPUT_GROUP,
    StageTree,
    metric_key,
)

SUB_STAGES = [("vision", "sam"), ("vision", "encoder"), ("vision", "projector")]  # DeepSeek-OCR-2's stage map
EXPERIMENT = "bench-compare"


def metric_names() -> list[str]:
    """The metric names a GPU profile run of that workload logs to MLflow (record.flat_metrics' set)."""
    tree = StageTree.from_paths(SUB_STAGES)
    names = []
    for stage in tree:
        quantities = ["tpot_ms", "ms"] if stage.key == DECODE else ["ms"]
        names += [metric_key(stage.key, q, s) for q in quantities for s in UI_STATS]
        names += [metric_key(stage.key, q) for q in ("mfu_pct", "mbu_pct")]
        if stage.key != E2E:
            names.append(metric_key(stage.key, "share_pct"))
    names += [metric_key(PREFILL, "peak_mem_mib", "max"), metric_key(DECODE, "peak_mem_mib", "max"),
              metric_key(E2E, "energy_j", "mean"), metric_key(PREFILL, "energy_j", "mean"),
              metric_key(DECODE, "energy_j_per_token")]
    names += [metric_key(THROUGHPUT_GROUP, q) for q in ("pages_per_s", "tokens_per_s", "decode_tokens_per_s")]
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
    parser.add_argument("--server", action="store_true", help="a real mlflow server on PostgreSQL instead of SQLite")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp, contextlib.ExitStack() as stack:
        os.chdir(tmp)  # MLflow's default artifact root (./mlruns) stays in the temporary directory
        uri = backend = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        if args.server:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from servers import mlflow_server, postgres_server

            backend = stack.enter_context(postgres_server())
            uri = stack.enter_context(mlflow_server(backend, Path(tmp) / "artifacts", log=Path(tmp) / "server.log"))
            print(f"store: mlflow server {uri} on {backend}")
        # Populated straight into the store behind the server (not timed; HTTP would only make it slower);
        # everything timed below goes through the server's REST API, as a team's compare does.
        created_s = populate(backend if args.server else uri, args.runs)
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
