"""The report's figures (seaborn and matplotlib, imported only when a figure is drawn).

- **Figure 5** (``figure_compute``): transfer accuracy against pretraining exaFLOPs, one panel per
  plotted metric, each family's Pareto frontier, each run's learning curve as a thin line; each run
  numbered beside its points, the key under the panels.
- **Figure 4** (``figure_data``): few-shot accuracy against pretraining set size, a line per model.
- **Fits** (``figure_fits``): each family's error against compute, log-log, with its scaling laws;
  the points fitted filled, the candidate points left out (early checkpoints, below the frontier) hollow.

What a reviewer needs: no text over another (run numbers are placed where the drawn figure has no
text or marker, keys and legends sit outside the panels, long titles wrap; ``overlapping_texts``
checks a figure), legend entries for exactly what is drawn (markers, frontiers, learning curves,
fitted laws), and averaged metrics named in full (``metric_name``).

Each family keeps one colour and marker in every figure (``family_styles``); ``save_figure``
writes a figure as PNG and SVG.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

import pipeline.analysis.law_choice as law_choice
from pipeline.analysis.curves import FEWSHOT_AVERAGE
from pipeline.analysis.table import AVERAGE, Metric, family_name, family_order, pareto_frontier, replicates

PALETTE = {"vit": "#0173b2", "resnet": "#de8f05", "hybrid": "#029e73"}   # seaborn "colorblind"
MARKERS = {"vit": "o", "resnet": "s", "hybrid": "^"}
OTHER_COLOR, OTHER_MARKER = "#949494", "D"
MIN_PNG_DPI = 150
PREVIEW_WIDTH = 1000   # pixels: fits MLflow's run description on a laptop screen


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


# ----------------------------------------------------------------------------- text that cannot collide

LABEL_PAD_PX = 2.0      # gap kept between a placed label and any other text or marker (pixels at the figure's dpi)
RINGS_PT = (3, 7, 12, 18, 26, 36, 48, 62, 80)   # how far from its point a run's number is tried, in points
LEADER_FROM_PT = 12     # numbers placed this far or further get a thin line to their point


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def metric_name(metric: Metric, metrics: Iterable[Metric]) -> str:
    """A metric's name in full: an average names what it averages ("average of digits 5-shot and
    digits fine-tuned", not "average of 2"); any other metric its label."""
    metrics = list(metrics)
    if metric.column == AVERAGE:
        parts = [m.label for m in metrics if m.kind != "average"]
    elif metric.column == FEWSHOT_AVERAGE:
        parts = [m.label for m in metrics if m.kind == "fewshot"]
    else:
        return metric.label
    return f"average of {_and(parts)}" if parts else metric.label


def _long_metrics(long: pd.DataFrame) -> list[Metric]:
    """The metrics of a long frame (``table.points``: ``column`` and ``metric``), in its order; its
    average (``AVERAGE``) is that of all the others."""
    pairs = long[["column", "metric"]].drop_duplicates() if "column" in long else long[["metric"]].assign(column="")
    return [Metric(str(column), str(label), "average" if column == AVERAGE else "")
            for column, label in pairs.drop_duplicates("metric")[["column", "metric"]].itertuples(index=False)]


def _titles(long: pd.DataFrame) -> dict[str, str]:
    """{metric label: panel title}: averages named in full."""
    metrics = _long_metrics(long)
    return {m.label: metric_name(m, metrics) for m in metrics}


def _wrap_title(ax, text: str, renderer) -> bool:
    """``text`` as the panel title, wrapped so that it is no wider than the panel. Whether it was wrapped."""
    import textwrap
    width = 0.95 * ax.get_window_extent(renderer).width   # a margin for the layout done after
    title = ax.set_title(text)
    chars = len(text)
    while chars > 12 and title.get_window_extent(renderer).width > width:
        chars = int(chars * 0.85)
        title.set_text(textwrap.fill(text, chars, break_long_words=False, break_on_hyphens=False))
    return title.get_text() != text


