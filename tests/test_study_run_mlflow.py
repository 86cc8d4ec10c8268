"""The report as MLflow shows it: the study run's fits, multipliers and description, the
experiment's description, report.html with its figures inlined, and the runs table's length
columns; on a real SQLite MLflow store (the stores of tests/test_analysis.py)."""
from __future__ import annotations

import base64
import math
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from pipeline import analysis, tracking
from pipeline.tracking import NOTE_TAG
from test_analysis import curve_store, store, synthetic_table  # noqa: F401 (fixtures)

OPTIONS = analysis.ReportOptions(n_boot=30)


@pytest.fixture(scope="module")
def logged(curve_store, tmp_path_factory):  # noqa: F811
    """The six-run study with learning curves (every family fitted), its report written to a new
    study run; the run as MLflow has it and the Report it was written from."""
    uri, study = curve_store["uri"], curve_store["study"]
    run_id = tracking.start_study_run(uri, study.name, "tiny", params={"study": study.name, "preset": "tiny"})
    tracking.MetricLogger(uri, run_id).log_now(0, {"fit/Old/exponent": 0.5, "runs_done": 6})  # an earlier report's
    paths = analysis.write_report(study, "tiny", tracking_uri=uri, out_dir=tmp_path_factory.mktemp("report"),
                                  study_run_id=run_id, options=OPTIONS)
    report = analysis.study_report(study, "tiny", tracking_uri=uri, options=OPTIONS)   # the same: seeded
    return {"run": tracking.client(uri).get_run(run_id), "report": report, "paths": paths, **curve_store}


def test_study_run_has_every_fit_as_metrics_and_tags(logged):
    run, fits = logged["run"], logged["report"].fits
    metrics, tags = run.data.metrics, run.data.tags
    assert len(fits.families) == 3 and all(ff.best() for ff in fits.families.values())
    for family, ff in fits.families.items():
        fit, _ = ff.best()
        prefix, interval = f"fit/{analysis.family_key(family)}", ff.intervals[fit.form]
        assert metrics[f"{prefix}/exponent"] == pytest.approx(fit.b)
        assert (metrics[f"{prefix}/exponent_lo"], metrics[f"{prefix}/exponent_hi"]) == pytest.approx(interval["b"])
        assert metrics[f"{prefix}/points"] == len(ff.compute)
        assert tags[f"{prefix}/law"] == fit.form
        assert (f"{prefix}/floor" in metrics) == (fit.form == "saturating")
    assert {"fit/ViT/law", "fit/BiT/law", "fit/Hybrid/law"} <= set(tags)
    assert tags["fit/metric"] == fits.metric.column == "fewshot/digits/5shot"
    assert metrics["fit/level"] == pytest.approx(analysis.LEVEL)
    assert math.isnan(metrics["fit/Old/exponent"]) and metrics["runs_done"] == 6   # outdated: NaN; others kept
    # issue 33, probe 11: the second writing is the second point (step 1), not another point at step 0
    uri = logged["uri"]
    history = tracking.metric_history(uri, run.info.run_id, "fit/Old/exponent")
    assert [step for step, _ in history] == [0, 1]
    assert [step for step, _ in tracking.metric_history(uri, run.info.run_id, "fit/level")] == [1]
    assert not any(k.startswith("fit") for k in run.data.params)                  # params cannot change


def test_study_run_has_every_multiplier_as_metrics(logged):
    metrics, multipliers = logged["run"].data.metrics, logged["report"].fits.multipliers
    assert [(m.x, m.y) for m in multipliers] == [("resnet", "vit"), ("hybrid", "vit"), ("hybrid", "resnet")]
    for m in multipliers:
        name = f"multiplier/{analysis.family_key(m.x)}_vs_{analysis.family_key(m.y)}"
        assert m.available and metrics[name] == pytest.approx(m.multiplier)
        assert (metrics[f"{name}_lo"], metrics[f"{name}_hi"]) == pytest.approx(m.interval)
    assert {"multiplier/BiT_vs_ViT", "multiplier/Hybrid_vs_ViT", "multiplier/Hybrid_vs_BiT"} <= set(metrics)


