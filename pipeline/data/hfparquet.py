"""Hugging Face Parquet -> dataset format: ``python -m pipeline.data convert hfparquet SRC OUT``.

The layout the ``datasets`` library writes (``push_to_hub``) and the Hub serves: Parquet files
whose image column is a struct ``{bytes: binary, path: string}`` (``datasets.Image()``) and whose
label column holds class ids (``ClassLabel``; ``Sequence(ClassLabel)``, a list of ids, makes a
multi-label dataset). The features are read from the ``huggingface`` key of the Arrow schema
metadata: class names come from the ClassLabel's ``names`` (stored as the manifest's
``class_names``); without them the class count is ``--num-classes`` or the largest label + 1.

- SRC: a folder (searched recursively for ``*.parquet``), one Parquet file, or a glob.
- Split of a file, from its name: ``<split>-<digits>...parquet`` (``train-00000-of-00010.parquet``,
  ``data/test-00000-of-00001-<hash>.parquet``) -> ``<split>``; ``<digits>.parquet`` -> the parent
  folder's name (the Hub's auto-converted ``<config>/<split>/0000.parquet``); ``<word>.parquet``
  (``train.parquet``) -> ``<word>``. Any other name is an error that names the file, rather than a
  guess (a test file silently read as ``train`` would leak test images into training).
- ``--split NAME`` converts that split only; by default every split found is converted and the
  manifest is written once, after the last.
- Columns: the image column is the one column of ``{bytes, path}`` structs, the label column the
  ClassLabel column (several: the one named ``label``/``labels``), else a column named
  ``label``/``labels``; ``--image-column`` and ``--label-column`` choose others (an image column
  may also be plain binary).
- Rows whose image is not embedded (``bytes`` null, only a ``path``: ``Dataset.to_parquet`` of
  path-based images writes these), whose label is -1 (the ``datasets`` convention for "no
  label", e.g. unlabelled test splits), null, empty or out of range are errors naming the file and
  row, or with ``--skip-bad`` skipped and counted.
- Files are read a batch of rows at a time (never a whole file); each job converts a fixed range
  of about ``ROWS_PER_SHARD`` rows (possibly spanning files, in sorted file order) into one
  shard, so re-running makes the same shards. Keys are ``<file path relative to SRC without
  .parquet>/<row in the file>``.
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.data.convert import (ROWS_PER_SHARD, ConversionError, ConvertOptions, ShardResult, add_row, chunks,
                                   finish_shard, open_output, publish_manifest, record_split, run_split_jobs,
                                   shard_jobs)
from pipeline.data.format import MANIFEST_NAME

BATCH_ROWS = 256                       # rows decoded from Parquet at a time
LABEL_NAMES = ("label", "labels")      # label columns found by name when no ClassLabel is
SHARD_NAME = re.compile(r"^(?P<split>[^-]+)-\d")
WORD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class Columns(NamedTuple):
    """What a job reads from each file and how it checks it. Jobs' arguments are plain tuples:
    they pickle (processes, Ray) and a plan's fingerprint reads them as JSON."""
    image: str
    label: str
    multi_label: bool
    num_classes: int | None            # None: any label >= 0 (the count is the largest + 1)
    skip_bad: bool = False
    max_short_side: int | None = None
    subset_seed: int = 0


class Piece(NamedTuple):
    """Rows ``start:stop`` of one Parquet file; keys are ``f"{key_prefix}/{row}"``."""
    path: str
    key_prefix: str
    start: int
    stop: int


# --------------------------------------------------------------------------------------------
# Jobs (module-level: processes and Ray run them)

def _hfparquet_job(out: str, name: str, pieces: list[Piece], columns: Columns) -> ShardResult:
    result, rows = ShardResult(None), []
    for piece in pieces:
        for row, image, labels in _read_rows(piece, columns):
            where = f"{piece.path}:{row}"
            try:
                field = columns.image
                data = _image_bytes(image, columns.image)
                field = columns.label
                labels = _checked_labels(labels, columns)
            except ValueError as e:
                if not columns.skip_bad:
                    raise ConversionError(str(e), source=piece.path, row=row, field=field,
                                          hint="fix the source, or pass --skip-bad to skip such rows") from e
                result.skipped.append((where, str(e)))
                continue
            add_row(rows, result, f"{piece.key_prefix}/{row}", data, labels, where,
                     columns.skip_bad, columns.max_short_side)
    return finish_shard(out, name, rows, columns.subset_seed, result)


