"""Shared fixtures: Hydra composition of the project's config and paths to shared test data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir

# Importing llm_perf_opt.config registers the structured configs (the schemas every conf/ YAML extends)
# in Hydra's ConfigStore; any composition below, and in the test modules, needs that first.
from llm_perf_opt.config import CONF_DIR as PACKAGE_CONF_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = Path(PACKAGE_CONF_DIR)  # src/llm_perf_opt/conf (the checkout's conf/ links to it)
DEMO_ROOT = REPO_ROOT.parent / "shared" / "omnidocbench-demo"

# Fast settings for CPU tests: one small global view, few tokens, no progress bar.
FAST = [
    "device=cpu",  # CPU tests stay CPU tests on a GPU host; tests/test_gpu.py covers CUDA
    "dataset.num_pages=1",
    "profiling.warmup=1",
    "profiling.repeats=2",
    "profiling.new_tokens=4",
    "profiling.progress=false",
]


def compose_config(*overrides: str):
    overrides = list(overrides)
    if not any(o.startswith("model=") for o in overrides):
        overrides.insert(0, "model.image_mode=global768")  # DeepSeek-OCR-2 default: one small view
    if any(o.startswith("dataset=") for o in overrides):  # FAST's page count is the synthetic source's key
        overrides = [o for o in overrides if o != "dataset.num_pages=1"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def demo_root() -> Path:
    if not (DEMO_ROOT / "OmniDocBench.json").is_file():
        pytest.skip(f"OmniDocBench demo pages not found at {DEMO_ROOT}: they live in ../shared beside the checkout")
    return DEMO_ROOT


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CPU-only machine)")

# Two environments run this suite (.ci/run): the main one (transformers 5.x) and DeepSeek-OCR v1's (4.46.3).
TRANSFORMERS_VERSION = transformers.__version__
NATIVE_OCR2 = hasattr(transformers, "DeepseekOcr2Config")  # transformers >= 5.17
V1_ENVIRONMENT = TRANSFORMERS_VERSION.startswith("4.46.")
V1_DIR = REPO_ROOT.parent / "shared" / "deepseek-ocr-v1"  # the released DeepSeek-OCR code + configs, no weights
V1_EXTRAS = REPO_ROOT.parent / "shared" / "deepseek-ocr-v1-extras"  # its weight index
requires_transformers5 = pytest.mark.skipif(
    not NATIVE_OCR2, reason=f"needs transformers >= 5.17 (DeepSeek-OCR-2's native classes); this environment has "
                            f"{TRANSFORMERS_VERSION} (the DeepSeek-OCR v1 environment)")
requires_v1 = pytest.mark.skipif(
    not V1_ENVIRONMENT or not (V1_DIR / "config.json").is_file(),
    reason=(f"DeepSeek-OCR v1's remote code needs transformers 4.46.x (this environment has {TRANSFORMERS_VERSION}: "
            "the v1 environment runs it, docs/models.md)") if not V1_ENVIRONMENT else
           f"the DeepSeek-OCR v1 directory is not at {V1_DIR} (../shared beside the checkout)")


class TeamServer:
    """A running team tracking server: `uri` (its http tracking URI), `artifacts` (its --artifacts-destination,
    where proxied artifacts land), `backend` (the PostgreSQL SQLAlchemy URL it stores runs in)."""

    def __init__(self, uri: str, artifacts: Path, backend: str) -> None:
        self.uri, self.artifacts, self.backend = uri, artifacts, backend

    def __repr__(self) -> str:
        return f"TeamServer(uri={self.uri!r}, artifacts={str(self.artifacts)!r}, backend={self.backend!r})"


@pytest.fixture(scope="session")
def team_server(tmp_path_factory):
    """A real `mlflow server` on a throwaway PostgreSQL with proxied artifacts (tests/servers.py), shared by the
    session; skipped, with the reason, only where PostgreSQL cannot run at all."""
    from servers import mlflow_server, postgres_available, postgres_server

    available, reason = postgres_available()
    if not available:
        pytest.skip(f"team server: {reason}")
    root = tmp_path_factory.mktemp("team_server")
    artifacts = root / "artifacts"
    with postgres_server() as backend, mlflow_server(backend, artifacts, log=root / "mlflow-server.log") as uri:
        yield TeamServer(uri, artifacts, backend)
