"""The ``cifar`` format: the CIFAR-10/100 "python version" folder (``data_batch_*``/``test_batch`` or
``train``/``test`` pickles, as unpacked from the official tarball), every split (or ``--split``)
converted into a dataset (``pipeline.data.convert``). The pickles are read by an unpickler that
admits only what a CIFAR batch holds."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.data.convert import (ConversionError, ConvertOptions, array_job, chunks, open_output, publish_manifest,
                                   record_split, run_split_jobs, shard_jobs)


class _CifarUnpickler(pickle.Unpickler):
    """Reads what the official CIFAR batches hold (dicts, lists, bytes and numpy arrays) and
    nothing else: a pickle naming any other class or function (code it would run) is refused."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               *((f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")),
               *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core"))}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never holds")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise ConversionError(f"cannot read CIFAR batch: {e}", source=path,
                              hint="re-extract the official python-version tarball") from e


def convert_cifar(src, out, options: ConvertOptions = ConvertOptions(), *, executor: str = "auto",
                  progress: bool = True) -> dict[str, Any]:
    """Every split of the CIFAR folder ``src`` (or ``options.split``) into ``out``."""
    split, seed, max_short_side = options.split, options.seed, options.max_short_side
    src, out = Path(src), storage.resolve(out)
    if (src / "data_batch_1").exists():
        variant, meta_file, label_key, names_key = "cifar10", "batches.meta", b"labels", b"label_names"
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    elif (src / "train").exists():
        variant, meta_file, label_key, names_key = "cifar100", "meta", b"fine_labels", b"fine_label_names"
        files = {"train": ["train"], "test": ["test"]}
    else:
        raise ConversionError("is not a CIFAR python-version folder (no data_batch_1 or train)",
                              source=src, hint="pass the folder unpacked from cifar-*-python.tar.gz")
    if split is not None and split not in files:
        raise ConversionError(f"CIFAR has splits train and test, not {split!r}", source=src)
    class_names = None
    if (src / meta_file).exists():
        class_names = [n.decode() for n in _unpickle(src / meta_file)[names_key]]
    num_classes = len(class_names) if class_names else (10 if variant == "cifar10" else 100)
    reports, manifest = [], None
    for name in ([split] if split else list(files)):
        images, labels = [], []
        for f in files[name]:
            path = src / f
            if not path.exists():
                raise ConversionError(f"missing batch file {f}", source=src, field=name)
            batch = _unpickle(path)
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(batch[label_key]):
                raise ConversionError(f"data has shape {data.shape} for {len(batch[label_key])} "
                                      f"labels; expected (N, 3072)", source=path, field="data")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(int(l) for l in batch[label_key])
        pixels = np.concatenate(images)
        bad = [i for i, l in enumerate(labels) if not 0 <= l < num_classes]
        if bad:
            raise ConversionError(f"label {labels[bad[0]]} outside [0, {num_classes})",
                                  source=src, row=bad[0], field=name)
        manifest = open_output(out, name, num_classes=num_classes, manifest=manifest,
                                multi_label=False, class_names=class_names, subset_seed=seed,
                                source={"converter": "cifar", "variant": variant,
                                        "src": str(src.resolve()), "max_short_side": max_short_side})
        jobs = shard_jobs(out, name, [([f"{variant}-{name}-{j:05d}" for j in range(a, b)], pixels[a:b],
                                        labels[a:b], seed, max_short_side)
                                       for a, b in chunks(len(labels), 10000)])
        results = run_split_jobs(out, name, array_job, jobs, weights=[len(j[3]) for j in jobs],
                           desc=f"{variant} {name}", unit="img", executor=executor, progress=progress)
        reports.append(record_split(out, manifest, name, results, write=False))
    publish_manifest(out, manifest)  # every split there: the dataset opens from now on
    return {"splits": reports}

