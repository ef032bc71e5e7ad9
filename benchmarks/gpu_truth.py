"""GPU truth: do the profiler's numbers hold on real hardware? (run on a GPU host)

Sections (`--sections`, default all):

overhead  For the `full` DeepSeek-OCR-2 preset (bf16, sdpa, uniform routing) on real pages in several
          image modes and token counts, compares side by side in one process:

- the tool's timed loop (CUDA events at every boundary, forward hooks on the vision sub-stages),
- a bare loop making the same forward calls (no events, no hooks), timed by the host around a
  synchronised decode phase,
- `model.generate()` for the same number of new tokens (greedy, fixed length), timed the same way.

          Prints, per (image mode, new tokens): median decode time per token of each, the ratio
          timed/bare (goal within 1%), and end-to-end timed/generate (goal <= 1.00).
runs      Whole profiler runs (timed, counted, profiled passes, NVML energy, calibrated peaks) of the
          full preset per image mode, into --out/runs with an MLflow store --out/mlflow.db.
accuracy  From those runs: the timed pass's CUDA-event stage time vs the summed kernel time inside
          the same stage range of the profiled pass, for the same input (goal within 3% for busy
          stages), and decode's busy share (kernel time / stage span) as launch-bound evidence.
energy    From those runs: J/token from the energy metrics vs mean sampled power x decode time per
          token (goal within 10%).
gemm      A stage that keeps the GPU busy by construction (one 16384^3 bf16 GEMM as prefill, the
          `gemm` workload): the same accuracy check (timed event time vs kernel time in the range).

Writes every sample and a summary to --out as CSV/JSON.

    python3 benchmarks/gpu_truth.py --out /tmp/truth --pages-root ../shared/omnidocbench-demo \
        --image-modes tiled global1024 --new-tokens 64 256 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from llm_perf_opt import record as run_record  # noqa: E402
from llm_perf_opt.config import compose  # noqa: E402
from llm_perf_opt.data.omnidocbench import load_omnidocbench  # noqa: E402
from llm_perf_opt.data.synthetic import generate_pages  # noqa: E402
from llm_perf_opt.models import build_workload  # noqa: E402
from llm_perf_opt.models.generation import decode_n_tokens, prefill  # noqa: E402
from llm_perf_opt.passes.clock import StageClock  # noqa: E402
from llm_perf_opt.passes.timed import SubStageRecorder, iter_timed_samples, time_one_sample  # noqa: E402
from llm_perf_opt.schema import DECODE, PREFILL, column, metric_key  # noqa: E402


def model_cfg(preset: str, image_mode: str, experts_implementation: str | None, dtype: str):
    """conf/model/deepseek_ocr2.yaml composed against its schema, with this run's settings."""
    overrides = [f"model.preset={preset}", f"model.image_mode={image_mode}", f"model.dtype={dtype}"]
    if experts_implementation:
        overrides.append(f"model.experts_implementation={experts_implementation}")
    return compose("config", overrides).model


def bare_decode_ms(workload, prepared, new_tokens: int) -> tuple[float, float]:
    """(prefill wall ms, decode wall ms) of the bare loop: host timer around synchronised phases."""
    model, conv, sync = workload.model, workload.convention, StageClock(workload.device).synchronize
    sync()
    t0 = time.perf_counter()
    token, cache = prefill(model, conv, prepared.model_inputs)
    sync()
    t1 = time.perf_counter()
    with workload.decode_phase():  # the same experts switch generate() and the timed loop make
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
        # Warm every path on every input (kernel selection, allocator) before timing any of them.
        settings = types.SimpleNamespace(new_tokens=new_tokens, warmup=1, repeats=0, stop_at_eos=False)
        list(iter_timed_samples(workload, settings))
        for prepared in workload.inputs:
            bare_decode_ms(workload, prepared, new_tokens)
            generate_ms(workload, prepared, new_tokens)
        for repeat in range(repeats):
            # Interleave the three loops per repeat so drifts (clocks, temperature) hit all of them.
            for prepared in workload.inputs:
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


