"""Recommendations that cite what their configuration measured in the experiment, or say it is untested here.

The matcher and the wording run on plain data (record.RelatedRun / RelatedRuns) built here. The store test
profiles two tiny runs into a real SQLite MLflow store, a batch of 2 pages then a batch of 1: the second
run's related_runs.json (written by the runner from MLflow) holds the first, and its stakeholder summary
names the first's measured effect. The verdict that earns the recommendation is made deterministic: the
second run's record is given a launch-bound, dominant decode (tests/records.gpu_record) and keeps its own
measured metrics, so the numbers compared are the two real runs'.
"""

from __future__ import annotations

import pytest

from conftest import compose_config
from llm_perf_opt.profiling.export import build_summary
from llm_perf_opt.record import (
    RELATED_METRICS,
    RELATED_RUNS_FILE,
    RelatedRun,
    RelatedRuns,
    flat_metrics,
    load,
    load_related,
    save,
)
from llm_perf_opt.reports import derive_recommendations, write_reports
from llm_perf_opt.reports.configuration import configuration
from llm_perf_opt.reports.measured_effects import COMPILED_DECODE, LARGER_BATCH, measured_run, measured_runs
from records import build_record, gpu_record

TPOT, PAGES, LATENCY = "decode/tpot_ms_p50", "throughput/pages_per_s", "e2e/ms_p50"
COMPILED = {"model.cache": "static", "model.compile": "reduce-overhead"}


def params(**changes: str) -> dict[str, str]:
    """A DeepSeek-OCR-2 run's logged params (as MLflow stores them: strings), with `changes` (dots as __)."""
    base = {"model.family": "deepseek_ocr2", "model.preset": "full", "model.image_mode": "global1024",
            "model.dtype": "bf16", "model.attn_implementation": "sdpa", "profiling.new_tokens": "256",
            "profiling.batch_size": "1", "profiling.warmup": "1", "profiling.repeats": "3", "seed": "0",
            "dataset.source": "synthetic", "dataset.num_pages": "16", "device": "auto",
            "tracking.experiment": "llm-perf-opt", "tracking.run_name": "None", "hardware.calibrate": "False",
            "workload.family": "deepseek_ocr2", "workload.preset": "full", "workload.image_mode": "global1024",
            "workload.dtype": "bf16", "workload.new_tokens": "256", "workload.device": "cuda:0",
            "workload.batch_size": "1"}
    base.update({key.replace("__", "."): value for key, value in changes.items()})
    return base


def run(run_id: str, start: int, metrics: dict[str, float] | None = None, status: str = "FINISHED",
        gpu: str = "NVIDIA H200", **changes: str) -> RelatedRun:
    """A profile run as related_runs.json holds it; `gpu` is its device tag (the device's name)."""
    return RelatedRun(run_id=run_id, run_name=f"name-{run_id}", status=status, start_time_ms=start,
                      params=params(**changes), tags={"device": gpu}, metrics=metrics or {})


def this_run(**changes: str) -> RelatedRun:
    return run("this", 0, **changes)


