"""Building the :class:`~pipeline.analysis.report.Report` of a study from its run table
(:func:`build_report`, :func:`study_report`): the plotted points, the problems and sanity checks
(``pipeline.analysis.sanity``), the figures drawn, and the scaling-law fits of the headline metric
with the compute multipliers between families (:func:`scaling_fits`, on
``pipeline.analysis.law_choice``: per family four forms, the law used chosen by rolling origin, its
bootstrap intervals) and the forecasts of configurations not run (``pipeline.analysis.forecast``).

The fits are made on each family's compute-efficient frontier over every (run, checkpoint) point
of the learning curves (``pipeline.analysis.curves``), checkpoints below ``EARLY_FRACTION`` of their
run's compute left out; on the few-shot part of the headline, since fine-tuning has no curve. A
study without learning curves is fitted on its end-of-run points, as before (``FitBasis``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

import pipeline.analysis.law_choice as law_choice
from pipeline import tracking
from pipeline.analysis.curves import (EARLY_FRACTION, average_replicates, checkpoint_points, curve_lines, fit_metric,
                                      mark_frontier, read_curves, replicate_labels, seeds_per_configuration)
from pipeline.analysis.forecast import ForecastTarget, forecast, missing_targets, named_targets, track_record
from pipeline.analysis.multipliers import compute_multiplier
from pipeline.analysis.report import (FIGURE_COMPUTE, FIGURE_DATA, FIGURE_FITS, LEVEL, Fallback, FamilyVerdict,
                                      FigureEntry, FitBasis, Fits, FitSource, Multiplier, Report, ReportOptions,
                                      RunRow, Verdict)
from pipeline.analysis.sanity import find_problems, sanity_checks
from pipeline.analysis.table import (FEWSHOT_SHOT, Metric, preset_metrics, family_order, float_or_none, headline,
                                     points, pretrained, run_table, table_rows, transfer_metrics, with_average)
from pipeline.spec import Study

def status_counts(table: pd.DataFrame) -> dict[str, int]:
    """Runs per status: every tracking status (0 where none), then ``unknown`` if any."""
    counts = table["status"].value_counts()
    statuses = tracking.STATUSES + (("unknown",) if "unknown" in counts else ())
    return {s: int(counts.get(s, 0)) for s in statuses}


def runtable_rows(table: pd.DataFrame, metrics: list[Metric]) -> list[RunRow]:
    """The runs table: each run with its plotted accuracies (``table`` has their columns)."""
    return [RunRow(id=str(row["id"]), model=str(row["model"]), family=str(row["family"]), subset=str(row["subset"]),
                   params=float(row["params"]), exaflops=float(row["exaflops"]), status=str(row["status"]),
                   accuracy={m.column: float(row[m.column]) for m in metrics}, steps=float_or_none(row["steps"]),
                   epochs=float_or_none(row["epochs"])) for row in table_rows(table)]



def family_points(long: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{family: (exaFLOPs, accuracy as a fraction)} of one metric's points (accuracy in %), the
    families in the paper's order: what each family's fit is made on."""
    out = {}
    for family in family_order(long["family"]):
        group = long[long["family"] == family]
        accuracy = (group["accuracy"] / 100).clip(upper=1 - 1e-6)  # a perfect score has no log error
        out[family] = (group["exaflops"].to_numpy(dtype=float), accuracy.to_numpy(dtype=float))
    return out


def fit_families(points: dict[str, tuple[np.ndarray, np.ndarray]], *, seed: int = 0, n_boot: int = 1000,
                 level: float = LEVEL) -> dict[str, law_choice.FamilyFit]:
    """Every family's fit (``fit_family``) from ``family_points``, one generator in family order."""
    rng = np.random.default_rng(seed)
    return {family: law_choice.fit_family(family, compute, accuracy, rng=rng, n_boot=n_boot, level=level)
            for family, (compute, accuracy) in points.items()}


def scaling_fits(long: pd.DataFrame, metric_label: str, *, seed: int = 0, n_boot: int = 1000,
                 level: float = LEVEL) -> tuple[dict[str, law_choice.FamilyFit], list[dict]]:
    """Fits per family on one metric, and the compute multiplier of every pair of fitted families
    (in the paper's order: how much more compute than ViT the others need)."""
    family_fits = fit_families(family_points(long[long["metric"] == metric_label]), seed=seed, n_boot=n_boot,
                               level=level)
    order = list(family_fits)
    multipliers = []
    for i, y in enumerate(order):
        for x in order[i + 1:]:
            result = compute_multiplier(family_fits[x], family_fits[y])
            multipliers.append(result or {"x": x, "y": y, "multiplier": None})
    return family_fits, multipliers


