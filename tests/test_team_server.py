"""The team tracking server: a real `mlflow server` on a real PostgreSQL with proxied artifacts (docs/team.md).

Every check reads the server back from a separate process (nothing cached in this one): one profile run
recorded completely, 8 profile processes logging at once, and a run measured while the server was
unreachable, uploaded afterwards with `llm-perf-opt log-run`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from conftest import FAST, REPO_ROOT, compose_config
from llm_perf_opt import record
from llm_perf_opt.runners.profile import run_profile
from servers import free_port

REQUIRED = {"metrics.json", "samples.csv", "stakeholder_summary.md", "trace.json.gz"}
LIGHT = ["model=custom", "model.prompt_tokens=8", "dataset.num_pages=1", "profiling.repeats=2",
         "profiling.new_tokens=4", "profiling.warmup=0", "profiling.progress=false", "device=cpu"]
CONCURRENT = 8
TIMEOUT_S = 600  # a guard against a hang, not a measurement

READ_BACK = """
import json, sys
from pathlib import Path
import mlflow
uri, experiment, downloads = sys.argv[1], sys.argv[2], Path(sys.argv[3])
client = mlflow.MlflowClient(uri)
found = client.get_experiment_by_name(experiment)
runs = client.search_runs([found.experiment_id], max_results=1000) if found else []

def files(run_id, path=None):
    listed = []
    for item in client.list_artifacts(run_id, path):
        listed.extend(files(run_id, item.path) if item.is_dir else [item.path])
    return listed

rows = []
for run in runs:
    run_id = run.info.run_id
    artifacts = sorted(files(run_id))
    target = downloads / run_id
    target.mkdir(parents=True, exist_ok=True)
    metrics_json = (client.download_artifacts(run_id, "metrics.json", str(target))
                    if "metrics.json" in artifacts else None)
    rows.append({"run_id": run_id, "status": run.info.status, "artifact_uri": run.info.artifact_uri,
                 "experiment_id": run.info.experiment_id, "metrics": run.data.metrics, "tags": run.data.tags,
                 "artifacts": artifacts, "metrics_json": metrics_json})
print(json.dumps(rows))
"""


def clean_env(tmp_path: Path) -> dict[str, str]:
    """This environment without MLflow's variables, the checkout's src first, runs under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH")]))
    env["LLM_PERF_OPT_RUNS_DIR"] = str(tmp_path / "runs")
    env["OMP_NUM_THREADS"] = "1"  # 8 processes on a small machine: one compute thread each, no oversubscription
    return env


def read_back(uri: str, experiment: str, tmp_path: Path) -> list[dict]:
    """Every run of `experiment` on the server, read by a separate process; metrics.json downloaded."""
    downloads = tmp_path / "downloads"
    result = subprocess.run([sys.executable, "-c", READ_BACK, uri, experiment, str(downloads)], cwd=tmp_path,
                            env=clean_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def own_metrics(run: dict) -> dict[str, float]:
    """The run's metrics without MLflow's own system metrics (`system/...`)."""
    return {k: v for k, v in run["metrics"].items() if not k.startswith("system/")}


def files_of(run_dir: Path) -> set[str]:
    return {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}


def stored_under(artifacts: Path, run: dict) -> Path:
    """The run's artifact folder inside the server's --artifacts-destination (proxied: mlflow-artifacts:/...)."""
    assert run["artifact_uri"].startswith("mlflow-artifacts:/"), run["artifact_uri"]
    folder = artifacts / run["artifact_uri"][len("mlflow-artifacts:/"):].lstrip("/")
    assert folder.is_dir(), f"{folder} is not in the server's artifacts destination"
    return folder


def assert_complete(run: dict, run_dir: Path, artifacts: Path) -> None:
    """The MLflow run is FINISHED and holds the run directory: metrics, every file, the same metrics.json."""
    local = record.load(run_dir)
    assert run["status"] == "FINISHED", run["tags"].get("llm_perf_opt.incomplete_mirror")
    assert local.status == "FINISHED" and local.run.mlflow_run_id == run["run_id"]
    assert own_metrics(run) == local.metrics and local.metrics  # float8 in PostgreSQL: exact
    assert REQUIRED <= set(run["artifacts"])
    assert files_of(run_dir) <= set(run["artifacts"]), files_of(run_dir) - set(run["artifacts"])
    assert json.loads(Path(run["metrics_json"]).read_text()) == json.loads((run_dir / "metrics.json").read_text())
    folder = stored_under(artifacts, run)
    assert files_of(folder) == set(run["artifacts"])
    assert (folder / "samples.csv").read_bytes() == (run_dir / "samples.csv").read_bytes()


def profile_command(uri: str, experiment: str, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "llm_perf_opt", "profile", *LIGHT, f"tracking.uri={uri}",
            f"tracking.experiment={experiment}", f"hydra.run.dir={run_dir}"]


@pytest.fixture(autouse=True)
def _no_inherited_run(monkeypatch):
    """No MLflow variable comes in, and none leaks out: mlflow.set_tracking_uri (called by an in-process run)
    exports MLFLOW_TRACKING_URI and keeps the URI process-wide; both are put back afterwards."""
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, "")  # recorded, so that the teardown restores the original value or its absence
        monkeypatch.delenv(name)
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    yield
    mlflow.set_tracking_uri(previous)


