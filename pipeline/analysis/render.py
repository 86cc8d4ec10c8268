"""Renderings of a :class:`~pipeline.analysis.report.Report` for people: report.md (``to_markdown``)
and the same as one self-contained report.html (``to_html``). The report's wording lives here and
in ``descriptions`` (the MLflow descriptions); ``fits_json`` writes the same for programs. What the
report says is decided in ``pipeline.analysis.build``; the sanity section's words are in
``findings``, the words and formats several renderings share in ``wording``."""
from __future__ import annotations

import base64
import html
import re
from typing import Iterable, Mapping

import pipeline.analysis.law_choice as law_choice
import pipeline.analysis.multipliers as multipliers
import pipeline.analysis.scaling_laws as scaling_laws
from pipeline.analysis.curves import seeds_per_configuration
from pipeline.analysis.findings import sanity_section
from pipeline.analysis.forecast import Forecast
from pipeline.analysis.report import (FIGURE_COMPUTE, FIGURE_DATA, FIGURE_FITS, SANITY_KINDS, Fallback, FitBasis, Fits,
                                      FitSource, Multiplier, Problem, ProblemKind, Report, Verdict)
from pipeline.analysis.table import family_name
from pipeline.analysis.wording import fmt, md_table, percent, run_name, seed_values, stage

STATUS_WORDS = {ProblemKind.NOT_STARTED: "not started", ProblemKind.UNFINISHED: "unfinished (running or interrupted)",
                ProblemKind.FAILED: "failed", ProblemKind.UNKNOWN_STATUS: "of unknown status (no tracking URI)"}
LAWS = {"power": "E = a C^-b", "saturating": "E = a (C + d)^-b + c", "knee": "E = a (1/C + g)^b",
        "sigmoid": "(E - c) / (e0 - E)^alpha = a C^-b"}   # a blend "a+b" of two: E = (E_a E_b)^(1/2)
DATA_FIGURE_NOT_DRAWN = {"one_subset": "this preset has one data subset",
                         "no_subset_sizes": "no few-shot results with a known subset size"}
FALLBACK_WORDS = {Fallback.NO_CURVES: "no run with finished pretraining logged a learning curve of it (`curve/...` "
                                      "metrics; runs from before them)",
                  Fallback.NO_FEWSHOT: "no few-shot metric is plotted, and only the few-shot probes have learning "
                                       "curves"}


# ----------------------------------------------------------------------------- report.md

def to_markdown(report: Report) -> str:
    """report.md: run counts, what is missing, the runs, the figures, the scaling laws."""
    counts = ", ".join(f"{n} {status}" for status, n in report.counts.items())
    lines = [f"# {report.title}", "", f"{len(report.runs)} runs: {counts}.", "",
             "Method and limits: `docs/analysis.md` of the vit-scaling repository.", "",
             "## What is missing", "", *missing_section(report.problems), "",
             "## Sanity checks", "", *sanity_section(report), "",
             "## Runs", "", *runs_section(report), "",
             "## Figures", "", *figures_section(report), "",
             "## Scaling laws", "", *(fits_section(report.fits) if report.fits else ["No fit: no points."]), "",
             "## Forecasts", "", *(forecast_section(report.fits) if report.fits else ["No forecast: no points."])]
    return "\n".join(lines) + "\n"


def missing_section(problems: Iterable[Problem]) -> list[str]:
    """What the study still lacks: runs not done, metrics not recorded (the sanity checks' findings
    are in ``sanity_section``)."""
    problems = [p for p in problems if p.kind not in SANITY_KINDS]
    lines = []
    for kind, what in STATUS_WORDS.items():
        runs = [p for p in problems if p.kind == kind]
        if runs:
            lines.append(f"- {len(runs)} run(s) {what}:")
            lines += [f"  - {run_name(p)}{stage(p)}" for p in runs]
    gaps: dict[str, list[Problem]] = {}
    for p in problems:
        if p.kind == ProblemKind.MISSING_METRIC:
            gaps.setdefault(p.run_id, []).append(p)
    if gaps:
        lines.append(f"- {len(gaps)} started run(s) lack planned metrics:")
        lines += [f"  - {run_name(run[0])} [{run[0].status}]: " + ", ".join(f"`{p.metric}`" for p in run)
                  for run in gaps.values()]
    unused = [p for p in problems if p.kind == ProblemKind.UNUSED_METRICS]
    if unused:
        lines.append(f"- {len(unused)} run(s) have transfer metrics but unfinished pretraining; left out of "
                     "figures and fits: " + ", ".join(run_name(p) for p in unused))
    return lines or ["Nothing: every run finished with every planned metric."]


