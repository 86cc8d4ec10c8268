"""Metadata at 100k shards (issue 17, scope 4): what opening a 300M-image dataset, sizing its
subsets, planning a 1,000-run study and building a worker's subset cost.

    python bench/bench_metadata.py                          # about 2 minutes on 2 cores
    python bench/bench_metadata.py --parts worker --real-shards 500 --latency-ms 0   # quicker

Parts:

- ``manifest``: a manifest of 100,000 shard entries (3,000 rows each, 300M rows, 10,000
  exclusions) and no shard files: open it, size the full split and a 3% count subset.
- ``listing``: the driver's shard check before a run (``Dataset.check_listed_sizes``: one listing
  of the folder), over 100,000 empty files.
- ``plan``: a 1,000-run study (20 micro ViTs x 10 subsets x 5 seeds) planned over that manifest
  (``planning.plan(..., data=)``, what ``--plan --data`` does); MACs counted once beforehand.
- ``worker``: real shards on local disk, each laid out like a 3,000-row shard of the default
  writer (100 row groups: 1,000 rows in groups of 10, tiny images, so that thousands are made in
  seconds), and the loader's ``Subset.build`` of a 3% count subset over the first 1/4, 1/2 and all of
  them: seconds a shard, then times 100,000. Requests a shard are counted (a size check, a file open,
  every ranged read), and with ``--latency-ms`` each of them sleeps that long (an object store's
  first-byte latency), which is where reading shards concurrently pays. Then a rank's load of the
  subset the driver kept (``subsets.cached_subset``): its shard requests and seconds.
- ``kept``: a kept subset at 100k shards (1 and 10 blocks a shard) over the manifest-only
  dataset: the file's size and the seconds to open the dataset and load it.

``--code DIR`` runs the parts against another checkout's ``pipeline`` (e.g. the commit before this
one, from ``git archive``), for before/after numbers of the worker part. Prints one JSON line per
measurement and a Markdown summary.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHARDS, ROWS_PER_SHARD, EXCLUSIONS, FRACTION = 100_000, 3_000, 10_000, 0.03


def _import_pipeline(code: Path) -> None:
    sys.path.insert(0, str(code))


def manifest_only(root: Path, shards: int = SHARDS, rows: int = ROWS_PER_SHARD,
                  exclusions: int = EXCLUSIONS, name: str = "jft-300m-sim") -> int:
    """A dataset of ``shards`` shard entries and no shard files (any read of a shard fails).
    Returns its usable rows (rows minus the distinct excluded rows)."""
    from pipeline.data.format import new_manifest, shard_name, write_manifest
    manifest = new_manifest(name=name, num_classes=18291, multi_label=True, subset_seed=0,
                            image={"encoding": "jpeg"}, source={"generator": "bench_metadata"})
    entries = [{"path": shard_name("train", i, shards), "num_rows": rows, "bytes": 400_000_000 + i,
                "sha256": hashlib.sha256(b"%d" % i).hexdigest(), "row_group_rows": 30}
               for i in range(shards)]
    manifest["splits"]["train"] = {"num_rows": rows * shards, "shards": entries}
    manifest["exclusions"]["train"] = [
        {"shard": entries[(i * 7919) % shards]["path"], "row": (i * 31) % rows, "key": f"k{i}",
         "duplicate_of": [f"test:{i}"]} for i in range(exclusions)]
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(str(root), manifest)
    distinct = {(e["shard"], e["row"]) for e in manifest["exclusions"]["train"]}
    return rows * shards - len(distinct)


def timed(fn, repeats: int = 3) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def emit(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    return row


def part_manifest(root: Path) -> list[dict]:
    from pipeline.data import subset_size
    from pipeline.data.dataset import Dataset
    start = time.perf_counter()
    usable = manifest_only(root)
    made = time.perf_counter() - start
    count = round(FRACTION * usable)
    rows = [emit({"what": "manifest written", "shards": SHARDS, "bytes": (root / "manifest.json").stat().st_size,
                  "s": [made]})]
    times, ds = timed(lambda: Dataset(root))
    rows.append(emit({"what": "open (Dataset(path): JSON parse + manifest check)", "s": times}))
    times, full = timed(lambda: ds.usable_rows("train"))
    rows.append(emit({"what": "size the full split (usable_rows, fresh exclusion index each time)",
                      "s": times, "rows": full}))
    times, size = timed(lambda: Dataset(root).subset_rows("train", count=count))
    rows.append(emit({"what": "open + size a 3% count subset (subset_rows)", "s": times, "rows": size}))
    times, size = timed(lambda: subset_size(root, count=count))
    rows.append(emit({"what": "pipeline.data.subset_size(path, count=3%)", "s": times, "rows": size}))
    assert full == usable and size == count
    return rows


def part_listing(root: Path) -> list[dict]:
    """The driver's check before a run (pipeline.pretrain.launch.plan_run): every shard there with its size, by
    one listing of the folder. 100,000 empty files stand for the shards (sizes 0 in the manifest)."""
    from pipeline.data.dataset import Dataset
    manifest_only(root)
    manifest = json.loads((root / "manifest.json").read_text())
    for entry in manifest["splits"]["train"]["shards"]:
        entry["bytes"] = 0
        (root / entry["path"]).touch()
    (root / "manifest.json").write_text(json.dumps(manifest))
    times, _ = timed(lambda: Dataset(root).check_listed_sizes("train"))
    return [emit({"what": "open + check every shard's size by one listing (local disk)", "s": times})]


def study_file(path: Path, images: int, name: str = "jft-300m-sim") -> Path:
    """1,000 runs: 4 micro ViT shapes x 5 lengths x 10 subsets x 5 seeds."""
    lines = ["name: bench-1000", "presets:", "  p:", f"    dataset: {{name: {name}, images: {images}}}",
             "    subsets: [0.01, 0.02, 0.03, 0.05, 0.1, 0.3, 9M, 30M, 90M, full]",
             "    seeds: [0, 1, 2, 3, 4]", "    recipe: {image_size: 32, batch_size: 4096}", "    runs:"]
    for width in (32, 64, 96, 128):
        for k in range(1, 6):
            lines.append(f"      - {{model: {{family: vit, depth: 2, width: {width}, heads: 4, "
                         f"mlp_dim: {2 * width}, patch_size: 8}}, steps: {1000 * k}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def part_plan(root: Path, work: Path) -> list[dict]:
    from pipeline.data.dataset import Dataset
    from pipeline.planning import plan
    from pipeline.spec import load_study
    os.environ.setdefault("VIT_SCALING_CACHE", str(work / "mac-cache"))
    if not (root / "manifest.json").exists():
        manifest_only(root)
    usable = Dataset(root).usable_rows("train")
    study = load_study(str(study_file(work / "study.yaml", usable)))
    start = time.perf_counter()
    cold = plan(study, "p", tracking_uri=None, data=str(root))  # counts 4 models' MACs with fvcore, once
    rows = [emit({"what": "1,000-run plan, MACs not yet cached (4 fvcore counts)",
                  "s": [time.perf_counter() - start], "runs": cold["totals"]["runs"]})]
    times, result = timed(lambda: plan(study, "p", tracking_uri=None, data=str(root)))
    rows.append(emit({"what": "1,000-run plan over the 100k-shard manifest (--plan --data)", "s": times,
                      "runs": result["totals"]["runs"]}))
    times, _ = timed(lambda: plan(study, "p", tracking_uri=None))
    rows.append(emit({"what": "1,000-run plan, the preset's declared size (no --data)", "s": times}))
    return rows


# ----------------------------------------------------------------------------- worker

def _write_shards(args: tuple[str, int, int, int]) -> list[dict]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pipeline.data.format import SHARD_SCHEMA, shard_name
    root, first, stop, total = args
    out = []
    for i in range(first, stop):
        rng = np.random.default_rng(i)
        n = 1000
        table = pa.table({"key": pa.array([f"{i}-{j}" for j in range(n)]),
                          "image": pa.array([b"\x89PNG"] * n, pa.binary()),
                          "labels": pa.array([[j % 7] for j in range(n)], pa.list_(pa.int32())),
                          "priority": pa.array(np.sort(rng.random(n)))}, schema=SHARD_SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=10, compression={"key": "zstd", "image": "none",
                       "labels": "zstd", "priority": "none"}, write_statistics=["priority"])
        data = sink.getvalue().to_pybytes()
        name = shard_name("train", i, total)
        (Path(root) / name).write_bytes(data)
        out.append({"path": name, "num_rows": n, "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(), "row_group_rows": 10})
    return out


def real_shards(folder: Path, shards: int) -> list[dict]:
    """``shards`` real shards in ``folder`` (made once; reused when there)."""
    listing = folder / "entries.json"
    if listing.exists() and len(json.loads(listing.read_text())) == shards:
        return json.loads(listing.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    step = max(1, shards // 16)
    jobs = [(str(folder), a, min(a + step, shards), shards) for a in range(0, shards, step)]
    with ProcessPoolExecutor(2) as pool:
        entries = [e for part in pool.map(_write_shards, jobs) for e in part]
    listing.write_text(json.dumps(entries))
    return entries


def dataset_of(folder: Path, entries: list[dict], count: int) -> Path:
    """A dataset of the first ``count`` shards of ``folder`` (hard links; every 50th shard with an
    exclusion)."""
    from pipeline.data.format import new_manifest, write_manifest
    root = folder.parent / f"first-{count}"
    root.mkdir(exist_ok=True)
    for e in entries[:count]:
        if not (root / e["path"]).exists():
            os.link(folder / e["path"], root / e["path"])
    manifest = new_manifest(name="bench-worker", num_classes=7, multi_label=False, subset_seed=0,
                            image={"encoding": "png"}, source={"generator": "bench_metadata"})
    chosen = entries[:count]
    manifest["splits"]["train"] = {"num_rows": sum(e["num_rows"] for e in chosen), "shards": chosen}
    manifest["exclusions"]["train"] = [{"shard": e["path"], "row": 3, "key": "x", "duplicate_of": []}
                                       for e in chosen[::50]]
    write_manifest(str(root), manifest)
    return root


def _rss_kib() -> int:
    return int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmRSS:")).split()[1])


def _one_build(code: str, root: str, want: int, out) -> None:
    import gc
    sys.path.insert(0, code)
    from pipeline.data.dataset import Dataset
    from pipeline.data.subsets import Subset
    ds = Dataset(root)
    before = _rss_kib()
    subset = Subset.build(ds, count=want)
    gc.collect()
    out.put((_rss_kib() - before, subset.num_rows))


def memory_of_one_build(root: Path, want: int) -> int:
    """KiB of resident memory one Subset.build adds in a fresh process (Linux), the Dataset (and
    the footers it caches) kept, as a loader keeps them."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_one_build, args=(sys.path[0], str(root), want, out))
    child.start()
    kib, rows = out.get()
    child.join()
    assert rows == want
    return kib


