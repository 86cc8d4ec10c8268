"""Loader epochs through decode workers, the CPU seconds of this process and of its (ended)
workers apart: the A/B of two checkouts' loaders on the same data (issue 17).

    python bench/loader_ab.py REPO WORKERS EPOCHS [DATASET]

REPO: the checkout whose ``pipeline`` is imported (e.g. a `git worktree` of the old commit).
Prints one line an epoch (epoch 0 includes building the subset; train mode, 224-px uint8 out,
batches of 64). DATASET: default the originals that ``bench_photos.py --workdir /tmp/ph/run``
made. Alternate the checkouts, several times each: the box's load moves the numbers.
"""
from __future__ import annotations

import resource
import sys
import time


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> None:
    repo, workers, epochs = argv[0], int(argv[1]), int(argv[2])
    data = argv[3] if len(argv) > 3 else "/tmp/ph/run/original"
    sys.path.insert(0, repo)
    import torch
    torch.set_num_threads(1)
    from pipeline.data.loader import LoaderSpec, make_loader
    for epoch in range(epochs):
        s0, c0 = cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        spec = LoaderSpec(data, batch_size=64, image_size=224, train=True, image_dtype="uint8", epoch=epoch)
        n = sum(len(batch.keys) for batch in make_loader(spec, num_workers=workers))
        own = cpu_seconds(resource.RUSAGE_SELF) - s0
        children = cpu_seconds(resource.RUSAGE_CHILDREN) - c0
        print(f"{repo} workers {workers} epoch {epoch}: loader process {own:.2f} CPU-s, workers "
              f"{children:.2f} CPU-s, wall {time.perf_counter() - t0:.2f} s, "
              f"{n / (own + children):.0f} images per CPU-second")


if __name__ == "__main__":
    main(sys.argv[1:])