def test_compiled_decode_sibling_is_found_and_other_workloads_are_not():
    tpot = {TPOT: 3.1}
    others = [
        run("match", 10, tpot, **COMPILED),
        run("other-preset", 11, tpot, model__preset="tiny", workload__preset="tiny", **COMPILED),
        run("other-image-mode", 12, tpot, model__image_mode="tiled", workload__image_mode="tiled", **COMPILED),
        run("other-new-tokens", 13, tpot, profiling__new_tokens="64", workload__new_tokens="64", **COMPILED),
        run("other-gpu", 14, tpot, gpu="NVIDIA H100 80GB HBM3", **COMPILED),
        run("on-cpu", 15, tpot, workload__device="cpu", **COMPILED),
        run("failed", 16, tpot, status="FAILED", **COMPILED),
        run("dynamic-cache", 17, tpot, model__compile="reduce-overhead"),  # compiled, but not with a static cache
        run("no-tpot", 18, {PAGES: 2.0}, **COMPILED),  # nothing to cite
        run("other-batch", 19, tpot, profiling__batch_size="4", **COMPILED),  # two knobs at once
        # Differs only in where it was recorded, its warm-up / repeats and its GPU index: the same workload.
        run("same-workload", 20, {TPOT: 3.3}, tracking__experiment="other", profiling__warmup="5",
            profiling__repeats="10", workload__device="cuda:3", device="cuda", **COMPILED),
    ]
    assert [r.run_id for r in measured_runs(this_run(), others, COMPILED_DECODE)] == ["match", "same-workload"]
    # Two runs of the configuration: the most recent measurement counts, not the better one.
    assert measured_run(this_run(), others, COMPILED_DECODE).run_id == "same-workload"
    assert measured_run(this_run(), [r for r in others if r.run_id != "same-workload"],
                        COMPILED_DECODE).run_id == "match"
    assert measured_run(this_run(), [r for r in others if r.run_id not in ("match", "same-workload")],
                        COMPILED_DECODE) is None


def test_runs_made_before_a_param_existed_read_as_its_default():
    old = params()
    for name in ("model.cache", "model.compile", "profiling.batch_size"):
        old.pop(name, None)
    new = params(model__cache="dynamic", model__compile="none", profiling__batch_size="1")
    assert configuration(old) == configuration(new)
    older_sibling = RelatedRun(run_id="old", status="FINISHED", params=old, tags={"device": "NVIDIA H200"},
                               metrics={PAGES: 1.0}, start_time_ms=1)
    this_batched = this_run(profiling__batch_size="4", model__cache="dynamic", model__compile="none")
    assert measured_runs(this_batched, [older_sibling], LARGER_BATCH) == []  # batch 1 is not larger than 4
    compiled_this = this_run(**COMPILED)
    assert measured_runs(compiled_this, [older_sibling], COMPILED_DECODE) == []  # an eager run is no compiled run


def test_larger_batch_is_the_best_throughput_among_the_latest_run_of_each_batch_size():
    batch_runs = [
        run("b4-old", 10, {PAGES: 30.0, LATENCY: 2000.0}, profiling__batch_size="4"),
        run("b4-new", 20, {PAGES: 18.0, LATENCY: 2100.0}, profiling__batch_size="4"),
        run("b2", 15, {PAGES: 12.0, LATENCY: 1600.0}, profiling__batch_size="2"),
        run("b8", 16, {PAGES: 25.0, LATENCY: 2900.0}, profiling__batch_size="8"),
        run("b16-compiled", 17, {PAGES: 90.0, LATENCY: 900.0}, profiling__batch_size="16", **COMPILED),
        run("b1", 18, {PAGES: 99.0, LATENCY: 100.0}),  # not a larger batch
    ]
    this = this_run()
    counted = measured_runs(this, batch_runs, LARGER_BATCH)
    assert [r.run_id for r in counted] == ["b4-old", "b4-new", "b2", "b8"]
    latest = {}
    for candidate in sorted(counted, key=lambda r: r.start_time_ms):
        latest[candidate.params["profiling.batch_size"]] = candidate
    best = max(latest.values(), key=lambda r: r.metrics[PAGES])
    assert measured_run(this, batch_runs, LARGER_BATCH).run_id == best.run_id == "b8"
    # A run of batch 4 looks for batches above 4 only.
    assert measured_run(this_run(profiling__batch_size="4"), batch_runs, LARGER_BATCH).run_id == "b8"


def related(this: RelatedRun, *others: RelatedRun) -> RelatedRuns:
    return RelatedRuns(tracking_uri="sqlite:///x.db", experiment_id="1", looked_up_at="2026-01-01T00:00:00+00:00",
                       run=this, others=list(others))


