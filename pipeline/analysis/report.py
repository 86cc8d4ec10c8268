"""What the report says, as data: a :class:`Report`, built from a run table by ``build_report``.

A Report holds the run counts by status, the runs table, the problems of the study as typed
:class:`Problem` records (runs not started, unfinished or failed, planned metrics missing,
transfer metrics of unfinished pretraining; and the sanity checks' findings, ``SANITY_KINDS``:
runs that did not learn, fine-tuning below few-shot, accuracy falling with compute, logged compute
that differs from the plan, fitted parameters at a bound, families with too few points to fit),
how much each sanity check examined, which figures are drawn (and why not), and the scaling-law
fits of the headline metric with the compute multipliers between families (``scaling_fits``, on
``pipeline.analysis.scaling_laws``: per family four forms, the law used chosen by rolling origin, its bootstrap
intervals), and the forecasts of configurations not run with each law's track record
(``pipeline.analysis.forecast``).

The fits are made on each family's compute-efficient frontier over every (run, checkpoint) point
of the learning curves (``pipeline.analysis.curves``), checkpoints below ``EARLY_FRACTION`` of their
run's compute left out; on the few-shot part of the headline, since fine-tuning has no curve. A
study without learning curves is fitted on its end-of-run points, as before (``FitBasis``).

Nothing here writes text or files: ``pipeline.analysis.render`` renders a Report as report.md and
fits.json, ``pipeline.analysis.files`` writes them with runs.csv and the figures.
"""
from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd

import pipeline.analysis.law_choice as law_choice
import pipeline.analysis.scaling_laws as scaling_laws
from pipeline.analysis.multipliers import compute_multiplier
from pipeline import tracking
from pipeline.analysis.forecast import Forecast, Target, TrackPoint, forecast, missing_targets, named_targets, track_record
from pipeline.analysis.curves import (EARLY_FRACTION, checkpoint_points, curve_lines, fit_metric, mark_frontier,
                                      read_curves)
from pipeline.analysis.table import (FEWSHOT_SHOT, Metric, expected_metrics, family_order, points, pretrained,
                                     run_table, transfer_metrics, with_average)
from pipeline.spec import Study

# Interval level of the report: the level at which the intervals are measured to cover as stated
# for families of 5-16 runs (bench/bench_fits.py; at 95% they cover about 86% with 7 runs).
LEVEL = 0.8
COMPUTE_TOLERANCE = 0.05   # logged compute that differs from the plan by more than this is a problem
# A run "did not learn" when its pretraining val_prec1 <= baseline + max(LEARNED_MARGIN, LEARNED_MARGIN_REL *
# baseline), the baseline being the precision@1 of always predicting the most common class: 2 points over
# it, or 10% of it when that is more (a 50% baseline needs 55%). Below that the checkpoint is barely better
# than a constant, whatever its transfer numbers say.
LEARNED_MARGIN, LEARNED_MARGIN_REL = 0.02, 0.1
# A run whose headline accuracy is more than this (a fraction: 1 accuracy point) below that of a run of the
# same family and subset with less compute is a finding. Small on purpose: on small downstream sets noise
# alone can exceed it, and the line gives the gap so the reader can weigh it.
DROP_TOLERANCE = 0.01
VAL_PREC1, VAL_BASELINE = "pretrain/val_prec1", "pretrain/val_prec1_baseline"
FIGURE_COMPUTE, FIGURE_DATA, FIGURE_FITS = "performance_vs_compute", "performance_vs_data", "scaling_fits"
# Figure 5, small enough to show in the MLflow description of the study run (MLflow sizes no image)
FIGURE_PREVIEW = "performance_vs_compute_preview"


@dataclass(frozen=True)
class ReportOptions:
    """How the report is computed: the bootstrap's seed and replicates, the interval level, the
    few-shot shot count plotted (the largest measured where that one is absent), and configurations
    to forecast beside the preset's (``MODEL@LENGTH``, ``pipeline.spec.named_entry``)."""
    seed: int = 0
    n_boot: int = 1000
    level: float = LEVEL
    shot: int = FEWSHOT_SHOT
    forecast: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- the records

