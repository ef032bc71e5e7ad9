#!/usr/bin/env bash
# Issue-13 acceptance runs on a GPU (docs/benchmarks.md, "Static KV cache and compiled decode on an H200"):
# full DeepSeek-OCR-2 preset, global1024 synthetic pages, 256 new tokens, 5 repeats, one MLflow store.
#   PHASE=b1       eager vs static cache vs static + reduce-overhead at batch 1, then `compare` of the three
#   PHASE=tiled    eager vs static + reduce-overhead on one tiled page (profiled pass off), then `compare`
#   PHASE=batches  static + reduce-overhead at batch 1 and $BATCHES (the last: the largest to try), eager at
#                  $EAGER_BATCHES; `compare` over the reduce-overhead batch sizes (baseline batch 1) and, per
#                  eager batch size, eager vs reduce-overhead
# Usage, from the checkout with the profiler importable: OUT=/dir PHASE=b1 bash benchmarks/decode_modes_gpu.sh
set -u
OUT=${OUT:?set OUT to an output directory}
PHASE=${PHASE:-b1}
BATCHES=${BATCHES:-4 16 32 64 128}
EAGER_BATCHES=${EAGER_BATCHES:-32}
U="sqlite:///$OUT/m.db"
IMAGE_MODE=global1024
[ "$PHASE" = tiled ] && IMAGE_MODE=tiled
COMMON="device=cuda model.preset=full model.image_mode=$IMAGE_MODE profiling.repeats=5 profiling.new_tokens=256 \
profiling.progress=false tracking.uri=$U tracking.system_metrics=false"
RO="model.cache=static model.compile=reduce-overhead"
run() {  # name, overrides...
  local name=$1; shift
  /usr/bin/time -f "$name wall %e s" python -m llm_perf_opt profile $COMMON "$@" tracking.run_name=$name \
    hydra.run.dir=$OUT/runs/$name 2>&1 | grep -E "^(mlflow run|.* wall|error)|compiled in"
  python - "$OUT/runs/$name/metrics.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); m = r["metrics"]
keys = ["decode/tpot_ms_p50", "prefill/ms_p50", "e2e/ms_p50", "throughput/pages_per_s", "throughput/pages_per_day",
        "throughput/decode_tokens_per_s", "decode/mbu_pct", "decode/mfu_pct", "decode/peak_mem_mib_max", "run/compile_s"]
print("  " + r["status"] + " " + ", ".join(f"{k}={m[k]:.4g}" for k in keys if k in m))
PY
}
compare() {  # label, filter
  python -m llm_perf_opt compare tracking.uri="$U" "select.filter=\"$2\"" plots.enabled=false operators.enabled=false \
    hydra.run.dir="$OUT/compare-$1" 2>&1 | grep -v -E "INFO|Downloading|^\s*$" | tail -25
}
if [ "$PHASE" = tiled ]; then
  run t1-eager dataset.num_pages=1 profiling.operators.enabled=false
  run t1-ro dataset.num_pages=1 profiling.operators.enabled=false $RO
  compare tiled "attributes.run_name LIKE 't1-%'"
elif [ "$PHASE" = b1 ]; then
  run b1-eager profiling.batch_size=1 dataset.num_pages=1
  run b1-static profiling.batch_size=1 dataset.num_pages=1 model.cache=static
  run b1-ro profiling.batch_size=1 dataset.num_pages=1 $RO
  compare b1 "attributes.run_name LIKE 'b1-%'"
else
  for b in 1 $BATCHES; do
    run b$b-ro profiling.batch_size=$b dataset.num_pages=$b profiling.operators.enabled=false $RO
  done
  compare ro-batches "attributes.run_name LIKE '%-ro'"
  for b in $EAGER_BATCHES; do
    run b$b-eager profiling.batch_size=$b dataset.num_pages=$b profiling.operators.enabled=false
    compare b$b "attributes.run_name LIKE 'b$b-%'"
  done
fi
rm -f "$OUT"/runs/*/trace.json.gz "$OUT"/runs/*/nvml_timeline.csv
