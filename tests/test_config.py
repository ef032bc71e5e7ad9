"""Typed config: structured schemas, allowed values at compose time, `validate`, the factory, packaging.

Fast and CPU-only: nothing here builds a model (the factory test instantiates a two-argument stub).
The wheel test (marked slow) builds and installs the package the way a user would.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

import llm_perf_opt
from conftest import REPO_ROOT, compose_config
from llm_perf_opt import config as config_module
from llm_perf_opt.config import (
    COMPARE_CONFIG,
    CONF_DIR,
    PROFILE_CONFIG,
    CompareConfig,
    CustomModelConfig,
    DeepseekOcr2Config,
    HfCausalLMConfig,
    OmniDocBenchDatasetConfig,
    ProfileConfig,
    SyntheticDatasetConfig,
    compose,
    compose_error_line,
    validate,
)
from llm_perf_opt.errors import InputError

MODELS = {"deepseek_ocr2": DeepseekOcr2Config, "hf_causal_lm": HfCausalLMConfig, "custom": CustomModelConfig,
          "gemm": CustomModelConfig, "copy": CustomModelConfig}


def build_two_args(device, dtype):
    """A user factory that takes only what the profiler adds: no leftover kwargs may reach it."""
    return torch.nn.Linear(4, 4, device=device, dtype=dtype)


# -- composition and types ---------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_every_model_option_composes_to_its_schema(model):
    cfg = compose(PROFILE_CONFIG, [f"model={model}"])
    assert OmegaConf.get_type(cfg) is ProfileConfig
    assert OmegaConf.get_type(cfg.model) is MODELS[model]
    assert OmegaConf.get_type(cfg.dataset) is SyntheticDatasetConfig
    validate(cfg)


def test_defaults_are_the_documented_ones():
    cfg = compose(PROFILE_CONFIG)
    assert (cfg.device, cfg.seed) == ("auto", 0)
    m = cfg.model
    assert (m.family, m.preset, m.path, m.dtype, m.attn_implementation, m.experts_implementation) == (
        "deepseek_ocr2", "tiny", None, "auto", "sdpa", None)
    assert (m.decode_experts_implementation, m.moe_routing, m.image_mode, m.prompt_text_tokens) == (
        "auto", "auto", "tiled", 12)
    assert m.stage_map.vision.sam == "model.vision_tower.sam_encoder"
    p = cfg.profiling
    assert (p.warmup, p.repeats, p.new_tokens, p.stop_at_eos, p.progress) == (1, 3, 8, False, "auto")
    assert (p.operators.inputs, p.operators.decode_steps, p.operators.top_n) == (1, 4, 10)
    assert (p.counting.decode_steps, p.energy.interval_ms) == (2, 20)
    assert (cfg.dataset.num_pages, list(cfg.dataset.sizes[0]), cfg.dataset.seed) == (2, [1240, 1754], 0)
    assert (cfg.tracking.experiment, cfg.hardware.name, cfg.hardware.launch_busy_share) == ("llm-perf-opt", "auto", 0.5)
    assert compose(PROFILE_CONFIG, ["model=gemm"]).model.factory.m == 8192
    assert compose(PROFILE_CONFIG, ["model=hf_causal_lm"]).model.prompt_tokens == 128


def test_omnidocbench_composes_with_a_root(tmp_path):
    cfg = compose(PROFILE_CONFIG, ["dataset=omnidocbench", f"dataset.root={tmp_path}", "dataset.limit=3"])
    assert OmegaConf.get_type(cfg.dataset) is OmniDocBenchDatasetConfig
    validate(cfg)


def test_compare_composes_to_its_schema():
    cfg = compose(COMPARE_CONFIG, ["verdicts.bootstrap_method=BCa", "select.run_ids=[a,b]", "select.last=2"])
    assert OmegaConf.get_type(cfg) is CompareConfig
    assert cfg.verdicts.bootstrap_method == "BCa" and cfg.select.status == "FINISHED"
    assert (cfg.operators.top_n, cfg.plots.max_runs, cfg.report.terminal_runs) == (10, 30, 6)
    assert compose(COMPARE_CONFIG, ["select.run_ids='id1,id2'"]).select.run_ids == "id1,id2"  # either form
    validate(cfg)


def test_conftest_composes_from_the_package():
    cfg = compose_config("device=cpu")
    assert OmegaConf.get_type(cfg.model) is DeepseekOcr2Config and cfg.model.image_mode == "global768"


def test_enum_fields_read_as_plain_strings():
    cfg = compose(PROFILE_CONFIG, ["model.image_mode=global768", "model.dtype=bf16"])
    mode = cfg.model.image_mode
    assert mode == "global768" and isinstance(mode, str)
    assert str(mode) == f"{mode}" == "global768"
    assert {"global768": 1}[mode] == 1  # dict lookups by the string (deepseek_ocr2.IMAGE_MODES)
    assert cfg.model.dtype == "bf16" and str(cfg.model.dtype).lower() == "bf16"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert json.dumps(resolved["model"]["image_mode"]) == '"global768"'
    assert "image_mode: global768\n" in OmegaConf.to_yaml(OmegaConf.create(resolved))
    assert str(resolved["model"]["attn_implementation"]) == "sdpa"  # as MLflow logs a param


@pytest.mark.parametrize("override, allowed", [
    ("model.dtype=fp8", "[auto, bf16, fp16, fp32]"),
    ("model.image_mode=global512", "[tiled, global1024, global768]"),
    ("model.attn_implementation=flash", "sdpa, eager, flash_attention_2"),
    ("model.experts_implementation=fast", "[eager, grouped_mm, batched_mm]"),
    ("model.decode_experts_implementation=fast", "[auto, same, eager, grouped_mm, batched_mm]"),
    ("model.moe_routing=random", "[auto, uniform, model]"),
    ("profiling.repeats=abc", "converted to Integer"),
    ("profiling.operators.record_shapes=maybe", "not a valid bool"),
])
def test_bad_values_fail_when_hydra_composes(override, allowed):
    with pytest.raises(ConfigCompositionException) as info:
        compose(PROFILE_CONFIG, [override])
    assert isinstance(info.value.__cause__, ValidationError)
    assert allowed in str(info.value.__cause__)
    line = compose_error_line(info.value)
    assert "\n" not in line and override in line and allowed in line


def test_bootstrap_method_is_checked_when_hydra_composes():
    with pytest.raises(ConfigCompositionException) as info:
        compose(COMPARE_CONFIG, ["verdicts.bootstrap_method=bca"])
    assert "[percentile, BCa, basic]" in compose_error_line(info.value)


@pytest.mark.parametrize("override", ["model.experts_implementation=null", "model.experts_implementation=grouped_mm",
                                      "model.decode_experts_implementation=same", "model.attn_implementation=eager",
                                      "model.attn_implementation=flash_attention_2", "profiling.progress=false",
                                      "model.dtype=fp16", "device=cuda:1", "device=cpu"])
def test_allowed_values_compose_and_validate(override):
    validate(compose(PROFILE_CONFIG, [override]))


def test_unknown_key_and_unknown_option_read_as_one_line():
    with pytest.raises(ConfigCompositionException) as info:
        compose(PROFILE_CONFIG, ["model.foo=1"])
    assert compose_error_line(info.value) == ("Could not override 'model.foo': Key 'foo' not in 'DeepseekOcr2Config'; "
                                              "To append to your config use +model.foo=1")
    with pytest.raises(Exception) as info:
        compose(PROFILE_CONFIG, ["model=nosuch"])
    line = compose_error_line(info.value)
    assert "Could not find 'model/nosuch'" in line and "deepseek_ocr2" in line and "base_" not in line


# -- validate: ranges, device, required keys -----------------------------------------------------------

@pytest.mark.parametrize("config_name, override, key", [
    (PROFILE_CONFIG, "profiling.repeats=0", "profiling.repeats=0"),
    (PROFILE_CONFIG, "profiling.new_tokens=0", "profiling.new_tokens=0"),
    (PROFILE_CONFIG, "profiling.warmup=-1", "profiling.warmup=-1"),
    (PROFILE_CONFIG, "profiling.operators.inputs=0", "profiling.operators.inputs=0"),
    (PROFILE_CONFIG, "profiling.operators.top_n=0", "profiling.operators.top_n=0"),
    (PROFILE_CONFIG, "profiling.operators.decode_steps=-1", "profiling.operators.decode_steps=-1"),
    (PROFILE_CONFIG, "profiling.counting.decode_steps=-1", "profiling.counting.decode_steps=-1"),
    (PROFILE_CONFIG, "profiling.energy.interval_ms=0", "profiling.energy.interval_ms=0.0"),
    (PROFILE_CONFIG, "profiling.progress=sometimes", "profiling.progress=sometimes"),
    (PROFILE_CONFIG, "dataset.num_pages=0", "dataset.num_pages=0"),
    (PROFILE_CONFIG, "dataset.sizes=[[1240]]", "dataset.sizes=[[1240]]"),
    (PROFILE_CONFIG, "hardware.peak_tflops=-5", "hardware.peak_tflops=-5.0"),
    (PROFILE_CONFIG, "hardware.launch_busy_share=2", "hardware.launch_busy_share=2.0"),
    (PROFILE_CONFIG, "model.family=llama", "model.family=llama"),
    (COMPARE_CONFIG, "verdicts.alpha=0", "verdicts.alpha=0.0"),
    (COMPARE_CONFIG, "verdicts.alpha=1", "verdicts.alpha=1.0"),
    (COMPARE_CONFIG, "verdicts.confidence=1.5", "verdicts.confidence=1.5"),
    (COMPARE_CONFIG, "verdicts.min_effect=-0.1", "verdicts.min_effect=-0.1"),
    (COMPARE_CONFIG, "verdicts.bootstrap_resamples=0", "verdicts.bootstrap_resamples=0"),
    (COMPARE_CONFIG, "select.last=0", "select.last=0"),
    (COMPARE_CONFIG, "operators.top_n=0", "operators.top_n=0"),
    (COMPARE_CONFIG, "report.markdown_runs=0", "report.markdown_runs=0"),
])
def test_each_range_check_is_one_line_naming_key_value_and_fix(config_name, override, key):
    cfg = compose(config_name, [override])
    with pytest.raises(InputError) as info:
        validate(cfg)
    message = str(info.value)
    assert message.startswith(key + " ") and "\n" not in message
    assert any(word in message for word in ("set ", "use ", "choose ", "add "))  # says how to fix it


@pytest.mark.parametrize("device", ["mps", "meta", "gpu", "cuda:", "cuda:x", "cpu:0", "CUDA"])
def test_device_other_than_auto_cpu_cuda_is_rejected(device):
    with pytest.raises(InputError) as info:
        validate(compose(PROFILE_CONFIG, [f"device={device}"]))
    message = str(info.value)
    assert message.startswith(f"device={device} is not supported") and "use device=auto" in message


def test_omnidocbench_without_root_is_an_input_error_not_a_traceback():
    cfg = compose(PROFILE_CONFIG, ["dataset=omnidocbench"])
    with pytest.raises(InputError, match=r"^dataset\.root=null is not set .*add dataset\.root=/path/to/OmniDocBench"):
        validate(cfg)


def test_custom_without_target_is_an_input_error():
    cfg = compose(PROFILE_CONFIG, ["model=custom", "~model.factory._target_"])
    with pytest.raises(InputError, match=r"^model\.factory=\{\} has no _target_: set model\.factory\._target_="):
        validate(cfg)


# -- the custom factory ---------------------------------------------------------------------------------

def _instantiate_like_custom_py(model_cfg):
    # as llm_perf_opt.models.custom.build_workload: the factory config plus device and dtype
    return instantiate(model_cfg.factory, device=torch.device("cpu"), dtype=torch.float32, _convert_="all")


def test_overriding_only_the_target_reaches_a_two_argument_factory():
    cfg = compose(PROFILE_CONFIG, ["model=custom", f"model.factory._target_={__name__}.build_two_args"])
    validate(cfg)
    assert OmegaConf.to_container(cfg.model.factory) == {"_target_": f"{__name__}.build_two_args"}
    built = _instantiate_like_custom_py(cfg.model)
    assert isinstance(built, torch.nn.Linear) and built.weight.dtype == torch.float32


def test_factory_takes_extra_keyword_arguments_with_plus():
    cfg = compose(PROFILE_CONFIG, ["model=custom", "+model.factory.hidden_size=8", "+model.factory.num_layers=1"])
    built = _instantiate_like_custom_py(cfg.model)
    assert built["model"].layers[0].weight.shape == (8, 8)  # the example factory's other sizes: its defaults
    assert built["vocab_size"] == 256


def test_default_custom_factory_instantiates_with_its_python_defaults():
    built = _instantiate_like_custom_py(compose(PROFILE_CONFIG, ["model=custom"]).model)
    assert len(built["model"].layers) == 4 and built["model"].embed.weight.shape == (256, 64)


# -- where conf/ is, and that it ships ------------------------------------------------------------------

def test_conf_dir_is_inside_the_package():
    conf = Path(CONF_DIR)
    assert conf == Path(llm_perf_opt.__file__).resolve().parent / "conf"
    assert {"config.yaml", "compare.yaml"} <= {p.name for p in conf.glob("*.yaml")}
    assert {p.name for p in conf.iterdir() if p.is_dir()} >= {"model", "dataset", "profiling", "tracking", "hardware"}
    assert (REPO_ROOT / "conf").resolve() == conf.resolve()  # the checkout's conf/ is the link to it
    assert config_module.PROJECT_ROOT == REPO_ROOT  # running from the checkout: git sha from it


def test_runners_compose_from_the_packaged_conf_dir():
    from llm_perf_opt.runners import compare_runs, llm_profile_runner

    for runner in (llm_profile_runner, compare_runs):
        assert "config_path=CONF_DIR" in Path(runner.__file__).read_text()


def test_package_data_covers_every_yaml_at_any_depth():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["llm_perf_opt"]
    package_dir = Path(CONF_DIR).parent
    yamls = [p.relative_to(package_dir).as_posix() for p in Path(CONF_DIR).rglob("*.yaml")]
    assert len(yamls) >= 12
    for name in yamls + ["conf/a/b/c/deep.yaml"]:
        assert any(_glob_match(name, pattern) for pattern in patterns), name


def _glob_match(name: str, pattern: str) -> bool:
    # setuptools' "**" spans directories (any depth, including none)
    return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name, pattern.replace("**/", ""))


@pytest.mark.slow
def test_installed_wheel_finds_its_conf_from_any_directory(tmp_path):
    source, wheels, target, cwd = (tmp_path / name for name in ("source", "wheels", "site", "elsewhere"))
    cwd.mkdir()
    # A copy of what the wheel is built from, so setuptools' build/ does not land in the checkout.
    shutil.copytree(REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(wheels)],
                   check=True, cwd=tmp_path, capture_output=True, timeout=300)
    wheel = next(wheels.glob("llm_perf_opt-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for yaml in Path(CONF_DIR).rglob("*.yaml"):
        assert f"llm_perf_opt/conf/{yaml.relative_to(CONF_DIR).as_posix()}" in names
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(target))  # the installed copy ahead of the checkout's
    for command, expected in (("profile", "family: deepseek_ocr2"), ("compare", "bootstrap_method: percentile")):
        result = subprocess.run(
            [sys.executable, "-c", "import sys, llm_perf_opt.cli as c; print(c.__file__, file=sys.stderr); c.main()",
             command, "--cfg", "job"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stderr.startswith(str(target)) and expected in result.stdout