class ProblemKind(enum.StrEnum):
    """What a :class:`Problem` is about (equal to its string: ``ProblemKind.FAILED == "failed"``)."""
    NOT_STARTED = "not_started"            # status new: no MLflow run
    UNFINISHED = "unfinished"              # status partial: running or interrupted
    FAILED = "failed"                      # status failed
    UNKNOWN_STATUS = "unknown_status"      # no tracking URI, so no status
    MISSING_METRIC = "missing_metric"      # a started run lacks a planned metric
    UNUSED_METRICS = "unused_metrics"      # transfer metrics, but pretraining unfinished: not a point
    COMPUTE_MISMATCH = "compute_mismatch"  # logged compute differs from the plan's
    NOT_LEARNED = "not_learned"            # pretraining val_prec1 not clearly above the majority-class baseline
    NO_BASELINE = "no_baseline"            # the baseline was not logged (older run): NOT_LEARNED not checked
    FINETUNE_BELOW_FEWSHOT = "finetune_below_fewshot"  # fine-tuned accuracy below the best few-shot one
    ACCURACY_DROP = "accuracy_drop"        # headline accuracy below a cheaper run's of the family and subset
    FIT_AT_BOUND = "fit_at_bound"          # a fitted law is degenerate: a parameter at a bound of the fit (family-level)
    TOO_FEW_POINTS = "too_few_points"      # a family has too few distinct compute values to fit (family-level)


# The sanity section's kinds, in its order: results a reader should not believe (and NO_BASELINE, a
# check that could not run). The other kinds are what the study lacks.
SANITY_KINDS = (ProblemKind.NOT_LEARNED, ProblemKind.NO_BASELINE, ProblemKind.FINETUNE_BELOW_FEWSHOT,
                ProblemKind.ACCURACY_DROP, ProblemKind.COMPUTE_MISMATCH, ProblemKind.FIT_AT_BOUND,
                ProblemKind.TOO_FEW_POINTS)
# The sanity checks: each is named by the kind it finds.
SANITY_CHECKS = tuple(k for k in SANITY_KINDS if k != ProblemKind.NO_BASELINE)


STATUS_PROBLEMS = {"new": ProblemKind.NOT_STARTED, "partial": ProblemKind.UNFINISHED,
                   "failed": ProblemKind.FAILED, "unknown": ProblemKind.UNKNOWN_STATUS}


@dataclass(frozen=True)
class Problem:
    """One thing the study lacks or gets wrong, about one run (``run_id`` ... ``status``) or, for
    FIT_AT_BOUND and TOO_FEW_POINTS, about one family's fit (``run_id`` None)."""
    kind: ProblemKind
    run_id: str | None = None
    model: str | None = None
    subset: str | None = None
    status: str | None = None
    pretrain_status: str | None = None
    metric: str | None = None             # MISSING_METRIC: the absent metric; NOT_LEARNED, FINETUNE_BELOW_FEWSHOT,
                                          # ACCURACY_DROP: the metric of ``value``; fits: the headline's column
    logged_exaflops: float | None = None  # COMPUTE_MISMATCH: compute/exaflops as logged ...
    planned_exaflops: float | None = None  # ... and as planned (the one plotted)
    family: str | None = None
    value: float | None = None            # the number in question: val_prec1, an accuracy (fraction), a
                                          # fitted parameter, the family's distinct compute values
    reference: float | None = None        # what it fails against: the baseline, the best few-shot accuracy,
                                          # the cheaper run's accuracy, the bound, the points the fit needs
    reference_metric: str | None = None   # FINETUNE_BELOW_FEWSHOT: the best few-shot metric
    reference_run: str | None = None      # ACCURACY_DROP: the id of the cheaper, better run
    form: str | None = None               # FIT_AT_BOUND: the law (a form of pipeline.analysis.scaling_laws.FORMS) ...
    parameter: str | None = None          # ... and its parameter at the bound ...
    bound: str | None = None              # ... "lower" | "upper"
    used: bool | None = None              # ... and whether it is the family's law used (else a form not chosen)


@dataclass(frozen=True)
class RunRow:
    """A row of the report's runs table."""
    id: str
    model: str
    family: str
    subset: str
    params: float
    exaflops: float
    status: str
    accuracy: dict[str, float]   # {plotted metric's column: accuracy in [0, 1], NaN where missing}
    steps: float | None = None   # optimizer steps (None: unknown, a fraction of a data set of unstated size)
    epochs: float | None = None  # where the RunSpec gives its length in epochs


@dataclass(frozen=True)
class FigureEntry:
    """A figure of the report: drawn, or why not (``no_points``, ``one_subset``,
    ``no_subset_sizes``, ``no_fit``)."""
    name: str                  # the file stem: performance_vs_compute, performance_vs_data, scaling_fits
    drawn: bool
    reason: str | None = None


