"""ImageNet-21k and ImageNet-1k (ILSVRC2012) in the layouts they are downloaded in.

Class ids: the synset ids (wnids, ``n01440764``) sorted as plain strings (``n00004475`` <
``n00005787`` < ...) are classes 0..K-1, and the manifest's ``class_names`` is that list (the
wnid <-> id map). This is the order of the usual ImageNet-1k class indices (torchvision's,
Caffe's ``val.txt``, the Kaggle folders) and of the sorted 21k synsets. When a words file
(``wnid<TAB>name`` lines: ImageNet's ``words.txt``, or Kaggle's ``LOC_synset_mapping.txt`` with
``wnid name``) is found, the manifest's ``class_descriptions`` holds each class's name, aligned
with ``class_names`` (null for a wnid the file lacks).

``imagenet21k`` (fall11 / winter21): one tar per synset, ``n01440764.tar`` holding that synset's
images (``n01440764_10026.JPEG``). SRC is a folder of such tars, or one outer tar that holds them
(``fall11_whole.tar``; ``ILSVRC2012_img_train.tar`` has the same layout). An outer tar is not
extracted: it is listed once and each synset tar is read in place (seek to the member's data,
read the inner tar from that slice of the file), so it must be uncompressed: a ``.tar.gz``
(``winter21_whole.tar.gz``) is refused with the hint to ``gunzip`` it first. Tars whose name is
not ``<wnid>.tar`` and other members are ignored (counted). Every regular, non-hidden member of a
synset tar is an image of that synset; one that does not decode is an error (``--skip-bad``:
skipped and counted). Row keys: ``<wnid>/<member name>``. An empty synset tar (the release has
some) gives its class no rows and is counted in the report's ``empty_synsets``. Consecutive
synsets (in wnid order) are grouped into shards of about 256 MiB of source tar each, or
``--shards N`` shards of about equal size; ``--labels FILE`` names the words file (default
``words.txt`` or ``LOC_synset_mapping.txt`` in SRC's folder). The release has no validation split:
``--val-fraction F`` holds out the images whose ``format.holdout_draw`` (a keyed hash of the row
key, independent of its subset priority) is below F as split ``val`` and writes the rest as the
train split; each split's pass reads only its own images' bytes (the others' are seeked over).

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

import io
import json
import math
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from pipeline import storage
from pipeline.data.convert import (ROWS_PER_SHARD, ConversionError, ConvertOptions, ShardResult, add_row, chunks,
                                   finish_shard, open_output, publish_manifest, record_split, run_split_jobs,
                                   shard_jobs)
from pipeline.data.imagefolder import IMAGE_EXTENSIONS, imagefolder_job
from pipeline.data.format import MANIFEST_NAME, holdout_draw

WNID = re.compile(r"n\d{8}")
VAL_SPLIT = "val"                     # --val-fraction's held-out split: the one pretraining validates on
WORDS_FILES = ("words.txt", "LOC_synset_mapping.txt")
SHARD_SOURCE_BYTES = 256 << 20       # synset tars grouped into shards of about this much source
COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz",
                    b"\x28\xb5\x2f\xfd": "zstd"}
DEVKIT_HINT = ("ids without file names look like the devkit's ILSVRC2012_validation_ground_truth.txt, "
               "whose ids follow the devkit's class order, not the sorted wnids: use "
               "LOC_val_solution.csv or '<file> <wnid>' lines")


@dataclass(frozen=True)
class SynsetTar:
    """One synset's tar: the file at ``path`` (``member`` None), or the member ``member`` of the
    outer tar at ``path`` whose data is ``size`` bytes from byte ``offset``."""
    wnid: str
    path: str
    member: str | None
    offset: int
    size: int

    @property
    def where(self) -> str:
        return self.path if self.member is None else f"{self.path}:{self.member}"


class _FileSlice(io.RawIOBase):
    """Bytes [offset, offset + size) of an open file, as a seekable file of their own."""

    def __init__(self, f, offset: int, size: int):
        super().__init__()
        self._f, self._start, self._size, self._pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buffer)[:n]) if n else 0
        self._pos += got
        return got


# --------------------------------------------------------------------------------------------
# Jobs (one shard each; module-level so processes and Ray can run them)

def _synset_job(out: str, name: str, synsets: list[tuple[SynsetTar, int]], subset_seed: int,
                skip_bad: bool, max_short_side: int | None,
                holdout: tuple[float, bool] | None = None) -> ShardResult:
    """One shard of the synsets' images. ``holdout`` (fraction, held): only the images whose
    ``holdout_draw`` is below the fraction (held True: the val split) or not (False: the rest);
    the others' bytes are not read."""
    result, rows = ShardResult(None), []
    for synset, label in synsets:
        wanted = None if holdout is None else _holdout_filter(synset.wnid, subset_seed, *holdout)
        images = _synset_images(synset, wanted)
        while True:
            try:
                member, data = next(images)
            except StopIteration:
                break
            except (tarfile.TarError, OSError, EOFError) as e:   # the tar, not an image in it
                if not skip_bad:
                    raise ConversionError(f"not a readable synset tar: {e}", source=synset.where,
                                          hint="re-download it, or pass --skip-bad") from e
                result.skipped.append((synset.where, f"not a readable synset tar: {e}"))
                break
            add_row(rows, result, f"{synset.wnid}/{member}", data, [label],
                     f"{synset.where}:{member}", skip_bad, max_short_side)
    return finish_shard(out, name, rows, subset_seed, result)