@pytest.mark.slow
def test_a_profile_run_is_recorded_completely_on_the_team_server(team_server, tmp_path):
    cfg = compose_config(*FAST, f"tracking.uri={team_server.uri}", "tracking.experiment=team-one-run")
    outcome = run_profile(cfg, tmp_path / "run")
    assert outcome.status == "FINISHED" and outcome.exit_code == 0, outcome.tracking_errors
    assert not outcome.tracking_errors and outcome.upload_hint is None
    [run] = read_back(team_server.uri, "team-one-run", tmp_path)
    assert_complete(run, outcome.run_dir, team_server.artifacts)
    assert run["tags"]["run_dir"] == str(outcome.run_dir)
    # Proxied: the client sent the files over HTTP; nothing of the run is stored beside the run directory.
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()


@pytest.mark.slow
def test_eight_profile_processes_at_once_are_all_recorded_completely(team_server, tmp_path):
    experiment = "team-concurrent"  # new: the 8 processes also race to create it
    run_dirs = [tmp_path / f"run{i}" for i in range(CONCURRENT)]
    procs = [subprocess.Popen(profile_command(team_server.uri, experiment, run_dir), cwd=tmp_path,
                              env=clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for run_dir in run_dirs]
    try:
        results = [proc.communicate(timeout=TIMEOUT_S) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    codes = [proc.returncode for proc in procs]
    assert codes == [0] * CONCURRENT, [err[-2000:] for (_, err), code in zip(results, codes) if code]
    runs = read_back(team_server.uri, experiment, tmp_path)
    assert len(runs) == CONCURRENT and {r["status"] for r in runs} == {"FINISHED"}
    by_id = {r["run_id"]: r for r in runs}
    assert len(by_id) == CONCURRENT
    for run_dir in run_dirs:  # each directory has its own run, complete
        mine = by_id.pop(record.load(run_dir).run.mlflow_run_id)
        assert mine["tags"]["run_dir"] == str(run_dir)
        assert mine["metrics"]["run/samples"] == 2
        assert_complete(mine, run_dir, team_server.artifacts)
    assert not by_id


@pytest.mark.slow
def test_a_run_measured_while_the_server_was_down_is_logged_to_it_with_log_run(team_server, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run_dir, env = tmp_path / "offline-run", clean_env(tmp_path)
    result = subprocess.run(profile_command(down, "team-offline", run_dir), cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 3, result.stderr[-3000:]
    assert f"MLflow tracking server {down} is unreachable" in result.stderr
    [hint] = [line for line in result.stderr.splitlines() if "llm-perf-opt log-run" in line]
    assert hint.endswith(f"llm-perf-opt log-run {shlex.quote(str(run_dir))} --tracking-uri {down}"), hint
    assert record.load(run_dir).status == "FINISHED" and record.load(run_dir).run.mlflow_run_id is None
    upload = [sys.executable, "-m", "llm_perf_opt", "log-run", str(run_dir), "--tracking-uri", team_server.uri]
    first = subprocess.run(upload, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert first.returncode == 0, first.stderr[-3000:]
    [run] = read_back(team_server.uri, "team-offline", tmp_path)
    # MLflow itself adds its "View run ... at: <uri>" lines to stdout for a server URI; ours is the last line.
    assert first.stdout.strip().splitlines()[-1] == (f"{run_dir}: logged as run {run['run_id']} (FINISHED) to "
                                                     f"{team_server.uri}")
    assert run["tags"]["llm_perf_opt.uploaded_by"] == "log-run"
    assert_complete(run, run_dir, team_server.artifacts)
    again = subprocess.run(upload, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip().splitlines()[-1] == f"{run_dir}: already logged as run {run['run_id']}"
    assert [r["run_id"] for r in read_back(team_server.uri, "team-offline", tmp_path)] == [run["run_id"]]
