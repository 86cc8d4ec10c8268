"""The dataset format: a JSON manifest plus Parquet shards, and nested subsets of it.

A dataset is a directory::

    manifest.json
    train-00000-of-00004.parquet ...   (one or more splits; pretraining sets have only "train")

The manifest lists each split's shards; readers open those. A converter names shard i of its n
jobs ``<split>-<i>-of-<n>``, and a job that found no rows writes none, so the numbers may skip one.

Every shard row is (``key``: unique string, ``image``: encoded PNG/JPEG bytes, ``labels``: list of
class ids, ``priority``: float in [0, 1) = hash(key, subset_seed)). Rows are sorted by priority
inside each shard and written in small row groups, so the subset of fraction f (all rows with
priority < f) is a *prefix* of every shard: nested by construction, and a reader can tell from the
row-group statistics which groups it needs without touching image bytes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import operator
import os
import posixpath
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage

log = logging.getLogger(__name__)

FORMAT_NAME = "vit-scaling-dataset"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

SHARD_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),
    pa.field("labels", pa.list_(pa.int32()), nullable=False),
    pa.field("priority", pa.float64(), nullable=False),
])


class DataError(Exception):
    """A problem with a dataset, said for people: what is wrong, where, and what to do.

    The message names the dataset (or the conversion's source file), and when known the shard,
    row and field.
    """

    def __init__(self, message: str, *, dataset: str | os.PathLike | None = None,
                 shard: str | None = None, row: int | None = None, field: str | None = None,
                 hint: str | None = None, source: str | os.PathLike | None = None):
        self.dataset, self.shard, self.row, self.field = dataset, shard, row, field
        self.source, self.problem, self.hint = source, message, hint
        where = [f"{name} {value}" for name, value in
                 (("source", source), ("dataset", dataset), ("shard", shard), ("row", row),
                  ("field", field)) if value is not None]
        text = message if not where else f"{', '.join(where)}: {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


# --------------------------------------------------------------------------------------------
# Priorities: where a row falls in the nested subsets.

def subset_priority(key: str, seed: int) -> float:
    """Priority in [0, 1) of a row: a keyed hash of its key, so it never depends on shard layout."""
    return _keyed_draw(key, seed, b"")


def holdout_draw(key: str, seed: int) -> float:
    """A second keyed hash of a row's key in [0, 1), independent of its subset priority: a
    converter that cuts a held-out split from a source that has none (``--val-fraction``) holds
    out the rows whose draw is below the fraction. The held-out rows are a uniform draw, and the
    rows left keep uniform priorities, so their nested subsets are as they would be without it."""
    return _keyed_draw(key, seed, b"holdout")


def _keyed_draw(key: str, seed: int, person: bytes) -> float:
    """A number in [0, 1) from BLAKE2b of ``key`` keyed by ``seed``; ``person`` (BLAKE2's
    personalisation) makes draws that are independent of each other for the same key and seed."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=person,
                             key=int(seed).to_bytes(8, "little", signed=True)).digest()
    # Top 53 bits, so the float is exact and strictly below 1.
    return (int.from_bytes(digest, "little") >> 11) / float(1 << 53)


def subset_priorities(keys: Iterable[str], seed: int) -> np.ndarray:
    return np.fromiter((subset_priority(k, seed) for k in keys), dtype=np.float64)


def default_row_group_rows(num_rows: int) -> int:
    """Small row groups (about 1% of a shard, 8..1024 rows) so subsets skip what they don't need."""
    return int(min(1024, max(8, math.ceil(num_rows / 100))))


# --------------------------------------------------------------------------------------------
# Writing

@dataclass
class Row:
    key: str
    image: bytes
    labels: Sequence[int]


def write_shard(path: str, rows: Sequence[Row], subset_seed: int,
                row_group_rows: int | None = None) -> dict[str, Any]:
    """Write one shard (rows sorted by priority) to ``path`` (a local path or a URI) and return
    its manifest entry. The shard is made in memory and written whole (see ``storage``)."""
    keys = [r.key for r in rows]
    priority = subset_priorities(keys, subset_seed)
    order = np.argsort(priority, kind="stable")
    table = pa.table({
        "key": pa.array([keys[i] for i in order], pa.string()),
        "image": pa.array([rows[i].image for i in order], pa.binary()),
        "labels": pa.array([list(map(int, rows[i].labels)) for i in order], pa.list_(pa.int32())),
        "priority": pa.array(priority[order], pa.float64()),
    }, schema=SHARD_SCHEMA)
    rg = row_group_rows or default_row_group_rows(len(rows))
    sink = pa.BufferOutputStream()
    # Images are already compressed: don't spend time compressing them again.
    pq.write_table(table, sink, row_group_size=rg, compression={"key": "zstd", "image": "none",
                   "labels": "zstd", "priority": "none"}, write_statistics=["priority"])
    data = sink.getvalue()
    storage.write_bytes(path, data)
    return {"path": storage.name(path), "num_rows": len(rows), "bytes": data.size,
            "sha256": hashlib.sha256(memoryview(data)).hexdigest(), "row_group_rows": rg}


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def write_manifest(root: str, manifest: dict[str, Any]) -> None:
    """Replace the manifest whole (readers never see half a file). Writers call it last: a
    dataset opens only once all its shards are there."""
    storage.write_text(storage.join(root, MANIFEST_NAME), json.dumps(manifest, indent=1) + "\n")


