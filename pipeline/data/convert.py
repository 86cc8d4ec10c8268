"""Converters from common layouts to the dataset format, and scikit-learn's ``digits``.

- ``imagefolder``: ``SRC/<class name>/<image files>`` (classes sorted by name -> ids 0..K-1).
- ``cifar``: the CIFAR-10/100 "python version" folder (``data_batch_*``/``test_batch`` or
  ``train``/``test`` pickles, as unpacked from the official tarball).
- ``webdataset``: tar shards whose members ``<key>.<ext>`` group into samples: one image
  (jpg/jpeg/png/webp/bmp/ppm) plus ``cls``/``label`` (an integer as text) or ``json``
  (``{"label": 3}`` or ``{"labels": [3, 7]}``).

Each source is cut into chunks that become shards, converted in parallel (Ray tasks when Ray is
up, local processes otherwise). Every image is decoded once to validate it; JPEG/PNG files that
are already RGB are stored byte for byte, anything else (grayscale, palette, alpha, other formats)
becomes an RGB PNG. ``max_short_side=N`` (``--max-short-side N``) stores images whose shorter side
is above N resized (Lanczos) so that it is N, re-encoded as JPEG quality 90 when the source was a
JPEG (else PNG); smaller images are stored as they are. The manifest's ``image.max_short_side``
records N (null: stored at the source's resolution), each split's in ``source.splits``. A split is
added to OUT (a new or an existing dataset with the same classes). OUT may be a folder or a URI
(``s3://bucket/data/name``): shards are written there directly, the manifest last, so the dataset
exists (opens) only once it is complete.

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
import io
import json
import math
import os
import pickle
import posixpath
import re
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from pipeline import storage
from pipeline.cli import Interrupted
from pipeline.data.dataset import each_shard
from pipeline.data.format import FORMAT_VERSION, MANIFEST_NAME, DataError, Row, new_manifest, shard_name, write_shard
from pipeline.data.format import write_manifest as write_manifest_file
from pipeline.data.images import UndecodableImage, decode_rgb
from pipeline.data.parallel import run_jobs

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm")
WDS_LABEL_EXTS = ("cls", "cls2", "class", "label")
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


STORED_JPEG_QUALITY = 90   # what resized JPEG sources are re-encoded with (max_short_side)


def normalize_image(data: bytes, max_short_side: int | None = None) -> tuple[bytes, str, tuple[int, int]]:
    """(bytes to store, "jpeg"|"png", (width, height)). Raises UndecodableImage.

    With ``max_short_side``, an image whose shorter side is longer is resized (Lanczos) to have
    exactly that shorter side: JPEG sources are re-encoded as JPEG (quality 90), others as PNG."""
    img = decode_rgb(data)  # full decode: validates the file
    original = Image.open(io.BytesIO(data))
    if max_short_side is not None and min(img.size) > max_short_side:
        img = img.resize(shorter_side_size(img.size, max_short_side), Image.LANCZOS)
        buf = io.BytesIO()
        if original.format == "JPEG":
            img.save(buf, format="JPEG", quality=STORED_JPEG_QUALITY)
            return buf.getvalue(), "jpeg", img.size
        img.save(buf, format="PNG", compress_level=6)
        return buf.getvalue(), "png", img.size
    if original.format in ("JPEG", "PNG") and original.mode == "RGB":
        return data, original.format.lower(), img.size
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue(), "png", img.size


def shorter_side_size(size: tuple[int, int], short: int) -> tuple[int, int]:
    """(width, height) scaled so that the shorter side is ``short`` (the aspect ratio kept)."""
    w, h = size
    if w <= h:
        return short, max(short, round(h * short / w))
    return max(short, round(w * short / h)), short


def _finish_shard(out: str, name: str, rows: list[Row], subset_seed: int,
                  result: ShardResult) -> ShardResult:
    if rows:
        result.entry = write_shard(storage.join(out, name), rows, subset_seed)
    return result


def _add_row(rows: list[Row], result: ShardResult, key: str, data: bytes,
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
# Jobs (one shard each; module-level so processes and Ray can run them)

def _imagefolder_job(out: str, name: str, items: list[tuple[str, str, int]], split: str,
                     subset_seed: int, skip_bad: bool, max_short_side: int | None) -> ShardResult:
    result, rows = ShardResult(None), []
    for path, rel, label in items:
        _add_row(rows, result, f"{split}/{rel}", Path(path).read_bytes(), [label], path, skip_bad,
                 max_short_side)
    return _finish_shard(out, name, rows, subset_seed, result)


def _array_job(out: str, name: str, keys: list[str], images: np.ndarray, labels: list[int],
               subset_seed: int, max_short_side: int | None = None) -> ShardResult:
    result, rows = ShardResult(None), []
    for key, pixels, label in zip(keys, images, labels):
        buf = io.BytesIO()
        Image.fromarray(pixels).convert("RGB").save(buf, format="PNG", compress_level=6)
        _add_row(rows, result, key, buf.getvalue(), [int(label)], key, False, max_short_side)
    return _finish_shard(out, name, rows, subset_seed, result)


def _webdataset_job(out: str, name: str, tar_path: str, split: str, subset_seed: int,
                    skip_bad: bool, num_classes: int | None, max_short_side: int | None) -> ShardResult:
    result, rows = ShardResult(None), []
    tar_name = Path(tar_path).name
    try:
        samples = _wds_samples(tar_path)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ConversionError(f"not a readable tar file: {e}", source=tar_path,
                              hint="re-download or re-create the tar shard") from e
    for key, files in samples:
        where = f"{tar_path}:{key}"
        image_ext = next((e for e in WDS_IMAGE_EXTS if e in files), None)
        try:
            if image_ext is None:
                raise ValueError(f"no image member (.{'/.'.join(WDS_IMAGE_EXTS)}) in sample; "
                                 f"found {sorted(files)}")
            labels = _wds_labels(files)
            if any(l < 0 or (num_classes is not None and l >= num_classes) for l in labels):
                raise ValueError(f"labels {labels} outside [0, {num_classes or 'inf'})")
        except ValueError as e:
            if not skip_bad:
                raise ConversionError(str(e), source=where, field="labels" if image_ext else "image",
                                      hint="fix the sample, or pass --skip-bad") from e
            result.skipped.append((where, str(e)))
            continue
        _add_row(rows, result, f"{tar_name}/{key}", files[image_ext], labels, where, skip_bad,
                 max_short_side)
    return _finish_shard(out, name, rows, subset_seed, result)


def _wds_samples(tar_path: str) -> list[tuple[str, dict[str, bytes]]]:
    """Group tar members into samples the WebDataset way: key = path up to the first dot of the
    file name, extension = the rest (lower-cased)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            directory, base = os.path.split(member.name)
            if base.startswith(".") or "." not in base:
                continue
            stem, ext = base.split(".", 1)
            key = f"{directory}/{stem}" if directory else stem
            samples.setdefault(key, {})[ext.lower()] = tar.extractfile(member).read()
    return list(samples.items())


