"""Screenshots of MLflow's UI for a study: what a user sees of it in the browser.

Starts ``mlflow server`` on the study's tracking store (a SQLite URI; the runs' artifacts are read
from their own local artifact locations, so run it on the machine that holds them), waits for
``/health``, and saves seven PNGs into the output folder (with the server's log):

- ``1_runs_table.png``: the experiment's description (if any) and its pretraining runs in the study's own
  view of the table (``tracking.set_runs_view``) where it has one; else (those with a
  ``model`` param), flat, by compute, with the columns ``model``, ``steps``, ``compute/exaflops``
  and the 5-shot and fine-tuning accuracies;
- ``2_pretraining_run.png``: the page of one pretraining run;
- ``3_study_run.png``: the study-level run's page, its description expanded;
- ``4_report_html.png``: the study run's artifact view of ``report/report.html``, scrolled to its
  first figure;
- ``5_finetune_trial.png``: the page of one of that pretraining run's fine-tuning trials;
- ``6_experiment_opened.png``: the experiment as MLflow opens it from a bare link (its GenAI layout);
- ``7_experiment_training_layout.png``: the same with ``workflowType=machine_learning`` (the study's links).

Bench-only tools, not project dependencies:

    apt-get install -y chromium     # Debian's Chromium, /usr/bin/chromium
    pip install playwright          # its Python driver (no `playwright install`: it drives that Chromium)

Usage (about a minute; most of it the server's start and the UI's first render):

    python bench/mlflow_screens.py --tracking-uri sqlite:////tmp/smoke1/runs/mlflow.db \\
        --study scaling --preset smoke --out /tmp/screens
"""
from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import tracking  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1800, "height": 1100}
TIMEOUT_MS = 90_000
TRANSFER_COLUMNS = re.compile(r"(fewshot/.+/5shot|finetune/.+/acc)")
PRETRAINING_RUNS = "params.model != ''"   # the runs table's filter: runs with a model
EXPAND_DESCRIPTION = "mlflow.experiment.metadata_editor.expand_button"
HIDDEN_ATTRIBUTES = ("Dataset", "Source", "Models")   # shown by default, empty for these runs
# A row of the column selector that names the group below it: "Attributes", "Metrics (22)" ...
FIND_COLUMN = """([group, name]) => {
  const tree = document.querySelector('[data-testid=column-selector-tree]');
  let header = null, inGroup = false;
  for (const row of tree ? tree.querySelectorAll(':scope > div > div > div > div') : []) {
    const text = row.innerText.trim();
    if (/^(Attributes|(Metrics|Parameters|Tags) \\(\\d+\\))$/.test(text)) {
      inGroup = text.startsWith(group);
      header = inGroup ? row : header;
    } else if (inGroup && text === name) {
      return row.lastElementChild;
    }
  }
  return header && header.querySelector('[role=img]');
}"""


@dataclass
class Shot:
    """A page to screenshot: its file, its URL fragment, a text that is there once it rendered,
    and what to do on it before the screenshot."""
    name: str
    fragment: str
    ready: str
    prepare: Callable = lambda page: None


