"""Loader throughput on real photographs (issue 17): an ImageNet-like set made from the photos that
scikit-learn (and scikit-image, when installed: ``pip install -e ".[bench]"``) ship, converted with
``pipeline.data convert``, read by a plain PIL baseline (the torchvision way) and by ours.

    python bench/bench_photos.py                         # 2000 photos, about 8 minutes on 2 cores
    python bench/bench_photos.py --images 40 --decode-images 20 --repeats 1 --stored 64   # smoke

Photos: random crops of the source photos (aspect 3/4-4/3, long side 400-500 px) resized with
Lanczos, sharpened and given sensor-like noise (as a camera's output is), saved as JPEG quality 90;
class = source photo. Stored-resolution variants are the same set converted with
``--max-short-side N``. Rows give images per CPU-second (this process on one thread, plus the
loader's worker processes: the per-core rate, whatever else the box runs) and per wall-second,
each the best of ``--repeats`` runs taken in turns; worker rows use ``--workers`` processes.
Prints the photo bytes and a Markdown table; ``--json`` also writes the rows.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.loader import LoaderSpec, make_loader  # noqa: E402
from pipeline.data.dataset import Dataset  # noqa: E402
from pipeline.data.images import (decode_rgb, decode_train, inception_crop_box,  # noqa: E402
                                  normalize_images, to_nchw_uint8, train_transform)

# Bundled photographs that need no download. scikit-image's gray ones (camera, textures) are
# stored as RGB JPEGs, as most gray photos in web crawls are.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field",
                  "immunohistochemistry", "retina", "camera", "grass", "gravel", "brick")
LONG_SIDE = (400, 500)        # px, uniform
MAX_ASPECT = 4 / 3            # long / short, log-uniform from 1
LANDSCAPE = 0.75              # share of landscape photos
CROP_AREA = (0.6, 1.0)        # of the largest source box with the photo's aspect
SHARPEN = (100, 250)          # unsharp mask percent (radius 1.5), uniform
NOISE = (2.0, 6.0)            # sensor-like noise, sigma in grey levels per channel, uniform
QUALITY = 90


def source_photos() -> dict[str, Image.Image]:
    from sklearn.datasets import load_sample_images
    bunch = load_sample_images()
    photos = {Path(f).stem: Image.fromarray(a) for f, a in zip(bunch.filenames, bunch.images)}
    try:
        import skimage.data
    except ImportError:
        print("scikit-image not installed: 2 source photos only (pip install -e '.[bench]')", file=sys.stderr)
        return photos
    for name in SKIMAGE_PHOTOS:
        pixels = getattr(skimage.data, name)()
        photos[name] = Image.fromarray(pixels[0] if name == "stereo_motorcycle" else pixels).convert("RGB")
    return photos


def make_photo(src: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One ImageNet-like photo: a random crop of ``src`` at a random size and aspect."""
    long = rng.uniform(*LONG_SIDE)
    short = long / math.exp(rng.uniform(0, math.log(MAX_ASPECT)))
    w, h = (long, short) if rng.random() < LANDSCAPE else (short, long)
    w, h = int(round(w)), int(round(h))
    sw, sh = src.size
    bw, bh = (sw, sw * h / w) if sw * h / w <= sh else (sh * w / h, sh)
    f = math.sqrt(rng.uniform(*CROP_AREA))
    cw, ch = bw * f, bh * f
    x, y = rng.uniform(0, sw - cw), rng.uniform(0, sh - ch)
    img = src.resize((w, h), Image.LANCZOS, box=(x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    img = img.filter(ImageFilter.UnsharpMask(1.5, int(rng.uniform(*SHARPEN)), 1))
    noisy = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(*NOISE), (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))


def write_photo_folder(folder: Path, n: int, seed: int, processes: int = 1) -> list[int]:
    """``folder/<source>/<i>.jpg``, sources in turn; returns the files' sizes in bytes. With
    ``processes`` > 1, chunks of photos are made in parallel, chunk k from seed (seed, k): the same
    distribution, not the same photos as one process makes."""
    if processes > 1:
        from concurrent.futures import ProcessPoolExecutor
        bounds = np.linspace(0, n, processes * 4 + 1).astype(int)
        with ProcessPoolExecutor(processes) as pool:
            parts = pool.map(_write_photos, [folder] * (len(bounds) - 1), bounds[:-1], bounds[1:],
                             [(seed, k) for k in range(len(bounds) - 1)])
            return [size for part in parts for size in part]
    return _write_photos(folder, 0, n, seed)


def _write_photos(folder: Path, start: int, stop: int, seed) -> list[int]:
    photos = source_photos()
    names = sorted(photos)
    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(start, stop):
        name = names[i % len(names)]
        (folder / name).mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        make_photo(photos[name], rng).save(buf, format="JPEG", quality=QUALITY)
        (folder / name / f"{i:06d}.jpg").write_bytes(buf.getvalue())
        sizes.append(len(buf.getvalue()))
    return sizes


def byte_stats(sizes: list[int]) -> dict[str, float]:
    kb = np.asarray(sizes, np.float64) / 1e3
    return {"mean_kB": kb.mean(), "median_kB": float(np.median(kb)), "p10_kB": float(np.percentile(kb, 10)),
            "p90_kB": float(np.percentile(kb, 90))}


def convert_cli(folder: Path, out: Path, max_short_side: int | None, shards: int = 4) -> None:
    """The set converted as a user converts one: ``python -m pipeline.data convert imagefolder``."""
    import subprocess
    cmd = [sys.executable, "-m", "pipeline.data", "convert", "imagefolder", str(folder), str(out), "--shards",
           str(shards)]
    if max_short_side:
        cmd += ["--max-short-side", str(max_short_side)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1])


