"""The report as MLflow data of the study-level run (``log_study_run``), so that the MLflow UI
answers the study's question without opening a file:

- metrics (step k at the k-th writing of the report, 0 the first; MLflow shows the latest):
  ``fit/level``; per family with points, ``fit/<family>/points`` and, where it has a fit, the
  parameters of the law used by name (``fit/<family>/{exponent,scale}``, the saturating law's
  ``floor`` and ``offset``, ...; a blend of two forms: ``fit/<family>/<form>_<name>``, e.g.
  ``knee_exponent``), each with ``_lo`` and ``_hi`` (its interval); per pair of
  families whose multiplier is available, ``multiplier/<x>_vs_<y>`` with ``_lo`` and ``_hi`` and,
  where the study ran several seeds, ``_seed<k>`` (the multiplier of seed k's runs alone). A
  metric of an earlier report that this one has no value for is set to NaN (``outdated``);
- tags (they may change from one report to the next, which MLflow params may not): ``fit/metric``
  (the metric fitted), ``fit/<family>/law`` (a form of ``pipeline.analysis.scaling_laws.FORMS``, a blend ``a+b``, or
  ``none``) and the run's
  description ``mlflow.note.content`` (``descriptions.to_description``, with Figure 5's preview).

The experiment's description (``descriptions.experiment_description``) is set when a study starts
(``orchestrate.run_study``, with the link to its runs-table view).

``<family>`` is ``table.family_key``: ViT, BiT, Hybrid.
"""
from __future__ import annotations

import math

import pipeline.analysis.law_choice as law_choice
from pipeline import tracking
from pipeline.analysis.descriptions import to_description
from pipeline.analysis.wording import metric_parameter
from pipeline.analysis.report import FIGURE_COMPUTE, FIGURE_PREVIEW, Fits, Multiplier, Report
from pipeline.analysis.table import family_key

STUDY_RUN_PREFIXES = ("fit/", "multiplier/")


def _with_interval(name: str, value: float, interval: tuple[float, float] | None) -> dict[str, float]:
    return {name: value, **({f"{name}_lo": interval[0], f"{name}_hi": interval[1]} if interval else {})}


def family_metrics(ff: law_choice.FamilyFit) -> dict[str, float]:
    """``fit/<family>/...``: the points fitted, and every parameter of the law used with its interval."""
    prefix = f"fit/{family_key(ff.family)}"
    metrics = {f"{prefix}/points": float(len(ff.compute))}
    if ff.best() is None:
        return metrics
    fit, _ = ff.best()
    for p, value in fit.params.items():
        metrics.update(_with_interval(f"{prefix}/{metric_parameter(p)}", value, ff.intervals.get(fit.form, {}).get(p)))
    return metrics


def multiplier_metrics(m: Multiplier) -> dict[str, float]:
    """``multiplier/<x>_vs_<y>``, its interval and each seed's own value; nothing where not available."""
    if not m.available:
        return {}
    name = f"multiplier/{family_key(m.x)}_vs_{family_key(m.y)}"
    return {**_with_interval(name, m.multiplier, m.interval),
            **{f"{name}_seed{s}": v for s, v in m.by_seed if math.isfinite(v)}}


def study_run_metrics(fits: Fits | None) -> dict[str, float]:
    """Every family's fit and every compute multiplier available, as metrics (none without points)."""
    if fits is None:
        return {}
    metrics = {"fit/level": fits.level}
    for ff in fits.families.values():
        metrics.update(family_metrics(ff))
    for m in fits.multipliers:
        metrics.update(multiplier_metrics(m))
    return metrics


def outdated(recorded: dict[str, float], metrics: dict[str, float]) -> dict[str, float]:
    """NaN for the ``fit/`` and ``multiplier/`` metrics the run has from an earlier report and this one
    has no value for (MLflow cannot delete a metric; its latest value is what the UI shows)."""
    return {k: math.nan for k in recorded if k.startswith(STUDY_RUN_PREFIXES) and k not in metrics}


def study_run_tags(report: Report, figure_url: str | None) -> dict[str, str]:
    """The run's description, the metric fitted and each family's law used."""
    tags = {tracking.NOTE_TAG: to_description(report, figure_url)}
    if report.fits is not None:
        tags["fit/metric"] = report.fits.metric.column
        tags.update({f"fit/{family_key(ff.family)}/law": ff.best()[0].form if ff.best() else "none"
                     for ff in report.fits.families.values()})
    return tags


def preview_url(report: Report, run_id: str) -> str | None:
    """Figure 5's preview as the MLflow UI fetches an artifact: a URL relative to the server's root,
    where the UI is served (None when Figure 5 is not drawn)."""
    if not report.figure(FIGURE_COMPUTE).drawn:
        return None
    return f"get-artifact?path=report/{FIGURE_PREVIEW}.png&run_uuid={run_id}"


def log_study_run(report: Report, tracking_uri: str, run_id: str) -> None:
    """The report's answer on the study run (metrics and tags above); the report's files are logged
    under ``report/`` first (``files.write_report``)."""
    metrics = study_run_metrics(report.fits)
    stale = outdated(tracking.recorded_metrics(tracking_uri, run_id), metrics)
    values = {**metrics, **stale}
    # one step per writing of the report (0 the first): a re-run adds the next point, not another at 0
    step = 1 + max((tracking.last_step(tracking_uri, run_id, key) for key in values), default=-1)
    tracking.MetricLogger(tracking_uri, run_id).log_now(step, values)
    tracking.set_tags(tracking_uri, run_id, study_run_tags(report, preview_url(report, run_id)))
