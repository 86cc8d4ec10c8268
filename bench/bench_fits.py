"""How honest the scaling-law intervals are: coverage over many synthetic studies.

    python bench/bench_fits.py [--draws 200] [--boot 200] [--points 7 16] [--methods residual pairs]
                               [--level 0.8] [--noise 0.03] [--seed 0] [--law fixed|chosen]

Each draw is one synthetic family: ``--points`` runs log-spaced over 5 decades of compute, errors
from the known law E(C) = 0.5 (C + 1)^-0.35 + 0.1 with log-normal noise (``--noise``, in log
units). A second family needs 3x the compute for every error. For each draw the saturating law
(``--law fixed``) or the law the report chooses (``--law chosen``: model selection included) is
fitted, bootstrapped (``--methods``) and the ``--level`` intervals checked against the truth: the
parameters, the curve at the largest and a middle compute, and the compute multiplier; both plain
percentile intervals and the t-expanded ones the report uses (``law_bootstrap.percentile_level``).
A calibrated interval covers the truth in a fraction ``--level`` of the draws (binomial spread
about sqrt(level (1 - level) / draws)). Prints a Markdown table and the time per fit.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pipeline.analysis import law_bootstrap, law_choice, multipliers, scaling_laws  # noqa: E402

TRUE = scaling_laws.Fit("saturating", a=0.5, b=0.35, c=0.1, d=1.0)
FACTOR = 3.0


def shifted(truth: scaling_laws.Fit, factor: float) -> scaling_laws.Fit:
    return scaling_laws.Fit("saturating", a=truth.a * factor ** truth.b, b=truth.b, c=truth.c, d=truth.d * factor)


CALIBRATIONS = ("percentile", "t-expanded")


def family(name, truth, compute, rng, noise, boot, method, level, law="fixed"):
    """One synthetic family: with ``law`` "fixed" the true (saturating) form is fitted; with "chosen"
    the report's own choice of law (``law_choice.fit_family``: rolling origin over the four forms)."""
    errors = truth.error(compute) * np.exp(rng.normal(0, noise, len(compute)))
    if law == "chosen":
        return law_choice.fit_family(name, compute, 1 - errors, rng=rng, n_boot=boot, level=level)
    result = law_choice.FamilyFit(name, compute, errors, level)
    point = scaling_laws.fit(compute, errors)
    result.fits["saturating"], result.better = point, "saturating"
    result.boot["saturating"] = law_bootstrap.bootstrap(compute, errors, "saturating", rng=rng, n_boot=boot, point=point,
                                               method=method)
    return result


def coverage(points: int, method: str, args) -> dict[str, dict[str, float]]:
    """Coverage per quantity, for plain and t-expanded percentile intervals of the same refits. With
    ``--law chosen`` the parameters are not compared (the law chosen may have others): NaN."""
    rng = np.random.default_rng(args.seed)
    compute = np.geomspace(0.1, 1e4, points)
    probes = {"E(C max)": compute[-1], "E(C mid)": float(np.sqrt(compute[0] * compute[-1]))}
    names = [*scaling_laws.PARAMS["saturating"], *probes, "multiplier"]
    hits = {cal: dict.fromkeys(names, 0) for cal in CALIBRATIONS}
    widths = {cal: [] for cal in CALIBRATIONS}
    start = time.perf_counter()
    laws = []
    for _ in range(args.draws):
        x = family("x", TRUE, compute, rng, args.noise, args.boot, method, args.level, args.law)
        y = family("y", shifted(TRUE, FACTOR), compute * FACTOR * 1.7, rng, args.noise, args.boot, method, args.level,
                   args.law)
        point, boot = x.best()
        laws += [x.law(), y.law()]
        errors = multipliers.common_errors(y, x)
        replicates = [multipliers.multiplier(by, bx, errors) for bx, by in zip(boot, y.best()[1])]
        for cal in CALIBRATIONS:
            df = law_bootstrap.residual_df(point) if cal == "t-expanded" else None
            for name, (lo, hi) in law_bootstrap.param_intervals(boot, args.level, df).items() if args.law == "fixed" else ():
                hits[cal][name] += lo <= getattr(TRUE, name) <= hi
            for name, c in probes.items():
                lo, hi = law_bootstrap.curve_band(boot, [c], args.level, df)
                hits[cal][name] += lo[0] <= TRUE.error(c) <= hi[0]
            lo, hi = law_bootstrap.interval(replicates, args.level, None if df is None else 2 * df)
            hits[cal]["multiplier"] += lo <= FACTOR <= hi
            widths[cal].append(hi / lo)
    ms = 1000 * (time.perf_counter() - start) / (args.draws * 2 * (args.boot + 1))
    if args.law == "chosen":
        print(f"laws chosen ({points} points): " + ", ".join(f"{law} {laws.count(law)}" for law in sorted(set(laws))),
              flush=True)
        for cal in CALIBRATIONS:
            hits[cal].update({name: float("nan") for name in scaling_laws.PARAMS["saturating"]})
    return {cal: {**{k: v / args.draws for k, v in hits[cal].items()},
                  "multiplier hi/lo": float(np.median(widths[cal])), "ms per fit": ms} for cal in CALIBRATIONS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--points", type=int, nargs="+", default=[7, 16])
    parser.add_argument("--methods", nargs="+", default=["residual", "pairs"])
    parser.add_argument("--level", type=float, default=0.8)
    parser.add_argument("--noise", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--law", choices=("fixed", "chosen"), default="fixed",
                        help="fit the true (saturating) form, or the law the report chooses (law_choice.fit_family)")
    args = parser.parse_args()
    print(f"{args.draws} draws, {args.boot} bootstrap refits, {args.level:.0%} intervals, noise {args.noise} (log), "
          f"true multiplier {FACTOR}, law {args.law}")
    header = False
    for p in args.points:
        for m in args.methods:
            for cal, r in coverage(p, m, args).items():
                if not header:
                    print("| points | bootstrap | interval | " + " | ".join(r) + " |")
                    print("|---|---|---|" + "---|" * len(r))
                    header = True
                print(f"| {p} | {m} | {cal} | " + " | ".join(f"{v:.2f}" for v in r.values()) + " |", flush=True)


if __name__ == "__main__":
    main()
