"""``python -m pipeline.pretrain``: pretrain one model on one dataset subset with Ray Train, from
flags (the recipe's fields); metrics go to MLflow, and re-running the same command resumes.

python -m pipeline.pretrain --model NAME --data PATH [--subset 30M] [--epochs E | --steps S] ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from pipeline import console, exits, hardware, tracking
from pipeline.data import open_dataset
from pipeline.pretrain.launch import Launch, pretrain
from pipeline.spec import Recipe, RunSpec

RECIPE_FLAGS = {"--batch-size": ("batch_size", int), "--micro-batch-size": ("micro_batch_size", int),
                "--base-lr": ("base_lr", float), "--warmup-steps": ("warmup_steps", int),
                "--weight-decay": ("weight_decay", float), "--image-size": ("image_size", int),
                "--min-crop-area": ("min_crop_area", float), "--val-every": ("val_every", int),
                "--checkpoint-every": ("checkpoint_every", int), "--log-every": ("log_every", int)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.pretrain",
                                     description="Pretrain one model on one dataset subset with Ray Train; "
                                                 "metrics go to MLflow. Re-running the same command resumes.")
    parser.add_argument("--model", required=True, help="paper name (ViT-B/16, R50x1, R50+ViT-B/16) or a JSON shape")
    parser.add_argument("--data", required=True, help="dataset folder (python -m pipeline.data synth ... makes one)")
    parser.add_argument("--subset", default="full", help="'full', a count (30M, 9000) or a fraction (0.1)")
    length = parser.add_mutually_exclusive_group(required=True)
    length.add_argument("--epochs", type=float, help="passes over the subset (the paper's unit)")
    length.add_argument("--steps", type=int, help="optimizer steps (instead of --epochs)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers; the batch is split over them")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    for flag, (field, kind) in RECIPE_FLAGS.items():
        info = Recipe.model_fields[field]
        default = f" (default {info.default})" if info.default is not None else ""
        aliases = ("--lr",) if field == "base_lr" else ()
        parser.add_argument(flag, *aliases, dest=field, type=kind,
                            help=f"{info.description or field.replace('_', ' ')}{default}")
    parser.add_argument("--compile", nargs="?", const="on", default="auto", choices=hardware.COMPILE_MODES,
                        help="torch.compile the model: auto (default: on a GPU when the run is long enough to repay "
                        "the compile time, pipeline/hardware.py), on (--compile alone) or off")
    parser.add_argument("--on-bad-row", choices=("raise", "skip"), default=Launch.on_bad_row,
                        help="a row that cannot be decoded or labelled: stop the run at once (raise), or drop it and "
                        "count it (skip: data/skipped_rows in MLflow)")
    parser.add_argument("--seed", type=int, default=0, help="weights' initialisation (the data order has the dataset's)")
    parser.add_argument("--study", default="adhoc", help="MLflow experiment (default adhoc)")
    parser.add_argument("--storage", default=os.environ.get("VIT_SCALING_STORAGE", "runs"),
                        help="checkpoints, Ray Train folders and the default MLflow DB (default $VIT_SCALING_STORAGE "
                        "or ./runs)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="MLflow (default $MLFLOW_TRACKING_URI or SQLite under --storage)")
    parser.add_argument("--quiet", action="store_true", help="no progress line per logging window")
    parser.add_argument("--no-system-metrics", dest="system_metrics", action="store_false",
                        help="do not log the workers' CPU, memory and GPU use to MLflow (every 10 s)")
    exits.add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console.quiet_libraries()
    try:
        model = json.loads(args.model) if args.model.lstrip().startswith("{") else args.model
        given = {field: getattr(args, field) for field, _ in RECIPE_FLAGS.values() if getattr(args, field) is not None}
        recipe = Recipe(**given)
        spec = RunSpec(study=args.study, model=model, dataset=open_dataset(args.data).name, subset=args.subset,
                       epochs=args.epochs, steps=args.steps, recipe=recipe, seed=args.seed)
        uri = args.tracking_uri or tracking.default_tracking_uri(args.storage)
    except Exception as err:  # validation errors say which field and why
        parser.error(str(err))
    try:
        spec.base_lr()
    except ValueError:  # the message names the study key; here it is a flag
        parser.error(f"Table 3 gives no learning rate for {spec.model_name}: give one with --base-lr")
    try:
        with console.Board(quiet=args.quiet):
            summary = pretrain(spec, args.data, storage=args.storage, tracking_uri=uri,
                               launch=Launch(workers=args.workers, use_gpu=args.gpu, on_bad_row=args.on_bad_row,
                                             compile=args.compile, system_metrics=args.system_metrics))
    except KeyboardInterrupt:
        print("[pretrain] interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        raise exits.Interrupted from None
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    exits.end(exits.run(main))