def _wds_labels(files: dict[str, bytes]) -> list[int]:
    for ext in WDS_LABEL_EXTS:
        if ext in files:
            text = files[ext].decode("utf-8").strip()
            try:
                return [int(text)]
            except ValueError:
                raise ValueError(f".{ext} holds {text!r}, not an integer class id") from None
    if "json" in files:
        try:
            meta = json.loads(files["json"])
        except json.JSONDecodeError as e:
            raise ValueError(f".json is not valid JSON: {e}") from None
        for name in ("labels", "label", "cls", "class"):
            if name in meta:
                value = meta[name]
                values = value if isinstance(value, list) else [value]
                if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                    raise ValueError(f".json field {name!r} must be an integer or a list of them, "
                                     f"got {value!r}")
                return sorted(set(values))
        raise ValueError(f".json has no label field (labels/label/cls/class): {sorted(meta)}")
    raise ValueError(f"no label member (.{'/.'.join(WDS_LABEL_EXTS)}/.json); found {sorted(files)}")


# --------------------------------------------------------------------------------------------
# Drivers

def _run_split_jobs(out: str, split: str, fn, jobs, **kw) -> list[ShardResult]:
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


def _chunks(n: int, per: int) -> list[tuple[int, int]]:
    m = max(1, math.ceil(n / per))
    bounds = np.linspace(0, n, m + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _open_output(out: str, split: str, *, num_classes: int, multi_label: bool,
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


def _record_split(out: str, manifest: dict, split: str, results: list[ShardResult],
                  write: bool = True) -> dict:
    """Add the split's shards to the manifest and write it (unless the caller writes it, with
    ``write_manifest`` below, after more splits); return the counts. Stopped before the manifest
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
        write_manifest(out, manifest)
    skipped = [s for r in results for s in r.skipped]
    counts = Counter()
    for r in results:   # update in place: sum() would copy the whole Counter once per shard (21k classes)
        counts.update(r.class_counts)
    return {"split": split, "rows": manifest["splits"][split]["num_rows"],
            "shards": len(entries), "skipped": len(skipped),
            "skipped_examples": [f"{w}: {why}" for w, why in skipped[:10]],
            "rows_per_class": {int(c): n for c, n in sorted(counts.items())}}


def write_manifest(out: str, manifest: dict) -> None:
    """Write the manifest (whole, last: from now on the dataset opens), then remove what the
    conversion of its splits kept for a resume. Converters that write it themselves after several
    splits (cifar, digits) call this one."""
    write_manifest_file(out, manifest)
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
    items, ignored = [], []
    for label, name in enumerate(classes):
        for path in sorted((src / name).rglob("*")):
            if path.is_file():
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    items.append((str(path), str(path.relative_to(src)), label))
                else:
                    ignored.append(str(path))
    if not items:
        raise ConversionError("has no image files in its class subfolders", source=src)
    manifest = _open_output(out, split, num_classes=len(classes), multi_label=False,
                            class_names=classes, subset_seed=seed,
                            source={"converter": "imagefolder", "src": str(src.resolve()),
                                    "max_short_side": options.max_short_side})
    per = math.ceil(len(items) / shards) if shards else ROWS_PER_SHARD
    jobs = shard_jobs(out, split, [(items[a:b], split, seed, options.skip_bad, options.max_short_side)
                                   for a, b in _chunks(len(items), per)])
    results = _run_split_jobs(out, split, _imagefolder_job, jobs, weights=[len(j[2]) for j in jobs],
                       desc=f"imagefolder {split}", unit="img", executor=executor, progress=progress)
    report = _record_split(out, manifest, split, results)
    report["ignored_files"] = len(ignored)
    return report


class _CifarUnpickler(pickle.Unpickler):
    """Reads what the official CIFAR batches hold (dicts, lists, bytes and numpy arrays) and
    nothing else: a pickle naming any other class or function (code it would run) is refused."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               *((f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")),
               *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core"))}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never holds")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise ConversionError(f"cannot read CIFAR batch: {e}", source=path,
                              hint="re-extract the official python-version tarball") from e