def runs_section(report: Report) -> list[str]:
    """The runs table: a row per run, its length (epochs where a run gives them, and steps), its
    plotted accuracies in percent."""
    by_epochs = any(r.epochs is not None for r in report.runs)
    head = ["model", "family", "subset", *(["epochs"] if by_epochs else []), "steps", "params", "exaFLOPs", "status",
            *(m.label for m in report.metrics)]
    rows = [[r.model, r.family, r.subset, *([fmt(r.epochs, "g")] if by_epochs else []), fmt(r.steps, ".0f"),
             f"{r.params / 1e6:.3g}M", fmt(r.exaflops, ".4g"), r.status,
             *(fmt(r.accuracy[m.column] * 100, ".1f") for m in report.metrics)] for r in report.runs]
    return md_table(head, rows) + ["", "Accuracies in percent. All columns, with ids and MLflow run ids: `runs.csv`."]


def figures_section(report: Report) -> list[str]:
    """Figure 5 and Figure 4, drawn or why not (the fits figure goes with the scaling laws)."""
    if not report.figure(FIGURE_COMPUTE).drawn:
        return ["- No figure: no run has both finished pretraining and a transfer metric yet."]
    curves = ", each run's learning curve as a thin line" if not report.curves.empty else ""
    lines = [f"- Transfer accuracy against pretraining compute, Pareto frontier per family{curves} (paper Fig. 5): "
             "![performance vs compute](performance_vs_compute.png) (`performance_vs_compute.svg`)"]
    data = report.figure(FIGURE_DATA)
    if data.drawn:
        lines.append("- Few-shot accuracy against pretraining set size (paper Fig. 4): "
                     "![performance vs data](performance_vs_data.png) (`performance_vs_data.svg`)")
    else:
        lines.append(f"- Performance against data set size (paper Fig. 4): not drawn, "
                     f"{DATA_FIGURE_NOT_DRAWN[data.reason]}.")
    return lines


def with_interval(value: float, bounds: tuple[float, float] | None) -> str:
    if bounds is None:
        return fmt(value)
    return f"{fmt(value)} [{fmt(bounds[0])}, {fmt(bounds[1])}]"


def _points_cell(fits: Fits, family: str, n: int) -> str:
    """The points column: how many points the fit used (on the frontier: and from how many runs)."""
    if fits.basis.source != FitSource.FRONTIER:
        return str(n)
    used = fits.basis.used
    kind = "configurations" if fits.basis.seeds else "runs"
    return f"{n} ({used.loc[used['family'] == family, 'id'].nunique()} {kind})"


def _rolling_cell(ff: law_choice.FamilyFit, form: str) -> str:
    predictions = ff.rolling.get(form)
    if not predictions:
        return "-"
    mae = sum(p.mae_points for p in predictions) / len(predictions)
    return f"{ff.score(form):.3f} ({mae:.2f} pts, {len(predictions)} cut-offs)"


def _form_note(ff: law_choice.FamilyFit, form: str) -> str:
    bound = ", ".join(f"{p} at its {side} bound" for p, (side, _) in ff.degenerate.get(form, {}).items())
    law = ff.law() or ""
    used = "**used**" if form == law else f"**used**, in the blend {law}" if form in law.split("+") else ""
    return "; ".join(x for x in (used, f"degenerate ({bound})" if bound else "") if x) or "-"


def _interval_of(ff: law_choice.FamilyFit, form: str, p: str) -> tuple[float, float] | None:
    """The interval of parameter ``p`` of ``form`` where it is (part of) the law used."""
    law = ff.law() or ""
    intervals = ff.intervals.get(law, {})
    return intervals.get(p) if form == law else intervals.get(f"{form}.{p}")


