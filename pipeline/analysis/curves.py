"""Learning curves and the compute-efficient frontier the scaling laws are fitted on.

- **Reading** (``read_curves``): pretraining logs, at each validation step s, few-shot probe
  accuracies ``curve/fewshot/<dataset>/<k>shot`` and the compute spent so far ``curve/exaflops``,
  both with MLflow step s. One ``tracking.metric_history`` call per run and metric gives a long
  table of (run id, family, model, subset, step, exaflops, metric, accuracy) points, accuracy a
  fraction as logged. Only runs whose pretraining finished, and that logged curves (their
  ``curve/...`` columns in the run table), are read.
- **Checkpoint points** (``checkpoint_points``): every (run, checkpoint) point of one metric (or
  the mean of several), from the curves, plus each run's end-of-run point (the transfer stage's
  evaluation), which stands for the final checkpoint; each with its fraction of its run's total
  (planned) compute.
- **The frontier** (``mark_frontier``): per family, the points no cheaper point beats, among the
  points at or above ``EARLY_FRACTION`` of their run's compute.
- **Curve lines** (``curve_lines``): each run's curve in every panel of Figure 5 that has one.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import tracking
from pipeline.analysis.table import (AVERAGE, CURVE_COMPUTE, CURVE_PREFIX, Metric, pareto_frontier, pretrained,
                                     replicates, run_labels)

# Checkpoints below this fraction of their own run's total compute are not frontier points: recent
# scaling-law practice drops the warm-up-dominated start of each run, where the learning rate is still
# rising and the weights far from anything the run ends at. 0.2 keeps most of each curve.
EARLY_FRACTION = 0.2
# A curve point within this fraction of its run's total compute is the final checkpoint; the end-of-run
# point (the transfer stage's evaluation, averaged over more draws) stands for it where there is one.
FINAL_TOLERANCE = 1e-3
CURVE_COLUMNS = ("id", "family", "model", "subset", "step", "exaflops", "metric", "accuracy")
POINT_COLUMNS = ("id", "family", "model", "subset", "label", "replicate", "seed", "step", "exaflops",
                 "total_exaflops", "fraction", "accuracy", "source")
MEANS = ("exaflops", "total_exaflops", "fraction", "accuracy")   # what averaging replicates averages
FEWSHOT_AVERAGE = "fewshot_average"   # the column name of the mean of several few-shot metrics


def curve_column(column: str) -> str:
    """The learning-curve metric of a few-shot metric: ``fewshot/digits/5shot`` -> ``curve/fewshot/digits/5shot``."""
    return CURVE_PREFIX + column


def has_curves(table: pd.DataFrame) -> pd.Series:
    """Rows whose pretraining finished and that logged learning curves."""
    if CURVE_COMPUTE not in table or "mlflow_run_id" not in table:
        return pd.Series(False, index=table.index)
    return pretrained(table) & table[CURVE_COMPUTE].notna() & table["mlflow_run_id"].notna()


def read_curves(table: pd.DataFrame, tracking_uri: str | None, columns: list[str]) -> pd.DataFrame:
    """The learning curves of ``columns`` (few-shot metric columns, e.g. ``fewshot/digits/5shot``)
    for every run of the table that has them: one ``metric_history`` call per run for the compute
    and one per metric the run logged. Long format (``CURVE_COLUMNS``); ``metric`` is the column."""
    rows: list[dict] = []
    if tracking_uri:
        for _, run in table[has_curves(table)].iterrows():
            logged = [c for c in columns if pd.notna(run.get(curve_column(c)))]
            rows += _run_curves(tracking_uri, run, logged)
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def _run_curves(tracking_uri: str, run: pd.Series, columns: list[str]) -> list[dict]:
    """One run's curve points: each step of each metric that also has the compute logged."""
    run_id = str(run["mlflow_run_id"])
    compute = dict(tracking.metric_history(tracking_uri, run_id, CURVE_COMPUTE))
    about = {k: run[k] for k in ("id", "family", "model", "subset")}
    rows = []
    for column in columns:
        for step, value in dict(tracking.metric_history(tracking_uri, run_id, curve_column(column))).items():
            if step in compute:
                rows.append({**about, "step": step, "exaflops": compute[step], "metric": column, "accuracy": value})
    return rows


