"""The study's problems and the report's sanity checks, as typed :class:`~pipeline.analysis.report.Problem`
records: what the study still lacks (runs not done, metrics missing, transfer metrics of unfinished
pretraining: :func:`find_problems`) and what its numbers say against themselves
(:func:`sanity_checks`: runs that did not learn, fine-tuning below few-shot, accuracy falling with
compute, logged compute that differs from the plan, fits at a bound, families too small to fit).
Each check returns its findings and how many items it examined."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

import pipeline.analysis.scaling_laws as scaling_laws
from pipeline.analysis.report import (COMPUTE_TOLERANCE, DROP_TOLERANCE, LEARNED_MARGIN, LEARNED_MARGIN_REL,
                                      STATUS_PROBLEMS, VAL_BASELINE, VAL_PREC1, Fits, Problem, ProblemKind)
from pipeline.analysis.table import Metric, headline, pretrained, table_rows

def _text(value) -> str | None:
    return value if isinstance(value, str) else None



def _problem(kind: ProblemKind, row, **numbers) -> Problem:
    return Problem(kind, run_id=str(row["id"]), model=str(row["model"]), subset=str(row["subset"]),
                   status=str(row["status"]), pretrain_status=_text(row["pretrain_status"]),
                   family=_text(row.get("family")), **numbers)



def find_problems(table: pd.DataFrame, expected: list[str]) -> list[Problem]:
    """What the study still lacks: runs not done (by status), planned metrics missing from started
    runs, transfer metrics of runs whose pretraining did not finish."""
    found = [_problem(kind, row) for status, kind in STATUS_PROBLEMS.items()
             for row in table_rows(table[table["status"] == status])]
    found += [_problem(ProblemKind.MISSING_METRIC, row, metric=m)
              for row in table_rows(table[table["status"] != "new"]) for m in expected if pd.isna(row.get(m))]
    transferred = table[[m for m in expected if m in table]].notna().any(axis=1)
    found += [_problem(ProblemKind.UNUSED_METRICS, row) for row in table_rows(table[~pretrained(table) & transferred])]
    return found




# ----------------------------------------------------------------------------- sanity checks
# Each check returns its findings and how many items (runs, run-datasets, fits, families) it examined.

def _column(table: pd.DataFrame, name: str) -> pd.Series:
    return table[name] if name in table else pd.Series(np.nan, index=table.index)


def learned_margin(baseline: float) -> float:
    """How far above the majority-class baseline val_prec1 must be for a run to count as learned."""
    return max(LEARNED_MARGIN, LEARNED_MARGIN_REL * baseline)


def not_learned(table: pd.DataFrame) -> tuple[list[Problem], int]:
    """Runs with finished pretraining whose val_prec1 is not clearly above the majority-class
    baseline; a run without the baseline (older runs) is a NO_BASELINE finding instead."""
    rows = table[pretrained(table) & _column(table, VAL_PREC1).notna()]
    found, checked = [], 0
    for row in table_rows(rows):
        baseline = row.get(VAL_BASELINE)
        if baseline is None or pd.isna(baseline):
            found.append(_problem(ProblemKind.NO_BASELINE, row, metric=VAL_BASELINE))
            continue
        checked += 1
        if row[VAL_PREC1] <= baseline + learned_margin(baseline):
            found.append(_problem(ProblemKind.NOT_LEARNED, row, metric=VAL_PREC1, value=float(row[VAL_PREC1]),
                                  reference=float(baseline)))
    return found, checked


def _fewshot_columns(table: pd.DataFrame) -> dict[str, list[str]]:
    """{fine-tuning metric: the same dataset's few-shot metrics} for datasets that have both."""
    out = {}
    for column in table.columns:
        m = re.fullmatch(r"finetune/(.+)/acc", column)
        shots = [c for c in table.columns if m and re.fullmatch(rf"fewshot/{re.escape(m[1])}/\d+shot", c)]
        if shots:
            out[column] = shots
    return out


def finetune_below_fewshot(table: pd.DataFrame) -> tuple[list[Problem], int]:
    """(run, dataset) pairs whose fine-tuned accuracy is below the run's best few-shot accuracy."""
    found, checked = [], 0
    pairs = _fewshot_columns(table)
    for row in table_rows(table):
        for tuned, shots in pairs.items():
            fewshot = row[shots].astype(float).dropna()
            if pd.isna(row[tuned]) or fewshot.empty:
                continue
            checked += 1
            if row[tuned] < fewshot.max():
                found.append(_problem(ProblemKind.FINETUNE_BELOW_FEWSHOT, row, metric=tuned, value=float(row[tuned]),
                                      reference=float(fewshot.max()), reference_metric=str(fewshot.idxmax())))
    return found, checked


def accuracy_drops(table: pd.DataFrame, column: str) -> tuple[list[Problem], int]:
    """Runs (finished pretraining, with ``column``) whose ``column`` is more than DROP_TOLERANCE below
    that of a run of the same family and subset with less planned compute (the best such run)."""
    rows = table[pretrained(table) & _column(table, column).notna()]
    found, checked = [], 0
    for row in table_rows(rows):
        cheaper = rows[(rows["family"] == row["family"]) & (rows["subset"] == row["subset"])
                       & (rows["exaflops"] < row["exaflops"])]
        if cheaper.empty:
            continue
        checked += 1
        best = cheaper.loc[cheaper[column].astype(float).idxmax()]
        if row[column] < best[column] - DROP_TOLERANCE:
            found.append(_problem(ProblemKind.ACCURACY_DROP, row, metric=column, value=float(row[column]),
                                  reference=float(best[column]), reference_run=str(best["id"]),
                                  planned_exaflops=float(row["exaflops"])))
    return found, checked


def compute_mismatches(table: pd.DataFrame) -> tuple[list[Problem], int]:
    """Runs with finished pretraining whose logged compute differs from the plan by more than
    COMPUTE_TOLERANCE."""
    logged = _column(table, "compute/exaflops")
    checked = pretrained(table) & logged.notna()
    off = checked & ((logged / table["exaflops"] - 1).abs() > COMPUTE_TOLERANCE)
    return [_problem(ProblemKind.COMPUTE_MISMATCH, row, logged_exaflops=float(row["compute/exaflops"]),
                     planned_exaflops=float(row["exaflops"])) for row in table_rows(table[off])], int(checked.sum())


def fit_problems(fits: Fits | None) -> tuple[list[Problem], int, int]:
    """Degenerate fits (a parameter at a bound of its fit, ``pipeline.analysis.scaling_laws.degenerate``; ``used``:
    the family's law), and families with points but too few distinct compute values for any fit;
    the fits and the families examined."""
    if fits is None:
        return [], 0, 0
    found, column = [], fits.metric.column
    for family, ff in fits.families.items():
        if not ff.fits:
            found.append(Problem(ProblemKind.TOO_FEW_POINTS, family=family, metric=column,
                                 value=float(scaling_laws.distinct_points(ff.compute)),
                                 reference=float(scaling_laws.MIN_POINTS["power"])))
        for form, f in ff.fits.items():
            found += [Problem(ProblemKind.FIT_AT_BOUND, family=family, metric=column, form=form, parameter=name,
                              value=f.params[name], bound=side, reference=bound,
                              used=form in (ff.law() or "").split("+"))
                      for name, (side, bound) in ff.degenerate.get(form, {}).items()]
    return found, sum(len(ff.fits) for ff in fits.families.values()), len(fits.families)


def seed_spread(fits: Fits | None) -> tuple[list[Problem], int]:
    """Multipliers that move beyond their interval with the seed: where the study ran several seeds,
    a pair whose multiplier from one seed's runs alone lies outside the interval of the multiplier
    fitted on the mean over seeds (the one farthest from it, as ``value``); the pairs examined."""
    if fits is None:
        return [], 0
    found, checked = [], 0
    for m in fits.multipliers:
        values = [v for _, v in m.by_seed if math.isfinite(v)]
        if not (m.available and values and all(map(math.isfinite, m.interval))):
            continue
        checked += 1
        (lo, hi), far = m.interval, max(values, key=lambda v: abs(math.log(v / m.multiplier)))
        if not lo <= far <= hi:
            found.append(Problem(ProblemKind.SEED_SPREAD, family=m.x, other_family=m.y, metric=fits.metric.column,
                                 value=far, reference=m.multiplier))
    return found, checked


def sanity_checks(plotted: pd.DataFrame, metrics: list[Metric],
                  fits: Fits | None) -> tuple[list[Problem], dict[str, int]]:
    """Every sanity check on the table (with the average column, if any) and the fits: the findings
    and {check: items examined}."""
    learned, n_learned = not_learned(plotted)
    below, n_below = finetune_below_fewshot(plotted)
    drops, n_drops = accuracy_drops(plotted, headline(metrics).column) if metrics else ([], 0)
    compute, n_compute = compute_mismatches(plotted)
    fitted, n_fits, n_families = fit_problems(fits)
    seeds, n_pairs = seed_spread(fits)
    checks = {ProblemKind.NOT_LEARNED: n_learned, ProblemKind.FINETUNE_BELOW_FEWSHOT: n_below,
              ProblemKind.ACCURACY_DROP: n_drops, ProblemKind.COMPUTE_MISMATCH: n_compute,
              ProblemKind.FIT_AT_BOUND: n_fits, ProblemKind.TOO_FEW_POINTS: n_families,
              ProblemKind.SEED_SPREAD: n_pairs}
    return learned + below + drops + compute + fitted + seeds, {str(k): n for k, n in checks.items()}
