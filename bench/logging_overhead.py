"""What MLflow logging costs a pretraining run (issue 16, scope 6): tiny-preset runs pretrained
in-process on a SQLite store, every call the run makes through ``tracking.client`` timed by method
(run creation, params, dataset inputs, run_spec.json, metric batches, tags, leases), against the
run's wall time. System metrics are sampled by MLflow's own thread (every 10 s, off the training
thread) and are timed apart: ``--no-system-metrics`` runs without them.

    python bench/logging_overhead.py                      # ViT-micro-S and BiT-micro-M, 400 steps
    python bench/logging_overhead.py --models ViT-micro-S --no-system-metrics

Prints, per model: run seconds, seconds in MLflow calls on the training side (and per method),
their share of the run.
"""
from __future__ import annotations

import argparse
import collections
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


class TimedClient:
    """An MlflowClient whose calls are timed, by method name, when made from the calling thread."""

    def __init__(self, inner, seconds: collections.Counter, thread: int) -> None:
        self.inner, self.seconds, self.thread = inner, seconds, thread

    def __getattr__(self, name: str):
        method = getattr(self.inner, name)
        if not callable(method):
            return method

        def timed(*args, **kwargs):
            import threading
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                if threading.get_ident() == self.thread:
                    self.seconds[name] += time.perf_counter() - start
        return timed


def measure(spec, data: str, system_metrics: bool) -> tuple[float, collections.Counter]:
    import threading
    seconds: collections.Counter = collections.Counter()
    original = tracking.client
    with tempfile.TemporaryDirectory() as storage:
        uri = tracking.default_tracking_uri(storage)
        tracking.init_store(uri)   # the database's creation is the study's, once, not the run's
        timed = TimedClient(original(uri), seconds, threading.get_ident())
        tracking.client = lambda _uri: timed
        try:
            start = time.perf_counter()
            pretrain(spec, data, storage=storage, tracking_uri=uri,
                     launch=Launch(in_process=True, system_metrics=system_metrics))
            return time.perf_counter() - start, seconds
        finally:
            tracking.client = original


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["ViT-micro-S", "BiT-micro-M"])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--no-system-metrics", dest="system_metrics", action="store_false")
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "logging-overhead")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    study = load_study("scaling")
    data = prepare_data(study.preset("tiny"), None, str(args.root))
    specs = {s.model_name: s for s in study.expand("tiny") if s.steps == args.steps}
    print("| model | steps | run (s) | in MLflow calls (s) | share | largest calls (s) |\n|---|---|---|---|---|---|")
    for name in args.models:
        total, seconds = measure(specs[name], data, args.system_metrics)
        spent = sum(seconds.values())
        top = ", ".join(f"{k} {v:.2f}" for k, v in seconds.most_common(4))
        print(f"| {name} | {args.steps} | {total:.1f} | {spent:.2f} | {spent / total:.1%} | {top} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
