"""MLflow's own ways of showing a run: the stage timeline as traces, the inputs as a dataset input, the
experiment's kind, and a metric set of one section per stage. Read back from a separate Python process,
as a user's script or the UI's server would, and checked against the run directory's own files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter

import pandas as pd
import pytest

from conftest import FAST, compose_config, requires_transformers5
from llm_perf_opt import record
from llm_perf_opt.analysis.timeline import MAX_STEP_SPANS, representative, sample_spans, timelines
from llm_perf_opt.config import compose
from llm_perf_opt.data import describe_pages, load_pages
from llm_perf_opt.runners.log_run import log_runs
from llm_perf_opt.runners.profile import run_profile
from llm_perf_opt.schema import StageTree

READER = r"""
import json, sys
import mlflow
uri, run_id = sys.argv[1], sys.argv[2]
client = mlflow.MlflowClient(uri)
run = client.get_run(run_id)
experiment = client.get_experiment(run.info.experiment_id)
traces = mlflow.search_traces(run_id=run_id, locations=[run.info.experiment_id], return_type="list")
datasets = [{"name": d.dataset.name, "digest": d.dataset.digest, "source_type": d.dataset.source_type,
             "source": d.dataset.source, "context": {t.key: t.value for t in d.tags}.get("mlflow.data.context")}
            for d in run.inputs.dataset_inputs]
