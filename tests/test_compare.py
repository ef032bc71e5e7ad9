"""Run comparison on real profiler runs: verdicts, environment checks, the comparison MLflow run, CLI paths.

Three runs of the tiny DeepSeek-OCR-2 are profiled once per module (2 pages x 4 repeats = 8 samples each,
enough for a two-sided Mann-Whitney U test to reach 0.05: the smallest exact p for 8 vs 8 is
2 / C(16, 8) = 1.6e-4): `base` and `same` share one configuration; `slow` runs a SAM with 8x the layers
and 4x the width (SAM dominates prefill: about 4x slower prefill here).

Noise: other jobs share this 2-core machine, and the runs are sequential, so load can shift between
them. Torch uses one thread here (two threads on a loaded 2-core machine swing by several x), `base` and
`same` are profiled back to back, and the same-configuration check uses a minimum effect of 25 % (the
slow run changes prefill by far more; see test_same_configuration_gives_no_significant_change).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from math import comb
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import CONF_DIR, FAST, REPO_ROOT, compose_config
from llm_perf_opt.compare import run_comparison
from llm_perf_opt.compare.operator_diff import operator_diff
from llm_perf_opt.compare.summary import RATIO_PREFIX, summary_table
from llm_perf_opt.compare.verdicts import (ENV_MISMATCH, IMPROVED, NO_CHANGE, REGRESSED, TOO_FEW, VerdictSettings,
                                           compare_metric, exact_min_p, min_achievable_p, min_samples_per_side,
                                           verdict_table)
from llm_perf_opt.errors import InputError
from llm_perf_opt.profile_run import run_profile

PAGES, REPEATS = 2, 4
# `++`: a dict of dotted keys cannot be merged into the empty default with a plain override.
SLOW_SAM = ("++model.architecture_overrides={vision_config.sam_config.num_hidden_layers:16,"
            "vision_config.sam_config.hidden_size:128}")
SAME_CONFIG_MIN_EFFECT = 0.25


# mlflow.set_tracking_uri() / set_experiment() export these to os.environ (MLflow 3.x); a later
# `mlflow run --experiment-name` child, here or in another test file, would then get two experiments.
EXPORTED_BY_MLFLOW = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")


@contextmanager
def restored_environment(names=EXPORTED_BY_MLFLOW):
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(autouse=True)
def _leave_environment_as_found():
    with restored_environment():
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Profile base, same (identical config) and slow; yields ids, the tracking URI and the work dir."""
    work = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    previous_cwd = os.getcwd()
    os.chdir(work)  # MLflow's default artifact root (./mlruns) lands in the temporary directory
    try:
        with restored_environment():
            ids = {}
            for name, extra in (("base", []), ("same", []), ("slow", [SLOW_SAM])):
                cfg = compose_config(*FAST, f"tracking.uri={uri}", f"dataset.num_pages={PAGES}",
                                     f"profiling.repeats={REPEATS}", "profiling.operators.enabled=false",
                                     "profiling.counting.enabled=false", f"tracking.run_name={name}", *extra)
                outcome = run_profile(cfg, work / name)
                assert outcome.status == "FINISHED" and outcome.mlflow_run_id, outcome.error
                ids[name] = outcome.mlflow_run_id
        yield {"ids": ids, "uri": uri, "work": work}
    finally:
        os.chdir(previous_cwd)
        torch.set_num_threads(threads)


