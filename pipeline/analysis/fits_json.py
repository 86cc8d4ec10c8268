"""The report's fits and sanity findings as plain JSON (fits.json): ``to_fits_json`` and
``to_sanity_json``, for programs that read a study's answer."""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np

import pipeline.analysis.law_choice as law_choice
from pipeline.analysis.report import Fits, Multiplier, Report



def _plain(value):
    """JSON-safe: numpy scalars as Python numbers, NaN as null."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _family_json(ff: law_choice.FamilyFit, used) -> dict[str, Any]:
    points = used[used["family"] == ff.family]
    return {"points": len(ff.compute), "runs": int(points["id"].nunique()),
            "points_used": [{"id": row["id"], "step": row["step"], "exaflops": row["exaflops"],
                             "accuracy": row["accuracy"] / 100, "source": row["source"], "seeds": row["seeds"],
                             "seed_spread": row["spread"] / 100}
                            for _, row in points.iterrows()],
            "better": ff.better, "law": ff.law(), "reason": ff.reason,
            "fits": {form: {"params": f.params, "intervals": ff.intervals.get(form), "aicc": f.aicc,
                            "degenerate": {p: {"bound": side, "value": bound}
                                           for p, (side, bound) in ff.degenerate.get(form, {}).items()},
                            "rolling_origin": None if form not in ff.rolling else
                            {"rmse_log": ff.score(form), "predictions": [asdict(p) for p in ff.rolling[form]]}}
                     for form, f in ff.fits.items()}}


def _multiplier_json(m: Multiplier) -> dict[str, Any]:
    """As ``pipeline.analysis.multipliers.compute_multiplier`` gives it; only the pair where not available."""
    if m.form_x is None:
        return {"x": m.x, "y": m.y, "multiplier": m.multiplier}
    return {k: getattr(m, k) for k in Multiplier.__dataclass_fields__}


def to_sanity_json(report: Report) -> dict[str, Any]:
    """The sanity checks for fits.json: {check: items examined} and every finding, its set fields."""
    return _plain({"checks": dict(report.checks),
                   "findings": [{k: v for k, v in vars(p).items() if v is not None} for p in report.sanity()]})


def to_fits_json(fits: Fits) -> dict[str, Any]:
    """fits.json: which points the fits are on (``source``, ``fallback``, ``early_fraction``, the
    headline), every family's fits (points used, parameters, intervals, AICc, rolling origin, law) and
    the compute multipliers, JSON-safe."""
    basis = fits.basis
    return _plain({"metric": fits.metric.column, "label": fits.metric.label,
                   "headline": {"metric": basis.headline.column, "label": basis.headline.label},
                   "source": str(basis.source), "fallback": None if basis.fallback is None else str(basis.fallback),
                   "early_fraction": basis.early_fraction, "level": fits.level if fits.families else None,
                   "seeds": basis.seeds or None,
                   "families": {family: _family_json(ff, basis.used) for family, ff in fits.families.items()},
                   "multipliers": [_multiplier_json(m) for m in fits.multipliers],
                   "forecasts": [asdict(f) for f in fits.forecasts],
                   "track_record": [{**asdict(p), "error_points": p.error_points} for p in fits.track]})