def _synset_images(synset: SynsetTar, wanted=None) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of each regular, non-hidden member, in the tar's order; with
    ``wanted``, only of the members it accepts by name (the others' data is seeked over)."""
    if synset.size == 0:
        return
    with open(synset.path, "rb") as f:
        raw = f if synset.member is None else _FileSlice(f, synset.offset, synset.size)
        with tarfile.open(fileobj=raw, mode="r:*") as tar:
            for member in tar:
                if (member.isfile() and not PurePosixPath(member.name).name.startswith(".")
                        and (wanted is None or wanted(member.name))):
                    yield member.name, tar.extractfile(member).read()


def _holdout_filter(wnid: str, seed: int, fraction: float, held: bool):
    """Accepts a synset tar's member when its row (key ``<wnid>/<member>``) is held out (``held``)
    or is not (``not held``)."""
    return lambda member: (holdout_draw(f"{wnid}/{member}", seed) < fraction) == held


# --------------------------------------------------------------------------------------------
# Synset tars (imagenet21k, and ImageNet-1k's train tar)

def find_synset_tars(src: Path) -> tuple[list[SynsetTar], int]:
    """The synset tars in a folder or an outer tar, sorted by wnid, and how many other files
    were ignored."""
    if src.is_dir():
        found, ignored = [], 0
        for path in sorted(p for p in src.iterdir() if p.is_file()):
            if path.name.endswith(".tar") and WNID.fullmatch(path.name[:-4]):
                found.append(SynsetTar(path.name[:-4], str(path.resolve()), None, 0, path.stat().st_size))
            else:
                ignored += 1
    elif src.is_file():
        found, ignored = _synsets_in_outer_tar(src)
    else:
        raise ConversionError("does not exist", source=src)
    if not found:
        raise ConversionError("holds no synset tars (<wnid>.tar, e.g. n01440764.tar)", source=src,
                              hint="pass a folder of synset tars or the outer tar that holds them")
    found.sort(key=lambda s: s.wnid)
    twice = [a.wnid for a, b in zip(found, found[1:]) if a.wnid == b.wnid]
    if twice:
        raise ConversionError(f"synset {twice[0]} has more than one tar", source=src)
    return found, ignored


def _synsets_in_outer_tar(src: Path) -> tuple[list[SynsetTar], int]:
    with open(src, "rb") as f:
        head = f.read(6)
    kind = next((k for magic, k in COMPRESSED_MAGIC.items() if head.startswith(magic)), None)
    if kind:
        raise ConversionError(f"is {kind}-compressed: synset tars are read in place from an "
                              "uncompressed outer tar", source=src,
                              hint="decompress it first (e.g. gunzip -k FILE; the result is read, "
                                   "never extracted), or extract it to a folder of synset tars")
    found, ignored = [], 0
    path = str(src.resolve())
    try:
        with tarfile.open(src, "r:") as tar:
            for m in tar:
                base = PurePosixPath(m.name).name
                if m.isfile() and base.endswith(".tar") and WNID.fullmatch(base[:-4]):
                    found.append(SynsetTar(base[:-4], path, m.name, m.offset_data, m.size))
                elif m.isfile():
                    ignored += 1
    except tarfile.TarError as e:
        raise ConversionError(f"not a readable tar file: {e}", source=src,
                              hint="pass a folder of synset tars or an uncompressed tar of them") from e
    return found, ignored


def _synset_groups(synsets: list[SynsetTar], shards: int | None) -> list[list[tuple[SynsetTar, int]]]:
    """Consecutive synsets (label = position) grouped by where their first byte falls in the
    total: about SHARD_SOURCE_BYTES each, or ``shards`` groups of about equal size."""
    total = sum(s.size for s in synsets)
    target = max(1, math.ceil(total / shards)) if shards else SHARD_SOURCE_BYTES
    groups: dict[int, list[tuple[SynsetTar, int]]] = {}
    before = 0
    for label, synset in enumerate(synsets):
        groups.setdefault(before // target, []).append((synset, label))
        before += synset.size
    return [groups[k] for k in sorted(groups)]


def read_words(path: Path) -> dict[str, str]:
    """``wnid<TAB>name`` (or ``wnid name``) lines -> {wnid: name}."""
    words = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition("\t") if "\t" in line else line.strip().partition(" ")
        if not WNID.fullmatch(wnid.strip()):
            raise ConversionError(f"line {n}: expected 'wnid<TAB>name', got {line[:80]!r}",
                                  source=path, hint="pass ImageNet's words.txt or leave --labels out")
        words[wnid.strip()] = name.strip()
    return words


def _words_file(src: Path, given: str | None) -> Path | None:
    if given is not None:
        return Path(given)
    folder = src if src.is_dir() else src.parent
    return next((folder / f for f in WORDS_FILES if (folder / f).is_file()), None)


def _convert_synset_tars(src: Path, out: str, options: ConvertOptions, converter: str,
                         executor: str, progress: bool) -> dict[str, Any]:
    split = options.split or "train"
    synsets, ignored = find_synset_tars(src)
    wnids = [s.wnid for s in synsets]
    words_file = _words_file(src, options.labels if converter == "imagenet21k" else None)
    groups = _synset_groups(synsets, options.shards)
    source = {"converter": converter, "src": str(src.resolve()), "layout": "synset tars",
              "max_short_side": options.max_short_side, "val_fraction": options.val_fraction}
    manifest, reports = None, []
    for name, holdout in _holdout_splits(split, options.val_fraction, out):
        manifest = open_output(out, name, num_classes=len(wnids), multi_label=False, class_names=wnids,
                                subset_seed=options.seed, source=source, manifest=manifest)
        jobs = shard_jobs(out, name, [(group, options.seed, options.skip_bad, options.max_short_side, holdout)
                                      for group in groups])
        results = run_split_jobs(out, name, _synset_job, jobs,
                                  weights=[sum(s.size for s, _ in g) for g in groups],
                                  desc=f"{converter} {name}", unit="B", executor=executor,
                                  progress=progress)
        reports.append(record_split(out, manifest, name, results, write=False))
        if holdout and holdout[1] and not reports[-1]["rows"]:
            raise ConversionError(f"--val-fraction {options.val_fraction} held out no image", source=src,
                                  hint="SRC has too few images for that fraction: pass a larger one, or leave "
                                       "it out (a run then validates on nothing)")
    if words_file is not None:
        words = read_words(words_file)
        manifest["class_descriptions"] = [words.get(w) for w in wnids]
    publish_manifest(out, manifest)   # every split there: the dataset opens from now on
    report = reports[0] if len(reports) == 1 else {"splits": reports}
    with_rows = set().union(*(r["rows_per_class"] for r in reports))
    report.update(synsets=len(synsets), empty_synsets=len(synsets) - len(with_rows), ignored_files=ignored)
    return report


def _holdout_splits(split: str, val_fraction: float | None, out: str) -> list[tuple[str, tuple | None]]:
    """The splits to write and each one's holdout: ``split`` alone, or with ``--val-fraction F``
    first "val" (the images whose holdout draw is below F), then ``split`` (the rest)."""
    if val_fraction is None:
        return [(split, None)]
    if split == VAL_SPLIT:
        raise ConversionError(f"--val-fraction writes the held-out images as split {VAL_SPLIT!r}; the rest "
                              f"cannot be {VAL_SPLIT!r} too", dataset=out, hint="leave --split out (train)")
    return [(VAL_SPLIT, (val_fraction, True)), (split, (val_fraction, False))]


def convert_imagenet21k(src, out, options: ConvertOptions = ConvertOptions(), *,
                        executor: str = "auto", progress: bool = True) -> dict[str, Any]:
    """A folder of synset tars, or the outer tar that holds them -> split ``options.split``
    (default train) of ``out``."""
    return _convert_synset_tars(Path(src), storage.resolve(out), options, "imagenet21k",
                                executor, progress)


# --------------------------------------------------------------------------------------------
# ImageNet-1k

def convert_imagenet(src, out, options: ConvertOptions = ConvertOptions(), *,
                     executor: str = "auto", progress: bool = True) -> dict[str, Any]:
    """ILSVRC2012 train (class folders, or synset tars) or val (flat folder + label file) ->
    a split of ``out`` (train, or validation; ``options.split`` overrides)."""
    src, out = Path(src), storage.resolve(out)
    layout = _layout(src, options)
    if layout == "synset tars":
        return _convert_synset_tars(src, out, options, "imagenet", executor, progress)
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
    items, ignored = [], 0
    for label, wnid in enumerate(wnids):
        for path in sorted((src / wnid).rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                items.append((str(path), path.relative_to(src).as_posix(), label))
            elif path.is_file():
                ignored += 1
    if not items:
        raise ConversionError("has no image files in its class subfolders", source=src)
    manifest = open_output(out, split, num_classes=len(wnids), multi_label=False,
                            class_names=wnids, subset_seed=options.seed,
                            source={"converter": "imagenet", "src": str(src.resolve()),
                                    "layout": "class folders",
                                    "max_short_side": options.max_short_side})
    words_file = _words_file(src, None)
    if words_file is not None:
        words = read_words(words_file)
        manifest["class_descriptions"] = [words.get(w) for w in wnids]
    report = _run_items(out, split, items, manifest, options, executor, progress)
    report["ignored_files"] = ignored
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
