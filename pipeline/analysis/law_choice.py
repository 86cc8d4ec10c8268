"""Which scaling law a family's report uses, and every form fitted to one family
(:func:`fit_family`, :class:`FamilyFit`; the forms are ``pipeline.analysis.scaling_laws``').

The choice is by rolling origin. For several cut-offs in the upper half of the compute range,
every form is fitted on the points at or below the cut-off and predicts the points above it; a
form's score is the mean over the cut-offs of the RMSE of its log error on the predicted points
(the extrapolation it is used for; OLMo's ladder validates its fits the same way). The law used
averages the log errors of the ``BLEND`` (two) forms with the lowest scores (a ``Blend``, named
``a+b``), among those that do not sit at a bound of their fit (``degenerate``). A form is scored
only at cut-offs below which it has ``ROLLING_DOF`` more points than parameters, and the forms are
compared on common cut-offs (the most demanding dropped until two remain). Without two cut-offs
for two forms, the choice falls back to the small-sample Akaike criterion (AICc), and with that
undefined, to the power law. The law used is bootstrapped (``pipeline.analysis.law_bootstrap``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.analysis.law_bootstrap import bootstrap, curve_band, param_intervals, residual_df
from pipeline.analysis.scaling_laws import (FORMS, HUBER_SCALE, MIN_POINTS, PARAMS, Blend, Fit, Law, can_fit,
                                            degenerate, distinct_points, fit)

ROLLING_CUTS = 5         # at most this many cut-offs, spread over the compute range ...
ROLLING_FROM = 0.5       # ... over its upper part: from this fraction of the log-compute range on
MIN_CUTS = 2             # fewer cut-offs than this for every form: the law is chosen by AICc
# A form is scored at a cut-off only where it is fitted on this many more points than it has parameters:
# with fewer, its extrapolation measures the noise of a near-exact fit (bench/RESULTS.md, "Extrapolation").
ROLLING_DOF = 3
# The law used averages the log errors of this many of the best-scoring sound forms, where rolling origin
# scored that many (1: the best alone). Two: bench/RESULTS.md, "Extrapolation on published learning curves".
BLEND = 2


def rolling_cuts(compute, forms=FORMS, *, most: int = ROLLING_CUTS) -> list[float]:
    """The cut-offs at which every one of ``forms`` can be fitted on the points at or below the
    cut-off and some point lies above it: the distinct compute values from the ``MIN_POINTS``-th of
    the most demanding form (plus ``ROLLING_DOF``) to the second largest, those in the upper part of the compute range
    (``ROLLING_FROM``; at least ``MIN_CUTS`` of them where there are), at most ``most`` of them
    spread evenly in log compute (the largest always in)."""
    values = np.unique(np.asarray(compute, dtype=float))
    first = max(len(PARAMS[f]) for f in forms) + ROLLING_DOF - 1
    valid = values[first:-1]
    logs = np.log(values)
    upper = valid[np.log(valid) >= logs[0] + ROLLING_FROM * (logs[-1] - logs[0])]
    valid = upper if len(upper) >= MIN_CUTS else valid[-MIN_CUTS:]
    if len(valid) <= most:
        return valid.tolist()
    targets = np.linspace(np.log(valid[0]), np.log(valid[-1]), most)
    return sorted({float(valid[np.argmin(np.abs(np.log(valid) - t))]) for t in targets})


@dataclass(frozen=True)
class Prediction:
    """What a fit on the points at or below ``cut`` said of the points above it (one form, one cut)."""
    form: str
    cut: float
    fitted: int                       # points fitted
    compute: tuple[float, ...]        # the predicted points' compute ...
    observed: tuple[float, ...]       # ... observed errors
    predicted: tuple[float, ...]      # ... and predicted errors (NaN where the fit failed)

    @property
    def rmse_log(self) -> float:
        gap = np.log(np.maximum(self.predicted, 1e-12)) - np.log(self.observed)
        return float(np.sqrt(np.mean(gap ** 2)))

    @property
    def mae_points(self) -> float:
        """Mean absolute error in accuracy points (0-100)."""
        return float(np.mean(np.abs(np.subtract(self.predicted, self.observed)))) * 100


def predict_beyond(compute, error, form: str, cut: float, *, huber_scale: float = HUBER_SCALE) -> Prediction:
    """Fit ``form`` (a blend ``a+b``: both parts) on the points at or below ``cut`` and predict those
    above it."""
    compute, error = np.asarray(compute, dtype=float), np.asarray(error, dtype=float)
    below = compute <= cut
    fitted = tuple(fit(compute[below], error[below], part, huber_scale=huber_scale) for part in form.split("+"))
    f = Blend(fitted) if len(fitted) > 1 else fitted[0]
    above = ~below
    return Prediction(form, float(cut), int(below.sum()), tuple(compute[above].tolist()),
                      tuple(error[above].tolist()), tuple(f.error(compute[above]).tolist()))


def rolling_origin(compute, error, forms, *, huber_scale: float = HUBER_SCALE) -> dict[str, list[Prediction]]:
    """Every form's predictions at the common cut-offs (``rolling_cuts``)."""
    cuts = rolling_cuts(compute, forms)
    return {form: [predict_beyond(compute, error, form, cut, huber_scale=huber_scale) for cut in cuts]
            for form in forms}


