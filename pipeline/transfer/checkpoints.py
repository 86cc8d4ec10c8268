"""A pretrained checkpoint and the downstream data it is evaluated on: loading checkpoints (this
pipeline's or timm's), pre-logits features with a cache keyed by content, downstream datasets
found by name or made on first use (``digits``)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from models import build_model
from models.timm_import import load_timm
from pipeline import storage as store
from pipeline.data import open_dataset
from pipeline.data.digits import convert_digits
from pipeline.data.format import MANIFEST_NAME
from pipeline.features import extract_features
from pipeline.pretrain.checkpoint import STATE_FILE, load_state, state_file


def load_checkpoint(path: str | os.PathLike, timm_name: str | None = None) -> tuple[torch.nn.Module, dict]:
    """A pretrained model with its pretraining head, and facts about it.

    ``path``: a pretraining checkpoint of this pipeline (the Ray Train checkpoint folder, or its
    ``state.pt``), or with ``timm_name`` a timm state-dict file (``.pth``/``.bin``)."""
    path = store.fetch(path, "checkpoints")  # a remote checkpoint: this node's cached copy
    if timm_name:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = load_timm(timm_name, state.get("state_dict", state) if isinstance(state, dict) else state)
        return model, {"model": timm_name, "image_size": model.image_size, "source": "timm"}
    if not state_file(path).is_file():
        raise FileNotFoundError(f"no pretraining checkpoint at {path}: expected a folder with {STATE_FILE} "
                                "(the checkpoint_uri tag of the MLflow run) or a timm file with --timm NAME")
    state = load_state(path)
    spec = state["spec"]
    weights = state["model"]
    model = build_model(spec["model"], num_classes=weights["head.fc.weight"].shape[0],
                        image_size=spec["recipe"]["image_size"],
                        pre_logits="head.pre_logits.fc.weight" in weights)
    model.load_state_dict(weights)
    return model, {"model": spec["model"], "image_size": spec["recipe"]["image_size"], "source": "pipeline",
                   "step": state.get("step"), "run_spec": spec}


def checkpoint_key(path: str | os.PathLike) -> str:
    """Identity of a checkpoint (folder or file, local or remote) for the feature cache: its
    location and its files' sizes and modification times, the same seen from every node."""
    return store.content_key(path)


def dataset_key(data_path: str | os.PathLike) -> str:
    return hashlib.sha1(store.read_bytes(store.join(data_path, MANIFEST_NAME))).hexdigest()[:16]


def cached_features(model, checkpoint: str, data_path: str, split: str, image_size: int, cache_dir: str | None,
                    **kw) -> tuple[np.ndarray, np.ndarray]:
    if cache_dir is None:
        return extract_features(model, data_path, split, image_size, **kw)
    path = Path(cache_dir) / f"{checkpoint_key(checkpoint)}-{dataset_key(data_path)}-{split}-{image_size}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["features"], z["labels"]
    x, y = extract_features(model, data_path, split, image_size, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, features=x, labels=y)
    tmp.replace(path)
    return x, y


def builtin_dataset(name: str, data_root: str, progress: bool = True) -> str | None:
    """The location of a built-in downstream set (``digits``), made under ``data_root`` (a folder
    or a URI) on first use; None for other names."""
    if name != "digits":
        return None
    target = store.join(data_root, "digits")
    if not store.is_file(store.join(target, "manifest.json")):  # written last: complete
        convert_digits(target, progress=progress)
    return target


def resolve_dataset(name_or_path: str, data_root: str) -> tuple[str, str]:
    """(name, location): an existing dataset (folder or URI), or a built-in downstream set made
    on first use under ``data_root`` (``digits``)."""
    if store.is_file(store.join(name_or_path, "manifest.json")):
        return open_dataset(name_or_path).name, store.resolve(name_or_path)
    built = builtin_dataset(name_or_path, data_root)
    if built is not None:
        return name_or_path, built
    raise ValueError(f"dataset {name_or_path!r} is neither a dataset folder (with manifest.json) nor a built-in "
                     "name (digits); make one with `python -m pipeline.data convert|digits|synth`")
