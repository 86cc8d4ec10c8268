"""Next-run advice (``--suggest``): the CLI on a real SQLite MLflow store, its errors, and, on
synthetic studies drawn from known laws, that following the advice narrows the compute multiplier's
interval more than adding about the same compute at random (bench/suggest_eval.py measures the same
over more draws)."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import pytest

from pipeline import analysis, study, tracking
from pipeline.analysis import suggest
from pipeline.spec import load_study
from test_analysis import log_curve_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import suggest_eval  # noqa: E402

FAST = suggest.SuggestSettings(n_boot=40)
DRAWS, EVAL_BOOT = 16, 100


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """Every run of the shipped tiny preset finished, end-of-run points only (three per family)."""
    uri = tracking.default_tracking_uri(tmp_path_factory.mktemp("suggest"))
    tracking.init_store(uri)
    scaling = load_study("scaling")
    planned = analysis.run_table(scaling, "tiny", tracking_uri=None).set_index("id")["exaflops"]
    for spec in scaling.expand("tiny"):
        log_curve_run(uri, "scaling", spec, float(planned[spec.id]), curve=False)
    return {"uri": uri, "study": scaling}


def test_suggest_cli_on_a_real_store(tiny_store, monkeypatch, capsys):
    monkeypatch.setattr(suggest, "study_advice", functools.partial(suggest.study_advice, settings=FAST))
    argv = ["scaling", "--preset", "tiny", "--suggest", "2", "--tracking-uri", tiny_store["uri"]]
    assert study.main(argv + ["--json"]) == 0
    advice = json.loads(capsys.readouterr().out)
    scaling = tiny_store["study"]
    candidates = {s.id for s in scaling.with_candidates("tiny").expand("tiny")} - {s.id for s in scaling.expand("tiny")}
    picks = [p["candidate"] for p in advice["picks"]]
    assert len(picks) == 2 and {p["id"] for p in picks} <= candidates and picks[0]["id"] != picks[1]["id"]
    assert all(p["exaflops"] > 0 and p["gpu_hours"] > 0 for p in picks)
    assert [t["kind"] for t in advice["targets"]] == ["multiplier"] * 3     # three families, three pairs
    assert advice["about"]["metric"] == "average of 2" and advice["width"] > 1
    assert study.main(argv) == 0
    text = capsys.readouterr().out
    assert "ResNet (BiT) / ViT multiplier" in text and picks[0]["id"] in text and "GPU-hours" in text


def test_suggest_errors(tiny_store, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        study.main(["scaling", "--preset", "smoke", "--suggest", "1", "--tracking-uri", tiny_store["uri"]])
    assert exit_.value.code == 2 and "has no candidates" in capsys.readouterr().err
    empty = tracking.default_tracking_uri(tmp_path)
    tracking.init_store(empty)
    with pytest.raises(SystemExit) as exit_:
        study.main(["scaling", "--preset", "tiny", "--suggest", "1", "--tracking-uri", empty])
    assert exit_.value.code == 2 and "too few runs to fit" in capsys.readouterr().err


def test_too_few_points_and_prediction_targets():
    draw = suggest_eval.draw_study(0)
    two = {f: (c[:2], a[:2]) for f, (c, a) in draw.points.items()}
    with pytest.raises(suggest.SuggestError, match="3 distinct compute values"):
        suggest.suggest(two, draw.candidates, 1, FAST)
    # ViT alone: no multiplier, so the target is its prediction at its largest candidate compute
    advice = suggest.suggest({"vit": draw.points["vit"], "resnet": two["resnet"]}, draw.candidates, 1, FAST)
    assert [(t.kind, t.x, t.compute) for t in advice.targets] == [("prediction", "vit", 300.0)]
    assert advice.picks[0].candidate.family == "vit" and advice.picks[0].width < advice.width
    assert {c.family for c, _ in advice.unscored} == {"resnet"}


def test_advice_is_reproducible():
    draw = suggest_eval.draw_study(1)
    first, again = (suggest.suggest(draw.points, draw.candidates[::3], 2, FAST) for _ in range(2))
    assert first.picks == again.picks and first.width == again.width


def test_advice_narrows_the_multiplier_more_than_random_placement_of_the_same_compute():
    """Over seeded synthetic studies (bench/suggest_eval.py: two power-law families measured at the same
    computes, ResNet needing 3x ViT's compute, 4 noisy points each, 14 candidates), the real refit with
    outcomes drawn from the true laws: the advised run leaves a narrower multiplier interval than a random
    run of the same compute, on average over the draws by more than the draws' standard error (50 draws in
    bench/RESULTS.md: mean log(random / advice) 0.042 +- 0.011)."""
    rows = [suggest_eval.compare(suggest_eval.draw_study(seed), seed, 1, FAST, n_boot=EVAL_BOOT) for seed in range(DRAWS)]
    result = suggest_eval.summary(rows)
    print(result)
    assert result["mean_log_gain"] > result["gain_se"] > 0
    assert result["advice"] < result["random"] < result["now"] * 1.01