def convert_cifar(src, out, *, split: str | None = None, seed: int = 0, executor: str = "auto",
                  progress: bool = True, max_short_side: int | None = None) -> dict[str, Any]:
    src, out = Path(src), storage.resolve(out)
    if (src / "data_batch_1").exists():
        variant, meta_file, label_key, names_key = "cifar10", "batches.meta", b"labels", b"label_names"
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    elif (src / "train").exists():
        variant, meta_file, label_key, names_key = "cifar100", "meta", b"fine_labels", b"fine_label_names"
        files = {"train": ["train"], "test": ["test"]}
    else:
        raise ConversionError("is not a CIFAR python-version folder (no data_batch_1 or train)",
                              source=src, hint="pass the folder unpacked from cifar-*-python.tar.gz")
    if split is not None and split not in files:
        raise ConversionError(f"CIFAR has splits train and test, not {split!r}", source=src)
    class_names = None
    if (src / meta_file).exists():
        class_names = [n.decode() for n in _unpickle(src / meta_file)[names_key]]
    num_classes = len(class_names) if class_names else (10 if variant == "cifar10" else 100)
    reports, manifest = [], None
    for name in ([split] if split else list(files)):
        images, labels = [], []
        for f in files[name]:
            path = src / f
            if not path.exists():
                raise ConversionError(f"missing batch file {f}", source=src, field=name)
            batch = _unpickle(path)
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(batch[label_key]):
                raise ConversionError(f"data has shape {data.shape} for {len(batch[label_key])} "
                                      f"labels; expected (N, 3072)", source=path, field="data")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(int(l) for l in batch[label_key])
        pixels = np.concatenate(images)
        bad = [i for i, l in enumerate(labels) if not 0 <= l < num_classes]
        if bad:
            raise ConversionError(f"label {labels[bad[0]]} outside [0, {num_classes})",
                                  source=src, row=bad[0], field=name)
        manifest = _open_output(out, name, num_classes=num_classes, manifest=manifest,
                                multi_label=False, class_names=class_names, subset_seed=seed,
                                source={"converter": "cifar", "variant": variant,
                                        "src": str(src.resolve()), "max_short_side": max_short_side})
        jobs = shard_jobs(out, name, [([f"{variant}-{name}-{j:05d}" for j in range(a, b)], pixels[a:b],
                                        labels[a:b], seed, max_short_side)
                                       for a, b in _chunks(len(labels), 10000)])
        results = _run_split_jobs(out, name, _array_job, jobs, weights=[len(j[3]) for j in jobs],
                           desc=f"{variant} {name}", unit="img", executor=executor, progress=progress)
        reports.append(_record_split(out, manifest, name, results, write=False))
    write_manifest(out, manifest)  # every split there: the dataset opens from now on
    return {"splits": reports}