def new_manifest(*, name: str, num_classes: int, multi_label: bool, image: dict[str, Any],
                 subset_seed: int, source: dict[str, Any],
                 class_names: Sequence[str] | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "name": name,
        "num_classes": int(num_classes), "multi_label": bool(multi_label),
        "class_names": list(class_names) if class_names is not None else None,
        "image": image, "subset_seed": int(subset_seed), "source": source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "splits": {}, "exclusions": {},
    }


def copy_dataset(source: str, target: str, progress: bool = True) -> str:
    """Copy a dataset between locations (e.g. a local folder up to ``s3://bucket/data/name``):
    shards first, each checked against the manifest's size, the manifest last."""
    from tqdm import tqdm
    ds = Dataset(source)
    target = storage.resolve(target)
    if storage.is_file(storage.join(target, MANIFEST_NAME)):
        raise DataError("already holds a dataset", dataset=target, hint="remove it first or copy elsewhere")
    shards = [s for split in ds.splits for s in ds.shards(split)]
    bar = tqdm(total=sum(max(s.bytes, 0) for s in shards), unit="B", unit_scale=True, disable=not progress,
               desc=f"copy {storage.name(ds.root)}")
    for shard in shards:
        destination = storage.join(target, shard.path)
        storage.copy_file(ds.shard_path(shard), destination)
        if shard.bytes >= 0 and storage.size(destination) != shard.bytes:
            raise DataError(f"copy has {storage.size(destination)} bytes, the manifest says {shard.bytes}",
                            dataset=target, shard=shard.path, hint="run the copy again")
        bar.update(max(shard.bytes, 0))
    bar.close()
    write_manifest(target, ds.manifest)
    return target


# --------------------------------------------------------------------------------------------
# Reading

@dataclass(frozen=True)
class ShardInfo:
    split: str
    index: int
    path: str            # relative to the dataset root, as in the manifest
    num_rows: int
    bytes: int
    sha256: str


SHARD_FILES = 32
FOOTERS_DECODED = 64  # decoded footers kept; the others as their bytes (~10x smaller), see _footer


