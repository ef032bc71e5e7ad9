"""GPU truth: does the timed loop perturb what it measures? (run on a GPU host)

For the `full` DeepSeek-OCR-2 preset (bf16, sdpa, uniform routing) on real pages in several image
modes and token counts, compares, side by side in one process:

- the tool's timed loop (CUDA events at every boundary, forward hooks on the vision sub-stages),
- a bare loop making the same forward calls (no events, no hooks), timed by the host around a
  synchronised decode phase,
- `model.generate()` for the same number of new tokens (greedy, fixed length), timed the same way.

Prints, per (image mode, new tokens): median decode time per token of each, the ratio timed/bare
(goal <= 1.01), and end-to-end timed/generate (goal <= 1.00). Writes every sample to --out as CSV.

    python3 benchmarks/gpu_truth.py --out /tmp/truth --pages-root ../shared/omnidocbench-demo \
        --image-modes tiled global1024 --new-tokens 64 256 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from llm_perf_opt.data.omnidocbench import load_omnidocbench  # noqa: E402
from llm_perf_opt.data.synthetic import generate_pages  # noqa: E402
from llm_perf_opt.models import build_workload  # noqa: E402
from llm_perf_opt.profiling.generation import decode_n_tokens, prefill  # noqa: E402
from llm_perf_opt.profiling.clock import StageClock  # noqa: E402
from llm_perf_opt.profiling.timed_pass import SubStageRecorder, iter_timed_samples, time_one_sample  # noqa: E402


def model_cfg(preset: str, image_mode: str, experts_implementation: str | None, dtype: str):
    cfg = OmegaConf.load(REPO / "conf" / "model" / "deepseek_ocr2.yaml")
    cfg.preset, cfg.image_mode, cfg.dtype = preset, image_mode, dtype
    cfg.experts_implementation = experts_implementation
    return cfg


def bare_decode_ms(workload, prepared, new_tokens: int) -> tuple[float, float]:
    """(prefill wall ms, decode wall ms) of the bare loop: host timer around synchronised phases."""
    model, conv, sync = workload.model, workload.convention, StageClock(workload.device).synchronize
    sync()
    t0 = time.perf_counter()
    token, cache = prefill(model, conv, prepared.model_inputs)
    sync()
    t1 = time.perf_counter()
    decode_n_tokens(model, conv, token, cache, new_tokens - 1)
    sync()
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3


def generate_ms(workload, prepared, new_tokens: int) -> float:
    sync = StageClock(workload.device).synchronize
    sync()
    t0 = time.perf_counter()
    workload.model.generate(**prepared.model_inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            do_sample=False)
    sync()
    return (time.perf_counter() - t0) * 1e3


def overhead_rows(workload, new_tokens: int, repeats: int) -> list[dict]:
    rows = []
    with torch.inference_mode():
        # Warm every path once (kernel selection, allocator) before timing any of them.
        list(iter_timed_samples(workload, new_tokens, warmup=1, repeats=0))
        bare_decode_ms(workload, workload.inputs[0], new_tokens)
        generate_ms(workload, workload.inputs[0], new_tokens)
        for repeat in range(repeats):
            # Interleave the three loops per repeat so drifts (clocks, temperature) hit all of them.
            for index, prepared in enumerate(workload.inputs):
                record = _timed_one(workload, prepared, new_tokens)
                bare_prefill, bare_decode = bare_decode_ms(workload, prepared, new_tokens)
                gen = generate_ms(workload, prepared, new_tokens)
                rows.append({
                    "repeat": repeat, "input_id": prepared.input_id, "new_tokens": new_tokens,
                    "timed_prefill_ms": record["prefill_ms"], "timed_decode_ms": record["decode_ms"],
                    "timed_e2e_ms": record["e2e_ms"], "bare_prefill_ms": bare_prefill, "bare_decode_ms": bare_decode,
                    "generate_e2e_ms": gen,
                })
    return rows


def _timed_one(workload, prepared, new_tokens: int) -> dict:
    clock = StageClock(workload.device)
    recorder = SubStageRecorder(clock, workload.stage_modules)
    try:
        return time_one_sample(workload, prepared, new_tokens, clock, recorder).row
    finally:
        recorder.remove()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pages-root", type=Path, default=REPO.parent / "shared" / "omnidocbench-demo")
    parser.add_argument("--pages", type=int, default=3)
    parser.add_argument("--image-modes", nargs="+", default=["tiled", "global1024"])
    parser.add_argument("--new-tokens", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--experts-implementation", default=None)
    parser.add_argument("--preset", default="full")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--device", default="cuda", help="cpu only for a dry run of the script itself")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: gpu_truth needs a CUDA device (this machine has none); --device cpu --preset tiny "
              "--dtype fp32 dry-runs the script", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if (args.pages_root / "OmniDocBench.json").is_file():
        pages = load_omnidocbench(args.pages_root, limit=args.pages)
    else:
        print(f"note: no OmniDocBench pages at {args.pages_root}; using synthetic pages")
        pages = generate_pages(args.pages, [[1240, 1754]], 0)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, preset {args.preset}, dtype {args.dtype}")
    all_rows, summary = [], []
    for mode in args.image_modes:
        workload = build_workload(model_cfg(args.preset, mode, args.experts_implementation, args.dtype), pages, device, 0)
        for new_tokens in args.new_tokens:
            rows = overhead_rows(workload, new_tokens, args.repeats)
            for row in rows:
                row["image_mode"] = mode
            all_rows += rows
            frame = pd.DataFrame(rows)
            steps = new_tokens - 1
            timed_tpot = statistics.median(frame["timed_decode_ms"] / steps)
            bare_tpot = statistics.median(frame["bare_decode_ms"] / steps)
            timed_e2e = statistics.median(frame["timed_e2e_ms"])
            gen_e2e = statistics.median(frame["generate_e2e_ms"])
            line = {
                "image_mode": mode, "new_tokens": new_tokens, "samples": len(frame),
                "timed_tpot_ms": timed_tpot, "bare_tpot_ms": bare_tpot, "tpot_ratio_timed_over_bare": timed_tpot / bare_tpot,
                "timed_e2e_ms": timed_e2e, "generate_e2e_ms": gen_e2e, "e2e_ratio_timed_over_generate": timed_e2e / gen_e2e,
                "timed_prefill_ms": statistics.median(frame["timed_prefill_ms"]),
                "bare_prefill_ms": statistics.median(frame["bare_prefill_ms"]),
            }
            summary.append(line)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in line.items()}))
        del workload
        if device.type == "cuda":
            torch.cuda.empty_cache()
    pd.DataFrame(all_rows).to_csv(args.out / "overhead_samples.csv", index=False)
    pd.DataFrame(summary).to_csv(args.out / "overhead_summary.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
