"""The ``webdataset`` format: tar shards whose members ``<key>.<ext>`` group into samples: one image
(jpg/jpeg/png/webp/bmp/ppm) plus ``cls``/``label`` (an integer as text) or ``json``
(``{"label": 3}`` or ``{"labels": [3, 7]}``), converted into one split of a dataset, one shard
per tar (``pipeline.data.convert``)."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any, Iterable

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.data.convert import (ConversionError, ConvertOptions, ShardResult, add_row, finish_shard, open_output,
                                   record_split, run_split_jobs, shard_jobs)


WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm")


WDS_LABEL_EXTS = ("cls", "cls2", "class", "label")


def _webdataset_job(out: str, name: str, tar_path: str, split: str, subset_seed: int,
                    skip_bad: bool, num_classes: int | None, max_short_side: int | None) -> ShardResult:
    result, rows = ShardResult(None), []
    tar_name = Path(tar_path).name
    try:
        samples = _wds_samples(tar_path)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ConversionError(f"not a readable tar file: {e}", source=tar_path,
                              hint="re-download or re-create the tar shard") from e
    for key, files in samples:
        where = f"{tar_path}:{key}"
        image_ext = next((e for e in WDS_IMAGE_EXTS if e in files), None)
        try:
            if image_ext is None:
                raise ValueError(f"no image member (.{'/.'.join(WDS_IMAGE_EXTS)}) in sample; "
                                 f"found {sorted(files)}")
            labels = _wds_labels(files)
            if any(l < 0 or (num_classes is not None and l >= num_classes) for l in labels):
                raise ValueError(f"labels {labels} outside [0, {num_classes or 'inf'})")
        except ValueError as e:
            if not skip_bad:
                raise ConversionError(str(e), source=where, field="labels" if image_ext else "image",
                                      hint="fix the sample, or pass --skip-bad") from e
            result.skipped.append((where, str(e)))
            continue
        add_row(rows, result, f"{tar_name}/{key}", files[image_ext], labels, where, skip_bad,
                 max_short_side)
    return finish_shard(out, name, rows, subset_seed, result)


def _wds_samples(tar_path: str) -> list[tuple[str, dict[str, bytes]]]:
    """Group tar members into samples the WebDataset way: key = path up to the first dot of the
    file name, extension = the rest (lower-cased)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            directory, base = os.path.split(member.name)
            if base.startswith(".") or "." not in base:
                continue
            stem, ext = base.split(".", 1)
            key = f"{directory}/{stem}" if directory else stem
            samples.setdefault(key, {})[ext.lower()] = tar.extractfile(member).read()
    return list(samples.items())


def _wds_labels(files: dict[str, bytes]) -> list[int]:
    for ext in WDS_LABEL_EXTS:
        if ext in files:
            text = files[ext].decode("utf-8").strip()
            try:
                return [int(text)]
            except ValueError:
                raise ValueError(f".{ext} holds {text!r}, not an integer class id") from None
    if "json" in files:
        try:
            meta = json.loads(files["json"])
        except json.JSONDecodeError as e:
            raise ValueError(f".json is not valid JSON: {e}") from None
        for name in ("labels", "label", "cls", "class"):
            if name in meta:
                value = meta[name]
                values = value if isinstance(value, list) else [value]
                if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                    raise ValueError(f".json field {name!r} must be an integer or a list of them, "
                                     f"got {value!r}")
                return sorted(set(values))
        raise ValueError(f".json has no label field (labels/label/cls/class): {sorted(meta)}")
    raise ValueError(f"no label member (.{'/.'.join(WDS_LABEL_EXTS)}/.json); found {sorted(files)}")


def _tar_files(src: Path) -> list[Path]:
    if src.is_dir():
        tars = sorted(src.glob("*.tar"))
    elif src.exists():
        tars = [src]
    else:
        tars = sorted(Path(src.anchor or ".").glob(str(src).lstrip("/"))) if any(
            c in str(src) for c in "*?[") else []
    if not tars:
        raise ConversionError("no .tar shards found", source=src,
                              hint="pass a .tar file, a folder of .tar files, or a glob")
    return tars


def convert_webdataset(src, out, options: ConvertOptions = ConvertOptions(), *,
                       executor: str = "auto", progress: bool = True) -> dict[str, Any]:
    """WebDataset tar shards -> split ``options.split`` (default train) of ``out``."""
    split, seed, num_classes = options.split or "train", options.seed, options.num_classes
    src, out = Path(src), storage.resolve(out)
    tars = _tar_files(src)
    storage.makedirs(out)
    jobs = shard_jobs(out, split, [(str(t), split, seed, options.skip_bad, num_classes, options.max_short_side)
                                   for t in tars])
    results = run_split_jobs(out, split, _webdataset_job, jobs, weights=[t.stat().st_size for t in tars],
                       desc=f"webdataset {split}", unit="B", executor=executor, progress=progress)
    if num_classes is None:
        num_classes = max(r.max_label for r in results) + 1
    multi_label = _any_multi_label(out, results)
    manifest = open_output(out, split, num_classes=num_classes,
                            multi_label=multi_label, class_names=None, subset_seed=seed,
                            source={"converter": "webdataset", "src": [str(t.resolve()) for t in tars],
                                    "max_short_side": options.max_short_side})
    manifest["multi_label"] = manifest.get("multi_label", False) or multi_label
    return record_split(out, manifest, split, results)


def _any_multi_label(out: str, results: Iterable[ShardResult]) -> bool:
    for r in results:
        if r.entry is not None:
            with storage.open_input(storage.join(out, r.entry["path"])) as f:
                labels = pq.read_table(f, columns=["labels"]).column("labels")
            if pc.max(pc.list_value_length(labels)).as_py() > 1:
                return True
    return False