def _hidden_tick_labels(fig) -> set[int]:
    """The ids of tick labels matplotlib does not draw: those of ticks outside their axis's view."""
    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_transform().transform(np.asarray(axis.get_view_interval(), dtype=float)))
            tol = (hi - lo) * 1e-9
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                loc = float(axis.get_transform().transform(np.asarray([tick.get_loc()], dtype=float))[0])
                if not lo - tol <= loc <= hi + tol:
                    hidden |= {id(tick.label1), id(tick.label2)}
    return hidden


def _texts(fig) -> list:
    """Every text of the figure that is drawn: visible, not empty, not a tick label outside the view
    (tick labels, titles, axis labels, legends, annotations)."""
    from matplotlib.text import Text
    hidden = _hidden_tick_labels(fig)
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in hidden]


def text_boxes(fig, renderer=None, draw: bool = True) -> list:
    """(text, window extent) of every drawn text of the figure (``_texts``), drawing it first unless
    ``draw`` is False. Annotations count as their text only (not their leader line)."""
    from matplotlib.text import Text
    if draw:
        fig.canvas.draw()
    renderer = renderer or fig.canvas.get_renderer()
    return [(t, Text.get_window_extent(t, renderer)) for t in _texts(fig)]


def overlapping_texts(fig) -> list[tuple[str, str]]:
    """The pairs of texts of the figure whose extents overlap (none in a figure a reviewer accepts)."""
    boxes = text_boxes(fig)
    return [(a.get_text(), b.get_text()) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:]
            if box_a.overlaps(box_b) and box_a.width > 0 and box_b.width > 0]


def _overlaps(box: tuple, boxes: list[tuple]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes)


def _place_numbers(ax, points: list[tuple[float, float, str]], taken: list[tuple], marker_px: float,
                   renderer) -> None:
    """Each (x, y, number) as a small text beside its point, at the nearest spot (rings around the
    point, eight directions, the first below to the right) whose box overlaps no text placed or
    already in the figure (``taken``, grown here) and no marker, inside the panel; far ones with a
    thin leader line. Boxes are checked in display pixels, so nothing placed here can collide."""
    dpi = ax.figure.dpi
    pad = LABEL_PAD_PX
    inside = ax.get_window_extent(renderer)
    to_px = ax.transData.transform
    centers = [to_px((x, y)) for x, y, _ in points]
    half = marker_px / 2
    markers = [(cx - half, cy - half, cx + half, cy + half) for cx, cy in centers]
    angles = np.deg2rad([-35, 35, -145, 145, -90, 90, 0, 180])
    for (x, y, text), (cx, cy) in zip(points, centers):
        probe = ax.text(0, 0, text, fontsize=7, transform=None)
        bb = probe.get_window_extent(renderer)
        probe.remove()
        w, h = bb.width, bb.height
        chosen = None
        for ring in RINGS_PT:
            r = ring * dpi / 72 + half
            for a in angles:
                dx, dy = np.cos(a), np.sin(a)
                mx, my = cx + dx * (r + w / 2), cy + dy * (r + h / 2)
                box = (mx - w / 2 - pad, my - h / 2 - pad, mx + w / 2 + pad, my + h / 2 + pad)
                if (box[0] < inside.x0 or box[2] > inside.x1 or box[1] < inside.y0 or box[3] > inside.y1
                        or _overlaps(box, taken) or _overlaps(box, markers)):
                    continue
                chosen = (mx, my, box, ring)
                break
            if chosen:
                break
        if chosen is None:   # a panel too crowded to number: say so rather than overprint
            import warnings
            warnings.warn(f"no free place for point {text} in panel {ax.get_title()!r}", stacklevel=2)
            continue
        mx, my, box, ring = chosen
        offset = ((mx - cx) * 72 / dpi, (my - cy) * 72 / dpi)
        arrow = dict(arrowstyle="-", color="0.55", lw=0.5, shrinkA=0, shrinkB=half * 72 / dpi) \
            if ring >= LEADER_FROM_PT else None
        ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", ha="center", va="center",
                    fontsize=7, color="0.15", arrowprops=arrow, annotation_clip=False, zorder=5)
        taken.append(box)