def scan(path: Path, sample: int) -> tuple[list[int], list[tuple[int, int]], list[bytes]]:
    """Every stored image's size in bytes and (width, height), and ``sample`` of the images, evenly
    spread over the shards (whose classes differ), without holding the rest in memory."""
    ds = Dataset(path)
    step = max(1, ds.num_rows("train") // max(sample, 1))
    sizes, dims, kept = [], [], []
    for shard in ds.shards():
        for data in pq.read_table(ds.shard_path(shard), columns=["image"]).column("image").to_pylist():
            if len(sizes) % step == 0 and len(kept) < sample:
                kept.append(data)
            sizes.append(len(data))
            dims.append(Image.open(io.BytesIO(data)).size)
    return sizes, dims, kept


def crop_resolution(dims: list[tuple[int, int]], image_size: int, seed: int = 0) -> dict[str, float]:
    """What the inception crops (area 5-100%) of images of these sizes hold, as drawn in training:
    the crop's shorter side in stored pixels (median; and at 5% area), the share of crops narrower
    than the output (upsampled to ``image_size``: less detail than the output can show), and the
    share at least twice as wide (those the JPEG draft decodes reduced)."""
    rng = np.random.default_rng(seed)
    sides = np.asarray([(lambda b: min(b[2] - b[0], b[3] - b[1]))(inception_crop_box(w, h, rng)) for w, h in dims])
    return {"short_side_mean": float(np.mean([min(d) for d in dims])),
            "crop_side_median": float(np.median(sides)),
            "crop_side_5pct_mean": float(np.mean([math.sqrt(0.05 * w * h) for w, h in dims])),
            "upsampled_share": float(np.mean(sides < image_size)),
            "drafted_share": float(np.mean(sides >= 2 * image_size))}


# --------------------------------------------------------------------------------------------
# What is timed: a plain PIL baseline, written the torchvision way, and ours

def baseline_image(data: bytes, size: int, rng: np.random.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop(size, scale=(0.05, 1)) + RandomHorizontalFlip + ToTensor +
    Normalize(0.5, 0.5) on a PIL image, per image (the same crop-box rule as ours)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    box = inception_crop_box(img.width, img.height, rng)
    img = img.resize((size, size), Image.BILINEAR, box=box)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    tensor = torch.from_numpy(np.array(img, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    return tensor.float().div_(255).sub_(0.5).div_(0.5)


def old_ours_image(data: bytes, size: int, rng: np.random.Generator, reducing_gap: float | None = None) -> np.ndarray:
    """Ours before issue 17: full decode, PIL's resize(box=...) (optionally with reducing_gap)."""
    img = decode_rgb(data)
    box = inception_crop_box(img.width, img.height, rng)
    arr = np.asarray(img.resize((size, size), Image.BILINEAR, box=box, reducing_gap=reducing_gap))
    return arr[:, ::-1] if rng.random() < 0.5 else arr


BATCH = 64   # images per batch (--batch-size)


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its ended children (the loader's workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def rates(runs: dict[str, Callable[[], int]], repeats: int) -> list[tuple[str, float, float]]:
    """(label, images per CPU-second, images per wall-second) of each run (a callable returning
    its image count), each the best of ``repeats``; the runs take turns (round by round), so a
    busy spell of the box slows them all rather than one row. Per CPU-second is the per-core rate
    whatever else the box runs; the wall rate is what a caller waits (lower on a shared box)."""
    best = {label: [0.0, 0.0] for label in runs}
    for _ in range(repeats):
        for label, run in runs.items():
            wall, cpu = time.perf_counter(), cpu_seconds()
            n = run()
            best[label][0] = max(best[label][0], n / max(cpu_seconds() - cpu, 1e-9))
            best[label][1] = max(best[label][1], n / (time.perf_counter() - wall))
    return [(label, per_cpu, per_wall) for label, (per_cpu, per_wall) in best.items()]


def batches_run(images: list[bytes], per_image: Callable, collate: Callable, size: int) -> Callable[[], int]:
    """``per_image`` over ``images`` in batches of BATCH, each batch collated, in this process."""
    def run() -> int:
        rng = np.random.default_rng(0)
        for i in range(0, len(images), BATCH):
            collate([per_image(data, size, rng) for data in images[i:i + BATCH]])
        return len(images)
    return run


def decode_runs(images: list[bytes], size: int, small: int | None) -> dict[str, Callable[[], int]]:
    """Decode + augment + collate, per variant; with ``small`` (the originals only), also the rows
    that show the JPEG draft and PIL's reducing_gap at work: at a ``small``-px output many crops
    are at least twice the output (none are at 224 px on these photos)."""
    uint8, float32 = to_nchw_uint8, lambda arrs: normalize_images(to_nchw_uint8(arrs))  # noqa: E731
    full = lambda data, s, rng: train_transform(decode_rgb(data), s, rng)  # noqa: E731
    runs = {"PIL baseline (torchvision way), float32": batches_run(images, baseline_image, torch.stack, size),
            "ours decode_rgb + train_transform (full decode), uint8": batches_run(images, full, uint8, size),
            "ours decode_train, uint8": batches_run(images, decode_train, uint8, size),
            "ours decode_train, float32": batches_run(images, decode_train, float32, size)}
    if small:
        runs["before issue 17: full decode + PIL resize(box), uint8"] = batches_run(images, old_ours_image, uint8, size)
        runs[f"{small} px: ours full decode, uint8"] = batches_run(images, full, uint8, small)
        runs[f"{small} px: ours decode_train (JPEG draft), uint8"] = batches_run(images, decode_train, uint8, small)
        runs[f"{small} px: before issue 17 (PIL resize), uint8"] = batches_run(images, old_ours_image, uint8, small)
        for gap in (1.0, 2.0):
            fn = lambda data, s, rng, gap=gap: old_ours_image(data, s, rng, gap)  # noqa: E731
            runs[f"{small} px: same, PIL resize reducing_gap={gap:g}, uint8"] = batches_run(images, fn, uint8, small)
    return runs


def loader_run(path: Path, size: int, workers: int, image_dtype: str) -> Callable[[], int]:
    """One train epoch of ``make_loader`` (its CPU time: this process and its ended workers)."""
    def run() -> int:
        loader = make_loader(LoaderSpec(path, batch_size=BATCH, image_size=size, train=True,
                                        image_dtype=image_dtype), num_workers=workers)
        return sum(len(batch.keys) for batch in loader)
    return run


def bytes_slope(images: list[bytes], size: int, repeats: int) -> tuple[float, float]:
    """decode_train's time per image against the file's size, fitted t = a + b * kB over these
    photos (each image's best of ``repeats``): (a in ms, b in ms per kB), to carry the rate to
    another mean file size."""
    times = np.full(len(images), np.inf)
    for _ in range(repeats):
        rng = np.random.default_rng(0)
        for i, data in enumerate(images):
            start = time.perf_counter()
            decode_train(data, size, rng)
            times[i] = min(times[i], time.perf_counter() - start)
    kb = np.asarray([len(d) for d in images]) / 1e3
    b, a = np.polyfit(kb, times * 1e3, 1)
    return float(a), float(b)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000, help="photos to make (default 2000)")
    p.add_argument("--decode-images", type=int, default=1000,
                   help="of them, how many the per-core decode rows time (default 1000; loaders read all)")
    p.add_argument("--image-size", type=int, default=224, help="output side of the train crop (default 224)")
    p.add_argument("--small-size", type=int, default=112,
                   help="output side of the extra rows on the originals where JPEG draft and PIL's reducing_gap "
                        "act (default 112; 0: none)")
    p.add_argument("--stored", default="256,320",
                   help="comma-separated --max-short-side values to convert and time next to the originals "
                        "(default 256,320; '' for none)")
    p.add_argument("--batch-size", type=int, default=BATCH, help=f"images per batch (default {BATCH})")
    p.add_argument("--workers", type=int, default=2, help="loader worker processes of the worker rows (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="runs per row, the best kept (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the photos' crops, sizes and noise (default 0)")
    p.add_argument("--workdir", default=None,
                   help="folder for the photos and datasets, reused when they are there (default: a new temp folder)")
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    return p.parse_args(argv)


def prepare(work: Path, args: argparse.Namespace) -> dict[str, Path]:
    """The photo folder (made once) and its datasets: original and each stored resolution."""
    folder = work / "photos"
    if not folder.is_dir():
        write_photo_folder(folder, args.images, args.seed)
    variants = {"original": None, **{f"stored {n}": int(n) for n in args.stored.split(",") if n.strip()}}
    paths = {}
    for name, side in variants.items():
        paths[name] = work / ("original" if side is None else f"short{side}")
        if not (paths[name] / "manifest.json").exists():
            convert_cli(folder, paths[name], side)
    return paths


def measure(paths: dict[str, Path], args: argparse.Namespace) -> dict[str, dict]:
    """Loader rows first, for every variant (worker processes fork this process: before it holds
    images, as a training process does), then each variant's decode rows on an even sample."""
    out = {}
    for name, path in paths.items():
        runs = {}
        for workers in (0, args.workers):
            for dtype in ("uint8", "float32"):
                label = f"make_loader, {workers} worker{'s' if workers != 1 else ''}, {dtype}"
                runs[label] = loader_run(path, args.image_size, workers, dtype)
        out[name] = {"loader_rows": rates(runs, args.repeats)}
    for name, path in paths.items():
        sizes, dims, part = scan(path, args.decode_images)
        runs = decode_runs(part, args.image_size, args.small_size if name == "original" else None)
        out[name].update(images=len(sizes), bytes=byte_stats(sizes), crops=crop_resolution(dims, args.image_size),
                         rows=rates(runs, args.repeats) + out[name].pop("loader_rows"),
                         slope_ms=bytes_slope(part, args.image_size, args.repeats) if name == "original" else None)
        del part
    return out


def report(results: dict[str, dict], args: argparse.Namespace, load: tuple[float, ...]) -> None:
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, torch {torch.__version__}, Pillow {Image.__version__}; load "
          f"average before/after: {load[0]:.1f} / {os.getloadavg()[0]:.1f}; {args.image_size}-px output, "
          f"batches of {BATCH}, best of {args.repeats}\n")
    print("| stored | images | mean kB | median kB | p10 kB | p90 kB | mean short side | crop side median "
          "| 5%-area crop side | crops upsampled | crops drafted |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        b, c = r["bytes"], r["crops"]
        print(f"| {name} | {r['images']} | {b['mean_kB']:.1f} | {b['median_kB']:.1f} | {b['p10_kB']:.1f} "
              f"| {b['p90_kB']:.1f} | {c['short_side_mean']:.0f} | {c['crop_side_median']:.0f} "
              f"| {c['crop_side_5pct_mean']:.0f} | {c['upsampled_share']:.0%} | {c['drafted_share']:.0%} |")
    base = results["original"]["rows"][0][1]
    print("\n| stored | measurement | images per CPU-second | x baseline (original) | images per wall-second |"
          "\n|---|---|---|---|---|")
    for name, r in results.items():
        for label, per_cpu, per_wall in r["rows"]:
            print(f"| {name} | {label} | {per_cpu:,.0f} | {per_cpu / base:.2f} | {per_wall:,.0f} |")
    a, b = results["original"]["slope_ms"]
    print(f"\ndecode_train per image on the originals: {a:.3f} ms + {b:.4f} ms per kB "
          f"(at 110 kB: {1e3 / (a + 110 * b):,.0f} images/s)")


def main(argv: list[str] | None = None) -> None:
    global BATCH
    args = parse_args(argv)
    BATCH = args.batch_size
    torch.set_num_threads(1)
    load = os.getloadavg()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-photos-"))
    work.mkdir(parents=True, exist_ok=True)
    results = measure(prepare(work, args), args)
    report(results, args, load)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "load_before": load[:3],
                                               "load_after": os.getloadavg()[:3], "results": results},
                                              indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
