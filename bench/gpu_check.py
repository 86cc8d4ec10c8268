"""Training throughput and MFU of the paper's models on one GPU, and the loader on that machine.

    bash bench/gpu_check.sh               # on a GPU machine: writes a Markdown table (stdout and --out)
    bash bench/gpu_check.sh --dry         # CPU, micro models, 2 steps: checks the script itself

The step is the pretraining step's recipe (pipeline.pretrain): bf16 autocast, sigmoid
cross-entropy, global-norm clipping at 1, AdamW with decoupled weight decay on kernels (fused on
CUDA), uint8 batches normalised on the device. MFU = 6 x forward MACs (fvcore, pipeline.compute)
x images/s / the device's dense bf16 peak. Each model is timed eager and, unless --no-compile,
compiled with torch.compile (compile time reported separately). The loader line measures
``pipeline.data.make_loader`` on a synthetic 224-px dataset made on the spot.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import build_model, model_spec  # noqa: E402
from pipeline.compute import FLOPS_PER_MAC, FORWARD_AND_BACKWARD, model_counts  # noqa: E402
from pipeline.data.images import normalize_images  # noqa: E402
from pipeline.pretrain import param_groups, peak_tflops, sigmoid_xent  # noqa: E402

DRY_MODELS = ['{"name": "vit-micro", "family": "vit", "depth": 2, "width": 64, "heads": 4, "mlp_dim": 128, '
              '"patch_size": 8}',
              '{"name": "bit-micro", "family": "resnet", "blocks": [1, 1, 1, 1], "width_factor": 0.25, "groups": 8}']


def model_arg(name: str):
    """A paper name, or a custom shape given as JSON (the dry mode's micro models)."""
    return json.loads(name) if name.startswith("{") else name


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model, optimizer, device, channels_last: bool):
    """One optimizer step on a uint8 batch, as in pretraining (bf16 autocast on CUDA)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def step(images_u8: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = normalize_images(images_u8)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = sigmoid_xent(model(x), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def time_model(name: str, *, batch: int, image_size: int, device: torch.device, compile_: bool,
               channels_last: bool, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    spec = model_spec(model_arg(name))
    model = build_model(spec, num_classes=1000, image_size=image_size).to(device)
    torch.nn.init.normal_(model.head.fc.weight, std=0.01)  # zero head: no gradient would reach the trunk
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, fused=device.type == "cuda")
    train_model = torch.compile(model) if compile_ else model
    step = make_step(train_model, optimizer, device, channels_last)
    images = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, device=device)
    targets = torch.zeros(batch, 1000, device=device)
    targets[torch.arange(batch), torch.randint(0, 1000, (batch,))] = 1.0
    t0 = time.perf_counter()
    losses = [float(step(images, targets))]   # first step: compilation, cuDNN autotuning
    sync(device)
    first_s = time.perf_counter() - t0
    for _ in range(warmup):
        step(images, targets)
    times = []
    for _ in range(steps):
        sync(device)
        t = time.perf_counter()
        loss = step(images, targets)
        sync(device)
        times.append(time.perf_counter() - t)
    losses.append(float(loss))
    per_s = batch / statistics.median(times)
    macs = model_counts(spec, image_size, 1000)["forward_macs"]
    tflops = FLOPS_PER_MAC * FORWARD_AND_BACKWARD * macs * per_s / 1e12
    peak = peak_tflops(device, "bf16")
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return {"model": spec.name,
            "mode": ("compiled" if compile_ else "eager") + (" channels-last" if channels_last else ""),
            "batch": batch, "images_per_s": per_s, "tflops": tflops, "mfu": tflops / peak if peak else None,
            "first_step_s": first_s, "peak_mem_gib": mem, "loss_first": losses[0], "loss_last": losses[-1],
            "step_ms_spread": [1e3 * min(times), 1e3 * max(times)]}


def time_loader(image_size: int, images: int, workers: list[int], dtype: str) -> list[dict]:
    from pipeline.data import LoaderSpec, make_loader
    from pipeline.data.synth import SynthSpec, generate
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        data = generate(Path(tmp) / "synth", SynthSpec(images=images, classes=100, image_size=image_size,
                                                       shards=16, seed=0), executor="processes",
                        progress=False)
        for n in workers:
            loader = make_loader(LoaderSpec(data, batch_size=min(256, images // 8), image_size=224,
                                            train=True, image_dtype=dtype, min_crop_area=0.05), num_workers=n)
            t, count = time.perf_counter(), 0
            for batch in loader:
                count += len(batch.images)
            out.append({"loader_workers": n, "image_dtype": dtype, "images_per_s": count / (time.perf_counter() - t),
                        "stored_px": image_size, "images": count})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="CPU, micro models, 2 steps (checks the script)")
    parser.add_argument("--models", nargs="+", default=["ViT-B/16", "R50x1", "R50+ViT-B/16"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--loader-images", type=int, default=8192)
    parser.add_argument("--out", default=None, help="also write the JSON lines here")
    args = parser.parse_args()
    if args.dry:
        args.models, args.batch_size, args.steps, args.warmup, args.loader_images = DRY_MODELS, 4, 2, 1, 64
        args.no_compile = True  # compiling costs a minute per model on a CPU
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry else "cpu")
    image_size = 32 if args.dry else 224
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(f"# gpu_check: torch {torch.__version__} on {where}, {os.cpu_count()} CPUs; {image_size}px, "
          f"batch {args.batch_size}, median of {args.steps} steps after {args.warmup}", flush=True)
    sink = open(args.out, "a") if args.out else None
    rows = []
    for name in args.models:
        family = model_spec(model_arg(name)).family
        modes = [(False, False)] + ([(False, True)] if family == "resnet" else [])
        if not args.no_compile:
            modes.append((True, family == "resnet"))
        for compile_, channels_last in modes:
            try:
                row = time_model(name, batch=args.batch_size, image_size=image_size, device=device, compile_=compile_,
                                 channels_last=channels_last, steps=args.steps, warmup=args.warmup)
            except Exception as err:  # one failing variant must not lose the others' numbers
                row = {"model": name, "mode": f"{'compiled' if compile_ else 'eager'}", "error": repr(err)[:300]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if sink:
                print(json.dumps(row), file=sink, flush=True)
    cpus = os.cpu_count() or 1
    for dtype in ("uint8", "float32"):
        try:
            loader_rows = time_loader(64 if args.dry else 256, args.loader_images,
                                      [0, 2] if args.dry else [0, min(8, cpus), cpus], dtype)
        except Exception as err:
            loader_rows = [{"loader": "failed", "error": repr(err)[:300]}]
        for row in loader_rows:
            print(json.dumps(row), flush=True)
            if sink:
                print(json.dumps(row), file=sink, flush=True)
    print("\n| model | mode | batch | img/s | TFLOP/s | MFU | first step s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['mode']} | failed: {r['error'][:80]} | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a"
        print(f"| {r['model']} | {r['mode']} | {r['batch']} | {r['images_per_s']:.0f} | {r['tflops']:.1f} | {mfu} "
              f"| {r['first_step_s']:.1f} | {r['peak_mem_gib']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
