"""ImageNet-21k (and ILSVRC2012's train tar) as downloaded: tars of synset tars.

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
"""
from __future__ import annotations

import io
import math
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from pipeline import storage
from pipeline.data.convert import (ConversionError, ConvertOptions, ShardResult, add_row, finish_shard, open_output,
                                   publish_manifest, record_split, run_split_jobs, shard_jobs)
from pipeline.data.format import holdout_draw


WNID = re.compile(r"n\d{8}")

VAL_SPLIT = "val"                     # --val-fraction's held-out split: the one pretraining validates on

WORDS_FILES = ("words.txt", "LOC_synset_mapping.txt")

SHARD_SOURCE_BYTES = 256 << 20       # synset tars grouped into shards of about this much source

COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz",
                    b"\x28\xb5\x2f\xfd": "zstd"}




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



def find_words_file(src: Path, given: str | None) -> Path | None:
    if given is not None:
        return Path(given)
    folder = src if src.is_dir() else src.parent
    return next((folder / f for f in WORDS_FILES if (folder / f).is_file()), None)



def convert_synset_tars(src: Path, out: str, options: ConvertOptions, converter: str,
                         executor: str, progress: bool) -> dict[str, Any]:
    split = options.split or "train"
    synsets, ignored = find_synset_tars(src)
    wnids = [s.wnid for s in synsets]
    words_file = find_words_file(src, options.labels if converter == "imagenet21k" else None)
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
    return convert_synset_tars(Path(src), storage.resolve(out), options, "imagenet21k",
                                executor, progress)
