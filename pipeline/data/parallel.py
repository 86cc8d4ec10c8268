"""Run independent per-shard jobs in parallel: Ray tasks when Ray is up, local processes otherwise.

Each job returns a small result (a manifest entry, a list of hashes); progress is shown as jobs
finish, counted in the unit the caller gives (images, rows).
"""
from __future__ import annotations

import contextlib
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


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple | None], *, weights: Sequence[int],
             desc: str, unit: str, executor: str = "auto", workers: int | None = None,
             progress: bool = True) -> list[Any]:
    """``[fn(*job) for job in jobs]``, in parallel, in the order of ``jobs``.

    executor: "ray" (tasks on the cluster), "processes" (local pool), "inline" (this process), or
    "auto" (ray when up, else processes, inline for one job). ``weights`` (e.g. images per job)
    drive the progress bar. A job given as None is done already (a resumed conversion): its weight
    shows as done from the start and its result is None. When a job fails (or on Ctrl-C) the jobs
    not started yet are cancelled, so that the error is said at once.
    """
    todo = [(i, job) for i, job in enumerate(jobs) if job is not None]
    if executor == "auto":
        executor = "ray" if ray_is_up() else ("inline" if len(todo) <= 1 else "processes")
    if executor not in _RUNNERS:
        raise ValueError(f"executor must be auto, ray, processes or inline, got {executor!r}")
    total = int(sum(weights))
    bar = tqdm(total=total, initial=total - int(sum(weights[i] for i, _ in todo)), desc=desc, unit=unit,
               disable=not progress, file=sys.stderr, mininterval=0.5, smoothing=0.1)
    results: list[Any] = [None] * len(jobs)

    def finished(i: int, result: Any) -> None:
        results[i] = result
        bar.update(weights[i])

    try:
        if todo:
            _RUNNERS[executor](fn, todo, finished, workers)
    finally:
        bar.close()
    return results


def _run_inline(fn, todo, finished, workers) -> None:
    for i, job in todo:
        finished(i, fn(*job))


def _run_ray(fn, todo, finished, workers) -> None:
    import ray
    remote = ray.remote(num_cpus=1, max_retries=2)(fn)
    pending = {remote.remote(*job): i for i, job in todo}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            finished(i, ray.get(done[0]))
    except BaseException:
        for ref in pending:  # nothing keeps running on the cluster after the driver gave up
            with contextlib.suppress(Exception):
                ray.cancel(ref)
        raise


def _run_processes(fn, todo, finished, workers) -> None:
    n = workers or min(len(todo), os.cpu_count() or 1)
    # spawn, not fork: callers may hold threads (torch, Ray) that fork would break.
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(fn, *job): i for i, job in todo}
        try:
            for fut in as_completed(futures):
                finished(futures[fut], fut.result())
        except BaseException:
            for fut in futures:  # queued jobs never start; leaving the pool waits for running ones
                fut.cancel()
            raise


_RUNNERS = {"inline": _run_inline, "ray": _run_ray, "processes": _run_processes}
