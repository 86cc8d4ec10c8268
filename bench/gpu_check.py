"""Training throughput and MFU of the paper's models on one GPU, and the loader on that machine.

    bash bench/gpu_check.sh               # on a GPU machine (about 7 minutes): Markdown tables (and --out)
    bash bench/gpu_check.sh --dry         # CPU, micro models, 2 steps: checks the script itself
    bash bench/gpu_check.sh --timm --no-loader --modes compiled "compiled channels-last"
                                          # ours beside timm's implementation, step for step

``--timm`` times timm's implementation of each model (``vit_base_patch16_224``, ``resnetv2_50x1_bit``,
``vit_base_r50_s16_224``; the dry mode's micro shapes built from timm's classes) right after ours, in
the same mode, batch and step, and prints ours / timm. timm's MFU uses our model's FLOPs: the
architectures are the same but for our ViTs' pre-logits layer (768 x 768 in ViT-B/16: 0.7% of its
parameters, 0.003% of its FLOPs). timm is on the lent GPU machines' image; where it cannot be
imported its rows are left out, with a line that says so.

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
import functools
import importlib
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


TIMM_NAMES = {"ViT-S/16": "vit_small_patch16_224", "ViT-B/16": "vit_base_patch16_224",
              "ViT-L/16": "vit_large_patch16_224", "R50x1": "resnetv2_50x1_bit",
              "R50+ViT-B/16": "vit_base_r50_s16_224"}
MODES = ("eager", "eager channels-last", "compiled", "compiled channels-last")  # channels-last: ResNets only


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


def timm_model(spec, image_size: int) -> tuple[str, torch.nn.Module]:
    """timm's implementation of ``spec``: its registered model for a paper name, else (the dry
    mode's micro shapes) timm's classes built from the shape as timm builds its BiT and ViT."""
    import timm
    if spec.name in TIMM_NAMES:
        size = {} if spec.family == "resnet" else {"img_size": image_size}
        return TIMM_NAMES[spec.name], timm.create_model(TIMM_NAMES[spec.name], pretrained=False, num_classes=1000, **size)
    if spec.family == "vit":
        from timm.models.vision_transformer import VisionTransformer
        v = spec.vit
        return "VisionTransformer", VisionTransformer(img_size=image_size, patch_size=v.patch_size, embed_dim=v.width,
                                                      depth=v.depth, num_heads=v.heads, mlp_ratio=v.mlp_dim / v.width,
                                                      num_classes=1000)
    if spec.family == "resnet":
        from timm.layers import GroupNormAct, StdConv2d
        from timm.models.resnetv2 import ResNetV2
        r = spec.resnet
        return "ResNetV2", ResNetV2(layers=list(r.blocks), width_factor=r.width_factor, stem_type="fixed",
                                    conv_layer=functools.partial(StdConv2d, eps=1e-8),
                                    norm_layer=functools.partial(GroupNormAct, num_groups=r.groups), num_classes=1000)
    raise ValueError(f"no timm equivalent of {spec.name}: name one of {sorted(TIMM_NAMES)}")


def time_model(name: str, *, batch: int, image_size: int, device: torch.device, compile_: bool,
               channels_last: bool, steps: int, warmup: int, impl: str = "ours") -> tuple[dict, object]:
    """The row (images/s, MFU, ...) and the step it timed; ``impl`` "timm": timm's model instead."""
    torch.manual_seed(0)
    spec = model_spec(model_arg(name))
    if impl == "timm":
        timm_name, model = timm_model(spec, image_size)
        impl = f"timm {timm_name}"
        head = model.get_classifier()
    else:
        model = build_model(spec, num_classes=1000, image_size=image_size)
        head = model.head.fc
    model = model.to(device)
    torch.nn.init.normal_(head.weight, std=0.01)  # zero head: no gradient would reach the trunk
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
    return {"model": spec.name, "impl": impl, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
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
OUT: Path | None = None  # --out: each row is appended as it is measured (a run cut short keeps its rows)


def emit(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    if OUT is not None:
        with open(OUT, "a") as sink:
            print(json.dumps(row), file=sink)
    return row


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
            rows.append(emit({"loader_workers": n, "stored": label, "images_per_s": per_s, "images": count}))
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
        rows.append(emit({"fed": row["model"], "mode": row["mode"], "stored": label, "loader_workers": workers,
                          "images_per_s": per_s, "images": count, "device_batch_images_per_s": row["images_per_s"],
                          "share_of_device_rate": per_s / row["images_per_s"]}))
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="CPU, micro models, 2 steps (checks the script)")
    parser.add_argument("--models", nargs="+", default=["ViT-B/16", "R50x1", "R50+ViT-B/16"])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="the modes timed (default all; channels-last only for ResNets)")
    parser.add_argument("--timm", action="store_true", help="time timm's implementation after ours in each mode")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="leave the compiled modes out")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no model after this many seconds (the rows so far and the tables are kept)")
    parser.add_argument("--no-loader", action="store_true", help="leave the loader rows out")
    parser.add_argument("--photos", type=int, default=16384,
                        help="photos the loader rows read (default 16384: 64 batches of 256; with 15 workers "
                             "the first 33 are not timed)")
    parser.add_argument("--stored", type=int, nargs="*", default=[256],
                        help="stored short sides besides the originals (default 256)")
    parser.add_argument("--feed-workers", type=int, nargs="*", default=None,
                        help="loader workers of the fed rows (default: all CPUs but one)")
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON lines here, as they come")
    args = parser.parse_args()
    if args.dry:
        args.models, args.batch_size, args.steps, args.warmup, args.photos, args.stored = \
            DRY_MODELS, 4, 2, 1, 40, []
        args.no_compile = True  # compiling costs a minute per model on a CPU
    if args.no_compile:
        args.modes = [m for m in args.modes if not m.startswith("compiled")]
    if args.timm:
        try:
            importlib.import_module("timm")
        except ImportError as err:
            print(f"# timm cannot be imported here ({err}): its rows are left out", flush=True)
            args.timm = False
    return args


