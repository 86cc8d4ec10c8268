"""Make, convert, check, copy and deduplicate datasets: python -m pipeline.data COMMAND ...

Every OUT and dataset path may be a folder or a URI (s3://bucket/data/name; endpoint and
credentials from the standard AWS variables)."""
from __future__ import annotations

import argparse
import json
import sys

from pipeline import exits
from pipeline.data.convert import ConvertOptions, FORMATS, convert
from pipeline.data.dataset import Dataset, copy_dataset
from pipeline.data.dedup import dedup
from pipeline.data.digits import convert_digits
from pipeline.data.format import DataError
from pipeline.data.synth import SynthSpec, generate
from pipeline.data.verify import verify
from pipeline.storage import StorageError


def _synth(args: argparse.Namespace) -> int:
    spec = SynthSpec(images=args.images, classes=args.classes, image_size=args.image_size,
                     shards=args.shards, seed=args.seed, task=args.task,
                     test_images=args.test_images, val_images=args.val_images,
                     label_noise=args.label_noise, exponent=args.zipf_exponent,
                     class_offset=args.class_offset, max_objects=args.max_objects,
                     style=args.style, encoding=args.encoding, max_short_side=args.max_short_side)
    return _summary(generate(args.out, spec, executor=args.executor))


def _summary(path) -> int:
    ds = Dataset(path)
    counts = {split: ds.num_rows(split) for split in ds.splits}
    print(f"wrote {ds.root}: {counts} rows, {ds.num_classes} classes, "
          f"{sum(len(ds.shards(s)) for s in ds.splits)} shards")
    return 0


def _verify(args: argparse.Namespace) -> int:
    report = verify(args.path, sample=args.sample, full=args.full, checksums=not args.no_checksums)
    for problem in report.problems:
        print(f"ERROR {report.path}: {problem}")
    status = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    total = sum(report.rows.values())
    unchecked = [] if args.full else [f"{total - report.decoded:,} images not decoded (a sample of {args.sample} per "
                                      "shard was; --full decodes every image)"]
    unchecked += ["shard checksums not checked (--no-checksums)"] if args.no_checksums else []
    print(f"{status}: rows {report.rows}, {report.decoded:,} images decoded" +
          (f"; not checked: {'; '.join(unchecked)}" if unchecked else ""))
    return 0 if report.ok else 1


def _convert(args: argparse.Namespace) -> int:
    options = ConvertOptions(split=args.split, shards=args.shards, num_classes=args.num_classes,
                             skip_bad=args.skip_bad, seed=args.seed, max_short_side=args.max_short_side,
                             labels=args.labels, image_column=args.image_column,
                             label_column=args.label_column, val_fraction=args.val_fraction)
    result = convert(args.format, args.src, args.out, options, executor=args.executor)
    print(json.dumps(result, indent=1))
    return _summary(args.out)


def _digits(args: argparse.Namespace) -> int:
    result = convert_digits(args.out)
    print(json.dumps(result, indent=1))
    return _summary(args.out)


def _copy(args: argparse.Namespace) -> int:
    return _summary(copy_dataset(args.src, args.out))


def _dedup(args: argparse.Namespace) -> int:
    result = dedup(args.pretrain, args.against, max_distance=args.max_distance,
                   min_correlation=args.min_correlation,
                   executor=args.executor, dry_run=args.dry_run)
    print(json.dumps(result, indent=1))
    return 0


EXECUTOR_HELP = "where the work runs: auto (Ray when it is up, else processes), ray, processes, inline"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_synth(sub)
    add_convert(sub)

    p = sub.add_parser("digits", help="scikit-learn's handwritten digits with a fixed train/test split")
    p.add_argument("out", help="dataset folder or URI to write")
    p.set_defaults(fn=_digits)

    p = sub.add_parser("verify", help="check schema, row counts, checksums, labels, decodability")
    p.add_argument("path", help="dataset folder or URI")
    p.add_argument("--sample", type=int, default=16, help="images decoded per shard (default 16)")
    p.add_argument("--full", action="store_true", help="decode every image")
    p.add_argument("--no-checksums", action="store_true", help="skip the shards' SHA-256 checks")
    p.set_defaults(fn=_verify)

    p = sub.add_parser("copy", help="copy a dataset to another folder or URI (shards, then the manifest)")
    p.add_argument("src", help="dataset folder or URI to copy")
    p.add_argument("out", help="e.g. s3://BUCKET/vit-scaling/data/NAME (endpoint and keys: the AWS_* variables)")
    p.set_defaults(fn=_copy)

    p = sub.add_parser("dedup", help="exclude near-duplicates of downstream test images")
    p.add_argument("pretrain", help="the pretraining dataset (its manifest records what is excluded)")
    p.add_argument("--against", nargs="+", required=True,
                   help="downstream datasets (their test split; DATASET:SPLIT for another split)")
    p.add_argument("--max-distance", type=int, default=None,
                   help="perceptual-hash Hamming distance for candidates (default 14 of 64)")
    p.add_argument("--min-correlation", type=float, default=0.95,
                   help="thumbnail correlation that confirms a candidate as a copy")
    p.add_argument("--executor", choices=("auto", "ray", "processes", "inline"), default="auto", help=EXECUTOR_HELP)
    p.add_argument("--dry-run", action="store_true", help="report, don't write the manifest")
    p.set_defaults(fn=_dedup)
    exits.add_debug_flag(parser)
    return parser