def fits_table(fits: Fits) -> list[str]:
    """A row per family and form: points used, parameters (the law used: with intervals), the
    rolling-origin score, AICc, and whether it is used or degenerate."""
    rows = []
    for family, ff in fits.families.items():
        for form, f in ff.fits.items():
            params = ", ".join(f"{p} {with_interval(v, _interval_of(ff, form, p))}" for p, v in f.params.items())
            rows.append([family_name(family), _points_cell(fits, family, f.n), f"{form}: {LAWS[form]}", params,
                         _rolling_cell(ff, form), fmt(f.aicc, ".1f"), _form_note(ff, form)])
    if not rows:
        return []
    return md_table(["family", "points", "form", "parameters", "rolling origin: RMSE log E (MAE)", "AICc", "law"],
                     rows) + [""]


def verdict_lines(fits: Fits) -> list[str]:
    """A line per family with finished pretraining: which law fits better, and why."""
    lines = []
    for v in fits.verdicts:
        name = family_name(v.family)
        if v.verdict == Verdict.NO_POINTS:
            lines.append(f"- {name}: no run with finished pretraining has {fits.metric.label}.")
            continue
        said = {Verdict.BETTER: (f"the **{v.better}** law is used" + (" (the geometric mean of the two forms' errors)"
                                                                      if v.better and "+" in v.better else "")),
                Verdict.NO_VERDICT: "no verdict, the power law is used",
                Verdict.NO_FIT: "no fit"}[v.verdict]
        lines.append(f"- {name}: {said} ({v.reason}).")
    return lines


def multiplier_line(m: Multiplier) -> str:
    """One pair of families: the multiplier with its interval, range and ends, or not available."""
    x, y = family_name(m.x), family_name(m.y)
    if not m.available:
        return (f"- {x} vs {y}: not available (a family has no fit, or the fitted curves share no accuracy range "
                f"and one law would have to go more than {multipliers.EXTRAPOLATION_LIMIT:g}x beyond its runs to reach "
                "the other's).")
    (lo, hi), (acc_lo, acc_hi), (end_lo, end_hi) = m.interval, m.accuracy_range, m.at_range_ends
    dropped = (f"; {m.undefined_replicates}/{m.replicates} bootstrap replicates undefined"
               if m.undefined_replicates else "")
    if m.extrapolated:
        dropped += ("; **extrapolated**: the fitted curves share no accuracy range, so this compares them over the "
                    "accuracies between their ranges, each law used beyond the compute it was measured at")
    return (f"- {x} needs **{m.multiplier:.2f}x** [{lo:.2f}, {hi:.2f}] the compute of {y} "
            f"for accuracies {acc_lo * 100:.1f}-{acc_hi * 100:.1f}% ({fmt(end_lo, '.2f')}x at "
            f"{acc_lo * 100:.1f}%, {fmt(end_hi, '.2f')}x at {acc_hi * 100:.1f}%; {m.form_x} vs "
            f"{m.form_y} fits{dropped}){seed_words(m)}.")


def seed_words(m: Multiplier) -> str:
    """Each seed's own multiplier, where the study ran its configurations with several seeds."""
    if not m.by_seed:
        return ""
    return "; each seed's runs alone: " + seed_values(m)


def basis_lines(basis: FitBasis) -> list[str]:
    """Which points the fits are on: the frontier (the early fraction, the points used, the metric
    when it is not the headline), or the end-of-run points and why."""
    replicates = [replicate_words(basis)] if basis.seeds else []
    if basis.source == FitSource.END_OF_RUN:
        return [" ".join([(f"Points: the end-of-run point of every run with finished pretraining, not a frontier over "
                           f"checkpoints: {FALLBACK_WORDS[basis.fallback]}."), *replicates])]
    lines = [(f"Points: each family's compute-efficient frontier (the points no cheaper point of the family beats) "
              "over every (run, checkpoint) point: the checkpoints of the learning curves (`curve/...`) and each "
              f"run's end-of-run evaluation, leaving out checkpoints below {basis.early_fraction:.0%} of their run's "
              f"total compute (the warm-up-dominated start). {len(basis.used)} of {len(basis.points)} points used "
              "(filled in the figure, the others hollow).")]
    if basis.metric != basis.headline:
        lines.append(f"The report's headline metric is **{basis.headline.label}**; fine-tuning has no learning "
                     f"curve, so the fits use its few-shot part, **{basis.metric.label}**.")
    lines += replicates
    without = basis.runs() - basis.runs("curve")
    if without:
        lines.append(f"{without} run(s) have no checkpoint before their end (no learning curve logged, or probed only "
                     "at the end): only their end-of-run point is a candidate.")
    return [" ".join(lines)]


