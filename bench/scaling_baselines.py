"""The published scaling-law estimators the extrapolation benchmark compares the report's law with,
written here from the papers' equations (not from their authors' code).

Error (or loss) e > 0 against x (examples seen, or compute); every estimator fits on some points
and returns a function that predicts e at any x:

    M1     e = beta x^c                                   (Alabdulmohsin et al. 2022, Eq. M1)
    M2     e = e_inf + beta x^c                           (M2)
    M3     e = beta (1/x + gamma)^c                       (M3)
    M4     (e - e_inf) / (e_0 - e)^alpha = beta x^c       (M4, implicit: e_0 is the error at the start,
                                                          random guessing; e_inf the error it saturates at)
    floor  e = a x^-b + c, fitted on the log of its predictions: the plain "power law with a floor"

M1-M4 are fitted as the paper describes: least squares in log space of the form's two sides
(log of the left side against log beta + c log x), which is linear in (log beta, c[, alpha]) once
e_inf, gamma or e_0 are fixed. e_inf and e_0 are then moved by damped Newton steps on that objective (``_descend``: a
tenth of the Newton step per coordinate, projected on the bounds: e_inf below the smallest observed
error, e_0 above the largest), from the paper's starting values, e_inf just below the smallest
observed error and e_0 = 1 (or just above the largest error when that is more), alternating with
the linear fit, as the paper describes. Local matters: in that space the objective's global
minimum is often e_inf = 0 (M2 then is M1); the estimator descends from its start. gamma (M3) is searched on a grid, then refined. ``floor`` is fitted on log prediction
residuals instead, from a grid of starts.

x is divided by its geometric mean before fitting (the same fit in better-conditioned numbers).
Reference: I. Alabdulmohsin, B. Neyshabur, X. Zhai, "Revisiting Neural Scaling Laws in Language
and Vision", NeurIPS 2022 (arXiv 2209.06640), Section 2 and Appendix.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np
from scipy.optimize import lsq_linear, least_squares, minimize_scalar

MARGIN = 1e-3          # e_inf at most min(e) - MARGIN, e_0 at least max(e) + MARGIN (as the paper's code)
Predictor = Callable[[np.ndarray], np.ndarray]


def _normalized(x) -> tuple[np.ndarray, float]:
    x = np.asarray(x, dtype=float)
    scale = float(np.exp(np.mean(np.log(x))))
    return x / scale, scale


def _linear(columns: list[np.ndarray], target: np.ndarray, lower, upper) -> tuple[np.ndarray, float]:
    """Bounded linear least squares: coefficients and the residual sum of squares."""
    a = np.stack(columns, axis=1)
    result = lsq_linear(a, target, bounds=(lower, upper))
    residual = a @ result.x - target
    return result.x, float(residual @ residual)


def _descend(objective, start: list[float], bounds: list[tuple[float, float]], *, steps: int = 300,
             rate: float = 0.1) -> list[float]:
    """Damped Newton steps on each coordinate of ``objective`` in turn (numerical derivatives), each
    projected on its bounds; a coordinate whose curvature is not positive takes a small gradient step."""
    v = list(start)
    for _ in range(steps):
        for i, (lo, hi) in enumerate(bounds):
            h = 1e-6 * max(abs(v[i]), 1e-3)
            at = [objective([*v[:i], v[i] + k * h, *v[i + 1:]]) for k in (-1, 0, 1)]
            grad, curv = (at[2] - at[0]) / (2 * h), (at[2] - 2 * at[1] + at[0]) / h ** 2
            step = grad / curv if curv > 1e-12 else 1e-4 * grad
            v[i] = min(max(v[i] - rate * step, lo), hi)
    return v


def m1(x, e) -> Predictor:
    """e = beta x^c, a line in log-log space."""
    z, scale = _normalized(x)
    c, log_beta = np.polyfit(np.log(z), np.log(e), 1)
    return lambda q: np.exp(log_beta + c * np.log(np.asarray(q, dtype=float) / scale))


def m2(x, e) -> Predictor:
    """e = e_inf + beta x^c: for each e_inf a line through log(e - e_inf); e_inf searched in [0, min e)."""
    z, scale = _normalized(x)
    e = np.asarray(e, dtype=float)

    def line(e_inf):
        return _linear([np.ones_like(z), np.log(z)], np.log(e - e_inf), [-np.inf, -np.inf], [np.inf, 0.0])

    top = max(float(e.min()) - MARGIN, 0.0)
    e_inf = _descend(lambda v: line(v[0])[1], [top], [(0.0, top)])[0]
    (log_beta, c), _ = line(e_inf)
    return lambda q: e_inf + np.exp(log_beta + c * np.log(np.asarray(q, dtype=float) / scale))


def m3(x, e) -> Predictor:
    """e = beta (1/x + gamma)^c, c >= 0: for each gamma a line in log(1/x + gamma); log gamma searched
    over a grid spanning the data's 1/x, then refined."""
    z, scale = _normalized(x)
    log_e = np.log(e)

    def line(gamma):
        return _linear([np.ones_like(z), np.log(1 / z + gamma)], log_e, [-np.inf, 0.0], [np.inf, np.inf])

    grid = np.linspace(np.log(1 / z.max()) - 12, np.log(1 / z.min()) + 12, 49)
    best = min(grid, key=lambda g: line(np.exp(g))[1])
    refined = minimize_scalar(lambda g: line(np.exp(g))[1], bounds=(best - 0.5, best + 0.5), method="bounded").x
    gamma = float(np.exp(refined)) if line(np.exp(refined))[1] <= line(np.exp(best))[1] else float(np.exp(best))
    if line(0.0)[1] < line(gamma)[1]:
        gamma = 0.0
    (log_beta, c), _ = line(gamma)
    return lambda q: np.exp(log_beta + c * np.log(1 / (np.asarray(q, dtype=float) / scale) + gamma))