def event_record_cost_us(count: int = 20000) -> float:
    """Host cost of what the timed loop adds per decode step: creating and recording one CUDA event."""
    clock = StageClock("cuda")
    clock.synchronize()
    start = time.perf_counter()
    for _ in range(count):
        clock.mark()
    elapsed = time.perf_counter() - start
    clock.synchronize()
    return elapsed / count * 1e6


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
    parser.add_argument("--sections", nargs="+", default=["overhead", "runs", "accuracy", "energy"])
    parser.add_argument("--run-overrides", nargs="*", default=[], help="extra Hydra overrides for the runs")
    parser.add_argument("--gemm-size", type=int, default=16384, help="M = N = K of the busy-stage GEMM")
    parser.add_argument("--label", default="", help="suffix of the run directories (a before/after pair)")
    parser.add_argument("--experiment", default="gpu-truth", help="MLflow experiment of the runs")
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
    for mode in (args.image_modes if "overhead" in args.sections else []):
        cfg = model_cfg(args.preset, mode, args.experts_implementation, args.dtype)
        workload = build_workload(cfg, pages, device, 0)
        for new_tokens in args.new_tokens:
            rows = overhead_rows(workload, new_tokens, args.repeats)
            for row in rows:
                row["image_mode"] = mode
            all_rows += rows
            frame = pd.DataFrame(rows)
            steps = new_tokens - 1
            # Paired ratios (same repeat, same input, run back to back) cancel the host's slow drifts.
            paired_tpot = statistics.median(frame["timed_decode_ms"] / frame["bare_decode_ms"])
            paired_e2e = statistics.median(frame["timed_e2e_ms"] / frame["generate_e2e_ms"])
            timed_tpot = statistics.median(frame["timed_decode_ms"] / steps)
            bare_tpot = statistics.median(frame["bare_decode_ms"] / steps)
            timed_e2e = statistics.median(frame["timed_e2e_ms"])
            gen_e2e = statistics.median(frame["generate_e2e_ms"])
            line = {
                "image_mode": mode, "new_tokens": new_tokens, "samples": len(frame),
                "timed_tpot_ms": timed_tpot, "bare_tpot_ms": bare_tpot,
                "tpot_ratio_timed_over_bare": timed_tpot / bare_tpot,
                "timed_e2e_ms": timed_e2e, "generate_e2e_ms": gen_e2e,
                "e2e_ratio_timed_over_generate": timed_e2e / gen_e2e,
                "paired_tpot_ratio_timed_over_bare": paired_tpot, "paired_e2e_ratio_timed_over_generate": paired_e2e,
                "timed_prefill_ms": statistics.median(frame["timed_prefill_ms"]),
                "bare_prefill_ms": statistics.median(frame["bare_prefill_ms"]),
            }
            summary.append(line)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in line.items()}))
        del workload
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if summary and device.type == "cuda":
        print(json.dumps({"event_record_us": event_record_cost_us()}))
    if summary:
        pd.DataFrame(all_rows).to_csv(args.out / "overhead_samples.csv", index=False)
        pd.DataFrame(summary).to_csv(args.out / "overhead_summary.csv", index=False)
    run_dirs = []
    if "runs" in args.sections:
        run_dirs = profile_runs(args)
    else:
        run_dirs = sorted(p.parent for p in (args.out / "runs").glob("*/metrics.json"))
    results = {"overhead": summary}
    if "gemm" in args.sections:
        run_dirs.append(gemm_run(args))
    if "accuracy" in args.sections or "gemm" in args.sections:
        results["accuracy"] = [stage_accuracy(d) for d in run_dirs]
    if "energy" in args.sections:
        results["energy"] = [energy_check(d) for d in run_dirs]
    for section in ("accuracy", "energy"):
        for line in results.get(section, []):
            print(section, json.dumps(line))
    (args.out / "gpu_truth.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    return 0


def _run(args, name: str, overrides: list[str]) -> Path:
    from llm_perf_opt.config import validate
    from llm_perf_opt.runners.profile import run_profile

    common = [f"device={args.device}", "profiling.progress=false", "profiling.operators.inputs=1",
              f"tracking.uri=sqlite:///{(args.out / 'mlflow.db').resolve()}", f"tracking.experiment={args.experiment}",
              f"hardware.calibrate={'true' if args.device.startswith('cuda') else 'false'}"]
    cfg = compose("config", common + overrides)
    validate(cfg)
    outcome = run_profile(cfg, args.out / "runs" / name)
    print(f"run {name}: {outcome.status} {outcome.run_dir} mlflow {outcome.mlflow_run_id} {outcome.error or ''}")
    return outcome.run_dir


def gemm_run(args) -> Path:
    """The GEMM workload: prefill is one 8192^3 matmul that keeps the device busy."""
    size = args.gemm_size if args.device.startswith("cuda") else 256
    return _run(args, f"gemm{args.label}", ["model=gemm", f"model.factory.m={size}", f"model.factory.n={size}",
                                            f"model.factory.k={size}", "profiling.repeats=10", "profiling.new_tokens=2",
                                            "profiling.operators.decode_steps=1"])


def profile_runs(args) -> list[Path]:
    """Whole profiler runs, one per image mode, on the same pages, into args.out/runs."""
    run_dirs = []
    for mode in args.image_modes:
        overrides = [
            f"model.preset={args.preset}", f"model.image_mode={mode}", f"model.dtype={args.dtype}",
            f"profiling.repeats={args.repeats}", f"profiling.new_tokens={max(args.new_tokens)}",
            "profiling.operators.decode_steps=8",
        ]
        if (args.pages_root / "OmniDocBench.json").is_file():
            overrides += ["dataset=omnidocbench", f"dataset.root={args.pages_root.resolve()}",
                          f"dataset.limit={args.pages}"]
        else:
            overrides += [f"dataset.num_pages={args.pages}"]
        if args.experts_implementation:
            overrides.append(f"model.experts_implementation={args.experts_implementation}")
        run_dirs.append(_run(args, f"{args.preset}_{mode}{args.label}", overrides + list(args.run_overrides)))
    return run_dirs


def stage_accuracy(run_dir: Path) -> dict:
    """Timed CUDA-event stage time vs kernel time in the profiled pass's stage range (same input)."""
    record = run_record.load(run_dir)
    samples = pd.read_csv(run_dir / "samples.csv")
    first = samples[samples["input_index"] == 0]
    line = {"run": run_dir.name, "input_id": first["input_id"].iloc[0] if len(first) else None}
    line["timed_repeats"] = int(len(first))
    measured = [PREFILL] + [s.key for s in record.tree().sub_stages()]  # stages with a range of their own
    for stage in measured:
        stage_record = record.stage(stage)
        profiled = stage_record.profiled if stage_record is not None else None
        timed_column = column(stage, "ms")
        if profiled is None or timed_column not in first or not profiled.device_busy_ms:
            continue
        timed = float(first[timed_column].median())
        line[f"{stage}_timed_ms"] = timed
        line[f"{stage}_kernel_ms"] = profiled.device_busy_ms
        line[f"{stage}_timed_over_kernel"] = timed / profiled.device_busy_ms
        line[f"{stage}_busy_share"] = profiled.busy_share
    decode = record.stage(DECODE)
    if decode is not None and decode.profiled is not None:
        steps = max(decode.profiled.ranges, 1)
        line["decode_busy_share"] = decode.profiled.busy_share
        line["decode_kernel_ms_per_step"] = (decode.profiled.device_busy_ms or float("nan")) / steps
        line["decode_span_ms_per_step"] = (decode.profiled.device_span_ms or float("nan")) / steps
    tpot = column(DECODE, "tpot_ms")
    line["timed_tpot_ms_p50"] = float(first[tpot].median()) if len(first) and tpot in first else None
    return line


def energy_check(run_dir: Path) -> dict:
    """J/token (metric) vs mean sampled power x decode time / decode tokens, over the same windows."""
    line = {"run": run_dir.name}
    timeline_path = run_dir / "nvml_timeline.csv"
    record = run_record.load(run_dir)
    per_token = metric_key(DECODE, "energy_j_per_token")
    if not timeline_path.exists() or per_token not in record.metrics:
        line["note"] = "no NVML timeline or energy metric in this run"
        return line
    timeline = pd.read_csv(timeline_path)
    samples = pd.read_csv(run_dir / "samples.csv")
    decode_ms = column(DECODE, "ms")
    joules, tokens = 0.0, 0
    for sample in samples.to_dict(orient="records"):
        end = float(sample["wall_end_ns"])
        start = end - float(sample[decode_ms]) * 1e6
        power = timeline[(timeline["t_ns"] >= start) & (timeline["t_ns"] <= end)]["power_w"].dropna()
        if len(power):
            joules += float(power.mean()) * float(sample[decode_ms]) / 1e3
            tokens += int(sample["new_tokens"]) - 1
    line["j_per_token_metric"] = record.metrics[per_token]
    line["j_per_token_mean_power_x_time"] = joules / tokens if tokens else None
    if tokens:
        line["ratio"] = line["j_per_token_metric"] / line["j_per_token_mean_power_x_time"]
    line["methods"] = record.energy.methods if record.energy else None
    line["power_w_mean"] = record.metrics.get(metric_key("gpu", "power_w_mean"))
    return line


if __name__ == "__main__":
    sys.exit(main())
