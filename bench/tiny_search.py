"""The search for a tiny preset where every family learns (issue 15): the tiny preset's micro
models pretrained in-process on synthetic glyph data, with the recipe options varied one grid at
a time; each run's validation precision@1 against the majority-class baseline.

    python bench/tiny_search.py --grid vit-lr-loss --out /tmp/search.jsonl            # one process
    python bench/tiny_search.py --grid vit-lr-loss --shard 0/2 & ... --shard 1/2      # two cores

Each line of ``--out`` is one run: its settings, validation precision@1 at each validation, the
baseline (always the most common class) and the seconds it took. ``--table FILE...`` prints the
lines of earlier runs as a table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline import tracking  # noqa: E402
from pipeline.data.synth import SynthSpec, generate  # noqa: E402
from pipeline.pretrain.launch import Launch, pretrain  # noqa: E402
from pipeline.spec import Recipe, RunSpec  # noqa: E402

MODELS = {  # the tiny preset's models
    "ViT-micro-S": {"name": "ViT-micro-S", "family": "vit", "depth": 2, "width": 64, "heads": 4, "mlp_dim": 128,
                    "patch_size": 8},
    "ViT-micro-M": {"name": "ViT-micro-M", "family": "vit", "depth": 4, "width": 96, "heads": 4, "mlp_dim": 192,
                    "patch_size": 8},
    "BiT-micro-S": {"name": "BiT-micro-S", "family": "resnet", "blocks": [1, 1, 1, 1], "width_factor": 0.25,
                    "groups": 8},
    "BiT-micro-M": {"name": "BiT-micro-M", "family": "resnet", "blocks": [1, 1, 1, 1], "width_factor": 0.5,
                    "groups": 16},
    "Hybrid-micro-S": {"name": "Hybrid-micro-S", "family": "hybrid", "blocks": [1, 1], "width_factor": 0.25,
                       "groups": 8, "depth": 2, "width": 64, "heads": 4, "mlp_dim": 128},
    "Hybrid-micro-M": {"name": "Hybrid-micro-M", "family": "hybrid", "blocks": [1, 1], "width_factor": 0.5,
                       "groups": 16, "depth": 3, "width": 96, "heads": 4, "mlp_dim": 192},
}
MODELS["ViT-micro-S/4"] = {**MODELS["ViT-micro-S"], "name": "ViT-micro-S/4", "patch_size": 4}
MODELS["Hybrid-micro-S/1"] = {**MODELS["Hybrid-micro-S"], "name": "Hybrid-micro-S/1", "patch_size": 1}
TINY_RECIPE = {"batch_size": 64, "base_lr": 0.001, "warmup_steps": 20, "weight_decay": 0.0001, "image_size": 32,
               "min_crop_area": 1.0, "head_bias_init": -6.9, "checkpoint_every": 1000, "log_every": 100}
TINY_DATA = {"style": "glyphs", "images": 10000, "val_images": 400, "classes": 1000, "max_objects": 1,
             "image_size": 32, "seed": 0}

# Each grid: (data changes, [run settings]); a run setting is {"model": name, "steps": n, recipe keys...}.
GRIDS = {
    # the tiny preset's data (1000 classes, Zipf 1), ViT-micro-S: learning rate
    "vit-lr": ({}, [{"model": "ViT-micro-S", "steps": 400, "base_lr": lr} for lr in [1e-4, 3e-4, 1e-3]]),
    # 100 classes, flatter frequencies (Zipf 0.5): more images per class
    "vit-100cls": ({"classes": 100, "exponent": 0.5},
                   [{"model": "ViT-micro-S", "steps": 400, "base_lr": lr, "head_bias_init": -4.6} for lr in [3e-4, 1e-3]]),
    # fewer classes, equally frequent: more images per class (baseline 1/classes)
    **{f"vit-{n}cls-flat": ({"classes": n, "exponent": 0.0},
                            [{"model": "ViT-micro-S", "steps": 400, "base_lr": 1e-3,
                              "head_bias_init": round(-math.log(n), 1)}])
       for n in (10, 32, 100)},
    # the tiny preset's nine runs (three per family) on 32 or 64 flat classes, one learning rate for all
    **{f"tiny-{n}cls": ({"classes": n, "exponent": 0.0},
                        [{"model": f"{family}-micro-{size}", "steps": steps, "base_lr": 1e-3,
                          "head_bias_init": round(-math.log(n), 1)}
                         for family in ("ViT", "BiT", "Hybrid") for size, steps in (("S", 200), ("S", 400), ("M", 400))])
       for n in (32, 64)},
    # the larger transformers on 32 flat classes at lower learning rates (as Table 3 gives larger models)
    "m-lr-32cls": ({"classes": 32, "exponent": 0.0},
                   [{"model": model, "steps": 400, "base_lr": lr, "head_bias_init": -3.5}
                    for model in ("ViT-micro-M", "Hybrid-micro-M") for lr in (3e-4, 5e-4)]),
    "hybrid-m-32cls": ({"classes": 32, "exponent": 0.0},
                       [{"model": "Hybrid-micro-M", "steps": steps, "base_lr": lr, "head_bias_init": -3.5}
                        for steps, lr in ((400, 2e-3), (600, 1e-3))]),
    "hybrid-s-32cls": ({"classes": 32, "exponent": 0.0},
                       [{"model": "Hybrid-micro-S", "steps": steps, "base_lr": 2e-3, "head_bias_init": -3.5}
                        for steps in (200, 400)]),
    # the tiny preset's data, patches of 4 px (64 tokens instead of 16)
    "vit-patch4": ({}, [{"model": "ViT-micro-S/4", "steps": 400, "base_lr": lr} for lr in [3e-4, 1e-3]]),
}


def dataset(root: Path, changes: dict) -> str:
    spec = SynthSpec(**{**TINY_DATA, **changes})
    target = root / ("glyphs-" + "-".join(f"{k}{v}" for k, v in sorted(changes.items())) if changes else "glyphs")
    if not (target / "manifest.json").exists():
        generate(target, spec, progress=False)
    return str(target)


def one_run(setting: dict, data: str, storage: str) -> dict:
    """Pretrain one setting in this process; its validation curve and baseline from MLflow."""
    setting = dict(setting)
    model, steps = MODELS[setting.pop("model")], setting.pop("steps")
    recipe = Recipe(**{**TINY_RECIPE, "val_every": max(steps // 4, 1), **setting})
    from pipeline.data import open_dataset
    spec = RunSpec(model=model, dataset=open_dataset(data).name, steps=steps, recipe=recipe)
    start = time.perf_counter()
    out = pretrain(spec, data, storage=storage, launch=Launch(in_process=True))
    seconds = time.perf_counter() - start
    c = tracking.client(out["tracking_uri"])
    curve = {m.step: round(m.value, 4) for m in c.get_metric_history(out["mlflow_run_id"], "pretrain/val_prec1")}
    base = c.get_run(out["mlflow_run_id"]).data.metrics.get("pretrain/val_prec1_baseline")
    return {"model": model["name"], "steps": steps, **setting, "val_prec1": curve,
            "baseline": None if base is None else round(base, 4), "seconds": round(seconds, 1)}


def table(lines: list[dict]) -> str:
    keys = sorted({k for line in lines for k in line} - {"val_prec1", "baseline", "seconds", "data"})
    rows = [" | ".join(["data", *keys, "val_prec1 by step", "baseline", "s"]), "|".join(["---"] * (len(keys) + 4))]
    for line in lines:
        curve = " ".join(f"{v:.3f}" for _, v in sorted(line["val_prec1"].items(), key=lambda kv: int(kv[0])))
        rows.append(" | ".join([line.get("data", ""), *(str(line.get(k, "")) for k in keys), curve,
                                f"{line['baseline']}", f"{line['seconds']}"]))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", choices=sorted(GRIDS))
    p.add_argument("--shard", default="0/1", help="i/n: this process runs every n-th setting from the i-th")
    p.add_argument("--out", type=Path, help="JSON lines, appended")
    p.add_argument("--data-root", type=Path, default=Path(tempfile.gettempdir()) / "tiny-search-data")
    p.add_argument("--table", type=Path, nargs="*", help="print earlier --out files as a table")
    args = p.parse_args(argv)
    if args.table:
        print(table([json.loads(line) for f in args.table for line in f.read_text().splitlines() if line.strip()]))
        return 0
    torch.set_num_threads(1)  # one core per process: two shards side by side on 2 cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    changes, settings = GRIDS[args.grid]
    data = dataset(args.data_root, changes)
    index, count = (int(x) for x in args.shard.split("/"))
    for setting in settings[index::count]:
        with tempfile.TemporaryDirectory() as storage:
            result = {"data": Path(data).name, **one_run(setting, data, storage)}
        print(json.dumps(result), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
