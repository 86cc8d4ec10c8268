"""The ``in21k`` presets (ImageNet-21k, public data): Table 3's ImageNet-21k recipe per model, the
choices where the paper is silent, and ``--plan`` for both studies (no Ray, no data read)."""
from __future__ import annotations

import json
import math
import sys

import pytest

from models import model_spec
from pipeline import compute
from pipeline import study as study_cli
from pipeline.spec import TABLE3_BASE_LR, load_study

# Table 3 of the paper (arXiv 2010.11929), its ImageNet-21k rows (ViT only), copied from the project's
# reference notes (vit-scaling-paper.md, "Table 3, ImageNet rows"); every row at batch 4096, 224 px.
TABLE3_IN21K = {
    "ViT-B/16": {"epochs": {90}, "base_lr": 1e-3, "decay": "linear", "weight_decay": 0.03, "dropout": 0.1},
    "ViT-B/32": {"epochs": {90}, "base_lr": 1e-3, "decay": "linear", "weight_decay": 0.03, "dropout": 0.1},
    "ViT-L/16": {"epochs": {30, 90}, "base_lr": 1e-3, "decay": "linear", "weight_decay": 0.03, "dropout": 0.1},
    "ViT-L/32": {"epochs": {30, 90}, "base_lr": 1e-3, "decay": "linear", "weight_decay": 0.03, "dropout": 0.1},
}
BATCH, IMAGE_SIZE = 4096, 224
# ImageNet-21k fall11 (image-net.org): 14,197,122 images, 21,841 classes with images
IN21K_IMAGES, IN21K_CLASSES = 14_197_122, 21_841
# the reference's forward MACs at 224 (1000-class head) and the tolerance test_compute uses for exaFLOPs
REFERENCE_GMACS = {"ViT-B/16": 17.58, "ViT-B/32": 4.41}
SCALING_GRID = {("R50x1", 90), ("R50x2", 90), ("R101x1", 90), ("R152x1", 90), ("R152x2", 30), ("R152x2", 90),
                ("ViT-B/32", 90), ("ViT-B/16", 90), ("ViT-L/32", 30), ("ViT-L/32", 90), ("ViT-L/16", 30),
                ("ViT-L/16", 90), ("R50+ViT-B/32", 90), ("R50+ViT-B/16", 90), ("R50+ViT-L/32", 30),
                ("R50+ViT-L/32", 90), ("R50+ViT-L/16", 30), ("R50+ViT-L/16", 90)}


def recipe_row(run) -> dict:
    r = run.recipe
    return {"base_lr": run.base_lr()[0], "decay": r.decay, "weight_decay": r.weight_decay, "dropout": r.dropout}


def test_scaling_in21k_vits_follow_table3_imagenet21k_rows():
    runs = load_study("scaling").expand("in21k")
    assert {(r.model_name, r.epochs) for r in runs} == SCALING_GRID and len({r.id for r in runs}) == 18
    assert all(r.recipe.batch_size == BATCH and r.recipe.image_size == IMAGE_SIZE for r in runs)
    assert all(r.dataset == "ImageNet-21k" and r.subset == "full" for r in runs)
    for name, row in TABLE3_IN21K.items():
        mine = [r for r in runs if r.model_name == name]
        assert {r.epochs for r in mine} == row["epochs"], name
        for run in mine:
            assert recipe_row(run) == {k: v for k, v in row.items() if k != "epochs"}, name


def test_scaling_in21k_choices_where_table3_is_silent():
    """ResNets: Table 3's JFT per-model LRs, no dropout; hybrids: the ViT row of their transformer;
    every run: warmup 10k steps, grad-clip 1 (studies/scaling.yaml gives the sources)."""
    runs = load_study("scaling").expand("in21k")
    vit_row = {k: v for k, v in TABLE3_IN21K["ViT-B/16"].items() if k != "epochs"}
    for run in runs:
        assert run.recipe.warmup_steps == 10_000 and run.recipe.grad_clip == 1.0, run.label
        if run.family == "resnet":
            assert recipe_row(run) == {**vit_row, "base_lr": TABLE3_BASE_LR[run.model_name], "dropout": 0.0}
        if run.family == "hybrid":
            assert recipe_row(run) == vit_row, run.label
            vit = "ViT-" + run.model_name.split("ViT-")[1]
            assert {r.epochs for r in runs if r.model_name == run.model_name} == TABLE3_IN21K[vit]["epochs"]
    preset = load_study("scaling").preset("in21k")
    assert compute.parse_count(preset.dataset.images) == IN21K_IMAGES
    assert preset.dataset.num_classes == IN21K_CLASSES


