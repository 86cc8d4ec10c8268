"""Issue 5's acceptance point on what pretraining buys: a micro model pretrained with the real
pipeline's loop (pipeline.pretrain in process, MLflow, Parquet) on synthetic JFT-like data
transfers to real data (scikit-learn's handwritten digits) better than chance by a wide margin AND
better than random weights of the same shape.

The pretraining data is the generator's ``glyphs`` style: procedural stroke figures, 1000 classes
with a long tail, nothing derived from digits. The bar for the random models is the mean of three
initializations (one of them the pretrained model's own starting point), probed on the same
pre-logits features with the same protocol, plus a margin.

Determinism: seeds, data order and torch threads (1) are pinned; the same run gives 0.841 every
time. Margin from measured spread (bench/RESULTS.md, issue 11, and issue 31 for one thread and the
two-pass weight standardization): over 5 pretraining seeds the 25-shot accuracy is 0.810-0.841
(0.819-0.886 before the weight standardization's change, 0.827-0.874 with two threads); over 10
random inits 0.743 +- 0.023 (max 0.801, seed 0), the same in all three. With the worst pretraining
seed (0.810) the gap to this test's random mean (0.761) is 0.049, so the 0.03 margin holds with
0.019 to spare; the seed the test uses (0.841) has 0.049 to spare. (The old bar, the best random
init + 0.03 = 0.831, failed for 2 of the 5 seeds: a knife edge.) One thread, not two: beside the
suite's other xdist worker two threads spin-wait (the test took 2.1x as long).
"""
from __future__ import annotations


import pytest
import torch

from models import build_model
from pipeline import transfer
from pipeline.data.digits import convert_digits
from pipeline.data.synth import SynthSpec, generate
from pipeline.pretrain.launch import Launch, pretrain
from pipeline.spec import Recipe, RunSpec

from micro_models import MICRO

pytestmark = pytest.mark.slow

FAMILY = "resnet"
CLASSES, IMAGES, STEPS = 1000, 10_000, 1000
SHOTS, L2 = 25, 2.0 ** 10
RANDOM_SEEDS = (0, 1, 2)
MARGIN = 0.03
THREADS = 1   # torch's, pinned (one_torch_thread): the numbers depend on it


def spec(seed: int = 0) -> RunSpec:
    return RunSpec(study="test-transfer-pretrained", model=MICRO[FAMILY], dataset="glyphs", steps=STEPS, seed=seed,
                   recipe=Recipe(batch_size=64, base_lr=1e-3, warmup_steps=20, weight_decay=1e-4, image_size=32,
                                 min_crop_area=1.0, checkpoint_every=STEPS, val_every=STEPS, log_every=100))


def fewshot_25(checkpoint: str, digits: str, model: torch.nn.Module | None = None) -> float:
    out = transfer.run_fewshot(checkpoint, digits, transfer.FewshotSettings(shots=(SHOTS,)), model=model,
                               image_size=32 if model is not None else None)
    return out["results"][(SHOTS, L2)]["mean"]


def test_pretrained_micro_model_beats_chance_and_random_init_on_digits(tmp_path, one_torch_thread):
    data = generate(tmp_path / "glyphs", SynthSpec(style="glyphs", images=IMAGES, classes=CLASSES,
                                                   max_objects=1, image_size=32, seed=0),
                    executor="processes", progress=False)
    out = pretrain(spec(), str(data), storage=str(tmp_path / "runs"), launch=Launch(in_process=True))
    assert out["done"] and out["step"] == STEPS

    convert_digits(tmp_path / "digits", progress=False)
    digits = str(tmp_path / "digits")
    pretrained = fewshot_25(out["checkpoint_uri"], digits)
    random = []
    for seed in RANDOM_SEEDS:   # the pretraining run's own initialization is seed 0
        torch.manual_seed(seed)
        model = build_model(MICRO[FAMILY], num_classes=CLASSES, image_size=32)
        random.append(fewshot_25("random", digits, model=model))
    print(f"25-shot digits: pretrained {pretrained:.3f}, random inits {[round(r, 3) for r in random]}")
    assert pretrained > 0.5                       # chance is 0.1
    assert pretrained > sum(random) / len(random) + MARGIN, (pretrained, random)
