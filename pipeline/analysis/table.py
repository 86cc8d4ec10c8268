"""The run table and what to plot from it.

- **The table** (``run_table``): one row per RunSpec of the preset, never fewer, in plan order.
  Compute comes from the plan (``pipeline.planning.plan``: fvcore MACs x images seen); status,
  tags and the latest value of every transfer metric (and learning-curve metric, ``curve/...``) from one
  MLflow search. Status: ``done``
  (MLflow FINISHED: pretrained and transferred), ``partial`` (running or interrupted), ``failed``
  (MLflow FAILED), ``new`` (no run), ``unknown`` (no tracking URI given).
- **Points** (``pretrained``, ``points``). A run is a point of a figure or fit when its
  pretraining finished (tag ``pretrain_status=done``, or the run is done) and it has the metric;
  its x is the planned total pretraining compute, which is what finished pretraining spent.
- **Metrics plotted** (``transfer_metrics``, ``with_average``): each few-shot dataset at 5 shots
  (or its largest shot), each fine-tuning dataset, and their average (the paper's "Average-5").
- Point labels (``run_labels``), Pareto frontiers, and the families' paper order and names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from pipeline import tracking
from pipeline.planning import plan
from pipeline.spec import Preset, Study
from pipeline.transfer import registry as transfer_registry

FAMILIES = ("vit", "resnet", "hybrid")
FAMILY_NAMES = {"vit": "ViT", "resnet": "ResNet (BiT)", "hybrid": "Hybrid (R50+ViT)"}
FAMILY_KEYS = {"vit": "ViT", "resnet": "BiT", "hybrid": "Hybrid"}   # in MLflow metric names
FEWSHOT_SHOT = 5            # Figure 4 of the paper: linear 5-shot accuracy
AVERAGE = "average"
# replicate: the run's id at seed 0, shared by the runs that differ only by their seed
PLAN_COLUMNS = ("id", "model", "family", "subset", "subset_images", "epochs", "steps", "seed", "replicate",
                "params", "forward_gmacs", "images_seen", "exaflops", "gpu_hours")
RUN_COLUMNS = ("status", "pretrain_status", "mlflow_run_id", "checkpoint_uri")
KEPT_METRICS = ("pretrain/val_prec1", "pretrain/val_prec1_best", "pretrain/val_prec1_baseline",
                "pretrain/val_loss_best", "pretrain/loss", "compute/exaflops", "compute/images_seen")
# Learning curves, logged by pretraining at each validation step: ``curve/fewshot/<dataset>/<k>shot`` (the
# probe's accuracy) and ``curve/exaflops`` (the compute spent so far). The table keeps their latest values,
# which say which runs have curves; ``pipeline.analysis.curves`` reads the histories.
CURVE_PREFIX = "curve/"
CURVE_COMPUTE = "curve/exaflops"


# ----------------------------------------------------------------------------- the table

def preset_metrics(preset: Preset) -> list[str]:
    """The transfer metrics every finished run of the preset should have (each protocol says its own)."""
    return transfer_registry.expected_metrics(preset.transfer)


def _kept(metric: str) -> bool:
    prefixes = (*(f"{name}/" for name in transfer_registry.EVALUATORS), CURVE_PREFIX)
    return metric.startswith(prefixes) or metric in KEPT_METRICS


def _run_columns(run: tracking.RunRecord | None) -> dict[str, Any]:
    if run is None:
        return {"status": str(tracking.Status.NEW)}
    return {"status": str(run.status), "pretrain_status": run.pretrain_status, "mlflow_run_id": run.run_id,
            "checkpoint_uri": run.checkpoint_uri, **{k: v for k, v in run.metrics.items() if _kept(k)}}


def run_table(study: Study, preset: str, *, tracking_uri: str | None) -> pd.DataFrame:
    """One row per RunSpec of the preset, in plan order: the plan's columns, the MLflow status and
    tags, and the latest value of every transfer and learning-curve metric (NaN where missing)."""
    planned = plan(study, preset, tracking_uri=None)["runs"]
    runs = tracking.spec_runs(tracking_uri, study.name) if tracking_uri else {}
    table = pd.DataFrame([{**{k: r[k] for k in PLAN_COLUMNS},
                           **(_run_columns(runs.get(r["id"])) if tracking_uri else {"status": "unknown"})}
                          for r in planned])
    metrics = sorted(set(preset_metrics(study.preset(preset))) | {c for c in table if _kept(c)})
    table = table.reindex(columns=[*PLAN_COLUMNS, *RUN_COLUMNS, *metrics])
    table["subset"] = table["subset"].astype(str)
    return table


def pretrained(table: pd.DataFrame) -> pd.Series:
    """Rows whose pretraining finished: their transfer metrics are points of the figures."""
    return (table["status"] == "done") | (table["pretrain_status"] == "done")


# ----------------------------------------------------------------------------- what to plot

@dataclass(frozen=True)
class Metric:
    """A plotted metric: its table column, its label in figures and the report, and its kind."""
    column: str
    label: str
    kind: str   # "fewshot" | "finetune" | "average"


def _has_points(table: pd.DataFrame, column: str) -> bool:
    return column in table and bool(table.loc[pretrained(table), column].notna().any())


def transfer_metrics(table: pd.DataFrame, shot: int = FEWSHOT_SHOT) -> list[Metric]:
    """One metric per downstream dataset that has points: few-shot at ``shot`` shots (or the
    largest shot measured), fine-tuning accuracy. Datasets in column order."""
    out = []
    fewshot: dict[str, list[int]] = {}
    for column in table.columns:
        m = re.fullmatch(r"fewshot/(.+)/(\d+)shot", column)
        if m and _has_points(table, column):
            fewshot.setdefault(m[1], []).append(int(m[2]))
    for dataset, shots in fewshot.items():
        k = shot if shot in shots else max(shots)
        out.append(Metric(f"fewshot/{dataset}/{k}shot", f"{dataset} {k}-shot", "fewshot"))
    for column in table.columns:
        m = re.fullmatch(r"finetune/(.+)/acc", column)
        if m and _has_points(table, column):
            out.append(Metric(column, f"{m[1]} fine-tuned", "finetune"))
    return out


def with_average(table: pd.DataFrame, metrics: list[Metric]) -> tuple[pd.DataFrame, list[Metric]]:
    """Adds the mean of the metrics (rows that have all of them), when there are several."""
    if len(metrics) < 2:
        return table, metrics
    table = table.copy()
    table[AVERAGE] = table[[m.column for m in metrics]].mean(axis=1, skipna=False)
    if not _has_points(table, AVERAGE):
        return table, metrics
    return table, [*metrics, Metric(AVERAGE, f"average of {len(metrics)}", "average")]


def points(table: pd.DataFrame, metrics: list[Metric], x: str = "exaflops") -> pd.DataFrame:
    """Long format for plotting: one row per (run, metric) with a value, accuracy in percent."""
    rows = table[pretrained(table) & (pd.to_numeric(table[x], errors="coerce") > 0)].copy()
    rows["label"] = run_labels(rows)
    rows["replicate"], rows["seed"] = replicates(rows), rows.get("seed", 0)
    long = rows.melt(id_vars=["id", "model", "family", "subset", "subset_images", "label", "replicate", "seed", x],
                     value_vars=[m.column for m in metrics], var_name="column", value_name="accuracy")
    long = long.dropna(subset=["accuracy"])
    long["metric"] = long["column"].map({m.column: m.label for m in metrics})
    long["accuracy"] = long["accuracy"] * 100
    return long


def replicates(table: pd.DataFrame) -> pd.Series:
    """Each run's replicate group (``replicate``: its id at seed 0); its own id where the table has
    no such column (a table made by hand)."""
    return table["replicate"].fillna(table["id"]) if "replicate" in table else table["id"]


def run_labels(table: pd.DataFrame) -> pd.Series:
    """Model names, with the length (epochs, or steps for runs given in steps), subset or seed
    added where a model has several."""
    label = table["model"].astype(str)
    length = pd.Series([f"{e:g} ep" if pd.notna(e) else f"{s:g} steps" if pd.notna(s) else ""
                        for e, s in zip(table["epochs"], table["steps"])], index=table.index, dtype=str)
    seed = pd.Series([f"seed {v}" if pd.notna(v) else "" for v in table["seed"]], index=table.index, dtype=str)
    for values in (length, table["subset"].astype(str), seed):
        varies = values.groupby(table["model"]).transform(lambda s: s.nunique() > 1)
        label = label.where(~varies, label + " (" + values + ")")
    return label


def pareto_frontier(group: pd.DataFrame, x: str = "exaflops", y: str = "accuracy") -> pd.DataFrame:
    """Points no cheaper point beats: the best accuracy reached for at most that compute."""
    ordered = group.sort_values([x, y], ascending=[True, False])
    best_before = ordered[y].astype(float).cummax().shift(fill_value=-np.inf)
    return ordered[ordered[y] > best_before]


# ----------------------------------------------------------------------------- families

def family_name(family: str) -> str:
    """The family's name in figures and the report: ``resnet`` -> ``ResNet (BiT)``."""
    return FAMILY_NAMES.get(family, family)


def family_key(family: str) -> str:
    """The family's name in MLflow metric names (ASCII letters, digits, ``_-.`` and space):
    ``resnet`` -> ``BiT``; another family's own name, any other character as ``_``."""
    return FAMILY_KEYS.get(family) or re.sub(r"[^\w\-. ]", "_", family, flags=re.ASCII)


def family_order(families: Iterable[str]) -> list[str]:
    """The distinct families in the paper's order (ViT, ResNet, hybrid), any others after, sorted."""
    present = set(families)
    return [f for f in FAMILIES if f in present] + sorted(present - set(FAMILIES))


def table_rows(table: pd.DataFrame):
    """The table's rows, as Series, in order."""
    return (row for _, row in table.iterrows())


def float_or_none(value) -> float | None:
    """A table cell as a float; None where it is empty (NaN or None)."""
    return None if value is None or pd.isna(value) else float(value)


def headline(metrics: list[Metric]) -> Metric:
    """The metric the fits are on: the average where there is one, else the first."""
    return metrics[-1] if metrics[-1].kind == "average" else metrics[0]
