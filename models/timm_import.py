"""Start from public checkpoints: load timm-format state dicts into our models.

Supported timm families (token-pooled ViTs, BiT ResNet-v2s, R50 hybrids):
    vit_{tiny,small,base,large,huge}_patch{P}_{res}   -> ViT-{Ti,S,B,L,H}/P
    resnetv2_{50,101,152}x{W}_bit                     -> R{depth}x{W}
    vit_{base,large}_r50_s{16,32}_{res}               -> R50+ViT-{B,L}/{16,32}
Pretrained tags (``.augreg_in21k``) and ``_in21k`` suffixes are accepted and ignored.

Our modules use timm's names for the trunk, so only the head differs: timm's ``head.weight``
(ViT) or 1x1-conv ``head.fc.weight`` (BiT) and old ``pre_logits.fc`` become our ``head.fc`` and
``head.pre_logits.fc``. The class count, the pre-logits layer and (for ViTs) the resolution are read
from the checkpoint's shapes.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

import torch
from torch import nn

from models.registry import UnknownModelError, build_model, model_spec

_VIT_SIZES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
_VIT = re.compile(r"^vit_(tiny|small|base|large|huge)_patch(\d+)_(\d+)$")
_BIT = re.compile(r"^resnetv2_(50|101|152)x(\d+)_bit$")
_HYBRID = re.compile(r"^vit_(base|large)_r50_s(16|32)_(\d+)$")


def paper_name(timm_name: str) -> tuple[str, int | None]:
    """timm model name -> (our paper name, the name's resolution or None)."""
    base = timm_name.split(".")[0].removesuffix("_in21k").removesuffix("m")  # old 'bitm' names
    if m := _VIT.match(base):
        return f"ViT-{_VIT_SIZES[m[1]]}/{m[2]}", int(m[3])
    if m := _BIT.match(base):
        return f"R{m[1]}x{m[2]}", None
    if m := _HYBRID.match(base):
        return f"R50+ViT-{_VIT_SIZES[m[1]]}/{m[2]}", int(m[3])
    raise ValueError(
        f"no known mapping from timm model {timm_name!r}: supported are vit_<size>_patch<P>_<res>, "
        "resnetv2_<50|101|152>x<W>_bit and vit_<base|large>_r50_s<16|32>_<res> (see models/timm_import.py)")


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename timm's head keys to ours; everything else keeps its name."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("fc_norm.") or key.startswith("norm_pre."):
            raise ValueError(
                f"checkpoint key {key!r}: this timm ViT uses a layer our models do not have "
                "(global-average pooling with fc_norm, or norm_pre); only token-pooled ViTs are supported")
        if key in ("head.weight", "head.bias"):
            key = "head.fc." + key.split(".")[1]
        elif key.startswith("pre_logits.fc."):
            key = "head." + key
        if key == "head.fc.weight" and value.ndim == 4:  # BiT's head is a 1x1 convolution
            value = value.flatten(1)
        out[key] = value
    return out


def load_timm(name: str, state_dict: Mapping[str, torch.Tensor], image_size: int | None = None) -> nn.Module:
    """Build the model matching a timm checkpoint and load its weights.

    name: a timm model name (``vit_base_patch16_224``) or one of our paper names (``ViT-B/16``).
    image_size: resolution to run at; ViT position embeddings are interpolated if it differs from
    the checkpoint's.
    """
    try:
        spec = model_spec(paper_name(name)[0])
    except ValueError as not_timm:
        try:
            spec = model_spec(name)  # one of our own paper names
        except UnknownModelError:
            raise ValueError(f"{not_timm}; nor is it one of our model names") from None
    weights = convert_state_dict(state_dict)
    head = weights.get("head.fc.weight")
    num_classes = 0 if head is None else head.shape[0]
    pre_logits = "head.pre_logits.fc.weight" in weights
    ckpt_size = image_size or 224
    if spec.family != "resnet":
        if "pos_embed" not in weights:
            raise ValueError(f"checkpoint for {spec.name} has no 'pos_embed': is it a ViT checkpoint?")
        grid = math.isqrt(weights["pos_embed"].shape[1] - 1)
        stride = spec.vit.patch_size * (4 * 2 ** (len(spec.resnet.blocks) - 1) if spec.resnet else 1)
        ckpt_size = grid * stride
    model = build_model(spec, num_classes=num_classes, image_size=ckpt_size, pre_logits=pre_logits)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit {spec.name}: missing keys {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
    if image_size and image_size != ckpt_size:
        model.set_image_size(image_size)
    return model
