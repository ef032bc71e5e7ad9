"""model.cache (dynamic | static) and model.compile (none | default | reduce-overhead): models/decoding.py.

Greedy tokens are compared with the model's own routers (`moe_routing=model`): uniform routing draws
its experts from a random stream, so two calls differ whatever the cache. The compile test compiles a
tiny DeepSeek-OCR-2's decode step on the CPU with inductor (`default`; about 15-40 s on 2 cores).
reduce-overhead (CUDA graphs) runs in tests/test_gpu.py.
"""

from __future__ import annotations

import json

import mlflow
import pytest
import torch

from conftest import FAST, compose_config, requires_transformers5
from llm_perf_opt import record
from llm_perf_opt.config import validate
from llm_perf_opt.data import load_pages
from llm_perf_opt.errors import InputError
from llm_perf_opt.models import build_workload
from llm_perf_opt.models.decoding import COMPILE_STEPS, compile_decode
from llm_perf_opt.models.generation import decode_n_tokens, prefill
from llm_perf_opt.runners.profile import run_profile

CPU = torch.device("cpu")
NEW_TOKENS = 8


def _workload(*overrides: str, batch_size: int = 1):
    cfg = compose_config(*FAST, "model.moe_routing=model", *overrides)
    validate(cfg)
    return build_workload(cfg.model, load_pages(cfg.dataset), CPU, 0, batch_size)


def _tokens(workload, prepared, new_tokens: int = NEW_TOKENS) -> torch.Tensor:
    """prefill + decode steps as the timed pass runs them (workload.prefill / decode_step)."""
    with torch.inference_mode():
        return workload.greedy_tokens(prepared, new_tokens)


def _eager_tokens(workload, prepared, new_tokens: int = NEW_TOKENS) -> torch.Tensor:
    """The plain loop over a dynamic cache (what every run did before model.cache existed)."""
    with torch.inference_mode():
        first, cache = prefill(workload.model, workload.convention, prepared.model_inputs)
        with workload.decode_phase():
            rest = decode_n_tokens(workload.model, workload.convention, first, cache, new_tokens - 1)
    return torch.cat([first, *rest], dim=1)


@requires_transformers5
@pytest.mark.parametrize("overrides", [("model.image_mode=global768",), ("model.image_mode=tiled",),
                                       ("model=hf_causal_lm", "model.prompt_tokens=24")],
                         ids=["ocr2-global768", "ocr2-tiled", "hf_causal_lm"])
def test_static_cache_generates_the_dynamic_cache_tokens(overrides):
    workload = _workload(*overrides, "model.cache=static")
    compile_decode(workload, NEW_TOKENS)
    prepared = workload.batches[0]
    assert workload.decoding.max_cache_len == prepared.prompt_tokens + NEW_TOKENS
    static = _tokens(workload, prepared)
    assert static.shape == (1, NEW_TOKENS)
    assert torch.equal(static, _eager_tokens(workload, prepared))
    # The cache is kept per batch size and reset in place: a second sample reuses the same tensors and
    # generates the same tokens.
    cache = workload.decoding._caches[1]
    keys = cache.layers[0].keys.data_ptr()
    assert torch.equal(_tokens(workload, prepared), static)
    assert workload.decoding._caches[1] is cache and cache.layers[0].keys.data_ptr() == keys


@requires_transformers5
def test_static_cache_with_batches_matches_each_page_alone():
    workload = _workload("model.image_mode=global768", "dataset.num_pages=2", "model.cache=static", batch_size=2)
    compile_decode(workload, NEW_TOKENS)
    batch = workload.batches[0]
    assert batch.batch_size == 2
    together = _tokens(workload, batch)
    assert together.shape == (2, NEW_TOKENS)
    for row, prepared in enumerate(workload.inputs):
        assert torch.equal(together[row:row + 1], _eager_tokens(workload, prepared))


