"""The report's sanity section in words (``sanity_section``): a line per finding, named by
``FINDING_NAMES`` (the MLflow description uses them too), the checks that ran, the thresholds.
What is found is decided in ``pipeline.analysis.sanity``."""
from __future__ import annotations

import pipeline.analysis.scaling_laws as scaling_laws
from pipeline.analysis.report import (COMPUTE_TOLERANCE, DROP_TOLERANCE, LEARNED_MARGIN, LEARNED_MARGIN_REL,
                                      SANITY_CHECKS, VAL_BASELINE, Problem, ProblemKind, Report)
from pipeline.analysis.sanity import learned_margin
from pipeline.analysis.table import family_name
from pipeline.analysis.wording import PARAMETER_WORDS, run_name, seed_values

# Each sanity check as the section names it, and what it counts (one, several).
CHECK_WORDS = {ProblemKind.NOT_LEARNED: ("val_prec1 vs the majority-class baseline", "run", "runs"),
               ProblemKind.FINETUNE_BELOW_FEWSHOT: ("fine-tuning vs few-shot", "run-dataset", "run-datasets"),
               ProblemKind.ACCURACY_DROP: ("accuracy vs compute within a family", "run", "runs"),
               ProblemKind.COMPUTE_MISMATCH: ("logged vs planned compute", "run", "runs"),
               ProblemKind.FIT_AT_BOUND: ("fitted parameters vs the fit's bounds", "fit", "fits"),
               ProblemKind.TOO_FEW_POINTS: ("points per family vs what a fit needs", "family", "families"),
               ProblemKind.SEED_SPREAD: ("each seed's compute multiplier vs the interval", "pair", "pairs")}
BOUND_MEANING = {("b", "lower"): "error hardly falls with compute", ("b", "upper"): "error falls implausibly fast",
                 ("a", "lower"): "the scale is at the solver's limit", ("a", "upper"): "the scale is at the solver's limit",
                 ("c", "lower"): "no floor found", ("c", "upper"): "the floor is the best point's error",
                 ("d", "lower"): "no offset found", ("d", "upper"): "the offset spans all the measured compute",
                 ("g", "upper"): "the knee lies before the smallest compute: the law is flat",
                 ("alpha", "upper"): "the start bends implausibly sharply",
                 ("e0", "lower"): "the start error is the worst point's error"}


def _pct(value: float, digits: int = 1) -> str:
    return f"{value * 100:.{digits}f}%"


# Each finding as its line (and the study run's description) names it.
FINDING_NAMES = {ProblemKind.NOT_LEARNED: "Did not learn", ProblemKind.FINETUNE_BELOW_FEWSHOT: "Fine-tuning below few-shot",
                 ProblemKind.ACCURACY_DROP: "Accuracy falls with compute",
                 ProblemKind.COMPUTE_MISMATCH: "Compute differs from the plan", ProblemKind.FIT_AT_BOUND: "Fit at a bound",
                 ProblemKind.TOO_FEW_POINTS: "Too few points to fit",
                 ProblemKind.SEED_SPREAD: "Multiplier moves with the seed"}


def _named(p: Problem) -> str:
    return f"- {FINDING_NAMES[p.kind]}: "


def _not_learned(p: Problem, report: Report) -> str:
    return (f"{_named(p)}{run_name(p)}: `{p.metric}` {p.value:.3f} is not clearly above the majority-class "
            f"baseline {p.reference:.3f} (needs more than {p.reference + learned_margin(p.reference):.3f}).")


def _below_fewshot(p: Problem, report: Report) -> str:
    return (f"{_named(p)}{run_name(p)}: `{p.metric}` {_pct(p.value, 2)} is below "
            f"`{p.reference_metric}` {_pct(p.reference, 2)}.")


def _accuracy_drop(p: Problem, report: Report) -> str:
    other = next(r for r in report.runs if r.id == p.reference_run)
    label = next((m.label for m in report.metrics if m.column == p.metric), p.metric)
    return (f"{_named(p)}{run_name(p)} at {p.planned_exaflops:.3g} exaFLOPs has {label} "
            f"{_pct(p.value)}, {(p.reference - p.value) * 100:.1f} points below `{other.id}` {other.model} at "
            f"{other.exaflops:.3g} exaFLOPs ({_pct(p.reference)}; tolerance {DROP_TOLERANCE * 100:g} point).")


