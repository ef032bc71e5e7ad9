"""A run's inputs and stage timeline in MLflow's own terms: a dataset input and one trace per input.

- Dataset input: the record's dataset description (data/describe.py) as an MLflow dataset (a pandas
  table of the inputs: id, prompt and image tokens, size, source) with its name and content digest, and
  its source: the OmniDocBench root for real pages, a code source holding the generator's settings for
  synthetic ones. Context `profiling`. Concurrent runs on the same pages race to create the dataset in
  the store; the loser retries and reuses it. The runs table's Dataset column then names it.
- Stage traces: timeline.json (analysis/timeline.py) becomes one MLflow trace per input, attached to
  the run (trace metadata `mlflow.sourceRun`), whose spans carry the measured start and end of every
  stage of that input's representative sample: the Traces tab shows the stage waterfall. Trace export
  is asynchronous in MLflow; the queue is flushed before returning, so the traces are stored when the
  run ends.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from llm_perf_opt.analysis.timeline import TIMELINE_FILE
from llm_perf_opt.record import RunRecord
from llm_perf_opt.schema import INPUT_TAG, RUN_UID_TAG

DATASET_CONTEXT = "profiling"
MAX_TRACE_INPUT_ID = 250  # a batch's joined ids beyond this are shortened in trace names and tags


def trace_input_id(input_id: str) -> str:
    """The input id a trace is named and tagged with: a batch of many pages (ids joined with "+") as
    "first+...+last (N inputs)", so that big batches stay within MLflow's tag lengths (timeline.json and
    samples.csv keep every id)."""
    parts = input_id.split("+")
    if len(input_id) <= MAX_TRACE_INPUT_ID or len(parts) < 3:
        return input_id
    return f"{parts[0]}+...+{parts[-1]} ({len(parts)} inputs)"


def inputs_table(record: RunRecord) -> pd.DataFrame:
    return pd.DataFrame([item.model_dump(mode="json") for item in record.workload.inputs])


def log_dataset_input(uri: str, run_id: str, record: RunRecord) -> bool:
    """Log the record's dataset as the run's dataset input; False when the record has no dataset."""
    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    described = record.workload.dataset
    if described is None:
        return False
    source: Any = described.uri if described.uri else CodeDatasetSource(
        {key: str(value) for key, value in (described.generator or {}).items()})
    with warnings.catch_warnings():  # MLflow's hint about integer columns and missing values: none are missing
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(inputs_table(record), source=source, name=described.name,
                                          digest=described.digest)
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", DATASET_CONTEXT)])
    _log_inputs_retrying(mlflow.MlflowClient(uri), run_id, entity)
    return True


def _log_inputs_retrying(client, run_id: str, entity, attempts: int = 4) -> None:
    """log_inputs, again when a concurrent run created the same dataset (name, digest) first: MLflow's store
    inserts the dataset row without a conflict check, so parallel jobs on the same pages race for it (seen
    with 4 jobs on a PostgreSQL-backed server: `duplicate key value violates unique constraint "dataset_pk"`).
    On the next attempt the row exists and is reused."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            client.log_inputs(run_id, datasets=[entity])
            return
        except MlflowException as exc:
            text = str(exc).lower()
            if attempt == attempts - 1 or not ("unique" in text or "duplicate key" in text):
                raise
            time.sleep(0.2 * (attempt + 1))


def read_timeline(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / TIMELINE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _ns(base: int, ms: float) -> int:
    return base + round(ms * 1e6)


def _log_sample(sample: dict[str, Any], run_id: str, experiment_id: str, run_uid: str | None) -> None:
    import mlflow

    base, live = int(sample["epoch_start_ns"]), {}
    for span in sample["spans"]:
        attributes = {"stage": span["stage"], "duration_ms": span["end_ms"] - span["start_ms"], **span["attributes"]}
        start = _ns(base, span["start_ms"])
        if span["parent"] is None:
            input_id = trace_input_id(str(sample["input_id"]))
            tags = {INPUT_TAG: input_id, **({RUN_UID_TAG: run_uid} if run_uid else {})}
            live[span["id"]] = mlflow.start_span_no_context(
                f"{span['name']} · {input_id}", span_type="CHAIN", experiment_id=experiment_id,
                inputs={"input_id": sample["input_id"], "repeat": sample["repeat"]}, attributes=attributes,
                metadata={"mlflow.sourceRun": run_id}, tags=tags, start_time_ns=start)
        else:
            live[span["id"]] = mlflow.start_span_no_context(
                span["name"], span_type="UNKNOWN", parent_span=live[span["parent"]], attributes=attributes,
                start_time_ns=start)
    for span in reversed(sample["spans"]):  # children end before their parents
        outputs = {"ms": span["end_ms"] - span["start_ms"]} if span["parent"] is None else None
        live[span["id"]].end(outputs=outputs, end_time_ns=_ns(base, span["end_ms"]))


def log_stage_traces(uri: str, run_id: str, experiment_id: str, timeline: dict[str, Any],
                     run_uid: str | None = None) -> int:
    """One trace per sample of `timeline` (timeline.json), attached to the run; returns how many."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    logged = 0
    for sample in timeline.get("samples", []):
        if sample.get("epoch_start_ns") is None or not sample.get("spans"):
            continue
        _log_sample(sample, run_id, experiment_id, run_uid)
        logged += 1
    mlflow.flush_trace_async_logging()
    return logged


def run_trace_count(uri: str, run_id: str, experiment_id: str) -> int:
    """How many traces the run has (log-run adds traces only to a run without any)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    return len(mlflow.search_traces(run_id=run_id, locations=[experiment_id], return_type="list"))
