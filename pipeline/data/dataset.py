"""Reading a dataset (``pipeline.data.format``): :class:`Dataset` opens the manifest, checks it,
and reads shards with ranged reads (footers once, cached; then only the row groups needed), from
a folder or under a URI; :func:`copy_dataset` moves one between locations."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline import storage
from pipeline.data.format import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, SHARD_SCHEMA, DataError, write_manifest

log = logging.getLogger(__name__)


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
            rows -= sum(int(s["num_rows"]) - usable_count(int(s["num_rows"]), index[s["path"]])
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
        return self._exclusions(split).get(shard.path, NO_EXCLUSIONS)

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


NO_EXCLUSIONS = np.zeros(0, dtype=np.int64)  # a shard without exclusions
NO_EXCLUSIONS.flags.writeable = False


def usable_count(num_rows: int, excluded: np.ndarray) -> int:
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


META_THREADS = 32  # shards whose footers and boundary row groups are read at once: a store's
                   # request costs its latency (tens of ms) whatever its size, so one at a time is slow


def each_shard(fn, items: Sequence[Any], threads: int | None = None) -> list[Any]:
    """``[fn(item) for item in items]``, computed ``threads`` (default META_THREADS) at a time, in
    chunks (not 100k futures at once); the first error in item order is raised, as a loop would."""
    items, threads = list(items), META_THREADS if threads is None else threads
    if threads <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    out: list[Any] = []
    with ThreadPoolExecutor(threads, thread_name_prefix="shard-meta") as pool:
        for first in range(0, len(items), 4096):
            out.extend(pool.map(fn, items[first:first + 4096]))
    return out



def copy_dataset(source: str, target: str, progress: bool = True) -> str:
    """Copy a dataset between locations (e.g. a local folder up to ``s3://bucket/data/name``):
    shards first, each checked against the manifest's size, the manifest last."""
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