def numbered_runs(long: pd.DataFrame) -> pd.DataFrame:
    """One row per run of a figure's points: ``id``, ``family``, ``label`` and its ``number`` (1, 2, ...;
    families in the paper's order, then compute, then label), the same in every panel."""
    runs = long.drop_duplicates("id")[["id", "family", "label", "exaflops"]].copy()
    rank = {f: i for i, f in enumerate(family_order(runs["family"]))}
    runs = runs.assign(_rank=runs["family"].map(rank)).sort_values(["_rank", "exaflops", "label"])
    return runs.drop(columns="_rank").assign(number=range(1, len(runs) + 1)).reset_index(drop=True)


def _panels(long: pd.DataFrame) -> int:
    return min(3, long["metric"].nunique())


def _draw_curves(ax, lines: pd.DataFrame) -> bool:
    """Each run's learning curve (``curves.curve_lines`` of one panel): a thin line in its family's
    colour. Whether any line was drawn (a curve of two points or more)."""
    drawn = False
    for (family, _), line in lines.groupby(["family", "id"]):
        line = line.sort_values("exaflops")
        if len(line) < 2:
            continue
        ax.plot(line["exaflops"], line["accuracy"], color=PALETTE.get(family, OTHER_COLOR), lw=0.8, alpha=0.55,
                zorder=1, label=CURVE_LABEL)
        drawn = True
    return drawn


CURVE_LABEL = "learning curve (per run)"


def frontier_label(family: str) -> str:
    return f"{family_name(family)} frontier"


def _marker_handle(family: str, label: str, size: float = 7):
    from matplotlib.lines import Line2D
    return Line2D([], [], ls="", marker=MARKERS.get(family, OTHER_MARKER), color=PALETTE.get(family, OTHER_COLOR),
                  markersize=size, label=label)


def _freeze_limits(axes) -> None:
    for ax in axes:
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(ax.get_ylim())


def _run_key(fig, runs: pd.DataFrame, below_px: float) -> None:
    """The key of the run numbers under the panels, a column per family: its marker, number and label."""
    from matplotlib.patches import Patch
    columns = [group for _, group in sorted(runs.groupby("family"), key=lambda kv: family_order(runs["family"]).index(kv[0]))]
    depth = max(len(c) for c in columns)
    handles, labels = [], []
    for column in columns:
        for _, run in column.iterrows():
            handles.append(_marker_handle(run["family"], "", size=5))
            labels.append(f"{run['number']}  {run['label']}")
        handles += [Patch(alpha=0, linewidth=0)] * (depth - len(column))
        labels += [""] * (depth - len(column))
    height = fig.get_size_inches()[1] * fig.dpi
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, below_px / height), ncol=len(columns),
               frameon=False, fontsize=7.5, title="runs (number beside each point)", title_fontsize=8,
               handletextpad=0.4, columnspacing=2.0)


def replicate_means(points: pd.DataFrame) -> pd.DataFrame:
    """(exaflops, accuracy) of each configuration: the mean over its seeds (``table.replicates``),
    a run's own point where the configuration has one run."""
    return points.groupby(replicates(points))[["exaflops", "accuracy"]].mean()