def test_data_in21k_nested_subsets_with_one_recipe():
    study = load_study("data")
    runs = study.expand("in21k")
    assert {r.subset for r in runs} == {"1.3M", "4.3M", "full"} and len(runs) == 15
    assert {r.model_name for r in runs} == {m.model_name for m in study.expand("paper")}
    assert {r.epochs for r in runs} == {90}
    scaling = {r.id for r in load_study("scaling").expand("in21k")}
    for run in runs:
        expected = {k: v for k, v in TABLE3_IN21K["ViT-B/32"].items() if k != "epochs"}
        if run.family == "resnet":
            expected.update(base_lr=TABLE3_BASE_LR[run.model_name], dropout=0.0)
        assert recipe_row(run) == expected, run.label
        if run.subset == "full" and run.model_name != "ViT-b/32":
            assert run.id in scaling, run.label  # the same run as the scaling preset's: one recipe
    assert study.preset("in21k").dataset == load_study("scaling").preset("in21k").dataset


@pytest.fixture()
def counted(monkeypatch):
    """Forward MACs: fvcore's real count for the models the test adds to the returned set (those it
    checks by hand), a stand-in for the rest (counting the whole grid takes about a minute on 2 cores)."""
    real, checked = compute.model_counts, set()

    def counts(model, image_size=224, num_classes=1000, use_cache=True, progress=False):
        if model_spec(model).name in checked:
            return real(model, image_size, num_classes, use_cache, progress)
        return {"forward_macs": 10**9, "params": 10**6}

    monkeypatch.setattr(compute, "model_counts", counts)
    return checked


def hand_exaflops(model: str, epochs: int, images: int) -> float:
    """The reference's convention: 2 x 3 x forward MACs x images seen / 1e18, images seen =
    whole steps of 4096 (what pretraining logs), MACs the reference's (1000-class head) plus the
    ImageNet-21k head's extra width x (21,841 - 1000) multiply-adds."""
    head = model_spec(model).vit.width * (IN21K_CLASSES - 1000)
    seen = math.ceil(epochs * images / BATCH) * BATCH
    return 2 * 3 * (REFERENCE_GMACS[model] * 1e9 + head) * seen / 1e18


@pytest.mark.parametrize("study,runs,check", [
    ("scaling", 18, ("ViT-B/16", "full", 90, IN21K_IMAGES)),
    ("data", 15, ("ViT-B/32", "1.3M", 90, 1_300_000)),
])
def test_in21k_plan_lists_every_run_with_exaflops(study, runs, check, counted, capsys):
    model, subset, epochs, images = check
    counted.add(model)
    ray_before = "ray" in sys.modules
    assert study_cli.main([study, "--preset", "in21k", "--plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dataset"] == "ImageNet-21k" and plan["data"] is None and len(plan["runs"]) == runs
    for run in plan["runs"]:
        rows = IN21K_IMAGES if run["subset"] == "full" else compute.parse_count(run["subset"])
        assert run["subset_images"] == rows
        assert run["steps"] == math.ceil(run["epochs"] * rows / BATCH) and run["exaflops"] > 0
    assert plan["totals"]["runs"] == runs
    assert plan["totals"]["exaflops"] == pytest.approx(sum(r["exaflops"] for r in plan["runs"]))
    row = next(r for r in plan["runs"] if (r["model"], r["subset"], r["epochs"]) == (model, subset, epochs))
    assert row["exaflops"] == pytest.approx(hand_exaflops(model, epochs, images), rel=0.01)
    # the table names every run with its exaFLOPs
    assert study_cli.main([study, "--preset", "in21k", "--plan"]) == 0
    table = capsys.readouterr().out
    assert f"{runs} runs:" in table and "exaFLOPs" in table
    for run in plan["runs"]:
        assert any(run["id"] in line and run["model"] in line for line in table.splitlines())
    assert ray_before or "ray" not in sys.modules  # --plan starts no Ray (not even its import)