def compare_config(uri: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("compare", overrides=[f"tracking.uri={uri}", *overrides])


def compare(runs, tmp_path: Path, names: list[str], *overrides: str):
    ids = [runs["ids"][n] for n in names]
    cfg = compare_config(runs["uri"], f"select.run_ids=[{','.join(ids)}]", f"baseline={ids[0]}", *overrides)
    return run_comparison(cfg, tmp_path / "out")


def verdict_of(outcome, run_id: str, metric: str) -> pd.Series:
    rows = outcome.verdicts[(outcome.verdicts["run_id"] == run_id) & (outcome.verdicts["metric"] == metric)]
    assert len(rows) == 1, (metric, outcome.verdicts)
    return rows.iloc[0]


# --- statistics, no runs needed ----------------------------------------------------------------


def test_min_achievable_p_is_the_exact_tests_smallest_p():
    for n1 in range(1, 9):
        for n2 in range(1, 9):
            assert min_achievable_p(n1, n2) == pytest.approx(exact_min_p(n1, n2), rel=1e-9), (n1, n2)
    # 3 vs 3 can never reach 0.05 (2 / C(6, 3) = 0.1); 4 vs 4 can (2 / C(8, 4) = 0.029).
    assert min_achievable_p(3, 3) == pytest.approx(2 / comb(6, 3)) and min_achievable_p(3, 3) >= 0.05
    assert min_achievable_p(4, 4) < 0.05
    assert min_samples_per_side(0.05) == 4 and min_samples_per_side(0.01) == 5  # 2/C(10,5) = 0.0079


def test_too_few_samples_gives_that_verdict_and_a_warning():
    rng = np.random.default_rng(1)
    base = pd.DataFrame({"prefill_ms": [10.0, 10.1, 10.2]})
    slow = pd.DataFrame({"prefill_ms": [20.0, 20.1, 20.2]})  # completely separated, yet p >= 0.1
    row = compare_metric(base["prefill_ms"].to_numpy(), slow["prefill_ms"].to_numpy(), "lower", VerdictSettings(), rng)
    assert row["verdict"] == TOO_FEW and row["p_value"] >= 0.05 and row["median_ratio"] == pytest.approx(2.0, rel=0.02)
    with pytest.warns(UserWarning, match="too few samples"):
        table = verdict_table({"a": base, "b": slow}, "a", ["b"], {}, VerdictSettings())
    assert table["verdict"].tolist() == [TOO_FEW]


def test_verdict_direction_follows_the_unit():
    rng = np.random.default_rng(0)
    fast = 10 + rng.random(10)
    slow = 13 + rng.random(10)
    lower_better = compare_metric(fast, slow, "lower", VerdictSettings(), rng)
    higher_better = compare_metric(fast, slow, "higher", VerdictSettings(), rng)
    assert lower_better["verdict"] == REGRESSED and higher_better["verdict"] == IMPROVED
    assert lower_better["ci_low"] > 1.0  # the CI of median(slow)/median(fast) excludes 1
    # A 1 % shift of tight samples is significant, yet below the 2 % minimum effect: no change.
    tight = 10 + 0.001 * rng.random(10)
    small = compare_metric(tight, tight * 1.01, "lower", VerdictSettings(min_effect=0.02), rng)
    assert small["p_value"] < 0.05 and small["verdict"] == NO_CHANGE
    assert compare_metric(tight, tight * 1.01, "lower", VerdictSettings(min_effect=0.005), rng)["verdict"] == REGRESSED


def test_summary_keeps_missing_metrics_nan_and_ratios_to_the_baseline():
    frame = pd.DataFrame({
        "run_id": ["a", "b", "c"],
        "start_time": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
        "metrics.prefill/ms_p50": [10.0, 12.0, 9.0],
        "metrics.efficiency/prefill_mfu": [0.2, np.nan, 0.3],
        "metrics.energy/j_per_token": [np.nan, 1.0, 2.0],  # the baseline lacks it: no ratio for anyone
        "metrics.prefill/ms_p90": [11.0, 13.0, 10.0],  # not a headline metric
    })
    table = summary_table(frame, "a")
    assert "prefill/ms_p90" not in table.columns
    assert table.loc["b", f"{RATIO_PREFIX}prefill/ms_p50"] == pytest.approx(1.2)
    assert table.loc["a", f"{RATIO_PREFIX}prefill/ms_p50"] == 1.0
    assert np.isnan(table.loc["b", "efficiency/prefill_mfu"])
    assert np.isnan(table.loc["b", "ratio:efficiency/prefill_mfu"])
    assert table.loc["c", "ratio:efficiency/prefill_mfu"] == pytest.approx(1.5)
    assert table[f"{RATIO_PREFIX}energy/j_per_token"].isna().all()
    assert not (table.select_dtypes("number") == 0).any().any()


def test_operator_diff_ranks_changes_per_stage():
    base = pd.DataFrame({"stage": ["prefill", "prefill", "prefill", "decode"],
                         "name": ["aten::mm", "aten::add", "aten::gone", "aten::mm"],
                         "calls": [4, 4, 1, 8], "self_cpu_ms": [10.0, 1.0, 2.0, 5.0],
                         "self_device_ms": [np.nan] * 4})
    cand = pd.DataFrame({"stage": ["prefill", "prefill", "prefill", "decode"],
                         "name": ["aten::mm", "aten::add", "aten::new", "aten::mm"],
                         "calls": [4, 4, 2, 8], "self_cpu_ms": [30.0, 1.5, 3.0, 5.0],
                         "self_device_ms": [np.nan] * 4})
    diff, note = operator_diff(base, cand, "cand", top_n=3)
    assert note is None and set(diff["time_column"]) == {"self_cpu_ms"}  # no device time on a CPU trace
    prefill = diff[diff["stage"] == "prefill"]
    assert prefill["name"].tolist() == ["aten::mm", "aten::new", "aten::gone"]  # |delta| 20, 3, 2
    assert prefill["delta_ms"].tolist() == [20.0, 3.0, -2.0]
    assert dict(zip(prefill["name"], prefill["presence"])) == {"aten::mm": "both", "aten::new": "new",
                                                               "aten::gone": "gone"}
    assert diff[diff["stage"] == "decode"]["delta_ms"].tolist() == [0.0]


def test_stage_stack_nests_vision_in_prefill_and_plots_efficiency(tmp_path):
    from llm_perf_opt.compare import plots

    frame = pd.DataFrame({
        "run_id": ["a", "b"], "start_time": pd.to_datetime(["2024-01-01", "2024-01-02"]),
        "metrics.prefill/ms_p50": [50.0, 80.0], "metrics.decode/ms_p50": [20.0, 25.0],
        "metrics.vision/ms_p50": [30.0, 55.0], "metrics.vision/sam_ms_p50": [20.0, 40.0],
        "metrics.vision/encoder_ms_p50": [9.0, 14.0], "metrics.vision/projector_ms_p50": [1.0, np.nan],
        "metrics.efficiency/prefill_mfu": [0.3, 0.4], "metrics.efficiency/decode_mbu": [0.6, 0.5],
    })
    summary = summary_table(frame, "a")
    stack = plots.stage_stack(summary)
    assert list(stack.columns) == ["vision/sam", "vision/encoder", "vision/projector", "prefill (other)", "decode"]
    # Vision is inside prefill: the stack's prefill part is the prefill p50, not prefill + vision.
    prefill_part = stack.drop(columns="decode").sum(axis=1)
    assert prefill_part.tolist() == summary["prefill/ms_p50"].tolist()
    assert np.isnan(stack.loc["b", "vision/projector"])  # missing stays missing
    assert plots.plot_stage_times(summary, tmp_path / "stages.png").stat().st_size > 0
    assert plots.plot_efficiency(summary, tmp_path / "efficiency.png").stat().st_size > 0
    assert plots.plot_efficiency(summary.drop(columns=["efficiency/prefill_mfu", "efficiency/decode_mbu"]),
                                 tmp_path / "none.png") is None


def test_run_ids_tag_is_cut_at_whole_ids_within_mlflows_limit():
    from llm_perf_opt.compare.comparison import TAG_VALUE_LIMIT, _truncated_ids

    ids = [f"{i:032x}" for i in range(1000)]
    tag, truncated = _truncated_ids(ids)
    kept = tag.split(",")
    assert truncated and len(tag) <= TAG_VALUE_LIMIT and kept == ids[:len(kept)]
    assert len(tag) + 33 > TAG_VALUE_LIMIT  # one more id would not fit
    assert _truncated_ids(ids[:3]) == (",".join(ids[:3]), False)


# --- real profiler runs ------------------------------------------------------------------------


def test_slower_candidate_is_regressed(runs, tmp_path):
    outcome = compare(runs, tmp_path, ["base", "slow"])
    slow = runs["ids"]["slow"]
    prefill = verdict_of(outcome, slow, "prefill_ms")
    assert prefill["verdict"] == REGRESSED and prefill["p_value"] < 0.05
    assert prefill["median_ratio"] > 2.0 and prefill["ci_low"] > 1.0 + SAME_CONFIG_MIN_EFFECT
    assert verdict_of(outcome, slow, "vision_sam_ms")["verdict"] == REGRESSED
    assert prefill["n_baseline"] == PAGES * REPEATS and prefill["n_candidate"] == PAGES * REPEATS
    # The summary's ratio is the two runs' logged p50s divided, read back from MLflow.
    client = mlflow.MlflowClient(runs["uri"])
    p50 = {n: client.get_run(runs["ids"][n]).data.metrics["prefill/ms_p50"] for n in ("base", "slow")}
    assert outcome.summary.loc[slow, "ratio:prefill/ms_p50"] == pytest.approx(p50["slow"] / p50["base"])
    # CPU runs log no MFU, energy or peak memory: those columns are absent, not zero.
    assert not any(c.startswith(("efficiency/", "energy/", "memory/")) for c in outcome.summary.columns)
    assert not outcome.mismatches
    assert any("operators.csv absent" in note for note in outcome.notes)  # profiled without the operator pass


def test_same_configuration_gives_no_significant_change(runs, tmp_path):
    # Back-to-back runs of one configuration differed by up to ~10 % in prefill p50 under other jobs' load
    # (and a 2 % shift with p < 0.05 did occur), so this check uses a 25 % minimum effect; the slow run
    # above regresses by far more (its prefill CI lies above 1.25).
    outcome = compare(runs, tmp_path, ["base", "same"], f"verdicts.min_effect={SAME_CONFIG_MIN_EFFECT}")
    same = runs["ids"]["same"]
    for metric in ("prefill_ms", "vision_sam_ms", "e2e_ms"):
        row = verdict_of(outcome, same, metric)
        assert row["verdict"] == NO_CHANGE, row.to_dict()
    assert outcome.verdicts["verdict"].isin([NO_CHANGE, IMPROVED, REGRESSED]).all()


def test_environment_mismatch_blocks_verdicts_unless_allowed(runs, tmp_path):
    client = mlflow.MlflowClient(runs["uri"])
    slow = runs["ids"]["slow"]
    original = client.get_run(slow).data.tags["device"]
    client.set_tag(slow, "device", "NVIDIA H100 80GB HBM3")
    try:
        blocked = compare(runs, tmp_path / "blocked", ["base", "slow"])
        allowed = compare(runs, tmp_path / "allowed", ["base", "slow"], "allow_env_mismatch=true")
    finally:
        client.set_tag(slow, "device", original)
    assert blocked.mismatches[slow] == [f"device_name: {original} != NVIDIA H100 80GB HBM3"]
    assert set(blocked.verdicts["verdict"]) == {ENV_MISMATCH}
    assert verdict_of(blocked, slow, "prefill_ms")["p_value"] < 0.05  # the statistics are still shown
    prefill = verdict_of(allowed, slow, "prefill_ms")
    assert prefill["verdict"] == REGRESSED and "environment differs" in prefill["note"]
    summary_csv = pd.read_csv(blocked.out_dir / "comparison.csv").set_index("run_id")
    assert "NVIDIA H100" in summary_csv.loc[slow, "env.mismatch"]
    assert "environment mismatch" in (blocked.out_dir / "comparison.md").read_text()


def test_comparison_run_is_recorded_and_linked(runs, tmp_path):
    outcome = compare(runs, tmp_path, ["base", "same", "slow"])
    ids = runs["ids"]
    client = mlflow.MlflowClient(runs["uri"])
    run = client.get_run(outcome.mlflow_run_id)
    tags = run.data.tags
    assert run.info.status == "FINISHED"
    assert tags["llm_perf_opt.kind"] == "comparison" and tags["compare.baseline_run_id"] == ids["base"]
    assert tags["compare.run_ids"].split(",") == [ids["base"], ids["same"], ids["slow"]]
    assert run.data.metrics["compare/runs"] == 3
    assert run.data.metrics["compare/verdict_regressed"] == (outcome.verdicts["verdict"] == REGRESSED).sum() >= 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"comparison.md", "comparison.csv", "verdicts.csv", "compared_runs.json", "plots"} <= artifacts
    plots = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"stage_times.png", "latency_distributions.png"} <= plots
    linked = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="compared_runs.json", tracking_uri=runs["uri"],
        dst_path=str(tmp_path / "dl"))).read_text())
    assert linked["baseline_run_id"] == ids["base"] and linked["run_ids"] == tags["compare.run_ids"].split(",")
    csv = pd.read_csv(outcome.out_dir / "comparison.csv")
    assert csv["run_id"].tolist() == [ids["base"], ids["same"], ids["slow"]] and csv["baseline"].tolist()[0]
    # The comparison run itself is never a candidate: comparing everything finds only the three profiles.
    again = run_comparison(compare_config(runs["uri"]), tmp_path / "again")
    assert sorted(again.run_ids) == sorted(ids.values()) and again.baseline_run_id == ids["base"]


