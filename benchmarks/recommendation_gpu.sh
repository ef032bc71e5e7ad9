#!/usr/bin/env bash
# The stakeholder summary citing a measured configuration on a GPU (docs/benchmarks.md): a static +
# reduce-overhead run, then an eager run of the same workload in the same experiment; the eager run's
# recommendations name what the compiled run measured. Usage: OUT=/dir bash benchmarks/recommendation_gpu.sh
set -u
OUT=${OUT:?set OUT to an output directory}
U="sqlite:///$OUT/m.db"
COMMON="device=cuda model.preset=full model.image_mode=global1024 dataset.num_pages=1 profiling.repeats=5 \
profiling.new_tokens=64 profiling.progress=false tracking.uri=$U tracking.system_metrics=false"
python -m llm_perf_opt profile $COMMON model.cache=static model.compile=reduce-overhead tracking.run_name=rec-ro \
  hydra.run.dir=$OUT/runs/rec-ro 2>&1 | grep -E "^(mlflow run|error)"
python -m llm_perf_opt profile $COMMON tracking.run_name=rec-eager hydra.run.dir=$OUT/runs/rec-eager 2>&1 \
  | grep -E "^(mlflow run|error)"
for r in rec-ro rec-eager; do echo "== $r"; sed -n '/## Recommendations/,/^## [^R]/p' $OUT/runs/$r/stakeholder_summary.md; done
