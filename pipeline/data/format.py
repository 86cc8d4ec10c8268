"""The dataset format: a JSON manifest plus Parquet shards, written by the generators and
converters (``pipeline.data.synth``, ``pipeline.data.convert``) and read by ``pipeline.data.dataset``.

A dataset is a directory::

    manifest.json
    train-00000-of-00004.parquet ...   (one or more splits; pretraining sets have only "train")

The manifest lists each split's shards; readers open those. A converter names shard i of its n
jobs ``<split>-<i>-of-<n>``, and a job that found no rows writes none, so the numbers may skip one.

Every shard row is (``key``: unique string, ``image``: encoded PNG/JPEG bytes, ``labels``: list of
class ids, ``priority``: float in [0, 1) = hash(key, subset_seed)). Rows are sorted by priority
inside each shard and written in small row groups, so the subset of fraction f (all rows with
priority < f) is a *prefix* of every shard: nested by construction, and a reader can tell from the
row-group statistics which groups it needs without touching image bytes (``pipeline.data.subsets``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage

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