def test_selection_by_filter_and_last_n(runs, tmp_path):
    ids = runs["ids"]
    last_two = run_comparison(compare_config(runs["uri"], "select.last=2", "verdicts.enabled=false",
                                             "plots.enabled=false", "tracking.enabled=false"), tmp_path / "last")
    assert last_two.run_ids == [ids["same"], ids["slow"]] and last_two.verdicts.empty
    named = run_comparison(compare_config(runs["uri"], "select.filter=\"attributes.run_name != 'same'\"",
                                          "verdicts.enabled=false", "plots.enabled=false", "tracking.enabled=false"),
                           tmp_path / "filter")
    assert named.run_ids == [ids["base"], ids["slow"]]
    with pytest.raises(InputError, match="at least two"):
        run_comparison(compare_config(runs["uri"], f"select.run_ids=[{ids['base']}]", "tracking.enabled=false"),
                       tmp_path / "one")
    with pytest.raises(InputError, match="not found"):
        run_comparison(compare_config(runs["uri"], "select.experiment=no-such-experiment"), tmp_path / "none")
    with pytest.raises(InputError, match="select.filter"):
        run_comparison(compare_config(runs["uri"], "select.filter=\"params.x === 1\""), tmp_path / "bad")
    extra = run_comparison(compare_config(runs["uri"], "select.last=2", "summary.extra_metrics=[decode/step_ms_p90]",
                                          "verdicts.enabled=false", "plots.enabled=false", "tracking.enabled=false"),
                           tmp_path / "extra")
    ratios = [c for c in extra.summary.columns if c.startswith(RATIO_PREFIX)]
    assert ratios[-1] == "ratio:decode/step_ms_p90"  # appended after the default set
    assert extra.summary.loc[ids["same"], "ratio:decode/step_ms_p90"] == pytest.approx(1.0)  # `same` is the baseline


