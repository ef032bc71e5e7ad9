"""Text-only decoder LMs (AutoModelForCausalLM): from a local directory or a config with random weights.

There are no vision stages. Each page of the dataset stands for one prompt of `prompt_tokens` token ids
(seeded, drawn from the vocabulary): page pixels are not used, only their count.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import torch
from omegaconf import OmegaConf

from llm_perf_opt.data.pages import Page
from llm_perf_opt.errors import InputError
from llm_perf_opt.models.generation import decode_experts_plan
from llm_perf_opt.models.moe_routing import apply_routing_choice
from llm_perf_opt.models.workload import (
    PreparedInput,
    Workload,
    checkpoint_dir,
    count_parameters,
    dtype_name,
    load_kwargs,
    resolve_dtype,
    resolve_stage_map,
)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(model_type="llama", vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                 bos_token_id=0, eos_token_id=1),
    # Qwen2-0.5B dimensions (GQA 14/2 heads, tied embeddings).
    "qwen2_0_5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                       num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1000000.0,
                       bos_token_id=151643, eos_token_id=151645),
    # Llama-3.2-1B dimensions.
    "llama3_1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                      num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                      max_position_embeddings=131072, tie_word_embeddings=True, rope_theta=500000.0,
                      bos_token_id=128000, eos_token_id=128001),
}


def build_config(preset: str, overrides: dict[str, Any] | None = None):
    from transformers import AutoConfig

    if preset not in PRESETS:
        raise InputError(f"model.preset={preset} is unknown for hf_causal_lm: choose one of {', '.join(PRESETS)}")
    spec = copy.deepcopy(PRESETS[preset])
    spec.update(overrides or {})
    return AutoConfig.for_model(spec.pop("model_type"), **spec)


def require_transformers5() -> None:
    """The loading arguments below (dtype=, experts_implementation=) are transformers 5's: one line on 4.x."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        raise InputError(f"model=hf_causal_lm needs transformers >= 5 (it loads models with 5.x's arguments); this "
                         f"environment has {transformers.__version__} (the DeepSeek-OCR v1 environment?): use the "
                         "main environment (README)")


def build_workload(cfg: Any, pages: list[Page], device: torch.device, seed: int = 0) -> Workload:
    require_transformers5()
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(cfg.dtype, device)
    common = load_kwargs(cfg, dtype)
    if cfg.path:
        path = checkpoint_dir(cfg.path, "transformers model")
        model = AutoModelForCausalLM.from_pretrained(str(path), **common).to(device)
        weights = "checkpoint"
    else:
        config = build_config(cfg.preset, OmegaConf.to_container(cfg.architecture_overrides, resolve=True) or {})
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, **common)
        weights = "random"
    model.eval()

    routing, routers = apply_routing_choice(model, cfg.moe_routing, weights, seed)

    vocab = model.config.vocab_size
    special = {model.config.bos_token_id, model.config.eos_token_id, getattr(model.config, "pad_token_id", None)}
    inputs = []
    for index, page in enumerate(pages):
        rng = random.Random(seed * 100_003 + index)
        ids = []
        while len(ids) < int(cfg.prompt_tokens):
            token = rng.randrange(vocab)
            if token not in special:
                ids.append(token)
        input_ids = torch.tensor([ids], device=device)
        inputs.append(PreparedInput(page.page_id, {"input_ids": input_ids}, len(ids), 0, {"source": page.source}))

    decode_experts = decode_experts_plan(model, cfg.get("decode_experts_implementation", "auto"), device)
    info = {
        "family": "hf_causal_lm",
        "preset": cfg.preset if weights == "random" else "checkpoint",
        "weights": weights,
        "model_type": model.config.model_type,
        "dtype": dtype_name(dtype),
        "attn_implementation": model.config._attn_implementation,
        "experts_implementation": (model.get_experts_implementation().get("")
                                   if hasattr(model, "get_experts_implementation") else None),
        "decode_experts_implementation": (decode_experts or {}).get("", "same"),
        "moe_routing": routing,
        "moe_routers_switched": routers,
        "prompt_source": "random_ids",
        "parameters": count_parameters(model),
    }
    eos = model.config.eos_token_id
    stages, stage_modules = resolve_stage_map(model, dict(cfg.stage_map or {}))
    return Workload(
        family="hf_causal_lm",
        model=model,
        inputs=inputs,
        stages=stages,
        stage_modules=stage_modules,
        device=device,
        dtype=dtype,
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
        info=info,
        decode_experts=decode_experts,
    )