def m4_solve(f: np.ndarray, e_inf: float, e_0: float, alpha: float, iterations: int = 100) -> np.ndarray:
    """The e with (e - e_inf) / (e_0 - e)^alpha = f, by bisection on w = e - e_inf in (0, e_0 - e_inf):
    w - f (e_0 - e_inf - w)^alpha increases with w."""
    span = e_0 - e_inf
    lo, hi = np.zeros_like(f), np.full_like(f, span)
    for _ in range(iterations):
        w = (lo + hi) / 2
        above = w - f * np.maximum(span - w, 0.0) ** alpha > 0
        hi, lo = np.where(above, w, hi), np.where(above, lo, w)
    return e_inf + (lo + hi) / 2


def m4(x, e) -> Predictor:
    """(e - e_inf) / (e_0 - e)^alpha = beta x^c, alpha >= 0, c <= 0: for each (e_inf, e_0) a linear fit of
    log(e - e_inf) on (1, log x, log(e_0 - e)); (e_inf, e_0) by local descent from the paper's start."""
    z, scale = _normalized(x)
    e = np.asarray(e, dtype=float)
    low, high = float(e.min()), float(e.max())

    def line(e_inf, e_0):
        return _linear([np.ones_like(z), np.log(z), np.log(e_0 - e)], np.log(e - e_inf),
                       [-np.inf, -np.inf, 0.0], [np.inf, 0.0, np.inf])

    bounds = [(0.0, max(low - MARGIN, 0.0)), (high + MARGIN, math.inf)]
    start = [max(low - MARGIN, 0.0), max(1.0, high + MARGIN)]
    e_inf, e_0 = _descend(lambda v: line(*v)[1], start, bounds)
    (log_beta, c, alpha), _ = line(e_inf, e_0)
    return lambda q: m4_solve(np.exp(log_beta + c * np.log(np.asarray(q, dtype=float) / scale)), e_inf, e_0, alpha)


def floor(x, e) -> Predictor:
    """e = a x^-b + c, least squares on log predictions, c in [0, min e), from a grid of starts."""
    z, scale = _normalized(x)
    log_e = np.log(np.asarray(e, dtype=float))
    top = float(np.exp(log_e.min())) * (1 - 1e-6)

    def residuals(t):
        return np.log(np.exp(t[0] - t[1] * np.log(z)) + t[2]) - log_e

    best = None
    for b, share in itertools.product((0.2, 0.5, 1.0), (0.0, 0.5, 0.9)):
        c = share * top
        start = [float(np.mean(np.log(np.exp(log_e) - c) + b * np.log(z))), b, c]
        result = least_squares(residuals, start, bounds=([-50, 0.0, 0.0], [50, 5.0, top]))
        if best is None or result.cost < best.cost:
            best = result
    log_a, b, c = best.x
    return lambda q: np.exp(log_a - b * np.log(np.asarray(q, dtype=float) / scale)) + c


BASELINES: dict[str, Callable] = {"M1": m1, "M2": m2, "M3": m3, "M4": m4, "floor": floor}