def add_synth(sub) -> None:
    p = sub.add_parser("synth", help="generate a synthetic JFT-like dataset (or downstream task)")
    p.add_argument("out", help="dataset folder or URI to write")
    p.add_argument("--images", type=int, required=True, help="images (train split for tasks)")
    p.add_argument("--classes", type=int, required=True, help="classes (pretrain: multi-label over them)")
    p.add_argument("--image-size", type=int, default=32, help="pixels per side (default 32)")
    p.add_argument("--shards", type=int, default=None, help="shards per split (default: 2000 images each)")
    p.add_argument("--seed", type=int, default=0, help="images, labels and subset priorities (default 0)")
    p.add_argument("--task", choices=("pretrain", "novel", "count"), default="pretrain",
                   help="pretrain: multi-label, JFT-like; novel: one object of classes unseen in pretraining; count: "
                        "the number of objects is the label")
    p.add_argument("--test-images", type=int, default=None, help="test split size for tasks")
    p.add_argument("--val-images", type=int, default=None,
                   help="held-out validation split (pretraining early stopping)")
    p.add_argument("--label-noise", type=float, default=0.0, help="share of labels replaced at random (default 0)")
    p.add_argument("--zipf-exponent", type=float, default=1.0, help="long tail of class frequencies")
    p.add_argument("--class-offset", type=int, default=100,
                   help="novel: first class of the task in the synthetic class space")
    p.add_argument("--max-objects", type=int, default=3, help="objects per image, at most (default 3)")
    p.add_argument("--style", choices=("shapes", "glyphs"), default="shapes",
                   help="shapes: coloured filled shapes (576 classes); glyphs: grey stroke figures "
                        "(10000 classes), whose features transfer to handwriting-like images")
    p.add_argument("--encoding", choices=("png", "jpeg"), default=None, help="image encoding (default: png up to 64 px, else jpeg)")
    p.add_argument("--max-short-side", type=_positive_int, default=None, metavar="N",
                   help="store images rendered larger than N px (--image-size) resized to N (Lanczos); "
                        "default: at --image-size")
    p.add_argument("--executor", choices=("auto", "ray", "processes", "inline"), default="auto", help=EXECUTOR_HELP)
    p.set_defaults(fn=_synth)


def add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert an image folder, CIFAR pickles, WebDataset tars, "
                                       "Hugging Face Parquet or ImageNet(-21k) archives")
    p.add_argument("format", choices=FORMATS, help="the source's layout")
    p.add_argument("src", help="source folder (or tar files' folder)")
    p.add_argument("out", help="dataset folder or URI to write")
    p.add_argument("--split", default=None,
                   help="split name to write (imagefolder/webdataset: default train; cifar: default all)")
    p.add_argument("--shards", type=int, default=None,
                   help="imagefolder: number of shards (default: 5000 images each)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset priorities")
    p.add_argument("--num-classes", type=int, default=None,
                   help="webdataset: class count (default: largest label + 1)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip undecodable/unlabelled samples (counted and reported) instead of failing")
    p.add_argument("--max-short-side", type=_positive_int, default=None, metavar="N",
                   help="store images whose shorter side is above N px resized to N (Lanczos; JPEG "
                        "sources re-encoded at quality 90), e.g. 256 or 320 for 224-px training: "
                        "faster decoding (bench/RESULTS.md, issue 17); default: as they are")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="imagenet: the label file of a flat val folder; imagenet21k: a words file (wnid, name)")
    p.add_argument("--val-fraction", type=_holdout_fraction, default=None, metavar="F",
                   help="imagenet21k (its release has no validation split): hold out a uniform draw of "
                        "about F of the images as split 'val', the one pretraining validates on; e.g. "
                        "0.0036 holds out about 51,200 of fall11's 14.2M, as big_vision does")
    p.add_argument("--image-column", default=None,
                   help="hfparquet: the image column (default: the one column of image structs)")
    p.add_argument("--label-column", default=None,
                   help="hfparquet: the label column (default: the ClassLabel column, else 'label')")
    p.add_argument("--executor", choices=("auto", "ray", "processes", "inline"), default="auto",
                   help=EXECUTOR_HELP + ". With ray, tasks on any node read SRC: it must be at the same "
                        "path on every node (a shared file system); else use processes on the machine "
                        "that holds it")
    p.set_defaults(fn=_convert)


def _holdout_fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 0.5:
        raise argparse.ArgumentTypeError(f"must be a fraction of the images in (0, 0.5), got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of pixels, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (DataError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    exits.end(exits.run(main))
