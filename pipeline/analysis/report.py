"""What the report says, as data: a :class:`Report`, built from a run table by ``build_report``.

A Report holds the run counts by status, the runs table, the problems of the study as typed
:class:`Problem` records (runs not started, unfinished or failed, planned metrics missing,
transfer metrics of unfinished pretraining, logged compute that differs from the plan), which
figures are drawn (and why not), and the scaling-law fits of the headline metric with the compute
multipliers between families (``scaling_fits``, on ``pipeline.fits``: per family the saturating
law E(C) = a (C + d)^(-b) + c and the plain power law, bootstrap intervals and a backtest).

Nothing here writes text or files: ``pipeline.analysis.render`` renders a Report as report.md and
fits.json, ``pipeline.analysis.files`` writes them with runs.csv and the figures.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd

from pipeline import fits as scaling
from pipeline import tracking
from pipeline.analysis.table import (FEWSHOT_SHOT, Metric, expected_metrics, family_order, points, pretrained,
                                     run_table, transfer_metrics, with_average)
from pipeline.spec import Study

# Interval level of the report: the level at which the intervals are measured to cover as stated
# for families of 5-16 runs (bench/bench_fits.py; at 95% they cover about 86% with 7 runs).
LEVEL = 0.8
COMPUTE_TOLERANCE = 0.05   # logged compute that differs from the plan by more than this is a problem
FIGURE_COMPUTE, FIGURE_DATA, FIGURE_FITS = "performance_vs_compute", "performance_vs_data", "scaling_fits"


@dataclass(frozen=True)
class ReportOptions:
    """How the report is computed: the bootstrap's seed and replicates, the interval level, and
    the few-shot shot count plotted (the largest measured where that one is absent)."""
    seed: int = 0
    n_boot: int = 1000
    level: float = LEVEL
    shot: int = FEWSHOT_SHOT


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


STATUS_PROBLEMS = {"new": ProblemKind.NOT_STARTED, "partial": ProblemKind.UNFINISHED,
                   "failed": ProblemKind.FAILED, "unknown": ProblemKind.UNKNOWN_STATUS}


@dataclass(frozen=True)
class Problem:
    """One thing the study lacks or gets wrong, about one run."""
    kind: ProblemKind
    run_id: str
    model: str
    subset: str
    status: str
    pretrain_status: str | None = None
    metric: str | None = None             # MISSING_METRIC: the planned metric that is absent
    logged_exaflops: float | None = None  # COMPUTE_MISMATCH: compute/exaflops as logged ...
    planned_exaflops: float | None = None  # ... and as planned (the one plotted)


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
    better: str | None = None    # "saturating" | "power" where the verdict is BETTER
    reason: str = ""             # pipeline.fits' reason for it


@dataclass(frozen=True)
class Multiplier:
    """How many times the compute of family ``y`` family ``x`` needs for the same accuracy
    (``pipeline.fits.compute_multiplier``); ``multiplier`` None where not available."""
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

    @property
    def available(self) -> bool:
        """The curves of both families share an accuracy range, so the multiplier has a value."""
        return self.multiplier is not None and not math.isnan(self.multiplier)


@dataclass(frozen=True)
class Fits:
    """The scaling-law fits of the headline metric."""
    metric: Metric
    level: float
    families: dict[str, scaling.FamilyFit]   # every family with points, in the paper's order
    verdicts: tuple[FamilyVerdict, ...]      # every family with finished pretraining
    multipliers: tuple[Multiplier, ...]      # every pair of families with points, paper order

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
    problems: tuple[Problem, ...]     # empty: every run finished with every planned metric
    metrics: tuple[Metric, ...]       # the plotted metrics, the average last
    runs: tuple[RunRow, ...]          # one per RunSpec, in plan order
    figures: tuple[FigureEntry, ...]
    fits: Fits | None                 # None: no points to fit
    table: pd.DataFrame = field(repr=False, compare=False)        # the run table (runs.csv)
    points: pd.DataFrame = field(repr=False, compare=False)       # Figure 5's points, long format
    data_points: pd.DataFrame = field(repr=False, compare=False)  # Figure 4's

    def problems_of(self, kind: ProblemKind | str) -> list[Problem]:
        """The problems of one kind, in the report's order."""
        return [p for p in self.problems if p.kind == kind]

    def figure(self, name: str) -> FigureEntry:
        """The entry of one figure by its file stem (``performance_vs_compute`` ...)."""
        return next(f for f in self.figures if f.name == name)