class Verdict(enum.StrEnum):
    """Which law a family's fit came to."""
    BETTER = "better"            # one form fits better (``FamilyVerdict.better``)
    NO_VERDICT = "no_verdict"    # cannot tell: the power law is used
    NO_FIT = "no_fit"            # too few points for either form
    NO_POINTS = "no_points"      # no run of the family with finished pretraining has the metric


@dataclass(frozen=True)
class FamilyVerdict:
    """What a family's fit came to, for the report."""
    family: str
    verdict: Verdict
    better: str | None = None    # the law chosen (a form of pipeline.analysis.scaling_laws.FORMS, or a blend a+b) where BETTER
    reason: str = ""             # pipeline.analysis.law_choice's reason for it


@dataclass(frozen=True)
class Multiplier:
    """How many times the compute of family ``y`` family ``x`` needs for the same accuracy
    (``pipeline.analysis.multipliers.compute_multiplier``); ``multiplier`` None where not available."""
    x: str
    y: str
    form_x: str | None = None
    form_y: str | None = None
    multiplier: float | None = None
    interval: tuple[float, float] | None = None
    level: float | None = None
    accuracy_range: tuple[float, float] | None = None
    at_range_ends: tuple[float, float] | None = None
    undefined_replicates: int | None = None
    replicates: int | None = None
    extrapolated: bool | None = None   # the curves share no accuracy range: over the gap between them

    @property
    def available(self) -> bool:
        """The curves of both families share an accuracy range, so the multiplier has a value."""
        return self.multiplier is not None and not math.isnan(self.multiplier)


class FitSource(enum.StrEnum):
    """Which points the fits are made on."""
    FRONTIER = "frontier"        # each family's compute-efficient frontier over every (run, checkpoint) point
    END_OF_RUN = "end_of_run"    # every run's end-of-run point (the fallback: no learning curves)


class Fallback(enum.StrEnum):
    """Why the fits are on end-of-run points."""
    NO_CURVES = "no_curves"      # no run with finished pretraining logged a learning curve of the metric
    NO_FEWSHOT = "no_fewshot"    # no few-shot metric is plotted, and only few-shot metrics have curves


@dataclass(frozen=True)
class FitBasis:
    """What the fits are made on: the metric, where its points come from, and every candidate point
    with ``used`` (a point of the fit), ``early`` (below ``early_fraction`` of its run's compute) and
    ``source`` ("curve": a checkpoint of the learning curve; "end": the end-of-run evaluation)."""
    metric: Metric                # the metric fitted: the headline, or its few-shot part (see ``headline``)
    headline: Metric              # the report's headline metric (the average, or the only metric)
    source: FitSource
    points: pd.DataFrame = field(repr=False, compare=False)   # curves.POINT_COLUMNS + early, used; accuracy in %
    fallback: Fallback | None = None       # why END_OF_RUN
    early_fraction: float | None = None    # FRONTIER: checkpoints below this fraction of their run's compute dropped

    @property
    def used(self) -> pd.DataFrame:
        """The points the fits are made on."""
        return self.points[self.points["used"]]

    def runs(self, source: str | None = None) -> int:
        """How many runs have candidate points (of ``source``: "curve" or "end", when given)."""
        points = self.points if source is None else self.points[self.points["source"] == source]
        return int(points["id"].nunique())


@dataclass(frozen=True)
class Fits:
    """The scaling-law fits of the headline metric (or of its few-shot part: ``basis``)."""
    metric: Metric                           # the metric fitted (``basis.metric``)
    level: float
    families: dict[str, law_choice.FamilyFit]   # every family with points, in the paper's order
    verdicts: tuple[FamilyVerdict, ...]      # every family with finished pretraining
    multipliers: tuple[Multiplier, ...]      # every pair of families with points, paper order
    basis: FitBasis                          # which points, and why
    forecasts: tuple[Forecast, ...] = ()     # configurations not run: the preset's unfinished runs, then named ones
    track: tuple[TrackPoint, ...] = ()       # each family's law predicting its own next point (rolling origin)

    @property
    def any_fit(self) -> bool:
        """Some family has a fit of either form (else no multiplier and no fits figure)."""
        return any(ff.fits for ff in self.families.values())

    def verdict(self, family: str) -> FamilyVerdict:
        """The verdict of ``family`` (StopIteration for a family none of whose runs finished pretraining)."""
        return next(v for v in self.verdicts if v.family == family)

    def multiplier(self, x: str, y: str) -> Multiplier:
        """The multiplier of the pair: the compute ``x`` needs relative to ``y`` (paper order)."""
        return next(m for m in self.multipliers if (m.x, m.y) == (x, y))


