"""The report on disk: runs.csv, the figures (PNG and SVG), fits.json, report.md and report.html
in a folder (``write_files``), and the study's report written and logged to its study-level MLflow
run with its answer as the run's metrics, tags and description (``write_report``, what the
orchestrator calls; ``pipeline.analysis.study_run``)."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline import tracking
from pipeline.analysis.figures import (figure_compute, figure_data, figure_fits, metric_name, save_figure,
                                       save_preview)
from pipeline.analysis.fits_json import to_fits_json, to_sanity_json
from pipeline.analysis.render import to_html, to_markdown
from pipeline.analysis.build import study_report
from pipeline.analysis.report import FIGURE_COMPUTE, FIGURE_DATA, FIGURE_FITS, FIGURE_PREVIEW, Report, ReportOptions
from pipeline.analysis.study_run import log_study_run
from pipeline.spec import Study

DRAW = {FIGURE_COMPUTE: lambda report: figure_compute(report.points, report.curves),
        FIGURE_DATA: lambda report: figure_data(report.data_points),
        FIGURE_FITS: lambda report: figure_fits(report.fits.families,
                                                metric_name(report.fits.metric, report.metrics),
                                                report.fits.basis.points)}


def write_figures(report: Report, out_dir: Path) -> dict[str, Path]:
    """The figures the report draws (PNG and SVG), and Figure 5's preview for the MLflow description."""
    paths = {}
    for figure in report.figures:
        if figure.drawn:
            paths.update({path.name: path for path in save_figure(DRAW[figure.name](report), out_dir, figure.name)})
    if report.figure(FIGURE_COMPUTE).drawn:
        preview = save_preview(paths[f"{FIGURE_COMPUTE}.png"], FIGURE_PREVIEW)
        paths[preview.name] = preview
    return paths


def write_files(report: Report, out_dir: Path) -> dict[str, Path]:
    """The report's files in ``out_dir``: runs.csv (the whole run table), the figures it draws,
    fits.json (where there are points to fit; with the sanity checks' findings), report.md and
    report.html (the same, figures inlined). Returns {file name: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"runs.csv": out_dir / "runs.csv"}
    report.table.to_csv(paths["runs.csv"], index=False)
    paths.update(write_figures(report, out_dir))
    if report.fits is not None:
        paths["fits.json"] = out_dir / "fits.json"
        summary = {**to_fits_json(report.fits), "sanity": to_sanity_json(report)}
        paths["fits.json"].write_text(json.dumps(summary, indent=2))
    paths["report.md"] = out_dir / "report.md"
    paths["report.md"].write_text(to_markdown(report))
    paths["report.html"] = out_dir / "report.html"
    images = {name: path.read_bytes() for name, path in paths.items() if name.endswith(".png")}
    paths["report.html"].write_text(to_html(report, images))
    return paths


def write_report(study: Study, preset: str, *, tracking_uri: str | None, out_dir: Path,
                 study_run_id: str | None = None, options: ReportOptions = ReportOptions()) -> dict[str, Path]:
    """The study report in ``out_dir``: report.md, report.html, runs.csv, fits.json and the figures
    (PNG and SVG). With ``study_run_id``, logged under ``report/`` of that MLflow run, with the
    fits, multipliers and a description on the run (``study_run.log_study_run``)."""
    report = study_report(study, preset, tracking_uri=tracking_uri, options=options)
    paths = write_files(report, out_dir)
    if study_run_id is not None:
        tracking.log_files(tracking_uri, study_run_id, paths.values(), "report")
        log_study_run(report, tracking_uri, study_run_id)
    return paths
