"""Decode modes side by side in one process (GPU host): the tool's loop vs `generate()` with a static cache.

For one page of the `full` DeepSeek-OCR-2 preset (bf16, random weights, uniform routing) and N new
tokens, each mode runs prefill + N-1 decode steps, interleaved per repeat so drifts hit every mode:

- tool eager:          the timed loop over a dynamic cache (model.cache=dynamic, model.compile=none)
- tool static:         the timed loop over a static cache (model.cache=static)
- tool static+RO:      static cache + torch.compile(mode="reduce-overhead") decode step (CUDA graphs)
- generate static:     `model.generate(..., cache_implementation="static")` as users call it
                       (transformers compiles its decode forward itself)

TPOT is measured the same way for every mode: host wall time of a synchronised call with N new tokens
minus the same call with 1 new token (prefill only), over N - 1. The tool's loop also reports its own
CUDA-event TPOT (what a profile run logs). Compile and CUDA-graph capture happen before timing (each
mode runs twice per input first). Prints a table and the ratios tool static+RO / generate static and
eager / static+RO, and the weight-bandwidth bound (bytes one decode step must read / peak bandwidth).

    python3 benchmarks/decode_modes.py --image-mode global1024 --new-tokens 256 --repeats 5 --out /tmp/modes
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from llm_perf_opt.config import compose  # noqa: E402
from llm_perf_opt.data.synthetic import generate_pages  # noqa: E402
from llm_perf_opt.models import build_workload  # noqa: E402
from llm_perf_opt.models.decoding import Decoding, compile_decode  # noqa: E402
from llm_perf_opt.passes.analytic import analytic_costs_for_workload  # noqa: E402
from llm_perf_opt.passes.clock import StageClock  # noqa: E402
from llm_perf_opt.passes.timed import SubStageRecorder, time_one_sample  # noqa: E402

H200_BANDWIDTH_GBPS = 4800.0  # HBM3e, the peak table's value for an H200


def tool_ms(workload, prepared, new_tokens: int) -> float:
    """Host wall ms of prefill + new_tokens - 1 decode steps of the configured decoding."""
    sync = StageClock(workload.device).synchronize
    sync()
    start = time.perf_counter()
    workload.greedy_tokens(prepared, new_tokens)
    sync()
    return (time.perf_counter() - start) * 1e3


def generate_ms(workload, prepared, new_tokens: int) -> float:
    sync = StageClock(workload.device).synchronize
    sync()
    start = time.perf_counter()
    workload.model.generate(**prepared.model_inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            do_sample=False, cache_implementation="static")
    sync()
    return (time.perf_counter() - start) * 1e3


def event_tpot_ms(workload, prepared, new_tokens: int) -> float:
    clock = StageClock(workload.device)
    recorder = SubStageRecorder(clock, {})
    try:
        return time_one_sample(workload, prepared, new_tokens, clock, recorder).row["decode_tpot_ms"]
    finally:
        recorder.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-mode", default="global1024")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--preset", default="full")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device("cuda")
    cfg = compose("config", [f"model.preset={args.preset}", f"model.image_mode={args.image_mode}", "device=cuda",
                             "model.cache=static"])
    pages = generate_pages(1, [[1240, 1754]], seed=0)
    workload = build_workload(cfg.model, pages, device, 0)
    prepared = workload.inputs[0]
    n = args.new_tokens
    eager = Decoding(workload.model, workload.convention, device)
    static = workload.decoding  # model.cache=static from the config
    graphs = Decoding(workload.model, workload.convention, device, "static", "reduce-overhead")
    modes = {"tool eager": eager, "tool static": static, "tool static+RO": graphs}
    compile_s = {}
    with torch.inference_mode():
        for name, decoding in modes.items():
            workload.decoding = decoding
            compile_s[name] = compile_decode(workload, n)
    times: dict[str, dict[str, list[float]]] = {name: {"n": [], "1": [], "event_tpot": []} for name in
                                                [*modes, "generate static"]}
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(2):  # warm every mode at both lengths (generate compiles its forward here)
            for decoding in modes.values():
                workload.decoding = decoding
                tool_ms(workload, prepared, n)
                tool_ms(workload, prepared, 1)
            generate_ms(workload, prepared, n)
            generate_ms(workload, prepared, 1)
        warm_s = time.perf_counter() - start
        for _ in range(args.repeats):
            for name, decoding in modes.items():
                workload.decoding = decoding
                times[name]["n"].append(tool_ms(workload, prepared, n))
                times[name]["1"].append(tool_ms(workload, prepared, 1))
                times[name]["event_tpot"].append(event_tpot_ms(workload, prepared, n))
            times["generate static"]["n"].append(generate_ms(workload, prepared, n))
            times["generate static"]["1"].append(generate_ms(workload, prepared, 1))
    costs = analytic_costs_for_workload(workload, new_tokens=n)
    decode_bytes = costs["decode_step_mean"].bytes if "decode_step_mean" in costs else None
    bound_ms = decode_bytes / (H200_BANDWIDTH_GBPS * 1e9) * 1e3 if decode_bytes else None
    rows = {}
    for name, t in times.items():
        tpot = (statistics.median(t["n"]) - statistics.median(t["1"])) / (n - 1)
        rows[name] = {"tpot_ms": tpot, "e2e_ms": statistics.median(t["n"]), "prefill_ms": statistics.median(t["1"]),
                      "event_tpot_ms": statistics.median(t["event_tpot"]) if t["event_tpot"] else None,
                      "compile_s": compile_s.get(name)}
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, preset {args.preset}, {args.image_mode}, "
          f"prompt {prepared.prompt_tokens} tokens, {n} new tokens, {args.repeats} repeats, warm-up {warm_s:.1f} s")
    print(f"{'mode':<18}{'TPOT ms':>10}{'event TPOT':>12}{'prefill ms':>12}{'e2e ms':>10}{'compile s':>11}")
    for name, row in rows.items():
        event = f"{row['event_tpot_ms']:.3f}" if row["event_tpot_ms"] is not None else "-"
        comp = f"{row['compile_s']:.1f}" if row["compile_s"] is not None else "-"
        print(f"{name:<18}{row['tpot_ms']:>10.3f}{event:>12}{row['prefill_ms']:>12.1f}{row['e2e_ms']:>10.1f}{comp:>11}")
    ratio = rows["tool static+RO"]["tpot_ms"] / rows["generate static"]["tpot_ms"]
    speedup = rows["tool eager"]["tpot_ms"] / rows["tool static+RO"]["tpot_ms"]
    print(f"TPOT tool static+RO / generate static = {ratio:.3f} (goal <= 1.00); eager / static+RO = {speedup:.2f}x")
    if bound_ms:
        print(f"weight-bandwidth bound: {decode_bytes / 1e9:.3f} GB per step / {H200_BANDWIDTH_GBPS:.0f} GB/s = "
              f"{bound_ms:.3f} ms; static+RO TPOT is {rows['tool static+RO']['tpot_ms'] / bound_ms:.1f}x the bound")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "decode_modes.json").write_text(json.dumps(
            {"rows": rows, "times": times, "ratio_ro_over_generate_static": ratio, "bound_ms": bound_ms,
             "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
