"""model=deepseek_ocr: DeepSeek-OCR v1 through its published remote code (../shared/deepseek-ocr-v1, no weights).

The remote code runs only in the v1 environment (transformers 4.46.3, docs/models.md); those tests skip
elsewhere with the reason. The refusal without trust_remote_code and each family's one-line version
requirement are checked in whichever environment runs the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import mlflow
import pytest
import torch

from conftest import FAST, NATIVE_OCR2, V1_DIR, V1_ENVIRONMENT, V1_EXTRAS, compose_config, requires_v1
from llm_perf_opt import record
from llm_perf_opt.config import validate
from llm_perf_opt.data import load_pages
from llm_perf_opt.errors import InputError
from llm_perf_opt.models import build_workload
from llm_perf_opt.models import deepseek_ocr as v1
from llm_perf_opt.models.workload import count_parameters
from llm_perf_opt.passes.analytic import (
    RELEASED_V1_VISION,
    analytic_costs_for_workload,
    deepseek_ocr_parameters,
    v1_vision,
)
from llm_perf_opt.passes.counted import count_stage_flops
from llm_perf_opt.runners.profile import run_profile

CPU = torch.device("cpu")
V1 = ["model=deepseek_ocr", f"model.path={V1_DIR}", "model.trust_remote_code=true"]
SUBSTAGES = {"vision_sam", "vision_clip", "vision_projector"}


def _workload(*overrides: str):
    cfg = compose_config(*FAST, *V1, *overrides)
    validate(cfg)
    return build_workload(cfg.model, load_pages(cfg.dataset), CPU, 0)


# --- in every environment --------------------------------------------------------------------------


def test_refuses_without_trust_remote_code_in_one_line():
    cfg = compose_config(*FAST, "model=deepseek_ocr", f"model.path={V1_DIR}")
    assert cfg.model.trust_remote_code is False  # the default: never run shipped code unasked
    with pytest.raises(InputError) as refused:
        validate(cfg)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("model.trust_remote_code=false refuses to run the Python files in")
    assert message.endswith("add model.trust_remote_code=true")
    # The builder refuses too (called without validate, as an API user might).
    with pytest.raises(InputError, match="model.trust_remote_code=false"):
        build_workload(cfg.model, [], CPU, 0)
    with pytest.raises(InputError, match="model.path=null is not set"):
        validate(compose_config(*FAST, "model=deepseek_ocr", "model.trust_remote_code=true"))


def test_command_line_refusal_exits_2_before_any_run(tmp_path):
    env = dict(os.environ, LLM_PERF_OPT_RUNS_DIR=str(tmp_path / "runs"),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):  # in-process runs of other tests set these
        env.pop(leaked, None)
    result = subprocess.run([sys.executable, "-m", "llm_perf_opt", "profile", "model=deepseek_ocr",
                             f"model.path={V1_DIR}", "model.preset=tiny"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.trust_remote_code=false refuses"), result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # no run, not even a store
    assert not any((tmp_path / "runs").glob("*/metrics.json"))


@pytest.mark.skipif(V1_ENVIRONMENT, reason="checks the refusal on transformers 5.x (this is the v1 environment)")
def test_v1_family_names_its_environment_on_transformers_5():
    cfg = compose_config(*FAST, *V1)
    with pytest.raises(InputError, match=r"written for transformers 4\.46\.3 .*docs/models\.md"):
        build_workload(cfg.model, load_pages(cfg.dataset), CPU, 0)


@pytest.mark.skipif(NATIVE_OCR2, reason="checks the message on transformers < 5.17 (this environment has 5.x)")
def test_ocr2_family_says_it_needs_transformers_5_17():
    cfg = compose_config(*FAST)
    with pytest.raises(InputError, match=r"model=deepseek_ocr2 needs transformers >= 5\.17") as refused:
        build_workload(cfg.model, load_pages(cfg.dataset), CPU, 0)
    assert "\n" not in str(refused.value)


def test_image_token_counts_follow_infer():
    # infer(): ([id] * q + [id]) * q + [id] for the global view (q = ceil(side / 16 / 4)), then
    # ([id] * (q_t * w) + [id]) * (q_t * h) for w x h tiles of 640 px (q_t = 10).
    assert v1.view_queries(1024) == 16 and v1.view_queries(640) == 10 and v1.view_queries(512) == 8
    crop = v1.IMAGE_MODES["crop"]
    assert v1.image_token_count(crop, (1, 1)) == 17 * 16 + 1
    assert v1.image_token_count(crop, (2, 3)) == 17 * 16 + 1 + (10 * 2 + 1) * (10 * 3)
    assert v1.image_token_count(v1.IMAGE_MODES["global512"], (1, 1)) == 9 * 8 + 1
    assert v1.image_token_count(v1.IMAGE_MODES["global1280"], (1, 1)) == 21 * 20 + 1


# --- in the v1 environment -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_global512():
    return _workload("model.image_mode=global512")


@requires_v1
def test_full_size_on_meta_has_the_released_parameters_and_names():
    index_path = V1_EXTRAS / "model.safetensors.index.json"
    if not index_path.is_file():
        pytest.skip(f"the released weight index is not at {index_path}")
    index = json.loads(index_path.read_text())
    config = v1.load_config(V1_DIR, "full")
    with torch.device("meta"):
        model = v1.remote_class(V1_DIR)._from_config(config, torch_dtype=torch.bfloat16)
    names = {name for name, _ in model.named_parameters()}
    assert count_parameters(model) == index["metadata"]["total_size"] // 2 == 3_336_106_240  # bf16: 2 bytes each
    assert names == set(index["weight_map"]) and len(names) == 2710
    assert set(model.state_dict()) - names == {"model.vision_model.embeddings.position_ids"}
    # The analytic model's weight sizes, and its released vision constants, are the built model's.
    assert deepseek_ocr_parameters(config, model) == count_parameters(model)
    assert deepseek_ocr_parameters(config) == count_parameters(model)
    assert v1_vision(model) == RELEASED_V1_VISION
    assert v1.RELEASED_IMAGE_TOKEN_ID == v1.released_image_token_id(V1_DIR)


@requires_v1
def test_tiny_preset_and_inputs_as_infer_builds_them(tiny_global512):
    workload = tiny_global512
    model, prepared = workload.model, workload.inputs[0]
    assert workload.info["preset"] == "tiny" and workload.info["weights"] == "random"
    assert (model.config.num_hidden_layers, model.config.n_routed_experts) == (2, 8)
    assert count_parameters(model) == deepseek_ocr_parameters(model.config, model) == workload.info["parameters"]
    inputs = prepared.model_inputs
    (tiles, global_view), = inputs["images"]
    assert tuple(global_view.shape) == (1, 3, 512, 512) and not tiles.any()  # single view: zero tiles tensor
    assert inputs["images_spatial_crop"] == [[1, 1]]
    assert -1.0 <= float(global_view.min()) and float(global_view.max()) <= 1.0  # (x / 255 - 0.5) / 0.5
    image_tokens = v1.image_token_count(v1.IMAGE_MODES["global512"], (1, 1))
    mask = inputs["images_seq_mask"]
    assert isinstance(mask, v1.DeviceMask) and mask.dtype == torch.bool
    assert int(mask.sum()) == prepared.image_tokens == image_tokens
    ids = inputs["input_ids"][0].tolist()
    assert ids[0] == model.config.bos_token_id and len(ids) == prepared.prompt_tokens == 1 + image_tokens + 12
    assert set(ids[1:1 + image_tokens]) == {workload.info["image_token_id"]}
    # `.cuda()` inside the remote forward keeps the mask on the CPU, as a plain tensor.
    moved = mask[0].unsqueeze(-1).cuda()
    assert type(moved) is torch.Tensor and moved.device == CPU
    inner = model.model
    assert workload.stage_modules == {"vision_sam": inner.sam_model, "vision_clip": inner.vision_model,
                                      "vision_projector": inner.projector}


@requires_v1
def test_weights_in_the_directory_are_loaded_and_routed_by_the_model(tiny_global512, tmp_path):
    # A checkpoint directory: the released code (copied into tmp_path, never into the repo), the tiny model's
    # config and weights (bf16), and a tokenizer_config.json whose <image> fits the tiny vocabulary.
    for path in V1_DIR.glob("*.py"):
        shutil.copy(path, tmp_path / path.name)
    tiny = tiny_global512.model
    tiny.save_pretrained(tmp_path, state_dict={k: v.to(torch.bfloat16) for k, v in tiny.state_dict().items()})
    image_id = tiny_global512.info["image_token_id"] - 7
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"added_tokens_decoder": {str(image_id): {"content": "<image>", "special": True}}}))
    assert v1.has_weights(tmp_path)
    workload = _workload(f"model.path={tmp_path}", "model.image_mode=global512")
    assert workload.info["weights"] == "checkpoint" and workload.info["preset"] == "checkpoint"
    assert workload.info["moe_routing"] == "model" and workload.info["moe_routers_switched"] == 0
    assert workload.info["image_token_id"] == image_id
    prepared = workload.inputs[0]
    assert set(prepared.model_inputs["input_ids"][0, 1:1 + prepared.image_tokens].tolist()) == {image_id}
    loaded = dict(workload.model.named_parameters())
    assert set(loaded) == {name for name, _ in tiny.named_parameters()}
    for name in ("lm_head.weight", "model.sam_model.blocks.0.attn.qkv.weight", "model.layers.1.mlp.gate.weight"):
        assert torch.equal(loaded[name], tiny.get_parameter(name).to(torch.bfloat16).float()), name


@requires_v1
def test_crop_mode_tiles_a_page_as_dynamic_preprocess_does(tiny_global512):
    code = v1.remote_module(tiny_global512.model)
    page = load_pages(compose_config(*FAST).dataset)[0]  # A4 at 150 dpi, 1240 x 1754
    crops, global_view, crop = v1.page_views(page, v1.IMAGE_MODES["crop"], code)
    _, expected = code.dynamic_preprocess(page.image)  # the remote code's own choice of tile grid
    assert crop == tuple(expected) and crops.shape[0] == expected[0] * expected[1] > 1
    assert tuple(crops.shape[1:]) == (3, 640, 640) and tuple(global_view.shape) == (1, 3, 1024, 1024)
    # The global view is padded with infer()'s grey (127), normalised: a portrait page leaves both sides padded.
    assert float(global_view[0, 0, 512, 0]) == pytest.approx((127 / 255 - 0.5) / 0.5)


@requires_v1
def test_uniform_routing_replaces_the_remote_moe_gate(tiny_global512):
    model = tiny_global512.model
    gates = [m for m in model.modules() if type(m).__name__ == "MoEGate"]
    sparse_layers = model.config.num_hidden_layers - model.config.first_k_dense_replace
    assert len(gates) == sparse_layers == tiny_global512.info["moe_routers_switched"]
    assert tiny_global512.info["moe_routing"] == "uniform"
    gate = gates[0]
    hidden = torch.randn(1, 64, model.config.hidden_size)
    indices, weights, aux = gate(hidden)
    assert aux is None and tuple(indices.shape) == (64, gate.top_k)
    assert all(len(set(row)) == gate.top_k for row in indices.tolist())  # k distinct experts per token
    assert torch.equal(weights, torch.full((64, gate.top_k), 1.0 / gate.top_k))


@requires_v1
def test_counted_flops_equal_the_analytic_model_single_view(tiny_global512):
    counted = count_stage_flops(tiny_global512, decode_steps=2)
    analytic = analytic_costs_for_workload(tiny_global512, new_tokens=3)
    assert counted.stage_calls == {stage: 1 for stage in SUBSTAGES}
    assert counted.prefill_flops == pytest.approx(analytic["prefill"].flops, rel=1e-12)
    for stage in SUBSTAGES:
        assert counted.stage_flops[stage] == pytest.approx(analytic[stage].flops, rel=1e-12), stage
    for step, flops in enumerate(counted.decode_step_flops, 1):
        assert flops == pytest.approx(analytic[f"decode_step_{step}"].flops, rel=1e-12)
    # The lm_head runs over every prompt position (no logits_to_keep in the remote forward).
    config = tiny_global512.model.config
    head = 2 * tiny_global512.inputs[0].prompt_tokens * config.hidden_size * config.vocab_size
    assert counted.operator_flops["prefill"]["aten::mm"] >= head


@requires_v1
def test_a_batch_of_pages_is_counted_as_the_analytic_model_says(tiny_global512):
    # profiling.batch_size=2: the remote forward loops over the batch's pages, one SAM/CLIP/projector call each.
    cfg = compose_config(*FAST, *V1, "model.image_mode=global512", "dataset.num_pages=2")
    workload = build_workload(cfg.model, load_pages(cfg.dataset), CPU, 0, batch_size=2)
    batch = workload.batches[0]
    assert batch.batch_size == 2 and tuple(batch.model_inputs["input_ids"].shape) == (2, batch.prompt_tokens)
    counted = count_stage_flops(workload, decode_steps=1)
    analytic = analytic_costs_for_workload(workload, new_tokens=2)
    assert counted.stage_calls == {stage: 2 for stage in SUBSTAGES}
    assert counted.prefill_flops == pytest.approx(analytic["prefill"].flops, rel=1e-12)
    assert counted.decode_step_flops[0] == pytest.approx(analytic["decode_step_1"].flops, rel=1e-12)
    single = count_stage_flops(tiny_global512, decode_steps=0)  # the same page size, one page per forward
    for stage in SUBSTAGES:
        assert counted.stage_flops[stage] == 2 * single.stage_flops[stage] == pytest.approx(analytic[stage].flops)


@requires_v1
def test_counted_flops_equal_the_analytic_model_in_crop_mode():
    # A 2:1 page: two 640 px tiles (one SAM/CLIP/projector call) and the 1024 px global view (another).
    workload = _workload("model.image_mode=crop", "dataset.sizes=[[1280,640]]")
    assert workload.inputs[0].model_inputs["images_spatial_crop"] == [[2, 1]]
    counted = count_stage_flops(workload, decode_steps=1)
    analytic = analytic_costs_for_workload(workload, new_tokens=2)
    assert counted.stage_calls == {stage: 2 for stage in SUBSTAGES}
    for stage in ("prefill", *SUBSTAGES):
        measured = counted.prefill_flops if stage == "prefill" else counted.stage_flops[stage]
        assert measured == pytest.approx(analytic[stage].flops, rel=1e-12), stage
    assert counted.decode_step_flops[0] == pytest.approx(analytic["decode_step_1"].flops, rel=1e-12)


@requires_v1
def test_profile_run_records_every_stage_in_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config(*FAST, *V1, "model.image_mode=global512", f"tracking.uri={uri}", "profiling.warmup=0")
    outcome = run_profile(cfg, tmp_path / "run")
    assert outcome.status == "FINISHED" and outcome.error is None
    run = record.load(outcome.run_dir)
    for stage in ("prefill", "decode", "vision", *SUBSTAGES):
        assert run.stage(stage).stats, stage
    for stage in ("prefill", *SUBSTAGES, "decode"):
        assert run.stage(stage).flops_measured_over_analytic == pytest.approx(1.0, rel=1e-9), stage
    names = {p.name for p in outcome.run_dir.iterdir()}
    assert {"operators.csv", "trace.json.gz", "report.md", "stakeholder_summary.md"} <= names
    mlflow_run = mlflow.MlflowClient(uri).get_run(outcome.mlflow_run_id)
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.params["model.family"] == "deepseek_ocr"
    for stage in ("prefill", *SUBSTAGES):
        assert mlflow_run.data.metrics[f"{stage}/ms_p50"] > 0
    assert mlflow_run.data.metrics["decode/tpot_ms_p50"] > 0
