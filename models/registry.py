"""Paper names -> model shapes -> modules.

Names (paper Table 1 and Sec. 4.1): ``ViT-B/16`` (size/patch, any patch size), ``R152x2``
(ResNet depth x width factor), ``R50+ViT-L/16`` (hybrid; trailing number = backbone downsampling,
16 or 32). Also ``ViT-Ti``, ``ViT-S`` and ``ViT-b`` (ViT-B with every hidden width halved).
Custom shapes are plain dicts (see ``ModelSpec.from_dict``), e.g. for micro models on a CPU:

    {"name": "vit-micro", "family": "vit", "depth": 2, "width": 64, "heads": 4, "mlp_dim": 128, "patch_size": 8}
    {"name": "bit-micro", "family": "resnet", "blocks": [1, 1, 1, 1], "width_factor": 0.25, "groups": 8}
    {"name": "hybrid-micro", "family": "hybrid", "blocks": [1, 1], "width_factor": 0.25, "groups": 8,
     "depth": 2, "width": 64, "heads": 4, "mlp_dim": 128}
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from models.bit import BLOCKS, ResNetShape, ResNetV2
from models.hybrid import build_hybrid
from models.vit import ViTShape, VisionTransformer

FAMILIES = ("vit", "resnet", "hybrid")

# Table 1 (Base/Large/Huge), DeiT's Ti/S, and the paper's "ViT-b" (Sec. 4.3): B with all hidden
# dimensions halved. We read "all hidden dimensions" as width and MLP size with the 12 heads kept
# (head dimension 32): with 6 heads it would simply be ViT-S.
VIT_SIZES = {
    "Ti": dict(depth=12, width=192, mlp_dim=768, heads=3),
    "S": dict(depth=12, width=384, mlp_dim=1536, heads=6),
    "b": dict(depth=12, width=384, mlp_dim=1536, heads=12),
    "B": dict(depth=12, width=768, mlp_dim=3072, heads=12),
    "L": dict(depth=24, width=1024, mlp_dim=4096, heads=16),
    "H": dict(depth=32, width=1280, mlp_dim=5120, heads=16),
}
# Hybrid backbones by total downsampling (paper Sec. 4.1 / Appendix B.1).
HYBRID_R50_BLOCKS = {32: (3, 4, 6, 3), 16: (3, 4, 9)}

# The models of the paper's scaling study (Sec. 4.4) and data study (Sec. 4.3), plus small ViTs.
PAPER_MODELS = (
    "ViT-Ti/16", "ViT-S/16", "ViT-b/32",
    "ViT-B/32", "ViT-B/16", "ViT-L/32", "ViT-L/16", "ViT-H/14",
    "R50x1", "R50x2", "R50x3", "R101x1", "R152x1", "R152x2", "R200x3",
    "R50+ViT-B/32", "R50+ViT-B/16", "R50+ViT-L/32", "R50+ViT-L/16",
)

_VIT_RE = re.compile(r"^ViT-(Ti|S|b|B|L|H)/(\d+)$")
_RESNET_RE = re.compile(r"^R(\d+)x(\d+)$")
_HYBRID_RE = re.compile(r"^R50\+ViT-(Ti|S|b|B|L|H)/(\d+)$")


class UnknownModelError(ValueError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    """What a model is, as plain data: family, name and shape(s). Hashable and comparable."""
    name: str
    family: str
    vit: ViTShape | None = None
    resnet: ResNetShape | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "family": self.family}
        for part in (self.resnet, self.vit):
            if part is not None:
                out.update(dataclasses.asdict(part))
        if "blocks" in out:
            out["blocks"] = list(out["blocks"])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        """Custom shape from plain data. Errors name the field and what is allowed."""
        data = dict(data)
        family = data.pop("family", None)
        if family not in FAMILIES:
            raise UnknownModelError(f"custom model: 'family' must be one of {', '.join(FAMILIES)}, got {family!r}")
        name = str(data.pop("name", f"custom-{family}"))
        vit_fields = {f.name for f in dataclasses.fields(ViTShape)}
        resnet_fields = {f.name for f in dataclasses.fields(ResNetShape)}
        allowed = {"vit": vit_fields, "resnet": resnet_fields, "hybrid": vit_fields | resnet_fields}[family]
        unknown = set(data) - allowed
        if unknown:
            raise UnknownModelError(f"custom model {name!r}: unknown field(s) {sorted(unknown)}; "
                                    f"a {family} model takes {sorted(allowed)}")
        if family == "hybrid":
            data.setdefault("patch_size", 1)
        try:
            vit = ViTShape(**{k: int(data[k]) for k in vit_fields}) if family != "resnet" else None
            resnet = (ResNetShape(**{k: data[k] for k in resnet_fields if k in data})
                      if family != "vit" else None)
        except KeyError as missing:
            raise UnknownModelError(f"custom model {name!r}: missing field {missing.args[0]!r}; "
                                    f"a {family} model needs {sorted(allowed)}") from None
        except (TypeError, ValueError) as err:
            raise UnknownModelError(f"custom model {name!r}: {err}") from None
        return cls(name=name, family=family, vit=vit, resnet=resnet)


def model_spec(model: str | Mapping[str, Any] | ModelSpec) -> ModelSpec:
    """Resolve a paper name (``ViT-B/16``), a custom-shape dict, or a spec."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, Mapping):
        return ModelSpec.from_dict(model)
    name = str(model).strip()
    if m := _VIT_RE.match(name):
        return ModelSpec(name, "vit", vit=ViTShape(**VIT_SIZES[m[1]], patch_size=int(m[2])))
    if (m := _RESNET_RE.match(name)) and int(m[1]) in BLOCKS:
        return ModelSpec(name, "resnet", resnet=ResNetShape(BLOCKS[int(m[1])], int(m[2])))
    if (m := _HYBRID_RE.match(name)) and int(m[2]) in HYBRID_R50_BLOCKS:
        return ModelSpec(name, "hybrid", vit=ViTShape(**VIT_SIZES[m[1]], patch_size=1),
                         resnet=ResNetShape(HYBRID_R50_BLOCKS[int(m[2])]))
    raise UnknownModelError(
        f"unknown model {name!r}. Valid names: {', '.join(PAPER_MODELS)}; also ViT-<Ti|S|b|B|L|H>/<patch> "
        f"for any patch size, R<{'|'.join(map(str, BLOCKS))}>x<width>, R50+ViT-<size>/<16|32>, or a custom "
        "shape given as a dict with a 'family' key (see models/registry.py)")


