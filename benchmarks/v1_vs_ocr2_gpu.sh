#!/usr/bin/env bash
# DeepSeek-OCR v1 against DeepSeek-OCR-2 on a GPU (issue 14, item 4; results go to docs/benchmarks.md): the same
# OmniDocBench demo pages through both, full presets, bf16, random weights, uniform MoE routing, 128 new tokens,
# 5 repeats; per-stage times, MFU/MBU and bound verdicts of each run, then `compare` (OCR-2 as the baseline).
# Their vision token counts differ by design (v1 crop mode: 640 px tiles of 100 tokens + a 1024 px view of 273;
# OCR-2 tiled: 768 px tiles of 144 + 257): the script prints each run's image tokens beside the comparison.
#
# Two environments on one host (../shared/gpu/README.md): the host's transformers 5.x with .whl/ in /tmp/site for
# OCR-2 and for compare; .whl-v1/ (transformers 4.46.3, tokenizers 0.20.3, huggingface-hub<1, easydict, addict)
# in /tmp/site-v1 put first on the path for v1 runs only. Carry .whl, .whl-v1, and copies of ../shared/deepseek-ocr-v1
# and ../shared/omnidocbench-demo (git-ignored folders: V1 and D below) with the checkout.
# Usage, from the checkout: OUT=/some/dir [D=.carry/omnidocbench-demo] [V1=.carry/deepseek-ocr-v1] \
#   bash benchmarks/v1_vs_ocr2_gpu.sh
set -u
OUT=${OUT:?set OUT to an output directory}
D=${D:-.carry/omnidocbench-demo}
V1=${V1:-.carry/deepseek-ocr-v1}
PAGES=${PAGES:-3}
U="sqlite:///$OUT/m.db"
for f in "$D/OmniDocBench.json" "$V1/config.json"; do [ -f "$f" ] || { echo "missing $f (set D / V1)"; exit 2; }; done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-v1 \
  .whl-v1/*.whl || exit
MAIN_PATH="/tmp/site:$PWD/src"
V1_PATH="/tmp/site-v1:/tmp/site:$PWD/src"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for p in "$MAIN_PATH" "$V1_PATH"; do
  PYTHONPATH=$p python3 -c "import torch, transformers, mlflow; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'mlflow', mlflow.__version__)"
done
PYTHONPATH=$V1_PATH python3 -c "import torchvision, einops, easydict, addict; print('torchvision', torchvision.__version__)"
COMMON="device=cuda model.preset=full model.dtype=bf16 dataset=omnidocbench dataset.root=$D dataset.limit=$PAGES \
profiling.repeats=5 profiling.new_tokens=128 profiling.progress=false tracking.uri=$U"
run() {  # name, PYTHONPATH, overrides...
  local name=$1 path=$2
  shift 2
  PYTHONPATH=$path /usr/bin/time -f "wall %e s" python3 -m llm_perf_opt profile $COMMON "$@" tracking.run_name=$name \
    hydra.run.dir="$OUT/runs/$name" 2>&1 | grep -E "^(run directory|mlflow run|wall|error|warning)"
}
# OCR-2 first: compare takes the oldest selected run as its baseline.
run cmp-ocr2-tiled "$MAIN_PATH" model=deepseek_ocr2 model.image_mode=tiled
run cmp-v1-crop "$V1_PATH" model=deepseek_ocr model.path="$V1" model.trust_remote_code=true model.image_mode=crop
for name in cmp-ocr2-tiled cmp-v1-crop; do
  PYTHONPATH=$MAIN_PATH python3 - "$OUT/runs/$name" <<'PY'
import sys
from llm_perf_opt import record
run = record.load(sys.argv[1])
work, extra = run.workload, run.workload.model_extra or {}
tokens = sorted({getattr(i, "image_tokens", None) for i in work.inputs} - {None})
print(f"\n## {sys.argv[1].rsplit('/', 1)[-1]}: {work.family} {work.preset} {extra.get('image_mode')}, {run.status}, "
      f"{run.samples} samples, image tokens per page {tokens}")
print("| stage | p50 | TFLOP/s | MFU % | GB/s | MBU % | FLOP/B | bound | measured/analytic FLOPs |")
print("|---|---|---|---|---|---|---|---|---|")
show = lambda v, scale=1.0: "-" if v is None else f"{v * scale:.4g}"
for stage in run.stages:
    stats, eff = stage.stats.get(stage.time_quantity), stage.efficiency
    cells = [f"{show(stats.p50 if stats else None)} {stage.time_quantity}"]
    cells += [show(getattr(eff, name, None), scale) for name, scale in (("achieved_tflops", 1), ("mfu", 100),
              ("achieved_gbps", 1), ("mbu", 100), ("intensity_flop_per_byte", 1))]
    cells += [getattr(eff, "bound", None) or "-", show(stage.flops_measured_over_analytic)]
    print(f"| {stage.key} | " + " | ".join(cells) + " |")
PY
done
PYTHONPATH=$MAIN_PATH python3 -m llm_perf_opt compare tracking.uri="$U" select.experiment=llm-perf-opt \
  "select.filter=\"attributes.run_name LIKE 'cmp-%'\"" hydra.run.dir="$OUT/compare" 2>&1 | tail -60
rm -f "$OUT"/runs/*/trace.json.gz "$OUT"/runs/*/nvml_timeline.csv