def family_verdict(family: str, ff: law_choice.FamilyFit | None) -> FamilyVerdict:
    """Which law a family's fit (None: the family has no point) came to, and why."""
    if ff is None:
        return FamilyVerdict(family, Verdict.NO_POINTS)
    verdict = Verdict.BETTER if ff.better else Verdict.NO_VERDICT if ff.best() else Verdict.NO_FIT
    return FamilyVerdict(family, verdict, better=ff.better, reason=ff.reason)


def replicated(points: pd.DataFrame) -> bool:
    """Whether some configuration has points from runs of several seeds."""
    return bool((seeds_per_configuration(points) > 1).any())


def end_of_run_basis(long: pd.DataFrame, headline_metric: Metric, fallback: Fallback,
                     labels: dict[str, str]) -> FitBasis:
    """Today's fits without learning curves: every run's end-of-run point of the headline (the mean
    over the seeds of a configuration run with several), all used."""
    rows = long[long["metric"] == headline_metric.label]
    points = rows.assign(step=np.nan, total_exaflops=rows["exaflops"], fraction=1.0, source="end")
    return FitBasis(headline_metric, headline_metric, FitSource.END_OF_RUN,
                    average_replicates(points, labels).assign(early=False, used=True), fallback=fallback,
                    seed_points=points if replicated(points) else None)


def fit_basis(plotted: pd.DataFrame, long: pd.DataFrame, metrics: list[Metric],
              curves: pd.DataFrame | None) -> FitBasis:
    """The points to fit: each family's frontier over the (configuration, checkpoint) points of the
    headline's few-shot part, or, without learning curves, the end-of-run points of the headline;
    the runs of a configuration run with several seeds averaged (``average_replicates``)."""
    head, labels = headline(metrics), replicate_labels(plotted)
    chosen = fit_metric(metrics, head)
    if chosen is None:
        return end_of_run_basis(long, head, Fallback.NO_FEWSHOT, labels)
    metric, columns = chosen
    candidates = checkpoint_points(plotted, curves, columns)
    if not (candidates["source"] == "curve").any():
        return end_of_run_basis(long, head, Fallback.NO_CURVES, labels)
    return FitBasis(metric, head, FitSource.FRONTIER,
                    mark_frontier(average_replicates(candidates, labels), EARLY_FRACTION),
                    early_fraction=EARLY_FRACTION, seed_points=candidates if replicated(candidates) else None)


def seed_multipliers(basis: FitBasis) -> dict[tuple[str, str], tuple[tuple[int, float], ...]]:
    """{(x, y): ((seed, multiplier), ...)}: each pair's compute multiplier from the runs of one seed
    alone, for every seed of a replicated study (its own frontier, law choice and point fit; NaN
    where not available). Empty when no configuration was run with several seeds."""
    if not basis.seeds:
        return {}
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for seed, seed_runs in basis.seed_points.groupby("seed"):
        used = (mark_frontier(seed_runs, basis.early_fraction) if basis.source == FitSource.FRONTIER else
                seed_runs.assign(used=True))
        _, pairs = scaling_fits(used[used["used"]].assign(metric=basis.metric.label), basis.metric.label, n_boot=0)
        for m in pairs:
            value = m["multiplier"] if m["multiplier"] is not None else np.nan
            out.setdefault((m["x"], m["y"]), []).append((int(seed), float(value)))
    return {pair: tuple(values) for pair, values in out.items()}


def fit_headline(basis: FitBasis, families: list[str], options: ReportOptions, targets: list[ForecastTarget] = ()) -> Fits:
    """The fits of ``basis.metric`` on its used points, verdicts for ``families`` (those with
    finished pretraining), each family's track record and the forecasts of ``targets``."""
    used = basis.used.assign(metric=basis.metric.label)
    family_fits, multipliers = scaling_fits(used, basis.metric.label, seed=options.seed, n_boot=options.n_boot,
                                            level=options.level)
    by_seed = seed_multipliers(basis)
    return Fits(basis.metric, options.level, family_fits,
                verdicts=tuple(family_verdict(f, family_fits.get(f)) for f in family_order(families)),
                multipliers=tuple(Multiplier(**m, by_seed=by_seed.get((m["x"], m["y"]), ())) for m in multipliers),
                basis=basis,
                forecasts=tuple(forecast(family_fits.get(t.family), t, options.level) for t in targets),
                track=tuple(p for ff in family_fits.values() for p in track_record(ff)))


