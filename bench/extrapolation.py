"""Extrapolation benchmark: the report's scaling law against published estimators, on published
learning curves that nobody here produced.

Each curve is split into the points a law is fitted on (small x) and the points it must predict
(larger x); the score of a law on a curve is the RMSE of log error over the predicted points
(Alabdulmohsin et al. 2022's metric), and a dataset's score the mean over its curves. The data,
their sources, licences and checksums are in bench/data/README.md; the curves of each dataset:

- ``lang``: the language half of Alabdulmohsin et al.'s benchmark (neural machine translation
  log-perplexity, language-model loss, BIG-Bench errors against examples seen), split as the file
  says (its ``Training`` column). The vision half of that benchmark is held out: never read here.
- ``clip-compute``: OpenCLIP (Cherti et al. 2023): per zero-shot classification task, the error of
  the compute-efficient frontier over the 29 LAION-trained models (5 ViTs x 3 data sets x 3
  lengths) against total training MACs; fitted below a quarter of the largest compute, the
  frontier above it predicted. Tasks with fewer than 5 frontier points to fit are left out. This
  is what the report fits: the best run at each compute.
- ``clip-checkpoints``: the same models' ImageNet zero-shot learning curves (a checkpoint per
  epoch): the frontier over every (run, checkpoint) point, checkpoints below 20% of their run's
  compute left out (as the report does), per pretraining set and over all of them; fitted below a
  quarter of the largest compute.
- ``clip-curves`` (not in the default run, ``--datasets clip-curves``): each model's own ImageNet
  zero-shot learning curve against samples seen, fitted on the first half of its samples, the
  second half predicted. Every run follows a cosine schedule, so the predicted half is the
  learning rate's decay, whose faster fall no law of samples seen describes; the report never
  extrapolates within one run (its points are frontiers across runs). Its numbers are in
  bench/RESULTS.md for what they show.

Methods: the report's law (``pipeline.analysis.scaling_laws``: the law the report chooses and uses for a family's
points), and the baselines of ``bench/scaling_baselines.py`` (M1-M4, a power law with a floor).

    python bench/extrapolation.py                 # the default datasets, the table; about 2 minutes on 2 cores
    python bench/extrapolation.py --datasets lang --json /tmp/extrapolation.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline.analysis import law_choice  # noqa: E402
from scaling_baselines import BASELINES  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
HOLDOUT_FACTOR = 4          # compute datasets: fit below max compute / 4, predict above
EARLY_FRACTION = 0.2        # clip-checkpoints: as pipeline.analysis.curves.EARLY_FRACTION
MIN_FIT_POINTS = 5          # clip-compute: tasks with fewer frontier points to fit are left out
REPORT = "report"


@dataclass(frozen=True)
class Curve:
    """One learning curve, split: fit on (x_fit, e_fit), predict e_test at x_test."""
    dataset: str
    name: str
    x_fit: np.ndarray
    e_fit: np.ndarray
    x_test: np.ndarray
    e_test: np.ndarray


def _split(dataset: str, name: str, x, e, fit_mask) -> Curve:
    x, e, fit_mask = np.asarray(x, dtype=float), np.asarray(e, dtype=float), np.asarray(fit_mask, dtype=bool)
    order = np.argsort(x, kind="stable")
    x, e, fit_mask = x[order], e[order], fit_mask[order]
    return Curve(dataset, name, x[fit_mask], e[fit_mask], x[~fit_mask], e[~fit_mask])


# ----------------------------------------------------------------------------- datasets

def lang_curves() -> list[Curve]:
    """Alabdulmohsin et al.'s language curves: NMT and LM per model, BIG-Bench per task."""
    table = pd.read_csv(DATA / "alabdulmohsin2022_benchmark.lang.csv", dtype={"Model": str}).drop_duplicates()
    curves = []
    for (domain, task, model), rows in table.groupby(["Domain", "Task", "Model"], sort=True):
        name = f"{domain} {model}" if domain != "BB" else f"BB {task}"
        curves.append(_split("lang", name, rows["Seen Examples"], rows["Loss"], rows["Training"] == 1))
    return curves