def _compute_mismatch(p: Problem, report: Report) -> str:
    return (f"{_named(p)}{run_name(p)}: logged {p.logged_exaflops:.4g} exaFLOPs, planned "
            f"{p.planned_exaflops:.4g}, more than {COMPUTE_TOLERANCE * 100:g}% apart (the plan's value is plotted).")


def _fit_at_bound(p: Problem, report: Report) -> str:
    meaning = BOUND_MEANING.get((p.parameter, p.bound), "")
    role = ("**the law used**: every form fitted is degenerate, so its forecasts and multipliers describe the "
            "points, not what lies beyond them" if p.used else "not used: a form that is not degenerate was chosen")
    return (f"{_named(p)}{family_name(p.family)}, {p.form} law: {PARAMETER_WORDS[p.parameter]} = "
            f"{p.value:.4g} sits at its {p.bound} bound {p.reference:.4g} ({meaning + ': ' if meaning else ''}the "
            f"bound, not the data, set it); {role}.")


def _too_few_points(p: Problem, report: Report) -> str:
    return (f"{_named(p)}{family_name(p.family)} has {p.value:g} distinct compute value(s) with "
            f"`{p.metric}`; a fit needs {p.reference:g} (the power law; the saturating law "
            f"{scaling_laws.MIN_POINTS['saturating']}).")


def _seed_spread(p: Problem, report: Report) -> str:
    m = report.fits.multiplier(p.family, p.other_family)
    return (f"{_named(p)}{family_name(p.family)} vs {family_name(p.other_family)}: {m.multiplier:.2f}x "
            f"[{m.interval[0]:.2f}, {m.interval[1]:.2f}] on the mean over seeds, but {seed_values(m)} from each "
            f"seed's runs alone: the interval understates how much another seed would change the answer (more seeds "
            "per configuration narrow the spread of the mean).")


FINDING_LINES = {ProblemKind.NOT_LEARNED: _not_learned, ProblemKind.FINETUNE_BELOW_FEWSHOT: _below_fewshot,
                 ProblemKind.ACCURACY_DROP: _accuracy_drop, ProblemKind.COMPUTE_MISMATCH: _compute_mismatch,
                 ProblemKind.FIT_AT_BOUND: _fit_at_bound, ProblemKind.TOO_FEW_POINTS: _too_few_points,
                 ProblemKind.SEED_SPREAD: _seed_spread}


def checks_line(report: Report) -> str:
    """Which checks ran, on how many items, and which could not run."""
    ran = []
    for kind in SANITY_CHECKS:
        n = report.checks.get(kind, 0)
        words = CHECK_WORDS[kind]
        ran += [f"{words[0]} ({n} {words[1] if n == 1 else words[2]})"] if n else []
    one_seed = report.fits is None or not report.fits.basis.seeds
    idle = [k for k in SANITY_CHECKS if not report.checks.get(k) and not (k == ProblemKind.SEED_SPREAD and one_seed)]
    return ("Checks run: " + ("; ".join(ran) or "none") + "." +
            (f" Not run, nothing to check yet: {'; '.join(CHECK_WORDS[k][0] for k in idle)}." if idle else "") +
            (f" Not run, one seed per configuration (a preset's `seeds:` runs several): "
             f"{CHECK_WORDS[ProblemKind.SEED_SPREAD][0]}." if one_seed else ""))


def sanity_section(report: Report) -> list[str]:
    """A line per result not to believe, or that all checks passed; then which checks ran."""
    findings = report.sanity()
    lines = [FINDING_LINES[p.kind](p, report) for p in findings if p.kind in FINDING_LINES]
    skipped = report.problems_of(ProblemKind.NO_BASELINE)
    if skipped:
        lines.append(f"- Baseline not logged: {len(skipped)} run(s) lack `{VAL_BASELINE}` (runs older than that "
                     "metric), so whether they learned was not checked.")
    if not lines:
        lines = ["All checks passed."]
    elif len(skipped) == len(findings):
        lines.insert(0, "All checks that ran passed.")
    return [*lines, "", checks_line(report), "",
            (f"Thresholds: did not learn = `pretrain/val_prec1` <= baseline + max({LEARNED_MARGIN:g}, "
             f"{LEARNED_MARGIN_REL:g} x baseline); accuracy drop = more than {DROP_TOLERANCE * 100:g} point below a "
             f"cheaper run of the family and subset; compute off by more than {COMPUTE_TOLERANCE * 100:g}%.")]
