"""The report's figures as a reviewer reads them: no two texts overlap (tick labels, titles, axis
labels, legend texts, run numbers), averaged metrics are named in full, and the legends have an
entry for each thing drawn and none for what is not.

Drawn from synthetic data with close-together points (nine runs at nearly the same compute and
accuracy, the case that made the old per-point labels overprint each other) and from the nine
end-of-run points of the tiny scaling study."""
from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from pipeline.analysis import law_choice, scaling_laws  # noqa: E402
from pipeline.analysis import figures  # noqa: E402
from pipeline.analysis.curves import FEWSHOT_AVERAGE  # noqa: E402
from pipeline.analysis.table import AVERAGE, Metric, family_name  # noqa: E402

FAMILIES = ("vit", "resnet", "hybrid")
MODELS = {"vit": "ViT-micro", "resnet": "BiT-micro", "hybrid": "Hybrid-micro"}
# The tiny scaling study's end-of-run points (digits 5-shot, digits fine-tuned; accuracy in %).
TINY = [("vit", "ViT-micro-S (200 steps)", 1.0859e-07, 18.81, 47.56),
        ("vit", "ViT-micro-S (400 steps)", 2.1718e-07, 23.48, 46.22),
        ("vit", "ViT-micro-M", 8.6122e-07, 33.56, 47.33),
        ("resnet", "BiT-micro-S (200 steps)", 1.8547e-07, 61.04, 86.89),
        ("resnet", "BiT-micro-S (400 steps)", 3.7094e-07, 66.59, 88.89),
        ("resnet", "BiT-micro-M", 1.2704e-06, 70.37, 92.22),
        ("hybrid", "Hybrid-micro-S (200 steps)", 2.1700e-07, 31.04, 78.67),
        ("hybrid", "Hybrid-micro-S (400 steps)", 4.3400e-07, 30.37, 80.67),
        ("hybrid", "Hybrid-micro-M", 2.0446e-06, 32.22, 87.11)]


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt
    yield
    plt.close("all")


def long_frame(runs: list[tuple], metrics: list[Metric]) -> pd.DataFrame:
    """``table.points``' long format: runs (family, label, exaflops, accuracy per metric but the
    average), the average (the mean of the others) last."""
    rows = []
    for i, (family, label, exaflops, *accuracy) in enumerate(runs):
        values = dict(zip([m.column for m in metrics if m.column != AVERAGE], accuracy))
        if any(m.column == AVERAGE for m in metrics):
            values[AVERAGE] = float(np.mean(list(values.values())))
        for m in metrics:
            rows.append({"id": f"run{i}", "model": label.split(" ")[0], "family": family, "subset": "full",
                         "subset_images": np.nan, "label": label, "exaflops": exaflops, "column": m.column,
                         "accuracy": values[m.column], "metric": m.label})
    return pd.DataFrame(rows)


def close_runs(n_metrics: int) -> list[tuple]:
    """Nine runs: per family two within 3% of each other's compute and 1 point of accuracy (six
    points in a cluster), and a larger one far from them (so that the cluster is small on the axes)."""
    near = [(f, f"{MODELS[f]}-{size} (400 steps)", 1e-7 * (1 + 0.01 * (2 * k + j)),
             *[40 + 0.3 * j + 0.1 * k + m for m in range(n_metrics)])
            for k, f in enumerate(FAMILIES) for j, size in enumerate("SM")]
    far = [(f, f"{MODELS[f]}-L (400 steps)", 2e-6 * (1 + 0.2 * k), *[70 + 5 * k + m for m in range(n_metrics)])
           for k, f in enumerate(FAMILIES)]
    return near + far


def tiny_curves(long: pd.DataFrame, metric: str) -> pd.DataFrame:
    """A learning curve per run of one metric: a checkpoint at half its compute, then its end."""
    ends = long[long["metric"] == metric]
    half = ends.assign(exaflops=ends["exaflops"] / 2, accuracy=ends["accuracy"] * 0.9)
    return pd.concat([half, ends], ignore_index=True)[["id", "family", "exaflops", "accuracy", "metric"]]


