"""Cost of the learning curves' few-shot probes (issue 15: at most 5% of pretraining time on the
tiny preset): tiny-preset runs pretrained in-process with and without ``pipeline.pretrain.loop.Probes`` on
digits, in one process, one torch thread, alternating so that drift hits both alike.

    python bench/probe_cost.py                       # ViT-micro-S and BiT-micro-M, 400 steps
    python bench/probe_cost.py --val-every 100 200
    python bench/probe_cost.py --per-probe           # what one probe costs, per tiny model

Prints, per model and validation interval: seconds without and with probes, the probes' share.
Whole runs vary by about 5 s here, more than the probes cost; ``--per-probe`` times what
``Trainer.probe`` runs (features of the kept train images and the test split, the linear probes)
on a freshly built model, best of 3, and the once-per-run decode.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline.data.digits import convert_digits  # noqa: E402
from pipeline.pretrain.launch import Launch, pretrain  # noqa: E402
from pipeline.pretrain.loop import Hooks, Probes  # noqa: E402
from pipeline.transfer.fewshot import FewShot, FewshotSettings  # noqa: E402
from pipeline.spec import load_study  # noqa: E402
from pipeline.preflight import prepare_data  # noqa: E402


def timed(spec, data: str, hooks: Hooks) -> float:
    with tempfile.TemporaryDirectory() as storage:
        start = time.perf_counter()
        pretrain(spec, data, storage=storage, launch=Launch(in_process=True), hooks=hooks)
        return time.perf_counter() - start


def per_probe(study, digits: Path, shots: tuple[int, ...]) -> None:
    from models import build_model
    from pipeline.features import probe_sets
    cpu, start = torch.device("cpu"), time.perf_counter()
    probe_sets(str(digits), 32, max(shots))   # decoded once per process: what the first probe of a run pays
    fewshot = FewShot(datasets=("digits",), settings=FewshotSettings(shots=shots))
    print(f"decode once per run: {time.perf_counter() - start:.2f} s\n| model | steps | one probe (s) |\n|---|---|---|")
    for spec in study.expand("tiny"):
        model, times = build_model(spec.model, num_classes=32, image_size=32), []
        for _ in range(3):
            start = time.perf_counter()
            fewshot.probe_live(model, cpu, 32, "digits", str(digits))
            times.append(time.perf_counter() - start)
        print(f"| {spec.model_name} | {spec.steps} | {min(times):.3f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["ViT-micro-S", "BiT-micro-M"])
    p.add_argument("--val-every", type=int, nargs="+", default=[200])
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "probe-cost")
    p.add_argument("--per-probe", action="store_true", help="time one probe per tiny model instead")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    study = load_study("scaling")
    data = prepare_data(study.preset("tiny"), None, str(args.root))
    digits = args.root / "digits"
    if not (digits / "manifest.json").exists():
        convert_digits(digits, progress=False)
    shots = tuple(study.preset("tiny").transfer.shots)
    if args.per_probe:
        per_probe(study, digits, shots)
        return 0
    probes = Probes(datasets=(("digits", str(digits)),), settings=FewshotSettings(shots=shots))
    specs = {s.model_name: s for s in study.expand("tiny") if s.steps == 400}
    print("| model | val_every | without probes (s) | with probes (s) | probes' share |\n|---|---|---|---|---|")
    for name in args.models:
        for every in args.val_every:
            spec = specs[name].model_copy(update={"recipe": specs[name].recipe.model_copy(update={"val_every": every})})
            without, with_ = timed(spec, data, Hooks()), timed(spec, data, Hooks(probes=probes))
            print(f"| {name} | {every} | {without:.1f} | {with_:.1f} | {(with_ - without) / without:.1%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
