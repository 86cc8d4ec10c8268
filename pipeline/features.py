"""Pre-logits features of a model on a dataset split: what the few-shot probes fit, after
pretraining (``pipeline.transfer``) and during it (``pretrain.Probes``)."""
from __future__ import annotations

import numpy as np
import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def extract_features(model: torch.nn.Module, data_path: str, split: str, image_size: int, *,
                     batch_size: int = 256, device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logits features and integer labels of a whole split (resize + center crop)."""
    from pipeline.data import LoaderSpec, make_loader
    device = device or default_device()
    model = model.to(device).eval()
    feats, labels = [], []
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        for batch in make_loader(LoaderSpec(data_path, split=split, train=False, batch_size=batch_size,
                                            image_size=image_size, label_format="index")):
            feats.append(model.features(batch.images.to(device)).float().cpu().numpy())
            labels.append(batch.labels.numpy())
    return np.concatenate(feats), np.concatenate(labels)


def load_split(data_path: str, split: str, image_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Every image of a split (resize + center crop) in one tensor, with integer labels: for small
    sets probed many times (``pretrain.Probes``), decoded once."""
    from pipeline.data import LoaderSpec, make_loader
    batches = list(make_loader(LoaderSpec(data_path, split=split, train=False, batch_size=256, image_size=image_size,
                                          label_format="index")))
    return torch.cat([b.images for b in batches]), np.concatenate([b.labels.numpy() for b in batches])


def features_of(model: torch.nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Pre-logits features of ``images`` (the model is left in eval mode)."""
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        return np.concatenate([model.features(chunk.to(device)).float().cpu().numpy()
                               for chunk in images.split(batch_size)])
