"""Check the MLflow UI in a real browser and save screenshots of it for the docs.

    python benchmarks/ui_screenshots.py --out docs/ui [--store DIR] [--keep-store]

1. Records into a fresh store (a temporary directory unless --store is given), through the project's
   CLI in subprocesses (`python -m llm_perf_opt profile ...`, `... compare ...`, PYTHONPATH=src): three
   profile runs of the embedded tiny default with different settings, then one comparison run of them.
   The subprocesses run in the store directory, so MLflow's default artifact root (`./mlruns`, made
   absolute when the experiment is created) lies in the store as well.
2. Starts `mlflow server` on that store (127.0.0.1, a free port), waits for `GET /health`, and stops it
   at the end, also on errors.
3. Drives headless Chromium (the system's binary, through Playwright's `executable_path`; never a
   downloaded browser) and saves experiment.png, run_metrics.png, stakeholder_summary.png, traces.png,
   compare.png and comparison_run.png, each after waiting for text that proves the page rendered what it
   should. Prints each screenshot's path, what it shows and the text it verified.

Needs `pip install -e '.[ui]'` (Playwright's Python package) and Chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
sys.path.insert(0, str(REPO / "tests"))
import servers  # noqa: E402  (tests/servers.py: the throwaway mlflow server the team-server tests use)

VIEWPORT = {"width": 1600, "height": 1000}
UI_TIMEOUT_MS = 60_000
CLI_TIMEOUT_S = 1800
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
KIND_TAG = "llm_perf_opt.kind"
SPINNERS = '[role="progressbar"], .du-bois-light-spin-spinning, [data-testid="loading-spinner"]'
ASSISTANT_CLOSE = '[data-component-id="mlflow.assistant.chat_panel.close"]'
SECTION_HEADER = "experiment-view-compare-runs-section-header"
SETTLE_MS = 800  # chart transitions (plotly) after the verified text is on screen
MAX_SPANS_CHECKED = 6  # the root span's first children whose names must show in the trace view
# The columns added to the runs table, by pattern over the logged metric names (the names may change):
# (stages preferred in this order, a fragment of the quantity).
METRIC_PATTERNS = ((("prefill",), "ms_p50"), (("decode",), "tpot_ms_p50"), (("e2e",), "ms_p50"),
                   (("e2e", "prefill"), "mfu"))
HIDDEN_COLUMNS = ("Dataset", "Source", "Models")  # default columns that are empty for profile runs
COMMON_OVERRIDES = ("profiling.new_tokens=8", "profiling.progress=false")


@dataclass(frozen=True)
class Variant:
    """One profile run: a label (its run directory's name) and the Hydra overrides that set it apart."""

    label: str
    overrides: tuple[str, ...]


VARIANTS = (
    Variant("tiled", ("model.image_mode=tiled", "profiling.repeats=3")),
    Variant("global1024", ("model.image_mode=global1024", "profiling.repeats=5")),
    Variant("global768", ("model.image_mode=global768", "profiling.repeats=5")),
)


@dataclass
class Recorded:
    """What was recorded in the store: the experiment, its profile runs (oldest first) and the comparison run."""

    root: Path
    uri: str
    experiment_id: str
    profile: list  # mlflow.entities.Run
    comparison: object | None  # mlflow.entities.Run

    def metric_names(self) -> list[str]:
        return sorted({name for run in self.profile for name in run.data.metrics})


@dataclass
class Shot:
    """One screenshot: where it went (None when it was not taken), what it shows, the text it verified."""

    name: str
    path: Path | None
    description: str
    verified: list[str] = field(default_factory=list)
    warning: str | None = None

    def report(self) -> str:
        where = str(self.path) if self.path else f"{self.name}: NOT WRITTEN"
        lines = [f"{where}\n    shows: {self.description}"]
        if self.verified:
            lines.append("    verified on the page: " + ", ".join(repr(text) for text in self.verified))
        if self.warning:
            lines.append(f"    WARNING: {self.warning}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- recording


def sqlite_uri(root: Path) -> str:
    return f"sqlite:///{root.resolve() / 'mlflow.db'}"


def cli_env() -> dict[str, str]:
    """This environment with src/ on PYTHONPATH and no MLflow run or store inherited from a caller."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI",
                                                            "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return env


def run_cli(args: Sequence[str], cwd: Path, timeout: float = CLI_TIMEOUT_S) -> str:
    """`python -m llm_perf_opt <args>` in `cwd`; its output, or RuntimeError with the output's tail."""
    command = [sys.executable, "-m", "llm_perf_opt", *args]
    print("$ " + " ".join(command), flush=True)
    result = subprocess.run(command, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-30:])
        raise RuntimeError(f"{' '.join(args[:1])} exited {result.returncode}:\n{tail}")
    return output


def record_runs(root: Path, variants: Sequence[Variant] = VARIANTS,
                common: Sequence[str] = COMMON_OVERRIDES) -> Recorded:
    """Profile each variant (overrides: `common`, then the variant's), then compare them all, into the SQLite
    store under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    uri = sqlite_uri(root)
    for variant in variants:
        run_cli(["profile", f"tracking.uri={uri}", f"hydra.run.dir={root / 'runs' / variant.label}",
                 *common, *variant.overrides], cwd=root)
    run_cli(["compare", f"tracking.uri={uri}", f"select.last={len(variants)}",
             f"hydra.run.dir={root / 'runs' / 'compare'}"], cwd=root)
    return load_recorded(root)


def load_recorded(root: Path) -> Recorded:
    """The profile runs and the newest comparison run in the store under `root`, read back from MLflow."""
    import mlflow

    uri = sqlite_uri(root)
    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]

    def runs(kind: str) -> list:
        return client.search_runs(experiments, filter_string=f"tags.`{KIND_TAG}` = '{kind}'",
                                  order_by=["attributes.start_time ASC"])

    profile = runs("profile")
    if not profile:
        raise RuntimeError(f"no profile run in {uri}")
    comparisons = runs("comparison")
    return Recorded(root, uri, profile[0].info.experiment_id, profile, comparisons[-1] if comparisons else None)


# ----------------------------------------------------------------------------------------------- the server


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """A running `mlflow server` on the store under `root` (tests/servers.py's, with the team set-up's
    health check and process-group stop); the runs' artifacts are local paths under root/mlruns, which the
    server reads directly. Yields its base URL; always stopped on exit."""
    with servers.mlflow_server(sqlite_uri(root), root / "mlartifacts", log=root / "mlflow-server.log", workers=1,
                               extra=["--default-artifact-root", str(root.resolve() / "mlruns")], cwd=root) as url:
        print(f"mlflow server: {url} (log {root / 'mlflow-server.log'})", flush=True)
        yield url


# ----------------------------------------------------------------------------------------------- the browser


def find_chromium() -> str | None:
    """The system's Chromium (or Chrome) executable: $CHROMIUM_PATH, else the first of CHROMIUM_NAMES on PATH."""
    explicit = os.environ.get("CHROMIUM_PATH")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def pick_metrics(names: Sequence[str]) -> list[str]:
    """The runs-table metric columns, by METRIC_PATTERNS: for each, the first name whose quantity (after the
    '/') contains the fragment, on the first preferred stage that has one, else on any stage."""
    picked: list[str] = []
    for stages, fragment in METRIC_PATTERNS:
        hits = sorted(n for n in names if fragment in n.rsplit("/", 1)[-1] and n not in picked)
        ranked = [n for stage in stages for n in hits if n.split("/", 1)[0] == stage] + hits
        if ranked:
            picked.append(ranked[0])
    return picked


def differing_params(runs: Sequence, limit: int = 2) -> list[str]:
    """Up to `limit` model/profiling/dataset params whose values differ between the runs."""
    keys = sorted({k for run in runs for k in run.data.params})
    differ = [k for k in keys if len({run.data.params.get(k) for run in runs}) > 1
              and k.split(".", 1)[0] in ("model", "profiling", "dataset")]
    return differ[:limit]


class UI:
    """One browser page on the MLflow UI at `base`, saving screenshots into `out`."""

    def __init__(self, page, base: str, out: Path):
        self.page = page
        self.base = base
        self.out = out
        self.view_warning: str | None = None  # how the experiment opened (open_model_training_view)

    def goto(self, route: str) -> None:
        self.page.goto(f"{self.base}/#{route}")

    def text(self, text: str, exact: bool = True, within=None):
        """Wait until `text` is visible (in `within`, else the page); returns its locator."""
        locator = (within or self.page).get_by_text(text, exact=exact).locator("visible=true").first
        locator.wait_for(state="visible")
        return locator

    def click_if_visible(self, locator, timeout_ms: int = 0) -> bool:
        with contextlib.suppress(Exception):
            if timeout_ms:
                locator.first.wait_for(state="visible", timeout=timeout_ms)
            if locator.count() and locator.first.is_visible():
                locator.first.click()
                return True
        return False

    def close_assistant(self, timeout_ms: int = 0) -> None:
        """Close the 'MLflow Assistant' side panel (a fifth of the width) when it is open, waiting up to
        `timeout_ms` for it to appear (it opens a moment after the page); it stays closed for the session."""
        close = self.page.locator(ASSISTANT_CLOSE).first
        with contextlib.suppress(Exception):
            close.wait_for(state="visible", timeout=timeout_ms or 1)
        if close.is_visible():
            close.click()
            close.wait_for(state="hidden")

    def settle(self) -> None:
        """Wait (up to 10 s) for loading spinners to go, then a moment for chart transitions to finish."""
        with contextlib.suppress(Exception):
            self.page.locator(SPINNERS).first.wait_for(state="hidden", timeout=10_000)
        self.page.wait_for_timeout(SETTLE_MS)

    def save(self, name: str) -> Path:
        self.close_assistant()
        self.page.mouse.move(VIEWPORT["width"] - 3, 3)  # no hover effects (chart tool bars, tooltips)
        self.settle()
        path = self.out / name
        self.page.screenshot(path=str(path))
        return path


# ----------------------------------------------------------------------------------------------- screenshots


def open_model_training_view(ui: UI, rec: Recorded) -> str | None:
    """Open the experiment as a user would; when the UI opens it in its GenAI view (the sidebar's
    GenAI/Model training switch decides in MLflow 3.17, not the experiment's kind tag), switch to 'Model
    training' like a user (the choice is kept for the session). Returns a warning when a switch was needed."""
    ui.goto(f"/experiments/{rec.experiment_id}")
    toggle = ui.text("Model training")
    ui.page.wait_for_url(lambda url: "workflowType=" in url or "/runs" in url)
    warning = None
    if "workflowType=genai" in ui.page.url or "/overview" in ui.page.url:
        warning = ("the experiment opened in the GenAI view although it is tagged "
                   "mlflow.experimentKind=custom_model_development; switched to 'Model training'")
        ui.click_if_visible(ui.page.get_by_role("button", name="Got it"), timeout_ms=3000)
        toggle.click()
    ui.page.get_by_role("button", name="Columns", exact=True).wait_for()
    ui.close_assistant(timeout_ms=5000)
    return warning


def set_run_columns(ui: UI, show: Sequence[str], hide: Sequence[str] = HIDDEN_COLUMNS) -> None:
    """Through the runs table's column selector: untick `hide` (attributes), tick `show` (metrics, params)."""
    ui.page.get_by_role("button", name="Columns", exact=True).click()
    popover = ui.page.locator('[data-component-id="mlflow.experiment_page.runs_table.column_selector"]')
    search = popover.get_by_placeholder("Search columns")
    for name in [*hide, *show]:
        search.fill(name)
        node = popover.locator(".du-bois-light-tree-treenode").filter(
            has=ui.page.get_by_text(name, exact=True)).first
        node.wait_for()
        checked = "checkbox-checked" in (node.get_attribute("class") or "")
        if checked == (name in hide):
            node.locator(".du-bois-light-tree-title").click()
    search.fill("")
    ui.page.keyboard.press("Escape")


def resize_column(ui: UI, header: str, by_px: float) -> None:
    """Drag the right edge of the runs table's `header` column `by_px` (negative: narrower); AG Grid's resize
    handle reacts to a hover, then a press, then small moves."""
    handle = ui.page.locator(".ag-header-cell", has_text=header).first.locator(".ag-header-cell-resize")
    if not handle.count() or abs(by_px) < 1:
        return
    handle.hover()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    ui.page.mouse.down()
    ui.page.mouse.move(x + (5 if by_px > 0 else -5), y)
    ui.page.mouse.move(x + by_px, y, steps=10)
    ui.page.mouse.up()


def spare_width(ui: UI) -> float:
    """How much wider the runs table's scrolling columns could be without a horizontal scroll bar."""
    return ui.page.evaluate("""() => {
        const view = document.querySelector('.ag-center-cols-viewport');
        const cols = document.querySelector('.ag-center-cols-container');
        return view && cols ? view.clientWidth - cols.offsetWidth : 0;
    }""")


def fit_columns(ui: UI, added: Sequence[str], has_datasets: bool) -> None:
    """Make the run names and the added columns' names readable without scrolling: the Dataset column (when
    shown) narrower, the Run Name column wider, then the added columns wider while the table has room."""
    if has_datasets:
        resize_column(ui, "Dataset", -110)
    resize_column(ui, "Run Name", 80)
    for column in added:
        resize_column(ui, column, min(35.0, spare_width(ui) - 2))


def shoot_experiment(ui: UI, rec: Recorded) -> Shot:
    ui.goto(f"/experiments/{rec.experiment_id}/runs")
    ui.page.get_by_role("button", name="Columns", exact=True).wait_for()
    names = [run.info.run_name for run in rec.profile]
    for name in names:
        ui.text(name)
    metrics = pick_metrics(rec.metric_names())
    params = differing_params(rec.profile)
    has_datasets = any(run.inputs and run.inputs.dataset_inputs for run in rec.profile)
    set_run_columns(ui, [*params, *metrics], hide=("Source", "Models") if has_datasets else HIDDEN_COLUMNS)
    for column in [*params, *metrics]:
        ui.page.locator(".ag-header-cell", has_text=column).first.wait_for(state="visible")
    sidebar = ui.page.get_by_role("button", name="Toggle sidebar")
    sidebar.click()  # collapsed while the table is shown: its width goes to the columns
    fit_columns(ui, [*metrics, *params], has_datasets)
    ui.page.locator(".ag-row .ag-cell", has_text=rec.profile[0].info.run_name).first.wait_for()
    path = ui.save("experiment.png")
    sidebar.click()
    return Shot("experiment.png", path, "the experiment's runs table in the 'Model training' view, with the "
                f"columns {', '.join(params + metrics)} added through the column selector",
                [*names, *params, *metrics], ui.view_warning)


def chart_sections(ui: UI) -> list[tuple[str, object]]:
    """The 'Model metrics' tab's chart sections that hold charts: (name, header locator), in page order."""
    headers = ui.page.locator(".du-bois-light-collapse-header")
    headers.first.wait_for()
    sections = []
    for header in headers.all():
        lines = header.locator(f'[data-testid="{SECTION_HEADER}"]').inner_text().split("\n")
        if len(lines) > 1 and lines[1].strip() != "(0)":
            sections.append((lines[0].strip(), header))
    return sections


def shoot_run_metrics(ui: UI, rec: Recorded) -> Shot:
    run = rec.profile[0]
    ui.goto(f"/experiments/{rec.experiment_id}/runs/{run.info.run_id}/model-metrics")
    ui.text(run.info.run_name)
    sections = chart_sections(ui)
    names = [name for name, _ in sections]
    keep = next((s for s in ("prefill", "e2e") if s in names), names[0])
    for name, header in sections:  # only `keep` open: every section's name fits on the screen
        if (header.get_attribute("aria-expanded") == "true") != (name == keep):
            header.click()
    sections[0][1].scroll_into_view_if_needed()
    charts = sorted(n.split("/", 1)[1] for n in rec.metric_names() if n.startswith(keep + "/"))
    for chart in charts[:3]:  # the first row of the open section's charts
        ui.text(chart)
    path = ui.save("run_metrics.png")
    return Shot("run_metrics.png", path, f"run {run.info.run_name}: the 'Model metrics' tab, one chart section per "
                f"metric prefix ({', '.join(names)}), the '{keep}' section open", [run.info.run_name, *names,
                                                                                    *charts[:3]])


def markdown_headings(text: str, limit: int = 2) -> list[str]:
    return [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")][:limit]


def artifact_text(rec: Recorded, run_id: str, name: str) -> str:
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory() as tmp:
        local = download_artifacts(run_id=run_id, artifact_path=name, tracking_uri=rec.uri, dst_path=tmp)
        return Path(local).read_text()


def shoot_stakeholder_summary(ui: UI, rec: Recorded, artifact: str = "stakeholder_summary.md") -> Shot:
    run = rec.profile[0]
    headings = markdown_headings(artifact_text(rec, run.info.run_id, artifact))
    ui.goto(f"/experiments/{rec.experiment_id}/runs/{run.info.run_id}/artifacts")
    ui.text(artifact).click()
    for heading in headings:
        ui.page.get_by_role("heading", name=heading, exact=True).first.wait_for(state="visible")
    path = ui.save("stakeholder_summary.png")
    return Shot("stakeholder_summary.png", path, f"run {run.info.run_name}: the Artifacts tab with {artifact} "
                "selected and rendered as Markdown", [artifact, *headings])


def find_trace(rec: Recorded):
    """The first trace (by root span name, then time) of the first profile run, else of the experiment, with its
    spans; None when there is none."""
    import mlflow

    client = mlflow.MlflowClient(rec.uri)
    traces = client.search_traces(locations=[rec.experiment_id], max_results=100, include_spans=True)
    first_run = rec.profile[0].info.run_id

    def order(trace) -> tuple:  # by root span name (the input), not request time: traces may be logged later
        return trace_run_id(trace) != first_run, span_names(trace)[0], trace.info.request_time

    return min(traces, key=order) if traces else None


def trace_run_id(trace) -> str | None:
    metadata = {**(trace.info.trace_metadata or {}), **(trace.info.tags or {})}
    return metadata.get("mlflow.sourceRun")


def span_names(trace) -> tuple[str, list[str]]:
    """The root span's name and its children's names, in start order."""
    spans = trace.data.spans
    root = next(s for s in spans if s.parent_id is None)
    children = sorted((s for s in spans if s.parent_id == root.span_id), key=lambda s: s.start_time_ns)
    return root.name, [s.name for s in children]


def open_trace(ui: UI, route: str, trace_id: str) -> None:
    """Open the trace from the traces table like a user (click its id); the drawer's URL if that fails."""
    ui.goto(route)
    try:
        ui.page.get_by_text(trace_id, exact=True).first.click(timeout=20_000)
    except Exception:
        ui.goto(f"{route}?selectedEvaluationId={trace_id}")
    ui.page.get_by_role("dialog").first.wait_for()


def drag_splitter(ui: UI, to_x: float) -> bool:
    """Drag the trace view's splitter between the span tree and the span details (the element with a resize
    cursor) to `to_x`, so that the timeline's labels fit. False when there is no such element."""
    box = ui.page.evaluate("""() => {
        const el = [...document.querySelectorAll('[role=dialog] div')].find(
            e => ['ew-resize', 'col-resize'].includes(getComputedStyle(e).cursor) && e.offsetWidth < 20);
        if (!el) return null;
        const r = el.getBoundingClientRect();
        return {x: r.x + r.width / 2, y: r.y + r.height / 2};
    }""")
    if not box:
        return False
    ui.page.mouse.move(box["x"], box["y"])
    ui.page.mouse.down()
    ui.page.mouse.move(box["x"] + 5, box["y"])
    ui.page.mouse.move(to_x, box["y"], steps=10)
    ui.page.mouse.up()
    ui.page.mouse.move(VIEWPORT["width"] - 5, VIEWPORT["height"] - 5)  # off the splitter: no hover highlight
    return True


def shoot_traces(ui: UI, rec: Recorded) -> Shot:
    trace = find_trace(rec)
    if trace is None:
        return Shot("traces.png", None, "the Traces tab with one trace's span timeline",
                    warning="the experiment has no MLflow trace (the profiler does not log traces yet): "
                            "traces.png was not written")
    run_id = trace_run_id(trace)
    route = (f"/experiments/{rec.experiment_id}/runs/{run_id}/traces" if run_id
             else f"/experiments/{rec.experiment_id}/traces")
    open_trace(ui, route, trace.info.trace_id)
    dialog = ui.page.get_by_role("dialog").first
    ui.click_if_visible(dialog.get_by_role("button", name="Full screen"))
    ui.click_if_visible(dialog.get_by_role("button", name="Show execution timeline"))
    drag_splitter(ui, VIEWPORT["width"] * 0.6)
    root, children = span_names(trace)
    children = children[:MAX_SPANS_CHECKED]
    for name in [root, *children]:
        ui.text(name, within=dialog)
    path = ui.save("traces.png")
    where = "opened from " + ("the run's Traces tab" if run_id else "the experiment's Traces page")
    return Shot("traces.png", path, f"trace {trace.info.trace_id}, {where}: its span tree with the execution "
                f"timeline (root span '{root}')", [trace.info.trace_id, root, *children])


def select_rows(ui: UI, run_ids: Sequence[str]) -> None:
    """Tick the runs table's checkbox of each run (its row holds a link to the run)."""
    for run_id in run_ids:
        row = ui.page.locator(".ag-row", has=ui.page.locator(f'a[href*="{run_id}"]')).first
        row.wait_for()
        index = row.get_attribute("row-index")
        ui.page.locator(f'.ag-row[row-index="{index}"] input[type="checkbox"]').first.check()


def choose_plot_metrics(ui: UI, metrics: Sequence[str]) -> None:
    """Add `metrics` to the parallel coordinates plot's 'Metrics' select."""
    select = ui.page.get_by_text("Metrics:", exact=True).locator("xpath=following-sibling::div[1]")
    for metric in metrics:
        if select.locator(".du-bois-light-select-selection-item", has_text=metric).count():
            continue
        select.click()
        select.locator("input").fill(metric)
        ui.page.locator(f'.du-bois-light-select-item-option[title="{metric}"]').click()
    ui.page.keyboard.press("Escape")


def shoot_compare(ui: UI, rec: Recorded) -> Shot:
    ui.goto(f"/experiments/{rec.experiment_id}/runs")
    ids = [run.info.run_id for run in rec.profile]
    select_rows(ui, ids)
    ui.page.get_by_role("button", name="Compare", exact=True).click()
    ui.page.wait_for_url(lambda url: "compare-runs" in url)
    ui.text(f"Comparing {len(ids)} Runs", exact=False)
    metrics = pick_metrics(rec.metric_names())
    choose_plot_metrics(ui, metrics)
    names = [run.info.run_name for run in rec.profile]
    for text in [*names, *metrics]:
        ui.text(text)
    path = ui.save("compare.png")
    return Shot("compare.png", path, f"MLflow's compare view of the {len(ids)} profile runs (ticked in the runs "
                "table, then Compare): a parallel coordinates plot of the differing params and the metrics "
                f"{', '.join(metrics)}, and the run details", [f"Comparing {len(ids)} Runs", *names, *metrics])


def shoot_comparison_run(ui: UI, rec: Recorded) -> Shot:
    if rec.comparison is None:
        return Shot("comparison_run.png", None, "the comparison run's overview",
                    warning="the store has no comparison run: comparison_run.png was not written")
    run = rec.comparison
    ui.goto(f"/experiments/{rec.experiment_id}/runs/{run.info.run_id}")
    ui.text(run.info.run_name)
    ui.text("Description")
    compared = [r for r in rec.profile if r.info.run_id in run.data.tags.get("compare.run_ids", "")]
    verified = [run.info.run_name]
    for other in compared:
        ui.page.get_by_role("link", name=other.info.run_name, exact=True).first.wait_for(state="visible")
        verified.append(other.info.run_name)
    path = ui.save("comparison_run.png")
    return Shot("comparison_run.png", path, f"the comparison run {run.info.run_name}: its description linking the "
                f"{len(compared)} compared runs, its metrics and tags", verified)


SHOOTERS = (shoot_experiment, shoot_run_metrics, shoot_stakeholder_summary, shoot_traces, shoot_compare,
            shoot_comparison_run)


def take_screenshots(base_url: str, rec: Recorded, out: Path, chromium: str, shooters=SHOOTERS) -> list[Shot]:
    """Open the UI at `base_url` in headless Chromium and take each screenshot of `shooters`, in order."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.set_default_timeout(UI_TIMEOUT_MS)
            ui = UI(context.new_page(), base_url, out)
            ui.view_warning = open_model_training_view(ui, rec)
            return [shooter(ui, rec) for shooter in shooters]
        finally:
            browser.close()


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "ui", help="where the PNG files go")
    parser.add_argument("--store", type=Path, default=None,
                        help="the store directory (must be new or empty; default: a temporary directory)")
    parser.add_argument("--keep-store", action="store_true", help="keep the temporary store directory")
    return parser.parse_args(argv)


def new_store(path: Path | None) -> tuple[Path, bool]:
    """The store directory and whether it is a temporary one; a given directory must be new or empty."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="llm-perf-opt-ui-")), True
    path = path.resolve()
    if path.exists() and any(path.iterdir()):
        raise SystemExit(f"error: --store {path} is not empty (the screenshots need a fresh store)")
    path.mkdir(parents=True, exist_ok=True)
    return path, False


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print("error: no Chromium executable (apt-get install chromium, or set CHROMIUM_PATH)", file=sys.stderr)
        return 2
    store, temporary = new_store(args.store)
    try:
        rec = record_runs(store)
        with mlflow_server(store) as url:
            shots = take_screenshots(url, rec, args.out.resolve(), chromium)
    finally:
        if temporary and not args.keep_store:
            shutil.rmtree(store, ignore_errors=True)
    print()
    for shot in shots:
        print(shot.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