def assert_no_overlap(fig) -> None:
    assert figures.overlapping_texts(fig) == []


def legend_labels(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts() if t.get_text()]


def line_labels(fig) -> set[str]:
    """The labels of the lines drawn in the panels (matplotlib's own start with an underscore)."""
    return {line.get_label() for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")}


# ----------------------------------------------------------------------------- the checker itself

def test_overlapping_texts_finds_texts_drawn_over_each_other():
    """The check can fail: two labels at one spot (the old ``_label_points`` on close points) overlap."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.annotate("ViT-micro-S (200 steps)", (0.5, 0.5), xytext=(4, -9), textcoords="offset points")
    ax.annotate("Hybrid-micro-S (200 steps)", (0.51, 0.5), xytext=(4, -9), textcoords="offset points")
    assert figures.overlapping_texts(fig) == [("ViT-micro-S (200 steps)", "Hybrid-micro-S (200 steps)")]


def test_metric_name_names_what_an_average_averages():
    metrics = [Metric("fewshot/digits/5shot", "digits 5-shot", "fewshot"),
               Metric("fewshot/cifar/5shot", "cifar 5-shot", "fewshot"),
               Metric("finetune/digits/acc", "digits fine-tuned", "finetune"),
               Metric(AVERAGE, "average of 3", "average")]
    assert figures.metric_name(metrics[-1], metrics) == "average of digits 5-shot, cifar 5-shot and digits fine-tuned"
    few = Metric(FEWSHOT_AVERAGE, "few-shot average of 2", "average")
    assert figures.metric_name(few, metrics) == "average of digits 5-shot and cifar 5-shot"
    assert figures.metric_name(metrics[0], metrics) == "digits 5-shot"


# ----------------------------------------------------------------------------- Figure 5

def check_compute_figure(fig, long: pd.DataFrame, curves: bool) -> None:
    """No overlap; the legend: each family's marker, each frontier drawn, the learning curves if drawn;
    the key: every run, its number beside each of its points."""
    assert_no_overlap(fig)
    main, key = fig.legends
    frontiers = {label for label in line_labels(fig) if label.endswith(" frontier")}
    families = [family_name(f) for f in FAMILIES if f in set(long["family"])]
    assert legend_labels(main) == families + [f"{f} frontier" for f in families if f"{f} frontier" in frontiers] + (
        [figures.CURVE_LABEL] if curves else [])
    assert line_labels(fig) == set(legend_labels(main)) - set(families)   # every labelled line in the legend, and back
    runs = figures.numbered_runs(long)
    assert legend_labels(key) == [f"{n}  {label}" for n, label in zip(runs["number"], runs["label"])]
    numbers = sorted(t.get_text() for ax in fig.axes for t in ax.texts)
    expected = sorted(str(n) for n in long.merge(runs[["id", "number"]], on="id")["number"])
    assert numbers == expected   # one number per point drawn, none lost


def test_figure_compute_close_points_nothing_overlaps():
    """Nine runs at nearly the same compute and accuracy, five panels (two rows), learning curves."""
    metrics = [Metric("fewshot/digits/5shot", "digits 5-shot", "fewshot"),
               Metric("fewshot/cifar/5shot", "cifar 5-shot", "fewshot"),
               Metric("finetune/digits/acc", "digits fine-tuned", "finetune"),
               Metric("finetune/cifar/acc", "cifar fine-tuned", "finetune"),
               Metric(AVERAGE, "average of 4", "average")]
    long = long_frame(close_runs(4), metrics)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="no free place")
        fig = figures.figure_compute(long, tiny_curves(long, "digits 5-shot"))
    check_compute_figure(fig, long, curves=True)
    titles = [ax.get_title().replace("\n", " ") for ax in fig.axes]
    assert "average of digits 5-shot, cifar 5-shot, digits fine-tuned and cifar fine-tuned" in titles
    assert "average of 4" not in titles


def test_figure_compute_tiny_study():
    """The tiny study's nine runs (ViT and hybrid close in 5-shot), the average named in full."""
    metrics = [Metric("fewshot/digits/5shot", "digits 5-shot", "fewshot"),
               Metric("finetune/digits/acc", "digits fine-tuned", "finetune"), Metric(AVERAGE, "average of 2", "average")]
    long = long_frame(TINY, metrics)
    fig = figures.figure_compute(long, tiny_curves(long, "digits 5-shot"))
    check_compute_figure(fig, long, curves=True)
    assert [ax.get_title() for ax in fig.axes] == ["digits 5-shot", "digits fine-tuned",
                                                   "average of digits 5-shot and digits fine-tuned"]


def test_figure_compute_legend_only_what_is_drawn():
    """One run per family: no frontier line, no learning curve, so neither in the legend."""
    metrics = [Metric("fewshot/digits/5shot", "digits 5-shot", "fewshot")]
    long = long_frame([TINY[0], TINY[3], TINY[6]], metrics)
    fig = figures.figure_compute(long)
    check_compute_figure(fig, long, curves=False)
    assert legend_labels(fig.legends[0]) == ["ViT", "ResNet (BiT)", "Hybrid (R50+ViT)"]


def test_figure_compute_frontier_of_several_seeds_runs_through_their_means():
    """Two seeds of the tiny study's ViT runs: every run is drawn, and the frontier joins the configurations'
    means over seeds (as the fits do), not the luckier seed's points."""
    metrics = [Metric("fewshot/digits/5shot", "digits 5-shot", "fewshot")]
    seed0 = long_frame(TINY[:3], metrics).assign(replicate=lambda f: f["id"], seed=0)
    seed1 = seed0.assign(id=seed0["id"] + "-s1", seed=1, accuracy=seed0["accuracy"] + [4.0, -6.0, 2.0])
    long = pd.concat([seed0, seed1], ignore_index=True)
    fig = figures.figure_compute(long)
    [front] = [line for line in fig.axes[0].get_lines() if line.get_label() == "ViT frontier"]
    means = long.groupby("replicate")[["exaflops", "accuracy"]].mean().sort_values("exaflops")
    # means 20.81, 20.48, 34.56: the 400-step run's mean is below the 200-step one's, so it is off the frontier
    assert list(front.get_ydata()) == pytest.approx([means["accuracy"].iloc[0], means["accuracy"].iloc[2]])
    assert len(fig.axes[0].collections[0].get_offsets()) == 6                      # every run's marker


# ----------------------------------------------------------------------------- Figure 4 and the fits

def test_figure_data_runs_of_several_seeds_drawn_as_their_mean_and_spread():
    """Two seeds per model and size: the line joins their means, a band spans one standard deviation, the
    same on every drawing (seaborn's default band is a random bootstrap)."""
    rows = [{"id": f"m{images}s{seed}", "model": "ViT-micro-S", "family": "vit", "subset": str(images),
             "subset_images": images, "label": f"ViT-micro-S (seed {seed})", "exaflops": 1e-7,
             "column": "fewshot/digits/5shot", "metric": "digits 5-shot", "accuracy": 40 + grow + 2 * seed}
            for images, grow in ((1000, 0), (5000, 3)) for seed in (0, 1)]
    bands = []
    for _ in range(2):
        ax = figures.figure_data(pd.DataFrame(rows)).axes[0]
        [line] = [line for line in ax.get_lines() if len(line.get_xdata()) == 2]
        assert list(line.get_ydata()) == [41.0, 44.0]                    # the means of seeds 0 and 1
        [band] = ax.collections
        bands.append(band.get_paths()[0].vertices[:, 1])
        assert bands[-1].min() == pytest.approx(41 - 2 ** 0.5) and bands[-1].max() == pytest.approx(44 + 2 ** 0.5)
    assert np.array_equal(*bands)


def test_figure_data_close_lines_nothing_overlaps():
    rows = []
    for k, family in enumerate(FAMILIES):
        for j, size in enumerate("SM"):
            for images, grow in ((1000, 0), (5000, 1), (20000, 2)):
                for column, label, base in (("fewshot/digits/5shot", "digits 5-shot", 40),
                                            ("fewshot/cifar/5shot", "cifar 5-shot", 30)):
                    rows.append({"id": f"{family}{size}{images}", "model": f"{MODELS[family]}-{size}", "family": family,
                                 "subset": str(images), "subset_images": images, "label": f"{MODELS[family]}-{size}",
                                 "exaflops": 1e-7, "column": column, "metric": label,
                                 "accuracy": base + grow + 0.2 * j + 0.1 * k})
    fig = figures.figure_data(pd.DataFrame(rows))
    assert_no_overlap(fig)
    shown = set(legend_labels(fig.legends[0]))
    models = {f"{MODELS[f]}-{s}" for f in FAMILIES for s in "SM"}
    assert shown == {"Family", "model"} | {family_name(f) for f in FAMILIES} | models


def family_fit(family: str, compute: np.ndarray, forms: tuple[str, ...]) -> law_choice.FamilyFit:
    """A family's fits made by hand (fitting is slow and not what is tested): the power law used, the
    saturating law where asked; bootstrap curves a little above and below."""
    error = 0.7 * (compute / 1e-7) ** -0.1
    laws = {"power": scaling_laws.Fit("power", 0.7 * 1e-7 ** 0.1, 0.1, n=len(compute)),
            "saturating": scaling_laws.Fit("saturating", 0.5 * 1e-7 ** 0.12, 0.12, c=0.2, n=len(compute))}
    fits = {form: laws[form] for form in forms}
    boot = {form: [scaling_laws.Fit(form, f.a * s, f.b, c=f.c, n=f.n) for s in (0.95, 1.0, 1.05)] for form, f in fits.items()}
    return law_choice.FamilyFit(family, compute, error, 0.8, fits=fits, boot=boot, better="power" if fits else None)


def test_figure_fits_legend_and_no_overlap():
    """ViT: both laws (the saturating one dotted, not used); ResNet: the power law only; hybrid: too
    few points for a law. Candidates left out near the fitted points, early and not."""
    fits, candidates = {}, []
    for k, (family, forms) in enumerate((("vit", ("power", "saturating")), ("resnet", ("power",)), ("hybrid", ()))):
        compute = np.geomspace(1e-7, 2e-6, 6) * (1 + 0.01 * k)
        fits[family] = family_fit(family, compute, forms)
        candidates.append(pd.DataFrame({"family": family, "exaflops": compute * 1.1,
                                        "accuracy": 100 - fits[family].error * 105, "used": False,
                                        "early": [True] + [False] * 5}))
    label = figures.metric_name(Metric(FEWSHOT_AVERAGE, "few-shot average of 2", "average"),
                                [Metric("fewshot/digits/5shot", "digits 5-shot", "fewshot"),
                                 Metric("fewshot/cifar/5shot", "cifar 5-shot", "fewshot")])
    fig = figures.figure_fits(fits, label, pd.concat(candidates, ignore_index=True))
    assert_no_overlap(fig)
    shown = legend_labels(fig.axes[0].get_legend())
    assert line_labels(fig) <= set(shown)
    for family, ff in fits.items():
        name = family_name(family)
        assert f"{name} (points fitted)" in shown
        best = ff.best()
        used = [s for s in shown if s.startswith(f"{name} fit (")]
        assert used == ([f"{name} fit ({best[0].form}), 80% band"] if best else [])
        others = {s for s in shown if s.startswith(name) and s.endswith("(not used)")}
        assert others == {f"{name} power (not used)" for form in ff.fits if best and form == "power" != best[0].form}
    assert {"not fitted: below the frontier", "not fitted: early checkpoint"} <= set(shown)
    assert "average of digits 5-shot and cifar 5-shot" in fig.axes[0].get_title().replace("\n", " ")
