"""Sweeps: one parent MLflow run and one child per job, whichever Hydra launcher runs the jobs; the GPU lease.

The launcher runs go through the real CLI in a subprocess (`python -m llm_perf_opt profile -m ...`) and are
read back from another process through the tracking API. The team-server runs use the session's real
`mlflow server` on PostgreSQL (tests/servers.py, fixture `team_server`).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import CONF_DIR, REPO_ROOT, requires_transformers5
from llm_perf_opt import record
from llm_perf_opt.compare import run_comparison
from llm_perf_opt.config import compose
from llm_perf_opt.reports.sweep_summary import summary_table, write_summary
from llm_perf_opt.runners.gpu_lease import gpu_lease
from llm_perf_opt.runners.sweep import swept_parameters

LIGHT = ["model=custom", "dataset.num_pages=1", "profiling.repeats=2", "profiling.warmup=0",
         "profiling.progress=false", "device=cpu", "profiling.operators.decode_steps=1"]

READER = r"""
import json, sys, tempfile
import mlflow
uri = sys.argv[1]
client = mlflow.MlflowClient(uri)
mlflow.set_tracking_uri(uri)
runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
out = []
for run in runs:
    arts = [a.path for a in client.list_artifacts(run.info.run_id)]
    local = None
    if "metrics.json" in arts:
        with tempfile.TemporaryDirectory() as tmp:
            local = json.load(open(client.download_artifacts(run.info.run_id, "metrics.json", tmp)))["metrics"]
    out.append({"id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
                "tags": run.data.tags, "params": run.data.params, "metrics": run.data.metrics,
                "artifacts": arts, "record_metrics": local})
print(json.dumps(out))
"""


def read_store(uri: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", READER, uri], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def sweep(tmp_path: Path, uri: str, *overrides: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "LLM_PERF_OPT_RUNS_DIR": str(tmp_path / "runs")}
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):  # set by in-process tests
        env.pop(leaked, None)
    return subprocess.run([sys.executable, "-m", "llm_perf_opt", "profile", "-m", *LIGHT, f"tracking.uri={uri}",
                           *overrides], capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path,
                          check=False)


def check_sweep(runs: list[dict], jobs: int, swept: dict[str, set[str]]) -> tuple[dict, list[dict]]:
    """One parent FINISHED with its summary; `jobs` FINISHED children with complete metrics and artifacts."""
    [parent] = [r for r in runs if r["tags"].get("llm_perf_opt.kind") == "sweep"]
    kids = [r for r in runs if r["tags"].get("mlflow.parentRunId") == parent["id"]]
    assert parent["status"] == "FINISHED" and len(kids) == jobs
    assert parent["metrics"] == {"sweep/jobs": jobs, "sweep/finished": jobs, "sweep/failed": 0}
    assert {"sweep_summary.csv", "sweep_summary.md", "sweep_config.yaml"} <= set(parent["artifacts"])
    assert {f"sweep_{key}.png" for key in swept} <= set(parent["artifacts"])
    for key, values in swept.items():
        assert set(parent["params"][f"sweep.{key}"].split(",")) == values
        assert {kid["params"][f"sweep.{key}"] for kid in kids} == values
    for kid in kids:
        assert kid["status"] == "FINISHED"
        ours = {k: v for k, v in kid["metrics"].items() if not k.startswith("system/")}
        assert ours == pytest.approx(kid["record_metrics"]) and len(ours) > 20
        assert {"metrics.json", "samples.csv", "stakeholder_summary.md", "trace.json.gz"} <= set(kid["artifacts"])
    assert sorted(int(k["tags"]["llm_perf_opt.sweep_job"]) for k in kids) == list(range(jobs))
    return parent, kids


def test_swept_parameters_come_from_hydras_own_parser():
    assert swept_parameters(["a=1,2", "b=x", "model=custom,deepseek_ocr2", "c=range(1,4)"]) == {
        "a": ["1", "2"], "model": ["custom", "deepseek_ocr2"], "c": ["1", "2", "3"]}


def _hold(sweep_dir: str, gpus: list[int], out: str, hold_s: float, barrier) -> None:
    barrier.wait()  # every job asks at once
    with gpu_lease(sweep_dir, gpus, poll_s=0.05) as lease:
        start = time.monotonic()
        time.sleep(hold_s)
        Path(out).write_text(json.dumps({"gpu": lease.index, "start": start, "end": time.monotonic(),
                                         "waited": lease.waited_s}))


def test_gpu_leases_never_put_two_jobs_on_one_gpu(tmp_path):
    """Six jobs, two (fake) GPUs: each GPU serves one job at a time, both are used, the rest queue."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(6)
    jobs = [context.Process(target=_hold, args=(str(tmp_path), [3, 5], str(tmp_path / f"{i}.json"), 0.6, barrier))
            for i in range(6)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)
        assert job.exitcode == 0
    held = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(6)]
    assert {h["gpu"] for h in held} == {3, 5} and sum(h["gpu"] == 3 for h in held) >= 2
    for gpu in (3, 5):
        spans = sorted((h["start"], h["end"]) for h in held if h["gpu"] == gpu)
        assert all(first[1] <= second[0] for first, second in zip(spans, spans[1:])), spans
    assert sum(h["waited"] > 0.3 for h in held) >= 4  # six asked at once for two GPUs: four waited their turn