def figure_compute(long: pd.DataFrame, curves: pd.DataFrame | None = None):
    """Figure 5: accuracy against pretraining compute, a panel per metric (averages named in full),
    Pareto frontiers of the end-of-run points (markers; of their means over seeds where a configuration
    has several, as the fits), and each run's learning curve (``curves``, a
    thin line) where logged. Each run is numbered beside its points (``numbered_runs``, placed where no
    text or marker is), with the key under the panels; the legend has the families' markers, their
    frontiers and the learning curves, each only where drawn."""
    import seaborn as sns
    _style()
    curves = curves if curves is not None and not curves.empty else None
    long = long.assign(Family=long["family"].map(family_name))
    hue = _hue(long)
    markers = hue.pop("_markers")
    order = family_order(long["family"])
    g = sns.relplot(data=long, x="exaflops", y="accuracy", style="Family", style_order=hue["hue_order"],
                    markers=markers, col="metric", col_wrap=_panels(long), kind="scatter", s=60, height=3.8,
                    aspect=1.25, facet_kws={"sharey": False, "sharex": True}, legend=False, **hue)
    every_x = long["exaflops"] if curves is None else pd.concat([long["exaflops"], curves["exaflops"]])
    titles = _titles(long)
    fronts, any_curve = set(), False
    for metric, ax in g.axes_dict.items():
        panel = long[long["metric"] == metric]
        if curves is not None:
            any_curve |= _draw_curves(ax, curves[curves["metric"] == metric])
        for family, group in panel.groupby("family"):
            front = pareto_frontier(replicate_means(group))
            if len(front) >= 2:
                ax.plot(front["exaflops"], front["accuracy"], color=PALETTE.get(family, OTHER_COLOR), lw=1.5,
                        alpha=0.8, label=frontier_label(family))
                fronts.add(family)
        _log_x(ax, every_x)
        ax.margins(x=0.06, y=0.08)
    g.set_axis_labels("total pretraining compute [exaFLOPs]", "transfer accuracy [%]")
    legend = {family_name(f): _marker_handle(f, family_name(f)) for f in order}
    legend.update({frontier_label(f): _line_handle(f, frontier_label(f)) for f in order if f in fronts})
    if any_curve:
        legend[CURVE_LABEL] = _line_handle(None, CURVE_LABEL, lw=0.8)
    g.add_legend(legend_data=legend, title="")
    fig = g.figure
    renderer = fig.canvas.get_renderer()
    if any([_wrap_title(ax, titles.get(metric, metric), renderer) for metric, ax in g.axes_dict.items()]):
        g.tight_layout()   # room for titles of several lines
    _freeze_limits(g.axes.flat)
    boxes = [box for _, box in text_boxes(fig, renderer)]
    runs = numbered_runs(long)
    _run_key(fig, runs, min(box.y0 for box in boxes) - 6)   # under every text: no overlap
    taken = [tuple(box.extents) for box in boxes]
    number = dict(zip(runs["id"], runs["number"].astype(str)))
    marker_px = np.sqrt(60) * fig.dpi / 72
    for metric, ax in g.axes_dict.items():
        panel = long[long["metric"] == metric]
        _place_numbers(ax, [(r["exaflops"], r["accuracy"], number[r["id"]]) for _, r in panel.iterrows()], taken,
                       marker_px, renderer)
    return fig


def _line_handle(family: str | None, label: str, lw: float = 1.5, ls: str = "-"):
    from matplotlib.lines import Line2D
    return Line2D([], [], color=PALETTE.get(family, OTHER_COLOR) if family else "0.45", lw=lw, ls=ls, label=label)


def figure_data(long: pd.DataFrame):
    """Figure 4: few-shot accuracy against pretraining set size, a line per model (colour: family,
    marker: model, both in the legend); where a model has several runs at one size (seeds), the line
    joins their mean and a band spans one standard deviation (deterministic, unlike a bootstrap)."""
    import seaborn as sns
    _style()
    long = long.assign(Family=long["family"].map(family_name)).sort_values("subset_images")
    hue = _hue(long)
    hue.pop("_markers")
    g = sns.relplot(data=long, x="subset_images", y="accuracy", style="model", markers=True, dashes=False,
                    col="metric", col_wrap=_panels(long), kind="line", height=3.8, aspect=1.25, errorbar="sd",
                    facet_kws={"sharey": False}, **hue)
    titles = _titles(long)
    for metric, ax in g.axes_dict.items():
        _log_x(ax, long["subset_images"])
    g.set_axis_labels("pretraining set size [images]", "few-shot accuracy [%]")
    fig = g.figure
    renderer = fig.canvas.get_renderer()
    if any([_wrap_title(ax, titles.get(metric, metric), renderer) for metric, ax in g.axes_dict.items()]):
        g.tight_layout()   # room for titles of several lines
    return fig


def _draw_left_out(ax, left_out: pd.DataFrame, color: str, marker: str) -> set[bool]:
    """A family's candidate points not fitted: hollow; early checkpoints fainter. Which kinds were
    drawn (True: early)."""
    for early, group in left_out.groupby("early"):
        error = (100 - group["accuracy"]).clip(lower=1e-3)
        ax.scatter(group["exaflops"], error, facecolors="none", edgecolors=color, marker=marker, s=28,
                   linewidths=0.9, alpha=0.35 if early else 0.8, zorder=2)
    return {bool(e) for e in left_out["early"]} if not left_out.empty else set()