def _tar_files(src: Path) -> list[Path]:
    if src.is_dir():
        tars = sorted(src.glob("*.tar"))
    elif src.exists():
        tars = [src]
    else:
        tars = sorted(Path(src.anchor or ".").glob(str(src).lstrip("/"))) if any(
            c in str(src) for c in "*?[") else []
    if not tars:
        raise ConversionError("no .tar shards found", source=src,
                              hint="pass a .tar file, a folder of .tar files, or a glob")
    return tars


def convert_webdataset(src, out, options: ConvertOptions = ConvertOptions(), *,
                       executor: str = "auto", progress: bool = True) -> dict[str, Any]:
    """WebDataset tar shards -> split ``options.split`` (default train) of ``out``."""
    split, seed, num_classes = options.split or "train", options.seed, options.num_classes
    src, out = Path(src), storage.resolve(out)
    tars = _tar_files(src)
    storage.makedirs(out)
    jobs = shard_jobs(out, split, [(str(t), split, seed, options.skip_bad, num_classes, options.max_short_side)
                                   for t in tars])
    results = _run_split_jobs(out, split, _webdataset_job, jobs, weights=[t.stat().st_size for t in tars],
                       desc=f"webdataset {split}", unit="B", executor=executor, progress=progress)
    if num_classes is None:
        num_classes = max(r.max_label for r in results) + 1
    multi_label = _any_multi_label(out, results)
    manifest = _open_output(out, split, num_classes=num_classes,
                            multi_label=multi_label, class_names=None, subset_seed=seed,
                            source={"converter": "webdataset", "src": [str(t.resolve()) for t in tars],
                                    "max_short_side": options.max_short_side})
    manifest["multi_label"] = manifest.get("multi_label", False) or multi_label
    return _record_split(out, manifest, split, results)


def _any_multi_label(out: str, results: Iterable[ShardResult]) -> bool:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    for r in results:
        if r.entry is not None:
            with storage.open_input(storage.join(out, r.entry["path"])) as f:
                labels = pq.read_table(f, columns=["labels"]).column("labels")
            if pc.max(pc.list_value_length(labels)).as_py() > 1:
                return True
    return False


# --------------------------------------------------------------------------------------------
# digits

DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


def convert_digits(out, *, progress: bool = True) -> dict[str, Any]:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), real data that
    needs no download. Fixed stratified split: 1347 train / 450 test (random_state=0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values are 0..16
    index = np.arange(len(pixels))
    train_idx, test_idx = train_test_split(index, test_size=DIGITS_TEST_FRACTION,
                                           random_state=DIGITS_SPLIT_SEED, stratify=digits.target)
    out = storage.resolve(out)
    reports, manifest = [], None
    for split, idx in (("train", np.sort(train_idx)), ("test", np.sort(test_idx))):
        manifest = _open_output(out, split, num_classes=10, multi_label=False, manifest=manifest,
                                class_names=[str(d) for d in range(10)], subset_seed=0,
                                source={"converter": "digits",
                                        "src": "sklearn.datasets.load_digits",
                                        "split": f"stratified, test_size={DIGITS_TEST_FRACTION}, "
                                                 f"random_state={DIGITS_SPLIT_SEED}"})
        jobs = shard_jobs(out, split, [([f"digits-{i:04d}" for i in idx], pixels[idx],
                                        [int(t) for t in digits.target[idx]], 0)])
        results = run_jobs(_array_job, jobs, weights=[len(idx)], desc=f"digits {split}",
                           unit="img", executor="inline", progress=progress)
        reports.append(_record_split(out, manifest, split, results, write=False))
    write_manifest(out, manifest)  # both splits there: the dataset opens from now on
    return {"splits": reports}
