"""Datasets in an object store: bytes fetched for a small nested subset, and loader speed from the
store against a local copy of the same data, on a real S3 server (SeaweedFS, started here).

    python bench/bench_store.py                     # about 2 minutes on 2 cores
    python bench/bench_store.py --images 8000       # quicker

The store runs on this machine (loopback): the numbers say what the reader costs on top of the
data it needs (requests, round trips), not what a cloud network adds. Loader numbers are the best
of 3 passes over the data (the box may be shared). Prints a Markdown table for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tests/servers.py starts the real store

from pipeline.data.loader import LoaderSpec, make_loader  # noqa: E402
from pipeline.data.dataset import Dataset, copy_dataset  # noqa: E402
from pipeline.data.subsets import Subset, iter_blocks  # noqa: E402
from pipeline.data.synth import SynthSpec, generate  # noqa: E402


class CountingFile:
    """A file object over a pyarrow file that counts the bytes read through it (what the store
    sends: pyarrow's S3 file fetches exactly the ranges asked for)."""

    def __init__(self, inner: pa.NativeFile, counter: list[int]):
        self.inner, self.counter, self.closed = inner, counter, False

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(None if n is None or n < 0 else n)
        self.counter[0] += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.inner.seek(offset, whence)

    def tell(self) -> int:
        return self.inner.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.inner.close()
        self.closed = True


class CountingDataset(Dataset):
    def __init__(self, path):
        super().__init__(path)
        self.bytes_read = [0]

    def open_shard(self, shard):
        return pa.PythonFile(CountingFile(super().open_shard(shard), self.bytes_read), mode="r")


def subset_bytes(location: str, fraction: float) -> tuple[int, int, int]:
    """(bytes read, bytes of all shards, rows) for reading every image of a nested subset."""
    ds = CountingDataset(location)
    subset = Subset.build(ds, fraction=fraction)
    rows = sum(t.num_rows for _, t in iter_blocks(subset, subset.blocks, ["key", "image", "labels"]))
    return ds.bytes_read[0], sum(s.bytes for s in ds.shards()), rows


def loader_rate(location: str, image_size: int, repeats: int) -> float:
    """Images/s of one pass of the training loader over the whole dataset (one process)."""
    best = 0.0
    for _ in range(repeats):
        loader = make_loader(LoaderSpec(location, batch_size=256, image_size=image_size, train=True),
                             num_workers=0)
        start, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch.keys)
        best = max(best, n / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)
    from servers import make_bucket, seaweedfs
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    local = generate(work / "synth", SynthSpec(images=args.images, classes=100, image_size=args.image_size,
                                               shards=args.shards, seed=0), progress=False)
    with seaweedfs(work / "store") as store:
        os.environ.update(store["env"])
        make_bucket(store["env"], "bench")
        remote = copy_dataset(local, "s3://bench/synth", progress=False)
        rows = []
        for fraction in (0.03, 0.1):
            read, total, n = subset_bytes(remote, fraction)
            rows.append(f"| {fraction:.0%} subset ({n} rows), from the store | {read / 1e6:.2f} MB of "
                        f"{total / 1e6:.1f} MB | {read / total:.2%} |")
        local_rate = loader_rate(local, args.image_size, args.repeats)
        store_rate = loader_rate(remote, args.image_size, args.repeats)
    image = Dataset(local).manifest["image"]
    print(f"{args.images} synthetic images ({image['encoding']}, {args.image_size} px) in {args.shards} shards "
          f"of {sum(s.bytes for s in Dataset(local).shards()) / args.shards / 1e6:.1f} MB, row groups of "
          f"{Dataset(local).manifest['splits']['train']['shards'][0]['row_group_rows']} rows\n")
    print("| read | bytes fetched | share of the shards |\n|---|---|---|")
    print("\n".join(rows))
    print(f"\n| loader (train, batch 256, 1 process, 1 thread) | images/s |\n|---|---|\n"
          f"| local folder | {local_rate:.0f} |\n| object store (S3, loopback) | {store_rate:.0f} |\n"
          f"| store / local | {store_rate / local_rate:.2f}x |")


if __name__ == "__main__":
    main()