def build_model(model: str | Mapping[str, Any] | ModelSpec, num_classes: int = 1000, image_size: int = 224,
                pre_logits: bool | None = None, **options: Any) -> nn.Module:
    """Build a model by paper name or custom shape.

    pre_logits: add the paper's tanh pre-logits layer (width D) before the classifier. Default:
    True for ViT and hybrids (the paper's pretraining head), False for BiT ResNets (BiT has none).
    options: ``pool`` ("token"|"gap"), ``dropout``, ``attention_dropout`` for ViT/hybrid; ``in_chans``.
    """
    spec = model_spec(model)
    if pre_logits is None:
        pre_logits = spec.family != "resnet"
    if spec.family == "resnet":
        if set(options) - {"in_chans"}:
            raise TypeError(f"{spec.name}: ResNets take no options {sorted(set(options) - {'in_chans'})}")
        width = spec.resnet.out_widths[-1]
        return ResNetV2(spec.resnet, num_classes, image_size, width if pre_logits else None, **options)
    representation = spec.vit.width if pre_logits else None
    kwargs = dict(num_classes=num_classes, image_size=image_size, representation_size=representation, **options)
    if spec.family == "vit":
        return VisionTransformer(spec.vit, **kwargs)
    return build_hybrid(spec.resnet, spec.vit, **kwargs)
