"""Datasets: the one way data enters the pipeline, for pretraining and downstream alike.

On disk a dataset is a folder with ``manifest.json`` and Parquet shards (see ``format``). Make
one with ``python -m pipeline.data synth|convert|digits``, check it with ``verify``, remove
near-duplicates of downstream test images with ``dedup``, and read it with :func:`make_loader`::

    loader = make_loader("data/synth", fraction=0.1, rank=r, world_size=w, seed=0, epoch=e,
                         start_step=s, batch_size=64, image_size=32, train=True)
    for images, labels, keys, _ in loader: ...        # NCHW float in [-1, 1], multi-hot/int

The loader (torch) is imported lazily so that the generator and converters start fast in worker
processes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.data.format import DataError, Dataset, Subset
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
    """Rows in a subset after de-duplication exclusions (reads no image bytes)."""
    return Dataset(path).subset(fraction=fraction, count=count, split=split).num_rows


def make_loader(path, *, batch_size: int, image_size: int, train: bool = True,
                split: str = "train", fraction: float | None = None, count: int | None = None,
                exclude_fraction: float | None = None, rank: int = 0, world_size: int = 1, seed: int = 0, epoch: int = 0,
                start_step: int = 0, num_workers: int | None = None,
                label_format: str | None = None, on_bad_row: str = "raise",
                shuffle_window: int = 2048, crop_fraction: float = 0.875,
                min_crop_area: float = 0.05, image_dtype: str = "float32") -> "StreamingLoader":
    """An iterable of :class:`Batch` (images, labels, keys, bad_rows) for one rank and one epoch.

    train=True: shuffled for (seed, epoch), inception crop + flip, full batches only, the same
    number on every rank (``loader.steps_per_epoch``); ``min_crop_area`` is the inception crop's
    smallest area (the paper's 5%; tiny images of small objects want more, e.g. 0.5). train=False: storage order, resize +
    center crop (``crop_fraction``), every row of the rank's share once. Rank shares are disjoint
    and together cover the subset. ``start_step`` resumes mid-epoch exactly. ``label_format``:
    "multi_hot" (float (N, K)) or "index" (int64 (N,)); default multi-hot for multi-label sets.
    ``image_dtype="uint8"`` yields raw NCHW bytes: move them to the GPU and call
    :func:`normalize_images` there (saves CPU time and host memory bandwidth).
    ``on_bad_row="skip"`` drops undecodable/mislabelled rows, listed in ``batch.bad_rows`` and
    ``loader.skipped``, instead of raising :class:`DataError`. ``exclude_fraction=f`` leaves out
    the rows of ``fraction=f`` (priority < f): train on the rest, hold those out as a dev slice.
    """
    from pipeline.data.loader import LoaderSpec, StreamingLoader, default_num_workers
    spec = LoaderSpec(path=str(path), split=split, fraction=fraction, count=count,
                      exclude_fraction=exclude_fraction, rank=rank,
                      world_size=world_size, seed=seed, epoch=epoch, batch_size=batch_size,
                      image_size=image_size, train=train, label_format=label_format,
                      shuffle_window=shuffle_window, crop_fraction=crop_fraction,
                      min_crop_area=min_crop_area, image_dtype=image_dtype,
                      on_bad_row=on_bad_row)
    return StreamingLoader(spec, start_step=start_step,
                           num_workers=default_num_workers() if num_workers is None else num_workers)


def __getattr__(name: str):
    if name in ("Batch", "LoaderSpec", "StreamingLoader"):
        from pipeline.data import loader
        return getattr(loader, name)
    raise AttributeError(name)