# ----------------------------------------------------------------------------- which metric

def fit_metric(metrics: list[Metric], headline: Metric) -> tuple[Metric, tuple[str, ...]] | None:
    """The metric a frontier fit is on, with the few-shot columns it is the mean of: the headline
    when it is few-shot (or an average of few-shot metrics only); else the few-shot part of it (the
    one few-shot metric, or the mean of several), since fine-tuning has no learning curve. None
    without a few-shot metric."""
    fewshot = [m for m in metrics if m.kind == "fewshot"]
    if headline.kind == "fewshot":
        return headline, (headline.column,)
    if not fewshot:
        return None
    if len(fewshot) == 1:
        return fewshot[0], (fewshot[0].column,)
    columns = tuple(m.column for m in fewshot)
    if all(m.kind != "finetune" for m in metrics):
        return headline, columns
    return Metric(FEWSHOT_AVERAGE, f"few-shot average of {len(fewshot)}", "average"), columns


def curve_metrics(metrics: list[Metric]) -> list[tuple[Metric, tuple[str, ...]]]:
    """The plotted metrics that have learning curves, with the columns each is the mean of: every
    few-shot metric, and the average when it averages few-shot metrics only."""
    out = [(m, (m.column,)) for m in metrics if m.kind == "fewshot"]
    parts = [m for m in metrics if m.kind != "average"]
    average = [m for m in metrics if m.column == AVERAGE]
    if average and parts and all(m.kind == "fewshot" for m in parts):
        out.append((average[0], tuple(m.column for m in parts)))
    return out


# ----------------------------------------------------------------------------- points and frontier

