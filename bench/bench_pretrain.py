"""Overhead of Ray Train: the same pretraining steps through TorchTrainer (1 worker) and through a
plain in-process loop over the same model, data loader and recipe, in one run.

    python bench/bench_pretrain.py                      # micro ViT, 32 px synthetic data, CPU
    python bench/bench_pretrain.py --steps 400 --batch-size 128

Reports wall time of each (TorchTrainer's includes starting its worker group, checkpointing and
MLflow logging, not ``ray.init``) and their ratio, plus the steady-state step rate of each.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")  # as pipeline.raycluster

import torch  # noqa: E402

from models import build_model  # noqa: E402
from pipeline import tracking  # noqa: E402
from pipeline.data.loader import LoaderSpec, make_loader  # noqa: E402
from pipeline.data.synth import SynthSpec, generate  # noqa: E402
from pipeline.pretrain.launch import Launch, pretrain  # noqa: E402
from pipeline.pretrain.recipe import lr_factor, param_groups, sigmoid_xent  # noqa: E402
from pipeline.spec import Recipe, RunSpec  # noqa: E402

MICRO_VIT = {"name": "vit-micro", "family": "vit", "depth": 2, "width": 64, "heads": 4, "mlp_dim": 128,
             "patch_size": 8}


def plain_loop(spec: RunSpec, data: str, num_classes: int) -> float:
    """The worker loop without Ray: returns seconds for all steps."""
    r = spec.recipe
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, num_classes=num_classes, image_size=r.image_size)
    opt = torch.optim.AdamW(param_groups(model, r.weight_decay), lr=r.base_lr, betas=(r.beta1, r.beta2))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, r.warmup_steps, spec.steps))
    start, step, epoch = time.perf_counter(), 0, 0
    while step < spec.steps:
        for batch in make_loader(LoaderSpec(data, batch_size=r.batch_size, image_size=r.image_size,
                                            epoch=epoch, seed=spec.seed, min_crop_area=r.min_crop_area,
                                            label_format="multi_hot")):
            loss = sigmoid_xent(model(batch.images), batch.labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
            opt.step()
            schedule.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step == spec.steps:
                break
        epoch += 1
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=4000)
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        data = str(generate(Path(tmp) / "synth", SynthSpec(images=args.images, classes=10, image_size=32,
                                                           seed=0), executor="inline", progress=False))
        recipe = Recipe(batch_size=args.batch_size, base_lr=1e-3, warmup_steps=20, image_size=32, min_crop_area=1.0,
                        checkpoint_every=args.steps, log_every=max(1, args.steps // 4), val_every=10**9)
        spec = RunSpec(study="bench", model=MICRO_VIT, dataset="synth", steps=args.steps, recipe=recipe)
        plain = plain_loop(spec, data, 10)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        start = time.perf_counter()
        # 2 CPUs for the worker, so that Ray gives it as many torch threads as the plain loop has
        out = pretrain(spec, data, storage=str(Path(tmp) / "runs"), launch=Launch(cpus_per_worker=2))
        trainer = time.perf_counter() - start
        rates = tracking.metric_history(out["tracking_uri"], out["mlflow_run_id"], "throughput/images_per_s")
        ray.shutdown()
    steady = rates[-1][1] / args.batch_size  # steps/s over the last logging window, inside the worker
    print(f"# {args.steps} steps, batch {args.batch_size}, micro ViT (2x64), 32 px, CPU, "
          f"torch threads {torch.get_num_threads()}")
    print("| path | wall s | steps/s |")
    print("|---|---|---|")
    print(f"| plain in-process loop | {plain:.1f} | {args.steps / plain:.1f} |")
    print(f"| TorchTrainer, 1 worker (fit() end to end) | {trainer:.1f} | {args.steps / trainer:.1f} |")
    print(f"| TorchTrainer, steady state inside the worker | - | {steady:.1f} |")
    print(f"\nwall-time ratio TorchTrainer / plain: {trainer / plain:.2f}; fixed overhead about "
          f"{trainer - args.steps / steady:.1f} s; steady-state step-rate ratio {steady / (args.steps / plain):.2f}")


if __name__ == "__main__":
    main()
