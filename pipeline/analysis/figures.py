"""The report's figures (seaborn and matplotlib, imported only when a figure is drawn).

- **Figure 5** (``figure_compute``): transfer accuracy against pretraining exaFLOPs, one panel per
  plotted metric, each family's Pareto frontier, each run's learning curve as a thin line.
- **Figure 4** (``figure_data``): few-shot accuracy against pretraining set size, a line per model.
- **Fits** (``figure_fits``): each family's error against compute, log-log, with its scaling laws;
  the points fitted filled, the candidate points left out (early checkpoints, below the frontier) hollow.

Each family keeps one colour and marker in every figure (``family_styles``); ``save_figure``
writes a figure as PNG and SVG.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from pipeline import fits as scaling
from pipeline.analysis.table import family_name, family_order, pareto_frontier

PALETTE = {"vit": "#0173b2", "resnet": "#de8f05", "hybrid": "#029e73"}   # seaborn "colorblind"
MARKERS = {"vit": "o", "resnet": "s", "hybrid": "^"}
OTHER_COLOR, OTHER_MARKER = "#949494", "D"
MIN_PNG_DPI = 150


def _style():
    import seaborn as sns
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)


def family_styles(families: Iterable[str]) -> tuple[list[str], dict, dict]:
    """Families in the paper's order (others after), with their colour and marker: fixed for the
    paper's three, grey diamonds for any other."""
    order = family_order(families)
    return order, {f: PALETTE.get(f, OTHER_COLOR) for f in order}, {f: MARKERS.get(f, OTHER_MARKER) for f in order}


def _hue(long: pd.DataFrame) -> dict[str, Any]:
    """seaborn arguments colouring by family under its display name."""
    order, colors, markers = family_styles(long["family"])
    return {"hue": "Family", "hue_order": [family_name(f) for f in order],
            "palette": {family_name(f): colors[f] for f in order},
            "_markers": {family_name(f): markers[f] for f in order}}


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


def _draw_curves(ax, lines: pd.DataFrame) -> None:
    """Each run's learning curve (``curves.curve_lines`` of one panel): a thin line in its family's colour."""
    for (family, _), line in lines.groupby(["family", "id"]):
        line = line.sort_values("exaflops")
        ax.plot(line["exaflops"], line["accuracy"], color=PALETTE.get(family, OTHER_COLOR), lw=0.8, alpha=0.55,
                zorder=1)


def figure_compute(long: pd.DataFrame, curves: pd.DataFrame | None = None):
    """Figure 5: accuracy against pretraining compute, a panel per metric, Pareto frontiers of the
    end-of-run points (markers), and each run's learning curve (``curves``, a thin line) where logged."""
    import seaborn as sns
    _style()
    curves = curves if curves is not None and not curves.empty else None
    long = long.assign(Family=long["family"].map(family_name))
    hue = _hue(long)
    markers = hue.pop("_markers")
    g = sns.relplot(data=long, x="exaflops", y="accuracy", style="Family", style_order=hue["hue_order"],
                    markers=markers, col="metric", col_wrap=_panels(long), kind="scatter", s=60, height=3.8,
                    aspect=1.25, facet_kws={"sharey": False, "sharex": True}, **hue)
    every_x = long["exaflops"] if curves is None else pd.concat([long["exaflops"], curves["exaflops"]])
    for metric, ax in g.axes_dict.items():
        panel = long[long["metric"] == metric]
        if curves is not None:
            _draw_curves(ax, curves[curves["metric"] == metric])
        for family, group in panel.groupby("Family"):
            front = pareto_frontier(group)
            ax.plot(front["exaflops"], front["accuracy"], color=hue["palette"][family], lw=1.5, alpha=0.8)
        _label_points(ax, panel, "exaflops", "accuracy")
        _log_x(ax, every_x)
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


def _draw_left_out(ax, left_out: pd.DataFrame, color: str, marker: str) -> None:
    """A family's candidate points not fitted: hollow; early checkpoints fainter."""
    for early, group in left_out.groupby("early"):
        error = (100 - group["accuracy"]).clip(lower=1e-3)
        ax.scatter(group["exaflops"], error, facecolors="none", edgecolors=color, marker=marker, s=28,
                   linewidths=0.9, alpha=0.35 if early else 0.8, zorder=2)


def _draw_family(ax, ff: scaling.FamilyFit, color: str, marker: str) -> None:
    """One family of the fits figure: its points, the law used in its band, the other form dotted."""
    ax.scatter(ff.compute, ff.error * 100, color=color, marker=marker, s=40, zorder=3)
    if ff.best() is None:
        return
    point = ff.best()[0]
    grid = np.geomspace(*ff.compute_range, 100)
    lo, hi = ff.band(grid)
    ax.fill_between(grid, lo * 100, hi * 100, color=color, alpha=0.18, lw=0)
    ax.plot(grid, point.error(grid) * 100, color=color, lw=1.8)
    for form, other in ff.fits.items():
        if form != point.form:
            ax.plot(grid, other.error(grid) * 100, color=color, lw=1, ls=":")


def figure_fits(family_fits: dict[str, scaling.FamilyFit], label: str, points: pd.DataFrame | None = None):
    """Per-family scaling laws over the points: error against compute, log-log, the better form
    solid in its bootstrap band, the other form dotted. ``points`` (``FitBasis.points``): the
    candidate points, those not ``used`` drawn hollow."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    _style()
    order, colors, markers = family_styles(family_fits)
    level = next(iter(family_fits.values())).level
    left_out = points[~points["used"].astype(bool)] if points is not None else pd.DataFrame(columns=["family"])
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    handles = []
    for family in order:
        _draw_left_out(ax, left_out[left_out["family"] == family], colors[family], markers[family])
        _draw_family(ax, family_fits[family], colors[family], markers[family])
        handles.append(Line2D([], [], color=colors[family], marker=markers[family], label=family_name(family)))
    handles += [Line2D([], [], color="0.3", lw=1.8, label=f"law used, {level * 100:g}% band"),
                Line2D([], [], color="0.3", lw=1, ls=":", label="other form")]
    if not left_out.empty:
        handles.append(Line2D([], [], color="0.3", marker="o", ls="", markerfacecolor="none",
                              label="not fitted (early or below the frontier)"))
    ax.set(yscale="log", xlabel="total pretraining compute [exaFLOPs]", ylabel="error = 100 - accuracy [%]",
           title=f"{label}: scaling-law fits" + (" (frontier)" if points is not None and not left_out.empty else ""))
    shown = left_out.reindex(columns=["exaflops", "accuracy"]).astype(float)
    _log_x(ax, np.concatenate([ff.compute for ff in family_fits.values()] + [shown["exaflops"].to_numpy()]))
    _log_ticks(ax.yaxis, np.concatenate([ff.error * 100 for ff in family_fits.values()]
                                        + [100 - shown["accuracy"].to_numpy()]))
    ax.legend(handles=handles, fontsize=8, frameon=True)
    return fig


def save_figure(fig, out_dir: Path, name: str) -> list[Path]:
    """``fig`` as ``<name>.png`` (at least 150 dpi) and ``<name>.svg`` in ``out_dir``; closes it."""
    import matplotlib.pyplot as plt
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    fig.savefig(paths[0], dpi=MIN_PNG_DPI, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths
