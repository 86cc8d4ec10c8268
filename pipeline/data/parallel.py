"""Run independent per-shard jobs in parallel: Ray tasks when Ray is up, local processes otherwise.

Each job returns a small result (a manifest entry, a list of hashes); progress is shown as jobs
finish, counted in the unit the caller gives (images, rows).
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Sequence

from tqdm import tqdm


def ray_is_up() -> bool:
    """True when this process is connected to Ray, or a cluster address is set for it."""
    try:
        import ray
    except ImportError:
        return False
    if ray.is_initialized():
        return True
    if os.environ.get("RAY_ADDRESS"):
        # Workers' output reaches this process: a study that makes its data here first (this
        # initializes Ray for the whole driver) must still show its runs' lines.
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return True
    return False


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], *, weights: Sequence[int],
             desc: str, unit: str, executor: str = "auto", workers: int | None = None,
             progress: bool = True) -> list[Any]:
    """``[fn(*job) for job in jobs]``, in parallel, in the order of ``jobs``.

    executor: "ray" (tasks on the cluster), "processes" (local pool), "inline" (this process), or
    "auto" (ray when up, else processes, inline for one job). ``weights`` (e.g. images per job)
    drive the progress bar.
    """
    if executor == "auto":
        executor = "ray" if ray_is_up() else ("inline" if len(jobs) <= 1 else "processes")
    bar = tqdm(total=int(sum(weights)), desc=desc, unit=unit, disable=not progress,
               file=sys.stderr, mininterval=0.5, smoothing=0.1)
    results: list[Any] = [None] * len(jobs)
    try:
        if executor == "inline":
            for i, job in enumerate(jobs):
                results[i] = fn(*job)
                bar.update(weights[i])
        elif executor == "ray":
            import ray
            remote = ray.remote(num_cpus=1, max_retries=2)(fn)
            pending = {remote.remote(*job): i for i, job in enumerate(jobs)}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(done[0])
                results[i] = ray.get(done[0])
                bar.update(weights[i])
        elif executor == "processes":
            n = workers or min(len(jobs), os.cpu_count() or 1)
            # spawn, not fork: callers may hold threads (torch, Ray) that fork would break.
            with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
                for fut in as_completed(futures):
                    i = futures[fut]
                    results[i] = fut.result()
                    bar.update(weights[i])
        else:
            raise ValueError(f"executor must be auto, ray, processes or inline, got {executor!r}")
    finally:
        bar.close()
    return results
