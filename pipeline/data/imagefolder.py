"""The ``imagefolder`` format: ``SRC/<class name>/<image files>`` (classes sorted by name -> ids
0..K-1), converted into one split of a dataset (``pipeline.data.convert``)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline import storage
from pipeline.data.convert import (ROWS_PER_SHARD, ConversionError, ConvertOptions, ShardResult, add_row, chunks,
                                   finish_shard, open_output, record_split, run_split_jobs, shard_jobs)


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def imagefolder_job(out: str, name: str, items: list[tuple[str, str, int]], split: str,
                     subset_seed: int, skip_bad: bool, max_short_side: int | None) -> ShardResult:
    result, rows = ShardResult(None), []
    for path, rel, label in items:
        add_row(rows, result, f"{split}/{rel}", Path(path).read_bytes(), [label], path, skip_bad,
                 max_short_side)
    return finish_shard(out, name, rows, subset_seed, result)


def class_files(folder: Path) -> tuple[list[Path], int, int]:
    """A class folder's image files (sorted, in its subfolders too), how many other files it holds,
    and how many symbolic links were not read: dangling, looping, or to folders (not followed)."""
    images, others, links = [], 0, 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(path)
            else:
                others += 1
        elif path.is_symlink():
            links += 1
    return images, others, links


def convert_imagefolder(src, out, options: ConvertOptions = ConvertOptions(), *,
                        executor: str = "auto", progress: bool = True) -> dict[str, Any]:
    """``SRC/<class>/<images>`` -> split ``options.split`` (default train) of ``out``."""
    split, seed, shards = options.split or "train", options.seed, options.shards
    src, out = Path(src), storage.resolve(out)
    if not src.is_dir():
        raise ConversionError("not a folder", source=src, hint="expected SRC/<class>/<images>")
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConversionError("has no class subfolders", source=src,
                              hint="expected SRC/<class>/<images>")
    items, ignored, links = [], 0, 0
    for label, name in enumerate(classes):
        images, others, broken = class_files(src / name)
        items += [(str(path), str(path.relative_to(src)), label) for path in images]
        ignored, links = ignored + others, links + broken
    if not items:
        raise ConversionError("has no image files in its class subfolders", source=src)
    manifest = open_output(out, split, num_classes=len(classes), multi_label=False,
                            class_names=classes, subset_seed=seed,
                            source={"converter": "imagefolder", "src": str(src.resolve()),
                                    "max_short_side": options.max_short_side})
    per = math.ceil(len(items) / shards) if shards else ROWS_PER_SHARD
    jobs = shard_jobs(out, split, [(items[a:b], split, seed, options.skip_bad, options.max_short_side)
                                   for a, b in chunks(len(items), per)])
    results = run_split_jobs(out, split, imagefolder_job, jobs, weights=[len(j[2]) for j in jobs],
                       desc=f"imagefolder {split}", unit="img", executor=executor, progress=progress)
    report = record_split(out, manifest, split, results)
    report["ignored_files"], report["skipped_links"] = ignored, links
    return report

