"""Forecasts: what each family's law says of configurations not yet run, and how well the same
kind of fit predicted the family's own larger points (its track record).

- **Targets.** The preset's runs whose pretraining has not finished (``missing_targets``, at
  their planned compute), the preset's ``forecast:`` entries, and configurations named on the
  command line (``--forecast "ViT-H/14@14ep"``, ``named_targets``, parsed by ``spec.named_entry``): a model (a registry
  name, or a custom model of the preset's runs) at a length in epochs (``14ep``) or steps (``800steps``),
  costed by ``planning.run_numbers`` on the preset's data, crossed with its subsets.
- **Forecast.** The family's law at the target's compute, with the pointwise band of its bootstrap
  refits (the report's level), and how far beyond the family's largest measured compute it is.
- **Track record** (``track_record``): rolling origin on the family's own points with its law's
  form: fitted on the points up to a cut-off, it predicts the next point; the error in accuracy
  points says how far the forecasts can be trusted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

import pipeline.analysis.law_bootstrap as law_bootstrap
import pipeline.analysis.law_choice as law_choice
import pipeline.analysis.scaling_laws as scaling_laws
from pipeline.planning import data_sizes, run_numbers
from pipeline.spec import Recipe, RunEntry, RunSpec, Study, named_entry, subset_images

TRACK_CUTS = 5   # the track record's cut-offs: the last ones at which the law's form can be fitted


@dataclass(frozen=True)
class ForecastTarget:
    """A configuration to forecast: its name for people, family, planned compute and where it
    comes from ("missing": a run of the preset not finished; "preset": the preset's ``forecast:``;
    "named": ``--forecast``)."""
    label: str
    family: str
    exaflops: float
    source: str
    run_id: str | None = None


@dataclass(frozen=True)
class Forecast:
    """A target's predicted accuracy (fraction) with its interval at ``level``; ``beyond`` is its
    compute over the family's largest measured compute. ``law`` None: no forecast (``reason``)."""
    target: ForecastTarget
    law: str | None = None
    accuracy: float | None = None
    interval: tuple[float, float] | None = None
    level: float | None = None
    beyond: float | None = None
    degenerate: bool = False     # the law used sits at a bound of its fit
    reason: str = ""


@dataclass(frozen=True)
class TrackPoint:
    """One rolling-origin step of a family's law: fitted on ``fitted`` points up to ``cut``
    exaFLOPs, it predicted the next point (accuracies as fractions)."""
    family: str
    form: str
    cut: float
    fitted: int
    exaflops: float
    observed: float
    predicted: float

    @property
    def error_points(self) -> float:
        """Predicted minus observed accuracy, in points (0-100)."""
        return (self.predicted - self.observed) * 100


def forecast(ff: law_choice.FamilyFit | None, target: ForecastTarget, level: float) -> Forecast:
    """The target's accuracy by its family's law, with the law's bootstrap band."""
    if ff is None or ff.best() is None:
        return Forecast(target, reason="its family has no fit" if ff is not None else "its family has no points")
    point, boot = ff.best()
    compute = np.array([target.exaflops])
    accuracy = float(1 - point.error(compute)[0])
    interval = None
    if boot:
        lo, hi = law_bootstrap.curve_band(boot, compute, level, law_bootstrap.residual_df(point))
        interval = (float(1 - hi[0]), float(1 - lo[0]))
    return Forecast(target, point.form, accuracy, interval, level, target.exaflops / ff.compute_range[1],
                    degenerate=bool(ff.used_degenerate))


def track_record(ff: law_choice.FamilyFit, most: int = TRACK_CUTS) -> list[TrackPoint]:
    """The law's form refitted on the family's points up to each of its last ``most`` cut-offs
    (distinct compute values below which it can be fitted), each predicting the next point."""
    if ff.best() is None:
        return []
    form = ff.best()[0].form
    values = np.unique(ff.compute)
    cuts = values[scaling_laws.min_points(form) - 1:-1][-most:]
    out = []
    for cut in cuts:
        prediction = law_choice.predict_beyond(ff.compute, ff.error, form, float(cut))
        nxt = int(np.argmin(prediction.compute))
        out.append(TrackPoint(ff.family, form, float(cut), prediction.fitted, prediction.compute[nxt],
                              1 - prediction.observed[nxt], 1 - prediction.predicted[nxt]))
    return out


# ----------------------------------------------------------------------------- targets

def missing_targets(table: pd.DataFrame, finished: pd.Series) -> list[ForecastTarget]:
    """The preset's runs whose pretraining has not finished, at their planned compute."""
    rows = table[~finished & pd.to_numeric(table["exaflops"], errors="coerce").gt(0)]
    return [ForecastTarget(f"{row['model']} / {row['subset']}" + (f" / {row['epochs']:g} epochs" if _number(row.get("epochs"))
                   else f" / {row['steps']:g} steps" if _number(row.get("steps")) else ""),
                   str(row["family"]), float(row["exaflops"]), "missing", str(row["id"]))
            for _, row in rows.iterrows()]


def _number(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def entry_targets(study: Study, preset: str, entries: list[RunEntry], source: str) -> list[ForecastTarget]:
    """Run entries costed as the preset's runs would be (its recipe, subsets, data size), seed 0."""
    p = study.preset(preset)
    full, head_classes, _ = data_sizes(p, None)
    out = []
    for entry in entries:
        recipe = Recipe(**{**p.recipe.model_dump(), **entry.recipe})
        for subset in p.subsets:
            spec = RunSpec(study=study.name, model=entry.model, dataset=p.dataset.name, subset=subset,
                           epochs=entry.epochs, steps=entry.steps, recipe=recipe)
            n = run_numbers(spec, subset_images(subset, full), head_classes)
            if n.exaflops is None:
                raise ValueError(f"forecast {spec.label}: its compute is unknown (a fraction of a dataset of unstated "
                                 "size, run by epochs): give the preset's dataset 'images'")
            out.append(ForecastTarget(spec.label, spec.family, n.exaflops, source))
    return out


def named_targets(study: Study, preset: str, named: tuple[str, ...]) -> list[ForecastTarget]:
    """The preset's ``forecast:`` entries and the configurations named with ``--forecast``."""
    p = study.preset(preset)
    entries = [named_entry(text, p) for text in named]
    return (entry_targets(study, preset, list(p.forecast), "preset")
            + entry_targets(study, preset, entries, "named"))