def rolling_score(predictions: list[Prediction]) -> float:
    """A form's rolling-origin score: the mean over cut-offs of the RMSE of its log error."""
    return float(np.mean([p.rmse_log for p in predictions])) if predictions else math.nan


@dataclass
class FamilyFit:
    """Every form fitted to one family: point fits, which are degenerate, their rolling-origin
    predictions and scores, the law chosen (``better``) with its bootstrap refits and intervals."""
    family: str
    compute: np.ndarray
    error: np.ndarray
    level: float
    fits: dict[str, Fit] = field(default_factory=dict)
    boot: dict[str, list[Fit]] = field(default_factory=dict)          # the law used only
    intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)   # the law used only
    rolling: dict[str, list[Prediction]] = field(default_factory=dict)
    degenerate: dict[str, dict[str, tuple[str, float]]] = field(default_factory=dict)
    better: str | None = None   # the law chosen (a form, or a blend "a+b"); None: could not choose (power used)
    reason: str = ""
    used: Law | None = None     # the law used downstream (set by fit_family; None: derived from better)

    @property
    def compute_range(self) -> tuple[float, float]:
        return float(self.compute.min()), float(self.compute.max())

    def score(self, form: str) -> float:
        """The form's rolling-origin score (NaN where it had no cut-off)."""
        return rolling_score(self.rolling.get(form, []))

    def band(self, compute) -> tuple[np.ndarray, np.ndarray]:
        """The ``level`` band of the curve used downstream, at ``compute``."""
        point, boot = self.best()
        return curve_band(boot, compute, self.level, residual_df(point))

    def law(self) -> str | None:
        """The law used downstream: the chosen one (a form, or a blend ``a+b``); when none could be
        chosen, the power law."""
        if self.used is not None:
            return self.used.form
        for form in ([self.better] if self.better else []) + ["power"]:
            if form in self.fits:
                return form
        return None

    def best(self) -> tuple[Law, list[Law]] | None:
        """The law used downstream (multiplier, figure, forecasts) and its bootstrap refits."""
        if self.used is not None:
            return self.used, self.boot.get(self.used.form, [])
        form = self.law()
        return None if form is None else (self.fits[form], self.boot.get(form, []))

    @property
    def used_degenerate(self) -> dict[str, tuple[str, float]]:
        """The law used's parameters at a degenerate bound (empty: it is not degenerate)."""
        law = self.law()
        return {name: at for form in (law.split("+") if law else ()) for name, at in self.degenerate.get(form, {}).items()}

    def ranked(self) -> list[str]:
        """The sound forms rolling origin scored, best first (a tie to the simpler form)."""
        sound = [f for f in self.rolling if f in self.fits and not self.degenerate.get(f)]
        return sorted(sound, key=lambda f: (self.score(f), MIN_POINTS[f]))