def frontier(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Mask of the points no cheaper (or equally cheap) point beats: the compute-efficient frontier."""
    order = np.argsort(x, kind="stable")
    best, keep = math.inf, np.zeros(len(x), dtype=bool)
    for i in order:
        if e[i] < best:
            keep[i], best = True, e[i]
    return keep


def _frontier_curve(dataset: str, name: str, x, e) -> Curve | None:
    x, e = np.asarray(x, dtype=float), np.asarray(e, dtype=float)
    keep = frontier(x, e)
    x, e = x[keep], e[keep]
    fit_mask = x <= x.max() / HOLDOUT_FACTOR
    if fit_mask.sum() < MIN_FIT_POINTS or fit_mask.all():
        return None
    return _split(dataset, name, x, e, fit_mask)


def clip_compute_curves() -> list[Curve]:
    """OpenCLIP's LAION models: per zero-shot classification task, the frontier against total MACs."""
    table = pd.read_csv(DATA / "cherti2023_zeroshot_results.csv")
    table = table[(table["task"] == "zeroshot_classification") & (table["upstream_dataset"] != "CLIP-WIT")]
    table = table.dropna(subset=["acc1"])
    curves = [_frontier_curve("clip-compute", task, rows["gmacs_total"], 1 - rows["acc1"])
              for task, rows in table.groupby("downstream_dataset", sort=True)]
    return [c for c in curves if c is not None]


def _clip_checkpoints() -> pd.DataFrame:
    """Every (run, epoch) of OpenCLIP's ImageNet learning curves with samples seen, MACs and error."""
    curves = pd.read_csv(DATA / "cherti2023_imagenet_zeroshot_learning_curves.csv")
    runs = pd.read_csv(DATA / "cherti2023_trained_models_info.csv")
    archs = pd.read_csv(DATA / "cherti2023_arch_info.csv").set_index("model")["gmacs"]
    table = curves.merge(runs[["name", "arch", "data", "samples_per_epoch"]], on="name", validate="many_to_one")
    table = table.drop_duplicates(subset=["name", "epoch"]).sort_values(["name", "epoch"])
    table["samples"] = table["epoch"] * table["samples_per_epoch"]
    table["gmacs"] = table["samples"] * table["arch"].map(archs)
    table["error"] = 1 - table["imagenet-zeroshot-val-top1"]
    table["fraction"] = table["samples"] / table.groupby("name")["samples"].transform("max")
    return table


def clip_checkpoint_curves() -> list[Curve]:
    """The frontier over OpenCLIP's (run, checkpoint) points, per pretraining set and over all."""
    table = _clip_checkpoints()
    table = table[table["fraction"] >= EARLY_FRACTION]
    groups = [(f"LAION-{data}", rows) for data, rows in table.groupby("data", sort=True)] + [("all", table)]
    curves = [_frontier_curve("clip-checkpoints", name, rows["gmacs"], rows["error"]) for name, rows in groups]
    return [c for c in curves if c is not None]


def clip_learning_curves() -> list[Curve]:
    """Each OpenCLIP model's ImageNet learning curve, fitted on its first half of samples seen."""
    table = _clip_checkpoints()
    return [_split("clip-curves", name.removesuffix(".pt"), rows["samples"], rows["error"],
                   rows["samples"] <= rows["samples"].max() / 2)
            for name, rows in table.groupby("name", sort=True)]


DATASETS = {"lang": lang_curves, "clip-compute": clip_compute_curves, "clip-checkpoints": clip_checkpoint_curves,
            "clip-curves": clip_learning_curves}
DEFAULT = ("lang", "clip-compute", "clip-checkpoints")


# ----------------------------------------------------------------------------- methods

def report_family(x, e) -> law_choice.FamilyFit:
    """What the report makes of a family with these points (no bootstrap: the law is what is scored)."""
    return law_choice.fit_family("curve", x, 1 - np.asarray(e, dtype=float), rng=np.random.default_rng(0), n_boot=0)


def rmse_log(predicted, observed) -> float:
    predicted = np.maximum(np.asarray(predicted, dtype=float), 1e-12)
    return float(np.sqrt(np.mean((np.log(predicted) - np.log(observed)) ** 2)))


def score_curve(curve: Curve) -> dict:
    """Every method's RMSE of log error on the curve's predicted points (NaN: the method failed)."""
    row = {"dataset": curve.dataset, "curve": curve.name, "fit_points": len(curve.x_fit),
           "test_points": len(curve.x_test)}
    for name, method in BASELINES.items():
        try:
            row[name] = rmse_log(method(curve.x_fit, curve.e_fit)(curve.x_test), curve.e_test)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            row[name] = math.nan
    started = time.perf_counter()
    family = report_family(curve.x_fit, curve.e_fit)
    law = family.best()[0]
    row.update({REPORT: rmse_log(law.error(curve.x_test), curve.e_test), "law": law.form,
                "degenerate": bool(family.used_degenerate), "reason": family.reason,
                "report_seconds": time.perf_counter() - started})
    row.update({f"{form} alone": rmse_log(f.error(curve.x_test), curve.e_test) for form, f in family.fits.items()})
    return row


# ----------------------------------------------------------------------------- the table

def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: mean RMSE of each method, the best baseline, and how the report's law compares."""
    baselines = list(BASELINES)
    out = []
    for dataset, group in rows.groupby("dataset", sort=False):
        means = group[baselines + [REPORT]].mean()
        best = means[baselines].idxmin()
        out.append({"dataset": dataset, "curves": len(group), **means.round(4).to_dict(), "best baseline": best,
                    "report / best": round(means[REPORT] / means[best], 3),
                    "report better on": f"{int((group[REPORT] <= group[best]).sum())}/{len(group)}",
                    "laws": ", ".join(f"{k} {v}" for k, v in group["law"].value_counts().items()),
                    "degenerate used": int(group["degenerate"].sum()),
                    **{c: round(group[c].mean(), 4) for c in group.columns if c.endswith(" alone")}})
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    lines = [header, "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DEFAULT))
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))
    parser.add_argument("--json", type=Path, help="write every curve's scores here")
    parser.add_argument("--per-curve", action="store_true", help="print every curve's scores")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    curves = [c for name in args.datasets for c in DATASETS[name]()]
    print(f"{len(curves)} curves: " + ", ".join(f"{d} {sum(c.dataset == d for c in curves)}" for d in args.datasets),
          flush=True)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        rows = pd.DataFrame(list(pool.map(score_curve, curves, chunksize=1)))
    if args.per_curve:
        print(rows.drop(columns=["reason"]).round(4).to_string())
    print(markdown(summary(rows)))
    print(f"{len(curves)} curves in {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows.to_dict(orient="records"), indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
