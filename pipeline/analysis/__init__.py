"""The study's answer: MLflow runs -> one tidy table -> figures, frontiers, scaling-law fits and a
report, as in Sections 4.3-4.4 of the ViT paper. Method and limits: docs/analysis.md.

- ``table``: the run table (one row per RunSpec of the preset, never fewer) and what to plot
  from it: which runs are points, which metrics, their long format, Pareto frontiers.
- ``curves``: the runs' learning curves (``read_curves``), their (run, checkpoint) points and the
  compute-efficient frontier the scaling laws are fitted on (``EARLY_FRACTION``).
- ``figures``: Figure 5 (accuracy against compute), Figure 4 (against data set size) and the
  scaling-law fits, as PNG and SVG.
- ``report``: the :class:`Report`, what the report says as data (counts, typed problems and the
  sanity checks' findings, runs, figures drawn, fits, verdicts and compute multipliers);
  ``build`` makes it from a run table (``build_report``, ``study_report``), with the problems and
  sanity checks of ``sanity``.
- ``scaling_laws`` (the forms of a law and their robust fit), ``law_choice`` (which law a family
  uses: rolling origin), ``law_bootstrap`` (intervals) and ``multipliers`` (compute multipliers
  between families): the scaling-law maths; ``forecast`` and ``suggest`` use it for runs not made.
- ``render``: the Report as report.md (``to_markdown``) and report.html (``to_html``);
  ``fits_json`` as fits.json (``to_fits_json``, ``to_sanity_json``); ``descriptions`` as the MLflow
  descriptions of the study run (``to_description``) and its experiment (``experiment_description``).
- ``study_run``: the Report as MLflow data of the study-level run (``log_study_run``: the fits and
  multipliers as metrics, ``study_run_metrics``; the law and the metric fitted as tags; the
  description).
- ``files``: the files in a folder (``write_files``), and ``write_report``, which the
  orchestrator calls: ``analysis.write_report(study, preset, tracking_uri=..., out_dir=...)``.

The names below are this package's interface; the modules' other names are theirs.
"""
from pipeline.analysis.curves import EARLY_FRACTION, average_replicates, checkpoint_points, mark_frontier, read_curves
from pipeline.analysis.figures import family_styles, figure_compute, figure_data, figure_fits, save_figure
from pipeline.analysis.files import write_files, write_report
from pipeline.analysis.descriptions import experiment_description, to_description
from pipeline.analysis.fits_json import to_fits_json, to_sanity_json
from pipeline.analysis.render import to_html, to_markdown
from pipeline.analysis.build import build_report, scaling_fits, study_report
from pipeline.analysis.report import (LEVEL, SANITY_CHECKS, SANITY_KINDS, Fallback, FamilyVerdict, FigureEntry,
                                      FitBasis, Fits, FitSource, Multiplier, Problem, ProblemKind, Report,
                                      ReportOptions, RunRow, Verdict)
from pipeline.analysis.study_run import log_study_run, study_run_metrics
from pipeline.analysis.table import (FEWSHOT_SHOT, Metric, preset_metrics, family_key, family_name, family_order,
                                     pareto_frontier, points, pretrained, run_labels, run_table, transfer_metrics,
                                     with_average)

__all__ = ["EARLY_FRACTION", "FEWSHOT_SHOT", "LEVEL", "SANITY_CHECKS", "SANITY_KINDS", "Fallback", "FamilyVerdict",
           "average_replicates",
           "FigureEntry", "FitBasis", "FitSource", "Fits", "Metric", "Multiplier", "Problem", "ProblemKind", "Report",
           "ReportOptions", "RunRow", "Verdict", "build_report", "checkpoint_points", "preset_metrics",
           "experiment_description", "family_key", "family_name", "family_order", "family_styles", "figure_compute",
           "figure_data", "figure_fits", "log_study_run", "mark_frontier", "pareto_frontier", "points", "pretrained",
           "read_curves", "run_labels", "run_table", "save_figure", "scaling_fits", "study_report",
           "study_run_metrics", "to_description", "to_fits_json", "to_html", "to_markdown", "to_sanity_json",
           "transfer_metrics", "with_average", "write_files", "write_report"]
