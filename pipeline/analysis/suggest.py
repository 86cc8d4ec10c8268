"""Next-run advice: which runs of a candidate grid would most narrow the study's uncertainty.

``python -m pipeline.study NAME --preset P --suggest K`` prints the K runs of the preset's
``candidates:`` grid (entries like ``runs:``, crossed with its or the preset's subsets and seeds,
expanded and costed by ``pipeline.planning.plan`` like the runs) that most narrow the bootstrap
interval of the **compute multiplier** between families, with their cost in exaFLOPs and
GPU-hours. Where no multiplier is available (no two fitted families share an error range), the
target is each fitted family's **predicted error at its largest candidate compute** instead.

How (``suggest``), on the points the report fits on (``report.study_basis``):

1. Fit every family as the report does (``pipeline.fits.fit_family``, ``n_boot`` replicates).
2. The *width* of an interval is hi / lo; the objective is the geometric mean of the targets' widths
   (the mean of their log widths).
3. For each candidate, ``sims`` times: draw its outcome from its family's current fit (a bootstrap
   replicate's error at the candidate's compute, times exp of a modified log residual drawn from the
   fit's), add that point, refit the family in the form it is used in (warm-started, ``n_boot``
   replicates) and measure the widths. The candidate's score is the objective averaged over the
   simulations; every candidate sees the same random numbers (common random numbers), so their
   scores differ by where they are, not by luck.
4. Greedy: take the best, keep its ``sims`` simulated worlds (each with its simulated point), and
   score the rest again in those worlds, K times.

A candidate equal to a run of the preset (same run id) is skipped; one whose family has no fit
yet cannot be scored and is listed as such. A simulated run adds one point, at its total compute:
its learning-curve checkpoints, which the frontier would also use, are not simulated (so the advice
is conservative about long runs). Measured against random placement on synthetic studies in
``bench/suggest_eval.py`` (bench/RESULTS.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline import fits as scaling
from pipeline.analysis.report import LEVEL, family_points, study_basis
from pipeline.analysis.table import family_name
from pipeline.planning import DEFAULT_MFU, DEFAULT_PEAK_TFLOPS, plan
from pipeline.spec import Study


class SuggestError(ValueError):
    """The advice cannot be given (no candidates, too few points to fit): the message says why."""


@dataclass(frozen=True)
class Candidate:
    """A run that could be added, with its cost (``planning.plan``'s numbers)."""
    id: str
    model: str
    family: str
    subset: str
    steps: int | None
    epochs: float | None
    exaflops: float | None
    gpu_hours: float | None


@dataclass(frozen=True)
class Target:
    """What the advice narrows: the multiplier of family ``x`` over ``y`` (the compute ``x`` needs
    relative to ``y``), or family ``x``'s predicted error at ``compute`` exaFLOPs."""
    kind: str                      # "multiplier" | "prediction"
    x: str
    y: str | None = None
    compute: float | None = None

    @property
    def label(self) -> str:
        if self.kind == "multiplier":
            return f"{family_name(self.x)} / {family_name(self.y)} multiplier"
        return f"{family_name(self.x)} accuracy at {self.compute:.3g} exaFLOPs"


@dataclass(frozen=True)
class SuggestSettings:
    """Simulated outcomes per candidate, bootstrap replicates per refit, interval level, seed."""
    sims: int = 8
    n_boot: int = 100
    level: float = LEVEL
    seed: int = 0


@dataclass(frozen=True)
class Pick:
    """A suggested run, with the expected widths after it (and the picks before it) are added."""
    candidate: Candidate
    width: float                   # geometric mean over the targets of hi / lo
    widths: dict[str, float]       # per target label


@dataclass(frozen=True)
class Advice:
    """What ``--suggest`` says, as data."""
    targets: tuple[Target, ...]
    now: dict[str, tuple[float, float, float]]   # per target label: (estimate, lo, hi) of the current fits
    width: float                                  # the objective now (geometric mean of hi / lo)
    widths: dict[str, float]                      # per target label, now
    picks: tuple[Pick, ...]
    settings: SuggestSettings
    unscored: tuple[tuple[Candidate, str], ...] = ()   # candidates that could not be scored, and why
    skipped: int = 0                              # candidates equal to a run of the preset
    about: dict = field(default_factory=dict)     # study, preset, metric, source, mfu, gpu_peak_tflops


# ----------------------------------------------------------------------------- the simulation

World = dict[str, scaling.FamilyFit]   # one simulated state of every family's fit


def fit_families(points: dict[str, tuple[np.ndarray, np.ndarray]], settings: SuggestSettings) -> World:
    """Every family's fit as the report makes it (``fit_family``), at ``settings.n_boot`` replicates."""
    rng = np.random.default_rng(settings.seed)
    return {family: scaling.fit_family(family, compute, accuracy, rng=rng, n_boot=settings.n_boot,
                                       level=settings.level) for family, (compute, accuracy) in points.items()}


def simulate(ff: scaling.FamilyFit, compute: float, rng: np.random.Generator) -> float:
    """A plausible error of a new run at ``compute``: a bootstrap replicate of the family's curve
    there, times exp of one of the fit's modified log residuals."""
    point, boot = ff.best()
    replicate = boot[rng.integers(len(boot))]
    residual = rng.choice(scaling.modified_residuals(ff.compute, ff.error, point))
    return float(np.clip(replicate.error(compute) * math.exp(residual), 1e-6, 1.0))


def refit(ff: scaling.FamilyFit, compute: float, error: float, rng: np.random.Generator,
          n_boot: int) -> scaling.FamilyFit:
    """``ff`` with one more point, refitted in the form it is used in, warm-started from its fit."""
    point, _ = ff.best()
    c, e = np.append(ff.compute, compute), np.append(ff.error, error)
    new = scaling.fit(c, e, point.form, warm_start=point)
    boot = scaling.bootstrap(c, e, point.form, rng=rng, n_boot=n_boot, point=new)
    return scaling.FamilyFit(ff.family, c, e, ff.level, fits={point.form: new}, boot={point.form: boot},
                             better=point.form)


def interval_of(world: World, target: Target) -> tuple[float, float, float]:
    """(estimate, lo, hi) of a target in a world; NaN where it is not available there."""
    if target.kind == "multiplier":
        m = scaling.compute_multiplier(world[target.x], world[target.y])
        return (m["multiplier"], *m["interval"]) if m else (math.nan, math.nan, math.nan)
    ff = world[target.x]
    lo, hi = ff.band([target.compute])
    return float(ff.best()[0].error(target.compute)), float(lo[0]), float(hi[0])


def log_width(world: World, target: Target) -> float:
    _, lo, hi = interval_of(world, target)
    return math.log(hi / lo) if lo > 0 and math.isfinite(hi / lo) else math.nan


def choose_targets(world: World, candidates: list[Candidate]) -> list[Target]:
    """Every available multiplier between fitted families (paper order); without one, each fitted
    family's predicted error at its largest candidate compute (its largest measured one if none)."""
    fitted = [f for f, ff in world.items() if ff.best() is not None]
    pairs = [Target("multiplier", x, y) for i, y in enumerate(fitted) for x in fitted[i + 1:]]
    pairs = [t for t in pairs if not math.isnan(log_width(world, t))]
    if pairs:
        return pairs
    return [Target("prediction", f, compute=max([c.exaflops for c in candidates if c.family == f],
                                                default=float(world[f].compute.max()))) for f in fitted]


def added(world: World, s: int, candidate: Candidate, settings: SuggestSettings) -> scaling.FamilyFit:
    """``candidate``'s family in world ``s`` refitted with a simulated outcome of it. The random numbers
    depend on the world and the family's point count only: every candidate of a family sees the same
    ones (common random numbers)."""
    ff = world[candidate.family]
    rng = np.random.default_rng([settings.seed, s, len(ff.compute)])
    return refit(ff, candidate.exaflops, simulate(ff, candidate.exaflops, rng), rng, settings.n_boot)


def try_candidate(worlds: list[World], candidate: Candidate, targets: list[Target], settings: SuggestSettings,
                  cache: dict) -> tuple[np.ndarray, list[World]]:
    """The targets' log widths (sims x targets) after adding ``candidate`` in every world, and the
    worlds with it. A refit is reused while its family is unchanged in that world (``cache``)."""
    after = []
    for s, world in enumerate(worlds):
        before, refitted = cache.get((s, candidate.id), (None, None))
        if before is not world[candidate.family]:
            refitted = added(world, s, candidate, settings)
            cache[(s, candidate.id)] = (world[candidate.family], refitted)
        after.append({**world, candidate.family: refitted})
    return np.array([[log_width(w, t) for t in targets] for w in after]), after


def best_candidate(worlds: list[World], candidates: list[Candidate], targets: list[Target], base: np.ndarray,
                   settings: SuggestSettings, cache: dict) -> tuple[Candidate, np.ndarray, list[World]]:
    """The candidate with the smallest expected objective, its expected log widths per target, and
    its worlds. A target unavailable in a simulated world counts at its width now (no gain)."""
    best = None
    for candidate in candidates:
        widths, after = try_candidate(worlds, candidate, targets, settings, cache)
        per_target = np.where(np.isnan(widths), base, widths).mean(axis=0)
        if best is None or per_target.mean() < best[1].mean():
            best = (candidate, per_target, after)
    return best


def too_few_message(world: World) -> str:
    have = ", ".join(f"{f} {scaling.distinct_points(ff.compute)}" for f, ff in world.items())
    return (f"too few runs to fit: a family needs points at {scaling.MIN_POINTS['power']} distinct compute values "
            f"(the power law) before runs can be suggested; distinct compute values now: {have}")


def suggest(points: dict[str, tuple[np.ndarray, np.ndarray]], candidates: list[Candidate], k: int,
            settings: SuggestSettings = SuggestSettings()) -> Advice:
    """The K candidates (greedily) that most narrow the targets' intervals, from each family's
    points {family: (exaFLOPs, accuracy as a fraction)}. SuggestError when no family can be fitted."""
    world = fit_families(points, settings)
    if not any(ff.best() for ff in world.values()):
        raise SuggestError(too_few_message(world))
    scorable = [c for c in candidates if c.exaflops and c.family in world and world[c.family].best()]
    unscored = tuple((c, "its compute is unknown" if not c.exaflops else f"family {c.family} has no fit yet")
                     for c in candidates if c not in scorable)
    targets = choose_targets(world, scorable)
    base = np.array([log_width(world, t) for t in targets])
    worlds, picks, cache = [world] * settings.sims, [], {}
    for _ in range(min(k, len(scorable))):
        candidate, widths, worlds = best_candidate(worlds, scorable, targets, base, settings, cache)
        scorable.remove(candidate)
        picks.append(Pick(candidate, float(np.exp(widths.mean())),
                          {t.label: float(np.exp(w)) for t, w in zip(targets, widths)}))
    return Advice(tuple(targets), {t.label: interval_of(world, t) for t in targets}, float(np.exp(base.mean())),
                  {t.label: float(np.exp(w)) for t, w in zip(targets, base)}, tuple(picks), settings, unscored)


# ----------------------------------------------------------------------------- a study's advice

def study_candidates(study: Study, preset: str, *, mfu: float = DEFAULT_MFU,
                     peak_tflops: float = DEFAULT_PEAK_TFLOPS) -> tuple[list[Candidate], int]:
    """The preset's candidate grid, expanded and costed like its runs, less those equal to a run of
    the preset (how many were, second)."""
    grid = study.with_candidates(preset)
    if grid is None:
        raise SuggestError(f"preset {preset!r} of study {study.name!r} has no candidates: add a `candidates:` "
                           "block to it (`runs:` entries like the preset's, optionally `subsets:`)")
    existing = {spec.id for spec in study.expand(preset)}
    rows = {r["id"]: r for r in plan(grid, preset, tracking_uri=None, mfu=mfu, peak_tflops=peak_tflops)["runs"]}
    fresh = [r for r in rows.values() if r["id"] not in existing]
    return [Candidate(r["id"], r["model"], r["family"], str(r["subset"]), r["steps"], r["epochs"], r["exaflops"],
                      r["gpu_hours"]) for r in fresh], len(rows) - len(fresh)


def study_advice(study: Study, preset: str, k: int, *, tracking_uri: str | None,
                 settings: SuggestSettings = SuggestSettings(), mfu: float = DEFAULT_MFU,
                 peak_tflops: float = DEFAULT_PEAK_TFLOPS) -> Advice:
    """``suggest`` on the points the preset's report fits on and its candidate grid."""
    candidates, skipped = study_candidates(study, preset, mfu=mfu, peak_tflops=peak_tflops)
    if not candidates:
        raise SuggestError(f"every candidate of preset {preset!r} is already a run of it: nothing to suggest")
    basis = study_basis(study, preset, tracking_uri=tracking_uri)
    if basis is None or basis.used.empty:
        raise SuggestError("no run has finished pretraining with transfer results yet: too few runs to fit "
                           f"(a family needs points at {scaling.MIN_POINTS['power']} distinct compute values)")
    advice = suggest(family_points(basis.used), candidates, k, settings)
    return replace(advice, skipped=skipped, about={
        "study": study.name, "preset": preset, "metric": basis.metric.label, "source": str(basis.source),
        "mfu": mfu, "gpu_peak_tflops": peak_tflops})


# ----------------------------------------------------------------------------- as text

def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _now_line(target: Target, now: tuple[float, float, float], width: float) -> str:
    estimate, lo, hi = now
    if target.kind == "prediction":   # errors -> accuracies
        estimate, lo, hi = 1 - estimate, 1 - hi, 1 - lo
        return f"  {target.label}: {estimate:.1%} [{lo:.1%}, {hi:.1%}] (error width {width:.3g})"
    return f"  {target.label}: {estimate:.3g}x [{lo:.3g}, {hi:.3g}] (width {width:.3g})"


def format_advice(advice: Advice) -> str:
    """The advice as the CLI prints it."""
    a, s = advice.about, advice.settings
    lines = [f"Next-run advice for study {a.get('study')} / preset {a.get('preset')} (fits on {a.get('metric')}, "
             f"{a.get('source')} points)",
             f"Target: the {s.level:.0%} bootstrap interval(s) below; width = hi / lo, the geometric mean over them "
             "is minimized.", "Now:"]
    lines += [_now_line(t, advice.now[t.label], advice.widths[t.label]) for t in advice.targets]
    lines += [f"Suggested runs (greedy; the width expected after each with those above it, mean of {s.sims} simulated "
              f"outcomes refitted with {s.n_boot} bootstrap replicates; seed {s.seed}):",
              "  #  id            model  family  subset  length  exaFLOPs  GPU-h  width after"]
    for i, p in enumerate(advice.picks, 1):
        c = p.candidate
        length = f"{c.steps} steps" if c.epochs is None else f"{c.epochs:g} epochs"
        lines.append(f"  {i}  {c.id}  {c.model}  {c.family}  {c.subset}  {length}  {_g(c.exaflops)}  "
                     f"{_g(c.gpu_hours)}  {p.width:.3g}")
    total = sum(p.candidate.exaflops for p in advice.picks)
    hours = sum(p.candidate.gpu_hours for p in advice.picks)
    after = advice.picks[-1].width if advice.picks else advice.width
    lines.append(f"Width now {advice.width:.3g}, expected after the {len(advice.picks)} run(s) {after:.3g}; they cost "
                 f"{total:.3g} exaFLOPs = {hours:.3g} GPU-hours at {a.get('mfu', DEFAULT_MFU):.0%} MFU of "
                 f"{a.get('gpu_peak_tflops', DEFAULT_PEAK_TFLOPS):g} TFLOP/s.")
    lines += [f"Not scored: {c.model} ({c.id}): {why}" for c, why in advice.unscored]
    if advice.skipped:
        lines.append(f"Skipped {advice.skipped} candidate(s) equal to a run of the preset.")
    return "\n".join(lines)