# ----------------------------------------------------------------------------- building it

def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _problem(kind: ProblemKind, row, **numbers) -> Problem:
    return Problem(kind, run_id=str(row["id"]), model=str(row["model"]), subset=str(row["subset"]),
                   status=str(row["status"]), pretrain_status=_text(row["pretrain_status"]), **numbers)


def _rows(table: pd.DataFrame) -> Iterator:
    return (row for _, row in table.iterrows())


def find_problems(table: pd.DataFrame, expected: list[str]) -> list[Problem]:
    """What the study still lacks: runs not done (by status), planned metrics missing from started
    runs, transfer metrics of runs whose pretraining did not finish, compute that differs."""
    found = [_problem(kind, row) for status, kind in STATUS_PROBLEMS.items()
             for row in _rows(table[table["status"] == status])]
    found += [_problem(ProblemKind.MISSING_METRIC, row, metric=m)
              for row in _rows(table[table["status"] != "new"]) for m in expected if pd.isna(row.get(m))]
    transferred = table[[m for m in expected if m in table]].notna().any(axis=1)
    found += [_problem(ProblemKind.UNUSED_METRICS, row) for row in _rows(table[~pretrained(table) & transferred])]
    logged = table["compute/exaflops"] if "compute/exaflops" in table else pd.Series(np.nan, index=table.index)
    off = pretrained(table) & logged.notna() & ((logged / table["exaflops"] - 1).abs() > COMPUTE_TOLERANCE)
    found += [_problem(ProblemKind.COMPUTE_MISMATCH, row, logged_exaflops=float(row["compute/exaflops"]),
                       planned_exaflops=float(row["exaflops"])) for row in _rows(table[off])]
    return found


def status_counts(table: pd.DataFrame) -> dict[str, int]:
    """Runs per status: every tracking status (0 where none), then ``unknown`` if any."""
    counts = table["status"].value_counts()
    statuses = tracking.STATUSES + (("unknown",) if "unknown" in counts else ())
    return {s: int(counts.get(s, 0)) for s in statuses}


def run_rows(table: pd.DataFrame, metrics: list[Metric]) -> list[RunRow]:
    """The runs table: each run with its plotted accuracies (``table`` has their columns)."""
    return [RunRow(id=str(row["id"]), model=str(row["model"]), family=str(row["family"]), subset=str(row["subset"]),
                   params=float(row["params"]), exaflops=float(row["exaflops"]), status=str(row["status"]),
                   accuracy={m.column: float(row[m.column]) for m in metrics}) for row in _rows(table)]


def headline(metrics: list[Metric]) -> Metric:
    """The metric the fits are on: the average where there is one, else the first."""
    return metrics[-1] if metrics[-1].kind == "average" else metrics[0]


def scaling_fits(long: pd.DataFrame, metric_label: str, *, seed: int = 0, n_boot: int = 1000,
                 level: float = LEVEL) -> tuple[dict[str, scaling.FamilyFit], list[dict]]:
    """Fits per family on one metric, and the compute multiplier of every pair of fitted families
    (in the paper's order: how much more compute than ViT the others need)."""
    rng = np.random.default_rng(seed)
    data = long[long["metric"] == metric_label]
    order = family_order(data["family"])
    family_fits = {}
    for family in order:
        group = data[data["family"] == family]
        accuracy = (group["accuracy"] / 100).clip(upper=1 - 1e-6)  # a perfect score has no log error
        family_fits[family] = scaling.fit_family(family, group["exaflops"], accuracy, rng=rng,
                                                 n_boot=n_boot, level=level)
    multipliers = []
    for i, y in enumerate(order):
        for x in order[i + 1:]:
            result = scaling.compute_multiplier(family_fits[x], family_fits[y])
            multipliers.append(result or {"x": x, "y": y, "multiplier": None})
    return family_fits, multipliers


