"""What the report says, as data: a :class:`Report` (built by ``pipeline.analysis.build``).

A Report holds the run counts by status, the runs table, the problems of the study as typed
:class:`Problem` records (runs not started, unfinished or failed, planned metrics missing,
transfer metrics of unfinished pretraining; and the sanity checks' findings, ``SANITY_KINDS``,
found by ``pipeline.analysis.sanity``: runs that did not learn, fine-tuning below few-shot,
accuracy falling with compute, logged compute that differs from the plan, fitted parameters at a
bound, families with too few points to fit), how much each sanity check examined, which figures
are drawn (and why not), and the scaling-law fits of the headline metric with the compute
multipliers between families (:class:`Fits`), and the forecasts of configurations not run with
each law's track record (``pipeline.analysis.forecast``).

Nothing here writes text or files: ``pipeline.analysis.render`` renders a Report as report.md and
fits.json, ``pipeline.analysis.files`` writes them with runs.csv and the figures.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import pandas as pd

import pipeline.analysis.law_choice as law_choice
from pipeline.analysis.forecast import Forecast, TrackPoint
from pipeline.analysis.table import FEWSHOT_SHOT, Metric

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
    SEED_SPREAD = "seed_spread"            # one seed's runs alone: a multiplier outside its interval (pair-level)


# The sanity section's kinds, in its order: results a reader should not believe (and NO_BASELINE, a
# check that could not run). The other kinds are what the study lacks.
SANITY_KINDS = (ProblemKind.NOT_LEARNED, ProblemKind.NO_BASELINE, ProblemKind.FINETUNE_BELOW_FEWSHOT,
                ProblemKind.ACCURACY_DROP, ProblemKind.COMPUTE_MISMATCH, ProblemKind.FIT_AT_BOUND,
                ProblemKind.TOO_FEW_POINTS, ProblemKind.SEED_SPREAD)
# The sanity checks: each is named by the kind it finds.
SANITY_CHECKS = tuple(k for k in SANITY_KINDS if k != ProblemKind.NO_BASELINE)


STATUS_PROBLEMS = {"new": ProblemKind.NOT_STARTED, "partial": ProblemKind.UNFINISHED,
                   "failed": ProblemKind.FAILED, "unknown": ProblemKind.UNKNOWN_STATUS}


@dataclass(frozen=True)
class Problem:
    """One thing the study lacks or gets wrong, about one run (``run_id`` ... ``status``) or, for
    FIT_AT_BOUND and TOO_FEW_POINTS, about one family's fit (``run_id`` None), or, for SEED_SPREAD,
    about the multiplier of ``family`` over ``other_family``."""
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
    other_family: str | None = None       # SEED_SPREAD: the pair's second family (``family`` needs value x its compute)
    value: float | None = None            # the number in question: val_prec1, an accuracy (fraction), a
                                          # fitted parameter, the family's distinct compute values, the
                                          # multiplier of the seed farthest from the mean's
    reference: float | None = None        # what it fails against: the baseline, the best few-shot accuracy,
                                          # the cheaper run's accuracy, the bound, the points the fit needs,
                                          # the multiplier fitted on the mean over seeds
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
    by_seed: tuple[tuple[int, float], ...] = ()   # (seed, multiplier of that seed's runs alone); () with one seed

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
    # the candidate points of each run before its seeds were averaged (``seed`` says whose), where some
    # configuration was run with several seeds; else None. ``points`` has ``seeds`` and ``spread``.
    seed_points: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @property
    def seeds(self) -> list[int]:
        """The seeds averaged, in order; empty where each configuration has one run."""
        return [] if self.seed_points is None else sorted(int(s) for s in self.seed_points["seed"].unique())

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
