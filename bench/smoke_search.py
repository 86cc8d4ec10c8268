"""The search behind the smoke presets' data and recipe (issue 15: every run learns): the smoke
preset's two runs pretrained in-process on its data, or on 5 flat glyph classes, at several
learning rates and model shapes; each run's validation precision@1 against the majority class.

    python bench/smoke_search.py            # one torch thread, ~1 minute on 2 cores
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline import tracking  # noqa: E402
from pipeline.preflight import prepare_data  # noqa: E402
from pipeline.pretrain.launch import Launch, pretrain  # noqa: E402
from pipeline.spec import load_study  # noqa: E402

OLD_DATA = {"style": "shapes", "exponent": 1.0, "max_objects": 3, "val_images": 64}   # before issue 15
# (data, model name, model shape changes, recipe changes)
GRID = [("old", name, {}, {"base_lr": lr, "head_bias_init": bias})
        for name in ("ViT-nano", "BiT-nano") for lr in (1e-3, 1e-2) for bias in (0.0, -1.6)] + \
       [("preset", "ViT-nano", {}, {"base_lr": lr}) for lr in (1e-3, 3e-3, 1e-2)] + \
       [("preset", "BiT-nano", shape, {"base_lr": lr})
        for shape in ({"blocks": [1], "width_factor": 0.125}, {"blocks": [1], "width_factor": 0.25}, {})
        for lr in (3e-3, 1e-2)]


def run(spec, data: str, root: str) -> tuple[list[float], float]:
    out = pretrain(spec, data, storage=root, launch=Launch(in_process=True))
    c = tracking.client(out["tracking_uri"])
    curve = sorted(c.get_metric_history(out["mlflow_run_id"], "pretrain/val_prec1"), key=lambda m: m.step)
    return [m.value for m in curve], c.get_run(out["mlflow_run_id"]).data.metrics["pretrain/val_prec1_baseline"]


def main() -> int:
    torch.set_num_threads(1)
    preset = load_study("scaling").preset("smoke")
    specs = {s.model_name: s for s in load_study("scaling").expand("smoke")}
    roots = {which: tempfile.mkdtemp(prefix=f"smoke-search-{which}-") for which in ("preset", "old")}  # same run ids
    old = preset.model_copy(update={"dataset": preset.dataset.model_copy(update={
        "name": "smoke-old", "synth": preset.dataset.synth.model_copy(update=OLD_DATA)})})
    data = {which: prepare_data(p, None, roots[which], progress=False) for which, p in (("preset", preset), ("old", old))}
    print("| data | model | shape | recipe | val_prec1 every 10 steps | baseline | s |\n|---|---|---|---|---|---|---|")
    for which, name, shape, recipe in GRID:
        base = specs[name]
        spec = base.model_copy(update={"model": {**base.model, **shape},
                                       "recipe": base.recipe.model_copy(update={**recipe, "val_every": 10})})
        start = time.perf_counter()
        curve, baseline = run(spec, data[which], roots[which])
        print(f"| {which} | {name} | {shape or 'preset'} | {recipe} | {' '.join(f'{v:.3f}' for v in curve)} | "
              f"{baseline:.3f} | {time.perf_counter() - start:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