class Dataset:
    """A dataset in a folder or under a URI: manifest, shards and their Parquet footers (read
    once, cached). Shards are read with ranged reads: footers, then only the row groups needed."""

    def __init__(self, path: str | os.PathLike):
        self.root = storage.resolve(path)
        manifest_path = storage.join(self.root, MANIFEST_NAME)
        if not storage.is_file(manifest_path):
            raise DataError(f"no {MANIFEST_NAME} found", dataset=self.root,
                            hint="a dataset is a folder made by `python -m pipeline.data synth|convert|digits`")
        try:
            self.manifest: dict[str, Any] = json.loads(storage.read_text(manifest_path))
        except json.JSONDecodeError as e:
            raise DataError(f"{MANIFEST_NAME} is not valid JSON: {e}", dataset=self.root,
                            field="manifest") from e
        self._check_manifest()
        self._footers: dict[str, bytes] = {}                 # every footer read, compressed
        self._decoded: dict[str, pq.FileMetaData] = {}       # the FOOTERS_DECODED used last
        self._sizes: dict[str, int] = {}
        self._handles: dict[str, pa.NativeFile] = {}
        self._lock = threading.Lock()
        self._excluded: dict[str, dict[str, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:  # open files stay in their process
        return {**self.__dict__, "_handles": {}, "_decoded": {}, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    # -- manifest ---------------------------------------------------------------------------
    def _check_manifest(self) -> None:
        m = self.manifest
        if m.get("format") != FORMAT_NAME:
            raise DataError(f"manifest format is {m.get('format')!r}, expected {FORMAT_NAME!r}",
                            dataset=self.root, field="format")
        if m.get("format_version", 0) > FORMAT_VERSION:
            raise DataError(f"manifest format_version {m['format_version']} is newer than this "
                            f"reader ({FORMAT_VERSION})", dataset=self.root, field="format_version",
                            hint="upgrade the pipeline")
        for fieldname in ("num_classes", "splits", "subset_seed"):
            if fieldname not in m:
                raise DataError("missing from the manifest", dataset=self.root, field=fieldname)
        if not isinstance(m["num_classes"], int) or m["num_classes"] < 1:
            raise DataError(f"num_classes must be a positive integer, got {m['num_classes']!r}",
                            dataset=self.root, field="num_classes")
        for split, entry in m["splits"].items():
            for i, shard in enumerate(entry.get("shards", [])):
                rel = shard.get("path", "")
                if not _plain_name(rel):  # the common case, checked without building paths
                    self._resolve(rel, f"splits.{split}.shards[{i}].path")

    def _resolve(self, rel: str, fieldname: str) -> str:
        """Shard paths must stay inside the dataset folder (a manifest is not allowed to point at
        arbitrary files on the reader's machine)."""
        normal = posixpath.normpath(rel) if rel else ""
        if not rel or "\\" in rel or ":" in rel or posixpath.isabs(rel) or normal.split("/")[0] in ("..", "."):
            raise DataError(f"shard path {rel!r} escapes the dataset folder", dataset=self.root,
                            field=fieldname, hint="shard paths must be relative and inside the folder")
        return storage.join(self.root, normal)

    @property
    def name(self) -> str:
        """The dataset's name (its manifest's, else its folder's): what run ids hash, not its location."""
        return str(self.manifest.get("name") or storage.name(self.root))

    @property
    def digest(self) -> str:
        """The manifest's content hash (16 hex digits of SHA-256 over its canonical JSON): the same
        dataset anywhere (a copy in an object store) has the same digest; any change of a shard
        (its checksum is in the manifest), class or split changes it; the time it was made
        (``created``) does not: a conversion resumed after a kill has the digest of one that ran
        through."""
        content = {k: v for k, v in self.manifest.items() if k != "created"}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def multi_label(self) -> bool:
        return bool(self.manifest.get("multi_label", False))

    @property
    def subset_seed(self) -> int:
        return int(self.manifest["subset_seed"])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def shards(self, split: str = "train") -> list[ShardInfo]:
        return [ShardInfo(split, i, s["path"], int(s["num_rows"]), int(s.get("bytes", -1)),
                          s.get("sha256", ""))
                for i, s in enumerate(self._shard_entries(split))]

    def _shard_entries(self, split: str) -> list[dict[str, Any]]:
        if split not in self.manifest["splits"]:
            raise DataError(f"no split {split!r}; this dataset has {self.splits}",
                            dataset=self.root, field="splits")
        return self.manifest["splits"][split]["shards"]

    def num_rows(self, split: str = "train") -> int:
        """Rows of the split, exclusions included (manifest only)."""
        return sum(int(s["num_rows"]) for s in self._shard_entries(split))

    def usable_rows(self, split: str = "train") -> int:
        """Rows of the split minus de-duplication exclusions, from the manifest alone (no shard
        is opened): the full subset's size and the most a ``count=`` subset can take."""
        entries, index = self._shard_entries(split), self._exclusions(split)
        rows = sum(int(s["num_rows"]) for s in entries)
        if index:  # only the shards with exclusions cost more than a sum
            rows -= sum(int(s["num_rows"]) - _usable(int(s["num_rows"]), index[s["path"]])
                        for s in entries if s["path"] in index)
        return rows

    def subset_rows(self, split: str = "train", *, fraction: float | None = None,
                    count: int | None = None) -> int:
        """Rows of ``subset(fraction=, count=, split=)`` from the manifest alone (no shard is
        opened), for the subsets whose size the manifest says: the full split (fraction None or
        1.0) and ``count=`` subsets (the count, checked against the usable rows, as ``subset``
        checks it). A fraction below 1 is a priority threshold whose row count only the shards
        know: build the subset (``RunSpec.subset_selector`` turns fractions into counts)."""
        if fraction is not None and count is not None:
            raise ValueError("give a subset fraction or a count, not both")
        if count is None:
            if fraction is not None and float(fraction) != 1.0:
                raise ValueError(f"the size of a fraction-{fraction} subset is not in the manifest: "
                                 "build the subset, or ask for a count")
            return self.usable_rows(split)
        if int(count) <= 0:
            raise ValueError(f"subset count must be positive, got {count}")
        usable = self.usable_rows(split)
        if int(count) > usable:
            raise DataError(f"asked for {count} rows, the split has only {usable} usable rows",
                            dataset=self.root, field=f"splits.{split}")
        return int(count)

    def shard_path(self, shard: ShardInfo) -> str:
        return self._resolve(shard.path, "path")

    # -- shards -----------------------------------------------------------------------------
    def open_shard(self, shard: ShardInfo) -> pa.NativeFile:
        """A random-access file for ``pq.ParquetFile``. Kept as one method so that byte counters
        (bench/, tests) can be swapped in one place."""
        return storage.open_input(self.shard_path(shard))

    def checked_size(self, shard: ShardInfo) -> int:
        """The shard's size, checked against the manifest once per Dataset object (one request
        to an object store); later opens of the shard reuse it."""
        if shard.path in self._sizes:
            return self._sizes[shard.path]
        try:
            found = storage.info(self.shard_path(shard))
        except OSError as e:
            raise DataError(f"shard cannot be reached: {e}", dataset=self.root, shard=shard.path) from e
        self._check_size(shard, found.type == storage.FileType.File, found.size)
        self._sizes[shard.path] = found.size
        return found.size

    def _check_size(self, shard: ShardInfo, is_file: bool, size: int) -> None:
        if not is_file:
            raise DataError("shard file is missing", dataset=self.root, shard=shard.path,
                            hint="re-create or re-download the dataset")
        if shard.bytes >= 0 and size != shard.bytes:
            raise DataError(f"file is {size} bytes, the manifest says {shard.bytes} "
                            f"({'truncated' if size < shard.bytes else 'changed'})",
                            dataset=self.root, shard=shard.path,
                            hint="re-create the shard; `python -m pipeline.data verify` checks all shards")

    def check_listed_sizes(self, split: str = "train") -> None:
        """Every shard of the split is there with the manifest's size, from one listing of the
        dataset's folder (an object store lists 1000 objects a request: 100 requests for 100k
        shards, where checking each shard is a request each). Raises :class:`DataError` naming
        the first missing, truncated or changed shard. Reads no shard."""
        try:
            base = storage.filesystem(self.root)[1].rstrip("/") + "/"
            listed = {f.path[len(base):]: f.size for f in storage.files_under(self.root)
                      if f.path.startswith(base)}
        except OSError as e:
            raise DataError(f"the dataset's folder cannot be listed: {e}", dataset=self.root) from e
        for shard in self.shards(split):
            rel = posixpath.normpath(shard.path)
            self._check_size(shard, rel in listed, listed.get(rel, -1))
            self._sizes[shard.path] = listed[rel]

    def _shard_file(self, shard: ShardInfo) -> pa.NativeFile:
        """One open file per shard, shared by readers (ranged reads are thread-safe), for the
        SHARD_FILES shards used last: an object store answers every open with a request. A file
        dropped from the list closes when its last reader lets go of it."""
        with self._lock:
            handle = self._handles.pop(shard.path, None)
        if handle is None or handle.closed:
            handle = self.open_shard(shard)
        with self._lock:
            self._handles[shard.path] = handle
            while len(self._handles) > SHARD_FILES:
                self._handles.pop(next(iter(self._handles)))
        return handle

    def parquet_file(self, shard: ShardInfo) -> pq.ParquetFile:
        """The shard as a ParquetFile; close it with ``close()`` (the shard's file stays open)."""
        size = self.checked_size(shard)
        handle = self._shard_file(shard)
        try:
            # pre_buffer: the column chunks of a row group in one coalesced read (one request to a store)
            pf = pq.ParquetFile(handle, metadata=self._footer(shard, handle, size), pre_buffer=True)
        except (pa.ArrowException, OSError) as e:
            with self._lock:
                self._handles.pop(shard.path, None)
            raise DataError(f"not a readable Parquet file: {e}", dataset=self.root,
                            shard=shard.path, hint="re-create the shard") from e
        if pf.schema_arrow.remove_metadata() != SHARD_SCHEMA:
            pf.close()
            raise DataError(f"schema is {pf.schema_arrow} but must be {SHARD_SCHEMA}",
                            dataset=self.root, shard=shard.path, field="schema")
        return pf

    def _footer(self, shard: ShardInfo, handle: pa.NativeFile, size: int) -> pq.FileMetaData:
        """The shard's Parquet metadata, read from the shard once. A decoded footer of 100 row
        groups takes ~360 KB (36 GB for 100k shards), its bytes ~32 KB, compressed ~7 KB: footers
        are kept compressed and decoded again (~0.1-0.4 ms) when not among the FOOTERS_DECODED
        used last."""
        with self._lock:
            meta = self._decoded.pop(shard.path, None)
            if meta is not None:
                self._decoded[shard.path] = meta
                return meta
            packed = self._footers.get(shard.path)
        raw = read_footer_bytes(handle, size) if packed is None else zlib.decompress(packed)
        meta = pq.read_metadata(pa.BufferReader(raw))
        if packed is None:
            packed = zlib.compress(raw, 1)
        with self._lock:
            self._footers[shard.path] = packed
            self._decoded[shard.path] = meta
            while len(self._decoded) > FOOTERS_DECODED:
                self._decoded.pop(next(iter(self._decoded)))
        return meta

    def excluded_rows(self, split: str, shard: ShardInfo) -> np.ndarray:
        """Sorted row indices of the shard that de-duplication excluded."""
        return self._exclusions(split).get(shard.path, _NONE)

    def _exclusions(self, split: str) -> dict[str, np.ndarray]:
        """{shard path: its sorted excluded rows} of a split, indexed in one pass over the
        manifest's exclusions (not one pass a shard: 100k shards x 10k exclusions)."""
        if split not in self._excluded:
            rows: dict[str, list[int]] = {}
            for e in self.manifest.get("exclusions", {}).get(split, []):
                rows.setdefault(e["shard"], []).append(int(e["row"]))
            self._excluded[split] = {path: np.unique(np.asarray(r, dtype=np.int64))
                                     for path, r in rows.items()}
        return self._excluded[split]

    def subset(self, fraction: float | None = None, count: int | None = None,
               split: str = "train", on_unreadable: str = "raise",
               exclude_fraction: float | None = None) -> "Subset":
        return Subset.build(self, split=split, fraction=fraction, count=count,
                            on_unreadable=on_unreadable, exclude_fraction=exclude_fraction)


_NONE = np.zeros(0, dtype=np.int64)  # a shard without exclusions
_NONE.flags.writeable = False


def _usable(num_rows: int, excluded: np.ndarray) -> int:
    """Rows of a shard that are not excluded (exclusions past its end do not count)."""
    return num_rows - int(np.searchsorted(excluded, num_rows))


def _plain_name(rel: Any) -> bool:
    """A shard path that is one plain file name (what the writers make): inside the folder."""
    return (isinstance(rel, str) and rel not in ("", ".", "..") and "/" not in rel and "\\" not in rel
            and ":" not in rel)


def read_footer_bytes(f: pa.NativeFile, size: int) -> bytes:
    """The footer's bytes, as a small Parquet file that ``pq.read_metadata`` reads.

    pyarrow's own open reads the last 64 KiB speculatively; on small shards that alone would be
    more than a small subset's data. Two exact reads cost the same round trips on object stores.
    """
    if size < 12:
        raise pa.ArrowInvalid(f"file of {size} bytes is too small to be Parquet")
    tail = f.read_at(8, size - 8)
    if tail[4:] != b"PAR1":
        raise pa.ArrowInvalid("Parquet magic bytes not found at the end of the file")
    length = int.from_bytes(tail[:4], "little")
    if length + 12 > size:
        raise pa.ArrowInvalid(f"footer length {length} exceeds the file size {size}")
    footer = f.read_at(length, size - 8 - length)
    return b"PAR1" + footer + tail


# --------------------------------------------------------------------------------------------
# Subsets

@dataclass(frozen=True)
class Block:
    """Rows ``[start, stop)`` of one shard, inside one row group, minus excluded rows."""
    shard: int        # index into Subset.shards
    row_group: int
    group_start: int  # first row of the row group in the shard
    start: int
    stop: int
    num_rows: int     # after exclusions


@dataclass
class Subset:
    """Rows with priority < threshold, minus excluded rows; the unit the loader reads.

    ``fraction`` subsets take threshold = fraction. ``count`` subsets take the ``count`` rows of
    lowest priority (after exclusions), so they nest with each other and with fraction subsets.
    """
    dataset: Dataset
    split: str
    threshold: float
    shards: list[ShardInfo]
    prefix_rows: list[int]            # rows with priority < threshold in each shard
    blocks: list[Block]
    num_rows: int
    unreadable: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @classmethod
    def build(cls, dataset: Dataset, split: str = "train", fraction: float | None = None,
              count: int | None = None, on_unreadable: str = "raise",
              exclude_fraction: float | None = None) -> "Subset":
        """on_unreadable="skip" leaves out shards that cannot be opened (listed in
        ``unreadable`` as (shard, problem)) instead of raising :class:`DataError`.
        ``exclude_fraction`` leaves out the rows of the nested subset of that fraction (priority
        below it): the complement of a held-out dev slice, e.g. fine-tuning's 10% minival."""
        if fraction is not None and count is not None:
            raise ValueError("give a subset fraction or a count, not both")
        shards, bracket = dataset.shards(split), None
        if count is not None:
            threshold, bracket = _threshold_for_count(dataset, split, shards, int(count))
        else:
            threshold = 1.0 if fraction is None else float(fraction)
            if not 0.0 < threshold <= 1.0:
                raise ValueError(f"subset fraction must be in (0, 1], got {fraction}")
        low = float(exclude_fraction or 0.0)
        if not 0.0 <= low < threshold:
            raise ValueError(f"exclude_fraction must be in [0, {threshold}) (below the subset's own "
                             f"threshold), got {exclude_fraction}")

        def part(si: int) -> tuple[int, list[Block], str | None]:
            try:
                return (*_shard_part(dataset, split, si, shards[si], (threshold, low), bracket), None)
            except DataError as e:
                if on_unreadable != "skip":
                    raise
                return 0, [], e.problem

        prefix_rows, blocks, unreadable = [], [], []
        for si, (prefix, shard_blocks, problem) in enumerate(each_shard(part, range(len(shards)))):
            prefix_rows.append(prefix)
            blocks.extend(shard_blocks)
            if problem is not None:
                unreadable.append((shards[si].path, problem))
        subset = cls(dataset, split, threshold, shards, prefix_rows, blocks,
                     sum(b.num_rows for b in blocks), unreadable)
        if count is not None and subset.num_rows != count:
            raise DataError(f"asked for {count} rows, the split has {subset.num_rows} usable rows",
                            dataset=dataset.root, field=f"splits.{split}")
        return subset

    def describe(self) -> dict[str, Any]:
        return {"split": self.split, "threshold": self.threshold, "num_rows": self.num_rows,
                "num_blocks": len(self.blocks)}

    def save(self, location: str) -> None:
        """The built subset as one small file (its blocks and prefixes as integer arrays), so that
        the next process that needs it reads that file instead of every shard's footer."""
        fields = operator.attrgetter(*_BLOCK_FIELDS)
        blocks = np.array([fields(b) for b in self.blocks], np.int64).reshape(-1, len(_BLOCK_FIELDS))
        buf = io.BytesIO()
        np.savez_compressed(buf, blocks=blocks, prefix_rows=np.asarray(self.prefix_rows, np.int64),
                            threshold=np.float64(self.threshold), digest=np.str_(self.dataset.digest))
        storage.write_bytes(location, buf.getvalue())

    @classmethod
    def load(cls, dataset: Dataset, split: str, location: str) -> "Subset":
        """A subset written by :meth:`save` for this very dataset (same manifest digest)."""
        with np.load(io.BytesIO(storage.read_bytes(location)), allow_pickle=False) as saved:
            if str(saved["digest"]) != dataset.digest:
                raise ValueError(f"{location} was built for another version of {dataset.root}")
            blocks = [Block(*row) for row in saved["blocks"].tolist()]
            return cls(dataset, split, float(saved["threshold"]), dataset.shards(split),
                       saved["prefix_rows"].tolist(), blocks, sum(b.num_rows for b in blocks))

    def keys(self) -> list[str]:
        """All keys of the subset in storage order (reads only the key column of needed groups)."""
        out: list[str] = []
        for block, table in iter_blocks(self, self.blocks, columns=["key"]):
            out.extend(table.column("key").to_pylist())
        return out


_BLOCK_FIELDS = [f.name for f in dataclasses.fields(Block)]


def cached_subset(dataset: Dataset, cache: str | None, split: str = "train", fraction: float | None = None,
                  count: int | None = None, exclude_fraction: float | None = None,
                  on_unreadable: str = "raise") -> Subset:
    """``dataset.subset(...)``, kept in the folder ``cache`` (local or a URI; None: not kept), one
    file per (manifest digest, split, subset): whoever needs the same subset of the same data
    again (another rank, run or epoch) reads that file, not the footer and boundary row group of
    every shard (at 100k shards on a store, minutes of requests a rank). A subset with unreadable
    shards (``on_unreadable="skip"``) is not kept: they may be readable next time. Failing to
    read or write the cache only costs the build."""
    kwargs = {"split": split, "fraction": fraction, "count": count, "exclude_fraction": exclude_fraction}
    if cache is None:
        return dataset.subset(on_unreadable=on_unreadable, **kwargs)
    key = hashlib.sha256(json.dumps([dataset.digest, kwargs], sort_keys=True).encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in dataset.name)
    location = storage.join(cache, f"{name}-{split}-{key}.npz")
    if storage.exists(location):
        try:
            return Subset.load(dataset, split, location)
        except (OSError, ValueError, KeyError) as err:
            log.warning("subset cache %s unusable (%s): building the subset", location, err)
    subset = dataset.subset(on_unreadable=on_unreadable, **kwargs)
    if not subset.unreadable:
        try:
            subset.save(location)
        except OSError as err:
            log.warning("could not keep the subset in %s (%s); each process will build it", location, err)
    return subset


META_THREADS = 32  # shards whose footers and boundary row groups are read at once: a store's
                   # request costs its latency (tens of ms) whatever its size, so one at a time is slow


def each_shard(fn, items: Sequence[Any], threads: int | None = None) -> list[Any]:
    """``[fn(item) for item in items]``, computed ``threads`` (default META_THREADS) at a time, in
    chunks (not 100k futures at once); the first error in item order is raised, as a loop would."""
    items, threads = list(items), META_THREADS if threads is None else threads
    if threads <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor
    out: list[Any] = []
    with ThreadPoolExecutor(threads, thread_name_prefix="shard-meta") as pool:
        for first in range(0, len(items), 4096):
            out.extend(pool.map(fn, items[first:first + 4096]))
    return out


def _priority_column(meta: pq.FileMetaData) -> int:
    """Index of the priority column chunk in the shard's row groups, found by its path: reading
    ``meta.schema`` instead makes a reference cycle that keeps the whole decoded footer (~360 KB
    at 100 row groups) until the garbage collector runs (measured: 380 KB a shard of peak memory
    when a subset's shards are read in threads)."""
    rg = meta.row_group(0)
    return next(i for i in range(rg.num_columns) if rg.column(i).path_in_schema == "priority")


def _first_group_reaching(meta: pq.FileMetaData, threshold: float) -> tuple[int, int] | None:
    """(index, first row) of the first row group whose max priority (from statistics; unknown
    counts as reaching) is >= threshold, or None. Scanned from the start: a small subset's
    boundary is among a shard's first groups, so most of a 100-group footer is never decoded."""
    if meta.num_row_groups == 0:
        return None
    col, row = _priority_column(meta), 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        stats = rg.column(col).statistics
        if stats is None or not stats.has_min_max or stats.max >= threshold:
            return g, row
        row += rg.num_rows
    return None


def _group_of_row(meta: pq.FileMetaData, row: int) -> tuple[int, int]:
    """(index, first row) of the row group holding ``row``."""
    start = 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if row < start + n:
            return g, start
        start += n
    raise IndexError(f"row {row} is past the shard's {start} rows")


class _Priorities:
    """A shard's priority column, read one row group at a time, each at most once."""

    def __init__(self, pf: pq.ParquetFile):
        self.pf, self.meta, self.groups = pf, pf.metadata, {}

    def group(self, g: int) -> np.ndarray:
        if g not in self.groups:
            self.groups[g] = self.pf.read_row_group(g, columns=["priority"]).column("priority").to_numpy()
        return self.groups[g]

    def prefix(self, threshold: float, num_rows: int) -> int:
        """Rows with priority < threshold: whole groups from statistics, plus one boundary group."""
        found = _first_group_reaching(self.meta, threshold)
        if found is None:
            return num_rows
        g, start = found
        return int(start + np.searchsorted(self.group(g), threshold, side="left"))

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Priorities of rows [start, stop)."""
        g0, first = _group_of_row(self.meta, start)
        g1, _ = _group_of_row(self.meta, stop - 1)
        values = np.concatenate([self.group(g) for g in range(g0, g1 + 1)])
        return values[start - first: stop - first]


def _prefix_rows(dataset: Dataset, shard: ShardInfo, threshold: float) -> int:
    """Rows of the shard with priority < threshold: whole groups from statistics, plus one boundary
    group whose priority column alone is read."""
    if threshold >= 1.0:
        return shard.num_rows
    pf = dataset.parquet_file(shard)
    try:
        return _Priorities(pf).prefix(threshold, shard.num_rows)
    finally:
        pf.close()


def _group_edges(meta: pq.FileMetaData, upto: int) -> np.ndarray:
    """Row-group edges ``[0, end of group 0, end of group 1, ...]``, up to the first edge >= upto."""
    edges = [0]
    for g in range(meta.num_row_groups):
        if edges[-1] >= upto:
            break
        edges.append(edges[-1] + meta.row_group(g).num_rows)
    return np.asarray(edges, dtype=np.int64)


def _blocks(excluded: np.ndarray, shard_index: int, edges: np.ndarray, prefix: int,
            start: int = 0) -> Iterator[Block]:
    """Blocks of rows [start, prefix) of a shard (rows are sorted by priority), from its row-group
    ``edges`` (covering at least the groups that start below ``prefix``)."""
    if prefix <= start:
        return
    for g in range(len(edges) - 1):
        gs, ge = int(edges[g]), int(edges[g + 1])
        if gs >= prefix:
            break
        first, stop = max(gs, start), min(ge, prefix)
        if first < stop:
            n_ex = int(np.searchsorted(excluded, stop) - np.searchsorted(excluded, first))
            if stop - first - n_ex > 0:
                yield Block(shard_index, g, gs, first, stop, stop - first - n_ex)


def _shard_part(dataset: Dataset, split: str, si: int, shard: ShardInfo, bounds: tuple[float, float],
                bracket: "_Bracket | None") -> tuple[int, list[Block]]:
    """(rows below the threshold, the blocks of rows [low's prefix, threshold's prefix)) of a shard,
    with ``bounds`` = (threshold, low). A count subset's bracket already holds both the prefix and
    the row-group edges; otherwise the shard's footer and boundary group are read (once)."""
    threshold, low = bounds
    excluded = dataset.excluded_rows(split, shard)
    if bracket is not None:
        prefix, edges = bracket.prefix(si, threshold), bracket.edges(si)
        start = _prefix_rows(dataset, shard, low) if low > 0 else 0
        return prefix, list(_blocks(excluded, si, edges, prefix, start))
    if threshold >= 1.0 and low <= 0 and shard.num_rows == 0:
        return 0, []
    pf = dataset.parquet_file(shard)
    try:
        read = _Priorities(pf)
        prefix = read.prefix(threshold, shard.num_rows) if threshold < 1.0 else shard.num_rows
        start = read.prefix(low, shard.num_rows) if low > 0 else 0
        return prefix, list(_blocks(excluded, si, _group_edges(pf.metadata, prefix), prefix, start))
    finally:
        pf.close()


@dataclass(frozen=True)
class _Bracket:
    """Where a count subset's threshold falls in every shard: ``lo_rows[i]`` rows of shard i lie
    below the bracket, ``values[offsets[i]:offsets[i + 1]]`` are the priorities of its rows inside
    it (sorted), and ``all_edges[edge_offsets[i]:edge_offsets[i + 1]]`` its row-group edges up to
    the bracket's top. The subset's prefixes and blocks then need no second read of any shard, and
    no footer is kept decoded (a few numbers a shard, not ~360 KB)."""
    lo_rows: np.ndarray
    offsets: np.ndarray
    values: np.ndarray
    edge_offsets: np.ndarray
    all_edges: np.ndarray

    def prefix(self, shard_index: int, threshold: float) -> int:
        inside = self.values[self.offsets[shard_index]:self.offsets[shard_index + 1]]
        return int(self.lo_rows[shard_index] + np.searchsorted(inside, threshold, side="left"))

    def edges(self, shard_index: int) -> np.ndarray:
        return self.all_edges[self.edge_offsets[shard_index]:self.edge_offsets[shard_index + 1]]


def _concat(arrays: list[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of arrays laid end to end."""
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays], dtype=np.int64)]).astype(np.int64)
    return offsets, (np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype))


_NO_PRIORITIES = np.zeros(0, dtype=np.float64)


def _bracket_rows(dataset: Dataset, shard: ShardInfo, lo: float,
                  hi: float) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(rows with priority < lo, rows with priority < hi, the priorities of the rows between, the
    row-group edges up to the latter) of a shard: its footer, then each row group involved read
    once (usually one)."""
    if lo <= 0.0 and hi >= 1.0 and shard.num_rows == 0:
        return 0, 0, _NO_PRIORITIES, np.zeros(1, np.int64)
    pf = dataset.parquet_file(shard)
    try:
        read = _Priorities(pf)
        a = read.prefix(lo, shard.num_rows) if lo > 0 else 0
        b = read.prefix(hi, shard.num_rows) if hi < 1.0 else shard.num_rows
        return a, b, read.rows(a, b) if b > a else _NO_PRIORITIES, _group_edges(pf.metadata, b)
    finally:
        pf.close()


def _threshold_for_count(dataset: Dataset, split: str, shards: list[ShardInfo],
                         count: int) -> tuple[float, _Bracket | None]:
    """Smallest threshold whose subset has exactly ``count`` usable rows, and the bracket it was
    found in (None when it is the whole split).

    Priorities are uniform hashes, so the threshold is near count / N. Rows below a bracket
    [lo, hi) around that guess are counted from row-group statistics (one boundary group a shard);
    only the priorities inside the bracket are kept and sorted: O(sqrt(N)) memory and reads,
    whatever the dataset size. The bracket widens until it holds the answer. Each shard's footer
    and boundary group are read once, META_THREADS shards at a time.
    """
    if count <= 0:
        raise ValueError(f"subset count must be positive, got {count}")
    excluded = [dataset.excluded_rows(split, s) for s in shards]
    usable_total = sum(_usable(s.num_rows, e) for s, e in zip(shards, excluded))
    if count > usable_total:
        raise DataError(f"asked for {count} rows, the split has only {usable_total} usable rows",
                        dataset=dataset.root, field=f"splits.{split}")
    if count == usable_total:
        return 1.0, None

    def usable_below(prefixes: list[int]) -> int:
        return sum(p - int(np.searchsorted(e, p)) for p, e in zip(prefixes, excluded))

    guess = count / usable_total
    width = 6 * math.sqrt(guess * (1 - guess) / usable_total) + 2 / usable_total
    while True:
        lo, hi = max(0.0, guess - width), min(1.0, guess + width)
        found = each_shard(lambda s: _bracket_rows(dataset, s, lo, hi), shards)
        lo_rows, hi_rows = [f[0] for f in found], [f[1] for f in found]
        below_lo, below_hi = usable_below(lo_rows), usable_below(hi_rows)
        if below_lo < count <= below_hi:
            break
        width *= 4
    inside = [f[2][~np.isin(np.arange(a, b), e)]
              for f, e, a, b in zip(found, excluded, lo_rows, hi_rows) if b > a]
    values = np.sort(np.concatenate(inside))
    threshold = float(np.nextafter(values[count - below_lo - 1], 1.0))
    offsets, raw = _concat([f[2] for f in found], np.float64)
    edge_offsets, edges = _concat([f[3] for f in found], np.int64)
    return threshold, _Bracket(np.asarray(lo_rows, dtype=np.int64), offsets, raw, edge_offsets, edges)


def iter_blocks(subset: Subset, blocks: Sequence[Block], columns: Sequence[str],
                on_unreadable: str = "raise") -> Iterator[tuple[Block, pa.Table]]:
    """Read blocks (in the given order) as tables of their usable rows, with a ``_row`` column
    (row index in the shard). One shard is kept open while consecutive blocks use it."""
    ds = subset.dataset
    open_shard: tuple[int, pq.ParquetFile] | None = None
    try:
        for block in blocks:
            if open_shard is None or open_shard[0] != block.shard:
                if open_shard is not None:
                    open_shard[1].close()
                open_shard = (block.shard, ds.parquet_file(subset.shards[block.shard]))
            pf = open_shard[1]
            shard = subset.shards[block.shard]
            try:
                table = pf.read_row_group(block.row_group, columns=list(columns))
            except (pa.ArrowException, OSError) as e:
                raise DataError(f"row group {block.row_group} cannot be read: {e}",
                                dataset=ds.root, shard=shard.path, row=block.start,
                                hint="re-create the shard; `verify` reports every bad shard") from e
            rows = np.arange(block.start, block.stop)
            table = table.slice(block.start - block.group_start, block.stop - block.start)
            table = table.append_column("_row", pa.array(rows, pa.int64()))
            excluded = ds.excluded_rows(subset.split, shard)
            if len(excluded):
                keep = ~np.isin(rows, excluded)
                if not keep.all():
                    table = table.filter(pa.array(keep))
            yield block, table
    finally:
        if open_shard is not None:
            open_shard[1].close()


def labels_in_range(labels: pa.ListArray, num_classes: int) -> np.ndarray:
    """Per row: True when every label is in [0, num_classes). Uses Arrow compute on the flat
    values so it costs nothing next to decoding."""
    flat = pc.list_flatten(labels)
    bad_value = pc.or_(pc.less(flat, 0), pc.greater_equal(flat, num_classes))
    parents = pc.list_parent_indices(labels).to_numpy()
    ok = np.ones(len(labels), bool)
    bad = bad_value.to_numpy(zero_copy_only=False)
    if bad.any():
        ok[np.unique(parents[bad])] = False
    return ok
