"""How runs read in the MLflow UI: the experiment's kind, run names, the run description (note), comparison links.

Everything is read back through `mlflow.MlflowClient` and checked against the run record (metrics.json),
never against the note's own text.
"""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pytest

from conftest import FAST, compose_config
from llm_perf_opt import record
from llm_perf_opt.compare import run_comparison
from llm_perf_opt.config import ImageMode, compose
from llm_perf_opt.record import WorkloadInfo
from llm_perf_opt.runners.identity import run_name
from llm_perf_opt.runners.profile import run_profile

KIND_TAG, NOTE_TAG = "mlflow.experimentKind", "mlflow.note.content"
CUSTOM_NAME = "custom-llm_perf_opt.models.linear_stack.build_linear_stack-fp32-cpu"
PEAKS = ("hardware.peak_tflops=0.5", "hardware.peak_bandwidth_gbps=20")  # so that MFU and MBU are known on a CPU


def _profile(tmp_path: Path, uri: str, name: str, *overrides: str):
    outcome = run_profile(compose_config(*FAST, "model=custom", f"tracking.uri={uri}", *PEAKS, *overrides),
                          tmp_path / name)
    assert outcome.status == "FINISHED" and outcome.exit_code == 0, outcome.error or outcome.tracking_errors
    return outcome


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, _profile(tmp_path, uri, "a"), _profile(tmp_path, uri, "b")


def _value(note: str, pattern: str) -> float:
    match = re.search(pattern, note, re.MULTILINE)
    assert match, f"{pattern!r} not in the note:\n{note}"
    return float(match.group(1))


def _close(shown: float, true: float) -> bool:
    """`shown` is `true` as printed: 2 decimals from 1 up, 3 significant digits below."""
    return abs(shown - true) <= max(0.005, abs(true) * 5e-3)


def test_profile_run_names_its_experiment_kind_and_run(two_runs):
    uri, outcome, _ = two_runs
    client = mlflow.MlflowClient(uri)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.run_name == CUSTOM_NAME and run.data.tags["mlflow.runName"] == CUSTOM_NAME
    assert client.get_experiment(run.info.experiment_id).tags[KIND_TAG] == "custom_model_development"


def test_default_run_name_has_family_preset_image_mode_dtype_and_device_type():
    common = dict(weights="random", new_tokens=4, warmup=0, repeats=1, inputs=[])
    deepseek = WorkloadInfo(family="deepseek_ocr2", preset="tiny", dtype="fp32", device="cpu",
                            image_mode=ImageMode.global768, **common)
    assert run_name(deepseek) == "deepseek_ocr2-tiny-global768-fp32-cpu"
    causal = WorkloadInfo(family="hf_causal_lm", preset="qwen2_0_5b", dtype="bf16", device="cuda:1", **common)
    assert run_name(causal) == "hf_causal_lm-qwen2_0_5b-bf16-cuda"


def test_note_holds_the_records_headline_numbers_and_stages(two_runs):
    uri, outcome, _ = two_runs
    rec = record.load(outcome.run_dir)
    note = mlflow.MlflowClient(uri).get_run(outcome.mlflow_run_id).data.tags[NOTE_TAG]
    assert note.startswith("**FINISHED**") and f"Run directory: `{outcome.run_dir}`" in note
    p50 = {s.key: {q: st.p50 for q, st in s.stats.items()} for s in rec.stages}
    assert _close(_value(note, r"TTFT \(prefill p50\): ([\d.e+-]+) ms"), p50["prefill"]["ms"])
    assert _close(_value(note, r"TPOT \(decode p50\): ([\d.e+-]+) ms"), p50["decode"]["tpot_ms"])
    assert _close(_value(note, r"e2e p50: ([\d.e+-]+) ms"), p50["e2e"]["ms"])
    assert _close(_value(note, r"· ([\d.e+-]+) tokens/s"), p50["e2e"]["tokens_per_s"])
    tree = rec.tree()
    assert len(rec.stages) >= 5 and any(s.efficiency and s.efficiency.mfu for s in rec.stages)
    for stage in rec.stages:  # each stage on its own line, indented by its depth in the record's nesting
        line = rf"^{' ' * 2 * tree.depth(stage.key)}- {re.escape(stage.label)}: "
        assert _close(_value(note, line + r"([\d.e+-]+) ms"), p50[stage.key]["ms"]), stage.key
        for name, value in (("MFU", stage.efficiency and stage.efficiency.mfu),
                            ("MBU", stage.efficiency and stage.efficiency.mbu)):
            if value:
                shown = _value(note, line + rf".*{name} ([\d.e+-]+)%")
                assert abs(shown - value * 100) <= abs(value * 100) * 5e-3, (stage.key, name)
            else:
                assert not re.search(line + rf".*{name} ", note, re.MULTILINE), (stage.key, name)


def test_an_experiment_kind_set_by_its_owner_is_kept(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("genai", tags={KIND_TAG: "genai_development"})
    outcome = _profile(tmp_path, uri, "run", "tracking.experiment=genai", "tracking.run_name=mine")
    assert client.get_run(outcome.mlflow_run_id).info.run_name == "mine"
    assert client.get_experiment(experiment).tags[KIND_TAG] == "genai_development"


def test_under_mlflow_run_the_launchers_run_is_renamed_and_its_experiment_tagged(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    launcher_experiment = client.create_experiment("launcher")
    launched = client.create_run(launcher_experiment, run_name="amusing-elk-821")  # what `mlflow run` makes
    monkeypatch.setenv("MLFLOW_RUN_ID", launched.info.run_id)
    outcome = _profile(tmp_path, uri, "run")
    assert outcome.mlflow_run_id == launched.info.run_id
    run = client.get_run(launched.info.run_id)
    assert run.info.run_name == CUSTOM_NAME and run.info.status == "FINISHED" and NOTE_TAG in run.data.tags
    assert client.get_experiment(launcher_experiment).tags[KIND_TAG] == "custom_model_development"


def test_comparison_note_links_the_compared_runs_and_marks_the_baseline(two_runs, tmp_path):
    uri, first, second = two_runs
    cfg = compose("compare", [f"tracking.uri={uri}", f"select.run_ids=[{first.mlflow_run_id},{second.mlflow_run_id}]",
                              f"baseline={first.mlflow_run_id}", "plots.enabled=false", "verdicts.enabled=false"])
    outcome = run_comparison(cfg, tmp_path / "out")
    client = mlflow.MlflowClient(uri)
    run = client.get_run(outcome.mlflow_run_id)
    link = r"^- \[([^\]]+)\]\(#/experiments/(\w+)/runs/(\w+)\?workflowType=machine_learning\)( \(baseline\))?$"
    links = re.findall(link, run.data.tags[NOTE_TAG], re.MULTILINE)  # links open the Model training view
    expected = []
    for profiled in (first, second):
        info = client.get_run(profiled.mlflow_run_id).info
        expected.append((info.run_name, info.experiment_id, info.run_id,
                         " (baseline)" if profiled is first else ""))
    assert links == expected
    assert client.get_experiment(run.info.experiment_id).tags[KIND_TAG] == "custom_model_development"
