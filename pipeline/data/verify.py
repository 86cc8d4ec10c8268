"""Integrity check of a dataset: manifest, schema, row counts, checksums, labels, decodability.

Every problem names the shard, row and field, and verification goes on past it so one run lists
everything that is wrong.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from pipeline import storage
from pipeline.data.dataset import Dataset
from pipeline.data.format import DataError, labels_in_range, subset_priority
from pipeline.data.images import UndecodableImage, decode_rgb


GLOBAL_KEY_CHECK_ROWS = 20_000_000


@dataclass(frozen=True)
class ShardProblem:
    shard: str | None
    row: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = ", ".join(f"{k} {v}" for k, v in (("shard", self.shard), ("row", self.row),
                                                     ("field", self.field)) if v is not None)
        return f"{where}: {self.message}" if where else self.message


@dataclass
class VerifyReport:
    path: str
    rows: dict[str, int]
    decoded: int
    problems: list[ShardProblem]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: str | Path, sample: int = 16, full: bool = False, checksums: bool = True,
           progress: bool = True) -> VerifyReport:
    """Check the dataset at ``path``. ``sample`` rows per shard are decoded (all with ``full``)."""
    problems: list[ShardProblem] = []
    try:
        ds = Dataset(path)
    except DataError as e:
        return VerifyReport(str(path), {}, 0, [ShardProblem(e.shard, e.row, e.field, str(e))])
    rows: dict[str, int] = {}
    decoded = 0
    # Keys must be unique dataset-wide; a set of every key costs ~100 bytes a row, so beyond
    # GLOBAL_KEY_CHECK_ROWS rows uniqueness is checked within each shard only.
    total_rows = sum(ds.num_rows(split) for split in ds.splits)
    global_keys = total_rows <= GLOBAL_KEY_CHECK_ROWS
    seen_keys: set[str] = set()
    all_shards = [s for split in ds.splits for s in ds.shards(split)]
    bar = tqdm(all_shards, desc=f"verify {storage.name(ds.root)}", unit="shard", disable=not progress,
               file=sys.stderr)
    for shard in bar:
        found = storage.info(ds.shard_path(shard))
        if checksums and found.type == storage.FileType.File and found.size == shard.bytes:
            if storage.sha256(ds.shard_path(shard)) != shard.sha256:
                problems.append(ShardProblem(shard.path, None, "sha256",
                                        "checksum does not match the manifest (shard changed or corrupt)"))
                continue
        try:
            pf = ds.parquet_file(shard)
        except DataError as e:
            problems.append(ShardProblem(shard.path, None, e.field, e.problem))
            continue
        try:
            table = pf.read(columns=["key", "labels", "priority"])
        except (pa.ArrowException, OSError) as e:
            problems.append(ShardProblem(shard.path, None, None, f"cannot read the shard: {e}"))
            pf.close()
            continue
        if table.num_rows != shard.num_rows:
            problems.append(ShardProblem(shard.path, None, "num_rows",
                                    f"has {table.num_rows} rows, the manifest says {shard.num_rows}"))
        rows[shard.split] = rows.get(shard.split, 0) + table.num_rows
        problems += _check_columns(ds, shard.path, table, seen_keys if global_keys else set())
        n = table.num_rows
        picks = np.arange(n) if full else np.unique(np.linspace(0, n - 1, min(sample, n)).astype(int))
        decoded += _check_images(pf, shard.path, picks, problems)
        pf.close()
    unreadable = {p.shard for p in problems if p.row is None}
    for split in ds.splits:
        declared = ds.manifest["splits"][split].get("num_rows")
        if any(s.path in unreadable for s in ds.shards(split)):
            continue  # already reported per shard
        if declared is not None and split in rows and declared != rows[split]:
            problems.append(ShardProblem(None, None, f"splits.{split}.num_rows",
                                    f"manifest says {declared} rows, the shards hold {rows[split]}"))
    problems += _check_exclusions(ds)
    return VerifyReport(str(ds.root), rows, decoded, problems)


def _check_columns(ds: Dataset, shard: str, table: pa.Table, seen_keys: set[str]) -> list[ShardProblem]:
    out: list[ShardProblem] = []
    keys = table.column("key").to_pylist()
    for row, key in enumerate(keys):
        if key in seen_keys:
            out.append(ShardProblem(shard, row, "key", f"duplicate key {key!r}"))
        seen_keys.add(key)
    labels = table.column("labels").combine_chunks()
    ok = labels_in_range(labels, ds.num_classes)
    for row in np.flatnonzero(~ok)[:20]:
        out.append(ShardProblem(shard, int(row), "labels",
                           f"labels {labels[int(row)].as_py()} outside [0, {ds.num_classes})"))
    if (~ok).sum() > 20:
        out.append(ShardProblem(shard, None, "labels", f"{int((~ok).sum())} rows have labels out of range"))
    empty = pc.equal(pc.list_value_length(labels), 0).to_numpy(zero_copy_only=False)
    for row in np.flatnonzero(empty)[:20]:
        out.append(ShardProblem(shard, int(row), "labels", "row has no label"))
    prio = table.column("priority").to_numpy()
    bad = np.flatnonzero((prio < 0) | (prio >= 1))
    for row in bad[:5]:
        out.append(ShardProblem(shard, int(row), "priority", f"priority {prio[row]} outside [0, 1)"))
    unsorted = np.flatnonzero(np.diff(prio) < 0)
    if len(unsorted):
        out.append(ShardProblem(shard, int(unsorted[0]) + 1, "priority",
                           "rows are not sorted by priority (subsets would read wrong rows)"))
    # Recomputing the hash costs ~1 us a row: do it on a spread of rows.
    for row in np.unique(np.linspace(0, len(keys) - 1, min(64, len(keys))).astype(int)):
        expected = subset_priority(keys[row], ds.subset_seed)
        if prio[row] != expected:
            out.append(ShardProblem(shard, int(row), "priority",
                               f"priority {prio[row]} is not hash(key, subset_seed)={expected}"))
            break
    return out


def _check_images(pf, shard: str, picks: np.ndarray, problems: list[ShardProblem]) -> int:
    decoded = 0
    if len(picks) == 0:
        return 0
    starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
    groups = np.unique(np.searchsorted(starts, picks, side="right") - 1)
    for g in groups:
        try:
            images = pf.read_row_group(int(g), columns=["image"]).column("image")
        except (pa.ArrowException, OSError) as e:
            problems.append(ShardProblem(shard, int(starts[g]), "image",
                                    f"row group {g} cannot be read: {e}"))
            continue
        for row in picks[(picks >= starts[g]) & (picks < starts[g + 1])]:
            try:
                decode_rgb(images[int(row - starts[g])].as_py())
                decoded += 1
            except UndecodableImage as e:
                problems.append(ShardProblem(shard, int(row), "image", str(e)))
    return decoded


def _check_exclusions(ds: Dataset) -> list[ShardProblem]:
    out: list[ShardProblem] = []
    for split, entries in ds.manifest.get("exclusions", {}).items():
        if split not in ds.splits:
            out.append(ShardProblem(None, None, f"exclusions.{split}", f"no split {split!r}"))
            continue
        shards = {s.path: s for s in ds.shards(split)}
        keys: dict[str, list[str]] = {}
        for i, e in enumerate(entries):
            s = shards.get(e.get("shard"))
            if s is None or not 0 <= int(e.get("row", -1)) < s.num_rows:
                out.append(ShardProblem(e.get("shard"), e.get("row"), f"exclusions.{split}[{i}]",
                                   "excluded row does not exist in this dataset"))
                continue
            if s.path not in keys:
                try:
                    pf = ds.parquet_file(s)
                    keys[s.path] = pf.read(columns=["key"]).column("key").to_pylist()
                    pf.close()
                except (DataError, pa.ArrowException, OSError):
                    keys[s.path] = []  # the shard's own problem is reported already
            if keys[s.path] and keys[s.path][e["row"]] != e.get("key"):
                out.append(ShardProblem(s.path, e["row"], f"exclusions.{split}[{i}].key",
                                   f"excluded key {e.get('key')!r} but the row holds "
                                   f"{keys[s.path][e['row']]!r} (shard rewritten after dedup?)",))
    return out


def check_checksums(path: str | Path, split: str = "train", *, rank: int = 0, world_size: int = 1,
                    marks: str | None = None) -> int:
    """The sha256 of this rank's share of ``split``'s shards (every ``world_size``-th from
    ``rank``) against the manifest, before training reads them. ``marks``: a folder where a shard
    once checked leaves an empty file named by its checksum, so that it costs one read per
    storage, not one per run. Raises :class:`DataError` naming the first shard that differs.
    Returns how many shards were read."""
    ds = Dataset(path)
    done = set(storage.listdir(marks)) if marks is not None else set()
    read = 0
    for shard in ds.shards(split)[rank::world_size]:
        mark = f"{Path(shard.path).name}.{shard.sha256}"
        if mark in done:
            continue
        ds.checked_size(shard)  # a truncated shard is said as such
        if storage.sha256(ds.shard_path(shard)) != shard.sha256:
            raise DataError("checksum does not match the manifest: the shard changed or is corrupt (`python -m "
                            f"pipeline.data verify {ds.root}` lists every problem)", dataset=ds.root,
                            shard=shard.path, field="sha256")
        read += 1
        if marks is not None:
            storage.write_bytes(storage.join(marks, mark), b"")
    return read
