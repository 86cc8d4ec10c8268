"""Pretraining compute in the paper's units.

    pretraining exaFLOPs = 2 (FLOPs per multiply-add) x 3 (forward + backward)
                           x forward MACs per image x images seen / 1e18

Forward multiply-adds are counted by fvcore on the real module at the pretraining resolution
(batch 1), with a handle for ``scaled_dot_product_attention`` (fvcore skips it silently otherwise:
about 4% of ViT-B/16), and none for weight standardization (``batch_norm`` over a kernel: a weight
op, which the paper does not count; fvcore would add 2.3% to R50x1). Any other op that fvcore does
not count and that is not known to be negligible (element-wise, pooling, padding, shape ops) is an
error, never a silent undercount.
Counts are cached on disk (they take seconds for the largest models): ``$VIT_SCALING_CACHE`` or
``~/.cache/vit-scaling``.

CLI: python -m pipeline.compute MODEL [MODEL ...] [--image-size 224] [--epochs 7] [--dataset-size 303M] [--json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from models import ModelSpec, UnknownModelError, build_model, model_spec
from pipeline import exits

FLOPS_PER_MAC = 2
FORWARD_AND_BACKWARD = 3
JFT_IMAGES = 303_000_000
GFLOPS_PER_EXAFLOP = 1e9  # compute/gflops: micro runs read 443.5, not 4.435e-07 cut off in MLflow's table

# Ops fvcore does not count that cost nothing next to the matmuls and convolutions: element-wise
# arithmetic and activations, reductions over activations (pooling, weight standardization over
# weights), padding and pure shape/layout ops.
NEGLIGIBLE_OPS = frozenset(f"aten::{op}" for op in """
    add add_ sub sub_ rsub mul mul_ div div_ sqrt rsqrt pow square neg exp log abs clamp clamp_min
    relu relu_ gelu tanh sigmoid silu softmax log_softmax dropout dropout_ feature_dropout
    mean sum var var_mean std max_pool2d avg_pool2d adaptive_max_pool2d
    pad constant_pad_nd cat stack flatten reshape view permute transpose expand expand_as select slice
    contiguous clone copy_ zeros zeros_like ones ones_like full full_like empty empty_like to type_as
    unbind chunk split squeeze unsqueeze narrow repeat index index_select gather t numpy_T detach
    scalar_tensor size floor_divide floor ceil Int Float ScalarImplicit NumToTensor
""".split())


class UncountedOpsError(RuntimeError):
    pass


def _sdpa_macs(inputs: list, outputs: list) -> int:
    """q (..., L, E), k (..., S, E), v (..., S, Ev): QK^T is L*S*E, AV is L*S*Ev multiply-adds."""
    from fvcore.nn.jit_handles import get_shape
    q, k, v = (get_shape(inputs[i]) for i in range(3))
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _batch_norm_macs(inputs: list, outputs: list) -> int:
    """None for weight standardization (models.layers.standardize_weight: a (1, out, in*kh*kw)
    kernel, no running statistics); fvcore's own count for a batch norm over activations."""
    from fvcore.nn.jit_handles import batchnorm_flop_jit, get_shape
    shape = get_shape(inputs[0])
    if len(shape) == 3 and shape[0] == 1 and inputs[3].type().kind() == "NoneType":
        return 0
    return batchnorm_flop_jit(inputs, outputs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_macs(model: nn.Module, image_size: int = 224, in_chans: int = 3) -> int:
    """Forward multiply-adds for one image, counted by fvcore. Count the original module, not a
    ``torch.compile``d one (fvcore cannot trace those)."""
    from fvcore.nn import FlopCountAnalysis
    model = getattr(model, "_orig_mod", model)
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, in_chans, image_size, image_size,
                        device=next(model.parameters()).device)
        analysis = FlopCountAnalysis(model, x)
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
        analysis.set_op_handle("aten::batch_norm", _batch_norm_macs)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        with torch.no_grad():
            total = analysis.total()
        uncounted = {op: n for op, n in analysis.unsupported_ops().items() if op not in NEGLIGIBLE_OPS}
    finally:
        model.train(was_training)
    if uncounted:
        raise UncountedOpsError(
            f"fvcore could not count these ops of {type(model).__name__}: {uncounted}. Register a handle "
            "for each in pipeline/compute.py (see _sdpa_macs), or, if one truly costs nothing, add it to "
            "NEGLIGIBLE_OPS there.")
    return int(total)


def pretrain_exaflops(forward_macs_per_image: float, images_seen: float) -> float:
    """The paper's convention: 2 x 3 x forward MACs x images seen / 1e18."""
    return FLOPS_PER_MAC * FORWARD_AND_BACKWARD * forward_macs_per_image * images_seen / 1e18