def _read_rows(piece: Piece, columns: Columns) -> Iterator[tuple[int, Any, Any]]:
    """(row in the file, image cell, label cell) for rows ``piece.start:piece.stop``, read a batch
    at a time from the row groups that hold them."""
    try:
        pf = pq.ParquetFile(piece.path)
    except (pa.ArrowException, OSError) as e:
        raise ConversionError(f"not a readable Parquet file: {e}", source=piece.path) from e
    groups, first, offset = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset < piece.stop and offset + n > piece.start and n:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if not groups:
        return
    row = first
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=groups,
                                 columns=[columns.image, columns.label]):
        lo, hi = max(piece.start - row, 0), min(piece.stop - row, batch.num_rows)
        if lo < hi:
            images = batch.column(0).slice(lo, hi - lo).to_pylist()
            labels = batch.column(1).slice(lo, hi - lo).to_pylist()
            yield from zip(range(row + lo, row + hi), images, labels)
        row += batch.num_rows
        if row >= piece.stop:
            break


def _image_bytes(cell: Any, column: str) -> bytes:
    if isinstance(cell, bytes):
        return cell
    if cell is None or (cell.get("bytes") is None and not cell.get("path")):
        raise ValueError(f"no image (the {column!r} cell is null)")
    if cell.get("bytes") is None:
        raise ValueError(f"the Parquet does not embed the image, only its path {cell['path']!r} "
                         "(re-export with the images embedded: push_to_hub, or "
                         "datasets.table.embed_table_storage before to_parquet)")
    return cell["bytes"]


def _checked_labels(cell: Any, columns: Columns) -> list[int]:
    values = cell if columns.multi_label else [cell]
    if cell is None or None in values:
        raise ValueError("no label (null)")
    if not values:
        raise ValueError("no label (empty list)")
    bad = [v for v in values if v < 0 or (columns.num_classes is not None and v >= columns.num_classes)]
    if bad:
        why = " (-1: the datasets library's 'no label')" if -1 in bad else ""
        raise ValueError(f"label {bad[0]} outside [0, {columns.num_classes or 'inf'}){why}")
    return sorted(set(values)) if columns.multi_label else values


# --------------------------------------------------------------------------------------------
# Finding files, splits and columns

def parquet_files(src: str | os.PathLike, out: str | None = None) -> tuple[Path, list[Path]]:
    """(the folder keys are relative to, the sorted Parquet files of ``src``); files under ``out``
    (an OUT inside SRC) are left out."""
    text = str(src)
    if any(c in text for c in "*?["):
        files = [Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)]
        magic = min(i for i, c in enumerate(text) if c in "*?[")
        base = Path(os.path.expanduser(text[:magic]) or ".")
        base = base if text[:magic].endswith(os.sep) else base.parent
    elif Path(text).is_dir():
        base, files = Path(text), list(Path(text).rglob("*.parquet"))
    else:
        base, files = Path(text).parent, [Path(text)] if Path(text).is_file() else []
    files = sorted(p.resolve() for p in files if p.is_file())
    if out is not None and not storage.is_remote(out):
        files = [p for p in files if not p.is_relative_to(out)]
    if not files:
        raise ConversionError("no Parquet files found", source=src,
                              hint="pass a folder holding *.parquet files, one .parquet file, or a glob")
    return base.resolve(), files


def split_of(path: Path) -> str | None:
    """The split a file holds by its name (see the module docstring); None when it does not say."""
    stem = path.name[:-len(".parquet")] if path.name.endswith(".parquet") else path.stem
    if m := SHARD_NAME.match(stem):
        return m.group("split")
    if stem.isdigit() and WORD_NAME.match(path.parent.name):
        return path.parent.name
    return stem if WORD_NAME.match(stem) else None


