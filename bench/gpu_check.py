"""Training throughput and MFU of the paper's models on one GPU, and the loader on that machine.

    bash bench/gpu_check.sh               # on a GPU machine (about 7 minutes): Markdown tables (and --out)
    bash bench/gpu_check.sh --dry         # CPU, micro models, 2 steps: checks the script itself

The step is the pretraining step's recipe (pipeline.pretrain): bf16 autocast, sigmoid
cross-entropy, global-norm clipping at 1, AdamW with decoupled weight decay on kernels (fused on
CUDA), uint8 batches normalised on the device. MFU = 6 x forward MACs (fvcore, pipeline.compute)
x images/s / the device's dense bf16 peak. Each model is timed eager and, unless --no-compile,
compiled with torch.compile (compile time reported separately).

The loader rows read ImageNet-like photos made on the spot (``--photos``; bench/bench_photos.py:
real photographs re-cropped to 400-500 px, JPEG quality 90), converted at their original size and
at each ``--stored`` short side: ``pipeline.data.loader.make_loader`` alone (train crop + flip to 224,
uint8) with 0, 8 and all-but-one worker processes, then feeding the first model's step (its last
mode: compiled where compiled) as pretraining does (pinned batches, non-blocking copies), against
that step's rate on a batch already on the device.
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
from pipeline.hardware import peak_tflops  # noqa: E402
from pipeline.pretrain.recipe import param_groups, sigmoid_xent  # noqa: E402

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
               channels_last: bool, steps: int, warmup: int) -> tuple[dict, object]:
    """The row (images/s, MFU, ...) and the step it timed."""
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
            "step_ms_spread": [1e3 * min(times), 1e3 * max(times)]}, step


def photo_sets(root: Path, images: int, stored: list[int | None], processes: int) -> dict[str, Path]:
    """ImageNet-like photos (bench/bench_photos.py: real photographs re-cropped to 400-500 px,
    JPEG quality 90), converted as a user converts them: originals and each stored short side."""
    import bench_photos
    sizes = bench_photos.write_photo_folder(root / "photos", images, seed=0, processes=processes)
    print(f"# {len(sizes)} photos, mean {statistics.mean(sizes) / 1e3:.0f} kB, median "
          f"{statistics.median(sizes) / 1e3:.0f} kB", flush=True)
    sets = {}
    for side in stored:
        label = "original" if side is None else f"stored {side}"
        sets[label] = root / label.replace(" ", "")
        bench_photos.convert_cli(root / "photos", sets[label], side, shards=16)
    return sets


TIMED_BATCHES = 40


def steady_rate(batches, consume, batch_size: int, device: torch.device) -> tuple[float, int]:
    """Images/s through ``consume`` once the batches that could have been decoded ahead are
    through (the workers' prefetch queue, 2 batches each, filled while the first ones start:
    timed, they would flatter the loader; seen on the H200: 8.3k vs 5.4k images/s), and the
    images timed (at most TIMED_BATCHES batches: the script must stay within its 8 minutes).
    Partial batches are skipped: a compiled step would recompile for them."""
    skip = 3 + batches.prefetch_batches * batches.num_workers
    count, start, seen = 0, 0.0, 0
    for batch in batches:
        if len(batch.labels) != batch_size:
            continue
        consume(batch)
        seen += 1
        if seen == skip:
            sync(device)
            start = time.perf_counter()
        elif seen > skip:
            count += batch_size
            if seen == skip + TIMED_BATCHES:
                break
    sync(device)
    return (count / (time.perf_counter() - start) if count else float("nan")), count


def time_loader(sets: dict[str, Path], workers: list[int], batch: int, image_size: int) -> list[dict]:
    """``make_loader`` alone (uint8 out, train crop + flip), one epoch per row."""
    from pipeline.data.loader import LoaderSpec, make_loader
    rows = []
    for label, path in sets.items():
        for n in workers:
            loader = make_loader(LoaderSpec(path, batch_size=batch, image_size=image_size, train=True,
                                            image_dtype="uint8"), num_workers=n)
            per_s, count = steady_rate(loader, lambda b: None, batch, torch.device("cpu"))
            rows.append({"loader_workers": n, "stored": label, "images_per_s": per_s, "images": count})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def time_fed(sets: dict[str, Path], timed: dict, workers: int, batch: int, image_size: int,
             device: torch.device) -> list[dict]:
    """The training step fed by ``make_loader`` (``workers`` decode processes, pinned batches,
    non-blocking copies: the pretraining path) against the same step on a batch already on the
    device (``timed``: its row and step)."""
    from pipeline.data.loader import LoaderSpec, make_loader
    row, step = timed["row"], timed["step"]
    rows = []
    for label, path in sets.items():
        loader = make_loader(LoaderSpec(path, batch_size=batch, image_size=image_size, train=True,
                                        image_dtype="uint8"), num_workers=workers, pin_memory=device.type == "cuda")

        def consume(b) -> None:
            labels = b.labels.to(device, non_blocking=True)
            step(b.images.to(device, non_blocking=True),
                 torch.nn.functional.one_hot(labels.long(), 1000).float())
        per_s, count = steady_rate(loader, consume, batch, device)
        rows.append({"fed": row["model"], "mode": row["mode"], "stored": label, "loader_workers": workers,
                     "images_per_s": per_s, "images": count, "device_batch_images_per_s": row["images_per_s"],
                     "share_of_device_rate": per_s / row["images_per_s"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="CPU, micro models, 2 steps (checks the script)")
    parser.add_argument("--models", nargs="+", default=["ViT-B/16", "R50x1", "R50+ViT-B/16"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--photos", type=int, default=16384,
                        help="photos the loader rows read (default 16384: 64 batches of 256; with 15 workers "
                             "the first 33 are not timed)")
    parser.add_argument("--stored", type=int, nargs="*", default=[256],
                        help="stored short sides besides the originals (default 256)")
    parser.add_argument("--feed-workers", type=int, nargs="*", default=None,
                        help="loader workers of the fed rows (default: all CPUs but one)")
    parser.add_argument("--out", default=None, help="also write the JSON lines here")
    args = parser.parse_args()
    if args.dry:
        args.models, args.batch_size, args.steps, args.warmup, args.photos, args.stored = \
            DRY_MODELS, 4, 2, 1, 40, []
        args.no_compile = True  # compiling costs a minute per model on a CPU
    return args


def time_models(args, image_size: int, device: torch.device) -> tuple[list[dict], dict | None]:
    """Every model in every mode; also the first model's last mode (its row and step) to feed."""
    rows, feed = [], None
    for name in args.models:
        family = model_spec(model_arg(name)).family
        modes = [(False, False)] + ([(False, True)] if family == "resnet" else [])
        if not args.no_compile:  # BiT compiled both ways: the pipeline turns channels-last on where it helps
            modes += [(True, False)] + ([(True, True)] if family == "resnet" else [])
        for compile_, channels_last in modes:
            try:
                row, step = time_model(name, batch=args.batch_size, image_size=image_size, device=device,
                                       compile_=compile_, channels_last=channels_last, steps=args.steps,
                                       warmup=args.warmup)
                if name == args.models[0]:
                    feed = {"row": row, "step": step}
            except Exception as err:  # one failing variant must not lose the others' numbers
                row = {"model": name, "mode": f"{'compiled' if compile_ else 'eager'}", "error": repr(err)[:300]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows, feed


def print_tables(rows: list[dict], loader_rows: list[dict], fed_rows: list[dict]) -> None:
    print("\n| model | mode | batch | img/s | TFLOP/s | MFU | first step s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['mode']} | failed: {r['error'][:80]} | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a"
        print(f"| {r['model']} | {r['mode']} | {r['batch']} | {r['images_per_s']:.0f} | {r['tflops']:.1f} | {mfu} "
              f"| {r['first_step_s']:.1f} | {r['peak_mem_gib']:.1f} |")
    print("\n| photos | loader workers | img/s (loader alone, uint8) | img/s a worker |\n|---|---|---|---|")
    for r in loader_rows:
        print(f"| {r['stored']} | {r['loader_workers']} | {r['images_per_s']:.0f} "
              f"| {r['images_per_s'] / max(r['loader_workers'], 1):.0f} |")
    print("\n| photos | step fed | loader workers | img/s fed | img/s, batch on the device | share |\n|---|---|---|---|---|---|")
    for r in fed_rows:
        print(f"| {r['stored']} | {r['fed']} {r['mode']} | {r['loader_workers']} | {r['images_per_s']:.0f} "
              f"| {r['device_batch_images_per_s']:.0f} | {r['share_of_device_rate']:.0%} |")


def main() -> int:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry else "cpu")
    image_size = 32 if args.dry else 224
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    cpus = os.cpu_count() or 1
    print(f"# gpu_check: torch {torch.__version__} on {where}, {cpus} CPUs; {image_size}px, "
          f"batch {args.batch_size}, median of {args.steps} steps after {args.warmup}", flush=True)
    rows, feed = time_models(args, image_size, device)
    workers = [0, 2] if args.dry else [0, min(8, cpus), cpus - 1]
    loader_rows, fed_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sets = photo_sets(Path(tmp), args.photos, [None, *args.stored], processes=min(cpus, 16))
            loader_rows = time_loader(sets, workers, args.batch_size, image_size)
            feed_workers = (args.feed_workers or workers[-1:]) if feed is not None else []
            for n in feed_workers:
                fed_rows += time_fed(sets, feed, n, args.batch_size, image_size, device)
        except Exception as err:  # the models' numbers are kept
            loader_rows.append({"loader": "failed", "error": repr(err)[:300]})
            print(json.dumps(loader_rows[-1]), flush=True)
    if args.out:
        with open(args.out, "a") as sink:
            for row in rows + loader_rows + fed_rows:
                print(json.dumps(row), file=sink)
    print_tables(rows, [r for r in loader_rows if "error" not in r], fed_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
