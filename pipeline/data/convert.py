"""Converting a source into the dataset format (``pipeline.data.format``): the machinery every
source format shares, and the formats by name (``python -m pipeline.data convert FORMAT SRC OUT``).

Formats, each in its own module with a ``convert_<format>(src, out, options, *, executor, progress)``:
``imagefolder``, ``cifar``, ``webdataset``, ``hfparquet``, ``imagenet`` and ``imagenet21k``;
``pipeline.data.digits`` makes scikit-learn's bundled set.
:data:`FORMATS` names each format's module; :func:`convert` imports the one asked for (so that
this module, which the formats import, imports none of them).

Each source is cut into chunks that become shards, converted in parallel (Ray tasks when Ray is
up, local processes otherwise: ``pipeline.data.parallel``). Every image is decoded once to validate
it; JPEG/PNG files that are already RGB are stored byte for byte, anything else (grayscale, palette,
alpha, other formats) becomes an RGB PNG. ``max_short_side=N`` (``--max-short-side N``) stores
images whose shorter side is above N resized (Lanczos) so that it is N, re-encoded as JPEG quality
90 when the source was a JPEG (else PNG); smaller images are stored as they are. The manifest's
``image.max_short_side`` records N (null: stored at the source's resolution), each split's in
``source.splits``. A split is added to OUT (a new or an existing dataset with the same classes).
OUT may be a folder or a URI (``s3://bucket/data/name``): shards are written there directly, the
manifest last, so the dataset exists (opens) only once it is complete.

Shards are written once, under their final names: job i of a split's n jobs writes
``SPLIT-<i>-of-<n>.parquet``. A job that finds no rows (all its images skipped, only empty synset
tars) writes no shard, so the numbers may skip one; the manifest lists the shards there are.
Nothing is renamed or copied after the jobs (in an object store a rename is a copy of every byte:
bench/RESULTS.md, issue 18).

A conversion resumes. Each finished job records its result next to its shard (the hidden file
``.SPLIT-<i>-of-<n>.result.json``, written after the shard), under a fingerprint of the plan
(``.SPLIT-plan.json``: the job function and every job's inputs, chunks and options). When a job
fails, or on Ctrl-C, the finished shards stay, no manifest is written, and the error says how many
were; the same command run again (after a failure, Ctrl-C, a killed driver or a lost node)
converts only the jobs not finished and makes the same dataset as an uninterrupted run: the same
shards, the same manifest but for its ``created`` time (so the same ``Dataset.digest``). A
different conversion into the same OUT and split (other sources, seed, --max-short-side,
--skip-bad...) removes the unfinished one's files and starts over. The hidden files go once the
manifest is written.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import math
import os
import pickle
import posixpath
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from PIL import Image

from pipeline import storage
from pipeline.exits import Interrupted
from pipeline.data.dataset import each_shard
from pipeline.data.format import FORMAT_VERSION, MANIFEST_NAME, DataError, Row, new_manifest, shard_name, write_shard
from pipeline.data.format import write_manifest
from pipeline.data.images import UndecodableImage, normalize_image
from pipeline.data.parallel import run_jobs

ROWS_PER_SHARD = 5000


class ConversionError(DataError):
    pass


@dataclass
class ShardResult:
    entry: dict[str, Any] | None
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (where, why)
    encodings: set[str] = field(default_factory=set)
    sizes: set[tuple[int, int]] = field(default_factory=set)
    class_counts: Counter = field(default_factory=Counter)
    max_label: int = -1


def finish_shard(out: str, name: str, rows: list[Row], subset_seed: int,
                  result: ShardResult) -> ShardResult:
    if rows:
        result.entry = write_shard(storage.join(out, name), rows, subset_seed)
    return result


def add_row(rows: list[Row], result: ShardResult, key: str, data: bytes,
             labels: list[int], where: str, skip_bad: bool, max_short_side: int | None) -> None:
    try:
        stored, encoding, size = normalize_image(data, max_short_side)
    except UndecodableImage as e:
        if not skip_bad:
            raise ConversionError(str(e), source=where, field="image",
                                  hint="fix or remove the file, or pass --skip-bad") from e
        result.skipped.append((where, str(e)))
        return
    rows.append(Row(key, stored, labels))
    result.encodings.add(encoding)
    result.sizes.add(size)
    result.class_counts.update(labels)
    result.max_label = max([result.max_label, *labels])


# --------------------------------------------------------------------------------------------
# Jobs (one shard each; module-level so processes and Ray can run them): the one the array formats share

def array_job(out: str, name: str, keys: list[str], images: np.ndarray, labels: list[int],
               subset_seed: int, max_short_side: int | None = None) -> ShardResult:
    result, rows = ShardResult(None), []
    for key, pixels, label in zip(keys, images, labels):
        buf = io.BytesIO()
        Image.fromarray(pixels).convert("RGB").save(buf, format="PNG", compress_level=6)
        add_row(rows, result, key, buf.getvalue(), [int(label)], key, False, max_short_side)
    return finish_shard(out, name, rows, subset_seed, result)


# --------------------------------------------------------------------------------------------
# Drivers

def run_split_jobs(out: str, split: str, fn, jobs, **kw) -> list[ShardResult]:
    """Run the split's shard jobs (``shard_jobs``: ``(out, shard name, ...)``), except those that an
    earlier run of the same plan finished. Each job's result is recorded next to its shard as it
    finishes; on failure what finished stays (not in a manifest) for the same command to go on."""
    plan = _plan_digest(fn, split, jobs)
    listing = _prepare_split(out, split, plan, fn)
    finished = _each(out, lambda job: _finished(out, job[1], plan, listing), jobs)
    done = sum(r is not None for r in finished)
    if done:
        print(f"resuming: {done} of {len(jobs)} shards already written (split {split!r} of {out})",
              file=sys.stderr)
    todo = [None if r is not None else (fn, plan, *job) for r, job in zip(finished, jobs)]
    try:
        ran = run_jobs(_run_and_record, todo, **kw)
    except BaseException as error:
        note = _abandon(out, split, jobs)
        if isinstance(error, KeyboardInterrupt):
            print(f"interrupted: {note}", file=sys.stderr)
            raise Interrupted from error
        if len(error.args) == 1 and str(error) == error.args[0]:   # DataError: the message itself
            error.args = (f"{error.args[0]}; {note}",)
        else:                           # e.g. wrapped by Ray, whose text is the worker's traceback
            print(f"convert: {note}", file=sys.stderr)
            if hasattr(error, "add_note"):  # Python 3.11+: shown with the traceback
                error.add_note(note)
        raise
    return [r if r is not None else new for r, new in zip(finished, ran)]


# --------------------------------------------------------------------------------------------
# Resuming: the files a split's conversion keeps in OUT until its manifest is written
#
#   .{split}-plan.json                  the plan's fingerprint (_plan_digest), written before any job
#   {split}-NNNNN-of-MMMMM.parquet      job NNNNN's shard (absent when it had no rows)
#   .{split}-NNNNN-of-MMMMM.result.json its ShardResult, written after the shard: "this job is done"
#
# Shards and result files are each written whole (storage.write_bytes: a local temporary file
# renamed, an object that appears when its upload completes), so a result file whose shard has the
# size it records means a complete job; any other job is run (again).

RESUME_VERSION = 2   # of these files: a change makes earlier partial conversions start over
# Version 1's files (hidden shards .{split}-NNNNN.parquet renamed at the end, their results, the
# renames' record): recognised so that a version-1 conversion left unfinished is removed.
_V1_FILES = r"\d+\.parquet|\d+\.result\.json|renames\.json"


def shard_jobs(out: str, split: str, jobs: list[tuple]) -> list[tuple]:
    """``(out, shard name, *args)`` for each job's ``args``: job i of the split's n writes
    ``<split>-<i>-of-<n>.parquet`` (``format.shard_name``), its final name."""
    return [(out, shard_name(split, i, len(jobs)), *args) for i, args in enumerate(jobs)]


def _plan_digest(fn, split: str, jobs) -> str:
    """SHA-256 of everything the split's shard bytes are made from: the job function, the split,
    every job's arguments but ``out`` (sources, how they are chunked into jobs, seed,
    max_short_side, skip_bad, num_classes...) and the versions of the libraries that encode
    images and write Parquet. Not the source files' bytes: a source changed between two runs of
    the same command is not noticed in the shards already written."""
    import PIL
    import pyarrow
    h = hashlib.sha256()
    _feed(h, [RESUME_VERSION, FORMAT_VERSION, f"{fn.__module__}.{fn.__qualname__}", split,
              PIL.__version__, pyarrow.__version__, len(jobs)])
    for job in jobs:
        _feed(h, job[1:])
    return h.hexdigest()


def _feed(h, value) -> None:
    """``value`` into the hash: as JSON where it can be (fast for long lists of paths), arrays by
    dtype, shape and bytes, anything else pickled (a plan that differs in doubt only starts over)."""
    try:
        h.update(json.dumps(value, sort_keys=True).encode() + b"\0")
        return
    except (TypeError, ValueError):
        pass
    if isinstance(value, np.ndarray) and value.dtype != object:
        h.update(f"ndarray {value.dtype.str} {value.shape}\0".encode())
        h.update(memoryview(np.ascontiguousarray(value)).cast("B"))
    elif isinstance(value, (list, tuple)):
        h.update(f"[{len(value)}\0".encode())
        for item in value:
            _feed(h, item)
    elif isinstance(value, os.PathLike):
        _feed(h, os.fspath(value))
    elif isinstance(value, np.generic):
        _feed(h, value.item())
    else:
        h.update(pickle.dumps(value, protocol=4) + b"\0")


def _record_name(shard: str) -> str:
    return f".{shard.removesuffix('.parquet')}.result.json"


def _plan_name(split: str) -> str:
    return f".{split}-plan.json"


def _resume_files(listing: Iterable[str], split: str) -> list[str]:
    """The names of ``split``'s resume files in a listing of OUT (plan, results; version 1's),
    and of the temporary files of their writers that a killed process left (``..{name}.XXXX.tmp``,
    see storage.write_bytes). Not its shards."""
    s = re.escape(split)
    kinds = rf"(\d{{5}}-of-\d{{5}}\.result\.json|plan\.json|{_V1_FILES})"
    pattern = re.compile(rf"\.{s}-{kinds}|\.\.{s}-{kinds}\..+\.tmp")
    return sorted(n for n in listing if pattern.fullmatch(n))


def _unfinished_files(listing: Iterable[str], split: str) -> list[str]:
    """Every file of an unfinished conversion of ``split`` (one its manifest does not hold): its
    resume files and its shards, with their writers' temporary files."""
    shard = rf"{re.escape(split)}-\d{{5}}-of-\d{{5}}\.parquet"
    pattern = re.compile(rf"{shard}|\.{shard}\..+\.tmp")
    return sorted([*_resume_files(listing, split), *(n for n in listing if pattern.fullmatch(n))])


