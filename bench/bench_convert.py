"""Converting ImageNet-21k as it is downloaded (issue 18), at scale: what the plan and a resume cost
with fall11's 21,841 synset tars in many shards (in a folder and in an S3 store), and how fast one
core converts ImageNet-like photos against decoding them alone.

    python bench/bench_convert.py                                          # about 6 minutes on 2 cores
    python bench/bench_convert.py --synsets 300 --shards 30 --photos 40    # smoke (tests/test_bench.py)

Parts:
- plan + resume: an outer tar of ``--synsets`` synset tars (one small JPEG each, so that the
  bookkeeping, not the images, is what is timed), converted into ``--shards`` shards with one
  process (``executor="inline"``), once through, and once stopped (Ctrl-C) while the last shard's
  synset is read, then resumed by the same call. Each conversion is timed in three phases: before
  the jobs (listing the outer tar, the plan's fingerprint, reading what an earlier run finished),
  the jobs, and after them (the split's counts, the manifest, removing the resume files; before
  f8296a8, also renaming every shard). Into a folder and into SeaweedFS (tests/servers.py, on this
  machine: loopback, no network latency).
- rate: ``--photos`` photos made as bench/bench_photos.py makes them (about 76 kB, 400-500 px), one
  synset tar per source photo in an outer tar, converted in one process; CPU-seconds per image
  against reading the same bytes and decoding them with Pillow (what the conversion checks every
  image with) and with simplejpeg (the loader's decoder), and with ``--max-short-side 256``.
Prints Markdown tables for bench/RESULTS.md; ``--json FILE`` also writes the numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]  # tests/: the store, tar writers

from pipeline.data import convert as conversion, imagenet21k as imagenet  # noqa: E402
from pipeline.data.convert import ConvertOptions  # noqa: E402
from pipeline.data.convert import convert  # noqa: E402
from pipeline.data.dataset import Dataset  # noqa: E402
from pipeline.data.images import _turbo_rgb, decode_rgb  # noqa: E402
from test_data_imagenet import add_bytes, jpeg  # noqa: E402


def synset_tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            add_bytes(tar, name, data)
    return buf.getvalue()


def write_outer_tar(path: Path, synsets: dict[str, dict[str, bytes]]) -> None:
    """``fall11_whole.tar``'s layout: ``<wnid>.tar`` members, each a tar of that synset's images."""
    with tarfile.open(path, "w") as tar:
        for wnid, members in synsets.items():
            add_bytes(tar, f"{wnid}.tar", synset_tar_bytes(members))


# ------------------------------------------------------------------------------------ plan + resume

class Phases:
    """Wall times of one conversion before, during and after its jobs (``run_jobs`` wrapped)."""

    def __init__(self):
        self.marks: list[float] = []

    @contextlib.contextmanager
    def timing(self):
        real = conversion.run_jobs

        def timed(*args, **kw):
            self.marks.append(time.perf_counter())
            try:
                return real(*args, **kw)
            finally:
                self.marks.append(time.perf_counter())
        conversion.run_jobs = timed
        start = time.perf_counter()
        try:
            yield self
        finally:
            conversion.run_jobs = real
            self.marks = [start, *self.marks, time.perf_counter()]

    def row(self) -> dict[str, float]:
        start, jobs, done, end = self.marks
        return {"before_s": jobs - start, "jobs_s": done - jobs, "after_s": end - done, "total_s": end - start}


@contextlib.contextmanager
def ctrl_c_at(wnid: str):
    """Ctrl-C as the conversion starts reading synset ``wnid``."""
    real = imagenet._synset_images

    def stop(synset, wanted=None):
        if synset.wnid == wnid:
            raise KeyboardInterrupt
        return real(synset, wanted)
    imagenet._synset_images = stop
    try:
        yield
    finally:
        imagenet._synset_images = real


def convert_timed(outer: Path, out: str, shards: int) -> dict[str, float]:
    phases = Phases()
    with phases.timing():
        convert("imagenet21k", outer, out, ConvertOptions(shards=shards), executor="inline", progress=False)
    return phases.row()


def plan_and_resume(outer: Path, wnids: list[str], where: str, shards: int) -> dict[str, dict]:
    """One conversion through, then one stopped at the last synset and resumed, into ``where``."""
    rows = {"through": convert_timed(outer, f"{where}/through", shards)}
    with contextlib.suppress(KeyboardInterrupt), ctrl_c_at(wnids[-1]):
        convert("imagenet21k", outer, f"{where}/resumed", ConvertOptions(shards=shards),
                executor="inline", progress=False)
    rows["resumed"] = convert_timed(outer, f"{where}/resumed", shards)
    same = Dataset(f"{where}/through").manifest["splits"] == Dataset(f"{where}/resumed").manifest["splits"]
    assert same, "a resumed conversion made other shards than one that ran through"
    return rows


def listing_seconds(outer: Path) -> float:
    start = time.perf_counter()
    imagenet.find_synset_tars(outer)
    return time.perf_counter() - start


def bookkeeping(work: Path, args: argparse.Namespace) -> dict:
    wnids = [f"n{k:08d}" for k in range(1, args.synsets + 1)]
    outer = work / "fall11_whole.tar"
    write_outer_tar(outer, {w: {f"{w}_1.JPEG": jpeg(k, (32, 24))} for k, w in enumerate(wnids)})
    result = {"synsets": args.synsets, "shards": args.shards, "outer_tar_MB": outer.stat().st_size / 1e6,
              "listing_s": min(listing_seconds(outer) for _ in range(3)),
              "folder": plan_and_resume(outer, wnids, str(work / "out"), args.shards)}
    if not args.no_store:
        from servers import make_bucket, seaweedfs
        with seaweedfs(work / "store") as store:
            os.environ.update(store["env"])
            make_bucket(store["env"], "bench")
            result["store"] = plan_and_resume(outer, wnids, "s3://bench/in21k", args.shards)
    return result


# ------------------------------------------------------------------------------------------- rate

def photo_synsets(work: Path, n: int) -> dict[str, dict[str, bytes]]:
    """bench_photos' photos, one synset per source photo."""
    from bench_photos import write_photo_folder
    folder = work / "photos"
    write_photo_folder(folder, n, seed=0)
    return {f"n{k + 1:08d}": {p.name: p.read_bytes() for p in sorted(source.iterdir())}
            for k, source in enumerate(sorted(folder.iterdir()))}