def counting_dataset(latency_s: float):
    """A Dataset class whose shard requests (size checks, opens, ranged reads) are counted and
    each wait ``latency_s`` first."""
    import threading

    import pyarrow as pa
    from pipeline.data.dataset import Dataset

    class Requests:
        def __init__(self):
            self.n, self.lock = 0, threading.Lock()

        def one(self):
            with self.lock:
                self.n += 1
            if latency_s:
                time.sleep(latency_s)

    class SlowFile:
        def __init__(self, inner, requests):
            self.inner, self.requests, self.closed = inner, requests, False

        def read(self, n=-1):
            self.requests.one()
            return self.inner.read(None if n is None or n < 0 else n)

        def seek(self, offset, whence=0):
            return self.inner.seek(offset, whence)

        def tell(self):
            return self.inner.tell()

        def seekable(self):
            return True

        def readable(self):
            return True

        def close(self):
            self.inner.close()
            self.closed = True

    class CountingDataset(Dataset):
        def __init__(self, path):
            super().__init__(path)
            self.requests = Requests()

        def open_shard(self, shard):
            self.requests.one()
            return pa.PythonFile(SlowFile(super().open_shard(shard), self.requests), mode="r")

        def checked_size(self, shard):
            if shard.path not in self._sizes:
                self.requests.one()
            return super().checked_size(shard)

    return CountingDataset


