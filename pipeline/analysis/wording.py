"""The report's shared words and number formats: percentages, cells, Markdown tables, a run's
name, the scaling laws' parameters by name (as MLflow metrics too) and each seed's multiplier. Used
by ``render`` (report.md), ``findings`` (its sanity section) and ``descriptions`` (MLflow)."""
from __future__ import annotations

import math

from pipeline.analysis.report import Multiplier, Problem

# The laws' parameters by name (MLflow metrics fit/<family>/<name>) and in words.
PARAMETER_NAMES = {"a": "scale", "b": "exponent", "c": "floor", "d": "offset", "g": "knee", "alpha": "alpha",
                   "e0": "start_error"}
PARAMETER_WORDS = {p: f"{p} ({name.replace('_', ' ')})" for p, name in PARAMETER_NAMES.items()}


def metric_parameter(p: str) -> str:
    """A law's parameter as its MLflow metric name: ``b`` -> ``exponent``; a blend's ``knee.b`` ->
    ``knee_exponent``."""
    form, _, name = p.rpartition(".")
    return f"{form}_{PARAMETER_NAMES[name]}" if form else PARAMETER_NAMES[name]


def percent(level: float) -> str:
    return f"{level * 100:g}%"


def fmt(value, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def run_name(p: Problem) -> str:
    return f"`{p.run_id}` {p.model} (subset {p.subset})"


def stage(p: Problem) -> str:
    return "" if p.pretrain_status is None else f"; pretraining {p.pretrain_status}"


def seed_values(m: Multiplier) -> str:
    """'0.32x (seed 0), 0.78x (seed 1)': the multiplier of each seed's runs alone."""
    return ", ".join(f"{fmt(v, '.2f')}x (seed {s})" for s, v in m.by_seed)