def test_gpu_lease_can_share_only_when_asked(tmp_path):
    with gpu_lease(tmp_path, [0], slots=2) as first, gpu_lease(tmp_path, [0], slots=2) as second:
        assert (first.index, second.index) == (0, 0) and {first.slot, second.slot} == {0, 1}
    with gpu_lease(tmp_path, [0]), pytest.raises(TimeoutError, match="no free GPU"):
        with gpu_lease(tmp_path, [0], poll_s=0.05, timeout_s=0.2):
            pass
    with pytest.raises(ValueError, match="empty"):
        with gpu_lease(tmp_path, []):
            pass


def test_summary_table_and_plots_from_children(tmp_path):
    children = pd.DataFrame({
        "run_id": ["a", "b", "c", "d"], "status": ["FINISHED"] * 3 + ["FAILED"],
        "tags.llm_perf_opt.sweep_job": ["1", "0", "2", "3"], "tags.mlflow.runName": list("abcd"),
        "params.sweep.profiling.new_tokens": ["8", "4", "16", "32"],
        "params.sweep.model.image_mode": ["g", "g", "t", "t"],
        "metrics.prefill/ms_p50": [10.0, 9.0, 11.0, None], "metrics.decode/tpot_ms_p50": [2.0, 2.1, 2.2, None],
        "metrics.vision_sam/ms_p50": [4.0, 4.0, 4.1, None], "metrics.throughput/tokens_per_s": [50.0, 30.0, 70.0, None],
    })
    swept = ["profiling.new_tokens", "model.image_mode"]
    table = summary_table(children, swept)
    assert list(table["job"]) == [0, 1, 2, 3] and list(table["profiling.new_tokens"]) == ["4", "8", "16", "32"]
    assert list(table.columns[:8]) == ["run_id", "job", "run", "status", "gpu", *swept, "prefill/ms_p50"]
    written = {p.name for p in write_summary(table, swept, tmp_path)}
    assert written == {"sweep_summary.csv", "sweep_summary.md", "sweep_profiling.new_tokens.png",
                       "sweep_model.image_mode.png"}
    markdown = (tmp_path / "sweep_summary.md").read_text()
    assert "| 3 | FAILED | n/a | 32 | t | n/a |" in markdown