def figure_entries(long: pd.DataFrame, data_long: pd.DataFrame, several_subsets: bool,
                   fits: Fits | None) -> tuple[FigureEntry, ...]:
    """Which figures are drawn, and why the others are not."""
    if long.empty:
        return tuple(FigureEntry(name, False, "no_points") for name in (FIGURE_COMPUTE, FIGURE_DATA, FIGURE_FITS))
    data = (FigureEntry(FIGURE_DATA, False, "one_subset") if not several_subsets else
            FigureEntry(FIGURE_DATA, False, "no_subset_sizes") if data_long.empty else FigureEntry(FIGURE_DATA, True))
    fitted = fits is not None and fits.any_fit
    return FigureEntry(FIGURE_COMPUTE, True), data, FigureEntry(FIGURE_FITS, fitted, None if fitted else "no_fit")


def plotted_points(table: pd.DataFrame, shot: int) -> tuple[pd.DataFrame, list[Metric], pd.DataFrame]:
    """The table with the average column (if any), the plotted metrics, and Figure 5's points."""
    plotted, metrics = with_average(table, transfer_metrics(table, shot))
    return plotted, metrics, points(plotted, metrics)


def build_report(table: pd.DataFrame, *, title: str, expected: list[str], several_subsets: bool,
                 options: ReportOptions = ReportOptions(), curves: pd.DataFrame | None = None,
                 targets: list[ForecastTarget] = ()) -> Report:
    """The Report of a run table (``run_table``'s columns): ``expected`` are the planned transfer
    metrics of every run, ``several_subsets`` whether the preset has several data subsets (Figure 4),
    ``curves`` the learning curves (``curves.read_curves``; None: the fits use end-of-run points),
    ``targets`` configurations to forecast beside the runs whose pretraining has not finished."""
    plotted, metrics, long = plotted_points(table, options.shot)
    data_metrics = [m for m in metrics if m.kind == "fewshot"]
    data_long = points(plotted, data_metrics).dropna(subset=["subset_images"]) if data_metrics else long[:0]
    finished = pretrained(table)
    fits = None if long.empty else fit_headline(fit_basis(plotted, long, metrics, curves),
                                                list(table.loc[finished, "family"]), options,
                                                missing_targets(table, finished) + list(targets))
    sanity, checks = sanity_checks(plotted, metrics, fits)
    return Report(title=title, counts=status_counts(table), problems=tuple(find_problems(table, expected) + sanity),
                  checks=checks, metrics=tuple(metrics), runs=tuple(runtable_rows(plotted, metrics)),
                  figures=figure_entries(long, data_long, several_subsets, fits), fits=fits,
                  table=table, points=long, data_points=data_long, curves=curve_lines(plotted, curves, metrics))


def study_report(study: Study, preset: str, *, tracking_uri: str | None,
                 options: ReportOptions = ReportOptions()) -> Report:
    """The Report of a preset of a study, from its plan and its MLflow runs (``run_table``) with
    their learning curves of the plotted few-shot metrics (``read_curves``)."""
    p = study.preset(preset)
    targets = named_targets(study, preset, options.forecast)   # bad --forecast text fails before MLflow is read
    table, curves = table_and_curves(study, preset, tracking_uri=tracking_uri, shot=options.shot)
    return build_report(table, title=f"Study `{study.name}`, preset `{preset}`: {study.title}",
                        expected=preset_metrics(p), several_subsets=len(p.subsets) > 1, options=options,
                        curves=curves, targets=targets)


def table_and_curves(study: Study, preset: str, *, tracking_uri: str | None,
                     shot: int = FEWSHOT_SHOT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A preset's run table and the learning curves of its plotted few-shot metrics."""
    table = run_table(study, preset, tracking_uri=tracking_uri)
    fewshot = [m.column for m in transfer_metrics(table, shot) if m.kind == "fewshot"]
    return table, read_curves(table, tracking_uri, fewshot)


def study_basis(study: Study, preset: str, *, tracking_uri: str | None,
                shot: int = FEWSHOT_SHOT) -> FitBasis | None:
    """The points the preset's report fits its scaling laws on (``FitBasis``), without fitting
    them; None when no run is a point yet."""
    table, curves = table_and_curves(study, preset, tracking_uri=tracking_uri, shot=shot)
    plotted, metrics, long = plotted_points(table, shot)
    return None if long.empty else fit_basis(plotted, long, metrics, curves)