def launch_bound_record():
    """A decode-dominated run whose decode is launch-bound (busy 30%), tests/records.gpu_record, with pages/s."""
    record = gpu_record()
    record.throughput = {"pages_per_s": 1000.0 / record.stage("e2e").mean()}
    record.metrics = flat_metrics(record)
    assert derive_recommendations(record)["decode"].startswith("Optimise decode first")
    return record


def test_launch_bound_decode_names_the_measured_effects():
    record = launch_bound_record()
    here = record.metrics
    compiled = run("c0ffee00aa", 10, {TPOT: here[TPOT] / 5.2}, **COMPILED)
    batched = run("bat0000bb", 11, {PAGES: here[PAGES] * 9.3, LATENCY: here[LATENCY] * 7.5},
                  profiling__batch_size="16")
    text = derive_recommendations(record, related(this_run(), compiled, batched))["decode"]
    there_tpot = compiled.metrics[TPOT]
    assert (f"CUDA graphs (torch.compile mode='reduce-overhead' with a static KV cache; reduce-overhead with a "
            f"static cache measured TPOT {there_tpot:.3g} ms vs {here[TPOT]:.3g} ms here "
            f"({here[TPOT] / there_tpot:.1f}x faster, run name-c0ffee00aa, c0ffee00))") in text
    pages, latency = batched.metrics[PAGES], batched.metrics[LATENCY]
    assert (f"more sequences per batch (batch 16 measured {pages:.3g} pages/s vs {here[PAGES]:.3g} here "
            f"({pages / here[PAGES]:.1f}x), per-request latency {latency / 1000:.3g} s vs {here[LATENCY]:.3g} ms "
            f"(run name-bat0000bb, bat0000b))") in text
    assert "untested" not in text


def test_without_a_matching_run_the_recommendation_says_untested_and_how_to_measure_it():
    record = launch_bound_record()
    elsewhere = run("tiny", 10, {TPOT: 1.0, PAGES: 100.0}, model__preset="tiny", workload__preset="tiny",
                    profiling__batch_size="8", **COMPILED)
    text = derive_recommendations(record, related(this_run(), elsewhere))["decode"]
    assert ("untested here: no run of that configuration in this experiment; try `llm-perf-opt profile ... "
            "model.cache=static model.compile=reduce-overhead`") in text
    assert ("untested here: no run of a batch larger than 1 with this configuration in this experiment; try "
            "`llm-perf-opt profile -m ... profiling.batch_size=1,2,4,8`") in text
    untracked = derive_recommendations(record)["decode"]
    assert untracked.count("untested here: no other runs were consulted (no related_runs.json beside this run: it was "
                           "not tracked in MLflow)") == 2
    already = derive_recommendations(record, related(this_run(**COMPILED)))["decode"]
    assert "this run already uses reduce-overhead with a static cache" in already


def test_memory_bound_decode_names_the_larger_batchs_effect():
    record = build_record(prefill_ms=100.0, decode_ms=300.0, e2e_ms=400.0, efficiency={"decode": {"mbu": 0.8}})
    record.metrics.update({PAGES: 2.0, LATENCY: 400.0})
    batched = run("b4", 10, {PAGES: 6.0, LATENCY: 900.0}, profiling__batch_size="4")
    text = derive_recommendations(record, related(this_run(), batched))["decode"]
    pages, latency = batched.metrics[PAGES], batched.metrics[LATENCY]
    assert text.endswith(f"(larger batches: batch 4 measured {pages:.3g} pages/s vs {record.metrics[PAGES]:.3g} here "
                         f"({pages / record.metrics[PAGES]:.1f}x), per-request latency {latency:.3g} ms vs "
                         f"{record.metrics[LATENCY]:.3g} ms (run name-b4, b4)).")
    slower = run("b4", 10, {PAGES: 1.5, LATENCY: 900.0}, profiling__batch_size="4")
    text = derive_recommendations(record, related(this_run(), slower))["decode"]
    ratio = slower.metrics[PAGES] / record.metrics[PAGES]
    assert f"batch 4 measured {slower.metrics[PAGES]:.3g} pages/s vs {record.metrics[PAGES]:.3g} here ({ratio:.2f}x: " \
           "fewer)" in text