def cpu_per_image(fn, images: list[bytes], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn(images)
        best = min(best, time.process_time() - start)
    return best / len(images)


def conversion_run(outer: Path, work: Path, max_short_side: int | None):
    counter = iter(range(10**6))

    def run(_images) -> None:
        out = work / f"rate-{max_short_side}-{next(counter)}"
        convert("imagenet21k", outer, out, ConvertOptions(shards=2, max_short_side=max_short_side),
                executor="inline", progress=False)
    return run


def rates(work: Path, args: argparse.Namespace) -> dict:
    synsets = photo_synsets(work, args.photos)
    images = [data for members in synsets.values() for data in members.values()]
    outer = work / "photos.tar"
    write_outer_tar(outer, synsets)
    runs = {
        "read the bytes (tar members)": lambda _: [len(m) for s in imagenet.find_synset_tars(outer)[0]
                                                   for _, m in imagenet._synset_images(s)],
        "decode, Pillow (decode_rgb)": lambda ims: [decode_rgb(d) for d in ims],
        "decode, simplejpeg": lambda ims: [_turbo_rgb(d) for d in ims],
        "convert imagenet21k": conversion_run(outer, work, None),
        "convert imagenet21k --max-short-side 256": conversion_run(outer, work, 256),
    }
    ms = {name: 1e3 * cpu_per_image(fn, images, args.repeats) for name, fn in runs.items()}
    return {"photos": len(images), "mean_kB": float(np.mean([len(d) for d in images]) / 1e3), "ms_per_image": ms}


# ------------------------------------------------------------------------------------------ report

def report(result: dict) -> None:
    b = result.get("bookkeeping")
    if b:
        print(f"\n{b['synsets']:,} synset tars (one small JPEG each) in an outer tar of {b['outer_tar_MB']:.0f} MB, "
              f"{b['shards']:,} shards; listing the outer tar: {b['listing_s']:.2f} s\n")
        print("| into | conversion | before the jobs (s) | jobs (s) | after the jobs (s) | total (s) |")
        print("|---|---|---|---|---|---|")
        for where in ("folder", "store"):
            for kind, row in b.get(where, {}).items():
                print(f"| {where} | {kind} | {row['before_s']:.2f} | {row['jobs_s']:.2f} | {row['after_s']:.2f} | "
                      f"{row['total_s']:.2f} |")
    r = result.get("rate")
    if r:
        print(f"\n{r['photos']} photos, mean {r['mean_kB']:.0f} kB; CPU ms per image, one process, best of runs\n")
        print("| step | CPU ms / image | images per CPU-second |")
        print("|---|---|---|")
        for name, ms in r["ms_per_image"].items():
            print(f"| {name} | {ms:.2f} | {1e3 / ms:,.0f} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--synsets", type=int, default=21841, help="synset tars in the plan/resume part (fall11: 21,841)")
    p.add_argument("--shards", type=int, default=1000, help="shards they are grouped into")
    p.add_argument("--photos", type=int, default=700, help="photos in the rate part")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parts", default="bookkeeping,rate", help="comma-separated: bookkeeping, rate")
    p.add_argument("--no-store", action="store_true", help="skip the S3 store in the bookkeeping part")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    parts = set(args.parts.split(","))
    result = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        work = Path(tmp)
        if "bookkeeping" in parts:
            result["bookkeeping"] = bookkeeping(work, args)
        if "rate" in parts:
            result["rate"] = rates(work, args)
    result["load_after"] = os.getloadavg()
    print(f"load average before/after: {result['load_before'][0]:.2f} / {result['load_after'][0]:.2f}")
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