def fit_family(family: str, compute, accuracy, *, rng: np.random.Generator, n_boot: int = 1000,
               level: float = 0.8, huber_scale: float = HUBER_SCALE, forms=FORMS) -> FamilyFit:
    """Every form that the points can determine, the law chosen by rolling origin, and its bootstrap."""
    compute, error = np.asarray(compute, dtype=float), 1.0 - np.asarray(accuracy, dtype=float)
    result = FamilyFit(family, compute, error, level)
    for form in forms:
        if can_fit(compute, form):
            result.fits[form] = fit(compute, error, form, huber_scale=huber_scale)
            result.degenerate[form] = degenerate(result.fits[form], compute, error)
    result.rolling = rolling_predictions(compute, error, list(result.fits), huber_scale=huber_scale)
    result.better, result.reason = choose_form(result)
    result.used = law_used(result)
    if result.better is not None:
        result.better = result.used.form
    used = result.best()
    if used is not None and n_boot > 0:
        point = used[0]
        result.boot[point.form] = bootstrap(compute, error, point.form, rng=rng, n_boot=n_boot, point=point,
                                            huber_scale=huber_scale)
        result.intervals[point.form] = param_intervals(result.boot[point.form], level, residual_df(point))
    return result


def law_used(result: FamilyFit) -> Law | None:
    """The chosen form; where rolling origin scored ``BLEND`` sound forms or more, the blend of the
    ``BLEND`` best (the chosen one first). None without a fit."""
    ranked = result.ranked()
    if result.better is not None and len(ranked) >= BLEND > 1 and ranked[0] == result.better:
        return Blend(tuple(result.fits[f] for f in ranked[:BLEND]))
    form = result.law()
    return None if form is None else result.fits[form]


def rolling_predictions(compute, error, forms: list[str], *, huber_scale: float = HUBER_SCALE
                        ) -> dict[str, list[Prediction]]:
    """Rolling-origin predictions of the forms that have at least ``MIN_CUTS`` common cut-offs: the
    most demanding forms are dropped until the rest share that many."""
    ranked = sorted(forms, key=lambda f: MIN_POINTS[f])
    while ranked and len(rolling_cuts(compute, ranked)) < MIN_CUTS:
        ranked.pop()
    return rolling_origin(compute, error, ranked, huber_scale=huber_scale) if len(ranked) >= 2 else {}


def choose_form(result: FamilyFit) -> tuple[str | None, str]:
    """Which form the family's law is, and on what evidence: the lowest rolling-origin score among
    the forms that are not degenerate (all of them if every form is), else AICc, else none."""
    have = distinct_points(result.compute)
    if not result.fits:
        return None, f"{have} distinct compute value(s): too few to fit any form (the power law needs {MIN_POINTS['power']})"
    if len(result.fits) == 1:
        return None, (f"{have} distinct compute value(s): only the power law can be fitted "
                      f"(the next form needs {sorted(MIN_POINTS.values())[1]})")
    sound = [f for f in result.fits if not result.degenerate[f]] or list(result.fits)
    scored = {f: result.score(f) for f in result.rolling if f in sound}
    if scored:
        better = min(scored, key=lambda f: (scored[f], MIN_POINTS[f]))   # a tie goes to the simpler form
        cuts = len(result.rolling[better])
        said = ", ".join(f"{f} {v:.3f}" for f, v in sorted(scored.items(), key=lambda kv: kv[1]))
        blended = f"; the law used averages the log errors of the {BLEND} best" if len(scored) >= BLEND > 1 else ""
        return better, f"rolling origin over {cuts} cut-offs, mean RMSE of log error: {said}{blended}"
    aiccs = {f: result.fits[f].aicc for f in sound if not math.isnan(result.fits[f].aicc)}
    if len(aiccs) >= 2:
        better = min(aiccs, key=aiccs.get)
        return better, ("AICc (too few points for two rolling-origin cut-offs): "
                        + ", ".join(f"{f} {v:.1f}" for f, v in sorted(aiccs.items(), key=lambda kv: kv[1])))
    return None, "too few points for two rolling-origin cut-offs or AICc: cannot tell, the power law is used"
