"""The tracking store side: concurrent starts on a new SQLite store, a store that is down, honest end status."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import filelock
import mlflow
import pytest
import urllib3.connection

from llm_perf_opt.tracking import store
from llm_perf_opt.tracking.mlflow_tracker import (
    INCOMPLETE_TAG,
    RECORD_STATUS_TAG,
    MlflowTracker,
    resolve_tracking_uri,
    upload_hint,
)

READ_BACK = """
import json, sys
import mlflow
uri = sys.argv[1]
mlflow.set_tracking_uri(uri)
client = mlflow.MlflowClient(uri)
runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
print(json.dumps([{"run_id": r.info.run_id, "status": r.info.status, "experiment_id": r.info.experiment_id,
                   "run_name": r.info.run_name, "metrics": r.data.metrics, "params": r.data.params,
                   "tags": r.data.tags, "artifacts": sorted(a.path for a in client.list_artifacts(r.info.run_id))}
                  for r in runs]))
"""

WORKER = """
import json, sys, time
from pathlib import Path
uri, go, index = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
import mlflow  # imported before the start line, so that the processes reach the store together
from llm_perf_opt.tracking.mlflow_tracker import MlflowTracker
(go.parent / f"ready{index}").touch()
while not go.exists():
    time.sleep(0.002)
tracker = MlflowTracker(uri, "concurrent")
run_id = tracker.start(f"worker-{index}", {"worker": str(index)})
tracker.log_params({"index": index})
tracker.log_metrics({"worker/index": float(index), "worker/square": float(index * index), "worker/one": 1.0})
status = tracker.finish("FINISHED")
print(json.dumps({"run_id": run_id, "errors": tracker.errors, "status": status}))
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_URI"):
        env.pop(leaked, None)
    return env


def read_runs(uri: str, cwd: Path) -> list[dict]:
    """Every run of the store, read by a separate process (nothing cached in this one)."""
    result = subprocess.run([sys.executable, "-c", READ_BACK, uri], cwd=cwd, env=clean_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def _no_inherited_run(monkeypatch):
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.slow
def test_processes_starting_at_once_on_a_new_sqlite_store_are_all_recorded(tmp_path):
    uri, go, workers = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", tmp_path / "go", 4
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), uri, str(go), str(i)], cwd=tmp_path, env=clean_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(workers)]
    try:
        deadline = time.monotonic() + 300  # a guard against a hang, not a measurement
        while not all((tmp_path / f"ready{i}").exists() for i in range(workers)):
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "a worker did not start"
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["errors"] == [] and r["run_id"] and r["status"] == "FINISHED" for r in results), results
    runs = read_runs(uri, tmp_path)
    assert sorted(r["run_id"] for r in runs) == sorted(r["run_id"] for r in results)
    assert len({r["experiment_id"] for r in runs}) == 1  # one "concurrent" experiment, created once
    for run in runs:
        index = int(run["params"]["index"])
        assert run["status"] == "FINISHED" and run["run_name"] == f"worker-{index}"
        assert run["metrics"] == {"worker/index": index, "worker/square": index * index, "worker/one": 1.0}
        assert run["tags"]["worker"] == str(index)
    assert (tmp_path / "store" / "mlflow.db.lock").exists()


class _Connections:
    """Counts HTTP connection attempts (each MLflow retry is one)."""

    def __init__(self, monkeypatch):
        self.count = 0
        real = urllib3.connection.HTTPConnection.connect

        def connect(conn, *args, **kwargs):
            self.count += 1
            return real(conn, *args, **kwargs)

        monkeypatch.setattr(urllib3.connection.HTTPConnection, "connect", connect)


def test_an_unreachable_server_makes_the_tracker_offline_after_one_request(monkeypatch, tmp_path):
    connections = _Connections(monkeypatch)
    tracker = MlflowTracker("http://127.0.0.1:9", "offline")
    with pytest.warns(UserWarning, match="is unreachable"):
        assert tracker.start("run", {"a": "b"}) is None
    assert tracker.offline and not tracker.active and tracker.needs_upload and tracker.run_id is None
    assert tracker.errors == ["MLflow tracking server http://127.0.0.1:9 is unreachable (Connection refused): "
                              "measuring anyway; the run directory is the record"]
    assert connections.count == 1  # the health check, no retry
    tracker.log_params({"a": 1})
    tracker.set_tags({"b": "c"})
    tracker.log_metrics({"m": 1.0})
    tracker.log_artifacts(tmp_path)
    assert tracker.finish("FINISHED") is None
    assert connections.count == 1 and len(tracker.errors) == 1  # nothing more was sent, nothing more reported
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracker.upload_hint("runs/x") == "upload it later with: llm-perf-opt log-run runs/x --tracking-uri " \
                                           "http://127.0.0.1:9"


class _Flaky(http.server.BaseHTTPRequestHandler):
    """A server whose /health answers OK and whose API answers 503 (a server going down)."""

    requests: list[str] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()
        self.wfile.write(b"OK")

    do_POST = do_GET

    def log_message(self, *args):
        pass


