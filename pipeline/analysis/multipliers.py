"""Comparing two families' scaling laws:

- **Compute multiplier** of family X over family Y: C_X(E) / C_Y(E), the ratio of the compute each
  law needs to reach the same error E, averaged geometrically over the errors both families' laws
  reach within the compute they were measured at; where they share no error, over the errors
  between the two families' ranges, extrapolated (``compute_multiplier`` says which), provided
  each law gets there within ``EXTRAPOLATION_LIMIT`` times its measured compute.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.analysis.law_bootstrap import interval, residual_df
from pipeline.analysis.law_choice import FamilyFit
from pipeline.analysis.scaling_laws import Fit

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
