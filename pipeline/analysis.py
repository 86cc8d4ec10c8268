"""The study's answer: MLflow runs -> one tidy table -> figures, frontiers, scaling-law fits and a
report, as in Sections 4.3-4.4 of the ViT paper.

- **Table** (``run_table``): one row per RunSpec of the preset, never fewer. Compute comes from the
  plan (``pipeline.planning.plan``: fvcore MACs x images seen); status, tags and the latest value of
  every transfer metric from one MLflow search. Status: ``done`` (MLflow FINISHED: pretrained and
  transferred), ``partial`` (running or interrupted), ``failed`` (MLflow FAILED), ``new`` (no run).
- **Points.** A run is a point of a figure or fit when its pretraining finished (tag
  ``pretrain_status=done``, or the run is done) and it has the metric; its x is the planned total
  pretraining compute, which is what finished pretraining spent.
- **Figure 5** (``performance_vs_compute``): transfer accuracy against pretraining exaFLOPs, one
  panel per downstream metric (each few-shot dataset at 5 shots, or its largest shot, and each
  fine-tuning dataset) plus their average (the paper's "Average-5"), each family's Pareto frontier:
  the best accuracy reached for at most that compute.
- **Figure 4** (``performance_vs_data``): few-shot accuracy against pretraining set size per model,
  for presets with several data subsets.
- **Fits** (``scaling_fits``, ``pipeline.fits``): per family, the saturating power law
  E(C) = a (C + d)^(-b) + c and the plain power law on the headline metric's error, with
  bootstrap intervals and a backtest; then the compute multiplier between families (the paper:
  ViT needs 2-4x less compute than ResNets for the same accuracy).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import fits as scaling
from pipeline import tracking
from pipeline.spec import Preset, Study

FAMILIES = ("vit", "resnet", "hybrid")
FAMILY_NAMES = {"vit": "ViT", "resnet": "ResNet (BiT)", "hybrid": "Hybrid (R50+ViT)"}
PALETTE = {"vit": "#0173b2", "resnet": "#de8f05", "hybrid": "#029e73"}   # seaborn "colorblind"
MARKERS = {"vit": "o", "resnet": "s", "hybrid": "^"}
OTHER_COLOR, OTHER_MARKER = "#949494", "D"
FEWSHOT_SHOT = 5            # Figure 4 of the paper: linear 5-shot accuracy
# Interval level of the report: the level at which the intervals are measured to cover as stated
# for families of 5-16 runs (bench/bench_fits.py; at 95% they cover about 86% with 7 runs).
LEVEL = 0.8
AVERAGE = "average"
PLAN_COLUMNS = ("id", "model", "family", "subset", "subset_images", "epochs", "steps", "seed", "params",
                "forward_gmacs", "images_seen", "exaflops", "gpu_hours")
RUN_COLUMNS = ("status", "pretrain_status", "mlflow_run_id", "checkpoint_uri")
KEPT_METRICS = ("pretrain/val_prec1_best", "pretrain/val_loss_best", "pretrain/loss",
                "compute/exaflops", "compute/images_seen")
MIN_PNG_DPI = 150


# ----------------------------------------------------------------------------- the table

def expected_metrics(preset: Preset) -> list[str]:
    """The transfer metrics every finished run of the preset should have."""
    t = preset.transfer
    return ([f"fewshot/{ds}/{k}shot" for ds in t.fewshot for k in t.shots]
            + [f"finetune/{ds}/acc" for ds in t.finetune])


def _kept(metric: str) -> bool:
    return metric.startswith(("fewshot/", "finetune/")) or metric in KEPT_METRICS


def _run_columns(run) -> dict[str, Any]:
    if run is None:
        return {"status": tracking.run_status(None)}
    status = tracking.run_status(run)
    tags = run.data.tags
    return {"status": status, "pretrain_status": tags.get("pretrain_status"), "mlflow_run_id": run.info.run_id,
            "checkpoint_uri": tags.get("checkpoint_uri"),
            **{k: v for k, v in run.data.metrics.items() if _kept(k)}}


def run_table(study: Study, preset: str, *, tracking_uri: str | None) -> pd.DataFrame:
    """One row per RunSpec of the preset, in plan order: the plan's columns, the MLflow status and
    tags, and the latest value of every transfer metric (NaN where missing)."""
    from pipeline.planning import plan
    planned = plan(study, preset, tracking_uri=None)["runs"]
    runs = tracking.spec_runs(tracking_uri, study.name) if tracking_uri else {}
    table = pd.DataFrame([{**{k: r[k] for k in PLAN_COLUMNS},
                           **(_run_columns(runs.get(r["id"])) if tracking_uri else {"status": "unknown"})}
                          for r in planned])
    metrics = sorted(set(expected_metrics(study.preset(preset))) | {c for c in table if _kept(c)})
    table = table.reindex(columns=[*PLAN_COLUMNS, *RUN_COLUMNS, *metrics])
    table["subset"] = table["subset"].astype(str)
    return table


def pretrained(table: pd.DataFrame) -> pd.Series:
    """Rows whose pretraining finished: their transfer metrics are points of the figures."""
    return (table["status"] == "done") | (table["pretrain_status"] == "done")


# ----------------------------------------------------------------------------- what to plot

@dataclass(frozen=True)
class Metric:
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
    long = rows.melt(id_vars=["id", "model", "family", "subset", "subset_images", "label", x],
                     value_vars=[m.column for m in metrics], var_name="column", value_name="accuracy")
    long = long.dropna(subset=["accuracy"])
    long["metric"] = long["column"].map({m.column: m.label for m in metrics})
    long["accuracy"] = long["accuracy"] * 100
    return long


def run_labels(table: pd.DataFrame) -> pd.Series:
    """Model names, with the epochs/steps, subset or seed added where a model has several."""
    label = table["model"].astype(str)
    for column, fmt in (("epochs", "{:g} ep"), ("steps", "{:g} steps"), ("subset", "{}"), ("seed", "seed {}")):
        varies = table.groupby("model")[column].transform(lambda s: s.nunique(dropna=True) > 1)
        extra = pd.Series([fmt.format(v) if pd.notna(v) else "" for v in table[column]], index=table.index,
                          dtype=str)
        label = label.where(~varies, label + " (" + extra + ")")
    return label


def pareto_frontier(group: pd.DataFrame, x: str = "exaflops", y: str = "accuracy") -> pd.DataFrame:
    """Points no cheaper point beats: the best accuracy reached for at most that compute."""
    ordered = group.sort_values([x, y], ascending=[True, False])
    best_before = ordered[y].astype(float).cummax().shift(fill_value=-np.inf)
    return ordered[ordered[y] > best_before]


# ----------------------------------------------------------------------------- figures

def _style():
    import seaborn as sns
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)


def family_name(family: str) -> str:
    return FAMILY_NAMES.get(family, family)


def family_styles(families) -> tuple[list[str], dict, dict]:
    """Families in the paper's order (others after), with their colour and marker: fixed for the
    paper's three, grey diamonds for any other."""
    present = set(families)
    order = [f for f in FAMILIES if f in present] + sorted(present - set(FAMILIES))
    return order, {f: PALETTE.get(f, OTHER_COLOR) for f in order}, {f: MARKERS.get(f, OTHER_MARKER) for f in order}