def _listing(out: str) -> dict[str, int]:
    """{name: size} of the files directly in ``out`` (one listing, also of a store's prefix)."""
    base = storage.filesystem(out)[1]
    return {posixpath.basename(f.path): f.size for f in storage.files_under(out)
            if posixpath.dirname(f.path) == base}


def _read_json(out: str, name: str) -> Any:
    try:
        return json.loads(storage.read_text(storage.join(out, name)))
    except (FileNotFoundError, ValueError):
        return None


STORE_THREADS = 16   # requests at once for the files of a large conversion in a store


def _each(out: str, fn, items) -> list:
    """``[fn(item) for item in items]``: in a store, many at once when there are many (thousands
    of shards: a request costs its latency); a few, or local files, one at a time (a test store
    measured no faster with 4 or 32 threads for 200 files, and stalled 1 s on some requests)."""
    items = list(items)
    many = storage.is_remote(out) and len(items) > 2 * STORE_THREADS
    return each_shard(fn, items, threads=STORE_THREADS if many else 1)


def _remove(out: str, names: Iterable[str]) -> None:
    _each(out, lambda n: storage.delete(storage.join(out, n)), names)


def _prepare_split(out: str, split: str, plan: str, fn) -> dict[str, int]:
    """OUT made ready for the split's jobs, and listed: resume files of splits its manifest holds
    removed (they are complete), an unfinished conversion of the split with another plan removed
    (it starts over)."""
    storage.makedirs(out)
    listing = _listing(out)
    manifest = _read_json(out, MANIFEST_NAME) if MANIFEST_NAME in listing else None
    for complete in (manifest or {}).get("splits", {}):
        _remove(out, _resume_files(listing, complete))
    if split in (manifest or {}).get("splits", {}):
        raise ConversionError(f"split {split!r} already exists", dataset=out, field=f"splits.{split}",
                              hint="choose another --split or a new OUT")
    unfinished = _unfinished_files(listing, split)
    before = _read_json(out, _plan_name(split)) if _plan_name(split) in listing else None
    if unfinished and (before or {}).get("plan") != plan:
        print(f"convert: {out} holds an unfinished conversion of split {split!r} that is not this "
              f"one (other inputs or options); removing its {len(unfinished)} files and starting over",
              file=sys.stderr)
        _remove(out, unfinished)   # not in a manifest: its own
        unfinished = []
    if unfinished:
        return listing
    storage.write_text(storage.join(out, _plan_name(split)),
                       json.dumps({"plan": plan, "split": split, "job": f"{fn.__module__}.{fn.__qualname__}"}))
    return _listing(out)