# ----------------------------------------------------------------------------- the server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tracking_uri: str, port: int, log: Path) -> subprocess.Popen:
    """``mlflow server`` on the store, one worker, in its own process group; its output in ``log``."""
    command = ["mlflow", "server", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# ----------------------------------------------------------------------------- the pages

def toggle_column(page, group: str, name: str) -> None:
    """Ticks (or unticks) one column in the open column selector: searches it, opens its group
    if the search left it closed, clicks it."""
    page.get_by_placeholder("Search columns").fill(name)
    for _ in range(30):
        page.wait_for_timeout(300)
        target = page.evaluate_handle(FIND_COLUMN, [group, name]).as_element()
        if target is None:
            continue
        is_group = target.get_attribute("role") == "img"
        target.click()
        if not is_group:
            return
    raise TimeoutError(f"MLflow's column selector shows no column {name!r} under {group!r}")


def runs_table(columns: list[tuple[str, str]]) -> Callable:
    """Shows ``columns`` ((group, name)) instead of the empty attributes; expands the experiment's
    description, if it has one."""
    def prepare(page) -> None:
        page.get_by_text("Model training", exact=True).click()   # the classic runs view
        page.get_by_role("button", name="Columns").click()
        for group, name in [*(("Attributes", a) for a in HIDDEN_ATTRIBUTES), *columns]:
            toggle_column(page, group, name)
        page.keyboard.press("Escape")
        expand_description(page)
    return prepare


def shared_view(page) -> None:
    """The study's own view of the runs table (MLflow opens it in its GenAI layout: staying there
    keeps the view), its banner closed, the experiment's description expanded."""
    banner = page.get_by_text("You're viewing a shared view")
    banner.wait_for(timeout=TIMEOUT_MS)
    expand_description(page)


def expand_description(page) -> None:
    """Expands the experiment's description, if it has one."""
    expand = page.locator(f"[data-component-id='{EXPAND_DESCRIPTION}']")
    if expand.count():
        expand.first.click()


def show_more(page) -> None:
    """Expands a run's description."""
    more = page.get_by_text("Show more", exact=True)
    if more.count():
        more.first.click()


def first_figure(page) -> None:
    """Scrolls the HTML artifact's frame to its first image."""
    page.frame_locator("iframe").locator("img").first.scroll_into_view_if_needed(timeout=TIMEOUT_MS)


def shots(tracking_uri: str, study: str, preset: str) -> list[Shot]:
    c = tracking.client(tracking_uri)
    found = c.get_experiment_by_name(study)
    if found is None:
        raise SystemExit(f"{tracking_uri} has no study {study!r}: run it first (python -m pipeline.study {study} "
                         f"--preset {preset} --storage ...)")
    experiment = found.experiment_id
    study_run = tracking.find_study_run(tracking_uri, study, preset)
    pretrain = c.get_run(next(r.run_id for r in tracking.spec_runs(tracking_uri, study).values() if r.pretrained))
    columns = [*(("Parameters", p) for p in ("model", "steps") if p in pretrain.data.params),
               *(("Metrics", m) for m in sorted(pretrain.data.metrics) if m == "compute/exaflops"
                 or TRANSFER_COLUMNS.fullmatch(m))]
    flat = (f"runs?searchFilter={quote(PRETRAINING_RUNS)}&orderByKey="
            f"{quote('metrics.`compute/exaflops`')}&orderByAsc=true")   # a sort key other than time: not nested
    base = f"#/experiments/{experiment}"
    table = Shot("1_runs_table.png", f"{base}/{flat}", pretrain.info.run_name, runs_table(columns))
    if tracking.SHARED_VIEW_TAG + preset in c.get_experiment(experiment).tags:   # the study's own view
        view = f"{base}/runs?viewStateShareKey={preset}&{tracking.TRAINING_LAYOUT}"
        table = Shot("1_runs_table.png", view, pretrain.info.run_name, shared_view)
    return [table,
            Shot("2_pretraining_run.png", f"{base}/runs/{pretrain.info.run_id}", "Parameters"),
            Shot("3_study_run.png", f"{base}/runs/{study_run}", "Description", show_more),
            Shot("4_report_html.png", f"{base}/runs/{study_run}/artifacts/report/report.html", "report.html",
                 first_figure),
            *trial_shots(c, experiment, pretrain.info.run_id, base)]


def trial_shots(c, experiment: str, parent: str, base: str) -> list[Shot]:
    """The page of one of the pretraining run's fine-tuning trials (its description, source, the
    loss curve), if it has one; the experiment's page from a bare link and from the study's."""
    trials = c.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1)
    found = [Shot("5_finetune_trial.png", f"{base}/runs/{t.info.run_id}", "Description", show_more) for t in trials]
    return [*found, Shot("6_experiment_opened.png", f"{base}", "Description"),
            Shot("7_experiment_training_layout.png", f"{base}/runs?{tracking.TRAINING_LAYOUT}", "Description")]


def images_loaded(page) -> None:
    """Every image of the page and of its frames (the HTML artifact's) has loaded."""
    for frame in page.frames:
        frame.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)",
                                timeout=TIMEOUT_MS)


def take(page, server_url: str, shot: Shot, path: Path) -> None:
    page.goto(f"{server_url}/{shot.fragment}")
    page.get_by_text(shot.ready).first.wait_for(timeout=TIMEOUT_MS)
    close = page.get_by_role("button", name="Close")   # the assistant's side panel, open at first
    if close.count():
        close.first.click()
    shot.prepare(page)
    images_loaded(page)
    page.wait_for_timeout(1500)   # the layout pass after the last data arrived
    page.screenshot(path=str(path), full_page=True)


def screenshots(server_url: str, pages: list[Shot], out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        for shot in pages:
            take(page, server_url, shot, out / shot.name)
        browser.close()
    return [out / shot.name for shot in pages]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True, help="the study's store, e.g. sqlite:////path/mlflow.db")
    parser.add_argument("--study", default="scaling")
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--out", required=True, type=Path, help="folder for the PNG files")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pages = shots(args.tracking_uri, args.study, args.preset)
    port = free_port()
    server_url = f"http://127.0.0.1:{port}"
    server = start_server(args.tracking_uri, port, args.out / "mlflow_server.log")
    try:
        started = time.monotonic()
        tracking.check_server(server_url, wait_s=120)
        print(f"mlflow server up in {time.monotonic() - started:.1f} s at {server_url}")
        for path in screenshots(server_url, pages, args.out):
            print(path)
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
