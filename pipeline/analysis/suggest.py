"""Next-run advice: which runs of a candidate grid would most narrow the study's uncertainty.

``python -m pipeline.study NAME --preset P --suggest K`` prints the K runs of the preset's
``candidates:`` grid (entries like ``runs:``, crossed with its or the preset's subsets and seeds,
expanded and costed by ``pipeline.planning.plan`` like the runs) that most narrow the bootstrap
interval of the **compute multiplier** between families, with their cost in exaFLOPs and
GPU-hours. Where no multiplier is available (no two fitted families share an error range), the
target is each fitted family's **predicted error at its largest candidate compute** instead.

How (``suggest``), on the points the report fits on (``build.study_basis``):

1. Fit every family as the report does (``pipeline.analysis.law_choice.fit_family``): the "now" intervals are the
   report's bootstrap intervals.
2. Each family's curve (the form the report uses) gets the Gauss-Newton covariance of its
   parameters, noise^2 (J^T J)^-1, J being d log E / d parameters at its points and the noise of a
   point pooled over the families (one evaluation measures them all; floor ``MIN_NOISE``).
3. A target's interval is its delta-method interval: its log is the target's log +- t sqrt(g^T Cov
   g), g its gradient (central differences), t the quantile on the residual degrees of freedom (the
   bootstrap intervals are expanded the same way). The *width* is hi / lo; the objective is the
   geometric mean of the targets' widths.
4. A candidate is scored by simulating its run: its outcome is the family's curve at its compute
   (the expected outcome, so the refitted curve stays put), which adds its row to J, a residual
   degree of freedom and, outside the measured range, compute range (a multiplier is taken over
   the errors both curves reach). The widths are then computed again. Linearized widths have no
   Monte Carlo noise, so candidates are told apart by where they are, which refits with bootstrap
   replicates at each simulated outcome could not do (their widths varied more between
   replicates than between candidates: bench/RESULTS.md).
5. Greedy: take the candidate with the smallest objective (ties: the cheaper), add it, K times.

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

import pipeline.analysis.law_bootstrap as law_bootstrap
import pipeline.analysis.law_choice as law_choice
import pipeline.analysis.multipliers as multipliers
import pipeline.analysis.scaling_laws as scaling_laws
from pipeline.analysis.build import family_points, fit_families, study_basis
from pipeline.analysis.report import LEVEL
from pipeline.analysis.table import family_name
from pipeline.planning import DEFAULT_MFU, DEFAULT_PEAK_TFLOPS, plan
from pipeline.spec import Study


MIN_NOISE = 0.005   # log error: a floor for the pooled noise (a few points can fit a curve almost exactly)
STEP = 1e-5         # central-difference step in the solver's parameters (log a, b, c, d of normalized compute)


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
class AdviceTarget:
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
    """The fits of the runs so far as the report makes them (bootstrap replicates, seed) and the
    interval level narrowed."""
    n_boot: int = 1000
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
    targets: tuple[AdviceTarget, ...]
    now: dict[str, tuple[float, float, float]]   # per target label: (estimate, lo, hi) of the current fits
    width: float                                  # the objective now (geometric mean of hi / lo)
    widths: dict[str, float]                      # per target label, now
    picks: tuple[Pick, ...]
    settings: SuggestSettings
    unscored: tuple[tuple[Candidate, str], ...] = ()   # candidates that could not be scored, and why
    skipped: int = 0                              # candidates equal to a run of the preset
    about: dict = field(default_factory=dict)     # study, preset, metric, source, mfu, gpu_peak_tflops
    noise: float = math.nan                       # the pooled noise of a point (log error) the widths assume


# ----------------------------------------------------------------------------- linearized intervals

@dataclass(frozen=True)
class FamilyState:
    """One family's fit as the advice sees it: the curve used (``FamilyFit.best``), the compute of its
    points, and the information J^T J of its log errors about the curve's parameters (``scale``: the
    compute unit those parameters are in). A simulated run adds its row to J and its compute."""
    family: str
    curve: scaling_laws.Law
    compute: np.ndarray
    info: np.ndarray
    scale: float

    @classmethod
    def of(cls, ff: law_choice.FamilyFit) -> "FamilyState":
        curve = ff.best()[0]
        scale = float(np.exp(np.mean(np.log(ff.compute))))
        jac = scaling_laws.log_error_jacobian(curve, ff.compute, scale)
        return cls(ff.family, curve, ff.compute, jac.T @ jac, scale)

    @property
    def df(self) -> int:
        return len(self.compute) - scaling_laws.param_count(self.curve)

    @property
    def compute_range(self) -> tuple[float, float]:
        return float(self.compute.min()), float(self.compute.max())

    def with_run(self, compute: float) -> "FamilyState":
        """This family after a run at ``compute`` whose outcome is the curve's own prediction there
        (the expected outcome: refitting leaves the curve where it is and adds the run's information)."""
        row = scaling_laws.log_error_jacobian(self.curve, [compute], self.scale)
        return replace(self, compute=np.append(self.compute, compute), info=self.info + row.T @ row)

    def covariance(self, noise: float) -> np.ndarray:
        """Covariance of the curve's parameters: noise^2 (J^T J)^+ (Gauss-Newton)."""
        return noise ** 2 * np.linalg.pinv(self.info)


World = dict[str, FamilyState]


def pooled_noise(family_fits: dict[str, law_choice.FamilyFit]) -> float:
    """The noise of a point in log error, pooled over the fitted families (every family is measured
    by the same evaluation): sqrt(sum of squared log residuals / residual degrees of freedom)."""
    used = [ff.best()[0] for ff in family_fits.values() if ff.best() is not None]
    df = sum(law_bootstrap.residual_df(f) for f in used)
    if df <= 0:
        return math.nan
    return max(math.sqrt(sum(f.rss for f in used) / df), MIN_NOISE)


def _gradient(value, state: FamilyState) -> np.ndarray:
    """d value(curve) / d parameters, by central differences."""
    p = scaling_laws.param_count(state.curve)
    grad = np.zeros(p)
    for i in range(p):
        step = np.zeros(p)
        step[i] = STEP
        up, down = (value(scaling_laws.shifted(state.curve, s, state.scale)) for s in (step, -step))
        grad[i] = (up - down) / (2 * STEP)
    return grad


def log_interval(world: World, target: AdviceTarget, noise: float, level: float) -> tuple[float, float]:
    """(log of the target's estimate, log width hi / lo of its ``level`` interval) in ``world``, by
    the delta method with a t quantile on the residual degrees of freedom; NaN where the target is
    not available (a multiplier of curves that share no error range)."""
    from scipy.stats import t
    if target.kind == "prediction":
        state = world[target.x]
        grads = [(state, scaling_laws.log_error_jacobian(state.curve, [target.compute], state.scale)[0])]
        estimate, df = math.log(float(state.curve.error(target.compute))), state.df
    else:
        x, y = world[target.x], world[target.y]
        errors = multipliers.shared_errors(x.curve, x.compute_range, y.curve, y.compute_range)
        if errors is None:
            return math.nan, math.nan
        estimate = math.log(multipliers.multiplier(x.curve, y.curve, errors))
        grads = [(x, _gradient(lambda f: math.log(multipliers.multiplier(f, y.curve, errors)), x)),
                 (y, _gradient(lambda f: math.log(multipliers.multiplier(x.curve, f, errors)), y))]
        df = x.df + y.df
    variance = sum(float(g @ s.covariance(noise) @ g) for s, g in grads)
    if not (df > 0 and math.isfinite(variance)):
        return estimate, math.nan
    return estimate, 2 * float(t.ppf((1 + level) / 2, df)) * math.sqrt(variance)


def choose_targets(family_fits: dict[str, law_choice.FamilyFit], world: World, candidates: list[Candidate]) -> list[AdviceTarget]:
    """Every available multiplier between fitted families (paper order); without one, each fitted
    family's predicted error at its largest candidate compute (its largest measured one if none)."""
    fitted = list(world)
    pairs = [AdviceTarget("multiplier", x, y) for i, y in enumerate(fitted) for x in fitted[i + 1:]]
    pairs = [p for p in pairs if multipliers.compute_multiplier(family_fits[p.x], family_fits[p.y]) is not None]
    if pairs:
        return pairs
    return [AdviceTarget("prediction", f, compute=max([c.exaflops for c in candidates if c.family == f],
                                                default=float(world[f].compute.max()))) for f in fitted]


def objective(world: World, targets: list[AdviceTarget], noise: float, level: float, base: np.ndarray) -> np.ndarray:
    """The targets' log widths in ``world`` (a target unavailable there counts at ``base``, its width now)."""
    widths = np.array([log_interval(world, t, noise, level)[1] for t in targets])
    return np.where(np.isnan(widths), base, widths)


def too_few_message(family_fits: dict[str, law_choice.FamilyFit]) -> str:
    have = ", ".join(f"{f} {scaling_laws.distinct_points(ff.compute)}" for f, ff in family_fits.items())
    return (f"too few runs to fit: a family needs points at {scaling_laws.MIN_POINTS['power']} distinct compute values "
            f"(the power law) before runs can be suggested; distinct compute values now: {have}")


def bootstrap_interval(family_fits: dict[str, law_choice.FamilyFit], target: AdviceTarget) -> tuple[float, float, float]:
    """(estimate, lo, hi) of a target as the report states it (its bootstrap interval)."""
    if target.kind == "multiplier":
        m = multipliers.compute_multiplier(family_fits[target.x], family_fits[target.y])
        return (m["multiplier"], *m["interval"]) if m else (math.nan, math.nan, math.nan)
    ff = family_fits[target.x]
    lo, hi = ff.band([target.compute])
    return float(ff.best()[0].error(target.compute)), float(lo[0]), float(hi[0])


def suggest(points: dict[str, tuple[np.ndarray, np.ndarray]], candidates: list[Candidate], k: int,
            settings: SuggestSettings = SuggestSettings()) -> Advice:
    """The K candidates (greedily) that most narrow the targets' intervals, from each family's
    points {family: (exaFLOPs, accuracy as a fraction)}. SuggestError when no family can be fitted."""
    family_fits = fit_families(points, seed=settings.seed, n_boot=settings.n_boot, level=settings.level)
    fitted = {f: ff for f, ff in family_fits.items() if ff.best() is not None}
    if not fitted:
        raise SuggestError(too_few_message(family_fits))
    noise = pooled_noise(fitted)
    if math.isnan(noise):
        raise SuggestError("too few runs to estimate the noise of a point: the fitted families have no residual "
                           "degree of freedom (a family needs more points than its curve has parameters)")
    world = {f: FamilyState.of(ff) for f, ff in fitted.items()}
    scorable = [c for c in candidates if c.exaflops and c.family in world]
    unscored = tuple((c, "its compute is unknown" if not c.exaflops else f"family {c.family} has no fit yet")
                     for c in candidates if c not in scorable)
    targets = choose_targets(fitted, world, scorable)
    base = np.array([log_interval(world, t, noise, settings.level)[1] for t in targets])
    picks = []
    for _ in range(min(k, len(scorable))):
        scored = [(objective({**world, c.family: world[c.family].with_run(c.exaflops)}, targets, noise,
                             settings.level, base), c) for c in scorable]
        widths, best = min(scored, key=lambda wc: (wc[0].mean(), wc[1].exaflops))   # ties: the cheaper run
        world = {**world, best.family: world[best.family].with_run(best.exaflops)}
        scorable.remove(best)
        picks.append(Pick(best, float(np.exp(widths.mean())), {t.label: float(np.exp(w)) for t, w in zip(targets, widths)}))
    return Advice(tuple(targets), {t.label: bootstrap_interval(fitted, t) for t in targets}, float(np.exp(base.mean())),
                  {t.label: float(np.exp(w)) for t, w in zip(targets, base)}, tuple(picks), settings, unscored,
                  noise=noise)


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
                           f"(a family needs points at {scaling_laws.MIN_POINTS['power']} distinct compute values)")
    advice = suggest(family_points(basis.used), candidates, k, settings)
    return replace(advice, skipped=skipped, about={
        "study": study.name, "preset": preset, "metric": basis.metric.label, "source": str(basis.source),
        "mfu": mfu, "gpu_peak_tflops": peak_tflops})


# ----------------------------------------------------------------------------- as text

def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _now_line(target: AdviceTarget, now: tuple[float, float, float], width: float) -> str:
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
             f"AdviceTarget: the {s.level:.0%} interval(s) below; width = hi / lo of the linearized interval, the geometric "
             f"mean over them is minimized; noise of a point {advice.noise:.3g} in log error, pooled over the families.",
             "Now (the report's bootstrap interval; linearized width):"]
    lines += [_now_line(t, advice.now[t.label], advice.widths[t.label]) for t in advice.targets]
    lines += ["Suggested runs (greedy; the width expected after each with those above it, each run simulated at its "
              "family's fitted curve):",
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
