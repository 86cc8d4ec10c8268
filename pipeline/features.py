"""Pre-logits features of a model on a dataset split: what the few-shot probes fit, after
pretraining and during it (``pipeline.transfer.fewshot``)."""
from __future__ import annotations

import functools

import numpy as np
import torch

from pipeline.data import num_classes
from pipeline.data.loader import LoaderSpec, make_loader
from pipeline.ridge import sample_shots


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def extract_features(model: torch.nn.Module, data_path: str, split: str, image_size: int, *,
                     batch_size: int = 256, device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logits features and integer labels of a whole split (resize + center crop)."""
    device = device or default_device()
    model = model.to(device).eval()
    feats, labels = [], []
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        for batch in make_loader(LoaderSpec(data_path, split=split, train=False, batch_size=batch_size,
                                            image_size=image_size, label_format="index")):
            feats.append(model.features(batch.images.to(device)).float().cpu().numpy())
            labels.append(batch.labels.numpy())
    return np.concatenate(feats), np.concatenate(labels)


def load_split(data_path: str, split: str, image_size: int, fraction: float | None = None
               ) -> tuple[torch.Tensor, np.ndarray]:
    """Every image of a split (or of its nested random ``fraction``; resize + center crop) in one
    tensor, with integer labels: for small sets probed many times (``probe_sets``), decoded once."""
    batches = list(make_loader(LoaderSpec(data_path, split=split, train=False, batch_size=256, image_size=image_size,
                                          label_format="index", fraction=fraction)))
    return torch.cat([b.images for b in batches]), np.concatenate([b.labels.numpy() for b in batches])


# The learning curves' probes draw their examples from this nested random part of a set's train split
# (the same rows for every run) when it holds the largest shot count of every class: on digits it
# halves the decoding each run pays once (0.63 s -> bench/RESULTS.md), the probes' largest share of
# a short run's time.
PROBE_POOL_FRACTION = 0.3


@functools.lru_cache(maxsize=8)
def probe_sets(data_path: str, image_size: int, shots: int) -> tuple[tuple, tuple, int]:
    """What a run's few-shot probes of one set need, decoded once: ``shots`` train images per class
    (drawn once, seed 0, from the nested ``PROBE_POOL_FRACTION`` of the train split when that has
    enough of every class, else from all of it), the whole test split, and the class count. Kept for
    the process (a run probes its sets at every validation): callers must not change the tensors."""
    classes = num_classes(data_path)
    images, labels = load_split(data_path, "train", image_size, fraction=PROBE_POOL_FRACTION)
    if np.bincount(labels, minlength=classes).min() < shots:
        images, labels = load_split(data_path, "train", image_size)
    keep = sample_shots(labels, shots, seed=0, num_classes=classes)
    return (images[keep], labels[keep]), load_split(data_path, "test", image_size), classes


def features_of(model: torch.nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Pre-logits features of ``images`` (the model is left in eval mode)."""
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        return np.concatenate([model.features(chunk.to(device)).float().cpu().numpy()
                               for chunk in images.split(batch_size)])
