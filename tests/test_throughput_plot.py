"""Throughput against per-request latency by batch size: the plotted table, the sweep summary's figure, compare's.

The table tests build search_runs-like frames (params.*, metrics.*, tags.*) from a list of run specs and
check that every plotted point is the run's own logged values. The sweep test runs a real two-job sweep
over profiling.batch_size (the tiny linear-stack model, CPU); the compare test logs runs with params and
metrics to a temporary SQLite store and runs the whole comparison on them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF_DIR
from llm_perf_opt.compare import run_comparison
from llm_perf_opt.reports import throughput_latency
from llm_perf_opt.reports.sweep_summary import summary_table, write_summary
from test_sweeps import read_store, sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Spec:
    """One run: its batch size (None: not logged, an older run), cache / compile (None: not logged), its metrics."""

    run_id: str
    batch: int | None
    e2e_ms: float
    tpot_ms: float
    pages_per_s: float
    tokens_per_s: float
    cache: str | None = None
    compile: str | None = None
    status: str = "FINISHED"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def series(self) -> str:
        return f"cache={self.cache or 'dynamic'}, compile={self.compile or 'none'}"

    def logged_params(self) -> dict[str, str]:
        params = {"model.image_mode": "global768", "workload.image_mode": "global768", "workload.device": "cuda:0",
                  "tracking.run_name": f"name-{self.run_id}", "profiling.repeats": "3", **self.params}
        if self.batch is not None:
            params |= {"profiling.batch_size": str(self.batch), "workload.batch_size": str(self.batch),
                       "sweep.profiling.batch_size": str(self.batch)}
        if self.cache is not None:
            params["model.cache"] = self.cache
        if self.compile is not None:
            params["model.compile"] = self.compile
        return params

    def metrics(self) -> dict[str, float]:
        return {"e2e/ms_p50": self.e2e_ms, "decode/tpot_ms_p50": self.tpot_ms,
                "throughput/pages_per_s": self.pages_per_s, "throughput/tokens_per_s": self.tokens_per_s}


def frame(specs: list[Spec]) -> pd.DataFrame:
    """A search_runs-like frame of the specs (every run on one H200)."""
    rows = [{"run_id": s.run_id, "status": s.status, "tags.mlflow.runName": f"run-{s.run_id}",
             "tags.device": "NVIDIA H200", **{f"params.{k}": v for k, v in s.logged_params().items()},
             **{f"metrics.{k}": v for k, v in s.metrics().items()}} for s in specs]
    return pd.DataFrame(rows)


def batch_specs() -> list[Spec]:
    """Eager runs at batch 1 (an older run: no batch param), 2, 4 and a failed 8; static + reduce-overhead at 1 and
    4. Throughput grows with the batch, per-request latency too."""
    eager = [Spec("e1", None, 1500.0, 16.2, 0.66, 42.0), Spec("e2", 2, 1700.0, 17.0, 1.18, 75.0),
             Spec("e4", 4, 2100.0, 18.5, 1.9, 121.0), Spec("e8", 8, 3000.0, 21.0, 2.6, 166.0, status="FAILED")]
    compiled = [Spec("c4", 4, 700.0, 3.4, 5.7, 365.0, cache="static", compile="reduce-overhead"),
                Spec("c1", 1, 400.0, 3.1, 2.5, 160.0, cache="static", compile="reduce-overhead")]
    return eager + compiled


def expected_points(specs: list[Spec]) -> list[tuple]:
    """(series, batch, e2e, tpot, pages/s, tokens/s, run id) of the finished specs: series in order of first
    appearance, batch sizes ascending within each."""
    finished = [s for s in specs if s.status == "FINISHED"]
    order = list(dict.fromkeys(s.series for s in finished))
    ranked = sorted(finished, key=lambda s: (order.index(s.series), s.batch or 1))
    return [(s.series, s.batch or 1, s.e2e_ms, s.tpot_ms, s.pages_per_s, s.tokens_per_s, s.run_id) for s in ranked]


def as_tuples(table: pd.DataFrame) -> list[tuple]:
    return [(r.series, int(r.batch_size), r.e2e_ms_p50, r.tpot_ms_p50, r.pages_per_s, r.tokens_per_s, r.run_id)
            for r in table.itertuples()]


def test_points_are_each_finished_runs_own_values_one_series_per_cache_and_compile(tmp_path):
    specs = batch_specs()
    table = throughput_latency.points(frame(specs))
    assert as_tuples(table) == expected_points(specs)
    assert "e8" not in set(table["run_id"])  # the failed run is not plotted
    # Run names, sweep copies of the swept value, workload.* and profiling.repeats differ or repeat the batch
    # size: none of them splits a series.
    assert set(table["series"]) == {"cache=dynamic, compile=none", "cache=static, compile=reduce-overhead"}
    assert throughput_latency.differs_in_batch_size(table)
    path = throughput_latency.plot(table, tmp_path / throughput_latency.FIGURE_FILE)
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_another_differing_config_value_is_its_own_series_and_one_batch_size_draws_nothing():
    tiled = {"model.image_mode": "tiled", "workload.image_mode": "tiled"}
    specs = [Spec("g1", 1, 300.0, 5.0, 3.3, 40.0), Spec("g2", 2, 450.0, 5.5, 4.4, 53.0),
             Spec("t1", 1, 900.0, 5.1, 1.1, 13.0, params=tiled), Spec("t2", 2, 1300.0, 5.6, 1.5, 18.0, params=tiled)]
    table = throughput_latency.points(frame(specs))
    image_mode = {s.run_id: s.logged_params()["model.image_mode"] for s in specs}
    assert {r.run_id: r.series for r in table.itertuples()} == {
        s.run_id: f"{s.series}, model.image_mode={image_mode[s.run_id]}" for s in specs}
    one_batch = throughput_latency.points(frame([s for s in specs if s.batch == 1]))
    assert len(one_batch) == 2 and not throughput_latency.differs_in_batch_size(one_batch)


def sweep_children(specs: list[Spec]) -> pd.DataFrame:
    children = frame(specs)
    children["tags.llm_perf_opt.sweep_job"] = [str(i) for i in range(len(specs))]
    return children


def test_sweep_summary_draws_the_figure_only_when_children_differ_in_batch_size(tmp_path):
    specs = batch_specs()
    children = sweep_children(specs)
    swept = ["profiling.batch_size"]
    written = {p.name for p in write_summary(summary_table(children, swept), swept, tmp_path / "batches", children)}
    assert {throughput_latency.FIGURE_FILE, throughput_latency.TABLE_FILE} <= written
    plotted = pd.read_csv(tmp_path / "batches" / throughput_latency.TABLE_FILE)
    assert as_tuples(plotted) == expected_points(specs)
    markdown = (tmp_path / "batches" / "sweep_summary.md").read_text()
    assert "![throughput vs latency](throughput_latency.png)" in markdown
    for series, batch, e2e, tpot, pages, tokens, run_id in expected_points(specs):
        row = f"| {series} | {batch} | {e2e:.4g} | {tpot:.4g} | {pages:.4g} | {tokens:.4g} | run-{run_id} |"
        assert row in markdown
    same_batch = sweep_children([s for s in specs if s.batch == 4])
    written = {p.name for p in write_summary(summary_table(same_batch, swept), swept, tmp_path / "one", same_batch)}
    assert throughput_latency.FIGURE_FILE not in written
    assert "Throughput vs latency" not in (tmp_path / "one" / "sweep_summary.md").read_text()


def test_a_sweep_over_batch_size_puts_the_figure_in_its_summary_and_on_the_parent(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = sweep(tmp_path, uri, "dataset.num_pages=2", "profiling.batch_size=1,2")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = read_store(uri)
    [parent] = [r for r in runs if r["tags"].get("llm_perf_opt.kind") == "sweep"]
    kids = [r for r in runs if r["tags"].get("mlflow.parentRunId") == parent["id"]]
    assert {throughput_latency.FIGURE_FILE, throughput_latency.TABLE_FILE} <= set(parent["artifacts"])
    summary = Path(kids[0]["tags"]["llm_perf_opt.sweep_dir"]) / "summary"
    plotted = pd.read_csv(summary / throughput_latency.TABLE_FILE)
    by_run = {kid["id"]: kid for kid in kids}
    assert sorted(plotted["run_id"]) == sorted(by_run) and sorted(plotted["batch_size"]) == [1, 2]
    for row in plotted.itertuples():
        kid = by_run[row.run_id]
        assert row.batch_size == int(kid["params"]["profiling.batch_size"])
        assert row.series == "cache=dynamic, compile=none"  # neither param exists yet on this branch: defaults
        assert (row.e2e_ms_p50, row.tpot_ms_p50, row.pages_per_s, row.tokens_per_s) == pytest.approx((
            kid["metrics"]["e2e/ms_p50"], kid["metrics"]["decode/tpot_ms_p50"],
            kid["metrics"]["throughput/pages_per_s"], kid["metrics"]["throughput/tokens_per_s"]))
    assert (summary / throughput_latency.FIGURE_FILE).read_bytes()[:8] == PNG_MAGIC
    assert "![throughput vs latency](throughput_latency.png)" in (summary / "sweep_summary.md").read_text()


@pytest.fixture
def batch_store(tmp_path, monkeypatch):
    """batch_specs() logged as FINISHED (or FAILED) profile runs with their params and metrics."""
    from mlflow.entities import Metric, Param, RunTag

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"):  # mlflow exports them; restored afterwards
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) lands in the temporary directory
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("batches")
    ids = {}
    for i, spec in enumerate(batch_specs()):
        start = 1_700_000_000_000 + i * 60_000
        run = client.create_run(experiment_id, start_time=start, tags={"mlflow.runName": f"run-{spec.run_id}"})
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, start, 0) for k, v in spec.metrics().items()],
                         params=[Param(k, v) for k, v in spec.logged_params().items()],
                         tags=[RunTag("llm_perf_opt.kind", "profile"), RunTag("device", "NVIDIA H200")])
        client.set_terminated(run.info.run_id, spec.status)
        ids[spec.run_id] = run.info.run_id
    return uri, ids


def compare_runs(uri: str, run_ids: list[str], out: Path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("compare", overrides=[f"tracking.uri={uri}", f"select.run_ids=[{','.join(run_ids)}]",
                                            "tracking.enabled=false", "verdicts.enabled=false", "select.status=null"])
    return run_comparison(cfg, out)


def test_compare_of_runs_that_differ_in_batch_size_shows_throughput_against_latency(batch_store, tmp_path):
    uri, ids = batch_store
    specs = batch_specs()
    outcome = compare_runs(uri, [ids[s.run_id] for s in specs], tmp_path / "cmp")
    plotted = pd.read_csv(outcome.out_dir / throughput_latency.TABLE_FILE)
    expected = expected_points(specs)
    assert as_tuples(plotted.assign(run_id=plotted["run_id"].map({v: k for k, v in ids.items()}))) == expected
    assert (outcome.out_dir / "plots" / throughput_latency.FIGURE_FILE).read_bytes()[:8] == PNG_MAGIC
    markdown = (outcome.out_dir / "comparison.md").read_text()
    assert "## Throughput vs latency by batch size" in markdown
    assert "![throughput_latency](plots/throughput_latency.png)" in markdown
    for series, batch, e2e, tpot, pages, tokens, run_id in expected:
        assert f"|{series}|{batch}|{e2e:.4g}|{tpot:.4g}|{pages:.4g}|{tokens:.4g}|run-{run_id}|" in markdown
    # The same batch size everywhere: no figure, no section.
    same = compare_runs(uri, [ids["e4"], ids["c4"]], tmp_path / "same")
    assert not (same.out_dir / throughput_latency.TABLE_FILE).exists()
    assert not (same.out_dir / "plots" / throughput_latency.FIGURE_FILE).exists()
    assert "Throughput vs latency" not in (same.out_dir / "comparison.md").read_text()


def test_points_of_an_empty_or_metricless_frame_draw_nothing(tmp_path):
    assert throughput_latency.points(pd.DataFrame()).empty
    bare = frame([Spec("a", 1, np.nan, np.nan, np.nan, np.nan), Spec("b", 2, np.nan, np.nan, np.nan, np.nan)])
    table = throughput_latency.points(bare)
    assert list(table["batch_size"]) == [1, 2] and not throughput_latency.differs_in_batch_size(table)
    assert throughput_latency.plot(table, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    assert os.listdir(tmp_path) == []


def test_page_counts_that_follow_the_batch_size_do_not_split_a_series():
    """A batch of B pages needs B pages: a batch-size sweep changes dataset.num_pages with it (one series)."""
    from llm_perf_opt.reports.configuration import configuration, same_except

    one = configuration({"profiling.batch_size": "1", "dataset.num_pages": "1", "model.preset": "full"})
    many = configuration({"profiling.batch_size": "32", "dataset.num_pages": "32", "model.preset": "full"})
    other = configuration({"profiling.batch_size": "32", "dataset.num_pages": "32", "model.preset": "tiny"})
    assert "dataset.num_pages" not in one and same_except(one, many, ["profiling.batch_size"])
    assert not same_except(one, other, ["profiling.batch_size"])
