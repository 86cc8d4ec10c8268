"""Uncertainty of a fitted scaling law (``pipeline.analysis.scaling_laws``):

- **Bootstrap.** The law used is refitted to resampled data; percentile intervals (t-expanded) of
  its parameters, of the curve and of anything derived from it.

Everything random takes a ``numpy.random.Generator``: the same seed gives the same intervals.
"""
from __future__ import annotations

import functools
import math
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from scipy.stats import norm, t

from pipeline.analysis.scaling_laws import (HUBER_SCALE, Blend, Fit, Law, can_fit, compute_scale, fit,
                                            log_error_jacobian, param_count, parts)

def modified_residuals(compute, error, point: Fit) -> np.ndarray:
    """Log residuals (observed - fitted) divided by sqrt(1 - leverage), centred: raw residuals
    are too small by the parameters they were fitted with, most at the ends of the compute range
    (Davison & Hinkley 1997, Sec. 6.2-6.4)."""
    scale = compute_scale(compute)
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
    cores = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), 8)
    main = getattr(sys.modules.get("__main__"), "__file__", None)   # spawned workers import it again
    if cores < 2 or _pool is False or len(items) * seconds_each < PARALLEL_FROM_S or (main and not os.path.exists(main)):
        return [work(item) for item in items]
    try:
        if _pool is None:
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
