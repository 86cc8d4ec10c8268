"""Datasets: the one way data enters the pipeline, for pretraining and downstream alike.

On disk a dataset is a folder with ``manifest.json`` and Parquet shards (see ``format``). Make
one with ``python -m pipeline.data synth|convert|digits``, check it with ``verify``, remove
near-duplicates of downstream test images with ``dedup``, and read it with
:func:`pipeline.data.loader.make_loader`::

    spec = LoaderSpec("data/synth", batch_size=64, image_size=32, train=True, fraction=0.1,
                      rank=r, world_size=w, seed=0, epoch=e)
    for images, labels, keys, _ in make_loader(spec, start_step=s): ...  # NCHW in [-1, 1]

This package does not import the loader (``pipeline.data.loader``: torch, 1.2 s), so that the
generator and converters start fast in worker processes.
"""
from __future__ import annotations

from pipeline.data.dataset import Dataset
from pipeline.data.format import DataError
from pipeline.data.subsets import Subset
from pipeline.data.images import normalize_images

__all__ = ["DataError", "Dataset", "Subset", "open_dataset", "num_classes", "subset_size", "normalize_images"]


def open_dataset(path) -> Dataset:
    """The dataset at ``path`` (manifest checked, shards opened lazily)."""
    return Dataset(path)


def num_classes(path) -> int:
    return Dataset(path).num_classes


def subset_size(path, fraction: float | None = None, count: int | None = None,
                split: str = "train") -> int:
    """Rows in a subset after de-duplication exclusions: from the manifest alone for the full
    split and ``count=`` subsets; a fraction below 1 reads the shards' footers (no image bytes)."""
    ds = Dataset(path)
    if count is None and fraction is not None and float(fraction) != 1.0:
        return Subset.build(ds, fraction=fraction, split=split).num_rows
    return ds.subset_rows(split, fraction=fraction, count=count)
