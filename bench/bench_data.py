"""Data pipeline speed: synthetic generation, decode + augment per CPU core, the loader, dedup.

    python bench/bench_data.py                      # all, default sizes (about 2 minutes on 2 cores)
    python bench/bench_data.py --images-224 400 --images-32 4000   # quicker

Per-core numbers run in this process on one thread; "processes" numbers use every core.
Decode and loader numbers are the best of 3 runs (the box may be shared).
Prints a Markdown table to paste into bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.loader import LoaderSpec, make_loader  # noqa: E402
from pipeline.data.dataset import Dataset  # noqa: E402
from pipeline.data.images import decode_rgb, eval_transform, train_transform  # noqa: E402
from pipeline.data.synth import SynthSpec, generate  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def generate_cli(out: Path, images: int, size: int, shards: int, executor: str) -> float:
    """Seconds for `python -m pipeline.data synth` as a user runs it (interpreter start included;
    spawned workers import only what the CLI module imports, not this script's torch)."""
    cmd = [sys.executable, "-m", "pipeline.data", "synth", str(out), "--images", str(images),
           "--classes", "100", "--image-size", str(size), "--shards", str(shards),
           "--executor", executor]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1])
    return time.perf_counter() - start


def images_of(path: Path) -> list[bytes]:
    ds = Dataset(path)
    out = []
    for shard in ds.shards():
        out += pq.read_table(ds.shard_path(shard), columns=["image"]).column("image").to_pylist()
    return out


REPEATS = 3  # best of: this box is shared, and other work only ever slows a run down


def decode_augment_rate(images: list[bytes], size: int, train: bool) -> float:
    rng = np.random.default_rng(0)
    def run():
        for data in images:
            img = decode_rgb(data, draft_size=None if train else int(size / 0.875))
            train_transform(img, size, rng) if train else eval_transform(img, size)
    return max(len(images) / timed(run)[1] for _ in range(REPEATS))


def loader_rate(path: Path, size: int, train: bool, workers: int,
                image_dtype: str = "float32") -> float:
    def run():
        loader = make_loader(LoaderSpec(path, batch_size=64, image_size=size, train=train,
                                        image_dtype=image_dtype), num_workers=workers)
        return sum(len(batch.keys) for batch in loader)
    rates = []
    for _ in range(REPEATS):
        n, seconds = timed(run)
        rates.append(n / seconds)
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images-32", type=int, default=10000)
    parser.add_argument("--images-224", type=int, default=1500)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cores = os.cpu_count() or 1
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-data-"))
    rows = []

    for size, n, enc in ((32, args.images_32, "png"), (224, args.images_224, "jpeg")):
        sec = generate_cli(work / f"gen{size}-1", n // 2, size, shards=1, executor="inline")
        rows.append((f"synth generate {size}-px {enc}, CLI, 1 core", n // 2 / sec))
        path = work / f"gen{size}"
        sec = generate_cli(path, n, size, shards=2 * cores, executor="processes")
        rows.append((f"synth generate {size}-px {enc}, CLI, {cores} processes", n / sec))
        mb = sum(s.bytes for s in Dataset(path).shards()) / n / 1e3
        rows.append((f"  (mean encoded size {size}-px {enc}, kB)", mb))
        images = images_of(path)
        rows.append((f"decode + inception crop + flip, {size}-px {enc} -> {size}, per core",
                     decode_augment_rate(images, size, train=True)))
        rows.append((f"decode + resize + center crop, {size}-px {enc} -> {size}, per core",
                     decode_augment_rate(images, size, train=False)))
        rows.append((f"loader train (read+decode+augment+batch), {size}-px, 0 workers (1 core)",
                     loader_rate(path, size, train=True, workers=0)))
        rows.append((f"loader train, {size}-px, {cores} worker processes",
                     loader_rate(path, size, train=True, workers=cores)))
        rows.append((f"loader train, {size}-px, {cores} worker processes, uint8 out",
                     loader_rate(path, size, train=True, workers=cores, image_dtype="uint8")))

    task = generate(work / "task", SynthSpec(task="novel", images=10, test_images=500, classes=10,
                                             class_offset=100, image_size=64), executor="inline",
                    progress=False)
    pre = generate(work / "pre64", SynthSpec(images=args.images_32 // 2, classes=100, image_size=64,
                                             shards=2 * cores), executor="processes", progress=False)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.data", "dedup", str(pre), "--against",
                    str(task), "--dry-run", "--executor", "processes"], check=True,
                   capture_output=True, cwd=Path(__file__).resolve().parents[1])
    rows.append((f"dedup 64-px vs 500 test images, CLI, {cores} processes",
                 (args.images_32 // 2) / (time.perf_counter() - start)))

    print(f"\nmachine: {platform.processor() or platform.machine()}, {cores} cores, "
          f"python {platform.python_version()}, torch {torch.__version__}\n")
    print("| measurement | images/s |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:,.1f} |" if "kB" in name else f"| {name} | {value:,.0f} |")


if __name__ == "__main__":
    main()