def time_models(args, image_size: int, device: torch.device, started: float) -> tuple[list[dict], dict | None]:
    """Every model in every mode (timm's after ours, with --timm); also the first model's last mode
    (its row and step) to feed."""
    rows, feed = [], None
    for name in args.models:
        family = model_spec(model_arg(name)).family
        for mode in [m for m in args.modes if family == "resnet" or "channels-last" not in m]:
            for impl in ["ours", "timm"] if args.timm else ["ours"]:
                if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
                    print(f"# budget of {args.budget_s:.0f} s spent: {name} {mode} ({impl}) and the rest left out")
                    return rows, feed
                try:
                    row, step = time_model(name, batch=args.batch_size, image_size=image_size, device=device,
                                           compile_=mode.startswith("compiled"), channels_last="channels-last" in mode,
                                           steps=args.steps, warmup=args.warmup, impl=impl)
                    if name == args.models[0] and impl == "ours":
                        feed = {"row": row, "step": step}
                except Exception as err:  # one failing variant must not lose the others' numbers
                    row = {"model": name, "impl": impl, "mode": mode, "error": repr(err)[:300]}
                rows.append(emit(row))
    return rows, feed


def print_tables(rows: list[dict], loader_rows: list[dict], fed_rows: list[dict]) -> None:
    print("\n| model | mode | batch | img/s | TFLOP/s | MFU | first step s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        model = r["model"] if r["impl"] == "ours" else f"{r['model']} ({r['impl']})"
        if "error" in r:
            print(f"| {model} | {r['mode']} | failed: {r['error'][:80]} | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a"
        print(f"| {model} | {r['mode']} | {r['batch']} | {r['images_per_s']:.0f} | {r['tflops']:.1f} | {mfu} "
              f"| {r['first_step_s']:.1f} | {r['peak_mem_gib']:.1f} |")
    print_versus_timm(rows)
    if loader_rows:
        print("\n| photos | loader workers | img/s (loader alone, uint8) | img/s a worker |\n|---|---|---|---|")
    for r in loader_rows:
        print(f"| {r['stored']} | {r['loader_workers']} | {r['images_per_s']:.0f} "
              f"| {r['images_per_s'] / max(r['loader_workers'], 1):.0f} |")
    if fed_rows:
        print("\n| photos | step fed | loader workers | img/s fed | img/s, batch on the device | share |\n|---|---|---|---|---|---|")
    for r in fed_rows:
        print(f"| {r['stored']} | {r['fed']} {r['mode']} | {r['loader_workers']} | {r['images_per_s']:.0f} "
              f"| {r['device_batch_images_per_s']:.0f} | {r['share_of_device_rate']:.0%} |")


def print_versus_timm(rows: list[dict]) -> None:
    """Ours against timm's implementation, model by model and mode by mode (both measured)."""
    timm_rows = {(r["model"], r["mode"]): r for r in rows if r["impl"] != "ours" and "error" not in r}
    pairs = [(r, timm_rows[r["model"], r["mode"]]) for r in rows
             if r["impl"] == "ours" and "error" not in r and (r["model"], r["mode"]) in timm_rows]
    if not pairs:
        return
    print("\n| model | mode | ours img/s | timm img/s | ours / timm | params ours / timm (M) |\n|---|---|---|---|---|---|")
    for ours, timm_row in pairs:
        print(f"| {ours['model']} | {ours['mode']} | {ours['images_per_s']:.0f} | {timm_row['images_per_s']:.0f} "
              f"| {ours['images_per_s'] / timm_row['images_per_s']:.2f}x | {ours['params_m']:.2f} / "
              f"{timm_row['params_m']:.2f} |")


def main() -> int:
    global OUT
    started = time.perf_counter()
    args = parse_args()
    OUT = args.out
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry else "cpu")
    image_size = 32 if args.dry else 224
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    cpus = os.cpu_count() or 1
    print(f"# gpu_check: torch {torch.__version__} on {where}, {cpus} CPUs; {image_size}px, "
          f"batch {args.batch_size}, median of {args.steps} steps after {args.warmup}", flush=True)
    rows, feed = time_models(args, image_size, device, started)
    workers = [0, 2] if args.dry else [0, min(8, cpus), cpus - 1]
    loader_rows, fed_rows = ([], []) if args.no_loader else time_loading(args, feed, workers, image_size, device)
    print_tables(rows, [r for r in loader_rows if "error" not in r], fed_rows)
    return 0


def time_loading(args, feed: dict | None, workers: list[int], image_size: int,
                 device: torch.device) -> tuple[list[dict], list[dict]]:
    """The loader rows, alone and feeding the first model's step, on photos made for them."""
    loader_rows, fed_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sets = photo_sets(Path(tmp), args.photos, [None, *args.stored], processes=min(os.cpu_count() or 1, 16))
            loader_rows = time_loader(sets, workers, args.batch_size, image_size)
            for n in (args.feed_workers or workers[-1:]) if feed is not None else []:
                fed_rows += time_fed(sets, feed, n, args.batch_size, image_size, device)
        except Exception as err:  # the models' numbers are kept
            loader_rows.append(emit({"loader": "failed", "error": repr(err)[:300]}))
    return loader_rows, fed_rows


if __name__ == "__main__":
    sys.exit(main())