def test_operator_diff_from_logged_operators_csv(runs, tmp_path):
    # The profiled pass is not part of these runs; an operators.csv in its format is logged to two of them.
    client = mlflow.MlflowClient(runs["uri"])
    same, slow = runs["ids"]["same"], runs["ids"]["slow"]
    for run_id, sam_ms in ((same, 5.0), (slow, 21.0)):
        table = pd.DataFrame({"stage": ["vision/sam", "vision/sam", "decode"],
                              "name": ["aten::mm", "aten::add", "aten::mm"],
                              "calls": [8, 8, 6], "self_cpu_ms": [sam_ms, 1.0, 2.0], "total_cpu_ms": [sam_ms, 1.0, 2.0],
                              "self_device_ms": [np.nan] * 3, "total_device_ms": [np.nan] * 3,
                              "total_time_ms": [sam_ms, 1.0, 2.0], "mean_time_ms": [sam_ms / 8, 0.125, 1 / 3]})
        path = tmp_path / run_id / "operators.csv"
        path.parent.mkdir()
        table.to_csv(path, index=False)
        client.log_artifact(run_id, str(path))
    outcome = compare(runs, tmp_path, ["same", "slow"], "tracking.enabled=false")
    sam = outcome.operator_diff[outcome.operator_diff["stage"] == "vision/sam"]
    assert sam.iloc[0][["name", "delta_ms", "time_column"]].tolist() == ["aten::mm", 16.0, "self_cpu_ms"]
    assert "aten::mm" in (outcome.out_dir / "comparison.md").read_text().split("Operator diff")[1]
    assert not any("operators.csv absent" in note for note in outcome.notes)