def family_verdict(family: str, ff: scaling.FamilyFit | None) -> FamilyVerdict:
    """Which law a family's fit (None: the family has no point) came to, and why."""
    if ff is None:
        return FamilyVerdict(family, Verdict.NO_POINTS)
    verdict = Verdict.BETTER if ff.better else Verdict.NO_VERDICT if ff.best() else Verdict.NO_FIT
    return FamilyVerdict(family, verdict, better=ff.better, reason=ff.reason)


def fit_headline(long: pd.DataFrame, metric: Metric, families: list[str], options: ReportOptions) -> Fits:
    """The fits of ``metric``, verdicts for ``families`` (those with finished pretraining)."""
    family_fits, multipliers = scaling_fits(long, metric.label, seed=options.seed, n_boot=options.n_boot,
                                            level=options.level)
    return Fits(metric, options.level, family_fits,
                verdicts=tuple(family_verdict(f, family_fits.get(f)) for f in family_order(families)),
                multipliers=tuple(Multiplier(**m) for m in multipliers))


def figure_entries(long: pd.DataFrame, data_long: pd.DataFrame, several_subsets: bool,
                   fits: Fits | None) -> tuple[FigureEntry, ...]:
    """Which figures are drawn, and why the others are not."""
    if long.empty:
        return tuple(FigureEntry(name, False, "no_points") for name in (FIGURE_COMPUTE, FIGURE_DATA, FIGURE_FITS))
    data = (FigureEntry(FIGURE_DATA, False, "one_subset") if not several_subsets else
            FigureEntry(FIGURE_DATA, False, "no_subset_sizes") if data_long.empty else FigureEntry(FIGURE_DATA, True))
    fitted = fits is not None and fits.any_fit
    return FigureEntry(FIGURE_COMPUTE, True), data, FigureEntry(FIGURE_FITS, fitted, None if fitted else "no_fit")


def build_report(table: pd.DataFrame, *, title: str, expected: list[str], several_subsets: bool,
                 options: ReportOptions = ReportOptions()) -> Report:
    """The Report of a run table (``run_table``'s columns): ``expected`` are the planned transfer
    metrics of every run, ``several_subsets`` whether the preset has several data subsets (Figure 4)."""
    plotted, metrics = with_average(table, transfer_metrics(table, options.shot))
    long = points(plotted, metrics)
    data_metrics = [m for m in metrics if m.kind == "fewshot"]
    data_long = points(plotted, data_metrics).dropna(subset=["subset_images"]) if data_metrics else long[:0]
    fits = None if long.empty else fit_headline(long, headline(metrics), list(table.loc[pretrained(table), "family"]),
                                                options)
    return Report(title=title, counts=status_counts(table), problems=tuple(find_problems(table, expected)),
                  metrics=tuple(metrics), runs=tuple(run_rows(plotted, metrics)),
                  figures=figure_entries(long, data_long, several_subsets, fits), fits=fits,
                  table=table, points=long, data_points=data_long)


def study_report(study: Study, preset: str, *, tracking_uri: str | None,
                 options: ReportOptions = ReportOptions()) -> Report:
    """The Report of a preset of a study, from its plan and its MLflow runs (``run_table``)."""
    p = study.preset(preset)
    return build_report(run_table(study, preset, tracking_uri=tracking_uri),
                        title=f"Study `{study.name}`, preset `{preset}`: {study.title}",
                        expected=expected_metrics(p), several_subsets=len(p.subsets) > 1, options=options)