def files_by_split(files: list[Path], only: str | None, src) -> dict[str, list[Path]]:
    unknown = [str(p) for p in files if split_of(p) is None]
    if unknown:
        raise ConversionError(f"cannot tell the split of {len(unknown)} file(s) from their names: "
                              f"{', '.join(unknown[:3])}", source=src,
                              hint="name them <split>-00000-of-00001.parquet (the Hub's layout) or "
                                   "<split>.parquet")
    splits: dict[str, list[Path]] = {}
    for p in files:
        splits.setdefault(split_of(p), []).append(p)
    if only is not None:
        if only not in splits:
            raise ConversionError(f"no files of split {only!r}; found {sorted(splits)}", source=src,
                                  hint="choose one of those with --split")
        return {only: splits[only]}
    return splits


def hf_features(schema: pa.Schema) -> dict[str, Any]:
    """The ``datasets`` features recorded in the schema metadata ({} when there are none)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(raw)["info"]["features"] if raw else {}
    except (ValueError, KeyError, TypeError):
        return {}
    return features if isinstance(features, dict) else {}


def class_label(feature: Any) -> dict | None:
    """The ClassLabel of a feature: itself, or the element of a Sequence/List of ClassLabel."""
    if isinstance(feature, list) and len(feature) == 1:      # the [ClassLabel(...)] shorthand
        feature = {"_type": "List", "feature": feature[0]}
    if not isinstance(feature, dict):
        return None
    if feature.get("_type") == "ClassLabel":
        return feature
    if feature.get("_type") in ("Sequence", "List", "LargeList"):
        inner = feature.get("feature")
        return inner if isinstance(inner, dict) and inner.get("_type") == "ClassLabel" else None
    return None


def _is_image_struct(t: pa.DataType) -> bool:
    if not pa.types.is_struct(t):
        return False
    names = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
    return (set(names) == {"bytes", "path"}
            and (pa.types.is_binary(names["bytes"]) or pa.types.is_large_binary(names["bytes"])))


def _pick(candidates: list[str], what: str, schema: pa.Schema, path: Path, flag: str,
          preferred: tuple[str, ...] = ()) -> str:
    named = [c for c in candidates if c in preferred]
    if len(candidates) == 1 or len(named) == 1:
        return candidates[0] if len(candidates) == 1 else named[0]
    columns = ", ".join(f"{f.name} ({f.type})" for f in schema)
    if not candidates:
        raise ConversionError(f"no {what} column; columns: {columns}", source=path,
                              hint=f"name the column with {flag}")
    raise ConversionError(f"several {what} columns: {', '.join(candidates)}", source=path,
                          hint=f"choose one with {flag}")


def _column_types(schema: pa.Schema, path: Path, options: ConvertOptions) -> tuple[str, str]:
    """(image column, label column) of a file's schema, the options' or found."""
    features = hf_features(schema)
    image = options.image_column or _pick([f.name for f in schema if _is_image_struct(f.type)],
                                          "image (struct of bytes and path)", schema, path, "--image-column")
    label = options.label_column
    if label is None:
        labelled = [n for n in schema.names if class_label(features.get(n)) and n != image]
        label = (_pick(labelled, "ClassLabel", schema, path, "--label-column", LABEL_NAMES) if labelled
                 else _pick([n for n in schema.names if n in LABEL_NAMES], "label (a ClassLabel, or "
                            "named label/labels)", schema, path, "--label-column"))
    for name, flag in ((image, "--image-column"), (label, "--label-column")):
        if name not in schema.names:
            raise ConversionError(f"no column {name!r}; columns: {', '.join(schema.names)}",
                                  source=path, field=name, hint=f"check {flag}")
    t = schema.field(image).type
    if not (_is_image_struct(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        raise ConversionError(f"column {image!r} has type {t}, not an image (a struct of bytes and "
                              "path, or binary)", source=path, field=image, hint="check --image-column")
    return image, label


@dataclass(frozen=True)
class SourceColumns:
    """The columns every file shares: names, multi-label or not, the ClassLabel's names."""
    image: str
    label: str
    multi_label: bool
    class_names: list[str] | None


