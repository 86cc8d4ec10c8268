"""Streaming loader: plain PyTorch data loading over pyarrow (see docs/design-notes.md for why not
Ray Data).

The order of examples is a pure function of (subset, seed, epoch, world_size, rank, batch_size):

1. the subset's blocks (pieces of row groups) are permuted with rng(seed, epoch);
2. the permuted row sequence is cut into ``world_size`` contiguous, disjoint ranges, one per rank
   (sizes differ by at most one row; together they cover the subset);
3. each rank's range is shuffled inside windows of ``shuffle_window`` rows (a multiple of the
   batch size), with rng(seed, epoch, world_size, rank, window);
4. batch ``b`` is rows ``[b * batch_size, (b + 1) * batch_size)`` of that sequence, augmented with
   rng(seed, epoch, world_size, rank, b).

So any batch can be produced without producing the ones before it: resuming at ``start_step``
reads only the windows from that step on, and yields exactly what an uninterrupted run would.
The loader's process reads each window once (the next one while this one is decoded) and cuts
it into encoded batches; decode worker processes (PyTorch DataLoader workers) get those batches,
a worker never opens the dataset, and the DataLoader returns the decoded batches in order, so the
order does not depend on ``num_workers``. Memory is bounded by two windows of encoded images in
the loader's process plus the batches in flight, whatever the dataset size.
Eval mode does no shuffling and no augmentation and keeps the last partial batch.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import KW_ONLY, dataclass, field
from typing import Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from pipeline import storage
from pipeline.data.dataset import Dataset
from pipeline.data.format import DataError
from pipeline.data.subsets import Subset, cached_subset, iter_blocks
from pipeline.data.images import (DecodedCache, UndecodableImage, decode_eval, decode_train,
                                  normalize_images, to_nchw_uint8)

log = logging.getLogger(__name__)


class BadRow(NamedTuple):
    """A skipped row; row is None when a whole shard could not be read."""
    shard: str
    row: int | None
    field: str
    reason: str


class Batch(NamedTuple):
    """images: float32 NCHW in [-1, 1] (uint8 NCHW with image_dtype="uint8");
    labels: float32 multi-hot (N, K) or int64 (N,);
    keys: the rows' keys; bad_rows: rows skipped in this batch (only with on_bad_row="skip")."""
    images: torch.Tensor
    labels: torch.Tensor
    keys: list[str]
    bad_rows: tuple[BadRow, ...] = ()


@dataclass(frozen=True)
class LoaderSpec:
    """Everything that decides what a rank sees (plain data, picklable into worker processes):
    ``LoaderSpec(path, batch_size=..., image_size=..., ...)``, the rest keyword-only.

    The subset: ``split``, then ``fraction=`` or ``count=`` (None: all rows); ``exclude_fraction=f``
    leaves out the rows of ``fraction=f`` (priority < f): train on the rest, hold those out as a
    dev slice. Rank shares (``rank`` of ``world_size``) are disjoint and together cover the subset.
    train=True: shuffled for (seed, epoch), inception crop + flip, full batches only, the same
    number on every rank; ``min_crop_area`` is the inception crop's smallest area (the paper's 5%;
    tiny images of small objects want more, e.g. 0.5). train=False: storage order, resize + center
    crop (``crop_fraction``), every row of the rank's share once. ``label_format``: "multi_hot"
    (float (N, K)) or "index" (int64 (N,)); None: multi-hot for multi-label sets.
    ``image_dtype="uint8"`` yields raw NCHW bytes: move them to the GPU and call
    :func:`normalize_images` there (saves CPU time and host memory bandwidth).
    ``on_bad_row="skip"`` drops undecodable/mislabelled rows, listed in ``batch.bad_rows`` and
    ``loader.skipped``, instead of raising :class:`DataError`. ``subset_cache``: a folder (or URI)
    where the built subset is kept for the next rank, epoch or run (``subsets.cached_subset``):
    with it, a rank reads the footers of its own shards only.
    """
    path: str                          # a folder or a URI; an os.PathLike is kept as its str
    _: KW_ONLY
    batch_size: int
    image_size: int
    split: str = "train"
    fraction: float | None = None
    count: int | None = None
    exclude_fraction: float | None = None
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    epoch: int = 0
    train: bool = True
    label_format: str | None = None   # "multi_hot" | "index"; None: from the manifest
    shuffle_window: int = 2048
    crop_fraction: float = 0.875
    image_dtype: str = "float32"       # "float32": in [-1, 1]; "uint8": raw, see normalize_images
    min_crop_area: float = 0.05       # inception crop's smallest area fraction (train)
    on_bad_row: str = "raise"          # "raise" | "skip"
    subset_cache: str | None = None    # where built subsets are kept (None: built by each process)

    def __post_init__(self):
        object.__setattr__(self, "path", str(self.path))   # (frozen: set through object)