def part_worker(work: Path, shards: int, latency_ms: float) -> list[dict]:
    from pipeline.data.dataset import Dataset
    from pipeline.data.subsets import Subset
    entries = real_shards(work / "shards", shards)
    rows, held = [], []
    for count in sorted({max(1, shards // 4), max(1, shards // 2), shards}):
        root = dataset_of(work / "shards", entries, count)
        usable = sum(e["num_rows"] for e in entries[:count]) - len(entries[:count:50])
        want = round(FRACTION * usable)
        times, subset = timed(lambda: Subset.build(Dataset(root), count=want))
        assert subset.num_rows == want
        held.append((count, memory_of_one_build(root, want)))
        row = {"what": "Subset.build, 3% count subset, local disk", "shards": count, "s": times,
               "s_per_shard": min(times) / count, "s_at_100k": min(times) / count * SHARDS}
        if len(held) > 1:  # memory added a shard, between this size and the one before
            row["kib_per_shard"] = (held[-1][1] - held[-2][1]) / (held[-1][0] - held[-2][0])
        rows.append(emit(row))
    cls = counting_dataset(latency_ms / 1000)
    ds = cls(root)
    start = time.perf_counter()
    subset = Subset.build(ds, count=want)
    took = time.perf_counter() - start
    rows.append(emit({"what": f"Subset.build, 3% count subset, {latency_ms:g} ms a request", "shards": shards,
                      "s": [took], "requests_per_shard": ds.requests.n / shards, "s_per_shard": took / shards,
                      "s_at_100k": took / shards * SHARDS, "rows": subset.num_rows}))
    rows.append(emit(kept_on_a_rank(cls, root, work / "kept", want, shards, latency_ms)))
    return rows


def kept_on_a_rank(cls, root: Path, cache: Path, want: int, shards: int, latency_ms: float) -> dict:
    """What a rank pays to plan its epoch when the driver kept the subset (subsets.cached_subset):
    the shard requests and seconds of loading it, the same blocks as a build."""
    from pipeline.data.subsets import cached_subset
    built = cached_subset(cls(root), str(cache), count=want)          # the driver: builds and keeps
    ds = cls(root)
    start = time.perf_counter()
    kept = cached_subset(ds, str(cache), count=want)                # a rank: loads
    took = time.perf_counter() - start
    assert kept.blocks == built.blocks and kept.num_rows == want
    return {"what": f"the kept subset loaded by a rank, {latency_ms:g} ms a shard request", "shards": shards,
            "s": [took], "requests_per_shard": ds.requests.n / shards, "s_at_100k": took / shards * SHARDS}


def part_kept(root: Path, work: Path) -> list[dict]:
    """A kept subset at 100k shards, over the manifest-only dataset: one block a shard (what a 3%
    subset of 3,000-row shards is) and ten (a 30% one): its file's size and a rank's load."""
    from pipeline.data.dataset import Dataset
    from pipeline.data.subsets import Block, Subset
    if not (root / "manifest.json").exists():
        manifest_only(root)
    ds, rows = Dataset(root), []
    for per_shard in (1, 10):
        blocks = [Block(s, g, 30 * g, 30 * g, 30 * g + 30, 30) for s in range(SHARDS) for g in range(per_shard)]
        subset = Subset(ds, "train", 0.03 * per_shard, ds.shards("train"), [30 * per_shard] * SHARDS, blocks,
                        30 * per_shard * SHARDS)
        location = work / f"kept-{per_shard}.npz"
        saved, _ = timed(lambda: subset.save(str(location)), repeats=1)
        times, loaded = timed(lambda: Subset.load(Dataset(root), "train", str(location)))
        assert loaded.blocks == blocks
        rows.append(emit({"what": f"kept subset of {len(blocks):,} blocks: open the dataset + load "
                                  f"({location.stat().st_size / 1e6:.1f} MB; saved in {saved[0]:.1f} s)",
                          "s": times}))
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| measurement | shards | seconds (each try) | at 100k shards | requests a shard | memory a shard (KiB) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        at = f"{r['s_at_100k']:.1f} s" if "s_at_100k" in r else ""
        req = f"{r['requests_per_shard']:.2f}" if "requests_per_shard" in r else ""
        mem = f"{r['kib_per_shard']:.0f}" if "kib_per_shard" in r else ""
        out.append(f"| {r['what']} | {r.get('shards', SHARDS):,} | {', '.join(f'{s:.3f}' for s in r['s'])} | {at} | "
                   f"{req} | {mem} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="manifest,listing,plan,worker,kept")
    parser.add_argument("--real-shards", type=int, default=2000, help="real shards for the worker part")
    parser.add_argument("--latency-ms", type=float, default=10.0, help="simulated latency of a shard request")
    parser.add_argument("--work", default=None, help="folder for the data (default: a temporary one)")
    parser.add_argument("--code", default=str(ROOT), help="checkout whose pipeline is measured")
    args = parser.parse_args()
    _import_pipeline(Path(args.code))
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        if "manifest" in parts:
            rows += part_manifest(work / "manifest-100k")
        if "listing" in parts:
            rows += part_listing(work / "listed-100k")
        if "plan" in parts:
            rows += part_plan(work / "manifest-100k", work)
        if "worker" in parts:
            rows += part_worker(work, args.real_shards, args.latency_ms)
        if "kept" in parts:
            rows += part_kept(work / "manifest-100k", work)
    print(markdown(rows))
    print(f"median of the 3 tries of each: {[round(statistics.median(r['s']), 3) for r in rows]}")


if __name__ == "__main__":
    main()