@dataclass(frozen=True)
class Report:
    """What the study report says; ``pipeline.analysis.render`` writes it as text."""
    title: str
    counts: dict[str, int]            # runs per status: every tracking status, and "unknown" if any
    problems: tuple[Problem, ...]     # empty: every run finished with every planned metric, and no sanity finding
    checks: dict[str, int]            # each sanity check (SANITY_CHECKS) -> the items it examined; 0: not run
    metrics: tuple[Metric, ...]       # the plotted metrics, the average last
    runs: tuple[RunRow, ...]          # one per RunSpec, in plan order
    figures: tuple[FigureEntry, ...]
    fits: Fits | None                 # None: no points to fit
    table: pd.DataFrame = field(repr=False, compare=False)        # the run table (runs.csv)
    points: pd.DataFrame = field(repr=False, compare=False)       # Figure 5's points, long format
    data_points: pd.DataFrame = field(repr=False, compare=False)  # Figure 4's
    curves: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False, compare=False)  # Figure 5's
    # learning curves: curves.curve_lines (a line per run and metric; empty without curves)

    def problems_of(self, kind: ProblemKind | str) -> list[Problem]:
        """The problems of one kind, in the report's order."""
        return [p for p in self.problems if p.kind == kind]

    def sanity(self) -> list[Problem]:
        """The sanity checks' findings (``SANITY_KINDS``), in the section's order."""
        return [p for kind in SANITY_KINDS for p in self.problems_of(kind)]

    def figure(self, name: str) -> FigureEntry:
        """The entry of one figure by its file stem (``performance_vs_compute`` ...)."""
        return next(f for f in self.figures if f.name == name)


# ----------------------------------------------------------------------------- building it