def test_a_failed_job_fails_the_parent_and_the_command_but_not_the_sweep(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = sweep(tmp_path, uri, "profiling.new_tokens=4,0")  # new_tokens=0 is refused by validate
    assert done.returncode == 1, done.stderr[-2000:]
    assert "error: profiling.new_tokens=0 is out of range" in done.stderr
    runs = read_store(uri)
    [parent] = [r for r in runs if r["tags"].get("llm_perf_opt.kind") == "sweep"]
    kids = [r for r in runs if r["tags"].get("mlflow.parentRunId") == parent["id"]]
    assert parent["status"] == "FAILED" and [k["status"] for k in kids] == ["FINISHED"]
    assert parent["metrics"] == {"sweep/jobs": 2, "sweep/finished": 1, "sweep/failed": 1}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=4"],
                                      ["hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=1"]],
                         ids=["joblib-4-workers", "submitit_local"])
def test_a_sweep_of_four_jobs_against_the_team_server(tmp_path, team_server, launcher):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="the cluster extra is not installed")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the cluster extra is not installed")
    experiment = f"sweep-{launcher[0].rsplit('=', 1)[1]}-{time.time_ns()}"
    done = sweep(tmp_path, team_server.uri, *launcher, f"tracking.experiment={experiment}",
                 "profiling.new_tokens=4,6", "seed=0,1")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = read_store(team_server.uri)  # the session's server holds other tests' runs too
    parent, kids = check_sweep([r for r in runs if _in_experiment(r, experiment, runs)], 4,
                               {"profiling.new_tokens": {"4", "6"}, "seed": {"0", "1"}})
    sweep_dirs = {k["tags"]["llm_perf_opt.sweep_dir"] for k in kids}
    assert len(sweep_dirs) == 1  # every job, in whatever process, wrote into the one sweep directory
    summary = Path(sweep_dirs.pop()) / "summary" / "sweep_summary.csv"
    assert len(pd.read_csv(summary)) == 4
    local = {k["id"]: record.load(Path(k["tags"]["run_dir"])).metrics for k in kids}
    assert all(local[k["id"]] == pytest.approx(k["record_metrics"]) for k in kids)
    # compare selects the sweep's children on the server and judges them against the first job.
    outcome = run_comparison(compose("compare", [f"tracking.uri={team_server.uri}", f"select.sweep={parent['id']}",
                                                 "tracking.enabled=false", "plots.enabled=false"]), tmp_path / "cmp")
    assert sorted(outcome.run_ids) == sorted(k["id"] for k in kids) and len(outcome.verdicts)
    assert set(outcome.verdicts["run_id"]) == set(outcome.run_ids) - {outcome.baseline_run_id}
    assert {"prefill/ms", "decode/tpot_ms"} <= set(outcome.verdicts["metric"])


def test_the_slurm_example_config_composes_for_a_gpu_partition():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the cluster extra is not installed")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", ["hydra/launcher=slurm_gpu", "hydra.launcher.partition=h200"],
                            return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("h200", 1, 1)
    assert launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"  # logs inside the sweep directory


def _in_experiment(run: dict, experiment: str, runs: list[dict]) -> bool:
    """The runs of one sweep: the parent named by its children's tag, and the children of that experiment."""
    return run["params"].get("tracking.experiment") == experiment or any(
        r["tags"].get("mlflow.parentRunId") == run["id"] and r["params"].get("tracking.experiment") == experiment
        for r in runs)


@pytest.mark.slow
@requires_transformers5
def test_a_sweep_through_mlflow_run_makes_the_launchers_run_the_parent(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
                                                           "MLFLOW_EXPERIMENT_NAME")}
    env.update(MLFLOW_TRACKING_URI=uri, LLM_PERF_OPT_RUNS_DIR=str(tmp_path / "runs"))
    overrides = " ".join(["-m", *LIGHT, "profiling.new_tokens=4,6"])
    done = subprocess.run(["mlflow", "run", str(REPO_ROOT), "--env-manager", "local", "-P", f"overrides={overrides}"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = read_store(uri)
    [parent] = [r for r in runs if r["tags"].get("llm_perf_opt.kind") == "sweep"]
    assert parent["tags"].get("mlflow.project.entryPoint") == "main"  # the run mlflow run created
    check_sweep(runs, 2, {"profiling.new_tokens": {"4", "6"}})
