"""The fault matrix: every way a run can end, and what it leaves on disk and in MLflow.

One test per row (docs/reliability.md lists them with what each leaves behind). Each asserts the MLflow
status as a separate process reads it back, the samples kept on disk and in MLflow, and the message
shown. Signals are sent to real subprocesses; exceptions are injected in-process with monkeypatch.
With LLM_PERF_OPT_FAULT_TABLE=<file> set, each test appends its outcome as a Markdown table row.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import FAST, REPO_ROOT, compose_config
from llm_perf_opt import record
from llm_perf_opt.compare import run_comparison
from llm_perf_opt.config import compose
from llm_perf_opt.passes import timed
from llm_perf_opt.runners import profile
from llm_perf_opt.sinks.run_directory import RunDirectory

CUSTOM = ["model=custom", "model.prompt_tokens=8"]  # the tiny LinearStack: a whole run in about a second
SLOW = ["model=custom", "model.factory._target_=user_factories.slow.build", "model.prompt_tokens=8",
        "device=cpu", "dataset.num_pages=1", "profiling.warmup=0", "profiling.new_tokens=4",
        "profiling.progress=false"]
READ_BACK = """
import json, sys, mlflow
mlflow.set_tracking_uri(sys.argv[1])
client = mlflow.MlflowClient()
rows = []
for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
    rows.append({"run_id": run.info.run_id, "status": run.info.status, "tags": run.data.tags,
                 "samples": run.data.metrics.get("run/samples"),
                 "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id))})
print(json.dumps(rows))
"""


def _table_row(fault: str, status: str, kept_disk: object, kept_mlflow: object, message: str) -> None:
    table = os.environ.get("LLM_PERF_OPT_FAULT_TABLE")
    if table:
        with open(table, "a", encoding="utf-8") as handle:
            handle.write(f"| {fault} | {status} | {kept_disk} | {kept_mlflow} | {message.replace('|', '/')} |\n")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    inherited = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), str(REPO_ROOT / "tests"), inherited]))
    env["LLM_PERF_OPT_RUNS_DIR"] = str(tmp_path / "runs")
    env["FAULT_MARKERS"] = str(tmp_path)
    env.update(extra)
    return env


def _read_back(uri: str) -> list[dict]:
    """Every MLflow run of the store, read by another process (what a user's tracking API call sees)."""
    result = subprocess.run([sys.executable, "-c", READ_BACK, uri], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _only_run(uri: str) -> dict:
    runs = _read_back(uri)
    assert len(runs) == 1, runs
    return runs[0]


def _run_dir(tmp_path: Path) -> Path:
    (found,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    return found


def _samples_on_disk(run_dir: Path) -> int:
    path = run_dir / "samples.csv"
    return len(pd.read_csv(path)) if path.exists() and path.stat().st_size > 1 else 0


# --- signals, in subprocesses -------------------------------------------------------------------------


def _wait_for(marker: Path, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{marker.name} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize(("signum", "during", "overrides"), [
    (signal.SIGINT, "timed", ["profiling.repeats=200"]),
    (signal.SIGTERM, "timed", ["profiling.repeats=200"]),
    (signal.SIGINT, "profiled", ["profiling.repeats=2", "+model.factory.profiled_step_s=3.0"]),
    (signal.SIGTERM, "profiled", ["profiling.repeats=2", "+model.factory.profiled_step_s=3.0"]),
], ids=["sigint-timed", "sigterm-timed", "sigint-profiled", "sigterm-profiled"])
def test_a_signal_ends_the_run_killed_with_what_was_measured(tmp_path, signum, during, overrides):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "llm_perf_opt", "profile", *SLOW, *overrides,
                             f"tracking.uri={uri}"], env=_env(tmp_path), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / during, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=180)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert f"interrupted by {name}" in stderr and "status KILLED" in stderr
    run_dir = _run_dir(tmp_path)
    rec = record.load(run_dir)
    assert rec.status == "KILLED" and rec.run.phase == during and name in rec.error
    kept = _samples_on_disk(run_dir)
    # The timed pass's marker comes after 3 whole samples; the profiled pass runs after all (2) of them.
    assert (kept >= 3 if during == "timed" else kept == 2) and rec.samples == kept
    assert name in (run_dir / "error.txt").read_text()
    mlflow_run = _only_run(uri)
    assert mlflow_run["status"] == "KILLED" and mlflow_run["samples"] == kept
    assert {"samples.csv", "metrics.json", "error.txt"} <= set(mlflow_run["artifacts"])
    _table_row(f"{name} during the {during} pass", f"exit {proc.returncode}, KILLED", kept, mlflow_run["samples"],
               stderr.strip().splitlines()[-1])


# --- exceptions in a pass or a sink, in-process -------------------------------------------------------


def _boom(*_args, **_kwargs):
    raise RuntimeError("injected fault")


class _FailingSampler:
    available = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        raise RuntimeError("injected fault")


def _fail_after_two(monkeypatch):
    real, calls = timed.time_one_sample, {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # 2 warmup samples (one per page) + 2 measured ones, then the pass fails
            raise RuntimeError("injected fault")
        return real(*args, **kwargs)

    monkeypatch.setattr(timed, "time_one_sample", failing)


def _failing_csv(real):
    def write_csv(self, name, frame):
        if name == "samples.csv":
            raise OSError(errno.ENOSPC, "No space left on device", str(self.file(name)))
        return real(self, name, frame)
    return write_csv


def _failing_record(real):
    def write_record(self, rec):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.file("metrics.json")))
    return write_record


FAULTS = {
    # fault: (how to inject it, the phase the record names, samples kept on disk)
    "timed pass raises": (_fail_after_two, "timed", 2),
    "counted pass raises": (lambda mp: mp.setattr(profile, "run_counted_pass", _boom), "counted", 4),
    "profiled pass raises": (lambda mp: mp.setattr(profile, "run_profiled_pass", _boom), "profiled", 4),
    "energy sampler raises": (lambda mp: mp.setattr(profile, "_energy_sampler", lambda *a: _FailingSampler()),
                              "timed", 4),
    "record assembly raises": (lambda mp: mp.setattr(profile, "build_record", _once(profile.build_record)),
                               "record", 4),
    "reports sink raises": (lambda mp: mp.setattr(profile, "write_reports", _boom), "reports", 4),
    "disk full writing samples.csv": (lambda mp: mp.setattr(RunDirectory, "write_csv",
                                                            _failing_csv(RunDirectory.write_csv)), "samples", 0),
    "disk full writing metrics.json": (lambda mp: mp.setattr(RunDirectory, "write_record",
                                                             _failing_record(RunDirectory.write_record)), "record", 4),
}


def _once(real):
    calls = {"n": 0}

    def first_call_fails(parts):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault")
        return real(parts)
    return first_call_fails


@pytest.mark.parametrize("fault", list(FAULTS))
def test_an_exception_ends_the_run_failed_with_what_was_measured(tmp_path, monkeypatch, capsys, fault):
    inject, phase, kept_on_disk = FAULTS[fault]
    inject(monkeypatch)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config(*FAST, *CUSTOM, "dataset.num_pages=2", f"tracking.uri={uri}")
    outcome = profile.run_profile(cfg, tmp_path / "run")
    assert outcome.status == "FAILED" and outcome.exit_code == 1
    assert outcome.record.run.phase == phase
    measured = 2 if fault == "timed pass raises" else 4  # 2 pages x 2 repeats
    assert outcome.record.samples == measured  # in memory and in the record, even when samples.csv failed
    assert _samples_on_disk(outcome.run_dir) == kept_on_disk
    stderr = capsys.readouterr().err
    if fault.startswith("disk full"):
        assert "disk full while writing" in stderr
        message = next(line for line in stderr.splitlines() if "disk full" in line)
    else:
        assert "injected fault" in outcome.error and "injected fault" in (outcome.run_dir / "error.txt").read_text()
        assert record.load(outcome.run_dir).status == "FAILED"
        message = outcome.error
    mlflow_run = _only_run(uri)
    assert mlflow_run["status"] == "FAILED" and mlflow_run["samples"] == measured
    assert ("samples.csv" in mlflow_run["artifacts"]) == (kept_on_disk > 0)
    _table_row(fault, "FAILED", kept_on_disk, mlflow_run["samples"], message)


def test_a_tracking_failure_keeps_the_run_directory_and_ends_the_mlflow_run_failed(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(profile.MlflowTracker, "log_artifacts", lambda self, directory: self._guard(
        "log_artifacts", lambda: _boom()))
    cfg = compose_config(*FAST, *CUSTOM, "dataset.num_pages=2", f"tracking.uri={uri}")
    outcome = profile.run_profile(cfg, tmp_path / "run")
    assert outcome.status == "FINISHED" and outcome.exit_code == 3  # measured; the MLflow mirror is incomplete
    assert _samples_on_disk(outcome.run_dir) == 4 and "injected fault" in outcome.tracking_errors[0]
    assert "injected fault" in (outcome.run_dir / "tracking_error.txt").read_text()
    mlflow_run = _only_run(uri)
    assert mlflow_run["status"] == "FAILED" and mlflow_run["samples"] == 4  # metrics logged, artifacts missing
    _table_row("tracking sink raises (artifacts)", "dir FINISHED, MLflow FAILED", 4, mlflow_run["samples"],
               outcome.tracking_errors[0])


# --- several runs at once, a store that is down -------------------------------------------------------


def test_four_runs_at_once_on_a_fresh_sqlite_store_each_get_their_own_run_and_directory(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-m", "llm_perf_opt", "profile", *CUSTOM, "device=cpu",
                               "dataset.num_pages=1", "profiling.repeats=2", "profiling.progress=false",
                               f"tracking.uri={uri}"], env=_env(tmp_path), cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, [err[-2000:] for _, err in results]
    runs = _read_back(uri)
    assert len(runs) == 4 and {r["status"] for r in runs} == {"FINISHED"}
    run_dirs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert len(run_dirs) == 4
    for run_dir in run_dirs:  # the directory, its metrics.json and its MLflow run name each other
        rec = record.load(run_dir)
        (mine,) = [r for r in runs if r["run_id"] == rec.run.mlflow_run_id]
        assert Path(mine["tags"]["run_dir"]) == run_dir and mine["samples"] == _samples_on_disk(run_dir) == 2
    _table_row("4 runs started at once, fresh SQLite store", "4 x FINISHED", "2 each", "2 each",
               "4 directories, 4 MLflow runs, each metrics.json names its own run")


def test_an_unreachable_tracking_server_does_not_stop_measuring_and_log_run_uploads_later(tmp_path):
    env = _env(tmp_path)
    result = subprocess.run([sys.executable, "-m", "llm_perf_opt", "profile", *CUSTOM, "device=cpu",
                             "dataset.num_pages=1", "profiling.repeats=2", "profiling.progress=false",
                             "tracking.uri=http://127.0.0.1:9"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "unreachable" in result.stderr and "llm-perf-opt log-run" in result.stderr
    run_dir = _run_dir(tmp_path)
    rec = record.load(run_dir)
    assert rec.status == "FINISHED" and rec.samples == _samples_on_disk(run_dir) == 2
    started = pd.Timestamp(rec.run.started_at)
    first_sample_s = (pd.Timestamp(rec.run.first_sample_at) - started).total_seconds()
    uri = f"sqlite:///{tmp_path / 'team.db'}"
    upload = [sys.executable, "-m", "llm_perf_opt", "log-run", str(run_dir)]
    first = subprocess.run(upload, env={**env, "MLFLOW_TRACKING_URI": uri}, cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    uploaded = _only_run(uri)
    assert uploaded["status"] == "FINISHED" and uploaded["samples"] == 2
    assert {"samples.csv", "metrics.json"} <= set(uploaded["artifacts"])
    assert record.load(run_dir).run.mlflow_run_id == uploaded["run_id"]
    second = subprocess.run(upload, env={**env, "MLFLOW_TRACKING_URI": uri}, cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0 and "already logged" in second.stdout + second.stderr
    assert len(_read_back(uri)) == 1
    _table_row("tracking server unreachable (http://127.0.0.1:9)", "exit 3, dir FINISHED; log-run: FINISHED", 2,
               f"2 after log-run (second log-run: no new run); first sample after {first_sample_s:.1f} s",
               next(line for line in result.stderr.splitlines() if "unreachable" in line))


# --- bad input: one line, exit 2, no MLflow run ------------------------------------------------------


@pytest.mark.parametrize(("overrides", "runs_dir", "expected"), [
    (["profiling.repeats=0"], None, "profiling.repeats=0"),
    (["profiling.new_tokens=0"], None, "profiling.new_tokens=0"),
    (["dataset=omnidocbench"], None, "dataset.root"),
    ([], "/proc/llm-perf-opt-runs", "cannot create /proc/llm-perf-opt-runs"),
    (["device=mps"], None, "device=mps"),
    (["device=meta"], None, "device=meta"),
], ids=["repeats-0", "new-tokens-0", "no-dataset-root", "unwritable-runs-dir", "device-mps", "device-meta"])
def test_bad_input_is_one_line_before_any_run_exists(tmp_path, overrides, runs_dir, expected):
    db = tmp_path / "mlflow.db"
    env = _env(tmp_path, **({"LLM_PERF_OPT_RUNS_DIR": runs_dir} if runs_dir else {}))
    result = subprocess.run([sys.executable, "-m", "llm_perf_opt", "profile", *overrides, f"tracking.uri=sqlite:///{db}"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert not db.exists()  # no MLflow store, no run: nothing was started
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("samples.csv"))
    _table_row(" ".join(overrides) or f"runs dir {runs_dir}", "exit 2, no run", 0, "no MLflow run", lines[0])


def test_compare_selects_finished_runs_unless_asked(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    finished = []
    for index in range(2):
        cfg = compose_config(*FAST, *CUSTOM, f"tracking.uri={uri}")
        finished.append(profile.run_profile(cfg, tmp_path / f"ok{index}").mlflow_run_id)
    monkeypatch.setattr(profile, "run_counted_pass", _boom)
    failed = profile.run_profile(compose_config(*FAST, *CUSTOM, f"tracking.uri={uri}"), tmp_path / "failed")
    assert failed.status == "FAILED"
    default = run_comparison(compose("compare", [f"tracking.uri={uri}", "select.last=2", "plots.enabled=false"]),
                             tmp_path / "cmp")
    assert set(default.run_ids) == set(finished)  # the newest run failed: not a baseline, not a candidate
    asked = run_comparison(compose("compare", [f"tracking.uri={uri}", "select.last=3", "select.status=null",
                                               "plots.enabled=false"]), tmp_path / "cmp-all")
    assert set(asked.run_ids) == {*finished, failed.mlflow_run_id}
    _table_row("compare after a FAILED run", "default select: FINISHED runs only", "-", "-",
               "select.status=null includes the FAILED run")
