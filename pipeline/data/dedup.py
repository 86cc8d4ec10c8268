"""De-duplicate a pretraining set against downstream test sets (the paper follows BiT here).

Two stages, so that resized and re-encoded copies are caught and look-alikes are not:

1. candidates: the 64-bit perceptual hash (DCT of a 32x32 grayscale thumbnail, low 8x8
   frequencies against their median, as in pHash) within ``max_distance`` bits: cheap bit
   operations against every reference image;
2. confirmation: the Pearson correlation of 8x8 RGB area-averaged thumbnails is at least
   ``min_correlation``. Resizing and JPEG re-encoding keep it near 1; different images that share
   a coarse layout (which collide in pHash on plain synthetic scenes) stay below.

Measured on synthetic 64-px test images (bench/RESULTS.md has the procedure): copies resized
0.5x-3x and re-encoded as JPEG q50-q90 are found 95-100% of the time, and no distinct image was
excluded. Copies of tiny (<= 32 px) images shrunk below their size are mostly missed: too little
is left of them to tell a copy from a look-alike.

The result is written into the pretraining manifest's ``exclusions`` (shard, row, key, what it
duplicates), which every loader honours; shards are not rewritten, so checksums stay valid.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from scipy.fft import dctn

from pipeline import storage
from pipeline.data.dataset import Dataset
from pipeline.data.format import DataError, write_manifest
from pipeline.data.images import UndecodableImage, decode_rgb
from pipeline.data.parallel import run_jobs

DEFAULT_MAX_DISTANCE = 14
DEFAULT_MIN_CORRELATION = 0.95
_BIT_WEIGHTS = np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)


def phash(img: Image.Image) -> np.uint64:
    gray = np.asarray(img.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float32)
    low = dctn(gray, norm="ortho")[:8, :8].ravel()
    return np.bitwise_or.reduce((low > np.median(low)).astype(np.uint64) * _BIT_WEIGHTS)


def color_thumbnail(img: Image.Image) -> np.ndarray:
    """8x8 RGB area average, standardized (zero mean, unit norm), as a 192-vector."""
    t = np.asarray(img.resize((8, 8), Image.BOX), dtype=np.float32).ravel()
    t = t - t.mean()
    return t / max(float(np.linalg.norm(t)), 1e-6)   # a flat image correlates with nothing


def fingerprints(images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(pHashes uint64 (N,), colour thumbnails (N, 192)); an undecodable image gets a zero
    thumbnail, which confirms no match."""
    hashes = np.zeros(len(images), np.uint64)
    thumbs = np.zeros((len(images), 192), np.float32)
    for i, data in enumerate(images):
        try:
            img = decode_rgb(data)
        except UndecodableImage:
            continue
        hashes[i], thumbs[i] = phash(img), color_thumbnail(img)
    return hashes, thumbs


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = a[:, None] ^ b[None, :]
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x).astype(np.int16)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1, dtype=np.int16)


def _dedup_shard(path: str, shard_path: str, ref_hashes: np.ndarray, ref_thumbs: np.ndarray,
                 ref_names: list[str], max_distance: int, min_correlation: float,
                 chunk: int = 1024) -> list[dict[str, Any]]:
    """Matches of one pretraining shard against the reference (downstream test) images."""
    pf = pq.ParquetFile(storage.open_input(storage.join(path, shard_path)))
    found = []
    row0 = 0
    for batch in pf.iter_batches(batch_size=chunk, columns=["key", "image"]):
        keys = batch.column("key").to_pylist()
        hashes, thumbs = fingerprints(batch.column("image").to_pylist())
        distance = _hamming(hashes, ref_hashes)
        rows, refs = np.nonzero(distance <= max_distance)
        if len(rows):
            corr = np.einsum("ij,ij->i", thumbs[rows], ref_thumbs[refs])
            for r, j, c in zip(rows, refs, corr):
                if c >= min_correlation:
                    found.append({"shard": shard_path, "row": row0 + int(r), "key": keys[r],
                                  "duplicate_of": ref_names[j], "distance": int(distance[r, j]),
                                  "correlation": round(float(c), 4)})
        row0 += len(keys)
    return found


def _reference(spec: str) -> tuple[list[str], list[bytes]]:
    """Names ("dataset:split:key") and images of a downstream split; ``spec`` is PATH[:SPLIT]."""
    path, _, split = spec.rpartition(":") if ":" in Path(spec).name else (spec, "", "")
    ds = Dataset(path)
    split = split or ("test" if "test" in ds.splits else "")
    if not split:
        raise DataError(f"has no test split (splits: {ds.splits}); name one as {path}:SPLIT",
                        dataset=ds.root)
    names, images = [], []
    for shard in ds.shards(split):
        with storage.open_input(ds.shard_path(shard)) as f:
            t = pq.read_table(f, columns=["key", "image"])
        names += [f"{storage.name(ds.root)}:{split}:{k}" for k in t.column("key").to_pylist()]
        images += t.column("image").to_pylist()
    return names, images


def dedup(pretrain: str | Path, against: list[str], *, max_distance: int | None = None,
          min_correlation: float = DEFAULT_MIN_CORRELATION, split: str = "train",
          executor: str = "auto", dry_run: bool = False, progress: bool = True) -> dict[str, Any]:
    """Find near-duplicates of ``against`` (downstream datasets, their test split by default)
    in ``pretrain``'s ``split`` and record them as exclusions in its manifest."""
    max_distance = DEFAULT_MAX_DISTANCE if max_distance is None else max_distance
    ds = Dataset(pretrain)
    ref_names, ref_images = [], []
    for spec in against:
        names, images = _reference(spec)
        ref_names += names
        ref_images += images
    ref_hashes, ref_thumbs = fingerprints(ref_images)
    shards = ds.shards(split)
    jobs = [(ds.root, s.path, ref_hashes, ref_thumbs, ref_names, max_distance,
             min_correlation) for s in shards]
    results = run_jobs(_dedup_shard, jobs, weights=[s.num_rows for s in shards],
                       desc=f"dedup {storage.name(ds.root)}", unit="img", executor=executor,
                       progress=progress)
    matches = [m for shard_matches in results for m in shard_matches]
    # One exclusion per pretraining row, listing every test image it duplicates.
    by_row: dict[tuple[str, int], dict[str, Any]] = {}
    for m in matches:
        entry = by_row.setdefault((m["shard"], m["row"]), {
            "shard": m["shard"], "row": m["row"], "key": m["key"], "duplicate_of": []})
        entry["duplicate_of"].append(m["duplicate_of"])
    manifest = ds.manifest
    previous = {(e["shard"], e["row"]): e for e in manifest.get("exclusions", {}).get(split, [])}
    for k, entry in by_row.items():
        if k in previous:
            entry["duplicate_of"] = sorted(set(previous[k]["duplicate_of"]) | set(entry["duplicate_of"]))
    merged = {**previous, **by_row}
    report = {"pretrain": str(ds.root), "split": split, "against": list(against),
              "reference_images": len(ref_names), "rows_scanned": sum(s.num_rows for s in shards),
              "duplicates_found": len(by_row),
              "test_images_with_duplicates": len({m["duplicate_of"] for m in matches}),
              "excluded_total": len(merged), "max_distance": max_distance,
              "min_correlation": min_correlation}
    if not dry_run:
        manifest.setdefault("exclusions", {})[split] = [merged[k] for k in sorted(merged)]
        manifest.setdefault("dedup_runs", []).append(
            {**{k: report[k] for k in ("against", "duplicates_found", "max_distance",
                                         "min_correlation")},
             "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        write_manifest(ds.root, manifest)
    return report