_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMbBgG]?)\s*$")
_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def parse_count(text: str | int) -> int:
    """'303M' -> 303_000_000, '1.3M' -> 1_300_000, '9M', '14k', '1000', 1000."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"count {text} is negative: give a whole, non-negative number of items")
        return text
    m = _SIZE_RE.match(str(text).replace("_", "").replace(",", ""))
    if not m:
        raise ValueError(f"cannot read {text!r} as a count: use an integer or a number with k/M/B, e.g. 303M or 1.3M")
    value = float(m[1]) * _SIZE_UNITS[m[2].lower()]
    if value != int(value) or value < 0:
        raise ValueError(f"count {text!r} is not a whole, non-negative number of items")
    return int(value)


@dataclass(frozen=True)
class ModelCompute:
    model: str
    params: int
    forward_gmacs: float
    image_size: int
    images_seen: int
    exaflops: float


def _cache_file() -> Path:
    root = os.environ.get("VIT_SCALING_CACHE") or Path.home() / ".cache" / "vit-scaling"
    return Path(root) / "forward_macs.json"


def _cache_key(spec: ModelSpec, image_size: int, num_classes: int) -> str:
    # The name is not part of the key: identical shapes cost the same.
    shape = {k: v for k, v in spec.to_dict().items() if k != "name"}
    return json.dumps({"shape": shape, "image_size": image_size, "num_classes": num_classes,
                       "counter": "fvcore+sdpa-v1"}, sort_keys=True)


def _count_uncached(spec: ModelSpec, image_size: int, num_classes: int) -> dict[str, int]:
    # Weights are left uninitialized: their values do not change the count, and initializing
    # (or zeroing) a ViT-H costs more than counting it.
    with torch.device("meta"):
        model = build_model(spec, num_classes=num_classes, image_size=image_size, pre_logits=False)
    model = model.to_empty(device="cpu")
    torch.set_flush_denormal(True)  # garbage weights may be denormal: they would slow the count down
    try:
        return {"forward_macs": forward_macs(model, image_size), "params": count_params(model)}
    finally:
        torch.set_flush_denormal(False)  # the process-wide default; training must not inherit ours


def model_counts(model: str | Mapping[str, Any] | ModelSpec, image_size: int = 224, num_classes: int = 1000,
                 use_cache: bool = True, progress: bool = False) -> dict[str, int]:
    """{'forward_macs', 'params'} of a model with a linear ``num_classes`` head (the convention of
    public parameter counts and of the paper's compute), from the cache when possible."""
    spec = model_spec(model)
    key, path = _cache_key(spec, image_size, num_classes), _cache_file()
    cache: dict[str, Any] = {}
    if use_cache and path.exists():
        try:
            cache = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}  # a damaged cache is only a cache: recount
    if key in cache:
        return cache[key]
    if progress:
        print(f"[compute] counting forward MACs of {spec.name} at {image_size}px with fvcore (once: cached in "
              f"{path.parent})", file=sys.stderr, flush=True)
    counts = _count_uncached(spec, image_size, num_classes)
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            cache[key] = counts
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
            tmp.replace(path)  # atomic: concurrent writers never leave a half-written file
        except OSError as err:
            print(f"warning: could not write the MAC cache {path}: {err}", file=sys.stderr)
    return counts


def model_compute(model: str | Mapping[str, Any] | ModelSpec, image_size: int = 224, epochs: float = 7,
                  dataset_size: int = JFT_IMAGES, num_classes: int = 1000, use_cache: bool = True,
                  progress: bool = False) -> ModelCompute:
    spec = model_spec(model)
    counts = model_counts(spec, image_size, num_classes, use_cache, progress)
    images_seen = round(epochs * dataset_size)
    return ModelCompute(model=spec.name, params=counts["params"], forward_gmacs=counts["forward_macs"] / 1e9,
                        image_size=image_size, images_seen=images_seen,
                        exaflops=pretrain_exaflops(counts["forward_macs"], images_seen))


def format_table(rows: Iterable[ModelCompute]) -> str:
    header = ("model", "params", "fwd GMACs", "image", "images seen", "exaFLOPs")
    lines = [(r.model, f"{r.params / 1e6:.2f}M", f"{r.forward_gmacs:.2f}", f"{r.image_size}px",
              f"{r.images_seen:,}", f"{r.exaflops:,.1f}") for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.compute",
        description="Parameters, forward multiply-adds per image (fvcore) and pretraining exaFLOPs in the "
                    "ViT paper's convention (2 x 3 x forward MACs x images seen / 1e18).")
    parser.add_argument("models", nargs="+", metavar="MODEL", help="paper names, e.g. ViT-B/16 R50x1 R50+ViT-B/16")
    parser.add_argument("--image-size", type=int, default=224, help="pretraining resolution (default 224)")
    parser.add_argument("--epochs", type=float, default=7, help="pretraining epochs (default 7)")
    parser.add_argument("--dataset-size", default="303M", help="pretraining images per epoch: 303M, 9M, 1.3M or an integer")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier width counted (default 1000)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    exits.add_debug_flag(parser)
    args = parser.parse_args(argv)
    try:
        dataset_size = parse_count(args.dataset_size)
        specs = [model_spec(name) for name in args.models]
    except (UnknownModelError, ValueError) as err:
        parser.error(str(err))
    if args.image_size < 1 or args.epochs < 0 or args.num_classes < 1:
        parser.error("--image-size and --num-classes must be positive and --epochs non-negative")
    try:
        rows = [model_compute(s, args.image_size, args.epochs, dataset_size, args.num_classes, progress=True)
                for s in specs]
    except ValueError as err:  # e.g. an image size that is not a multiple of the patch size
        parser.error(str(err))
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    exits.end(exits.run(main))
