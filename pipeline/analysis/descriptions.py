"""The MLflow descriptions of a study: its study-level run's (``to_description``: the answer in a
few lines, with Figure 5's preview) and its experiment's (``experiment_description``: how to read
the runs in the MLflow UI)."""
from __future__ import annotations

from pipeline.analysis.findings import FINDING_NAMES
from pipeline.analysis.render import multiplier_line, with_interval
from pipeline.analysis.report import FamilyVerdict, Fits, Problem, ProblemKind, Report, Verdict
from pipeline.analysis.table import family_name
from pipeline.analysis.wording import metric_parameter, percent


def _learned_summary(report: Report) -> str:
    """How many runs learned (the did-not-learn check), or why that was not checked."""
    checked = report.checks.get(ProblemKind.NOT_LEARNED, 0)
    unchecked = len(report.problems_of(ProblemKind.NO_BASELINE))
    said = (f"{checked - len(report.problems_of(ProblemKind.NOT_LEARNED))} of {checked} runs checked learned "
            "(pretraining `val_prec1` clearly above the majority-class baseline)" if checked else
            "Whether runs learned: not checked (no run with finished pretraining has its majority-class baseline)")
    return said + (f"; {unchecked} run(s) without a logged baseline not checked." if unchecked and checked else ".")


def _family_summary(fits: Fits, v: FamilyVerdict) -> str:
    """A family's law used with its exponent (and floor) and their intervals, or why none."""
    name = family_name(v.family)
    if v.verdict in (Verdict.NO_POINTS, Verdict.NO_FIT):
        return f"{name}: no fit ({v.reason or f'no run with finished pretraining has {fits.metric.label}'})"
    ff = fits.families[v.family]
    fit, _ = ff.best()
    intervals = ff.intervals.get(fit.form, {})
    said = ", ".join(f"{metric_parameter(p).replace('_', ' ')} {with_interval(value, intervals.get(p))}"
                     for p, value in fit.params.items() if p.rpartition(".")[2] in ("b", "c"))
    return f"{name}: {fit.form} law, {said}"


def _fits_summary(fits: Fits | None) -> str:
    """The families' laws and the compute multipliers, each with its interval, or why not."""
    if fits is None:
        return "No fit: no run is a point yet."
    laws = "; ".join(_family_summary(fits, v) for v in fits.verdicts)
    said = f"Fits of error on **{fits.metric.label}** against compute ({percent(fits.level)} intervals): {laws}."
    if not fits.multipliers:
        return f"{said} Compute multiplier: not available, only one family has points."
    if not fits.any_fit:
        return f"{said} Compute multiplier: not available, no family has a fit."
    return f"{said} Compute multiplier: " + " ".join(multiplier_line(m).removeprefix("- ") for m in fits.multipliers)


def _finding_subject(p: Problem) -> str:
    if p.run_id is not None:
        return f"{p.model} `{p.run_id}`"
    return family_name(p.family) + (f" {p.form} law" if p.form else "")


def _findings_summary(report: Report) -> str:
    """The sanity checks' findings by name, with what each is about."""
    found: dict[str, list[str]] = {}
    for p in report.sanity():
        if p.kind in FINDING_NAMES:
            found.setdefault(FINDING_NAMES[p.kind], []).append(_finding_subject(p))
    if not found:
        return "Sanity checks: all that ran passed."
    return "Sanity findings: " + "; ".join(f"{name.lower()} ({', '.join(subjects)})" for name, subjects in found.items()) + "."


def to_description(report: Report, figure_url: str | None = None) -> str:
    """The study run's description (MLflow shows it as Markdown): one paragraph with the runs, how
    many learned, the fits and multipliers with their intervals and the sanity findings; then
    Figure 5 from ``figure_url`` when given."""
    counts = ", ".join(f"{n} {status}" for status, n in report.counts.items())
    text = " ".join([f"**{report.title}.** {len(report.runs)} runs: {counts}.", _learned_summary(report),
                     _fits_summary(report.fits), _findings_summary(report),
                     "The whole report with its figures: artifact `report/report.html`."])
    if figure_url is None:
        return text
    return f"{text}\n\n![Transfer accuracy against pretraining compute (paper Fig. 5)]({figure_url})"


def experiment_description(study: str, title: str) -> str:
    """The study's experiment description: what it is, and which columns of its runs to read."""
    return (f"Study `{study}`: {title}. One run per planned pretraining run (model x data subset x length): compare "
            "them on `params.model`, `params.steps` (and `params.epochs`), `metrics.compute/gflops` (pretraining "
            "compute in GFLOPs, readable at every scale; `metrics.compute/exaflops` is the paper's unit) and the "
            "transfer accuracies `metrics.fewshot/<dataset>/<k>shot` and "
            f"`metrics.finetune/<dataset>/acc`. The run `study {study} / <preset>` holds each preset's report: its "
            "description, the fitted laws (`fit/...`), the compute multipliers (`multiplier/...`) and "
            "`report/report.html`.")
