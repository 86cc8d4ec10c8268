"""ImageNet-1k (ILSVRC2012) in the layouts it is downloaded in; its synset tars are read as
``pipeline.data.imagenet21k`` reads ImageNet-21k's (class ids and words files are explained there).

``imagenet`` (ILSVRC2012), told apart by what SRC holds:

- class subfolders ``SRC/n01440764/*.JPEG`` (the extracted train set, Kaggle's
  ``ILSVRC/Data/CLS-LOC/train``): split ``train``, classes = the subfolders sorted, keys
  ``train/<wnid>/<file>`` (as ``imagefolder``); a words file in SRC is used as above.
- a tar of synset tars or a folder of them (``ILSVRC2012_img_train.tar`` as downloaded): split
  ``train``, read as ``imagenet21k`` does.
- a flat folder of images ``SRC/ILSVRC2012_val_00000001.JPEG ...`` with ``--labels FILE``: split
  ``validation``, keys ``validation/<file>``. The label file may be
  ``<file> <wnid>`` lines (``ILSVRC2012_val_00000001.JPEG n01751748``), Kaggle's
  ``LOC_val_solution.csv`` (header ``ImageId,PredictionString``; the ImageId has no extension and
  the first token of the PredictionString is the wnid), or ``<file> <class id>`` lines with ids in
  the sorted-wnid order (Caffe's ``val.txt``). The devkit's ``ILSVRC2012_validation_ground_truth.txt``
  (ids alone, in the devkit's own class order) is refused. Images and label lines are matched by
  file name without extension. The classes are those of the dataset at OUT when it has them (the
  train split converted first: its order is kept), else the label file's wnids sorted (integer
  ids then need the train split first). A wnid that is not one of the classes, an id out of range,
  an image without a label line, a label line without an image, or an image labelled twice is an
  error naming the file and line or image; with ``--skip-bad`` they are skipped and counted.

``--split`` overrides the default split names; ``--max-short-side`` applies as in every converter.

"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline import storage
from pipeline.data.convert import (ROWS_PER_SHARD, ConversionError, ConvertOptions, chunks, open_output, record_split,
                                   run_split_jobs, shard_jobs)
from pipeline.data.imagefolder import IMAGE_EXTENSIONS, class_files, imagefolder_job
from pipeline.data.format import MANIFEST_NAME

from pipeline.data.imagenet21k import WNID, convert_synset_tars, find_words_file, read_words

DEVKIT_HINT = ("ids without file names look like the devkit's ILSVRC2012_validation_ground_truth.txt, "
               "whose ids follow the devkit's class order, not the sorted wnids: use "
               "LOC_val_solution.csv or '<file> <wnid>' lines")


def convert_imagenet(src, out, options: ConvertOptions = ConvertOptions(), *,
                     executor: str = "auto", progress: bool = True) -> dict[str, Any]:
    """ILSVRC2012 train (class folders, or synset tars) or val (flat folder + label file) ->
    a split of ``out`` (train, or validation; ``options.split`` overrides)."""
    src, out = Path(src), storage.resolve(out)
    layout = _layout(src, options)
    if layout == "synset tars":
        return convert_synset_tars(src, out, options, "imagenet", executor, progress)
    if layout == "class folders":
        return _convert_train_folders(src, out, options, executor, progress)
    return _convert_val_folder(src, out, options, executor, progress)



def _layout(src: Path, options: ConvertOptions) -> str:
    if src.is_file():
        layout = "synset tars"
    elif not src.is_dir():
        raise ConversionError("does not exist", source=src)
    else:
        with os.scandir(src) as it:
            entries = [(e.name, e.is_dir()) for e in it if not e.name.startswith(".")]
        if any(is_dir for _, is_dir in entries):
            layout = "class folders"
        elif any(n.endswith(".tar") and WNID.fullmatch(n[:-4]) for n, _ in entries):
            layout = "synset tars"
        elif any(Path(n).suffix.lower() in IMAGE_EXTENSIONS for n, _ in entries):
            layout = "val folder"
        else:
            raise ConversionError(
                "is neither a folder of class subfolders (SRC/n01440764/*.JPEG: train), a folder "
                "or tar of synset tars (n01440764.tar: train) nor a flat folder of images "
                "(SRC/ILSVRC2012_val_00000001.JPEG: validation, with --labels FILE)", source=src)
    if layout == "val folder" and options.labels is None:
        raise ConversionError("is a flat folder of images (ImageNet's val layout) but no label "
                              "file was given", source=src,
                              hint="pass --labels FILE: '<file> <wnid>' lines, LOC_val_solution.csv "
                                   "or '<file> <class id>' lines")
    if layout != "val folder" and options.labels is not None:
        raise ConversionError(f"holds {layout} (a train split), but --labels is the label file of "
                              "a flat val folder", source=src, hint="leave --labels out")
    return layout



def _convert_train_folders(src: Path, out: str, options: ConvertOptions, executor: str,
                           progress: bool) -> dict[str, Any]:
    split = options.split or "train"
    wnids = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    items, ignored, links = [], 0, 0
    for label, wnid in enumerate(wnids):
        images, others, broken = class_files(src / wnid)
        items += [(str(path), path.relative_to(src).as_posix(), label) for path in images]
        ignored, links = ignored + others, links + broken
    if not items:
        raise ConversionError("has no image files in its class subfolders", source=src)
    manifest = open_output(out, split, num_classes=len(wnids), multi_label=False,
                            class_names=wnids, subset_seed=options.seed,
                            source={"converter": "imagenet", "src": str(src.resolve()),
                                    "layout": "class folders",
                                    "max_short_side": options.max_short_side})
    words_file = find_words_file(src, None)
    if words_file is not None:
        words = read_words(words_file)
        manifest["class_descriptions"] = [words.get(w) for w in wnids]
    report = _run_items(out, split, items, manifest, options, executor, progress)
    report["ignored_files"], report["skipped_links"] = ignored, links
    return report



def _run_items(out: str, split: str, items: list[tuple[str, str, int]], manifest: dict,
               options: ConvertOptions, executor: str, progress: bool) -> dict[str, Any]:
    per = math.ceil(len(items) / options.shards) if options.shards else ROWS_PER_SHARD
    jobs = shard_jobs(out, split, [(items[a:b], split, options.seed, options.skip_bad, options.max_short_side)
                                   for a, b in chunks(len(items), per)])
    results = run_split_jobs(out, split, imagefolder_job, jobs, weights=[len(j[2]) for j in jobs],
                              desc=f"imagenet {split}", unit="img", executor=executor,
                              progress=progress)
    return record_split(out, manifest, split, results)



def read_val_labels(path: Path) -> list[tuple[int, str, str | int]]:
    """(line number, image name without extension, wnid or integer class id) per label line of
    a ``<file> <wnid>``, ``<file> <class id>`` or ``ImageId,PredictionString`` file."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    csv = bool(lines) and lines[0].replace(" ", "").lower().startswith("imageid,predictionstring")
    entries = []
    for n, line in enumerate(lines, start=1):
        if (csv and n == 1) or not line.strip() or line.lstrip().startswith("#"):
            continue
        if csv:
            image, _, prediction = line.partition(",")
            tokens = [image.strip(), *prediction.split()[:1]]
        else:
            tokens = line.split()
        if len(tokens) != 2 or not tokens[0]:
            expected = "ImageId,PredictionString" if csv else "'<image file> <wnid or class id>'"
            raise ConversionError(f"line {n}: expected {expected}, got {line[:80]!r}", source=path,
                                  field="labels", hint=DEVKIT_HINT if len(tokens) == 1 else None)
        name, value = tokens
        entries.append((n, _image_stem(name), int(value) if value.isdigit() else value))
    return entries