def source_columns(files: list[Path], options: ConvertOptions) -> SourceColumns:
    """The image and label columns of ``files`` (schemas only, no data read), the same in all."""
    found = None
    for path in files:
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as e:
            raise ConversionError(f"not a readable Parquet file: {e}", source=path,
                                  hint="re-download it, or remove it from SRC") from e
        image, label = _column_types(schema, path, options)
        t = schema.field(label).type
        multi = pa.types.is_list(t) or pa.types.is_large_list(t)
        if not pa.types.is_integer(t.value_type if multi else t):
            raise ConversionError(f"column {label!r} has type {t}; expected integer class ids or "
                                  "lists of them", source=path, field=label, hint="check --label-column")
        cl = class_label(hf_features(schema).get(label))
        names = [str(n) for n in cl["names"]] if cl and cl.get("names") else None
        columns = SourceColumns(image, label, multi, names)
        if found is not None and columns != found:
            raise ConversionError(f"columns differ from {files[0].name}'s: {columns} vs {found}",
                                  source=path, hint="convert the files separately")
        found = columns
    return found


def plan_jobs(out: str, split: str, files: list[Path], base: Path, columns: Columns) -> list[tuple]:
    """Jobs of about ROWS_PER_SHARD rows each: fixed ranges of the split's rows (files in sorted
    order, their rows in order), so the same input always makes the same shards."""
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in files]
    starts = [sum(sizes[:i]) for i in range(len(files))]
    jobs = []
    for a, b in chunks(sum(sizes), ROWS_PER_SHARD):
        pieces = [Piece(str(p), _key_prefix(p, base), max(a - s, 0), min(b - s, n))
                  for p, s, n in zip(files, starts, sizes) if s < b and s + n > a]
        jobs.append((pieces, columns))
    return shard_jobs(out, split, jobs)


def _key_prefix(path: Path, base: Path) -> str:
    rel = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
    return rel.as_posix()[:-len(".parquet")] if rel.name.endswith(".parquet") else rel.as_posix()


# --------------------------------------------------------------------------------------------
# Driver

def convert_hfparquet(src, out, options: ConvertOptions = ConvertOptions(), *,
                      executor: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Hugging Face Parquet files at ``src`` -> their splits (``options.split``: one) in ``out``."""
    out = storage.resolve(out)
    base, files = parquet_files(src, out)
    splits = files_by_split(files, options.split, src)
    found = source_columns([p for group in splits.values() for p in group], options)
    if found.class_names and options.num_classes not in (None, len(found.class_names)):
        raise ConversionError(f"--num-classes {options.num_classes}, but the ClassLabel has "
                              f"{len(found.class_names)} names", source=src, field=found.label)
    _check_new_splits(out, splits)
    columns = Columns(found.image, found.label, found.multi_label,
                      len(found.class_names) if found.class_names else options.num_classes,
                      options.skip_bad, options.max_short_side, options.seed)
    storage.makedirs(out)
    results = {}
    for split, group in splits.items():
        jobs = plan_jobs(out, split, group, base, columns)
        results[split] = run_split_jobs(
            out, split, _hfparquet_job, jobs, weights=[sum(p.stop - p.start for p in j[2]) for j in jobs],
            desc=f"hfparquet {split}", unit="img", executor=executor, progress=progress)
        if not any(r.entry for r in results[split]):
            raise ConversionError(f"split {split!r}: no row converted "
                                  f"({sum(len(r.skipped) for r in results[split])} skipped)", source=src)
    num_classes = columns.num_classes or 1 + max(r.max_label for rs in results.values() for r in rs)
    source = {"converter": "hfparquet", "src": str(Path(src).expanduser().resolve()),
              "image_column": found.image, "label_column": found.label,
              "max_short_side": options.max_short_side}
    manifest, reports = None, []
    for split, split_results in results.items():
        manifest = open_output(out, split, num_classes=num_classes, multi_label=found.multi_label,
                                class_names=found.class_names, source=source,
                                subset_seed=options.seed, manifest=manifest)
        manifest["multi_label"] = manifest.get("multi_label", False) or found.multi_label
        reports.append(record_split(out, manifest, split, split_results, write=False))
    publish_manifest(out, manifest)  # every split there: the dataset opens from now on
    return {"splits": reports, "image_column": found.image, "label_column": found.label}


def _check_new_splits(out: str, splits: dict[str, list[Path]]) -> None:
    """Fail before any work when OUT already has one of the splits."""
    path = storage.join(out, MANIFEST_NAME)
    if storage.is_file(path):
        existing = json.loads(storage.read_text(path))["splits"]
        clash = sorted(set(splits) & set(existing))
        if clash:
            raise ConversionError(f"split {clash[0]!r} already exists", dataset=out,
                                  field=f"splits.{clash[0]}", hint="choose another --split or a new OUT")