def test_mlflow_requests_are_retried_twice_at_most_unless_the_user_says_otherwise(monkeypatch):
    for name in store.HTTP_LIMITS:
        monkeypatch.setenv(name, "7")  # recorded, so that teardown restores the original environment
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")  # the user's value wins (and no sleeping here)
    _Flaky.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tracker = MlflowTracker(f"http://127.0.0.1:{server.server_address[1]}", "flaky")
        with pytest.warns(UserWarning, match="start_run failed"):
            assert tracker.start("run", {}) is None
    finally:
        server.shutdown()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == store.HTTP_LIMITS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == store.HTTP_LIMITS["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "0"
    assert not tracker.offline and len(tracker.errors) == 1  # reachable, then failing: an ordinary failure
    api = [path for path in _Flaky.requests if path != "/health"]
    assert _Flaky.requests[0] == "/health" and len(api) == 1 + 2  # the first try and two retries, then given up


def test_a_sqlite_store_that_cannot_be_created_is_one_error_line(tmp_path):
    tracker = MlflowTracker("sqlite:////proc/no-such-dir/mlflow.db", "x")
    with pytest.warns(UserWarning, match="unreachable"):
        assert tracker.start("run", {}) is None
    assert tracker.offline and len(tracker.errors) == 1
    assert tracker.errors[0].startswith("MLflow tracking store sqlite:////proc/no-such-dir/mlflow.db is unreachable (")
    assert "\n" not in tracker.errors[0]


def test_a_store_locked_too_long_is_a_clear_error(tmp_path):
    database = tmp_path / "mlflow.db"
    with filelock.FileLock(str(tmp_path / "mlflow.db.lock")):
        with pytest.raises(store.StoreUnavailable, match=r"mlflow\.db\.lock stayed locked for over 0\.1 s"):
            store.prepare_sqlite(f"sqlite:///{database}", "x", timeout=0.1)


def test_the_upload_hint_names_the_command_and_the_store_when_not_the_default(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = resolve_tracking_uri(None, tmp_path)
    hint = MlflowTracker(default, "x").upload_hint("runs/a b")
    assert hint == "upload it later with: llm-perf-opt log-run 'runs/a b'"
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert upload_hint("runs/x", other) == f"upload it later with: llm-perf-opt log-run runs/x --tracking-uri {other}"


def test_a_failed_call_after_start_ends_the_run_failed_and_says_why(monkeypatch, tmp_path, tracking_uri):
    monkeypatch.chdir(tmp_path)
    tracker = MlflowTracker(tracking_uri, "incomplete")
    run_id = tracker.start("run", {"kind": "test"})
    tracker.log_params({"p": 1})

    def refuse(*args, **kwargs):
        raise OSError("artifact store full")

    monkeypatch.setattr(mlflow, "log_artifacts", refuse)
    tracker.log_metrics({"m": 2.0})
    with pytest.warns(UserWarning, match="log_artifacts failed"):
        tracker.log_artifacts(tmp_path)
    assert tracker.finish("FINISHED") == "FAILED"
    run = mlflow.MlflowClient(tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.metrics == {"m": 2.0}
    assert run.data.tags[INCOMPLETE_TAG] == "MLflow log_artifacts failed: OSError: artifact store full"
    assert run.data.tags[RECORD_STATUS_TAG] == "FINISHED"
    assert mlflow.active_run() is None  # off the fluent stack: MLflow's exit hook cannot end it FINISHED


def test_a_complete_run_ends_with_the_given_status_and_no_tag(monkeypatch, tmp_path, tracking_uri):
    monkeypatch.chdir(tmp_path)
    for status in ("FINISHED", "KILLED"):
        tracker = MlflowTracker(tracking_uri, "complete")
        run_id = tracker.start(status, {})
        tracker.log_metrics({"m": 1.0})
        assert tracker.finish(status) == status and not tracker.needs_upload
        run = mlflow.MlflowClient(tracking_uri).get_run(run_id)
        assert run.info.status == status and INCOMPLETE_TAG not in run.data.tags


def test_a_run_started_by_mlflow_run_is_resumed(monkeypatch, tmp_path, tracking_uri):
    monkeypatch.chdir(tmp_path)
    client = mlflow.MlflowClient(tracking_uri)
    launched = client.create_run(client.create_experiment("launcher")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    tracker = MlflowTracker(tracking_uri, "ignored")
    assert tracker.start("run", {"t": "1"}) == launched
    assert tracker.finish("FINISHED") == "FINISHED"
    assert client.get_run(launched).info.status == "FINISHED" and client.get_run(launched).data.tags["t"] == "1"
    assert client.get_experiment_by_name("ignored") is None


def test_mlflow_runs_own_run_is_resumed_only_in_its_own_store(monkeypatch, tmp_path):
    """`mlflow run` made its run in its local store, tracking.uri names another: a new run there, one warning."""
    monkeypatch.chdir(tmp_path)
    launcher, other = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'server.db'}"
    client = mlflow.MlflowClient(launcher)
    launched = client.create_run(client.create_experiment("Default-ish")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    tracker = MlflowTracker(other, "mine")
    with pytest.warns(UserWarning, match=r"is not in tracking.uri .*MLFLOW_TRACKING_URI=<uri> mlflow run"):
        run_id = tracker.start("run", {"t": "1"})
    assert run_id and run_id != launched and tracker.finish("FINISHED") == "FINISHED"
    run = mlflow.MlflowClient(other).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["t"] == "1"