def replicate_words(basis: FitBasis) -> str:
    """How the runs of configurations run with several seeds were averaged, and how far apart they were."""
    groups = seeds_per_configuration(basis.seed_points)
    spread = basis.points["spread"].dropna()
    return (f"The runs that differ only by their seed are averaged first: {int((groups > 1).sum())} configurations "
            f"run with {_counts(groups[groups > 1])} seeds, each of their points the mean over the seeds that have "
            f"it (standard deviation between seeds: median {spread.median():.1f}, at most {spread.max():.1f} "
            "points).")


def _counts(values) -> str:
    """'3' or '2-3': the range of some counts."""
    lo, hi = int(min(values)), int(max(values))
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _checkpoint(row) -> str:
    return "end" if row["source"] == "end" else f"{row['fraction']:.0%} (step {row['step']:.0f})"


def frontier_lines(fits: Fits) -> list[str]:
    """Per family, the frontier points the fits used: each run's checkpoints, as shares of its compute."""
    basis = fits.basis
    if basis.source != FitSource.FRONTIER:
        return []
    lines = ["Frontier points used (per run: its checkpoints as a share of its total compute; end = the end-of-run "
             "evaluation):", ""]
    for family in fits.families:
        candidates = basis.points[basis.points["family"] == family]
        used = candidates[candidates["used"]]
        early = int(candidates["early"].sum())
        runs = "; ".join(f"{label}: " + ", ".join(_checkpoint(row) for _, row in group.iterrows())
                         for label, group in used.groupby("label", sort=False))
        lines.append(f"- {family_name(family)}: {len(used)} of {len(candidates)} points ({early} early and "
                     f"{len(candidates) - len(used) - early} below the frontier left out): {runs}.")
    return [*lines, ""]


def fits_section(fits: Fits) -> list[str]:
    """The scaling laws: method, the points, the fits table, verdicts, multipliers, the fits figure."""
    lines = [(f"Error E = 1 - accuracy on **{fits.metric.label}** against pretraining compute C (exaFLOPs), four "
              "forms (power, saturating, knee, sigmoid; `docs/analysis.md`), Huber loss in log space. The law used is "
              "chosen by rolling origin: each form fitted on the points up to a cut-off predicts those above it, "
              "over several cut-offs; the two forms with the lowest mean RMSE of log error are averaged (log errors; "
              "a blend `a+b`), a degenerate fit (a parameter at a bound) never chosen while another is sound. "
              f"[{percent(fits.level)} intervals: residual bootstrap of the law used, "
              f"t-expanded. {spread_words(fits.basis)}]"), "",
             *basis_lines(fits.basis), "", *fits_table(fits), *frontier_lines(fits), *verdict_lines(fits)]
    if not fits.any_fit:
        return [*lines, "", "Compute multiplier: not available, no family has a fit.", "",
                ("No fit figure: no family has enough points at distinct compute "
                 f"(the power law needs {scaling_laws.MIN_POINTS['power']}, the saturating law "
                 f"{scaling_laws.MIN_POINTS['saturating']}).")]
    return [*lines, "", ("Compute multiplier (how many times the compute one family needs for the same accuracy "
                         "as another, geometric mean over the accuracies both fitted curves reach within their "
                         "measured compute):"), "",
            *(multiplier_line(m) for m in fits.multipliers),
            "", f"![scaling-law fits]({FIGURE_FITS}.png) (`{FIGURE_FITS}.svg`)"]


def spread_words(basis: FitBasis) -> str:
    """What the intervals leave out: the spread between seeds, measured or not."""
    if not basis.seeds:
        return ("They leave out the run-to-run spread of training (another seed, another CPU's rounding), which one "
                "run per configuration cannot measure: `docs/analysis.md`.")
    return ("They are fitted on the mean over each configuration's seeds and leave out the spread between seeds; "
            "each multiplier's per-seed values show that spread: `docs/analysis.md`.")