def _mean_of(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    """The mean of ``columns`` per row, NaN where any is missing."""
    return frame.reindex(columns=list(columns)).astype(float).mean(axis=1, skipna=False)


def _curve_points(curves: pd.DataFrame | None, columns: tuple[str, ...]) -> pd.DataFrame:
    """(id, step, exaflops, accuracy) of the curves: the mean of ``columns`` at each step that has all."""
    if curves is None or curves.empty:
        return pd.DataFrame(columns=["id", "step", "exaflops", "accuracy"])
    mine = curves[curves["metric"].isin(columns)]
    wide = mine.groupby(["id", "step", "metric"])["accuracy"].last().unstack("metric")
    compute = mine.groupby(["id", "step"])["exaflops"].last()
    out = pd.DataFrame({"accuracy": _mean_of(wide, columns), "exaflops": compute}).dropna()
    return out.reset_index()


def checkpoint_points(table: pd.DataFrame, curves: pd.DataFrame | None, columns: tuple[str, ...]) -> pd.DataFrame:
    """Every (run, checkpoint) point of the mean of ``columns``, for runs whose pretraining finished:
    the curves' points (``source`` "curve") and each run's end-of-run point from the table ("end"),
    which replaces the curve's point at the run's total compute. Accuracy in percent, ``fraction``
    of the run's total (planned) compute; ``POINT_COLUMNS``."""
    runs = table[pretrained(table) & (pd.to_numeric(table["exaflops"], errors="coerce") > 0)]
    about = runs[["id", "family", "model", "subset"]].assign(label=run_labels(runs), replicate=replicates(runs),
                                                             seed=runs.get("seed", 0),
                                                             total_exaflops=runs["exaflops"].astype(float))
    ends = pd.DataFrame({"id": runs["id"], "step": np.nan, "exaflops": runs["exaflops"].astype(float),
                         "accuracy": _mean_of(runs, columns), "source": "end"}).dropna(subset=["accuracy"])
    along = _curve_points(curves, columns).assign(source="curve")
    found = [f for f in (along, ends) if not f.empty]
    if not found:
        return pd.DataFrame(columns=list(POINT_COLUMNS))
    points = pd.concat(found, ignore_index=True).merge(about, on="id")
    points["fraction"] = points["exaflops"].astype(float) / points["total_exaflops"]
    final = (points["source"] == "curve") & (points["fraction"] >= 1 - FINAL_TOLERANCE) & points["id"].isin(ends["id"])
    points = points[~final & (points["exaflops"].astype(float) > 0)]
    points = points.assign(accuracy=points["accuracy"].astype(float) * 100, exaflops=points["exaflops"].astype(float))
    return points.sort_values(["total_exaflops", "id", "exaflops"]).reset_index(drop=True)[list(POINT_COLUMNS)]


def average_replicates(points: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """``points`` (``POINT_COLUMNS``) with the points of runs that differ only by their seed averaged:
    one point per replicate group and checkpoint (the same step; the end-of-run points together),
    the mean of ``MEANS`` over the seeds that have it, ``seeds`` how many and ``spread`` the standard
    deviation of their accuracy (points; NaN for one seed). An averaged point's ``id`` is its group's
    (``replicate``), its ``label`` the entry in ``labels`` (the runs' label without the seed), its
    ``seed`` NaN; a point of one run keeps its own."""
    step = points["step"].astype(float).fillna(-1.0)   # the end-of-run points (no step) group together
    grouped = points.assign(_step=step).groupby(["replicate", "source", "_step"], sort=False)
    out = grouped[[c for c in points if c not in (*MEANS, "_step")]].first()
    out = out.join(grouped[list(MEANS)].mean()).join(grouped["accuracy"].agg(seeds="count", spread="std"))
    out = out.reset_index(drop=True)
    several = out["seeds"] > 1
    out = out.assign(id=out["id"].where(~several, out["replicate"]), seed=out["seed"].where(~several),
                     label=out["label"].where(~several, out["replicate"].map(labels).fillna(out["label"])))
    return out[[*points.columns, "seeds", "spread"]].sort_values(["total_exaflops", "id", "exaflops"],
                                                                 ignore_index=True)


def seeds_per_configuration(points: pd.DataFrame) -> pd.Series:
    """How many seeds each configuration (replicate group) of ``points`` has points from."""
    return points.groupby("replicate")["seed"].nunique()


def replicate_labels(table: pd.DataFrame) -> dict[str, str]:
    """{replicate group: the label its runs have without their seed}."""
    return dict(zip(replicates(table), run_labels(table.assign(seed=np.nan))))


def mark_frontier(points: pd.DataFrame, early_fraction: float = EARLY_FRACTION) -> pd.DataFrame:
    """``points`` with ``early`` (below ``early_fraction`` of its run's compute) and ``used`` (on its
    family's compute-efficient frontier: no cheaper point of the family that is not early has at
    least its accuracy)."""
    points = points.assign(early=points["fraction"] < early_fraction, used=False)
    for _, group in points[~points["early"]].groupby("family"):
        points.loc[pareto_frontier(group).index, "used"] = True
    return points


def curve_lines(table: pd.DataFrame, curves: pd.DataFrame | None, metrics: list[Metric]) -> pd.DataFrame:
    """Each run's learning curve in every plotted metric that has one (``curve_metrics``): its points
    and its end-of-run point, accuracy in percent, ``metric`` the plotted label. Runs without a
    curve have no line."""
    lines = []
    for metric, columns in curve_metrics(metrics):
        points = checkpoint_points(table, curves, columns)
        with_curve = points.groupby("id")["source"].transform(lambda s: (s == "curve").any()).astype(bool)
        lines.append(points[with_curve].assign(metric=metric.label))
    return pd.concat(lines, ignore_index=True) if lines else pd.DataFrame(columns=[*POINT_COLUMNS, "metric"])