def _draw_family(ax, ff: law_choice.FamilyFit, color: str, marker: str) -> list:
    """One family of the fits figure: its points, the law used in its band and, dotted, the plain
    power law where another law is used (the reference every reader knows; the other forms are in
    the report's table). Its legend handles: the points, the law used (over its band), the power law
    where drawn."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    name = family_name(ff.family)
    ax.scatter(ff.compute, ff.error * 100, color=color, marker=marker, s=40, zorder=3)
    handles = [Line2D([], [], ls="", color=color, marker=marker, label=f"{name} (points fitted)")]
    if ff.best() is None:
        return handles
    point = ff.best()[0]
    grid = np.geomspace(*ff.compute_range, 100)
    lo, hi = ff.band(grid)
    used = f"{name} fit ({point.form}), {ff.level * 100:g}% band"
    ax.fill_between(grid, lo * 100, hi * 100, color=color, alpha=0.18, lw=0)
    ax.plot(grid, point.error(grid) * 100, color=color, lw=1.8, label=used)
    handles.append((Patch(color=color, alpha=0.18, lw=0), Line2D([], [], color=color, lw=1.8, label=used)))
    for form, other in ff.fits.items():
        if form == "power" and form != point.form:
            label = f"{name} {form} (not used)"
            ax.plot(grid, other.error(grid) * 100, color=color, lw=1, ls=":", label=label)
            handles.append(Line2D([], [], color=color, lw=1, ls=":", label=label))
    return handles


def _handle_label(handle) -> str:
    return (handle[-1] if isinstance(handle, tuple) else handle).get_label()


def figure_fits(family_fits: dict[str, law_choice.FamilyFit], label: str, points: pd.DataFrame | None = None):
    """Per-family scaling laws over the points: error against compute, log-log, the law used
    solid in its bootstrap band, the power law dotted where another law is used. ``points``
    (``FitBasis.points``): the candidate points, those not ``used`` drawn hollow. ``label``: the
    metric's name (in full, see ``metric_name``). The legend, beside the axes, has an entry per
    family's points, law used and power law, each only where drawn."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    _style()
    order, colors, markers = family_styles(family_fits)
    left_out = points[~points["used"].astype(bool)] if points is not None else pd.DataFrame(columns=["family"])
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    handles, kinds = [], set()
    for family in order:
        kinds |= _draw_left_out(ax, left_out[left_out["family"] == family], colors[family], markers[family])
        handles += _draw_family(ax, family_fits[family], colors[family], markers[family])
    for early, text in ((False, "not fitted: below the frontier"), (True, "not fitted: early checkpoint")):
        if early in kinds:
            handles.append(Line2D([], [], color="0.3", marker="o", ls="", markerfacecolor="none",
                                  alpha=0.35 if early else 0.8, label=text))
    ax.set(yscale="log", xlabel="total pretraining compute [exaFLOPs]", ylabel="error = 100 - accuracy [%]")
    shown = left_out.reindex(columns=["exaflops", "accuracy"]).astype(float)
    _log_x(ax, np.concatenate([ff.compute for ff in family_fits.values()] + [shown["exaflops"].to_numpy()]))
    _log_ticks(ax.yaxis, np.concatenate([ff.error * 100 for ff in family_fits.values()]
                                        + [100 - shown["accuracy"].to_numpy()]))
    ax.legend(handles=handles, labels=[_handle_label(h) for h in handles], fontsize=8, frameon=True,
              loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    _wrap_title(ax, f"{label}: scaling-law fits" + (" (frontier)" if not left_out.empty else ""),
                fig.canvas.get_renderer())
    return fig


def save_figure(fig, out_dir: Path, name: str) -> list[Path]:
    """``fig`` as ``<name>.png`` (at least 150 dpi) and ``<name>.svg`` in ``out_dir``; closes it."""
    import matplotlib.pyplot as plt
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    fig.savefig(paths[0], dpi=MIN_PNG_DPI, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def save_preview(png: Path, name: str, width: int = PREVIEW_WIDTH) -> Path:
    """A copy of ``png`` at most ``width`` pixels wide, as ``<name>.png`` beside it."""
    from PIL import Image
    path = png.with_name(f"{name}.png")
    with Image.open(png) as image:
        image.thumbnail((width, image.height), Image.LANCZOS)
        image.save(path, optimize=True)
    return path
