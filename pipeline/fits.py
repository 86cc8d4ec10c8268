"""Scaling laws of transfer error against pretraining compute, chosen by how well they extrapolate.

Four forms of the error E = 1 - accuracy of one architecture family as a function of its
pretraining compute C (exaFLOPs) are fitted:

    power        E = a C^-b                              the plain power law (M1 of Alabdulmohsin et al. 2022)
    saturating   E = a (C + d)^-b + c                    Zhai et al. 2022 ("Scaling Vision Transformers"); M2 at d = 0
    knee         E = a (1/C + g)^b                       M3: a power law that bends into the floor a g^b near C = 1/g
    sigmoid      (E - c) / (e0 - E)^alpha = a C^-b       M4: also bends at the start, where E leaves e0
                                                         (random guessing) slowly; implicit in E

``c`` is the irreducible error the family saturates at, ``b`` the scaling exponent.

- **Robust fit.** Residuals are taken in log space, log E(C) - log E_obs (errors are relative), with
  a Huber loss (quadratic up to ``HUBER_SCALE`` in log units, linear beyond), by
  ``scipy.optimize.least_squares`` from a grid of starts; the best is kept. Compute is divided by
  its geometric mean before fitting, so the same bounds and starts work from micro studies
  (1e-8 exaFLOPs) to the paper (1e4).
- **Choice of the law: rolling origin.** For several cut-offs in the upper half of the compute
  range, every form is fitted on the points at or below the cut-off and predicts the points above
  it; a form's score is the mean over the cut-offs of the RMSE of its log error on the predicted
  points (the extrapolation it is used for; OLMo's ladder validates its fits the same way). The
  law used averages the log errors of the ``BLEND`` (two) forms with the lowest scores (a ``Blend``,
  named ``a+b``), among those that do not sit at a bound of their fit (``degenerate``). A form is scored only at cut-offs below which it has ``ROLLING_DOF`` more points than
  parameters, and the forms are compared on common cut-offs (the most demanding dropped until two
  remain). Without two cut-offs for two forms, the choice falls back to the small-sample Akaike
  criterion (AICc), and with that undefined, to the power law.
- **Degenerate fits.** A fitted parameter on a bound of its fit was put there by the solver, not
  by the data (an exponent at its cap of 3, a scale of 1e22, a floor equal to the lowest
  observed error). Such a law describes the fitted points and nothing beyond them: it is chosen
  only when every form is degenerate, and the report says so.
- **Bootstrap.** The law used is refitted to resampled data; percentile intervals (t-expanded) of
  its parameters, of the curve and of anything derived from it.
- **Compute multiplier** of family X over family Y: C_X(E) / C_Y(E), the ratio of the compute each
  law needs to reach the same error E, averaged geometrically over the errors both families' laws
  reach within the compute they were measured at; where they share no error, over the errors
  between the two families' ranges, extrapolated (``compute_multiplier`` says which), provided
  each law gets there within ``EXTRAPOLATION_LIMIT`` times its measured compute.

Everything random takes a ``numpy.random.Generator``: the same seed gives the same intervals.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

FORMS = ("power", "saturating", "knee", "sigmoid")
PARAMS = {"power": ("a", "b"), "saturating": ("a", "b", "c", "d"), "knee": ("a", "b", "g"),
          "sigmoid": ("a", "b", "c", "alpha", "e0")}
# A fit needs more points (at distinct compute) than it has parameters.
MIN_POINTS = {form: len(names) + 1 for form, names in PARAMS.items()}
HUBER_SCALE = 0.1    # log units: residuals beyond ~10% relative error count linearly
MAX_EXPONENT = 3.0
MAX_ALPHA = 10.0
# A fitted parameter within this fraction of its bounds' span of a bound sits at it (``at_bounds``).
# In trials, fits that end at a bound land within ~1e-10 of it; fits inside stay 2e-5 or more away (d, the closest).
AT_BOUND = 1e-6
# Bounds that are results, not degeneracies: no floor (c = 0), no offset (d = 0), no knee within reach
# (g at its lowest: a plain power law), alpha = 0 (M4 without its slow start: the saturating law), e0 at its
# top (random guessing at an error of 1).
BENIGN_BOUNDS = {("c", "lower"), ("d", "lower"), ("g", "lower"), ("alpha", "lower"), ("e0", "upper")}
ROLLING_CUTS = 5         # at most this many cut-offs, spread over the compute range ...
ROLLING_FROM = 0.5       # ... over its upper part: from this fraction of the log-compute range on
MIN_CUTS = 2             # fewer cut-offs than this for every form: the law is chosen by AICc
# A form is scored at a cut-off only where it is fitted on this many more points than it has parameters:
# with fewer, its extrapolation measures the noise of a near-exact fit (bench/RESULTS.md, "Extrapolation").
ROLLING_DOF = 3
# The law used averages the log errors of this many of the best-scoring sound forms, where rolling origin
# scored that many (1: the best alone). Two: bench/RESULTS.md, "Extrapolation on published learning curves".
BLEND = 2



@dataclass(frozen=True)
class Fit:
    """One fitted curve, parameters in the data's own compute units (those a form lacks unused)."""
    form: str
    a: float
    b: float
    c: float = 0.0
    d: float = 0.0
    g: float = 0.0
    alpha: float = 0.0
    e0: float = 1.0
    n: int = 0
    rss: float = math.nan   # sum of squared log residuals

    @property
    def params(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in PARAMS[self.form]}

    def error(self, compute) -> np.ndarray:
        compute = np.asarray(compute, dtype=float)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            if self.form == "knee":
                return self.a * (1.0 / compute + self.g) ** self.b
            if self.form == "sigmoid":
                return sigmoid_error(np.log(self.a) - self.b * np.log(compute), self.c, self.alpha, self.e0)
            return self.a * (compute + self.d) ** -self.b + self.c

    def compute_for(self, error) -> np.ndarray:
        """Compute at which the curve reaches ``error`` (inf where it never does: at or below its
        floor; NaN where it is there before any compute)."""
        error = np.asarray(error, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if self.form == "knee":
                inverse = (error / self.a) ** (1.0 / self.b) - self.g
                compute = np.where(inverse > 0, 1.0 / np.maximum(inverse, 1e-300), np.inf)
            elif self.form == "sigmoid":
                ratio = (error - self.c) / np.maximum(self.e0 - error, 1e-300) ** self.alpha
                compute = np.where(error >= self.e0, np.nan, np.where(
                    ratio > 0, (np.maximum(ratio, 1e-300) / self.a) ** (-1.0 / self.b), np.inf))
            else:
                above = error - self.c
                compute = np.where(above > 0, (np.maximum(above, 1e-300) / self.a) ** (-1.0 / self.b) - self.d,
                                   np.inf)
        return np.where(compute > 0, compute, np.nan)  # reached before any compute: undefined

    @property
    def aicc(self) -> float:
        """Small-sample AIC with Gaussian log residuals; k counts the noise scale. NaN when n <= k + 1."""
        k = len(PARAMS[self.form]) + 1
        if self.n <= k + 1 or not self.rss > 0:
            return math.nan
        return self.n * math.log(self.rss / self.n) + 2 * k + 2 * k * (k + 1) / (self.n - k - 1)


@dataclass(frozen=True)
class Blend:
    """A law that averages the log errors of two fitted forms: E = (E_1 E_2)^(1/2). Used where the
    two forms that extrapolated best on the family's own points are both sound (``fit_family``):
    where one bends too early and the other too late, their geometric mean errs less than either
    (bench/RESULTS.md, "Extrapolation on published learning curves")."""
    parts: tuple[Fit, ...]
    weights: tuple[float, ...] | None = None   # of the parts' log errors (None: equal); a bootstrap
    # replicate is one part alone (weights 1 and 0), so that the band spans the choice between them

    @property
    def form(self) -> str:
        return "+".join(p.form for p in self.parts)

    @property
    def w(self) -> np.ndarray:
        return np.full(len(self.parts), 1 / len(self.parts)) if self.weights is None else np.asarray(self.weights)

    @property
    def n(self) -> int:
        return self.parts[0].n

    @property
    def params(self) -> dict[str, float]:
        """Every part's parameters, named ``<form>.<parameter>``."""
        return {f"{p.form}.{name}": value for p in self.parts for name, value in p.params.items()}

    @property
    def aicc(self) -> float:
        return math.nan

    def error(self, compute) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.exp(sum(w * np.log(p.error(compute)) for w, p in zip(self.w, self.parts) if w))

    def compute_for(self, error) -> np.ndarray:
        """Compute at which the blend reaches ``error``, by bisection in log compute over 1e-30-1e30
        (the blend falls with compute): inf where it never gets that low, NaN where it starts below."""
        error = np.asarray(error, dtype=float)
        lo, hi = np.full(error.shape, -69.0), np.full(error.shape, 69.0)
        with np.errstate(invalid="ignore"):
            never, before = error <= self.error(np.exp(hi)), error >= self.error(np.exp(lo))
            for _ in range(80):
                mid = (lo + hi) / 2
                above = self.error(np.exp(mid)) > error
                lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        return np.where(never, np.inf, np.where(before, np.nan, np.exp((lo + hi) / 2)))


Law = Fit | Blend


def parts(law: Law) -> tuple[Fit, ...]:
    return law.parts if isinstance(law, Blend) else (law,)


def param_count(law: Law) -> int:
    return sum(len(PARAMS[p.form]) for p in parts(law))


def min_points(name: str) -> int:
    """Distinct compute values a law needs (a blend ``a+b``: what its more demanding part needs)."""
    return max(MIN_POINTS[form] for form in name.split("+"))


# ----------------------------------------------------------------------------- the M4 form

def _softplus(t: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, t)


def _sigmoid_logit(level: np.ndarray, alpha: float, iterations: int = 60) -> np.ndarray:
    """t with log u - alpha log(1 - u) = ``level``, u = 1 / (1 + exp(-t)): Newton's method kept inside a
    bracket that shrinks by bisection (the left side increases with t)."""
    level = np.asarray(level, dtype=float)
    # The left side h(t) = -softplus(-t) + alpha softplus(t) is below level at lo (t <= 0: h <= t + alpha log 2;
    # t > 0: h <= alpha (t + log 2)) and above it at hi (h >= t - log 2 for t <= 0, >= alpha t - log 2 for t >= 0).
    lo = np.minimum(level - alpha - 1.0, level / max(alpha, 1e-9) - 1.0)
    hi = np.minimum(np.maximum(level + 1.0, (level + 1.0) / max(alpha, 1e-9)), 700.0)
    t = np.clip(np.where(level < 0, level, level / max(alpha, 1e-3)), lo, hi)
    for _ in range(iterations):
        value = -_softplus(-t) + alpha * _softplus(t) - level
        done = (np.abs(value) <= 1e-13 * np.maximum(1.0, np.abs(level))) | (hi - lo <= 1e-13 * np.maximum(1.0, np.abs(t)))
        if np.all(done):
            break
        slope = 1.0 / (1.0 + np.exp(t)) + alpha / (1.0 + np.exp(-t))
        lo, hi = np.where(value < 0, t, lo), np.where(value > 0, t, hi)
        step = t - value / np.maximum(slope, 1e-300)
        t = np.where(done, t, np.where((step > lo) & (step < hi), step, (lo + hi) / 2))
    return t


def sigmoid_error(log_f, c: float, alpha: float, e0: float) -> np.ndarray:
    """E with (E - c) / (e0 - E)^alpha = f, for log f given: E = c + (e0 - c) u, u in (0, 1)."""
    span = e0 - c
    t = _sigmoid_logit(np.asarray(log_f, dtype=float) + (alpha - 1.0) * math.log(span), alpha)
    return c + span / (1.0 + np.exp(-t))


# ----------------------------------------------------------------------------- fitting

def _curve(theta: np.ndarray, x: np.ndarray, form: str) -> tuple[np.ndarray, np.ndarray]:
    """E and d log E / d theta at normalized compute x; theta = (log a, b, ...) as ``_to_theta``."""
    if form == "sigmoid":
        return _sigmoid_curve(theta, x)
    log_a, b = theta[0], theta[1]
    if form == "knee":
        g = math.exp(theta[2])
        inner = 1.0 / x + g
        e = np.exp(log_a + b * np.log(inner))
        return e, np.stack([np.ones_like(x), np.log(inner), b * g / inner], axis=1)
    c, d = (theta[2], theta[3]) if form == "saturating" else (0.0, 0.0)
    base = x + d
    power = np.exp(log_a - b * np.log(base))
    e = power + c
    columns = [power / e, -power * np.log(base) / e]
    if form == "saturating":
        columns += [1.0 / e, -b * power / base / e]
    return e, np.stack(columns, axis=1)


def _sigmoid_curve(theta: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The M4 form and its log-derivatives by implicit differentiation of
    log u - alpha log(1 - u) = log f + (alpha - 1) log(e0 - c), E = c + (e0 - c) u."""
    log_a, b, c, alpha, e0 = theta
    span = e0 - c
    log_span = math.log(span)
    t = _sigmoid_logit(log_a - b * np.log(x) + (alpha - 1.0) * log_span, alpha)
    u = 1.0 / (1.0 + np.exp(-t))
    slope = (1.0 - u) + alpha * u                    # d(left side)/dt
    du_dt = u * (1.0 - u)
    dlevel = [np.ones_like(x), -np.log(x), np.full_like(x, -(alpha - 1.0) / span),
              np.full_like(x, log_span) + np.log1p(-np.minimum(u, 1 - 1e-16)), np.full_like(x, (alpha - 1.0) / span)]
    du = [du_dt * dl / slope for dl in dlevel]       # dt = (d level - d left side at fixed t) / slope
    e = c + span * u
    de = [span * du[0], span * du[1], 1.0 - u + span * du[2], span * du[3], u + span * du[4]]
    return e, np.stack(de, axis=1) / e[:, None]


def _log_a_for(x: np.ndarray, e: np.ndarray, b: float, inner: np.ndarray | None = None) -> float:
    return float(np.mean(np.log(e) + b * np.log(x if inner is None else inner)))


def _starts(x: np.ndarray, e: np.ndarray, form: str) -> list[np.ndarray]:
    """A small grid over the nonlinear parameters; log a (and b for the M4 form) then follow by least squares."""
    if form == "knee":
        out = []
        for b, log_g in itertools.product((0.3, 1.0), (-math.log(x.max()) - 1, -math.log(np.median(x)),
                                                       -math.log(x.min()))):
            inner = 1.0 / x + math.exp(log_g)
            out.append(np.array([float(np.mean(np.log(e) - b * np.log(inner))), b, log_g]))
        return out
    if form == "sigmoid":
        return _sigmoid_starts(x, e)
    out = []
    floors = (0.0, 0.5, 0.9) if form == "saturating" else (0.0,)
    offsets = (0.0, float(x.min())) if form == "saturating" else (0.0,)
    for b, floor, d in itertools.product((0.2, 0.5, 1.0), floors, offsets):
        c = floor * float(e.min())
        out.append(np.array([_log_a_for(x + d, e - c, b), b, c, d][:len(PARAMS[form])]))
    return out


def _e0_top(e: np.ndarray) -> float:
    """The upper bound of e0: an error of 1 (random guessing at most errs always), or, for losses above
    1, ten times the largest."""
    return 1.0 if float(e.max()) < 1.0 else 10.0 * float(e.max())


def _sigmoid_starts(x: np.ndarray, e: np.ndarray) -> list[np.ndarray]:
    top, high = _e0_top(e), float(e.max())
    out = []
    for e0, share, alpha in itertools.product((top, (high + top) / 2), (0.0, 0.8), (0.5, 2.0)):
        c = share * float(e.min())
        # log(E - c) - alpha log(e0 - E) = log a - b log x: a line in log x
        slope, log_a = np.polyfit(np.log(x), np.log(e - c) - alpha * np.log(e0 - e), 1)
        out.append(np.array([log_a, float(np.clip(-slope, 1e-3, MAX_EXPONENT)), c, alpha, e0]))
    return out


def _bounds(x: np.ndarray, e: np.ndarray, form: str) -> tuple[list[float], list[float]]:
    lower, upper = [-50.0, 1e-3], [50.0, MAX_EXPONENT]
    floor_top = float(e.min()) * (1 - 1e-6)      # the floor stays below every observed error
    if form == "saturating":                     # ... the offset within the measured compute
        lower += [0.0, 0.0]
        upper += [floor_top, float(x.max())]
    elif form == "knee":                         # the knee from far beyond the data to below its start
        lower += [-math.log(x.max()) - 10.0]
        upper += [-math.log(x.min()) + 5.0]
    elif form == "sigmoid":                      # e0 above every observed error
        lower += [0.0, 0.0, float(e.max()) * (1 + 1e-6)]
        upper += [floor_top, MAX_ALPHA, _e0_top(e)]
    return lower, upper


def _from_theta(name: str, value: float, b: float, scale: float) -> float:
    """A value of parameter ``name`` in the solver's units (log a, normalized d, log of normalized g)
    in data units."""
    convert = {"a": lambda: math.exp(value + b * math.log(scale)), "d": lambda: value * scale,
               "g": lambda: math.exp(value) / scale}
    return convert.get(name, lambda: value)()


def _to_theta(f: Fit, scale: float) -> np.ndarray:
    """A fit's parameters in the solver's normalized units (compute / scale)."""
    theta = {"a": math.log(f.a) - f.b * math.log(scale), "b": f.b, "c": f.c, "d": f.d / scale,
             "g": math.log(max(f.g * scale, 1e-300)), "alpha": f.alpha, "e0": f.e0}
    return np.array([theta[name] for name in PARAMS[f.form]])


def at_bounds(f: Fit, compute, error) -> dict[str, tuple[str, float]]:
    """The parameters of ``f``, fitted to (compute, error), that sit at a bound of the fit:
    {name: ("lower" | "upper", the bound in data units)}. Such a parameter is where the solver was
    stopped, not where the data put it, and its bootstrap interval is cut at the bound."""
    compute, error = np.asarray(compute, dtype=float), np.asarray(error, dtype=float)
    scale = _scale(compute)
    lower, upper = _bounds(compute / scale, error, f.form)
    found = {}
    for i, (name, value) in enumerate(zip(PARAMS[f.form], _to_theta(f, scale))):
        for side, bound in (("lower", lower[i]), ("upper", upper[i])):
            if abs(value - bound) <= AT_BOUND * (upper[i] - lower[i]):
                found[name] = (side, _from_theta(name, bound, f.b, scale))
    return found


def degenerate(f: Fit, compute, error) -> dict[str, tuple[str, float]]:
    """The parameters of ``f`` at a bound that makes it degenerate (``at_bounds`` less
    ``BENIGN_BOUNDS``): the law describes the points it was fitted on and nothing beyond them."""
    return {name: at for name, at in at_bounds(f, compute, error).items() if (name, at[0]) not in BENIGN_BOUNDS}


def _solve(x, e, form, starts, huber_scale) -> np.ndarray:
    log_e = np.log(e)
    lower, upper = _bounds(x, e, form)
    best, best_cost = None, math.inf
    for start in starts:
        start = np.clip(start, lower, np.nextafter(np.array(upper), -np.inf))
        result = least_squares(lambda t: np.log(_curve(t, x, form)[0]) - log_e, start,
                               jac=lambda t: _curve(t, x, form)[1], bounds=(lower, upper),
                               loss="huber", f_scale=huber_scale, x_scale="jac", ftol=1e-6, xtol=1e-6)
        if result.cost < best_cost:
            best, best_cost = result.x, result.cost
    return best


def _scale(compute: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(compute))))


def log_error_jacobian(f: Law, compute, scale: float) -> np.ndarray:
    """d log E / d theta of ``f`` at ``compute``, theta being the solver's parameters for compute
    divided by ``scale`` (log a, b, ...; a blend: its parts' in turn): one row per compute value."""
    x = np.asarray(compute, dtype=float) / scale
    if isinstance(f, Blend):
        return np.hstack([w * log_error_jacobian(p, compute, scale) for w, p in zip(f.w, f.parts)])
    return _curve(_to_theta(f, scale), x, f.form)[1]


def _fit_of(form: str, theta: np.ndarray, scale: float, **extra) -> Fit:
    values = {name: _from_theta(name, float(v), float(theta[1]), scale) for name, v in zip(PARAMS[form], theta)}
    return Fit(form, **values, **extra)


def shifted(f: Law, step: np.ndarray, scale: float) -> Law:
    """``f`` with its solver parameters (for compute divided by ``scale``) moved by ``step``."""
    if isinstance(f, Blend):
        bounds = np.cumsum([0] + [len(PARAMS[p.form]) for p in f.parts])
        return Blend(tuple(shifted(p, step[i:j], scale) for p, i, j in zip(f.parts, bounds[:-1], bounds[1:])), f.weights)
    return _fit_of(f.form, _to_theta(f, scale) + step, scale, n=f.n, rss=f.rss)


def fit(compute, error, form: str = "saturating", *, huber_scale: float = HUBER_SCALE,
        warm_start: Fit | None = None) -> Fit:
    """Fit one form to (compute, error) points; errors must be positive (fractions in (0, 1] for
    the M4 form's e0 to mean random guessing). With ``warm_start`` only that start is tried
    (bootstrap refits sit near the fit to all points)."""
    compute, error = np.asarray(compute, dtype=float), np.asarray(error, dtype=float)
    if form not in PARAMS:
        raise ValueError(f"unknown form {form!r}; forms are {FORMS}")
    if np.any(compute <= 0) or np.any(error <= 0):
        raise ValueError("compute and error must be positive (an accuracy of 100% has no log error)")
    scale = _scale(compute)
    x = compute / scale
    starts = [_to_theta(warm_start, scale)] if warm_start is not None else _starts(x, error, form)
    theta = _solve(x, error, form, starts, huber_scale)
    if form in ("saturating", "sigmoid"):
        theta[2] = 0.0 if theta[2] < 1e-9 else theta[2]      # at the bound: no floor
    if form == "saturating":
        theta[3] = 0.0 if theta[3] < 1e-9 else theta[3]      # ... no offset
    residuals = np.log(_curve(theta, x, form)[0]) - np.log(error)
    return _fit_of(form, theta, scale, n=len(error), rss=float(residuals @ residuals))


def distinct_points(compute) -> int:
    return len(np.unique(np.asarray(compute, dtype=float)))


def can_fit(compute, form: str) -> bool:
    return distinct_points(compute) >= min_points(form)


def modified_residuals(compute, error, point: Fit) -> np.ndarray:
    """Log residuals (observed - fitted) divided by sqrt(1 - leverage), centred: raw residuals
    are too small by the parameters they were fitted with, most at the ends of the compute range
    (Davison & Hinkley 1997, Sec. 6.2-6.4)."""
    scale = _scale(compute)
    fitted, jac = point.error(compute), log_error_jacobian(point, compute, scale)
    q, _ = np.linalg.qr(jac)
    leverage = np.minimum((q ** 2).sum(axis=1), 0.99)
    modified = (np.log(error) - np.log(fitted)) / np.sqrt(1 - leverage)
    return modified - modified.mean()


def _refit(compute, replicate: tuple[tuple[np.ndarray, ...], tuple[float, ...]], *, point: Law,
           huber_scale: float) -> Law:
    """One bootstrap replicate refitted: each part of ``point`` on its own data, from its own fit; a
    blend's replicate with the weights drawn for it."""
    data, weights = replicate
    fitted = [fit(compute, r, p.form, huber_scale=huber_scale, warm_start=p) for p, r in zip(parts(point), data)]
    return Blend(tuple(fitted), weights) if isinstance(point, Blend) else fitted[0]


def _replicates(compute, error, point: Law, rng: np.random.Generator, n_boot: int) -> list[tuple]:
    """Residual-bootstrap data: per replicate, each part's fitted curve times exp of its modified log
    residuals, drawn with replacement, the same draw for every part (a blend's parts are bootstrapped
    each as itself, their errors paired), capped at 1 (and below a sigmoid part's e0); and, for a
    blend, which part the replicate stands for (one-hot weights, drawn at random): the law's
    uncertainty then includes the choice between its two forms."""
    n, members = len(compute), parts(point)
    curves = [(p.error(compute), modified_residuals(compute, error, p)) for p in members]
    cap = [p.e0 * (1 - 1e-3) if p.form == "sigmoid" else 1.0 for p in members]
    out = []
    for _ in range(n_boot):
        if len(members) == 1:
            draws, weights = [rng.choice(curves[0][1], size=n)], None
        else:
            idx = rng.integers(0, n, size=n)
            draws = [residuals[idx] for _, residuals in curves]
            pick = rng.integers(len(members))
            weights = tuple(float(k == pick) for k in range(len(members)))
        out.append((tuple(np.minimum(fitted * np.exp(d), top) for (fitted, _), d, top in zip(curves, draws, cap)),
                    weights))
    return out


def bootstrap(compute, error, form: str, *, rng: np.random.Generator, n_boot: int = 1000,
              point: Law | None = None, method: str = "residual", huber_scale: float = HUBER_SCALE) -> list[Law]:
    """``n_boot`` refits to data made like the observed data.

    ``residual`` (default): the fitted curve at the measured compute, times exp of modified log
    residuals drawn with replacement (``_replicates``; a blend: each part from its own curve and
    residuals, the same draw): every replicate keeps every compute value, which matters when a
    family has 5-7 runs. ``pairs``: the (compute, error) points drawn with replacement,
    which does not trust the curve's form but undercovers for small studies (see docs/analysis.md);
    draws with too few distinct compute values to determine the curve are drawn again."""
    compute, error = np.asarray(compute, dtype=float), np.asarray(error, dtype=float)
    point = point or fit(compute, error, form, huber_scale=huber_scale)
    fits, n = [], len(compute)
    if method == "residual":
        refit = functools.partial(_refit, compute, point=point, huber_scale=huber_scale)
        fits = _map(refit, _replicates(compute, error, point, rng, n_boot), sum(REFIT_SECONDS[p.form] for p in parts(point)))
    elif method == "pairs":
        while len(fits) < n_boot:
            idx = rng.integers(0, n, size=n)
            if can_fit(compute[idx], form):
                fits.append(_refit(compute[idx], ((error[idx],) * len(parts(point)), None), point=point,
                                   huber_scale=huber_scale))
    else:
        raise ValueError(f"unknown bootstrap method {method!r}: 'residual' or 'pairs'")
    return fits


# Seconds per bootstrap refit on one core of the dev machine (measured for issue 15 and issue 29; bench/RESULTS.md,
# "The tiny study end to end" and "Extrapolation"): the bounded forms take several times the power law's iterations.
REFIT_SECONDS = {"power": 0.0015, "saturating": 0.016, "knee": 0.006, "sigmoid": 0.03}
PARALLEL_FROM_S = 4.0   # refits expected to take longer than this run on every core (a pool costs ~1 s to start)
_pool = None


def _map(work, items: list, seconds_each: float) -> list:
    """``[work(item) for item in items]``, in order; on a process pool over this machine's cores when
    that is expected to take more than ``PARALLEL_FROM_S`` (the pool is started once per process)."""
    global _pool
    from concurrent.futures.process import BrokenProcessPool
    cores = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), 8)
    main = getattr(sys.modules.get("__main__"), "__file__", None)   # spawned workers import it again
    if cores < 2 or _pool is False or len(items) * seconds_each < PARALLEL_FROM_S or (main and not os.path.exists(main)):
        return [work(item) for item in items]
    try:
        if _pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            # spawn: the caller may be a Ray driver, whose threads a fork would copy mid-work
            _pool = ProcessPoolExecutor(max_workers=cores, mp_context=multiprocessing.get_context("spawn"))
        return list(_pool.map(work, items, chunksize=max(1, len(items) // (4 * cores))))
    except BrokenProcessPool:   # workers that cannot start (e.g. a __main__ read from stdin): one process
        _pool = False
        return [work(item) for item in items]


def percentile_level(level: float, df: int | None) -> float:
    """The bootstrap percentile level that gives ``level`` coverage when the noise is estimated
    from ``df`` residual degrees of freedom: the bootstrap draws noise at the estimated scale as if
    it were known, so a plain percentile interval covers like a z-interval where a t-interval is
    due. Expanding to the level whose normal quantile is the t quantile corrects for that
    (Hesterberg's expanded percentile interval); measured in bench/bench_fits.py and docs/analysis.md.
    None: the plain percentile level."""
    if df is None:
        return level
    from scipy.stats import norm, t
    return float(2 * norm.cdf(t.ppf((1 + level) / 2, max(df, 1))) - 1)


def _tails(level: float, df: int | None) -> list[float]:
    tail = (1 - percentile_level(level, df)) / 2 * 100
    return [tail, 100 - tail]


def interval(values, level: float, df: int | None = None) -> tuple[float, float]:
    """Percentile interval of bootstrap values (NaN ignored), expanded for ``df`` (see
    ``percentile_level``)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(values, _tails(level, df))
    return (float(lo), float(hi))


def residual_df(f: Law) -> int:
    return f.n - param_count(f)


def param_intervals(fits: list[Law], level: float, df: int | None = None) -> dict[str, tuple[float, float]]:
    if not fits:
        return {}
    return {name: interval([f.params[name] for f in fits], level, df) for name in fits[0].params}


def curve_band(fits: list[Fit], compute, level: float, df: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile band of the bootstrap curves at ``compute``."""
    curves = np.stack([f.error(compute) for f in fits])
    lo, hi = _tails(level, df)
    return np.nanpercentile(curves, lo, axis=0), np.nanpercentile(curves, hi, axis=0)


# ----------------------------------------------------------------------------- rolling origin

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


# ----------------------------------------------------------------------------- one family

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


# ----------------------------------------------------------------------------- compute multiplier

def reached_errors(f: Fit, compute_range: tuple[float, float]) -> tuple[float, float]:
    """(lowest, highest) error the curve reaches over the measured compute."""
    lo, hi = f.error(np.array([compute_range[1], compute_range[0]]))
    return float(lo), float(hi)


def common_errors(x: FamilyFit, y: FamilyFit, points: int = 50) -> np.ndarray | None:
    """Errors both families' fitted curves reach within their measured compute (log-spaced)."""
    return shared_errors(x.best()[0], x.compute_range, y.best()[0], y.compute_range, points)


def shared_errors(fx: Fit, range_x: tuple[float, float], fy: Fit, range_y: tuple[float, float],
                  points: int = 50) -> np.ndarray | None:
    """Errors both curves reach within their compute ranges (log-spaced); None if they share none."""
    (lx, hx), (ly, hy) = reached_errors(fx, range_x), reached_errors(fy, range_y)
    lo, hi = max(lx, ly), min(hx, hy)
    if not lo < hi:
        return None
    return np.geomspace(lo, hi, points)


# An extrapolated multiplier is given only where each law reaches the errors between the two families'
# ranges within this factor of the compute it was measured at (one decade); beyond, not available.
EXTRAPOLATION_LIMIT = 10.0


def gap_errors(fx: Fit, range_x: tuple[float, float], fy: Fit, range_y: tuple[float, float],
               points: int = 50) -> np.ndarray | None:
    """Where two curves' error ranges do not overlap: the errors between them (from the lower range's
    top to the upper range's bottom, log-spaced), which both families reach only by extrapolation;
    None where they overlap, or where a law would need more than ``EXTRAPOLATION_LIMIT`` times beyond
    (or below) its measured compute to reach them."""
    (lx, hx), (ly, hy) = reached_errors(fx, range_x), reached_errors(fy, range_y)
    lo, hi = (hy, lx) if hy < lx else (hx, ly) if hx < ly else (math.nan, math.nan)
    if not lo < hi:
        return None
    errors = np.geomspace(lo, hi, points)
    for f, (c_lo, c_hi) in ((fx, range_x), (fy, range_y)):
        needed = f.compute_for(errors)
        if not np.all((needed >= c_lo / EXTRAPOLATION_LIMIT) & (needed <= c_hi * EXTRAPOLATION_LIMIT)):
            return None
    return errors


def multiplier(fx: Fit, fy: Fit, errors: np.ndarray) -> float:
    """Geometric mean over ``errors`` of C_X(E) / C_Y(E); NaN where neither curve gets there."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = fx.compute_for(errors) / fy.compute_for(errors)
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    return float(np.exp(np.mean(np.log(ratio)))) if len(ratio) else math.nan


def compute_multiplier(x: FamilyFit, y: FamilyFit, *, level: float | None = None,
                       extrapolate: bool = True) -> dict | None:
    """How many times the compute of family ``y`` family ``x`` needs for the same error, over
    the errors both cover, with a bootstrap interval (the families' resamples are independent,
    so replicate i pairs x's i-th refit with y's i-th). Where the curves share no error: with
    ``extrapolate``, over the errors between their ranges (``extrapolated`` True: each law is used
    beyond its runs, at most ``EXTRAPOLATION_LIMIT`` times, and the interval says how much less that
    is known); else, or beyond that limit, None."""
    if x.best() is None or y.best() is None:
        return None
    (fx, boot_x), (fy, boot_y) = x.best(), y.best()
    errors, extrapolated = common_errors(x, y), False
    if errors is None and extrapolate:
        errors, extrapolated = gap_errors(fx, x.compute_range, fy, y.compute_range), True
    if errors is None:
        return None
    replicates = np.array([multiplier(bx, by, errors) for bx, by in zip(boot_x, boot_y)])
    level = level if level is not None else x.level
    df = residual_df(fx) + residual_df(fy)   # both families' noise scales were estimated
    return {"x": x.family, "y": y.family, "form_x": fx.form, "form_y": fy.form,
            "multiplier": multiplier(fx, fy, errors), "interval": interval(replicates, level, df), "level": level,
            "accuracy_range": (float(1 - errors[-1]), float(1 - errors[0])),
            # the ratio is constant only if the curves are shifted copies: its value at either end
            "at_range_ends": (multiplier(fx, fy, errors[-1:]), multiplier(fx, fy, errors[:1])),
            "undefined_replicates": int(np.isnan(replicates).sum()), "replicates": len(replicates),
            "extrapolated": extrapolated}