@requires_transformers5
def test_compiled_decode_step_default_generates_the_eager_tokens():
    workload = _workload("model.image_mode=global768", "model.cache=static", "model.compile=default")
    seconds = compile_decode(workload, NEW_TOKENS)
    assert seconds is not None and seconds > 0 and workload.decoding.compile_s == seconds
    prepared = workload.batches[0]
    compiled = _tokens(workload, prepared)
    assert torch.equal(compiled, _eager_tokens(workload, prepared))
    assert workload.decoding.describe() == {"cache": "static", "compile": "default",
                                            "max_cache_len": prepared.prompt_tokens + NEW_TOKENS,
                                            "compile_s": seconds}
    assert COMPILE_STEPS == 3


@pytest.mark.parametrize(("overrides", "message"), [
    (("model.compile=default",), "model.compile=default needs a static KV cache"),
    (("model.compile=reduce-overhead",), "add model.cache=static"),
    (("model.cache=paged",), "model.cache=paged is unknown: choose model.cache=dynamic or static"),
    (("model.cache=static", "model.compile=max-autotune"),
     "model.compile=max-autotune is unknown: choose model.compile=none | default | reduce-overhead"),
])
def test_bad_decoding_settings_fail_in_one_line(overrides, message):
    cfg = compose_config(*FAST, *overrides)
    with pytest.raises(InputError) as failure:
        validate(cfg)
    assert message in str(failure.value) and "\n" not in str(failure.value)


@requires_transformers5
def test_reduce_overhead_on_a_cpu_is_refused_before_any_run(tmp_path):
    cfg = compose_config(*FAST, "model.cache=static", "model.compile=reduce-overhead",
                         f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(InputError, match="reduce-overhead needs a CUDA device .* use model.compile=default"):
        run_profile(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@requires_transformers5
def test_a_graph_break_fails_with_one_line_not_an_eager_fallback(tmp_path):
    workload = _workload("model=hf_causal_lm", "model.cache=static", "model.compile=default")
    layer = workload.model.model.layers[0]
    # A hook dynamo cannot trace into one graph: fullgraph=True must refuse it, not run it eagerly.
    layer.register_forward_hook(lambda module, args, output: torch._dynamo.graph_break())
    with pytest.raises(InputError) as failure:
        compile_decode(workload, NEW_TOKENS)
    text = str(failure.value)
    assert text.startswith("model.compile=default cannot compile the decode step of hf_causal_lm (tiny) as one graph")
    assert "run with model.compile=none" in text and "\n" not in text


@requires_transformers5
def test_static_cache_run_records_its_settings(tmp_path):
    """A whole run over a static cache: settings in workload.json, params and the record; FLOPs as eager."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = [*FAST, "model.image_mode=global768", "model.moe_routing=model", f"tracking.uri={uri}",
            "hardware.peak_tflops=0.5", "hardware.peak_bandwidth_gbps=20"]
    static = run_profile(compose_config(*base, "model.cache=static"), tmp_path / "static")
    assert static.status == "FINISHED", static.error
    run = record.load(static.run_dir)
    prompt = run.workload.inputs[0].prompt_tokens
    # The profiled pass runs operators.decode_steps (4) steps after prefill, the timed pass new_tokens - 1 (3):
    # the cache holds the prompt and the longer of the two.
    assert (run.workload.cache, run.workload.compile, run.workload.max_cache_len) == ("static", "none", prompt + 5)
    assert run.workload.compile_s is None and "run/compile_s" not in run.metrics
    assert json.loads((static.run_dir / "workload.json").read_text())["cache"] == "static"
    params = mlflow.MlflowClient(uri).get_run(static.mlflow_run_id).data.params
    assert (params["model.cache"], params["model.compile"], params["workload.cache"]) == ("static", "none", "static")
    assert "workload.compile_s" not in params
    # FLOPs count the model's work at the real context length, whatever the cache: the counted pass runs eager.
    dynamic = run_profile(compose_config(*base), tmp_path / "dynamic")
    eager = record.load(dynamic.run_dir)
    for key in ("prefill", "decode", "vision_sam"):
        assert run.stage(key).flops == eager.stage(key).flops
        assert run.stage(key).flops_measured_over_analytic == pytest.approx(1.0, abs=0.01)
    assert eager.workload.cache == "dynamic" and eager.workload.max_cache_len is None