def test_study_run_description_and_the_experiments(logged):
    run, report = logged["run"], logged["report"]
    note = run.data.tags[NOTE_TAG]
    summary, figure = note.split("\n\n")
    assert "6 runs: 6 done" in summary and "6 of 6 runs checked learned" in summary
    for m in report.fits.multipliers:
        assert f"needs **{m.multiplier:.2f}x** [{m.interval[0]:.2f}, {m.interval[1]:.2f}]" in summary
    vit = report.fits.families["vit"]
    assert f"ViT: {vit.best()[0].form} law, exponent {vit.best()[0].b:.3g} [" in summary
    assert "report/report.html" in summary
    assert figure.endswith(f"(get-artifact?path=report/performance_vs_compute_preview.png&run_uuid={run.info.run_id})")
    experiment = analysis.experiment_description(logged["study"].name, logged["study"].title)
    assert experiment.startswith(f"Study `scaling`: {logged['study'].title}.") and "\n" not in experiment
    assert "`params.model`, `params.steps`" in experiment and "`metrics.compute/gflops`" in experiment  # issue 33, walk 1
    assert "`metrics.fewshot/<dataset>/<k>shot`" in experiment and "`study scaling / <preset>`" in experiment
    # issue 33, walk 2: MLflow 3 opens the experiment on its runs, not on the GenAI overview
    tags = tracking.client(logged["uri"]).get_experiment_by_name(logged["study"].name).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    # issue 33, walk 5: the study run says which code wrote it, as the pretraining runs do
    assert run.data.tags["code_version"] and run.data.tags["mlflow.source.name"] == "pipeline"


def test_description_names_sanity_findings_and_what_is_not_available(store):  # noqa: F811
    report = analysis.study_report(store["study"], "tiny", tracking_uri=store["uri"], options=OPTIONS)
    note = analysis.to_description(report)
    assert "\n" not in note and "get-artifact" not in note                      # one paragraph, no figure
    assert "Compute multiplier: not available, no family has a fit." in note
    assert "ResNet (BiT): no fit (" in note and "Hybrid (R50+ViT): no fit (no run with finished" in note
    assert f"compute differs from the plan (ViT-micro-S `{store['specs'][0].id}`)" in note
    assert "too few points to fit (ViT, ResNet (BiT))" in note
    assert "Whether runs learned: not checked" in note                         # the fake runs log no baseline
    assert analysis.study_run_metrics(report.fits) == {"fit/level": analysis.LEVEL, "fit/ViT/points": 2.0,
                                                                 "fit/BiT/points": 1.0}


def test_report_html_inlines_every_figure(logged):
    paths, report = logged["paths"], logged["report"]
    html = paths["report.html"].read_text()
    drawn = [f.name for f in report.figures if f.drawn]
    assert drawn == ["performance_vs_compute", "scaling_fits"]
    inlined = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', html)
    assert [base64.b64decode(png) for png in inlined] == [paths[f"{name}.png"].read_bytes() for name in drawn]
    assert not re.search(r'src="(?!data:)', html)                          # nothing to fetch from elsewhere
    assert "<table>" in html and "<th>steps</th>" in html


def test_report_html_nests_lists(store, tmp_path):  # noqa: F811
    report = analysis.study_report(store["study"], "tiny", tracking_uri=store["uri"], options=OPTIONS)
    html = analysis.write_files(report, tmp_path)["report.html"].read_text()
    failed = html.split("run(s) failed:", 1)[1]
    assert failed.lstrip().startswith("<ul>") and store["specs"][3].id in failed.split("</ul>", 1)[0]


def test_runs_table_gives_steps_and_epochs_where_runs_have_them(logged):
    markdown = analysis.to_markdown(logged["report"])
    assert "| model | family | subset | steps | params |" in markdown             # no run by epochs
    for spec in logged["specs"]:
        assert f"| {spec.model_name} | {spec.family} | {spec.subset} | {spec.steps} |" in markdown
    by_epochs = analysis.build_report(synthetic_table(np.random.default_rng(8), models=3), title="epochs",
                                      several_subsets=False, expected=[], options=OPTIONS)
    markdown = analysis.to_markdown(by_epochs)
    assert "| model | family | subset | epochs | steps | params |" in markdown
    assert "| vit-0 | vit | full | 7 | - |" in markdown                           # steps unknown
