"""Forward+backward training throughput of the paper's models on this machine.

    python bench/bench_models.py                       # ViT-B/16 and R50x1, batch 8, 224 px, CPU
    python bench/bench_models.py --device cuda --dtype bf16 --batch-size 128

Each model is timed next to a baseline in the same run, reported as a ratio:
  ViT:    our attention (F.scaled_dot_product_attention) vs explicit softmax(QK^T)V ("math");
  ResNet: our weight-standardized convolutions vs the same network with standardization skipped
          (the price of WS).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import build_model, model_spec  # noqa: E402
import models.layers as layers  # noqa: E402
import models.vit as vit  # noqa: E402


def math_attention(q, k, v, dropout_p=0.0):
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return F.dropout(attn.softmax(-1), dropout_p) @ v


@contextlib.contextmanager
def baseline(family: str):
    """Swap in the baseline variant of the one component being compared."""
    if family == "resnet":
        saved, layers.standardize_weight = layers.standardize_weight, lambda w, eps=0.0: w
    else:
        saved, vit.F = vit.F, type("F", (), {**{k: getattr(F, k) for k in dir(F) if not k.startswith("_")},
                                             "scaled_dot_product_attention": staticmethod(math_attention)})
    try:
        yield
    finally:
        if family == "resnet":
            layers.standardize_weight = saved
        else:
            vit.F = saved


def train_step_seconds(model, x, target, autocast) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with autocast:
        loss = F.binary_cross_entropy_with_logits(model(x).float(), target)
    loss.backward()
    model.zero_grad(set_to_none=True)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(model, family, batch_size, image_size, device, dtype, iters, warmup) -> tuple[float, float]:
    """Images/s of (ours, baseline), timed in alternation (ABAB...) so that any load on the
    machine hits both sides alike; medians over ``iters`` steps each."""
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    target = torch.zeros(batch_size, model.head.fc.out_features, device=device)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if dtype == "bf16"
                else contextlib.nullcontext())
    ours, base = [], []
    for i in range(warmup + iters):
        t_ours = train_step_seconds(model, x, target, autocast)
        with baseline(family):
            t_base = train_step_seconds(model, x, target, autocast)
        if i >= warmup:
            ours.append(t_ours)
            base.append(t_base)
    return batch_size / statistics.median(ours), batch_size / statistics.median(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ViT-B/16", "R50x1"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    device = torch.device(args.device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"# torch {torch.__version__} on {where}; batch {args.batch_size}, {args.image_size}px, {args.dtype}, "
          f"median of {args.iters} steps after {args.warmup} warm-up, ours/baseline alternating", flush=True)
    print("| model | ours img/s | baseline img/s | baseline | ours / baseline |")
    print("|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        family = model_spec(name).family
        model = build_model(name, num_classes=1000, image_size=args.image_size).to(device)
        torch.nn.init.normal_(model.head.fc.weight, std=0.01)  # let gradients reach the trunk
        ours, base = compare(model, family, args.batch_size, args.image_size, device, args.dtype, args.iters,
                             args.warmup)
        what = "no weight standardization" if family == "resnet" else "math attention"
        print(f"| {name} | {ours:.2f} | {base:.2f} | {what} | {ours / base:.2f} |", flush=True)
        print(json.dumps({"model": name, "images_per_s": ours, "baseline_images_per_s": base, "baseline": what,
                          "batch_size": args.batch_size, "image_size": args.image_size, "dtype": args.dtype,
                          "device": where}), file=sys.stderr)


if __name__ == "__main__":
    main()
