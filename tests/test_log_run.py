"""`llm-perf-opt log-run`: run directories measured without MLflow, logged afterwards, once."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from conftest import FAST, compose_config, requires_transformers5
from llm_perf_opt import record
from llm_perf_opt.passes import timed
from llm_perf_opt.runners.log_run import log_runs
from llm_perf_opt.runners.profile import run_profile
from llm_perf_opt.tracking.mlflow_tracker import INCOMPLETE_TAG, RECORD_STATUS_TAG
from test_tracking import clean_env, read_runs

RUN_FILES = {"config.yaml", "env.json", "workload.json", "samples.csv", "decode_steps.csv", "metrics.json",
             "report.md", "stakeholder_summary.md"}


def _profile(run_dir: Path, *overrides: str):
    return run_profile(compose_config(*FAST, *overrides), run_dir)


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Path:
    """A run measured with tracking off (kept pristine: tests log copies of it)."""
    outcome = _profile(tmp_path_factory.mktemp("measured") / "run", "tracking.enabled=false",
                       "hardware.peak_tflops=1", "hardware.peak_bandwidth_gbps=10")  # peaks: <stage>/bound tags
    assert outcome.status == "FINISHED" and outcome.mlflow_run_id is None
    return outcome.run_dir


@pytest.fixture(scope="module")
def measured_failed(tmp_path_factory) -> Path:
    real, calls = timed.time_one_sample, {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # warmup + one measured sample, then the device "fails"
            raise RuntimeError("simulated device failure")
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timed, "time_one_sample", failing)
        outcome = _profile(tmp_path_factory.mktemp("failed") / "run", "tracking.enabled=false")
    assert outcome.status == "FAILED"
    return outcome.run_dir


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """cwd = tmp_path (the SQLite store's artifacts go to ./mlruns); no inherited MLflow run."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _copy(run_dir: Path, into: Path) -> Path:
    return Path(shutil.copytree(run_dir, into / run_dir.parent.name))


@requires_transformers5
def test_a_run_directory_is_logged_with_everything_and_names_its_run(measured, workspace, capsys):
    run_dir, uri = _copy(measured, workspace), f"sqlite:///{workspace / 'mlflow.db'}"
    local = record.load(run_dir)
    assert log_runs([str(run_dir)], uri) == 0
    [run] = read_runs(uri, workspace)
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"{run_dir}: logged as run {run['run_id']} (FINISHED) to {uri}"]
    # The name a live run of this config gets (family-preset-image mode-dtype-device), and its description.
    assert run["status"] == "FINISHED" and run["run_name"] == "deepseek_ocr2-tiny-global768-fp32-cpu"
    assert "TTFT (prefill p50)" in run["tags"]["mlflow.note.content"]
    assert run["metrics"] == pytest.approx(local.metrics)
    params, tags = run["params"], run["tags"]
    assert params["model.family"] == "deepseek_ocr2" and params["profiling.repeats"] == "2"
    assert params["workload.moe_routing"] == "uniform" and params["workload.num_inputs"] == "1"
    assert tags["llm_perf_opt.kind"] == "profile" and tags["model"] == "deepseek_ocr2" and tags["preset"] == "tiny"
    assert tags["llm_perf_opt.run_uid"] == local.run.run_uid and tags["llm_perf_opt.uploaded_by"] == "log-run"
    assert tags["run_dir"] == str(run_dir) and tags["device"] == local.env["device_name"]
    assert {k: v for k, v in tags.items() if k.endswith("/bound")} == record.record_tags(local) != {}
    assert RUN_FILES | {"trace.json.gz", "operators.csv"} <= set(run["artifacts"])
    named = record.load(run_dir)  # the run directory names the MLflow run, and the run has that metrics.json
    assert named.run.mlflow_run_id == run["run_id"] and named.run.tracking_uri == uri
    client = mlflow.MlflowClient(uri)
    uploaded = client.download_artifacts(run["run_id"], "metrics.json", str(workspace))
    assert record.load(uploaded).run.mlflow_run_id == run["run_id"]


@requires_transformers5
def test_logging_again_finds_the_run_and_logs_nothing(measured, workspace, capsys):
    run_dir, uri = _copy(measured, workspace), f"sqlite:///{workspace / 'mlflow.db'}"
    assert log_runs([str(run_dir)], uri) == 0
    [first] = read_runs(uri, workspace)
    capsys.readouterr()
    assert log_runs([str(run_dir)], uri) == 0
    assert capsys.readouterr().out.strip() == f"{run_dir}: already logged as run {first['run_id']}"
    assert [r["run_id"] for r in read_runs(uri, workspace)] == [first["run_id"]]


@requires_transformers5
def test_a_failed_run_is_logged_failed(measured_failed, workspace):
    run_dir, uri = _copy(measured_failed, workspace), f"sqlite:///{workspace / 'mlflow.db'}"
    assert log_runs([str(run_dir)], uri, experiment="failures") == 0
    [run] = read_runs(uri, workspace)
    assert run["status"] == "FAILED" and run["metrics"]["run/samples"] == 1
    assert "error.txt" in run["artifacts"]
    assert mlflow.MlflowClient(uri).get_experiment(run["experiment_id"]).name == "failures"


def test_a_directory_without_a_record_is_one_error_line_and_exit_2(workspace):
    empty = workspace / "not-a-run"
    empty.mkdir()
    result = subprocess.run([sys.executable, "-m", "llm_perf_opt", "log-run", str(empty), "--tracking-uri",
                             f"sqlite:///{workspace / 'mlflow.db'}"], cwd=workspace, env=clean_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {empty / 'metrics.json'} does not exist")


@requires_transformers5
def test_an_incomplete_mirror_is_completed_not_duplicated(measured, workspace, monkeypatch, capsys):
    run_dir, uri = _copy(measured, workspace), f"sqlite:///{workspace / 'mlflow.db'}"
    local = record.load(run_dir)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("llm-perf-opt")
    # What a tracker leaves when its artifacts failed: the run exists, FAILED, tagged incomplete.
    partial = client.create_run(experiment, tags={"llm_perf_opt.run_uid": local.run.run_uid,
                                                  INCOMPLETE_TAG: "MLflow log_artifacts failed: OSError: full",
                                                  RECORD_STATUS_TAG: "FINISHED"}).info.run_id
    client.set_terminated(partial, "FAILED")
    assert log_runs([str(run_dir)], uri) == 0
    assert capsys.readouterr().out.strip() == f"{run_dir}: completed run {partial} (FINISHED) to {uri}"
    [run] = read_runs(uri, workspace)
    assert run["run_id"] == partial and run["status"] == "FINISHED"
    assert INCOMPLETE_TAG not in run["tags"] and RECORD_STATUS_TAG not in run["tags"]
    assert run["metrics"] == pytest.approx(local.metrics) and RUN_FILES <= set(run["artifacts"])


@requires_transformers5
def test_an_unreachable_store_logs_nothing_and_fails(measured, workspace, capsys):
    run_dir = _copy(measured, workspace)
    assert log_runs([str(run_dir)], "http://127.0.0.1:9") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: MLflow tracking store http://127.0.0.1:9 is unreachable (Connection refused): "
                   "nothing logged"]
    assert record.load(run_dir).run.mlflow_run_id is None
