"""CLI: python -m pipeline.transfer CHECKPOINT --dataset NAME|PATH [--fewshot 1,5,10,25] [--finetune]
     [--lrs 0.001,0.003,...] [--resolution R] [--steps N] [--batch-size B]"""
from __future__ import annotations

import argparse
import contextlib
import os

from pipeline import console, exits, tracking
from pipeline import storage as store
from pipeline.transfer.base import Target
from pipeline.transfer.checkpoints import load_checkpoint, resolve_dataset
from pipeline.transfer.fewshot import FewShot, FewshotSettings
from pipeline.transfer.finetune import FineTune, FinetuneSettings
from pipeline.transfer.registry import evaluate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.transfer",
                                     description="Few-shot linear probes and fine-tuning of a pretrained checkpoint.")
    parser.add_argument("checkpoint", help="pretraining checkpoint folder (MLflow tag checkpoint_uri) or timm file")
    parser.add_argument("--dataset", required=True, action="append", help="dataset folder or built-in name (digits); repeatable")
    probe = FewshotSettings()  # the defaults, said once there
    parser.add_argument("--fewshot", default=",".join(map(str, probe.shots)), help="shots, comma-separated ('' to skip)")
    parser.add_argument("--seeds", type=int, default=probe.seeds, help="random draws of the shots per class")
    parser.add_argument("--l2", default=",".join(map(str, probe.l2_regs)), help="L2 strengths, comma-separated")
    parser.add_argument("--finetune", action="store_true", help="fine-tune (Table 4's recipe), the LR chosen on a dev "
                        "slice with Ray Tune, then retrained and scored on test")
    parser.add_argument("--lrs", default=None, help="fine-tuning LR grid, comma-separated (default: Table 4's for "
                        "the dataset)")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: Table 4's)")
    parser.add_argument("--batch-size", type=int, default=None, help="fine-tuning batch (default 512)")
    parser.add_argument("--resolution", type=int, default=None, help="fine-tuning resolution (default: pretraining's)")
    parser.add_argument("--dev-fraction", type=float, default=None,
                        help="share of the training split held out to choose the LR (default: by dataset size)")
    parser.add_argument("--min-crop-area", type=float, default=None,
                        help="inception crop's smallest area (default 0.05; 1.0 = flip only, for tiny images)")
    parser.add_argument("--timm", default=None, metavar="NAME", help="the checkpoint is a timm state dict of this model")
    parser.add_argument("--storage", default=os.environ.get("VIT_SCALING_STORAGE", "runs"),
                        help="Ray Tune folders, feature caches, downstream data made on first use and the default "
                        "MLflow DB (default $VIT_SCALING_STORAGE or ./runs)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="MLflow (default $MLFLOW_TRACKING_URI or SQLite under --storage)")
    parser.add_argument("--mlflow-run-id", default=None, help="pretraining run to attach results to")
    parser.add_argument("--gpu", action="store_true", help="one GPU per probe and fine-tuning trial")
    exits.add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console.quiet_libraries()
    try:
        shots = [int(s) for s in args.fewshot.split(",") if s.strip()]
        l2s = [float(s) for s in args.l2.split(",") if s.strip()]
        lrs = tuple(float(s) for s in args.lrs.split(",")) if args.lrs else None
        datasets = [resolve_dataset(d, store.join(args.storage, "data")) for d in args.dataset]
        load_checkpoint(args.checkpoint, args.timm)  # fail early on a bad checkpoint
        uri = args.tracking_uri or (tracking.default_tracking_uri(args.storage) if args.mlflow_run_id else None)
        overrides = dict(lrs=lrs, steps=args.steps, batch_size=args.batch_size, resolution=args.resolution,
                         dev_fraction=args.dev_fraction, min_crop_area=args.min_crop_area)
        names = [name for name, _ in datasets]
        evaluators = [FewShot(datasets=tuple(names), settings=FewshotSettings(tuple(shots), args.seeds, tuple(l2s)))
                      if shots else None,
                      FineTune(settings={n: FinetuneSettings.for_dataset(n, **overrides) for n in names})
                      if args.finetune else None]
    except (ValueError, OSError) as err:  # OSError: FileNotFoundError, an unusable storage location
        parser.error(str(err))
    target = Target(args.checkpoint, args.storage, tracking_uri=uri, run_id=args.mlflow_run_id,
                    timm_name=args.timm, use_gpu=args.gpu)
    with console.Board() if args.finetune else contextlib.nullcontext():  # fine-tuning trials run on Ray
        metrics = evaluate(target, [e for e in evaluators if e is not None], dict(datasets))
    rows = list(metrics.items())
    width = max(len(k) for k, _ in rows) if rows else 10
    print(f"{'metric'.ljust(width)}  value")
    for key, value in rows:
        print(f"{key.ljust(width)}  {value:.4g}")
    return 0