@pytest.mark.slow
def test_mlflow_run_compare_entry_point(runs, tmp_path):
    ids = runs["ids"]
    experiment = "compare-entry-point"
    env = dict(os.environ, MLFLOW_TRACKING_URI=runs["uri"], LLM_PERF_OPT_RUNS_DIR=str(tmp_path / "runs"),
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    for inherited in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(inherited, None)  # mlflow.set_experiment() in this process exports MLFLOW_EXPERIMENT_ID
    overrides = f"select.run_ids=[{ids['base']},{ids['slow']}] baseline={ids['base']} plots.enabled=false"
    result = subprocess.run(
        ["mlflow", "run", str(REPO_ROOT), "-e", "compare", "--env-manager", "local", "--experiment-name", experiment,
         "-P", f"overrides={overrides}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "regressed" in result.stdout and ids["base"] in result.stdout
    mlflow.set_tracking_uri(runs["uri"])
    launched = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert len(launched) == 1  # the comparison resumed the run `mlflow run` created
    run = launched[0]
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.project.entryPoint"] == "compare"
    assert run.data.tags["llm_perf_opt.kind"] == "comparison"
    assert run.data.tags["compare.run_ids"] == f"{ids['base']},{ids['slow']}"


def test_cli_reports_bad_selection_in_one_line(runs, tmp_path, capsys, monkeypatch):
    from llm_perf_opt.cli import main

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the CLI rewrites argv for Hydra
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", f"tracking.uri={runs['uri']}", "select.run_ids=[0123456789abcdef]",
              f"hydra.run.dir={tmp_path / 'cli'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        line for line in err.splitlines() if "run ids not found" in line]