def track_lines(fits: Fits) -> list[str]:
    """How each family's law predicted its own next point, fitted on the points below."""
    if not fits.track:
        return ["Track record: no family has points enough to refit its law below its largest point."]
    rows = [[family_name(p.family), p.form, f"{p.cut:.3g}", str(p.fitted), f"{p.exaflops:.3g}",
             f"{p.observed * 100:.1f}", f"{p.predicted * 100:.1f}", f"{p.error_points:+.1f}"] for p in fits.track]
    lines = ["Track record (rolling origin): each family's law, refitted on its points up to a cut-off, predicting "
             "its next point; the error says how far the forecasts below can be trusted.", "",
             *md_table(["family", "law", "cut-off exaFLOPs", "points fitted", "next point exaFLOPs", "observed %",
                         "predicted %", "error (points)"], rows), ""]
    for family in dict.fromkeys(p.family for p in fits.track):
        errors = [abs(p.error_points) for p in fits.track if p.family == family]
        lines.append(f"- {family_name(family)}: mean absolute error {sum(errors) / len(errors):.2f} points over "
                     f"{len(errors)} step(s), largest {max(errors):.2f}.")
    return lines


def _forecast_row(f: Forecast) -> list[str]:
    t = f.target
    source = {"missing": "run not finished", "preset": "preset's forecast", "named": "--forecast"}[t.source]
    if f.law is None:
        return [t.label, family_name(t.family), source, f"{t.exaflops:.4g}", "-", "-", f"no forecast: {f.reason}"]
    interval = f"[{f.interval[0] * 100:.1f}, {f.interval[1] * 100:.1f}]" if f.interval else "-"
    note = f"{f.beyond:.3g}x its family's largest compute" + ("; **degenerate law**" if f.degenerate else "")
    return [t.label, family_name(t.family), source, f"{t.exaflops:.4g}", f"{f.accuracy * 100:.1f}", interval,
            f"{f.law}; {note}"]


def forecast_section(fits: Fits) -> list[str]:
    """The forecasts of configurations not run, then the laws' track record."""
    level = percent(fits.level)
    lines = [f"Accuracy on **{fits.metric.label}** that each family's law predicts for configurations not run "
             f"(the preset's runs not finished, its `forecast:` entries, `--forecast`), with the {level} band of the "
             "law's bootstrap refits. Beyond the largest compute a family was measured at, the band widens; a band "
             "assumes the law's form holds there, which the track record below tests.", ""]
    if fits.forecasts:
        lines += md_table(["configuration", "family", "from", "exaFLOPs", "forecast %", f"{level} interval", "law"],
                           [_forecast_row(f) for f in fits.forecasts]) + [""]
    else:
        lines += ["No configuration to forecast: every run of the preset finished, and the preset names none "
                  "(`forecast:` in the study file, or `--forecast MODEL@LENGTH`).", ""]
    return lines + track_lines(fits)


# ----------------------------------------------------------------------------- report.html

HTML_STYLE = ("body{font-family:sans-serif;line-height:1.45;margin:1.5em;max-width:110em}h1{font-size:1.5em}"
              "h2{font-size:1.25em;margin-top:1.5em}"
              "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:2px 8px}"
              "th{background:#f2f2f2}code{background:#f4f4f4;padding:0 2px}img{max-width:100%;display:block}")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def to_html(report: Report, images: Mapping[str, bytes]) -> str:
    """report.html: report.md as one self-contained page, every figure it shows inlined from
    ``images`` ({PNG file name: its bytes}): MLflow's artifact viewer shows an HTML artifact in a
    sandboxed frame that cannot load the run's other files."""
    import markdown
    # report.md indents nested list items by 2 spaces (CommonMark); Python-Markdown's default needs 4
    body = markdown.markdown(to_markdown(report), extensions=["tables"], tab_length=2)
    body = re.sub(r'src="([^"]+)"', lambda m: f'src="{_data_uri(images[m[1]])}"' if m[1] in images else m[0], body)
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(report.title.replace("`", ""))}'
            f"</title><style>{HTML_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
