"""Nested random subsets of a dataset's split (the paper's 9M/30M/90M of JFT): a subset is the
rows whose priority (``pipeline.data.format``) is below a threshold, minus excluded rows; since
rows are sorted by priority in every shard, it is a prefix of each shard, found from the row
groups' statistics without reading image bytes. ``count=`` subsets find the threshold that holds
exactly that many rows. :func:`cached_subset` keeps a built subset in one small file, and
:func:`iter_blocks` reads a subset's rows."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import operator
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.data.dataset import Dataset, ShardInfo, each_shard, usable_count
from pipeline.data.format import DataError

log = logging.getLogger(__name__)


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
    """``Subset.build(dataset, ...)``, kept in the folder ``cache`` (local or a URI; None: not kept), one
    file per (manifest digest, split, subset): whoever needs the same subset of the same data
    again (another rank, run or epoch) reads that file, not the footer and boundary row group of
    every shard (at 100k shards on a store, minutes of requests a rank). A subset with unreadable
    shards (``on_unreadable="skip"``) is not kept: they may be readable next time. Failing to
    read or write the cache only costs the build."""
    kwargs = {"split": split, "fraction": fraction, "count": count, "exclude_fraction": exclude_fraction}
    if cache is None:
        return Subset.build(dataset, on_unreadable=on_unreadable, **kwargs)
    key = hashlib.sha256(json.dumps([dataset.digest, kwargs], sort_keys=True).encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in dataset.name)
    location = storage.join(cache, f"{name}-{split}-{key}.npz")
    if storage.exists(location):
        try:
            return Subset.load(dataset, split, location)
        except (OSError, ValueError, KeyError) as err:
            log.warning("subset cache %s unusable (%s): building the subset", location, err)
    subset = Subset.build(dataset, on_unreadable=on_unreadable, **kwargs)
    if not subset.unreadable:
        try:
            subset.save(location)
        except OSError as err:
            log.warning("could not keep the subset in %s (%s); each process will build it", location, err)
    return subset


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
    usable_total = sum(usable_count(s.num_rows, e) for s, e in zip(shards, excluded))
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
