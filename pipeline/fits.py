"""Scaling laws of transfer error against pretraining compute, with honest uncertainty.

Two forms are fitted to the error E = 1 - accuracy of one architecture family as a function of its
pretraining compute C (exaFLOPs):

    saturating   E(C) = a (C + d)^(-b) + c      (Zhai et al., "Scaling Vision Transformers", 2022)
    power        E(C) = a C^(-b)                 (the plain power law, for comparison)

``c`` is the irreducible error the family saturates at, ``b`` the scaling exponent and ``d`` the
compute below which extra compute barely helps (the curve flattens to the left).

- **Robust fit.** Residuals are taken in log space, log E(C) - log E_obs (errors are relative, so
  a point at 5% error weighs as much as one at 50%), with a Huber loss (quadratic up to
  ``huber_scale`` in log units, linear beyond: one bad run cannot drag the curve), by
  ``scipy.optimize.least_squares`` from several starts; the best is kept. Compute is divided by its
  geometric mean before fitting so that the same bounds and starts work from micro studies
  (1e-8 exaFLOPs) to the paper (1e4).
- **Bootstrap.** Points are resampled with replacement and every resample refitted (warm-started);
  percentile intervals of the parameters, of the curve and of anything derived from it.
- **Backtest.** Fit on all but the largest-compute points and predict those: the test a scaling law
  is for. The error is reported in accuracy points.
- **Which form fits better**: the backtest error when both forms can be backtested, else the
  small-sample Akaike criterion (AICc, Gaussian on the log residuals), else too few points to tell.
- **Compute multiplier** of family X over family Y: C_X(E) / C_Y(E), the ratio of the compute each
  fitted curve needs to reach the same error E, averaged geometrically over the errors both
  families' fitted curves reach within the compute they were measured at.

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

FORMS = ("saturating", "power")
PARAMS = {"saturating": ("a", "b", "c", "d"), "power": ("a", "b")}
# A fit needs more points (at distinct compute) than it has parameters.
MIN_POINTS = {form: len(names) + 1 for form, names in PARAMS.items()}
HUBER_SCALE = 0.1    # log units: residuals beyond ~10% relative error count linearly
MAX_EXPONENT = 3.0
# A fitted parameter within this fraction of its bounds' span of a bound sits at it (``at_bounds``).
# In trials, fits that end at a bound land within ~1e-10 of it; fits inside stay 2e-5 or more away (d, the closest).
AT_BOUND = 1e-6


@dataclass(frozen=True)
class Fit:
    """One fitted curve, parameters in the data's own compute units."""
    form: str
    a: float
    b: float
    c: float = 0.0
    d: float = 0.0
    n: int = 0
    rss: float = math.nan   # sum of squared log residuals

    @property
    def params(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in PARAMS[self.form]}

    def error(self, compute) -> np.ndarray:
        compute = np.asarray(compute, dtype=float)
        return self.a * (compute + self.d) ** -self.b + self.c

    def compute_for(self, error) -> np.ndarray:
        """Compute at which the curve reaches ``error`` (inf where it never does: error <= c)."""
        error = np.asarray(error, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            above = error - self.c
            compute = np.where(above > 0, (np.maximum(above, 1e-300) / self.a) ** (-1.0 / self.b) - self.d, np.inf)
        return np.where(compute > 0, compute, np.nan)  # reached before any compute: undefined

    @property
    def aicc(self) -> float:
        """Small-sample AIC with Gaussian log residuals; k counts the noise scale. NaN when n <= k + 1."""
        k = len(PARAMS[self.form]) + 1
        if self.n <= k + 1 or not self.rss > 0:
            return math.nan
        return self.n * math.log(self.rss / self.n) + 2 * k + 2 * k * (k + 1) / (self.n - k - 1)


# ----------------------------------------------------------------------------- fitting

def _curve(theta: np.ndarray, x: np.ndarray, form: str) -> tuple[np.ndarray, np.ndarray]:
    """E and d log E / d theta at normalized compute x; theta = (log a, b[, c, d])."""
    log_a, b = theta[0], theta[1]
    c, d = (theta[2], theta[3]) if form == "saturating" else (0.0, 0.0)
    base = x + d
    power = np.exp(log_a - b * np.log(base))
    e = power + c
    columns = [power / e, -power * np.log(base) / e]
    if form == "saturating":
        columns += [1.0 / e, -b * power / base / e]
    return e, np.stack(columns, axis=1)


def _starts(x: np.ndarray, e: np.ndarray, form: str) -> list[np.ndarray]:
    """A small grid of exponents, floors and offsets; log a then follows by least squares."""
    out = []
    floors = (0.0, 0.5, 0.9) if form == "saturating" else (0.0,)
    offsets = (0.0, float(x.min())) if form == "saturating" else (0.0,)
    for b, floor, d in itertools.product((0.2, 0.5, 1.0), floors, offsets):
        c = floor * float(e.min())
        log_a = float(np.mean(np.log(e - c) + b * np.log(x + d)))
        out.append(np.array([log_a, b, c, d][:len(PARAMS[form])]))
    return out


def _bounds(x: np.ndarray, e: np.ndarray, form: str) -> tuple[list[float], list[float]]:
    lower, upper = [-50.0, 1e-3], [50.0, MAX_EXPONENT]
    if form == "saturating":
        # the floor stays below every observed error; the offset within the measured compute
        lower += [0.0, 0.0]
        upper += [float(e.min()) * (1 - 1e-6), float(x.max())]
    return lower, upper


def _from_theta(name: str, value: float, b: float, scale: float) -> float:
    """A value of parameter ``name`` in the solver's units (log a, normalized d) in data units."""
    return {"a": lambda: math.exp(value + b * math.log(scale)), "d": lambda: value * scale}.get(name, lambda: value)()


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


def _to_theta(f: Fit, scale: float) -> np.ndarray:
    """A fit's parameters in the solver's normalized units (compute / scale)."""
    return np.array([math.log(f.a) - f.b * math.log(scale), f.b, f.c, f.d / scale][:len(PARAMS[f.form])])


def log_error_jacobian(f: Fit, compute, scale: float) -> np.ndarray:
    """d log E / d theta of ``f`` at ``compute``, theta being the solver's parameters for compute
    divided by ``scale`` (log a, b[, c, d]): one row per compute value."""
    return _curve(_to_theta(f, scale), np.asarray(compute, dtype=float) / scale, f.form)[1]


def shifted(f: Fit, step: np.ndarray, scale: float) -> Fit:
    """``f`` with its solver parameters (for compute divided by ``scale``) moved by ``step``."""
    theta = _to_theta(f, scale) + step
    values = {name: _from_theta(name, float(v), float(theta[1]), scale) for name, v in zip(PARAMS[f.form], theta)}
    return Fit(f.form, n=f.n, rss=f.rss, **values)


def fit(compute, error, form: str = "saturating", *, huber_scale: float = HUBER_SCALE,
        warm_start: Fit | None = None) -> Fit:
    """Fit one form to (compute, error) points; errors must lie in (0, 1]. With ``warm_start``
    only that start is tried (bootstrap refits sit near the fit to all points)."""
    compute, error = np.asarray(compute, dtype=float), np.asarray(error, dtype=float)
    if form not in PARAMS:
        raise ValueError(f"unknown form {form!r}; forms are {FORMS}")
    if np.any(compute <= 0) or np.any(error <= 0):
        raise ValueError("compute and error must be positive (an accuracy of 100% has no log error)")
    scale = _scale(compute)
    x = compute / scale
    starts = [_to_theta(warm_start, scale)] if warm_start is not None else _starts(x, error, form)
    theta = _solve(x, error, form, starts, huber_scale)
    if form == "saturating":
        theta[2:] = np.where(theta[2:] < 1e-9, 0.0, theta[2:])   # at the bound: no floor / no offset
    residuals = np.log(_curve(theta, x, form)[0]) - np.log(error)
    a = math.exp(theta[0] + theta[1] * math.log(scale))
    extra = {"c": float(theta[2]), "d": float(theta[3]) * scale} if form == "saturating" else {}
    return Fit(form, a=a, b=float(theta[1]), n=len(error), rss=float(residuals @ residuals), **extra)


def distinct_points(compute) -> int:
    return len(np.unique(np.asarray(compute, dtype=float)))


def can_fit(compute, form: str) -> bool:
    return distinct_points(compute) >= MIN_POINTS[form]


def modified_residuals(compute, error, point: Fit) -> np.ndarray:
    """Log residuals (observed - fitted) divided by sqrt(1 - leverage), centred: raw residuals
    are too small by the parameters they were fitted with, most at the ends of the compute range
    (Davison & Hinkley 1997, Sec. 6.2-6.4)."""
    scale = _scale(compute)
    fitted, jac = _curve(_to_theta(point, scale), compute / scale, point.form)
    q, _ = np.linalg.qr(jac)
    leverage = np.minimum((q ** 2).sum(axis=1), 0.99)
    modified = (np.log(error) - np.log(fitted)) / np.sqrt(1 - leverage)
    return modified - modified.mean()


def bootstrap(compute, error, form: str, *, rng: np.random.Generator, n_boot: int = 1000,
              point: Fit | None = None, method: str = "residual", huber_scale: float = HUBER_SCALE) -> list[Fit]:
    """``n_boot`` refits to data made like the observed data.

    ``residual`` (default): the fitted curve at the measured compute, times exp of modified log
    residuals drawn with replacement: every replicate keeps every compute value, which matters
    when a family has 5-7 runs. ``pairs``: the (compute, error) points drawn with replacement,
    which does not trust the curve's form but undercovers for small studies (see docs/analysis.md);
    draws with too few distinct compute values to determine the curve are drawn again."""
    compute, error = np.asarray(compute, dtype=float), np.asarray(error, dtype=float)
    point = point or fit(compute, error, form, huber_scale=huber_scale)
    fits, n = [], len(compute)
    if method == "residual":
        fitted, residuals = point.error(compute), modified_residuals(compute, error, point)
        replicates = [np.minimum(fitted * np.exp(rng.choice(residuals, size=n)), 1.0) for _ in range(n_boot)]
        refit = functools.partial(fit, compute, form=form, huber_scale=huber_scale, warm_start=point)
        fits = _map(refit, replicates, REFIT_SECONDS[form])
    elif method == "pairs":
        while len(fits) < n_boot:
            idx = rng.integers(0, n, size=n)
            if can_fit(compute[idx], form):
                fits.append(fit(compute[idx], error[idx], form, huber_scale=huber_scale, warm_start=point))
    else:
        raise ValueError(f"unknown bootstrap method {method!r}: 'residual' or 'pairs'")
    return fits


# Seconds per bootstrap refit on one core of the dev machine (measured for issue 15; bench/RESULTS.md,
# "The tiny study end to end"): the saturating form's 4 bounded parameters take ~10x the power law's
# iterations.
REFIT_SECONDS = {"power": 0.0015, "saturating": 0.016}
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


def residual_df(f: Fit) -> int:
    return f.n - len(PARAMS[f.form])


def param_intervals(fits: list[Fit], level: float, df: int | None = None) -> dict[str, tuple[float, float]]:
    if not fits:
        return {}
    return {name: interval([getattr(f, name) for f in fits], level, df) for name in PARAMS[fits[0].form]}


def curve_band(fits: list[Fit], compute, level: float, df: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile band of the bootstrap curves at ``compute``."""
    curves = np.stack([f.error(compute) for f in fits])
    lo, hi = _tails(level, df)
    return np.percentile(curves, lo, axis=0), np.percentile(curves, hi, axis=0)


def backtest(compute, error, form: str, *, holdout: int | None = None,
             huber_scale: float = HUBER_SCALE) -> dict | None:
    """Fit without the ``holdout`` largest-compute points (default: a quarter, at least one) and
    predict them. None when too few points remain to fit. Errors are in accuracy points (0-100)."""
    compute, error = np.asarray(compute, dtype=float), np.asarray(error, dtype=float)
    values = np.unique(compute)
    holdout = holdout if holdout is not None else max(1, len(values) // 4)
    if holdout >= len(values):
        return None
    threshold = values[-holdout]   # every point at the held-out compute values is held out
    train, test = compute < threshold, compute >= threshold
    if not can_fit(compute[train], form):
        return None
    f = fit(compute[train], error[train], form, huber_scale=huber_scale)
    predicted = f.error(compute[test])
    gap = (predicted - error[test]) * 100
    return {"fit": f, "train_points": int(train.sum()), "held_out": int(test.sum()),
            "held_out_compute": compute[test].tolist(), "predicted_error": predicted.tolist(),
            "observed_error": error[test].tolist(), "mae_points": float(np.mean(np.abs(gap))),
            "max_points": float(np.max(np.abs(gap)))}


# ----------------------------------------------------------------------------- one family

@dataclass
class FamilyFit:
    """Both forms fitted to one family: point fits, bootstrap refits, intervals, backtests."""
    family: str
    compute: np.ndarray
    error: np.ndarray
    level: float
    fits: dict[str, Fit] = field(default_factory=dict)
    boot: dict[str, list[Fit]] = field(default_factory=dict)
    intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    backtests: dict[str, dict | None] = field(default_factory=dict)
    better: str | None = None   # "saturating" | "power" | None (cannot tell)
    reason: str = ""

    @property
    def compute_range(self) -> tuple[float, float]:
        return float(self.compute.min()), float(self.compute.max())

    def band(self, compute) -> tuple[np.ndarray, np.ndarray]:
        """The ``level`` band of the curve used downstream, at ``compute``."""
        point, boot = self.best()
        return curve_band(boot, compute, self.level, residual_df(point))

    def best(self) -> tuple[Fit, list[Fit]] | None:
        """The fit used downstream (multiplier, figure): the better form; when that cannot be told,
        the simpler one (the power law)."""
        for form in ([self.better] if self.better else []) + ["power", "saturating"]:
            if form in self.fits:
                return self.fits[form], self.boot[form]
        return None


def fit_family(family: str, compute, accuracy, *, rng: np.random.Generator, n_boot: int = 1000,
               level: float = 0.8, holdout: int | None = None, huber_scale: float = HUBER_SCALE) -> FamilyFit:
    """Every form that the points can determine, with bootstrap intervals and a backtest."""
    compute, error = np.asarray(compute, dtype=float), 1.0 - np.asarray(accuracy, dtype=float)
    result = FamilyFit(family, compute, error, level)
    for form in FORMS:
        if not can_fit(compute, form):
            continue
        point = fit(compute, error, form, huber_scale=huber_scale)
        result.fits[form] = point
        result.boot[form] = bootstrap(compute, error, form, rng=rng, n_boot=n_boot, point=point,
                                      huber_scale=huber_scale)
        result.intervals[form] = param_intervals(result.boot[form], level, residual_df(point))
        result.backtests[form] = backtest(compute, error, form, holdout=holdout, huber_scale=huber_scale)
    result.better, result.reason = compare_forms(result)
    return result


def compare_forms(result: FamilyFit) -> tuple[str | None, str]:
    """Which form fits better, and on what evidence."""
    if len(result.fits) < 2:
        have = distinct_points(result.compute)
        if not result.fits:
            return None, f"{have} distinct compute value(s): too few to fit either form (power needs {MIN_POINTS['power']})"
        return None, (f"{have} distinct compute value(s): only the power law can be fitted "
                      f"(the saturating form needs {MIN_POINTS['saturating']})")
    tests = result.backtests
    if all(tests.get(form) for form in FORMS):
        maes = {form: tests[form]["mae_points"] for form in FORMS}
        better = min(maes, key=maes.get)
        return better, ("backtest on the {} largest-compute point(s): {}".format(
            tests[better]["held_out"], ", ".join(f"{f} {m:.2f} pts" for f, m in maes.items())))
    aiccs = {form: result.fits[form].aicc for form in FORMS}
    if not any(math.isnan(v) for v in aiccs.values()):
        better = min(aiccs, key=aiccs.get)
        return better, "AICc (too few points to backtest the saturating form): " + \
            ", ".join(f"{f} {v:.1f}" for f, v in aiccs.items())
    return None, "too few points to backtest the saturating form or compute its AICc: cannot tell"


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


def multiplier(fx: Fit, fy: Fit, errors: np.ndarray) -> float:
    """Geometric mean over ``errors`` of C_X(E) / C_Y(E); NaN where neither curve gets there."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = fx.compute_for(errors) / fy.compute_for(errors)
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    return float(np.exp(np.mean(np.log(ratio)))) if len(ratio) else math.nan


def compute_multiplier(x: FamilyFit, y: FamilyFit, *, level: float | None = None) -> dict | None:
    """How many times the compute of family ``y`` family ``x`` needs for the same error, over
    the errors both cover, with a bootstrap interval (the families' resamples are independent,
    so replicate i pairs x's i-th refit with y's i-th). None if the curves share no error range."""
    if x.best() is None or y.best() is None:
        return None
    errors = common_errors(x, y)
    if errors is None:
        return None
    (fx, boot_x), (fy, boot_y) = x.best(), y.best()
    replicates = np.array([multiplier(bx, by, errors) for bx, by in zip(boot_x, boot_y)])
    level = level if level is not None else x.level
    df = residual_df(fx) + residual_df(fy)   # both families' noise scales were estimated
    return {"x": x.family, "y": y.family, "form_x": fx.form, "form_y": fy.form,
            "multiplier": multiplier(fx, fy, errors), "interval": interval(replicates, level, df), "level": level,
            "accuracy_range": (float(1 - errors[-1]), float(1 - errors[0])),
            # the ratio is constant only if the curves are shifted copies: its value at either end
            "at_range_ends": (multiplier(fx, fy, errors[-1:]), multiplier(fx, fy, errors[:1])),
            "undefined_replicates": int(np.isnan(replicates).sum()), "replicates": len(replicates)}
