"""How the passes run prefill and decode: the KV cache (`model.cache`) and a compiled decode step (`model.compile`).

- `cache=dynamic` (default): transformers' DynamicCache, grown by concatenation every step.
- `cache=static`: one `StaticCache` per batch size, preallocated to `max_cache_len` = the longest prompt
  of the run + `new_tokens` and reset (zeroed in place) before every sample, so its tensors keep their
  addresses across samples (CUDA graphs replay against fixed addresses). Attention then runs over the
  whole preallocated length with the unused positions masked: extra, masked work that the FLOP counts
  (counted pass, analytic model: the real context length) do not count, so MFU stays the model's useful
  work over time.
- `compile=default | reduce-overhead`: `torch.compile(fullgraph=True, dynamic=False)` of one decode step
  (the forward of one token per sequence, over the static cache, and the greedy argmax), as gpt-fast
  does; `reduce-overhead` adds CUDA graphs (CUDA devices only). Prefill stays eager, so the vision
  sub-stage hooks and every clock mark work as in eager runs; the compiled region is exactly one decode
  step and hides no stage boundary (each step's end is still a CUDA event between graph replays).

Compilation and CUDA-graph capture happen in `compile_decode`, before any run is recorded (the runner
calls it right after building the workload): for every batch size of the run, one prefill and
`COMPILE_STEPS` decode steps (the first compiles, the second records the CUDA graph, the third replays
it). Its seconds are reported (`compile_s`), never inside a timed sample. `fullgraph=True` means a graph
break fails there with one line (what, the first line of torch's reason, how to fix), never a silent
fallback to eager. The counted pass (FlopCounterMode) always runs eager with a dynamic cache; the timed
and profiled passes run what was configured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from llm_perf_opt.errors import InputError
from llm_perf_opt.models.generation import CallConvention, decode_one_token, greedy, prefill

log = logging.getLogger(__name__)

COMPILE_STEPS = 3  # compile, record the CUDA graph, replay it
Step = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]


class Decoding:
    """Prefill and decode steps as configured: `prefill(prepared)` -> (token, cache), `step(token, cache)`."""

    def __init__(self, model: nn.Module, convention: CallConvention, device: torch.device,
                 cache: str = "dynamic", compile: str = "none", what: str = "the model"):
        self.model, self.convention, self.device = model, convention, device
        self.cache, self.mode = str(cache), str(compile)
        self.max_cache_len: int | None = None
        self.compile_s: float | None = None
        self._caches: dict[int, Any] = {}
        self._compiled: Callable[[torch.Tensor, Any], torch.Tensor] | None = None
        if self.cache == "static" and convention.cache_kwarg is None:
            raise InputError(f"model.cache=static but {what}'s forward takes no KV cache (no `cache` or "
                             "`past_key_values` argument): set model.cache=dynamic")
        if self.mode == "reduce-overhead" and device.type != "cuda":
            raise InputError(f"model.compile=reduce-overhead needs a CUDA device (it captures CUDA graphs) and the "
                             f"run is on {device}: use model.compile=default on a CPU, or run on a GPU")
        if self.mode != "none":
            self._compiled = torch.compile(self._step_tokens, mode=self.mode, fullgraph=True, dynamic=False)

    @property
    def eager(self) -> bool:
        return self.cache == "dynamic" and self.mode == "none"

    def describe(self) -> dict[str, Any]:
        """What ran, for workload.json / the record (`compile_s` once `compile_decode` ran)."""
        info: dict[str, Any] = {"cache": self.cache, "compile": self.mode}
        if self.max_cache_len is not None:
            info["max_cache_len"] = self.max_cache_len
        if self.compile_s is not None:
            info["compile_s"] = self.compile_s
        return info

    def _new_cache(self, batch_size: int) -> Any:
        if self.cache != "static":
            return None
        if self.max_cache_len is None:
            raise RuntimeError("the static KV cache's length is set by compile_decode(workload, new_tokens) first")
        cache = self._caches.get(batch_size)
        if cache is None:
            from transformers import StaticCache

            cache = self._caches[batch_size] = StaticCache(config=self.model.config, max_cache_len=self.max_cache_len)
        else:
            cache.reset()  # in place: the tensors keep their addresses
        return cache

    def prefill(self, model_inputs: dict[str, Any], batch_size: int) -> tuple[torch.Tensor, Any]:
        """The first forward pass (always eager), into a fresh (or reset) cache of the configured kind."""
        cache = self._new_cache(batch_size)
        if cache is not None:
            model_inputs = {**model_inputs, self.convention.cache_kwarg: cache}
        return prefill(self.model, self.convention, model_inputs)

    def _step_tokens(self, token: torch.Tensor, cache: Any) -> torch.Tensor:
        output = self.model(input_ids=token, use_cache=True, **{self.convention.cache_kwarg: cache})
        return greedy(output.logits if hasattr(output, "logits") else output)

    def step(self, token: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """One decode step: eager, or the compiled step over the static cache (updated in place)."""
        if self._compiled is None:
            return decode_one_token(self.model, self.convention, token, cache)
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
            # The graph's output lives in its static memory, overwritten by the next replay: keep a copy.
            return self._compiled(token, cache).clone(), cache
        return self._compiled(token, cache), cache


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def compile_decode(workload: Any, new_tokens: int) -> float | None:
    """Size the static caches and compile (and capture) the decode step for every batch size of the run.

    Returns the seconds spent in the compiled steps (None when nothing is compiled). A step that cannot
    compile as one graph raises InputError (one line) before any run is recorded.
    """
    decoding: Decoding = workload.decoding
    if decoding.cache == "static":
        decoding.max_cache_len = max(batch.prompt_tokens for batch in workload.batches) + int(new_tokens)
    if decoding.mode == "none":
        return None
    firsts: dict[int, Any] = {}
    for batch in workload.batches:
        firsts.setdefault(batch.batch_size, batch)
    log.info("compiling the decode step (model.compile=%s, fullgraph) for batch size(s) %s",
             decoding.mode, ", ".join(map(str, firsts)))
    on_cuda = workload.device.type == "cuda"
    seconds = 0.0
    with torch.inference_mode():
        for batch_size, batch in firsts.items():
            token, cache = decoding.prefill(batch.model_inputs, batch_size)
            with workload.decode_phase():
                if on_cuda:
                    torch.cuda.synchronize(workload.device)
                start = time.perf_counter()
                try:
                    for _ in range(COMPILE_STEPS):
                        token, cache = decoding.step(token, cache)
                    if on_cuda:
                        torch.cuda.synchronize(workload.device)
                except Exception as exc:
                    if isinstance(exc, InputError):
                        raise
                    what = f"{workload.family} ({workload.info.get('preset')})"
                    raise InputError(
                        f"model.compile={decoding.mode} cannot compile the decode step of {what} as one graph: "
                        f"{_first_line(exc)}; run with model.compile=none (eager, static cache kept)") from exc
                seconds += time.perf_counter() - start
    decoding.compile_s = seconds
    log.info("decode step compiled in %.1f s", seconds)
    return seconds