def _finished(out: str, shard: str, plan: str, listing: dict[str, int]) -> ShardResult | None:
    """The result of the job of ``shard`` when a run of ``plan`` finished it (its result file
    there, its shard there with the size it records), else None."""
    if _record_name(shard) not in listing:
        return None
    record = _read_json(out, _record_name(shard))
    if not isinstance(record, dict) or record.get("plan") != plan:
        return None
    result = _result_from_json(record)
    if result.entry is not None and (result.entry["path"] != shard or listing.get(shard) != result.entry["bytes"]):
        return None
    return result


def _run_and_record(fn, plan: str, *job) -> ShardResult:
    """``fn(*job)`` (on a worker), then its result written next to its shard: after the shard, so
    that a result file says the shard is complete."""
    result = fn(*job)
    storage.write_text(storage.join(job[0], _record_name(job[1])),
                       json.dumps({"plan": plan, **_result_to_json(result)}))
    return result


def _result_to_json(r: ShardResult) -> dict[str, Any]:
    return {"entry": r.entry, "skipped": [list(s) for s in r.skipped], "encodings": sorted(r.encodings),
            "sizes": sorted([int(w), int(h)] for w, h in r.sizes),
            "class_counts": sorted([int(c), int(n)] for c, n in r.class_counts.items()),
            "max_label": int(r.max_label)}


