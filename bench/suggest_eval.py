"""Does following ``--suggest`` narrow the compute multiplier's interval more than adding the same
compute at random? Measured on synthetic studies drawn from known laws.

Each draw: two families, ViT-like with error E(C) = 0.6 C^-0.2 (``--law power``; or
0.5 (C + 1)^-0.35 + 0.1 with ``--law saturating``) and ResNet-like needing exactly 3x its compute
(E(C / 3)), both measured at the same 4 computes (1, 3, 10, 30, as a study runs the same grid for
every family), with 3% log-normal noise; so their curves share only part of their error range. A
candidate grid of 7 more computes per family (0.1 to 300), the same for both.
``pipeline.analysis.suggest.suggest`` picks K candidates from the measured points alone. Their
outcomes are then drawn from the *true* laws (with the same noise), the families refitted as the
report does (``fit_family``, ``--boot`` replicates), and the 80% interval of the multiplier
measured (width hi / lo). The baseline is K random candidates with about the same total compute:
drawn uniformly among the K-subsets of the grid whose total is within 25% of the advice's (the
closest subsets if none is). Both get the same outcome for the same candidate.

    python bench/suggest_eval.py --draws 50 --k 2
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.analysis import law_choice, multipliers, scaling_laws  # noqa: E402
from pipeline.analysis.suggest import Candidate, SuggestSettings, suggest  # noqa: E402

LAWS = {"power": scaling_laws.Fit("power", a=0.6, b=0.2), "saturating": scaling_laws.Fit("saturating", a=0.5, b=0.35, c=0.1, d=1.0)}
FACTOR = 3.0
MEASURED = {"vit": np.array([1.0, 3.0, 10.0, 30.0]), "resnet": np.array([1.0, 3.0, 10.0, 30.0])}
GRID = np.array([0.1, 0.3, 2.0, 6.0, 20.0, 100.0, 300.0])
BASE = {"vit": 1.0, "resnet": 1.0}   # the families' compute units
NOISE = 0.03


def truth(family: str, law: str) -> scaling_laws.Fit:
    """The family's true law: ResNet needs FACTOR times ViT's compute for every error."""
    f = LAWS[law]
    if family == "vit":
        return f
    return scaling_laws.Fit(f.form, a=f.a * FACTOR ** f.b, b=f.b, c=f.c, d=f.d * FACTOR)


def outcome(rng: np.random.Generator, family: str, compute, law: str) -> np.ndarray:
    """Measured accuracy: the true error with log-normal noise."""
    compute = np.atleast_1d(np.asarray(compute, dtype=float))
    return 1 - truth(family, law).error(compute) * np.exp(rng.normal(0, NOISE, len(compute)))


@dataclass(frozen=True)
class Draw:
    points: dict[str, tuple[np.ndarray, np.ndarray]]   # measured: {family: (compute, accuracy)}
    candidates: list[Candidate]
    outcomes: dict[str, float]                          # candidate id -> accuracy if it were run


def draw_study(seed: int, law: str = "power", grid=GRID) -> Draw:
    rng = np.random.default_rng(seed)
    points = {f: (MEASURED[f] * base, outcome(rng, f, MEASURED[f] * base, law)) for f, base in BASE.items()}
    candidates = [Candidate(f"{f}-{x:g}", f"{f}@{x * base:g}", f, "full", None, None, float(x * base),
                            float(x * base)) for f, base in BASE.items() for x in grid]
    outcomes = {c.id: float(outcome(rng, c.family, c.exaflops, law)[0]) for c in candidates}
    return Draw(points, candidates, outcomes)


def random_same_compute(draw: Draw, k: int, budget: float, rng: np.random.Generator) -> list[Candidate]:
    """K candidates drawn uniformly among the K-subsets whose total compute is within 25% of
    ``budget`` (in log terms, the closest ones when none is)."""
    subsets = list(itertools.combinations(draw.candidates, k))
    off = np.array([abs(np.log(sum(c.exaflops for c in s) / budget)) for s in subsets])
    near = np.flatnonzero(off <= max(np.log(1.25), off.min() + 1e-12))
    return list(subsets[rng.choice(near)])


def width_after(draw: Draw, added: list[Candidate], n_boot: int, seed: int) -> float:
    """The multiplier's 80% interval width (hi / lo) refitted as the report does, with ``added``'s
    true outcomes; NaN where the multiplier is not available."""
    rng = np.random.default_rng(seed)
    family_fits = {}
    for family, (compute, accuracy) in draw.points.items():
        extra = [c for c in added if c.family == family]
        c_all = np.append(compute, [c.exaflops for c in extra])
        a_all = np.append(accuracy, [draw.outcomes[c.id] for c in extra])
        family_fits[family] = law_choice.fit_family(family, c_all, a_all, rng=rng, n_boot=n_boot)
    m = multipliers.compute_multiplier(family_fits["resnet"], family_fits["vit"])
    return m["interval"][1] / m["interval"][0] if m else float("nan")


def compare(draw: Draw, seed: int, k: int, settings: SuggestSettings, n_boot: int) -> dict:
    """One draw: the width now, after the advice, after random same-compute placement."""
    advice = suggest(draw.points, draw.candidates, k, settings)
    picked = [p.candidate for p in advice.picks]
    budget = sum(c.exaflops for c in picked)
    rand = random_same_compute(draw, k, budget, np.random.default_rng(seed + 10_000))
    return {"now": width_after(draw, [], n_boot, seed), "advice": width_after(draw, picked, n_boot, seed),
            "random": width_after(draw, rand, n_boot, seed), "expected": advice.picks[-1].width,
            "random_compute": sum(c.exaflops for c in rand) / budget, "random_runs": len(rand),
            "picked": [c.id for c in picked]}


def summary(rows: list[dict]) -> dict:
    now, adv, rnd = (np.array([r[key] for r in rows]) for key in ("now", "advice", "random"))
    gain = np.log(rnd) - np.log(adv)   # > 0: the advice's interval is narrower
    return {"draws": len(rows), "now": float(np.nanmedian(now)), "advice": float(np.nanmedian(adv)),
            "random": float(np.nanmedian(rnd)), "win_rate": float(np.mean(gain > 0)),
            "median_log_gain": float(np.nanmedian(gain)), "mean_log_gain": float(np.nanmean(gain)),
            "gain_se": float(np.nanstd(gain) / np.sqrt(np.sum(~np.isnan(gain)))),
            "random_compute": float(np.median([r["random_compute"] for r in rows])),
            "random_runs": float(np.mean([r["random_runs"] for r in rows]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--suggest-boot", type=int, default=50,
                        help="bootstrap replicates of the advice's own fits (its 'now' intervals only)")
    parser.add_argument("--boot", type=int, default=200, help="bootstrap replicates of the evaluation refits")
    parser.add_argument("--law", choices=sorted(LAWS), default="power")
    args = parser.parse_args(argv)
    settings = SuggestSettings(n_boot=args.suggest_boot)
    start, rows = time.perf_counter(), []
    for seed in range(args.draws):
        rows.append(compare(draw_study(seed, args.law), seed, args.k, settings, args.boot))
    s = summary(rows)
    picks = {}
    for r in rows:
        for c in r["picked"]:
            picks[c] = picks.get(c, 0) + 1
    print(f"{args.draws} draws, K={args.k}, {args.law} laws; evaluation "
          f"{args.boot} replicates; {(time.perf_counter() - start) / args.draws:.1f} s per draw")
    print("| draws | K | median width now | after advice | after random, same compute | advice narrower in | "
          "mean log(random / advice) +- se | random's compute / advice's | random runs |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {s['draws']} | {args.k} | {s['now']:.3f} | {s['advice']:.3f} | {s['random']:.3f} | {s['win_rate']:.0%} | "
          f"{s['mean_log_gain']:.3f} +- {s['gain_se']:.3f} | {s['random_compute']:.2f} | {s['random_runs']:.1f} |")
    print("advised runs (times picked):", ", ".join(f"{c} {n}" for c, n in sorted(picks.items(), key=lambda x: -x[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
