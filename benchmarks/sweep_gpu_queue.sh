#!/usr/bin/env bash
# A 3-job sweep of the full DeepSeek-OCR-2 preset through Hydra's joblib launcher (3 workers) on a one-GPU
# host with GPU assignment on, against the same three configurations run alone, one after another
# (docs/benchmarks.md, "A sweep queueing for one GPU"). The jobs differ only in the seed (random weights,
# same shapes), so the three alone runs also measure the run-to-run noise of identical work.
# Usage, from the checkout with the profiler and the cluster extra importable: OUT=/dir bash benchmarks/sweep_gpu_queue.sh
set -u
OUT=${OUT:?set OUT to an output directory}
U="sqlite:///$OUT/m.db"
export LLM_PERF_OPT_RUNS_DIR="$OUT/runs"
COMMON="device=cuda model.preset=full dataset.num_pages=2 profiling.repeats=5 profiling.new_tokens=64 \
profiling.progress=false profiling.operators.enabled=false profiling.counting.enabled=false tracking.uri=$U"
for seed in 0 1 2; do
  /usr/bin/time -f "alone seed=$seed: wall %e s" python -m llm_perf_opt profile $COMMON seed=$seed \
    tracking.run_name=alone-seed$seed 2>&1 | grep -E "^(mlflow run|alone|error)"
done
/usr/bin/time -f "sweep: wall %e s" python -m llm_perf_opt profile -m hydra/launcher=joblib hydra.launcher.n_jobs=3 \
  $COMMON seed=0,1,2 2>&1 | grep -E "^(job |sweep|waiting|mlflow run|error)"
python benchmarks/sweep_check.py "$U" "$OUT"/runs/multirun/*