def _hue(long: pd.DataFrame) -> dict[str, Any]:
    """seaborn arguments colouring by family under its display name."""
    order, colors, markers = family_styles(long["family"])
    return {"hue": "Family", "hue_order": [family_name(f) for f in order],
            "palette": {family_name(f): colors[f] for f in order}, "_markers": {family_name(f): markers[f] for f in order}}


def _compact(value: float, _=None) -> str:
    """Tick labels: 300, 1.5k, 30M, 1e-07."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if 1e3 <= abs(value) < 1e12 and abs(value) >= factor:
            return f"{value / factor:g}{suffix}"
    return f"{value:g}"


def _log_ticks(axis, values) -> None:
    """Readable ticks on a log axis: 1-1.5-2-3-5-7 steps within a decade, 1-2-5 within two, decades
    beyond (matplotlib's own choice labels 3e-07 4e-07 ... 9e-07 in a small range, or nothing)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    values = np.asarray(values, dtype=float)
    values = values[values > 0]
    decades = np.log10(values.max() / values.min()) if len(values) else 0
    subs = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if decades < 1 else (1.0, 2.0, 5.0) if decades < 2 else (1.0,)
    axis.set_major_locator(LogLocator(subs=subs))
    axis.set_major_formatter(FuncFormatter(_compact))
    axis.set_minor_formatter(NullFormatter())


def _log_x(ax, values) -> None:
    ax.set_xscale("log")
    _log_ticks(ax.xaxis, values)


def _label_points(ax, frame: pd.DataFrame, x: str, y: str) -> None:
    """Each point's label below it, to its right; to its left at the right edge (not cut off)."""
    right_edge = frame[x].max()
    for _, row in frame.iterrows():
        at_edge = row[x] == right_edge
        ax.annotate(row["label"], (row[x], row[y]), xytext=(-4 if at_edge else 4, -9), textcoords="offset points",
                    ha="right" if at_edge else "left", fontsize=6.5, color="0.25")


def _panels(long: pd.DataFrame) -> int:
    return min(3, long["metric"].nunique())


def figure_compute(long: pd.DataFrame):
    """Figure 5: accuracy against pretraining compute, a panel per metric, Pareto frontiers."""
    import seaborn as sns
    _style()
    long = long.assign(Family=long["family"].map(family_name))
    hue = _hue(long)
    markers = hue.pop("_markers")
    g = sns.relplot(data=long, x="exaflops", y="accuracy", style="Family", style_order=hue["hue_order"],
                    markers=markers, col="metric", col_wrap=_panels(long), kind="scatter", s=60, height=3.8,
                    aspect=1.25, facet_kws={"sharey": False, "sharex": True}, **hue)
    for metric, ax in g.axes_dict.items():
        panel = long[long["metric"] == metric]
        for family, group in panel.groupby("Family"):
            front = pareto_frontier(group)
            ax.plot(front["exaflops"], front["accuracy"], color=hue["palette"][family], lw=1.5, alpha=0.8)
        _label_points(ax, panel, "exaflops", "accuracy")
        _log_x(ax, long["exaflops"])
        ax.margins(x=0.08)   # room for the labels of the last points
        ax.set_title(metric)
    g.set_axis_labels("total pretraining compute [exaFLOPs]", "transfer accuracy [%]")
    return g.figure


def figure_data(long: pd.DataFrame):
    """Figure 4: few-shot accuracy against pretraining set size, a line per model."""
    import seaborn as sns
    _style()
    long = long.assign(Family=long["family"].map(family_name)).sort_values("subset_images")
    hue = _hue(long)
    hue.pop("_markers")
    g = sns.relplot(data=long, x="subset_images", y="accuracy", style="model", markers=True, dashes=False,
                    col="metric", col_wrap=_panels(long), kind="line", height=3.8, aspect=1.25,
                    facet_kws={"sharey": False}, **hue)
    for metric, ax in g.axes_dict.items():
        ends = long[long["metric"] == metric].groupby("model").tail(1).assign(label=lambda f: f["model"])
        _label_points(ax, ends, "subset_images", "accuracy")
        _log_x(ax, long["subset_images"])
        ax.set_title(metric)
    g.set_axis_labels("pretraining set size [images]", "few-shot accuracy [%]")
    return g.figure


def figure_fits(family_fits: dict[str, scaling.FamilyFit], label: str):
    """Per-family scaling laws over the points: error against compute, log-log, the better form
    solid in its bootstrap band, the other form dotted."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    _style()
    order, colors, markers = family_styles(family_fits)
    level = next(iter(family_fits.values())).level
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    handles = []
    for family in order:
        ff, color = family_fits[family], colors[family]
        ax.scatter(ff.compute, ff.error * 100, color=color, marker=markers[family], s=40, zorder=3)
        handles.append(Line2D([], [], color=color, marker=markers[family], label=family_name(family)))
        if ff.best() is None:
            continue
        point = ff.best()[0]
        grid = np.geomspace(*ff.compute_range, 100)
        lo, hi = ff.band(grid)
        ax.fill_between(grid, lo * 100, hi * 100, color=color, alpha=0.18, lw=0)
        ax.plot(grid, point.error(grid) * 100, color=color, lw=1.8)
        for form, other in ff.fits.items():
            if form != point.form:
                ax.plot(grid, other.error(grid) * 100, color=color, lw=1, ls=":")
    handles += [Line2D([], [], color="0.3", lw=1.8, label=f"law used, {_percent(level)} band"),
                Line2D([], [], color="0.3", lw=1, ls=":", label="other form")]
    ax.set(yscale="log", xlabel="total pretraining compute [exaFLOPs]", ylabel="error = 100 - accuracy [%]",
           title=f"{label}: scaling-law fits")
    _log_x(ax, np.concatenate([ff.compute for ff in family_fits.values()]))
    _log_ticks(ax.yaxis, np.concatenate([ff.error for ff in family_fits.values()]) * 100)
    ax.legend(handles=handles, fontsize=8, frameon=True)
    return fig


def save_figure(fig, out_dir: Path, name: str) -> list[Path]:
    import matplotlib.pyplot as plt
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    fig.savefig(paths[0], dpi=MIN_PNG_DPI, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- fits

def scaling_fits(long: pd.DataFrame, metric_label: str, *, seed: int = 0, n_boot: int = 1000,
                 level: float = LEVEL) -> tuple[dict[str, scaling.FamilyFit], list[dict]]:
    """Fits per family on one metric, and the compute multiplier of every pair of fitted families
    (in the paper's order: how much more compute than ViT the others need)."""
    rng = np.random.default_rng(seed)
    data = long[long["metric"] == metric_label]
    order = family_styles(data["family"])[0]
    family_fits = {}
    for family in order:
        group = data[data["family"] == family]
        accuracy = (group["accuracy"] / 100).clip(upper=1 - 1e-6)  # a perfect score has no log error
        family_fits[family] = scaling.fit_family(family, group["exaflops"], accuracy, rng=rng,
                                                 n_boot=n_boot, level=level)
    multipliers = []
    for i, y in enumerate(order):
        for x in order[i + 1:]:
            result = scaling.compute_multiplier(family_fits[x], family_fits[y])
            multipliers.append(result or {"x": x, "y": y, "multiplier": None})
    return family_fits, multipliers


# ----------------------------------------------------------------------------- the report

def _percent(level: float) -> str:
    return f"{level * 100:g}%"


def _fmt(value, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def _run_name(row) -> str:
    return f"`{row['id']}` {row['model']} (subset {row['subset']})"


def missing_section(table: pd.DataFrame, expected: list[str]) -> list[str]:
    """What the study still lacks: runs not done, metrics not recorded, compute that differs."""
    lines = []
    for status, what in (("new", "not started"), ("partial", "unfinished (running or interrupted)"),
                         ("failed", "failed"), ("unknown", "of unknown status (no tracking URI)")):
        rows = table[table["status"] == status]
        if len(rows):
            lines.append(f"- {len(rows)} run(s) {what}:")
            for _, row in rows.iterrows():
                stage = f"; pretraining {row['pretrain_status']}" if isinstance(row["pretrain_status"], str) else ""
                lines.append(f"  - {_run_name(row)}{stage}")
    started = table[table["status"] != "new"]
    gaps = []
    for _, row in started.iterrows():
        absent = [m for m in expected if pd.isna(row.get(m))]
        if absent:
            gaps.append(f"  - {_run_name(row)} [{row['status']}]: " + ", ".join(f"`{m}`" for m in absent))
    if gaps:
        lines.append(f"- {len(gaps)} started run(s) lack planned metrics:")
        lines += gaps
    unused = table[~pretrained(table) & table[[m for m in expected if m in table]].notna().any(axis=1)]
    if len(unused):
        lines.append(f"- {len(unused)} run(s) have transfer metrics but unfinished pretraining; left out of "
                     "figures and fits: " + ", ".join(_run_name(r) for _, r in unused.iterrows()))
    logged = table["compute/exaflops"] if "compute/exaflops" in table else pd.Series(np.nan, index=table.index)
    off = table[pretrained(table) & logged.notna() & ((logged / table["exaflops"] - 1).abs() > 0.05)]
    for _, row in off.iterrows():
        lines.append(f"- {_run_name(row)}: logged compute {row['compute/exaflops']:.4g} exaFLOPs differs from the "
                     f"planned {row['exaflops']:.4g} by more than 5% (the plan's value is plotted)")
    return lines or ["Nothing: every run finished with every planned metric."]


def runs_section(table: pd.DataFrame, metrics: list[Metric]) -> list[str]:
    head = ["model", "family", "subset", "params", "exaFLOPs", "status", *(m.label for m in metrics)]
    rows = [[row["model"], row["family"], row["subset"], f"{row['params'] / 1e6:.3g}M", _fmt(row["exaflops"], ".4g"),
             row["status"], *(_fmt(row[m.column] * 100, ".1f") for m in metrics)] for _, row in table.iterrows()]
    return _md_table(head, rows) + ["", "Accuracies in percent. All columns, with ids and MLflow run ids: `runs.csv`."]


def _with_interval(value: float, bounds: tuple[float, float] | None) -> str:
    if bounds is None:
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(bounds[0])}, {_fmt(bounds[1])}]"


def fits_section(family_fits: dict[str, scaling.FamilyFit], multipliers: list[dict], metric: Metric,
                 families: list[str], level: float) -> list[str]:
    lines = [(f"Error E = 1 - accuracy on **{metric.label}** against pretraining compute C (exaFLOPs): "
              "saturating E = a (C + d)^-b + c and power E = a C^-b, Huber loss in log space; "
              f"[{_percent(level)} intervals, residual bootstrap, t-expanded]; backtest = mean absolute error "
              "(accuracy points) "
              "predicting the largest-compute point(s) from a fit without them."), ""]
    rows = []
    for family, ff in family_fits.items():
        for form, f in ff.fits.items():
            iv = ff.intervals[form]
            bt = ff.backtests[form]
            rows.append([family_name(family), str(f.n), form,
                         *(_with_interval(getattr(f, p), iv.get(p)) if p in iv else "-" for p in ("a", "b", "c", "d")),
                         f"{bt['mae_points']:.2f} ({bt['held_out']} held out)" if bt else "too few points",
                         _fmt(f.aicc, ".1f")])
    if rows:
        lines += _md_table(["family", "points", "form", "a", "b (exponent)", "c (floor)", "d (offset)",
                            "backtest MAE", "AICc"], rows) + [""]
    for family in family_styles(families)[0]:
        if family not in family_fits:
            lines.append(f"- {family_name(family)}: no run with finished pretraining has {metric.label}.")
            continue
        ff = family_fits[family]
        verdict = (f"**{ff.better}** fits better" if ff.better else
                   "no verdict, the power law is used" if ff.best() else "no fit")
        lines.append(f"- {family_name(family)}: {verdict} ({ff.reason}).")
    if not any(ff.fits for ff in family_fits.values()):
        return [*lines, "", "Compute multiplier: not available, no family has a fit."]
    lines += ["", ("Compute multiplier (how many times the compute one family needs for the same accuracy "
                   "as another, geometric mean over the accuracies both fitted curves reach within their "
                   "measured compute):"), ""]
    for m in multipliers:
        x, y = family_name(m["x"]), family_name(m["y"])
        if m.get("multiplier") is None or math.isnan(m["multiplier"]):
            lines.append(f"- {x} vs {y}: not available (a family has no fit, or the fitted curves share no "
                         "accuracy range).")
            continue
        lo, hi = m["interval"]
        acc_lo, acc_hi = m["accuracy_range"]
        dropped = (f"; {m['undefined_replicates']}/{m['replicates']} bootstrap replicates undefined"
                   if m["undefined_replicates"] else "")
        end_lo, end_hi = m["at_range_ends"]
        lines.append(f"- {x} needs **{m['multiplier']:.2f}x** [{lo:.2f}, {hi:.2f}] the compute of {y} "
                     f"for accuracies {acc_lo * 100:.1f}-{acc_hi * 100:.1f}% ({_fmt(end_lo, '.2f')}x at "
                     f"{acc_lo * 100:.1f}%, {_fmt(end_hi, '.2f')}x at {acc_hi * 100:.1f}%; {m['form_x']} vs "
                     f"{m['form_y']} fits{dropped}).")
    return lines


def fits_json(family_fits: dict[str, scaling.FamilyFit], multipliers: list[dict], metric: Metric) -> dict:
    def one(ff):
        return {"points": len(ff.compute), "better": ff.better, "reason": ff.reason,
                "fits": {form: {"params": f.params, "intervals": ff.intervals[form], "aicc": f.aicc,
                                "backtest": None if ff.backtests[form] is None else
                                {k: v for k, v in ff.backtests[form].items() if k != "fit"}}
                         for form, f in ff.fits.items()}}
    return {"metric": metric.column, "label": metric.label,
            "level": next(iter(family_fits.values())).level if family_fits else None,
            "families": {family: one(ff) for family, ff in family_fits.items()},
            "multipliers": multipliers}


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


def write_table_report(table: pd.DataFrame, out_dir: Path, *, title: str, expected: list[str],
                       several_subsets: bool, seed: int = 0, n_boot: int = 1000, level: float = LEVEL,
                       shot: int = FEWSHOT_SHOT) -> dict[str, Path]:
    """Figures, fits and report.md from a run table (``run_table``'s columns)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"runs.csv": out_dir / "runs.csv"}
    table.to_csv(paths["runs.csv"], index=False)
    counts = table["status"].value_counts()
    lines = [f"# {title}", "",
             f"{len(table)} runs: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in tracking.STATUSES
                                                + (("unknown",) if "unknown" in counts else ())) + ".", "",
             "Method and limits: `docs/analysis.md` of the vit-scaling repository.", ""]
    metrics = transfer_metrics(table, shot)
    plotted, metrics = with_average(table, metrics)
    long = points(plotted, metrics)

    lines += ["## What is missing", "", *missing_section(table, expected), "", "## Runs", "",
              *runs_section(plotted, metrics), "", "## Figures", ""]
    if long.empty:
        lines.append("- No figure: no run has both finished pretraining and a transfer metric yet.")
    else:
        for path in save_figure(figure_compute(long), out_dir, "performance_vs_compute"):
            paths[path.name] = path
        lines.append("- Transfer accuracy against pretraining compute, Pareto frontier per family (paper Fig. 5): "
                     "![performance vs compute](performance_vs_compute.png) (`performance_vs_compute.svg`)")
        data_metrics = [m for m in metrics if m.kind == "fewshot"]
        data_long = points(plotted, data_metrics).dropna(subset=["subset_images"]) if data_metrics else long[:0]
        if not several_subsets:
            lines.append("- Performance against data set size (paper Fig. 4): not drawn, this preset has one data subset.")
        elif data_long.empty:
            lines.append("- Performance against data set size (paper Fig. 4): not drawn, no few-shot results with a "
                         "known subset size.")
        else:
            for path in save_figure(figure_data(data_long), out_dir, "performance_vs_data"):
                paths[path.name] = path
            lines.append("- Few-shot accuracy against pretraining set size (paper Fig. 4): "
                         "![performance vs data](performance_vs_data.png) (`performance_vs_data.svg`)")

    lines += ["", "## Scaling laws", ""]
    if long.empty:
        lines.append("No fit: no points.")
    else:
        headline = metrics[-1] if metrics[-1].kind == "average" else metrics[0]
        family_fits, multipliers = scaling_fits(long, headline.label, seed=seed, n_boot=n_boot, level=level)
        lines += fits_section(family_fits, multipliers, headline, list(table.loc[pretrained(table), "family"]), level)
        if any(ff.fits for ff in family_fits.values()):
            for path in save_figure(figure_fits(family_fits, headline.label), out_dir, "scaling_fits"):
                paths[path.name] = path
            lines += ["", "![scaling-law fits](scaling_fits.png) (`scaling_fits.svg`)"]
        else:
            lines += ["", ("No fit figure: no family has enough points at distinct compute "
                           f"(the power law needs {scaling.MIN_POINTS['power']}, the saturating law "
                           f"{scaling.MIN_POINTS['saturating']}).")]
        paths["fits.json"] = out_dir / "fits.json"
        paths["fits.json"].write_text(json.dumps(_plain(fits_json(family_fits, multipliers, headline)), indent=2))
    paths["report.md"] = out_dir / "report.md"
    paths["report.md"].write_text("\n".join(lines) + "\n")
    return paths


def write_report(study: Study, preset: str, *, tracking_uri: str | None, out_dir: Path,
                 study_run_id: str | None = None, seed: int = 0, n_boot: int = 1000,
                 level: float = LEVEL) -> dict[str, Path]:
    """The study report in ``out_dir``: report.md, runs.csv, fits.json and the figures (PNG and
    SVG); logged under ``report/`` of the MLflow run ``study_run_id`` when given."""
    table = run_table(study, preset, tracking_uri=tracking_uri)
    p = study.preset(preset)
    paths = write_table_report(table, out_dir, title=f"Study `{study.name}`, preset `{preset}`: {study.title}",
                               expected=expected_metrics(p), several_subsets=len(p.subsets) > 1,
                               seed=seed, n_boot=n_boot, level=level)
    if study_run_id is not None:
        c = tracking.client(tracking_uri)
        for path in paths.values():
            c.log_artifact(study_run_id, str(path), artifact_path="report")
    return paths
