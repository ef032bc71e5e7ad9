#!/usr/bin/env bash
# The MLflow presentation on a GPU (docs/benchmarks.md, "MLflow-native runs on an H200"): the GPU tests,
# four full-preset DeepSeek-OCR-2 runs alternating MLflow system metrics off/on (sampled every second,
# ten times the default rate, to magnify any disturbance), the tracking-API read-back (experiment kind,
# metric sections, dataset input, traces vs samples), the cost-centre nesting check on each run's trace,
# and a comparison of the four runs (does system-metrics sampling move TPOT beyond run-to-run noise?).
# Usage, from the checkout with the profiler importable: OUT=/some/dir bash benchmarks/mlflow_native_gpu.sh
set -u
OUT=${OUT:?set OUT to an output directory}
U="sqlite:///$OUT/m.db"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python -c "import torch, transformers, mlflow; print('torch', torch.__version__, 'transformers', transformers.__version__, 'mlflow', mlflow.__version__)"
python -m pytest -q -m gpu tests 2>&1 | tail -4
COMMON="device=cuda model.preset=full dataset.num_pages=2 profiling.repeats=5 profiling.new_tokens=64 \
profiling.progress=false tracking.uri=$U tracking.system_metrics_interval_s=1"
for i in 1 2; do
  for sm in false true; do
    /usr/bin/time -f "wall %e s" python -m llm_perf_opt profile $COMMON tracking.system_metrics=$sm \
      tracking.run_name=sm-$sm-$i hydra.run.dir=$OUT/runs/sm-$sm-$i 2>&1 | grep -E "^(run directory|mlflow run|wall|error)"
  done
done
python benchmarks/mlflow_native_check.py "$U" 2>&1 | grep -v -E "Downloading|warn"
for d in "$OUT"/runs/*; do python benchmarks/cost_centre_nesting.py "$d"; done
python -m llm_perf_opt compare tracking.uri="$U" select.experiment=llm-perf-opt "select.filter=\"attributes.run_name LIKE 'sm-%'\"" \
  hydra.run.dir="$OUT/compare" 2>&1 | tail -40
sed -n '/## Top cost centres/,/## Takeaways/p' "$OUT/runs/sm-false-1/stakeholder_summary.md"
rm -f "$OUT"/runs/*/trace.json.gz "$OUT"/runs/*/nvml_timeline.csv