@dataclass
class RankPlan:
    """Where a rank's batches come from, without having read any image."""
    block_order: np.ndarray     # permuted block indices
    block_ends: np.ndarray      # cumulative row counts along block_order
    lo: int                     # first position of this rank in the permuted row sequence
    num_rows: int               # rows this rank uses in the epoch
    window_rows: int
    num_batches: int


def plan_rank(subset: Subset, spec: LoaderSpec) -> RankPlan:
    if spec.image_dtype not in ("float32", "uint8"):
        raise ValueError(f"image_dtype must be float32 or uint8, got {spec.image_dtype!r}")
    if not 0 <= spec.rank < spec.world_size:
        raise ValueError(f"rank {spec.rank} outside world_size {spec.world_size}")
    counts = np.fromiter((b.num_rows for b in subset.blocks), np.int64, len(subset.blocks))
    order = np.arange(len(counts))
    if spec.train:
        order = np.random.default_rng([spec.seed, spec.epoch]).permutation(len(counts))
    ends = np.cumsum(counts[order])
    total = int(ends[-1]) if len(ends) else 0
    lo = spec.rank * total // spec.world_size
    hi = (spec.rank + 1) * total // spec.world_size
    bs = spec.batch_size
    if spec.train:
        # Every rank takes the same number of full batches (what data-parallel training needs).
        num_batches = (total // spec.world_size) // bs
        num_rows = num_batches * bs
    else:
        num_rows = hi - lo
        num_batches = -(-num_rows // bs)
    window = max(1, spec.shuffle_window // bs) * bs
    return RankPlan(order, ends, lo, num_rows, window, num_batches)


class _Encoded(NamedTuple):
    """One batch's rows as stored, cut from its window by the loader's process: all a decode
    worker needs (a worker never opens the dataset)."""
    step: int
    keys: list
    images: list
    labels: list
    rows: list
    errors: list
    shards: list       # the rows' shard paths (for error messages)


def _encoded_batches(subset: Subset, spec: LoaderSpec, plan: RankPlan,
                     start_step: int) -> Iterator[_Encoded]:
    """The rank's batches from ``start_step`` on, still encoded. Each window is read once, in
    this process (not once per decode worker), the next one in a thread while this one is cut
    into batches, so the round trips of an object store (one ranged GET per row group) overlap
    decoding."""
    if start_step >= plan.num_batches:
        return
    bs = spec.batch_size
    first, last = (start_step * bs) // plan.window_rows, (plan.num_rows - 1) // plan.window_rows
    # From an object store, blocks of a window are read READ_THREADS at a time: latency, not
    # bandwidth, bounds one ranged GET of a row group. From local files one thread: more only
    # contend (the loader's process took twice the CPU with 4, bench/RESULTS.md issue 17).
    threads = READ_THREADS if storage.is_remote(subset.dataset.root) else 1
    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as reader, \
            ThreadPoolExecutor(threads, thread_name_prefix="read-block") as blocks:
        pending = reader.submit(_read_window, subset, spec, plan, first, blocks)
        for w in range(first, last + 1):
            table, order = pending.result()
            if w < last:
                pending = reader.submit(_read_window, subset, spec, plan, w + 1, blocks)
            lo = max(start_step, -(-w * plan.window_rows // bs))
            hi = min(plan.num_batches, -(-(w + 1) * plan.window_rows // bs))
            for b in range(lo, hi):
                offset = b * bs - w * plan.window_rows
                yield _encode(table, order[offset:offset + bs], b, subset)


def _encode(table: pa.Table, rows: np.ndarray, step: int, subset: Subset) -> _Encoded:
    """Rows ``rows`` of a window's table as an encoded batch; image bytes copied once, straight
    into the batch (the window itself is never permuted: that would copy every image again)."""
    small = table.select(["key", "labels", "_row", "_error", "_shard"]).take(pa.array(rows))
    images = table.column("image")
    return _Encoded(step, small.column("key").to_pylist(), [images[int(i)].as_py() for i in rows],
                    small.column("labels").to_pylist(), small.column("_row").to_pylist(),
                    small.column("_error").to_pylist(),
                    [subset.shards[i].path for i in small.column("_shard").to_pylist()])


@dataclass(frozen=True)
class _Decoder:
    """Decodes encoded batches (in this process or in DataLoader workers, which get the
    batches from the loader's process in order, so the order does not depend on their number)."""
    spec: LoaderSpec
    num_classes: int
    root: str
    label_format: str
    cached: bool = False   # decoding in the loader's own process: keep decoded pixels (_DECODED)

    def __getitem__(self, item: _Encoded) -> Batch:
        spec = self.spec
        rng = np.random.default_rng([spec.seed, spec.epoch, spec.world_size, spec.rank, item.step])
        return _decode_batch(item, self, rng)


READ_THREADS = 4
# Decoded pixels kept by a process that decodes in its own thread (no decode workers, whose memory
# would multiply it): small datasets are decoded once per process (pipeline.data.images.DecodedCache)
DECODED_CACHE_BYTES = 256 << 20
_DECODED = DecodedCache(DECODED_CACHE_BYTES)


def _read_window(subset: Subset, spec: LoaderSpec, plan: RankPlan, w: int,
                 pool: ThreadPoolExecutor | None = None) -> tuple[pa.Table, np.ndarray]:
    """Rows [w * window, (w + 1) * window) of the rank's sequence and the order to take them in
    (shuffled for train); its blocks read on ``pool`` when given."""
    start = w * plan.window_rows
    stop = min(start + plan.window_rows, plan.num_rows)
    g0, g1 = plan.lo + start, plan.lo + stop               # positions in the permuted sequence
    i0 = int(np.searchsorted(plan.block_ends, g0, side="right"))
    i1 = int(np.searchsorted(plan.block_ends, g1 - 1, side="right"))
    blocks = [subset.blocks[j] for j in plan.block_order[i0:i1 + 1]]
    read = lambda block: _read_block(subset, block, spec.on_bad_row)  # noqa: E731
    pieces = list(pool.map(read, blocks)) if pool is not None else [read(block) for block in blocks]
    table = pa.concat_tables(pieces) if pieces else pa.table({})
    block_start = int(plan.block_ends[i0] - subset.blocks[plan.block_order[i0]].num_rows)
    table = table.slice(g0 - block_start, g1 - g0)
    if spec.train:
        return table, np.random.default_rng(
            [spec.seed, spec.epoch, spec.world_size, spec.rank, w, 1]).permutation(table.num_rows)
    return table, np.arange(table.num_rows)


_COLUMNS = ["key", "image", "labels"]
_WINDOW_SCHEMA = pa.schema([pa.field("key", pa.string()), pa.field("image", pa.binary()),
                            pa.field("labels", pa.list_(pa.int32())), pa.field("_row", pa.int64()),
                            pa.field("_shard", pa.int32()), pa.field("_error", pa.string())])


def _read_block(subset: Subset, block, on_bad_row: str) -> pa.Table:
    """A table of the block's rows; an unreadable block becomes rows marked with ``_error`` in skip
    mode, so positions (and so everyone else's batches) stay where they were."""
    try:
        ((_, table),) = list(iter_blocks(subset, [block], _COLUMNS))
        table = table.append_column("_error", pa.nulls(table.num_rows, pa.string()))
        table = table.append_column("_shard", pa.array(np.full(table.num_rows, block.shard, np.int32)))
    except DataError as e:
        if on_bad_row != "skip":
            raise
        shard = subset.shards[block.shard]
        rows = np.arange(block.start, block.stop)
        rows = rows[~np.isin(rows, subset.dataset.excluded_rows(subset.split, shard))]
        table = pa.table({"key": pa.nulls(len(rows), pa.string()),
                          "image": pa.nulls(len(rows), pa.binary()),
                          "labels": pa.nulls(len(rows), pa.list_(pa.int32())),
                          "_row": pa.array(rows, pa.int64()),
                          "_shard": pa.array(np.full(len(rows), block.shard, np.int32)),
                          "_error": pa.array([e.problem] * len(rows), pa.string())})
    return table.select(_WINDOW_SCHEMA.names).cast(_WINDOW_SCHEMA)


def _decode_batch(item: _Encoded, decoder: _Decoder, rng: np.random.Generator) -> Batch:
    spec, label_format, k = decoder.spec, decoder.label_format, decoder.num_classes
    out_images, out_labels, out_keys, bad = [], [], [], []
    # Eval decodes JPEGs reduced to the resize's size; train reduces each to its crop box's.
    cache = _DECODED if decoder.cached else None
    for key, data, labs, row, err, shard in zip(item.keys, item.images, item.labels, item.rows,
                                                item.errors, item.shards):
        problem = None
        if err is not None:
            problem = ("row_group", err)
        elif not labs or any(not 0 <= c < k for c in labs):
            problem = ("labels", f"labels {labs} outside [0, {k})" if labs else "row has no label")
        else:
            try:
                arr = (decode_train(data, spec.image_size, rng, spec.min_crop_area, cache) if spec.train
                       else decode_eval(data, spec.image_size, spec.crop_fraction, cache))
            except UndecodableImage as e:
                problem = ("image", str(e))
        if problem is not None:
            if spec.on_bad_row != "skip":
                hint = ("fix or drop the row, or pretrain with --on-bad-row skip" if spec.train else
                        f"the dataset is damaged: `python -m pipeline.data verify {decoder.root}` lists every problem")
                raise DataError(problem[1], dataset=decoder.root, shard=shard, row=row, field=problem[0], hint=hint)
            bad.append(BadRow(shard, row, problem[0], problem[1]))
            continue
        out_images.append(arr)
        out_keys.append(key)
        out_labels.append(labs)
    n = len(out_images)
    # uint8 across process boundaries: 4x fewer bytes than float32, whose transfer from a worker
    # costs about as much as decoding a 224-px JPEG.
    images_t = (to_nchw_uint8(out_images) if n else
                torch.empty((0, 3, spec.image_size, spec.image_size), dtype=torch.uint8))
    if label_format == "multi_hot":
        labels_t = torch.zeros((n, k), dtype=torch.float32)
        for i, labs in enumerate(out_labels):
            labels_t[i, labs] = 1.0
    elif label_format == "index":
        labels_t = torch.tensor([labs[0] for labs in out_labels], dtype=torch.int64)
    else:
        raise ValueError(f"label_format must be multi_hot or index, got {label_format!r}")
    return Batch(images_t, labels_t, out_keys, tuple(bad))


@dataclass
class StreamingLoader:
    """Iterable of :class:`Batch` for one rank and epoch, from ``start_step`` on."""
    spec: LoaderSpec
    start_step: int = 0
    num_workers: int = 0
    prefetch_batches: int = 2
    pin_memory: bool = False      # decode processes' batches pinned (page-locked) by a thread
    skipped: list[BadRow] = field(default_factory=list)

    def __post_init__(self):
        self.subset = subset_of(self.spec)
        self.plan = plan_rank(self.subset, self.spec)
        self.num_classes = self.subset.dataset.num_classes
        if not 0 <= self.start_step <= self.plan.num_batches:
            raise ValueError(f"start_step {self.start_step} outside [0, {self.plan.num_batches}]")

    def __len__(self) -> int:
        """Batches this iterator yields (from start_step to the end of the epoch)."""
        return self.plan.num_batches - self.start_step

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.num_batches

    def __iter__(self) -> Iterator[Batch]:
        ds, spec = self.subset.dataset, self.spec
        decoder = _Decoder(spec, ds.num_classes, ds.root,
                           spec.label_format or ("multi_hot" if ds.multi_label else "index"),
                           cached=self.num_workers == 0)
        encoded = _encoded_batches(self.subset, spec, self.plan, self.start_step)
        if self.num_workers > 0:
            # The encoded batches are the DataLoader's "indices": made here, sent to the workers
            # (a batch's bytes, ~30 MB at 256 ImageNet-size photos), decoded there, returned in order.
            loader = DataLoader(decoder, batch_size=None, sampler=_Feed(encoded),
                                num_workers=self.num_workers, prefetch_factor=self.prefetch_batches,
                                pin_memory=self.pin_memory, persistent_workers=False)
        else:
            loader = map(decoder.__getitem__, encoded)
        skipped_before = len(self.skipped)
        self.skipped.extend(BadRow(shard, None, "shard", f"whole shard skipped: {problem}")
                            for shard, problem in self.subset.unreadable)
        batches = iter(loader)
        try:
            for batch in batches:
                self.skipped.extend(batch.bad_rows)
                if self.spec.image_dtype == "float32":
                    batch = batch._replace(images=normalize_images(batch.images))
                yield batch
        finally:  # stopped early or failed: the workers go now, not when garbage is collected
            getattr(batches, "_shutdown_workers", lambda: None)()
            encoded.close()
        if len(self.skipped) > skipped_before:
            log.warning("skipped %d bad rows/shards in %s (split %s, rank %d, epoch %d); first: %s",
                        len(self.skipped) - skipped_before, self.spec.path, self.spec.split,
                        self.spec.rank, self.spec.epoch, self.skipped[skipped_before])


_SUBSETS: OrderedDict[tuple, Subset] = OrderedDict()   # the last few, for the next epochs
_SUBSETS_KEPT = 4
_SUBSETS_LOCK = threading.Lock()


def subset_of(spec: LoaderSpec) -> Subset:
    """The spec's subset, built once per process for each (dataset content, split, size): the
    next epoch's loader (same subset, new order) reads no shard footer again. One manifest read
    tells whether the dataset changed (its digest)."""
    ds = Dataset(spec.path)
    key = (ds.root, ds.digest, spec.split, spec.fraction, spec.count, spec.exclude_fraction,
           spec.on_bad_row)
    with _SUBSETS_LOCK:
        if key in _SUBSETS:
            _SUBSETS.move_to_end(key)
            return _SUBSETS[key]
    subset = cached_subset(ds, spec.subset_cache, split=spec.split, fraction=spec.fraction, count=spec.count,
                           exclude_fraction=spec.exclude_fraction, on_unreadable=spec.on_bad_row)
    with _SUBSETS_LOCK:
        _SUBSETS[key] = subset
        while len(_SUBSETS) > _SUBSETS_KEPT:
            _SUBSETS.popitem(last=False)
    return subset


class _Feed:
    """A one-pass iterable as a DataLoader sampler."""

    def __init__(self, items: Iterator[_Encoded]):
        self.items = items

    def __iter__(self) -> Iterator[_Encoded]:
        return self.items


def default_num_workers() -> int:
    """Decode workers per rank: none on tiny machines (where the trainer needs the cores)."""
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(8, cpus // 2)


def make_loader(spec: LoaderSpec, *, start_step: int = 0,
                num_workers: int | None = None, pin_memory: bool = False) -> StreamingLoader:
    """An iterable of :class:`Batch` (images, labels, keys, bad_rows) over one rank's share of one
    epoch, as :class:`LoaderSpec` describes it (``loader.steps_per_epoch`` batches in all).

    ``start_step`` resumes mid-epoch exactly: the batches from there on are those an uninterrupted
    epoch yields. ``num_workers`` decode processes (None: by the CPU count; 0: in this process).
    ``pin_memory`` (a CUDA trainer): batches from decode processes land in page-locked memory, in a
    thread, so that ``.to("cuda", non_blocking=True)`` overlaps the copy with compute.
    """
    return StreamingLoader(spec, start_step=start_step, pin_memory=pin_memory,
                           num_workers=default_num_workers() if num_workers is None else num_workers)
