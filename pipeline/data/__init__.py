"""Datasets: the one way data enters the pipeline, for pretraining and downstream alike.

On disk a dataset is a folder with ``manifest.json`` and Parquet shards (see ``format``). Make
one with ``python -m pipeline.data synth|convert|digits``, check it with ``verify``, remove
near-duplicates of downstream test images with ``dedup``, and read it with :func:`make_loader`::

    spec = LoaderSpec("data/synth", batch_size=64, image_size=32, train=True, fraction=0.1,
                      rank=r, world_size=w, seed=0, epoch=e)
    for images, labels, keys, _ in make_loader(spec, start_step=s): ...  # NCHW in [-1, 1]

The loader (torch) is imported lazily so that the generator and converters start fast in worker
processes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.data.dataset import Dataset
from pipeline.data.format import DataError
from pipeline.data.subsets import Subset
from pipeline.data.images import normalize_images

if TYPE_CHECKING:
    from pipeline.data.loader import Batch, LoaderSpec, StreamingLoader

__all__ = ["DataError", "Dataset", "Subset", "Batch", "LoaderSpec", "StreamingLoader",
           "open_dataset", "num_classes", "subset_size", "make_loader", "normalize_images"]


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


def make_loader(spec: LoaderSpec, *, start_step: int = 0,
                num_workers: int | None = None, pin_memory: bool = False) -> StreamingLoader:
    """An iterable of :class:`Batch` (images, labels, keys, bad_rows) over one rank's share of one
    epoch, as :class:`LoaderSpec` describes it (``loader.steps_per_epoch`` batches in all).

    ``start_step`` resumes mid-epoch exactly: the batches from there on are those an uninterrupted
    epoch yields. ``num_workers`` decode processes (None: by the CPU count; 0: in this process).
    ``pin_memory`` (a CUDA trainer): batches from decode processes land in page-locked memory, in a
    thread, so that ``.to("cuda", non_blocking=True)`` overlaps the copy with compute.
    """
    from pipeline.data.loader import StreamingLoader, default_num_workers
    return StreamingLoader(spec, start_step=start_step, pin_memory=pin_memory,
                           num_workers=default_num_workers() if num_workers is None else num_workers)


def __getattr__(name: str):
    if name in ("Batch", "LoaderSpec", "StreamingLoader"):
        from pipeline.data import loader
        return getattr(loader, name)
    raise AttributeError(name)