print(json.dumps({
    "kind": experiment.tags.get("mlflow.experimentKind"),
    "metrics": sorted(run.data.metrics),
    "datasets": datasets,
    "traces": [{"tags": t.info.tags, "spans": [{"name": s.name, "stage": s.attributes.get("stage"),
                                                 "id": s.span_id, "parent": s.parent_id,
                                                 "ms": (s.end_time_ns - s.start_time_ns) / 1e6}
                                                for s in t.data.spans]} for t in traces],
}))
"""


def read_back(uri: str, run_id: str) -> dict:
    """What a separate process sees of the run through the tracking API."""
    done = subprocess.run([sys.executable, "-c", READER, uri, run_id], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def native_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("native")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config(*FAST, "dataset.num_pages=2", "profiling.repeats=3", f"tracking.uri={uri}",
                         "tracking.system_metrics_interval_s=1")  # a short run: sample it more often than every 10 s
    outcome = run_profile(cfg, tmp_path / "run")
    assert outcome.status == "FINISHED" and outcome.exit_code == 0, outcome.error or outcome.tracking_errors
    return uri, outcome, read_back(uri, outcome.mlflow_run_id)


@requires_transformers5
def test_one_trace_per_input_with_the_measured_stage_times(native_run):
    uri, outcome, seen = native_run
    samples = pd.read_csv(outcome.run_dir / "samples.csv")
    assert seen["kind"] == "custom_model_development"
    assert len(seen["traces"]) == samples["input_id"].nunique() == 2
    timeline = json.loads((outcome.run_dir / "timeline.json").read_text())
    for trace in seen["traces"]:
        input_id = trace["tags"]["llm_perf_opt.input_id"]
        spans = {s["name"]: s for s in trace["spans"]}
        # The representative sample: the repeat whose e2e time is closest to the input's median.
        rows = samples[samples["input_id"] == input_id]
        chosen = next(s for s in timeline["samples"] if s["input_id"] == input_id)
        row = rows[rows["repeat"] == chosen["repeat"]].iloc[0]
        assert abs(row["e2e_ms"] - rows["e2e_ms"].median()) == (rows["e2e_ms"] - rows["e2e_ms"].median()).abs().min()
        for stage in ("prefill", "decode"):
            assert spans[stage]["ms"] == pytest.approx(row[f"{stage}_ms"], rel=0.01), stage
        # Nesting: prefill and decode in the root (e2e), sub-stages in their group, steps in decode.
        by_id = {s["id"]: s for s in trace["spans"]}
        parents = {(s["stage"], by_id[s["parent"]]["stage"]) for s in trace["spans"]
                   if s["parent"] and not s["name"].startswith("decode step")}
        assert parents == {("prefill", "e2e"), ("decode", "e2e"), ("vision", "prefill"), ("vision_sam", "vision"),
                           ("vision_encoder", "vision"), ("vision_projector", "vision")}
        steps = [s for s in trace["spans"] if s["name"].startswith("decode step ")]
        assert len(steps) == row["new_tokens"] - 1 and all(by_id[s["parent"]]["name"] == "decode" for s in steps)
        assert sum(s["ms"] for s in steps) == pytest.approx(row["decode_ms"], rel=0.01)
        sam = [s["ms"] for s in trace["spans"] if s["stage"] == "vision_sam"]  # one span per module call
        assert sam and sum(sam) == pytest.approx(row["vision_sam_ms"], rel=0.01)


@requires_transformers5
def test_inputs_are_the_runs_dataset_input(native_run):
    _, outcome, seen = native_run
    described = record.load(outcome.run_dir).workload.dataset
    [dataset] = seen["datasets"]
    assert dataset["name"] == described.name == "synthetic-2p-seed0"
    assert dataset["digest"] == described.digest and len(described.digest) == 16
    assert dataset["source_type"] == "code" and json.loads(dataset["source"])["tags"]["seed"] == "0"
    assert dataset["context"] == "profiling"


def test_same_pages_same_digest_other_pages_another(tmp_path):

    def described(*overrides):
        cfg = compose("config", ["device=cpu", *overrides]).dataset
        return describe_pages(cfg, load_pages(cfg))

    assert described("dataset.num_pages=2")["digest"] == described("dataset.num_pages=2")["digest"]
    assert described("dataset.num_pages=2")["digest"] != described("dataset.num_pages=2", "seed=1")["digest"]


@requires_transformers5
def test_one_section_per_stage_and_no_duplicated_keys(native_run):
    _, outcome, seen = native_run
    ours = [m for m in seen["metrics"] if not m.startswith("system/")]
    run = record.load(outcome.run_dir)
    assert sorted(ours) == sorted(run.metrics)
    sections = Counter(m.split("/")[0] for m in ours)
    assert set(sections) == set(run.tree().keys()) | {"throughput", "run"}
    for stage in ("prefill", "vision_sam", "vision", "e2e"):
        assert {f"{stage}/ms_{s}" for s in ("p50", "p90", "p99", "mean")} <= set(ours), stage
        assert {f"{stage}/mfu_pct", f"{stage}/mbu_pct"} <= set(ours), stage  # measured peaks on a CPU
    assert not [m for m in ours if m.endswith(("_std", "_min")) or "/flops" in m or "tokens_per_s_" in m]
    assert len(ours) <= 60, len(ours)  # 163 before (7 statistics x 12 distributions, rates, FLOPs, ...)
    # Percentages: the smallest share survives a two-decimal display.
    assert run.metrics["vision_projector/share_pct"] == pytest.approx(100 * run.stage("vision_projector")
                                                                      .share_of_parent)
    # MLflow's own system metrics are in the run, in their own section.
    assert any(m.startswith("system/") for m in seen["metrics"])


@requires_transformers5
def test_log_run_gives_an_offline_run_the_same_traces_and_dataset(native_run, tmp_path):
    _, outcome, _ = native_run
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    copy = shutil.copytree(outcome.run_dir, tmp_path / "copy")
    assert log_runs([str(copy)], uri) == 0
    run_id = record.load(copy).run.mlflow_run_id
    seen = read_back(uri, run_id)
    assert len(seen["traces"]) == 2 and seen["datasets"][0]["digest"] == record.load(copy).workload.dataset.digest
    assert log_runs([str(copy)], uri) == 0  # already logged: no second set of traces
    assert len(read_back(uri, run_id)["traces"]) == 2


def _sample(repeat: int, e2e: float, prefill: float = 6.0, steps=(1.0, 2.0)) -> dict:
    row = {"repeat": repeat, "input_index": 0, "input_id": "p", "e2e_ms": e2e, "prefill_ms": prefill,
           "decode_ms": sum(steps), "vision_sam_ms": 3.0, "vision_encoder_ms": 1.0, "vision_ms": 4.0}
    return {"row": row, "decode_step_ms": list(steps), "epoch_start_ns": 1_000_000,
            "calls": [["vision_sam", 0.5, 2.0], ["vision_sam", 2.5, 4.0], ["vision_encoder", 4.0, 5.0]]}


def test_timeline_layout_from_measured_marks():
    tree = StageTree.from_paths([("vision", "sam"), ("vision", "encoder")])
    chosen = representative([_sample(0, 30.0), _sample(1, 10.0), _sample(2, 11.0)])
    assert [s["row"]["repeat"] for s in chosen] == [2]  # median 11.0
    spans = sample_spans(_sample(0, 10.0), tree)
    named = {(s["name"], s["attributes"].get("call")): s for s in spans}
    assert (named[("vision", None)]["start_ms"], named[("vision", None)]["end_ms"]) == (0.5, 5.0)
    # The group's span covers its children's calls (4.5 ms with gaps); its measured time is their sum.
    assert named[("vision", None)]["attributes"]["measured_ms"] == 4.0
    sam = [s for s in spans if s["stage"] == "vision_sam"]  # two calls (tiles, global view): numbered spans
    assert [(s["name"], s["start_ms"], s["end_ms"]) for s in sam] == [("vision_sam #1", 0.5, 2.0),
                                                                      ("vision_sam #2", 2.5, 4.0)]
    assert [s["name"] for s in spans if s["stage"] == "vision_encoder"] == ["vision_encoder"]  # one call: plain
    assert {spans[s["parent"]]["name"] for s in sam} == {"vision"}
    steps = [s for s in spans if s["name"].startswith("decode step")]
    assert [(s["start_ms"], s["end_ms"]) for s in steps] == [(6.0, 7.0), (7.0, 9.0)]
    long = _sample(0, 10.0, steps=[0.01] * (MAX_STEP_SPANS + 5))
    assert sum(s["name"].startswith("decode step") for s in sample_spans(long, tree)) == MAX_STEP_SPANS
    assert timelines([_sample(0, 10.0)], tree, "perf_counter")["samples"][0]["repeat"] == 0


@requires_transformers5
def test_a_dataset_created_concurrently_is_reused_not_an_error(native_run, monkeypatch):
    """A parallel job created the same dataset between our check and insert: the next attempt reuses it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from llm_perf_opt.tracking import run_inputs

    uri, outcome, _ = native_run
    run = mlflow.MlflowClient(uri).get_run(outcome.mlflow_run_id)
    calls = []
    original = mlflow.MlflowClient.log_inputs

    def racing(self, run_id, datasets=None, models=None):
        calls.append(run_id)
        if len(calls) == 1:
            raise MlflowException('duplicate key value violates unique constraint "dataset_pk"')
        return original(self, run_id, datasets=datasets, models=models)

    monkeypatch.setattr(mlflow.MlflowClient, "log_inputs", racing)
    assert run_inputs.log_dataset_input(uri, run.info.run_id, record.load(outcome.run_dir))
    assert len(calls) == 2
    monkeypatch.setattr(mlflow.MlflowClient, "log_inputs",
                        lambda self, run_id, datasets=None, models=None: (_ for _ in ()).throw(
                            MlflowException("permission denied")))
    with pytest.raises(MlflowException, match="permission denied"):  # other errors are not retried
        run_inputs.log_dataset_input(uri, run.info.run_id, record.load(outcome.run_dir))
