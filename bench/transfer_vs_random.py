"""Does pretraining on synthetic data help few-shot transfer to digits? (issue 5)

Pretrains a micro model on a synthetic dataset with a plain single-process loop that uses the
pipeline's pieces (the loader, ``sigmoid_xent``, ``param_groups``, ``lr_factor``, AdamW, clipping at
1, the model zoo), then probes 5/10/25-shot digits on pre-logits features (``run_fewshot``, 3
seeds) next to random initializations of the same shape. One JSON line per run on stdout.
The acceptance test (tests/test_transfer_pretrained.py) runs the pipeline's own loop in process
(pipeline.pretrain.launch.pretrain(..., launch=Launch(in_process=True))); bench/transfer_pretrained_spread.py measures its spread.

    OMP_NUM_THREADS=1 python bench/transfer_vs_random.py --model BiT-micro-S --style glyphs \\
        --classes 1000 --images 10000 --max-objects 1 --steps 1000 --lr 1e-3 --warmup 20
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_model
from pipeline.data import num_classes
from pipeline.data.loader import LoaderSpec, make_loader
from pipeline.data.synth import SynthSpec, generate
from pipeline.pretrain.recipe import lr_factor, param_groups, sigmoid_xent
from pipeline.transfer import FewshotSettings, resolve_dataset, run_fewshot

# The micro models of studies/scaling.yaml's tiny preset.
TINY = {m["name"]: m for m in (
    {"name": "ViT-micro-S", "family": "vit", "depth": 2, "width": 64, "heads": 4, "mlp_dim": 128, "patch_size": 8},
    {"name": "ViT-micro-M", "family": "vit", "depth": 4, "width": 96, "heads": 4, "mlp_dim": 192, "patch_size": 8},
    {"name": "BiT-micro-S", "family": "resnet", "blocks": [1, 1, 1, 1], "width_factor": 0.25, "groups": 8},
    {"name": "BiT-micro-M", "family": "resnet", "blocks": [1, 1, 1, 1], "width_factor": 0.5, "groups": 16},
    {"name": "Hybrid-micro-S", "family": "hybrid", "blocks": [1, 1], "width_factor": 0.25, "groups": 8,
     "depth": 2, "width": 64, "heads": 4, "mlp_dim": 128},
    {"name": "Hybrid-micro-M", "family": "hybrid", "blocks": [1, 1], "width_factor": 0.5, "groups": 16,
     "depth": 3, "width": 96, "heads": 4, "mlp_dim": 192},
)}
SHOTS = (5, 10, 25)


def fewshot(model: torch.nn.Module, digits: str) -> dict[int, float]:
    out = run_fewshot("model", digits, FewshotSettings(shots=tuple(SHOTS), seeds=3), model=model.eval(), image_size=32)["results"]
    return {k: round(r["mean"], 4) for (k, _), r in out.items()}


def pretrain_plain(shape: dict, data: str, *, steps: int, lr: float, warmup: int, batch: int, weight_decay: float,
                   min_crop_area: float, seed: int) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(seed)
    model = build_model(shape, num_classes=num_classes(data), image_size=32)
    opt = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, steps, "linear"))
    step, epoch, start = 0, 0, time.perf_counter()
    model.train()
    while step < steps:
        for b in make_loader(LoaderSpec(data, batch_size=batch, image_size=32, train=True, seed=seed,
                                        epoch=epoch, label_format="multi_hot", min_crop_area=min_crop_area),
                             num_workers=0):
            sigmoid_xent(model(b.images), b.labels).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step == steps:
                break
        epoch += 1
    return model, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="BiT-micro-S", choices=sorted(TINY))
    ap.add_argument("--style", default="glyphs", choices=("shapes", "glyphs"))
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--max-objects", type=int, default=1)
    ap.add_argument("--exponent", type=float, default=1.0, help="Zipf exponent of class frequencies")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--min-crop-area", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0, help="pretraining seed (initialization and data order)")
    ap.add_argument("--random-inits", type=int, default=3)
    ap.add_argument("--work", default=None, help="folder for the data (default: a temporary one)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(a.work or tempfile.mkdtemp(prefix="transfer-vs-random-"))
    digits = resolve_dataset("digits", str(work))[1]
    data = work / f"{a.style}-K{a.classes}-N{a.images}-o{a.max_objects}-e{a.exponent}"
    if not (data / "manifest.json").is_file():
        generate(data, SynthSpec(style=a.style, images=a.images, classes=a.classes, max_objects=a.max_objects,
                                 exponent=a.exponent, image_size=32, seed=0), executor="processes",
                 progress=False)
    shape = TINY[a.model]
    model, seconds = pretrain_plain(shape, str(data), steps=a.steps, lr=a.lr, warmup=a.warmup, batch=a.batch,
                                    weight_decay=a.weight_decay, min_crop_area=a.min_crop_area, seed=a.seed)
    random = []
    for s in range(a.random_inits):
        torch.manual_seed(s)
        random.append(fewshot(build_model(shape, num_classes=a.classes, image_size=32), digits))
    print(json.dumps({**vars(a), "train_seconds": round(seconds, 1), "pretrained": fewshot(model, digits),
                      "random": random}))


if __name__ == "__main__":
    main()
