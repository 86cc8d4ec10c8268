"""Spread of tests/test_transfer_pretrained.py's numbers over seeds (issue 11).

The test pretrains a micro BiT on synthetic glyphs (1000 classes, 10k images, 1000 steps, in
process, 1 torch thread) and compares its 25-shot digits accuracy with random inits of the same
shape. Here the same run is repeated for several pretraining seeds (the RunSpec's ``seed``: init,
data order, augmentation) and several random-init seeds, and seed 0 twice (same number = the test
is deterministic), so that the test's margin can be set from measured spread.

    python bench/transfer_pretrained_spread.py --seeds 0 1 2 3 4 --random-seeds 0 1 2 3 4 5 6 7 8 9

``--threads`` (default: the test's) sets torch's threads: the numbers depend on it (float sums).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from models import build_model  # noqa: E402
from pipeline.data.digits import convert_digits  # noqa: E402
from pipeline.data.synth import SynthSpec, generate  # noqa: E402
from pipeline.pretrain.launch import Launch, pretrain  # noqa: E402
import test_transfer_pretrained as t  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--random-seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--repeat-first", action="store_true", help="run the first pretraining seed twice")
    parser.add_argument("--threads", type=int, default=t.THREADS, help="torch threads (default: the test's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="spread-"))
    data = generate(tmp / "glyphs", SynthSpec(style="glyphs", images=t.IMAGES, classes=t.CLASSES,
                                              max_objects=1, image_size=32, seed=0), executor="processes",
                    progress=False)
    convert_digits(tmp / "digits", progress=False)
    digits = str(tmp / "digits")
    spec0 = t.spec()
    pretrained = []
    seeds = args.seeds + ([args.seeds[0]] if args.repeat_first else [])
    for i, seed in enumerate(seeds):
        spec = t.spec(seed)
        start = time.perf_counter()
        out = pretrain(spec, str(data), storage=str(tmp / f"runs{i}"), launch=Launch(in_process=True))
        acc = t.fewshot_25(out["checkpoint_uri"], digits)
        pretrained.append(acc)
        print(json.dumps({"kind": "pretrained", "seed": seed, "fewshot25": acc,
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)
    random = []
    for seed in args.random_seeds:
        torch.manual_seed(seed)
        model = build_model(spec0.model, num_classes=t.CLASSES, image_size=32)
        random.append(t.fewshot_25("random", digits, model=model))
        print(json.dumps({"kind": "random", "seed": seed, "fewshot25": random[-1]}), flush=True)
    print(json.dumps({"pretrained_min": min(pretrained), "pretrained_mean": statistics.mean(pretrained),
                      "random_max": max(random), "random_mean": statistics.mean(random),
                      "random_std": statistics.pstdev(random)}))


if __name__ == "__main__":
    main()
