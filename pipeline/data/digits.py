"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes) as a dataset
with a train and a test split: real data that needs no download, the built-in downstream set of
the tiny and smoke studies."""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline import storage
from pipeline.data.convert import array_job, open_output, publish_manifest, record_split, shard_jobs
from pipeline.data.parallel import run_jobs


DIGITS_TEST_FRACTION = 0.25


DIGITS_SPLIT_SEED = 0


def convert_digits(out, *, progress: bool = True) -> dict[str, Any]:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), real data that
    needs no download. Fixed stratified split: 1347 train / 450 test (random_state=0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values are 0..16
    index = np.arange(len(pixels))
    train_idx, test_idx = train_test_split(index, test_size=DIGITS_TEST_FRACTION,
                                           random_state=DIGITS_SPLIT_SEED, stratify=digits.target)
    out = storage.resolve(out)
    reports, manifest = [], None
    for split, idx in (("train", np.sort(train_idx)), ("test", np.sort(test_idx))):
        manifest = open_output(out, split, num_classes=10, multi_label=False, manifest=manifest,
                                class_names=[str(d) for d in range(10)], subset_seed=0,
                                source={"converter": "digits",
                                        "src": "sklearn.datasets.load_digits",
                                        "split": f"stratified, test_size={DIGITS_TEST_FRACTION}, "
                                                 f"random_state={DIGITS_SPLIT_SEED}"})
        jobs = shard_jobs(out, split, [([f"digits-{i:04d}" for i in idx], pixels[idx],
                                        [int(t) for t in digits.target[idx]], 0)])
        results = run_jobs(array_job, jobs, weights=[len(idx)], desc=f"digits {split}",
                           unit="img", executor="inline", progress=progress)
        reports.append(record_split(out, manifest, split, results, write=False))
    publish_manifest(out, manifest)  # both splits there: the dataset opens from now on
    return {"splits": reports}

