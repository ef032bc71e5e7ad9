"""Read profile runs back through the tracking API, as a separate process would, and check what the UI shows.

For every profile run in the store (or the runs given): the experiment's `mlflow.experimentKind`, the
number of metric keys per UI section, the dataset input, and the run's traces: one per input, whose
prefill and decode span durations must match that input's sample in samples.csv (the artifact) within 1%.

    python benchmarks/mlflow_native_check.py TRACKING_URI [RUN_ID ...]
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter

import mlflow
import pandas as pd


def check_run(client: mlflow.MlflowClient, run_id: str) -> int:
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    metrics = run.data.metrics
    print(f"run {run_id} {run.info.run_name} ({run.info.status})")
    print(f"  experiment {experiment.name}: mlflow.experimentKind={experiment.tags.get('mlflow.experimentKind')}")
    sections = Counter(name.split("/")[0] for name in metrics)
    ours = sum(n for section, n in sections.items() if section != "system")
    print(f"  metrics: {len(metrics)} ({ours} ours + {sections.get('system', 0)} system/): {dict(sections)}")
    for item in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in item.tags}
        print(f"  dataset input: {item.dataset.name} digest={item.dataset.digest} "
              f"source_type={item.dataset.source_type} context={tags.get('mlflow.data.context')}")
    with tempfile.TemporaryDirectory() as tmp:
        samples = pd.read_csv(client.download_artifacts(run_id, "samples.csv", tmp))
    traces = mlflow.search_traces(run_id=run_id, locations=[run.info.experiment_id], return_type="list")
    print(f"  traces: {len(traces)} for {samples['input_id'].nunique()} inputs")
    failures = 0
    for trace in traces:
        spans = {s.name: (s.end_time_ns - s.start_time_ns) / 1e6 for s in trace.data.spans}
        root = trace.data.spans[0]
        input_id = trace.info.tags["llm_perf_opt.input_id"]
        row = samples[(samples["input_id"] == input_id) & (samples["repeat"] == root.inputs["repeat"])].iloc[0]
        steps = sum(1 for name in spans if name.startswith("decode step"))
        for stage in ("prefill", "decode"):
            error = abs(spans[stage] / row[f"{stage}_ms"] - 1)
            failures += error > 0.01
            print(f"    {input_id} repeat {root.inputs['repeat']}: {stage} span {spans[stage]:.3f} ms, "
                  f"sample {row[f'{stage}_ms']:.3f} ms (rel. diff {error:.1e})")
        print(f"    {input_id}: {len(trace.data.spans)} spans, {steps} decode steps")
    return failures


def main(uri: str, run_ids: list[str]) -> int:
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    if not run_ids:
        found = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`llm_perf_opt.kind` = 'profile'",
                                   output_format="list")
        run_ids = [run.info.run_id for run in found]
    failures = sum(check_run(client, run_id) for run_id in run_ids)
    print("every trace matches its sample within 1%" if not failures else f"{failures} spans off by more than 1%")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
