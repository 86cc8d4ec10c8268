"""Cost of the transfer protocols.

    python bench/bench_transfer.py

1. The few-shot protocol (shots 1/5/10/25, 3 seeds, one L2) on cached features:
   a. digits features of a micro ViT (D=64, 10 classes, 1347 train / 450 test rows);
   b. ImageNet-shaped random features (D=768, 1000 classes, 25 train rows per class, 50,000 test
      rows): the cost at paper scale once features exist.
2. Feature extraction for digits (the cached part), and one fine-tuning trial (micro ViT on
   digits, 400 steps of batch 64), each in-process on this machine's CPU.
The micro ViT checkpoint comes from a real 50-step pretraining run (Ray Train, 1 worker).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")  # as pipeline.raycluster

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline import ridge, transfer  # noqa: E402
from pipeline.data.digits import convert_digits  # noqa: E402
from pipeline.data.synth import SynthSpec, generate  # noqa: E402
from pipeline.pretrain.launch import pretrain  # noqa: E402
from pipeline.spec import Recipe, RunSpec  # noqa: E402

MICRO_VIT = {"name": "vit-micro", "family": "vit", "depth": 2, "width": 64, "heads": 4, "mlp_dim": 128,
             "patch_size": 8}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    import ray
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate(tmp / "synth", SynthSpec(images=1000, classes=10, image_size=32), executor="inline",
                        progress=False)
        spec = RunSpec(study="bench", model=MICRO_VIT, dataset="synth", steps=50,
                       recipe=Recipe(batch_size=64, base_lr=1e-3, warmup_steps=5, image_size=32, min_crop_area=1.0,
                                     checkpoint_every=50, val_every=10**9, log_every=50))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ckpt = pretrain(spec, str(data), storage=str(tmp / "runs"))["checkpoint_uri"]
        ray.shutdown()
        convert_digits(tmp / "digits", progress=False)
        digits = str(tmp / "digits")
        model, _ = transfer.load_checkpoint(ckpt)
        (train, test), t_feat = timed(lambda: [transfer.extract_features(model, digits, s, 32) for s in ("train", "test")])
        rows.append(("feature extraction, digits train+test (1797 images, 32 px)", t_feat))
        _, t_fs = timed(lambda: ridge.fewshot_accuracy(*train, *test, 10, seeds=3))
        rows.append(("few-shot protocol, digits features (D=64, K=10)", t_fs))
        rng = np.random.default_rng(0)
        k, d = 1000, 768
        train_y = np.repeat(np.arange(k), 25)
        big_train = rng.normal(size=(len(train_y), d)).astype(np.float32)
        test_y = rng.integers(0, k, 50_000)
        big_test = rng.normal(size=(50_000, d)).astype(np.float32)
        _, t_big = timed(lambda: ridge.fewshot_accuracy(big_train, train_y, big_test, test_y, k, seeds=3))
        rows.append(("few-shot protocol, ImageNet-shaped features (D=768, K=1000, 50k test)", t_big))
        settings = transfer.FinetuneSettings(steps=400, batch_size=64, min_crop_area=1.0)
        _, t_ft = timed(lambda: transfer.finetune_once(ckpt, digits, 0.1, settings, evaluate_on="test"))
        rows.append(("one fine-tuning trial, micro ViT on digits (400 steps x 64)", t_ft))
    print(f"# CPU, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| what | seconds |")
    print("|---|---|")
    for what, seconds in rows:
        print(f"| {what} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