@pytest.fixture
def quiet_mlflow_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):  # mlflow exports them
        monkeypatch.delenv(name, raising=False)


TINY = ["model=custom", "device=cpu", "dataset.num_pages=2", "profiling.warmup=0", "profiling.repeats=2",
        "profiling.new_tokens=4", "profiling.progress=false", "profiling.operators.enabled=false",
        "profiling.counting.enabled=false"]


def test_a_second_run_names_what_the_first_measured_through_a_real_store(tmp_path, tracking_uri, quiet_mlflow_env):
    from llm_perf_opt.runners.profile import run_profile

    first = run_profile(compose_config(*TINY, "profiling.batch_size=2", f"tracking.uri={tracking_uri}"),
                        tmp_path / "batch2")
    second = run_profile(compose_config(*TINY, f"tracking.uri={tracking_uri}"), tmp_path / "batch1")
    assert (first.status, second.status) == ("FINISHED", "FINISHED"), (first.error, second.error)
    assert load_related(first.run_dir).others == []  # the experiment's first run
    # What the runner wrote from MLflow: this run's params and the first run, FINISHED, with its metrics.
    found = load_related(second.run_dir)
    assert found.run.run_id == second.mlflow_run_id and found.run.params["profiling.batch_size"] == "1"
    [other] = found.others
    first_record = load(first.run_dir)
    assert (other.run_id, other.status, other.params["profiling.batch_size"]) == (first.mlflow_run_id, "FINISHED",
                                                                                  "2")
    assert other.metrics == pytest.approx({k: first_record.metrics[k] for k in RELATED_METRICS
                                           if k in first_record.metrics})
    assert measured_run(found.run, found.others, LARGER_BATCH).run_id == first.mlflow_run_id
    # The verdict made deterministic: a launch-bound, dominant decode; the metrics stay the second run's own.
    measured = load(second.run_dir)
    save(gpu_record().model_copy(update={"metrics": measured.metrics, "workload": measured.workload}),
         second.run_dir / "metrics.json")
    write_reports(second.run_dir)
    summary = (second.run_dir / "stakeholder_summary.md").read_text()
    there, here = other.metrics[PAGES], measured.metrics[PAGES]
    ratio = f"{there / here:.1f}x" if there >= here else f"{there / here:.2f}x: fewer"  # tiny CPU runs: either way
    assert f"batch 2 measured {there:.3g} pages/s vs {here:.3g} here ({ratio})" in summary
    assert f"(run {other.run_name}, {other.run_id[:8]})" in summary
    assert "untested here: no run of that configuration in this experiment" in summary  # nothing compiled ran
    # build_summary (the seed's export API) reads the same related_runs.json: the same file.
    build_summary(str(second.run_dir / "metrics.json"), str(tmp_path / "rebuilt.md"))
    assert (tmp_path / "rebuilt.md").read_text() == summary
    # Without related_runs.json (log-run's upload, an untracked run) the same summary says nothing was consulted.
    (second.run_dir / RELATED_RUNS_FILE).unlink()
    build_summary(str(second.run_dir / "metrics.json"), str(tmp_path / "bare.md"))
    assert "no other runs were consulted" in (tmp_path / "bare.md").read_text()


def test_a_compiled_run_still_launch_bound_is_told_to_batch_not_to_compile():
    record = launch_bound_record()
    record.workload.cache, record.workload.compile = "static", "reduce-overhead"
    text = derive_recommendations(record)["decode"]
    assert "although it already replays CUDA graphs (static KV cache + reduce-overhead)" in text
    assert "torch.compile mode='reduce-overhead'" not in text and "more sequences per batch (" in text
