"""The command line and `mlflow run`: override pass-through, one-line errors, README/CI agreement."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
import torch

from conftest import REPO_ROOT, requires_transformers5
from llm_perf_opt.cli import expand_overrides


def test_overrides_string_is_split_like_a_shell():
    assert expand_overrides(["--overrides", "model.preset=full profiling.repeats=5"]) == [
        "model.preset=full", "profiling.repeats=5"]
    assert expand_overrides(["--overrides", ""]) == []
    assert expand_overrides(["--overrides=a=1 'b=two words'"]) == ["a=1", "b=two words"]


def test_mlflow_undeclared_params_become_hydra_overrides():
    # `mlflow run -P profiling.repeats=2` reaches the command as `--profiling.repeats 2`.
    assert expand_overrides(["--profiling.repeats", "2", "seed=3"]) == ["profiling.repeats=2", "seed=3"]


def test_hydra_flags_keep_their_meaning():
    assert expand_overrides(["--cfg", "job", "-m", "seed=1,2"]) == ["--cfg", "job", "-m", "seed=1,2"]


def _env(tmp_path):
    env = dict(os.environ, LLM_PERF_OPT_RUNS_DIR=str(tmp_path / "runs"),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):  # in-process runs of other tests set these
        env.pop(leaked, None)
    return env


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is missing")
def test_bad_input_exits_non_zero_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "llm_perf_opt", "profile", "device=cuda"], cwd=tmp_path,
                            env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no CUDA device" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command, override, expected", [
    ("profile", "model.dtype=fp8", "model.dtype=fp8: Invalid value 'fp8', expected one of [auto, bf16, fp16, fp32]"),
    ("profile", "profiling.repeats=abc", "profiling.repeats=abc: Value 'abc' of type 'str' could not be converted"),
    ("profile", "model=nosuch", "Could not find 'model/nosuch'"),
    ("profile", "profiling.repeats=0", "profiling.repeats=0 is out of range"),
    ("profile", "device=mps", "device=mps is not supported"),
    ("profile", "dataset=omnidocbench", "dataset.root=null is not set"),
    ("compare", "verdicts.bootstrap_method=bca", "expected one of [percentile, BCa, basic]"),
    ("compare", "verdicts.alpha=1.5", "verdicts.alpha=1.5 is outside (0, 1)"),
])
def test_config_errors_are_one_line_and_exit_2(tmp_path, command, override, expected):
    # Composition (Hydra/OmegaConf) and llm_perf_opt.config.validate both run before anything is built.
    result = subprocess.run([sys.executable, "-m", "llm_perf_opt", command, override], cwd=tmp_path,
                            env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr


def test_config_composes_from_the_package_outside_the_checkout(tmp_path):
    # As MLproject runs it (PYTHONPATH=src python -m llm_perf_opt), started from another directory.
    inherited = os.environ.get("PYTHONPATH")  # hosts that provide packages through PYTHONPATH keep them
    env = dict(_env(tmp_path), PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), inherited])))
    result = subprocess.run([sys.executable, "-m", "llm_perf_opt", "profile", "--cfg", "job", "model=custom",
                             "model.factory._target_=my_module.build"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "factory:\n    _target_: my_module.build\n  dtype: auto" in result.stdout


@pytest.mark.slow
@requires_transformers5
def test_mlflow_run_passes_overrides_into_the_run(tmp_path):
    env = _env(tmp_path)
    result = subprocess.run(
        ["mlflow", "run", str(REPO_ROOT), "--env-manager", "local", "--experiment-name", "cli-test",
         "-P", "overrides=model.image_mode=global768 profiling.repeats=2 profiling.new_tokens=3 dataset.num_pages=1",
         "-P", "profiling.warmup=0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["cli-test"], output_format="list")
    assert len(runs) == 1  # the profiler logged into the run `mlflow run` created, not a second one
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["profiling.repeats"] == "2" and params["profiling.new_tokens"] == "3"
    assert params["profiling.warmup"] == "0" and params["model.image_mode"] == "global768"
    assert run.data.metrics["run/samples"] == 2
    assert run.data.metrics["vision_sam/ms_p50"] > 0


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    command = next(line.strip() for line in ci.splitlines() if "pytest" in line and not line.startswith("#"))
    assert command in readme
