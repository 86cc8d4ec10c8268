"""Forecasts of configurations not run, each family's track record, and compute multipliers
between families whose curves share no accuracy range: on synthetic studies drawn from known laws."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from pipeline import analysis
from pipeline.analysis import scaling_laws
from pipeline.analysis.forecast import ForecastTarget, named_targets, track_record
from pipeline.spec import load_study, named_entry

TRUE = scaling_laws.Fit("saturating", a=0.5, b=0.35, c=0.1, d=1.0)   # error 0.5 (C + 1)^-0.35 + 0.1
FACTORS = {"vit": 1.0, "resnet": 3.0}                        # compute each family needs, relative to ViT


def truth_of(family: str) -> scaling_laws.Fit:
    f = FACTORS[family]
    return scaling_laws.Fit("saturating", a=TRUE.a * f ** TRUE.b, b=TRUE.b, c=TRUE.c, d=TRUE.d * f)


def study_table(rng, compute_of, noise: float = 0.01) -> pd.DataFrame:
    """Finished runs of each family at ``compute_of(family)``, few-shot accuracy drawn from its law."""
    rows = []
    for family in FACTORS:
        for i, compute in enumerate(compute_of(family)):
            accuracy = 1 - truth_of(family).error(compute) * np.exp(rng.normal(0, noise))
            rows.append({"id": f"{family}{i}", "model": f"{family}-{i}", "family": family, "subset": "full",
                         "subset_images": 1000, "epochs": 7.0, "steps": None, "seed": 0, "params": 1e6 * (i + 1),
                         "exaflops": compute, "status": "done", "pretrain_status": "done",
                         "fewshot/imagenet/5shot": accuracy, "pretrain/val_prec1": 0.5,
                         "pretrain/val_prec1_baseline": 0.1})
    return pd.DataFrame(rows)


def report_of(table: pd.DataFrame, targets=()) -> analysis.Report:
    return analysis.build_report(table, title="forecast", several_subsets=False, expected=["fewshot/imagenet/5shot"],
                                 options=analysis.ReportOptions(n_boot=100), targets=list(targets))


def test_forecasts_of_runs_not_finished_and_of_named_configurations(tmp_path):
    table = study_table(np.random.default_rng(0), lambda f: np.geomspace(0.1, 1e3, 12) * FACTORS[f])
    missing = table.index[(table["family"] == "vit")][-1]
    table.loc[missing, ["status", "pretrain_status", "fewshot/imagenet/5shot"]] = ["new", None, np.nan]
    beyond = ForecastTarget("ViT-big / full / 7 epochs", "vit", 1e4, "named")
    report = report_of(table, [beyond, ForecastTarget("Mixer / full / 7 epochs", "mixer", 1.0, "named")])
    by_label = {f.target.label: f for f in report.fits.forecasts}
    assert list(by_label)[0] == "vit-11 / full / 7 epochs" and by_label["vit-11 / full / 7 epochs"].target.source == "missing"
    run = by_label["vit-11 / full / 7 epochs"]                     # the largest ViT run, not finished: 10x beyond
    truth = 1 - truth_of("vit").error(1e3)
    assert run.law == report.fits.families["vit"].law() and run.beyond == pytest.approx(1e3 / table.loc[10, "exaflops"])
    assert run.accuracy == pytest.approx(truth, abs=0.02) and run.interval[0] < run.accuracy < run.interval[1]
    far = by_label["ViT-big / full / 7 epochs"]
    near_width, far_width = np.diff(run.interval)[0], np.diff(far.interval)[0]
    assert far.beyond > run.beyond and far_width > near_width     # further out, a wider band
    assert by_label["Mixer / full / 7 epochs"].law is None and "no points" in by_label["Mixer / full / 7 epochs"].reason
    markdown = analysis.to_markdown(report)
    section = markdown.split("## Forecasts\n", 1)[1]
    assert "| vit-11 / full / 7 epochs | ViT | run not finished | 1000 |" in section
    assert f"{run.accuracy * 100:.1f}" in section and "no forecast: its family has no points" in section
    paths = analysis.write_files(report, tmp_path)
    saved = json.loads(paths["fits.json"].read_text())
    assert [f["target"]["label"] for f in saved["forecasts"]] == list(by_label)
    assert saved["forecasts"][0]["accuracy"] == pytest.approx(run.accuracy)


def test_track_record_predicts_each_next_point_from_the_points_below():
    table = study_table(np.random.default_rng(1), lambda f: np.geomspace(0.1, 1e3, 12) * FACTORS[f])
    report = report_of(table)
    vit = report.fits.families["vit"]
    track = [p for p in report.fits.track if p.family == "vit"]
    assert track == track_record(vit) and len(track) == 5
    values = np.unique(vit.compute)
    assert [p.exaflops for p in track] == list(values[-5:]) and [p.cut for p in track] == list(values[-6:-1])
    assert [p.fitted for p in track] == [int((vit.compute <= p.cut).sum()) for p in track]
    for p in track:
        observed = 1 - vit.error[vit.compute == p.exaflops][0]
        assert p.observed == pytest.approx(observed) and p.error_points == pytest.approx((p.predicted - observed) * 100)
        assert abs(p.error_points) < 2        # 1% noise on a law of the form fitted
    assert "Track record (rolling origin)" in analysis.to_markdown(report)


def test_multiplier_between_curves_that_share_no_accuracy_is_extrapolated_and_says_so():
    """ViT measured at large compute (low errors), ResNet at small compute (high errors): no error
    both reach, so the multiplier is taken over the gap between them, flagged, with its interval."""
    ranges = {"vit": np.geomspace(1e2, 1e4, 10), "resnet": np.geomspace(1e0, 1e2, 10)}
    report = report_of(study_table(np.random.default_rng(2), ranges.get, noise=0.005))
    m = report.fits.multiplier("resnet", "vit")
    assert m.available and m.extrapolated
    assert m.multiplier == pytest.approx(FACTORS["resnet"], rel=0.5) and m.interval[0] < m.multiplier < m.interval[1]
    overlapping = report_of(study_table(np.random.default_rng(2), lambda f: np.geomspace(0.1, 1e3, 10) * FACTORS[f]))
    assert overlapping.fits.multiplier("resnet", "vit").extrapolated is False
    apart = {"vit": np.geomspace(1e3, 1e5, 10), "resnet": np.geomspace(1e-3, 1e-1, 10)}   # decades between them
    assert not report_of(study_table(np.random.default_rng(2), apart.get)).fits.multiplier("resnet", "vit").available
    line = next(x for x in analysis.to_markdown(report).splitlines() if " needs **" in x)
    assert line.startswith("- ResNet (BiT) needs") and "**extrapolated**" in line


def test_named_configurations_are_costed_like_the_presets_runs():
    study = load_study("scaling")
    tiny = study.preset("tiny")
    entry = named_entry("ViT-micro-M@800steps", tiny)
    assert entry.steps == 800 and entry.model["name"] == "ViT-micro-M" and entry.recipe == {"base_lr": 0.0005}
    assert named_entry("ViT-H/14@14ep", tiny).epochs == 14.0
    targets = named_targets(study, "tiny", ("ViT-micro-M@800steps",))
    preset, named = targets[:len(tiny.forecast)], targets[len(tiny.forecast):]
    assert [t.source for t in preset] == ["preset"] * 3 and [t.family for t in preset] == ["vit", "resnet", "hybrid"]
    assert named[0].source == "named" and named[0].exaflops == pytest.approx(preset[0].exaflops)   # the same run
    runs = {s.model_name: s for s in study.expand("tiny")}
    assert named[0].label == "ViT-micro-M / full / 800 steps" and runs["ViT-micro-M"].steps == 400
    for text, said in (("ViT-H/14", "give MODEL@LENGTH"), ("ViT-H/14@3 weeks", "give MODEL@LENGTH"),
                       ("ViT-X@3ep", "unknown model 'ViT-X'")):
        with pytest.raises(ValueError, match=said):
            named_entry(text, tiny)


def test_report_command_forecasts_the_presets_and_named_configurations(tmp_path):
    """`python -m pipeline.study scaling --preset tiny --report --forecast ...` on a store of the
    shipped tiny preset, every run finished with learning curves: report.md forecasts the preset's
    three `forecast:` entries and the named one, each with an interval beyond its family's runs,
    and shows each family's track record; a bad --forecast is refused before anything is read."""
    import subprocess
    import sys
    from pathlib import Path

    from pipeline import tracking
    from test_analysis import log_curve_run

    study = load_study("scaling")
    uri = tracking.default_tracking_uri(tmp_path)
    tracking.init_store(uri)
    planned = analysis.run_table(study, "tiny", tracking_uri=None).set_index("id")["exaflops"]
    for spec in study.expand("tiny"):
        log_curve_run(uri, "scaling", spec, float(planned[spec.id]), curve=True)
    command = [sys.executable, "-m", "pipeline.study", "scaling", "--preset", "tiny", "--storage", str(tmp_path),
               "--report"]
    root = Path(__file__).resolve().parents[1]
    bad = subprocess.run([*command, "--forecast", "ViT-micro-M@soon"], cwd=root, capture_output=True, text=True)
    assert bad.returncode == 2 and "--forecast 'ViT-micro-M@soon': give MODEL@LENGTH" in bad.stderr
    done = subprocess.run([*command, "--forecast", "ViT-micro-M@1600steps"], cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    markdown = (tmp_path / "reports" / "scaling-tiny" / "report.md").read_text()
    section = markdown.split("## Forecasts\n", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "exaFLOPs" not in line]
    forecasts = [r for r in rows if "preset's forecast" in r or "--forecast" in r]
    assert [r.split(" | ")[0] for r in forecasts] == ["| ViT-micro-M / full / 800 steps", "| BiT-micro-M / full / 800 steps",
                                                       "| Hybrid-micro-M / full / 1200 steps",
                                                       "| ViT-micro-M / full / 1600 steps"]
    for row in forecasts:
        cells = row.strip("| ").split(" | ")
        lo, hi = (float(v) for v in cells[5].strip("[]").split(", "))
        assert lo < float(cells[4]) < hi and "x its family's largest compute" in cells[6]
    assert "Track record (rolling origin)" in section and "- ViT: mean absolute error" in section
    saved = json.loads((tmp_path / "reports" / "scaling-tiny" / "fits.json").read_text())
    assert len(saved["forecasts"]) == 4 and {p["family"] for p in saved["track_record"]} == {"vit", "resnet", "hybrid"}