def _image_stem(name: str) -> str:
    base = PurePosixPath(name.replace("\\", "/")).name
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in IMAGE_EXTENSIONS else base



def _dataset_class_names(out: str) -> list[str] | None:
    manifest_path = storage.join(out, MANIFEST_NAME)
    if storage.is_file(manifest_path):
        return json.loads(storage.read_text(manifest_path)).get("class_names")
    return None



def _val_class_names(out: str, entries: list[tuple[int, str, str | int]], labels: Path) -> list[str]:
    names = _dataset_class_names(out)
    if names is not None:
        return names
    if any(isinstance(v, int) for _, _, v in entries):
        raise ConversionError("integer class ids need the dataset's classes, and OUT has none yet",
                              source=labels, field="labels",
                              hint="convert the train split (class folders) into OUT first")
    return sorted({v for _, _, v in entries})



def _resolve_val_labels(entries: list[tuple[int, str, str | int]], class_names: list[str],
                        labels: Path, skip_bad: bool) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """{image stem: class id} and the (where, why) of the label lines skipped."""
    ids = {w: i for i, w in enumerate(class_names)}
    resolved: dict[str, tuple[int, int]] = {}     # stem -> (class id, line)
    skipped = []
    for n, stem, value in entries:
        if isinstance(value, int):
            why = None if value < len(class_names) else \
                f"class id {value} outside [0, {len(class_names)})"
        else:
            why = None if value in ids else \
                f"wnid {value!r} is not one of the dataset's {len(class_names)} classes"
        if why is None and stem in resolved:
            why = f"image {stem} labelled again (first on line {resolved[stem][1]})"
        if why is not None:
            if not skip_bad:
                raise ConversionError(f"line {n}: {why}", source=labels, field="labels",
                                      hint="fix the label file, or pass --skip-bad")
            skipped.append((f"{labels}:{n}", why))
            continue
        resolved[stem] = (value if isinstance(value, int) else ids[value], n)
    return {stem: label for stem, (label, _) in resolved.items()}, skipped



