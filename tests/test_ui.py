"""The MLflow UI in a real browser: benchmarks/ui_screenshots.py end to end, on a small store.

Two profile runs (one page each, few tokens) and their comparison are recorded through the CLI, a real
`mlflow server` serves them, headless Chromium (the system's, through Playwright) takes every screenshot.
Each screenshot step waits for text proving the page rendered what it should (and fails otherwise);
the tests check the images and the text each step verified against what MLflow holds.
"""

from __future__ import annotations

import importlib.util
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import ui_screenshots as ui  # noqa: E402  (benchmarks/ is not a package)

pytestmark = pytest.mark.ui

CHROMIUM = ui.find_chromium()
if importlib.util.find_spec("playwright") is None:
    pytest.skip("the playwright package is not installed (pip install -e '.[ui]')", allow_module_level=True)
if CHROMIUM is None:
    pytest.skip("no Chromium executable on PATH (apt-get install chromium, or set CHROMIUM_PATH)",
                allow_module_level=True)

# Small and quick on a CPU: one page, one small view, few tokens; two image modes, so two run names.
COMMON = ("dataset.num_pages=1", "profiling.warmup=1", "profiling.repeats=2", "profiling.new_tokens=4",
          "profiling.progress=false")
VARIANTS = (ui.Variant("global768", ("model.image_mode=global768",)),
            ui.Variant("global1024", ("model.image_mode=global1024",)))
NAMES = ("experiment.png", "run_metrics.png", "stakeholder_summary.png", "traces.png", "compare.png",
         "comparison_run.png")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    store = tmp_path_factory.mktemp("ui-store")
    out = tmp_path_factory.mktemp("ui-shots")
    rec = ui.record_runs(store, VARIANTS, COMMON)
    with ui.mlflow_server(store) as url:
        shots = ui.take_screenshots(url, rec, out, CHROMIUM)
    return {"rec": rec, "url": url, "out": out, "shots": {shot.name: shot for shot in shots}}


def _written(session) -> list[ui.Shot]:
    return [shot for shot in session["shots"].values() if shot.path is not None]


def test_every_screenshot_step_ran(session):
    assert sorted(session["shots"]) == sorted(NAMES)
    written = {shot.name for shot in _written(session)}
    assert written >= set(NAMES) - {"traces.png"}  # traces.png needs traces in the store (see below)


def test_every_screenshot_is_a_rendered_page_of_the_viewport_size(session):
    from PIL import Image, ImageStat

    for shot in _written(session):
        assert shot.path.is_file() and shot.path.parent == session["out"], shot.name
        with Image.open(shot.path) as image:
            assert image.size == (ui.VIEWPORT["width"], ui.VIEWPORT["height"]), shot.name
            gray = image.convert("L")
            spread = ImageStat.Stat(gray).stddev[0]
            colours = len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])
        assert spread > 10, f"{shot.name} looks blank (grey-level stddev {spread:.1f})"
        assert colours > 50, f"{shot.name} has only {colours} colours"


def test_experiment_page_shows_the_runs_and_the_metric_columns(session):
    rec, shot = session["rec"], session["shots"]["experiment.png"]
    names = [run.info.run_name for run in rec.profile]
    assert len(set(names)) == len(VARIANTS)
    metrics = ui.pick_metrics(rec.metric_names())
    assert any("ms_p50" in m for m in metrics) and any("tpot_ms_p50" in m for m in metrics)
    assert set(names) <= set(shot.verified) and set(metrics) <= set(shot.verified)
    assert "model.image_mode" in shot.verified  # the param the two runs differ in


def test_run_metrics_tab_shows_a_section_per_stage(session):
    rec, shot = session["rec"], session["shots"]["run_metrics.png"]
    assert rec.profile[0].info.run_name in shot.verified
    stages = {name.split("/", 1)[0] for name in rec.metric_names()}
    assert {"prefill", "decode", "e2e"} <= stages
    assert {"prefill", "decode", "e2e"} <= set(shot.verified)


def test_stakeholder_summary_is_rendered_as_markdown(session):
    rec, shot = session["rec"], session["shots"]["stakeholder_summary.png"]
    text = ui.artifact_text(rec, rec.profile[0].info.run_id, "stakeholder_summary.md")
    headings = ui.markdown_headings(text)
    assert headings, "stakeholder_summary.md has no heading"
    assert "stakeholder_summary.md" in shot.verified and set(headings) <= set(shot.verified)


def test_traces_step_opens_a_trace_or_says_there_is_none(session):
    rec, shot = session["rec"], session["shots"]["traces.png"]
    trace = ui.find_trace(rec)
    if trace is None:
        assert shot.path is None and "no MLflow trace" in shot.warning
        return
    root, children = ui.span_names(trace)
    assert shot.path is not None and trace.info.trace_id in shot.verified
    assert root in shot.verified and set(children[:ui.MAX_SPANS_CHECKED]) <= set(shot.verified)


def test_compare_view_shows_every_profile_run(session):
    rec, shot = session["rec"], session["shots"]["compare.png"]
    assert f"Comparing {len(rec.profile)} Runs" in shot.verified
    assert {run.info.run_name for run in rec.profile} <= set(shot.verified)


def test_comparison_run_links_the_compared_runs(session):
    rec, shot = session["rec"], session["shots"]["comparison_run.png"]
    assert rec.comparison is not None and rec.comparison.info.run_name in shot.verified
    compared = set(rec.comparison.data.tags["compare.run_ids"].split(","))
    assert compared == {run.info.run_id for run in rec.profile}
    assert {run.info.run_name for run in rec.profile} <= set(shot.verified)


def test_the_server_is_stopped_afterwards(session):
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"{session['url']}/health", timeout=3)
