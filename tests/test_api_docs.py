"""docs/api.md's snippets run as written, in order, against two tiny profile runs in a temporary store.

The first snippet reads its settings from the environment (MLFLOW_TRACKING_URI, LLM_PERF_OPT_API_EXPERIMENT,
LLM_PERF_OPT_API_STAGE); the test sets them, runs every ```python block in one namespace and checks the
values the snippets leave behind against the runs' own records.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import FAST, REPO_ROOT, compose_config
from llm_perf_opt.runners.profile import run_profile
from llm_perf_opt.schema import column

API_DOC = REPO_ROOT / "docs" / "api.md"
EXPERIMENT = "api-docs"
STAGE = "body_layers"  # a sub-stage of the custom model's linear stack (stage map body/layers)
PEAKS = ["hardware.peak_tflops=1", "hardware.peak_bandwidth_gbps=10"]  # so that <stage>/mfu_pct is logged on a CPU


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_api_doc_snippets_run_against_real_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the comparison snippet writes runs/compare/... relative to the cwd
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcomes = []
    for i in range(2):
        cfg = compose_config(*FAST, "model=custom", f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}",
                             *PEAKS)
        outcome = run_profile(cfg, tmp_path / f"run{i}")
        assert outcome.status == "FINISHED" and outcome.mlflow_run_id, outcome.error
        outcomes.append(outcome)
    records = {o.mlflow_run_id: o.record for o in outcomes}
    newest = outcomes[-1]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("LLM_PERF_OPT_API_EXPERIMENT", EXPERIMENT)
    monkeypatch.setenv("LLM_PERF_OPT_API_STAGE", STAGE)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    blocks = python_blocks(API_DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 7
    ns: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{API_DOC}:block{i + 1}", "exec"), ns)

    assert (ns["TRACKING_URI"], ns["EXPERIMENT"], ns["STAGE"]) == (uri, EXPERIMENT, STAGE)

    # 1. The profile runs, newest first, with the values each run's record holds.
    runs = ns["runs"]
    assert list(runs["run_id"]) == [o.mlflow_run_id for o in reversed(outcomes)]
    for _, row in runs.iterrows():
        rec = records[row["run_id"]]
        assert row["metrics.prefill/ms_p50"] == pytest.approx(rec.stage("prefill").stats["ms"].p50)
        assert row["metrics.decode/tpot_ms_p50"] == pytest.approx(rec.stage("decode").stats["tpot_ms"].p50)
        assert row["params.model.preset"] == rec.workload.preset

    # 2. One stage across runs, and the newest run's stage tree from its metrics.json.
    stage_runs = ns["stage_runs"].set_index("run_id")
    for run_id, rec in records.items():
        assert stage_runs.loc[run_id, f"metrics.{STAGE}/ms_p50"] == pytest.approx(rec.stage(STAGE).stats["ms"].p50)
        mfu = rec.stage(STAGE).efficiency.mfu
        assert stage_runs.loc[run_id, f"metrics.{STAGE}/mfu_pct"] == pytest.approx(100 * mfu)
    rec = ns["rec"]
    assert rec.run.mlflow_run_id == newest.mlflow_run_id
    assert rec.stage(STAGE).parent == "body" and ns["tree"].ancestors(STAGE) == ["body", "prefill", "e2e"]

    # 3. The newest run's samples.
    samples = ns["samples"]
    assert len(samples) == newest.record.samples == 2
    assert samples[column(STAGE, "ms")].median() == pytest.approx(newest.record.stage(STAGE).stats["ms"].p50)

    # 4. The comparison, run from the script and read back from MLflow.
    outcome = ns["outcome"]
    assert outcome.baseline_run_id == outcomes[0].mlflow_run_id and outcome.run_ids[-1] == newest.mlflow_run_id
    assert (tmp_path / "runs" / "compare" / "from-script" / "verdicts.csv").is_file()
    latest = ns["latest"]
    assert latest["run_id"] == outcome.mlflow_run_id
    assert latest["tags.compare.baseline_run_id"] == outcomes[0].mlflow_run_id
    verdicts = ns["verdicts"]
    assert set(verdicts["run_id"]) == {newest.mlflow_run_id}
    assert {"prefill/ms", f"{STAGE}/ms", "decode/tpot_ms"} <= set(verdicts["metric"])
    assert len(verdicts) == len(outcome.verdicts)

    # 5. The newest run's traces: one per input, prefill as long as that input's sample says.
    traces = ns["traces"]
    assert len(traces) == len(newest.record.workload.inputs) == 1
    prefill = next(s for s in traces[0].data.spans if s.name == "prefill")
    sample = samples.set_index("repeat").loc[ns["trace"].data.spans[0].inputs["repeat"]]
    assert (prefill.end_time_ns - prefill.start_time_ns) / 1e6 == pytest.approx(sample[column("prefill", "ms")],
                                                                               rel=1e-3)
