"""The code's shape, checked: layer contracts (import-linter), lint (ruff), short functions."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "llm_perf_opt"
MAX_FUNCTION_LINES = 80


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[test]' installs it)")
    return found


def _lint_imports(root: Path, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([_tool("lint-imports"), "--config", str(config), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_layer_contracts_hold():
    result = _lint_imports(REPO, REPO / ".importlinter")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


def test_an_upward_import_breaks_the_layer_contract(tmp_path):
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    stats = tmp_path / "src" / "llm_perf_opt" / "analysis" / "stats.py"
    stats.write_text(stats.read_text() + "\nfrom llm_perf_opt.runners import profile  # upward: analysis -> runners\n")
    result = _lint_imports(tmp_path, REPO / ".importlinter")
    assert result.returncode != 0
    assert "llm_perf_opt.analysis is not allowed to import llm_perf_opt.runners" in result.stdout
    assert "llm_perf_opt.analysis.stats -> llm_perf_opt.runners" in result.stdout


def test_ruff_is_clean():
    result = subprocess.run([_tool("ruff"), "check", "src", "tests", "benchmarks"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_function_in_src_exceeds_80_lines():
    long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