def _result_from_json(d: dict[str, Any]) -> ShardResult:
    return ShardResult(d["entry"], [tuple(s) for s in d["skipped"]], set(d["encodings"]),
                       {tuple(s) for s in d["sizes"]}, Counter(dict(d["class_counts"])), d["max_label"])


def _abandon(out: str, split: str, jobs) -> str:
    """After a failure: what finished stays for the next run (none: the split's files go, OUT is
    as it was). Returns what to tell the user."""
    try:
        listing = _listing(out)
        written = sum(_record_name(job[1]) in listing for job in jobs)
        if not written:
            _remove(out, _unfinished_files(listing, split))
    except Exception:  # the store itself failing: the error being raised says so
        return "run the same command again to continue"
    undo = (f"delete the {split}-* and .{split}-* files in {out}" if MANIFEST_NAME in listing
            else f"delete {out}")
    return (f"{written} of {len(jobs)} shards written; run the same command again to continue, "
            f"or {undo}")


def chunks(n: int, per: int) -> list[tuple[int, int]]:
    m = max(1, math.ceil(n / per))
    bounds = np.linspace(0, n, m + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def open_output(out: str, split: str, *, num_classes: int, multi_label: bool,
                 class_names: list[str] | None, source: dict[str, Any], subset_seed: int,
                 manifest: dict | None = None) -> dict:
    """The manifest to add ``split`` to: ``manifest`` (one being made, not yet written), the
    existing one (same classes) or a new one."""
    storage.makedirs(out)
    if manifest is None and storage.is_file(storage.join(out, MANIFEST_NAME)):
        manifest = json.loads(storage.read_text(storage.join(out, MANIFEST_NAME)))
    if manifest is not None:
        if split in manifest["splits"]:
            raise ConversionError(f"split {split!r} already exists", dataset=out,
                                  field=f"splits.{split}", hint="choose another --split or a new OUT")
        if class_names is not None and manifest.get("class_names") not in (None, class_names):
            raise ConversionError(f"classes differ from the dataset's: {class_names[:5]}... vs "
                                  f"{manifest['class_names'][:5]}...", dataset=out,
                                  field="class_names", hint="convert into a new OUT")
        manifest["num_classes"] = max(manifest["num_classes"], num_classes)
        manifest["source"].setdefault("splits", {})[split] = source
        return manifest
    return new_manifest(name=storage.name(out), num_classes=num_classes, multi_label=multi_label,
                        image={}, subset_seed=subset_seed, class_names=class_names,
                        source={**source, "splits": {split: source}})


def record_split(out: str, manifest: dict, split: str, results: list[ShardResult],
                  write: bool = True) -> dict:
    """Add the split's shards to the manifest and write it (unless the caller writes it, with
    ``publish_manifest`` below, after more splits); return the counts. Stopped before the manifest
    (cifar and digits write it after every split), the next run of the same command finds every
    job done; after it, only resume files are left, removed later."""
    done = [r for r in results if r.entry is not None]
    entries = [r.entry for r in done]
    manifest["splits"][split] = {"num_rows": sum(e["num_rows"] for e in entries), "shards": entries}
    encodings = set().union(*(r.encodings for r in done)) | set(manifest["image"].get("encodings", []))
    sizes = set().union(*(r.sizes for r in done))
    if manifest["image"].get("width"):
        sizes.add((manifest["image"]["width"], manifest["image"]["height"]))
    (w, h) = next(iter(sizes)) if len(sizes) == 1 else (None, None)
    manifest["image"] = {"encoding": encodings.pop() if len(encodings) == 1 else "mixed",
                         "encodings": sorted(set().union(*(r.encodings for r in done)) |
                                             set(manifest["image"].get("encodings", []))),
                         "width": w, "height": h, "channels": 3,
                         "max_short_side": _max_short_side(manifest)}
    if write:
        publish_manifest(out, manifest)
    skipped = [s for r in results for s in r.skipped]
    counts = Counter()
    for r in results:   # update in place: sum() would copy the whole Counter once per shard (21k classes)
        counts.update(r.class_counts)
    return {"split": split, "rows": manifest["splits"][split]["num_rows"],
            "shards": len(entries), "skipped": len(skipped),
            "skipped_examples": [f"{w}: {why}" for w, why in skipped[:10]],
            "rows_per_class": {int(c): n for c, n in sorted(counts.items())}}


def publish_manifest(out: str, manifest: dict) -> None:
    """Write the manifest (whole, last: from now on the dataset opens), then remove what the
    conversion of its splits kept for a resume. Converters that write it themselves after several
    splits (cifar, digits) call this one."""
    write_manifest(out, manifest)
    listing = _listing(out)
    _remove(out, [name for split in manifest["splits"] for name in _resume_files(listing, split)])


def _max_short_side(manifest: dict) -> int | None:
    """The bound on every split's shorter image side (the splits' own in ``source.splits``);
    None when any split was stored at its source's resolution."""
    bounds = [s.get("max_short_side") for s in manifest["source"].get("splits", {}).values()]
    return None if not bounds or None in bounds else max(bounds)


@dataclass(frozen=True)
class ConvertOptions:
    """What ``convert`` writes besides the source's images: the split's name (imagefolder and
    webdataset: "train"; cifar: every split), the shard count (imagefolder), the class count
    (webdataset: largest label + 1), whether bad samples are skipped and counted rather than
    fatal (imagefolder, webdataset), the seed of the subset priorities, and the stored
    resolution: images whose shorter side is above ``max_short_side`` are resized to it (None:
    stored as they are; e.g. 256 or 320 for 224-px training, see bench/RESULTS.md issue 17)."""
    split: str | None = None
    shards: int | None = None
    num_classes: int | None = None
    skip_bad: bool = False
    seed: int = 0
    max_short_side: int | None = None
    labels: str | None = None          # imagenet: the val label file (pipeline/data/imagenet.py)
    image_column: str | None = None    # hfparquet: default the column of image structs
    label_column: str | None = None    # hfparquet: default the ClassLabel column, else "label"
    val_fraction: float | None = None  # imagenet21k: hold out this fraction of the images as "val"

    def __post_init__(self):
        if self.max_short_side is not None and self.max_short_side < 1:
            raise ValueError(f"max_short_side must be a positive number of pixels, got {self.max_short_side}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")


# --------------------------------------------------------------------------------------------
# The formats by name

FORMATS = {"imagefolder": ("pipeline.data.imagefolder", "convert_imagefolder"),
           "cifar": ("pipeline.data.cifar", "convert_cifar"),
           "webdataset": ("pipeline.data.webdataset", "convert_webdataset"),
           "hfparquet": ("pipeline.data.hfparquet", "convert_hfparquet"),
           "imagenet": ("pipeline.data.imagenet", "convert_imagenet"),
           "imagenet21k": ("pipeline.data.imagenet21k", "convert_imagenet21k")}


def convert(fmt: str, src: str | os.PathLike, out: str | os.PathLike,
            options: ConvertOptions = ConvertOptions(), *, executor: str = "auto",
            progress: bool = True) -> dict[str, Any]:
    """Convert ``src`` in format ``fmt`` into the dataset at ``out``; returns row counts."""
    if options.val_fraction is not None and fmt != "imagenet21k":
        raise ConversionError(f"--val-fraction is for imagenet21k, whose release has no validation "
                              f"split; {fmt} sources have their own splits (convert them with --split)",
                              source=src)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    module, function = FORMATS[fmt]
    return getattr(importlib.import_module(module), function)(src, out, options, executor=executor, progress=progress)