def _match_val_images(src: Path, labels_path: Path, labels: dict[str, int],
                      skip_bad: bool) -> tuple[list[tuple[str, str, int]], list[tuple[str, str]], int]:
    """(path, name, class id) per labelled image, the (where, why) skipped, files ignored."""
    images = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
    ignored = sum(p.suffix.lower() not in IMAGE_EXTENSIONS for p in images)
    images = [p for p in images if p.suffix.lower() in IMAGE_EXTENSIONS]
    unlabelled = [p for p in images if _image_stem(p.name) not in labels]
    stems = {_image_stem(p.name) for p in images}
    missing = sorted(s for s in labels if s not in stems)
    problems = [(str(p), "no label line for this image") for p in unlabelled]
    problems += [(f"{labels_path}", f"label line for {s}, which is not in the folder") for s in missing]
    if problems and not skip_bad:
        parts = []
        if unlabelled:
            parts.append(f"{len(unlabelled)} image(s) have no label line: "
                         f"{', '.join(p.name for p in unlabelled[:5])}")
        if missing:
            parts.append(f"{len(missing)} label line(s) name images not in the folder: "
                         f"{', '.join(missing[:5])}")
        raise ConversionError("; ".join(parts), source=src, field="labels",
                              hint=f"check --labels {labels_path}, or pass --skip-bad")
    items = [(str(p), p.name, labels[_image_stem(p.name)]) for p in images
             if _image_stem(p.name) in labels]
    return items, problems, ignored



def _convert_val_folder(src: Path, out: str, options: ConvertOptions, executor: str,
                        progress: bool) -> dict[str, Any]:
    split, labels_path = options.split or "validation", Path(options.labels)
    entries = read_val_labels(labels_path)
    class_names = _val_class_names(out, entries, labels_path)
    labels, skipped = _resolve_val_labels(entries, class_names, labels_path, options.skip_bad)
    items, unmatched, ignored = _match_val_images(src, labels_path, labels, options.skip_bad)
    skipped += unmatched
    if not items:
        raise ConversionError("has no labelled images", source=src, hint=f"check --labels {labels_path}")
    manifest = open_output(out, split, num_classes=len(class_names), multi_label=False,
                            class_names=class_names, subset_seed=options.seed,
                            source={"converter": "imagenet", "src": str(src.resolve()),
                                    "layout": "val folder", "labels": str(labels_path.resolve()),
                                    "max_short_side": options.max_short_side})
    report = _run_items(out, split, items, manifest, options, executor, progress)
    report["skipped"] += len(skipped)
    report["skipped_examples"] = [f"{w}: {why}" for w, why in skipped[:10]] + report["skipped_examples"]
    report["ignored_files"] = ignored
    return report