def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _number(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _problem(kind: ProblemKind, row, **numbers) -> Problem:
    return Problem(kind, run_id=str(row["id"]), model=str(row["model"]), subset=str(row["subset"]),
                   status=str(row["status"]), pretrain_status=_text(row["pretrain_status"]),
                   family=_text(row.get("family")), **numbers)


def _rows(table: pd.DataFrame) -> Iterator:
    return (row for _, row in table.iterrows())


def find_problems(table: pd.DataFrame, expected: list[str]) -> list[Problem]:
    """What the study still lacks: runs not done (by status), planned metrics missing from started
    runs, transfer metrics of runs whose pretraining did not finish."""
    found = [_problem(kind, row) for status, kind in STATUS_PROBLEMS.items()
             for row in _rows(table[table["status"] == status])]
    found += [_problem(ProblemKind.MISSING_METRIC, row, metric=m)
              for row in _rows(table[table["status"] != "new"]) for m in expected if pd.isna(row.get(m))]
    transferred = table[[m for m in expected if m in table]].notna().any(axis=1)
    found += [_problem(ProblemKind.UNUSED_METRICS, row) for row in _rows(table[~pretrained(table) & transferred])]
    return found


# ----------------------------------------------------------------------------- sanity checks
# Each check returns its findings and how many items (runs, run-datasets, fits, families) it examined.

def _column(table: pd.DataFrame, name: str) -> pd.Series:
    return table[name] if name in table else pd.Series(np.nan, index=table.index)


def learned_margin(baseline: float) -> float:
    """How far above the majority-class baseline val_prec1 must be for a run to count as learned."""
    return max(LEARNED_MARGIN, LEARNED_MARGIN_REL * baseline)


def not_learned(table: pd.DataFrame) -> tuple[list[Problem], int]:
    """Runs with finished pretraining whose val_prec1 is not clearly above the majority-class
    baseline; a run without the baseline (older runs) is a NO_BASELINE finding instead."""
    rows = table[pretrained(table) & _column(table, VAL_PREC1).notna()]
    found, checked = [], 0
    for row in _rows(rows):
        baseline = row.get(VAL_BASELINE)
        if baseline is None or pd.isna(baseline):
            found.append(_problem(ProblemKind.NO_BASELINE, row, metric=VAL_BASELINE))
            continue
        checked += 1
        if row[VAL_PREC1] <= baseline + learned_margin(baseline):
            found.append(_problem(ProblemKind.NOT_LEARNED, row, metric=VAL_PREC1, value=float(row[VAL_PREC1]),
                                  reference=float(baseline)))
    return found, checked


def _fewshot_columns(table: pd.DataFrame) -> dict[str, list[str]]:
    """{fine-tuning metric: the same dataset's few-shot metrics} for datasets that have both."""
    out = {}
    for column in table.columns:
        m = re.fullmatch(r"finetune/(.+)/acc", column)
        shots = [c for c in table.columns if m and re.fullmatch(rf"fewshot/{re.escape(m[1])}/\d+shot", c)]
        if shots:
            out[column] = shots
    return out


def finetune_below_fewshot(table: pd.DataFrame) -> tuple[list[Problem], int]:
    """(run, dataset) pairs whose fine-tuned accuracy is below the run's best few-shot accuracy."""
    found, checked = [], 0
    pairs = _fewshot_columns(table)
    for row in _rows(table):
        for tuned, shots in pairs.items():
            fewshot = row[shots].astype(float).dropna()
            if pd.isna(row[tuned]) or fewshot.empty:
                continue
            checked += 1
            if row[tuned] < fewshot.max():
                found.append(_problem(ProblemKind.FINETUNE_BELOW_FEWSHOT, row, metric=tuned, value=float(row[tuned]),
                                      reference=float(fewshot.max()), reference_metric=str(fewshot.idxmax())))
    return found, checked


def accuracy_drops(table: pd.DataFrame, column: str) -> tuple[list[Problem], int]:
    """Runs (finished pretraining, with ``column``) whose ``column`` is more than DROP_TOLERANCE below
    that of a run of the same family and subset with less planned compute (the best such run)."""
    rows = table[pretrained(table) & _column(table, column).notna()]
    found, checked = [], 0
    for row in _rows(rows):
        cheaper = rows[(rows["family"] == row["family"]) & (rows["subset"] == row["subset"])
                       & (rows["exaflops"] < row["exaflops"])]
        if cheaper.empty:
            continue
        checked += 1
        best = cheaper.loc[cheaper[column].astype(float).idxmax()]
        if row[column] < best[column] - DROP_TOLERANCE:
            found.append(_problem(ProblemKind.ACCURACY_DROP, row, metric=column, value=float(row[column]),
                                  reference=float(best[column]), reference_run=str(best["id"]),
                                  planned_exaflops=float(row["exaflops"])))
    return found, checked


def compute_mismatches(table: pd.DataFrame) -> tuple[list[Problem], int]:
    """Runs with finished pretraining whose logged compute differs from the plan by more than
    COMPUTE_TOLERANCE."""
    logged = _column(table, "compute/exaflops")
    checked = pretrained(table) & logged.notna()
    off = checked & ((logged / table["exaflops"] - 1).abs() > COMPUTE_TOLERANCE)
    return [_problem(ProblemKind.COMPUTE_MISMATCH, row, logged_exaflops=float(row["compute/exaflops"]),
                     planned_exaflops=float(row["exaflops"])) for row in _rows(table[off])], int(checked.sum())


def fit_problems(fits: Fits | None) -> tuple[list[Problem], int, int]:
    """Degenerate fits (a parameter at a bound of its fit, ``pipeline.analysis.scaling_laws.degenerate``; ``used``:
    the family's law), and families with points but too few distinct compute values for any fit;
    the fits and the families examined."""
    if fits is None:
        return [], 0, 0
    found, column = [], fits.metric.column
    for family, ff in fits.families.items():
        if not ff.fits:
            found.append(Problem(ProblemKind.TOO_FEW_POINTS, family=family, metric=column,
                                 value=float(scaling_laws.distinct_points(ff.compute)),
                                 reference=float(scaling_laws.MIN_POINTS["power"])))
        for form, f in ff.fits.items():
            found += [Problem(ProblemKind.FIT_AT_BOUND, family=family, metric=column, form=form, parameter=name,
                              value=f.params[name], bound=side, reference=bound,
                              used=form in (ff.law() or "").split("+"))
                      for name, (side, bound) in ff.degenerate.get(form, {}).items()]
    return found, sum(len(ff.fits) for ff in fits.families.values()), len(fits.families)


def sanity_checks(plotted: pd.DataFrame, metrics: list[Metric],
                  fits: Fits | None) -> tuple[list[Problem], dict[str, int]]:
    """Every sanity check on the table (with the average column, if any) and the fits: the findings
    and {check: items examined}."""
    learned, n_learned = not_learned(plotted)
    below, n_below = finetune_below_fewshot(plotted)
    drops, n_drops = accuracy_drops(plotted, headline(metrics).column) if metrics else ([], 0)
    compute, n_compute = compute_mismatches(plotted)
    fitted, n_fits, n_families = fit_problems(fits)
    checks = {ProblemKind.NOT_LEARNED: n_learned, ProblemKind.FINETUNE_BELOW_FEWSHOT: n_below,
              ProblemKind.ACCURACY_DROP: n_drops, ProblemKind.COMPUTE_MISMATCH: n_compute,
              ProblemKind.FIT_AT_BOUND: n_fits, ProblemKind.TOO_FEW_POINTS: n_families}
    return learned + below + drops + compute + fitted, {str(k): n for k, n in checks.items()}


def status_counts(table: pd.DataFrame) -> dict[str, int]:
    """Runs per status: every tracking status (0 where none), then ``unknown`` if any."""
    counts = table["status"].value_counts()
    statuses = tracking.STATUSES + (("unknown",) if "unknown" in counts else ())
    return {s: int(counts.get(s, 0)) for s in statuses}


def run_rows(table: pd.DataFrame, metrics: list[Metric]) -> list[RunRow]:
    """The runs table: each run with its plotted accuracies (``table`` has their columns)."""
    return [RunRow(id=str(row["id"]), model=str(row["model"]), family=str(row["family"]), subset=str(row["subset"]),
                   params=float(row["params"]), exaflops=float(row["exaflops"]), status=str(row["status"]),
                   accuracy={m.column: float(row[m.column]) for m in metrics}, steps=_number(row["steps"]),
                   epochs=_number(row["epochs"])) for row in _rows(table)]


def headline(metrics: list[Metric]) -> Metric:
    """The metric the fits are on: the average where there is one, else the first."""
    return metrics[-1] if metrics[-1].kind == "average" else metrics[0]


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


def end_of_run_basis(long: pd.DataFrame, headline_metric: Metric, fallback: Fallback) -> FitBasis:
    """Today's fits without learning curves: every run's end-of-run point of the headline, all used."""
    rows = long[long["metric"] == headline_metric.label]
    points = rows.assign(step=np.nan, total_exaflops=rows["exaflops"], fraction=1.0, source="end", early=False,
                         used=True)
    return FitBasis(headline_metric, headline_metric, FitSource.END_OF_RUN, points, fallback=fallback)


def fit_basis(plotted: pd.DataFrame, long: pd.DataFrame, metrics: list[Metric],
              curves: pd.DataFrame | None) -> FitBasis:
    """The points to fit: each family's frontier over the (run, checkpoint) points of the headline's
    few-shot part, or, without learning curves, the end-of-run points of the headline."""
    head = headline(metrics)
    chosen = fit_metric(metrics, head)
    if chosen is None:
        return end_of_run_basis(long, head, Fallback.NO_FEWSHOT)
    metric, columns = chosen
    candidates = checkpoint_points(plotted, curves, columns)
    if not (candidates["source"] == "curve").any():
        return end_of_run_basis(long, head, Fallback.NO_CURVES)
    return FitBasis(metric, head, FitSource.FRONTIER, mark_frontier(candidates, EARLY_FRACTION),
                    early_fraction=EARLY_FRACTION)


def fit_headline(basis: FitBasis, families: list[str], options: ReportOptions, targets: list[Target] = ()) -> Fits:
    """The fits of ``basis.metric`` on its used points, verdicts for ``families`` (those with
    finished pretraining), each family's track record and the forecasts of ``targets``."""
    used = basis.used.assign(metric=basis.metric.label)
    family_fits, multipliers = scaling_fits(used, basis.metric.label, seed=options.seed, n_boot=options.n_boot,
                                            level=options.level)
    return Fits(basis.metric, options.level, family_fits,
                verdicts=tuple(family_verdict(f, family_fits.get(f)) for f in family_order(families)),
                multipliers=tuple(Multiplier(**m) for m in multipliers), basis=basis,
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
                 targets: list[Target] = ()) -> Report:
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
                  checks=checks, metrics=tuple(metrics), runs=tuple(run_rows(plotted, metrics)),
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
                        expected=expected_metrics(p), several_subsets=len(p.subsets) > 1, options=options,
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
