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
- **Degenerate fits.** A fitted parameter on a bound of its fit was put there by the solver, not
  by the data (an exponent at its cap of 3, a scale of 1e22, a floor equal to the lowest
  observed error). Such a law describes the fitted points and nothing beyond them: it is chosen
  only when every form is degenerate, and the report says so.

The choice among the forms is ``pipeline.analysis.law_choice``'s, the intervals
``pipeline.analysis.law_bootstrap``'s, the comparison of two families ``pipeline.analysis.multipliers``'.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

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
    scale = compute_scale(compute)
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


def _last_curve(x: np.ndarray, form: str):
    """``_curve`` at x as a function of theta that keeps its last answer: the solver asks for the
    residuals and then the Jacobian at the same theta, one evaluation serves both (the same numbers)."""
    last: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def curve(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = np.asarray(theta, dtype=float).tobytes()
        if key not in last:
            last.clear()
            last[key] = _curve(theta, x, form)
        return last[key]
    return curve


def _solve(x, e, form, starts, huber_scale) -> np.ndarray:
    log_e = np.log(e)
    lower, upper = _bounds(x, e, form)
    best, best_cost = None, math.inf
    curve = _last_curve(x, form)
    for start in starts:
        start = np.clip(start, lower, np.nextafter(np.array(upper), -np.inf))
        result = least_squares(lambda t: np.log(curve(t)[0]) - log_e, start,
                               jac=lambda t: curve(t)[1], bounds=(lower, upper),
                               loss="huber", f_scale=huber_scale, x_scale="jac", ftol=1e-6, xtol=1e-6)
        if result.cost < best_cost:
            best, best_cost = result.x, result.cost
    return best


def compute_scale(compute: np.ndarray) -> float:
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
    scale = compute_scale(compute)
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
