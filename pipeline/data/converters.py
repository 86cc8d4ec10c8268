"""Every converter by its format name (``python -m pipeline.data convert FORMAT SRC OUT``).

``convert.py`` holds the shared machinery and the small formats (imagefolder, CIFAR, WebDataset,
digits); ``hfparquet.py`` and ``imagenet.py`` build on it. This module only dispatches, so that
no converter imports the module that imports it.
"""
from __future__ import annotations

import os
from typing import Any

from pipeline.data import hfparquet, imagenet
from pipeline.data.convert import (ConversionError, ConvertOptions, convert_cifar, convert_imagefolder,
                                   convert_webdataset)

FORMATS = ("imagefolder", "cifar", "webdataset", "hfparquet", "imagenet", "imagenet21k")


def convert(fmt: str, src: str | os.PathLike, out: str | os.PathLike,
            options: ConvertOptions = ConvertOptions(), *, executor: str = "auto",
            progress: bool = True) -> dict[str, Any]:
    """Convert ``src`` in format ``fmt`` into the dataset at ``out``; returns row counts."""
    if options.val_fraction is not None and fmt != "imagenet21k":
        raise ConversionError(f"--val-fraction is for imagenet21k, whose release has no validation "
                              f"split; {fmt} sources have their own splits (convert them with --split)",
                              source=src)
    if fmt == "cifar":
        return convert_cifar(src, out, split=options.split, seed=options.seed, executor=executor,
                             progress=progress, max_short_side=options.max_short_side)
    converters = {"imagefolder": convert_imagefolder, "webdataset": convert_webdataset,
                  "hfparquet": hfparquet.convert_hfparquet, "imagenet": imagenet.convert_imagenet,
                  "imagenet21k": imagenet.convert_imagenet21k}
    if fmt not in converters:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return converters[fmt](src, out, options, executor=executor, progress=progress)
