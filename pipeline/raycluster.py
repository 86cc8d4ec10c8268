"""Joining Ray (the cluster ``RAY_ADDRESS`` names, or a local one started by this process), and
living with Ray Train on it: its fit off the main thread, its logs kept quiet."""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys
import threading
from typing import Any

from pipeline import exits

# Seconds between Ray Train's checks of its workers (its default is 2). A local cluster inherits
# this process's environment, so its Train controllers notice a finished or failed worker group
# sooner: timed on this 2-core box, TorchTrainer.fit of a 20-step micro run took 16-19 s instead
# of 20 s at 0.5; 0.1 took a further 0.3 s off the end of every run (bench/fixed_cost.py, issue
# 31), for 10 status calls a second to one idle actor. On a cluster started elsewhere, set
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S in its nodes' environment.
TRAIN_HEALTH_CHECK_S = "0.1"
# Ray Train 2.60 starts a PreemptionWatcher actor (a process: 1.4-1.9 CPU-s) for every run, to tell
# its workers when their node is about to be preempted. A command's own local Ray is one node that
# ends with the command: nothing there is preempted, so its runs go without it (the tiny study
# starts 9 processes fewer). Clusters keep it.
# Ray's GCS retries a placement group that waits for resources at growing intervals, up to 1 s: a
# run that waited for a CPU (its Train workers' group) then lost it, more often than not, to the run
# that had just freed it and asked again within the second (its fine-tuning), and the study's last,
# shortest run waited 30-46 s for a core while the others finished, then ran alone. Retried every
# 0.1 s, waiting groups are served about in the order they asked, so runs go in the study's
# longest-first order: the tiny study 289-302 s -> 283 s (bench/RESULTS.md, issue 31).
PLACEMENT_RETRY_MS = "100"
LOCAL_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": TRAIN_HEALTH_CHECK_S,
                   "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                   "RAY_gcs_create_placement_group_retry_max_interval_ms": PLACEMENT_RETRY_MS}


# Set by the command that starts a local Ray, to its pid, before Ray starts: Ray's processes (its
# workers, so the chains' tasks) inherit it. On a cluster (RAY_ADDRESS) the workers lack it, as they
# lack RAY_ADDRESS itself: a task cannot tell from RAY_ADDRESS where it runs.
LOCAL_RAY_ENV = "PIPELINE_LOCAL_RAY"


def ensure_ray(log_to_driver: bool = True) -> None:
    """Connect to ``$RAY_ADDRESS``, or start a local Ray, unless this process is connected.
    ``log_to_driver=False`` (a command showing its own console, ``pipeline.console``): the workers'
    output and Ray's start-up notes stay in Ray's logs; Ray's errors still show."""
    import logging
    import ray
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or None
    if address is None:
        for name, value in LOCAL_TRAIN_ENV.items():
            os.environ.setdefault(name, value)
        os.environ[LOCAL_RAY_ENV] = str(os.getpid())
    else:
        os.environ.pop(LOCAL_RAY_ENV, None)
    before = children()
    # A command's own local Ray goes without the dashboard: nothing here reads it, and its nine
    # processes cost about 1.6 s of the command's start and 1.7 CPU-seconds (bench/ray_start.py).
    ray.init(address=address, log_to_driver=log_to_driver, include_dashboard=False if address is None else None,
             logging_level=logging.INFO if log_to_driver else logging.ERROR)
    if address is None:
        reap_when_gone(children() - before)
    exits.catch_again()  # SIGTERM as Ctrl-C, not Ray's exit 1 (pipeline.exits)


# A watcher that outlives this process: when the process is gone (its end of the pipe closes, even
# on SIGKILL), it ends what is left of the local Ray the process started. Ray 2.60 ends its GCS and
# raylet after a killed driver, but not the raylet's dashboard and runtime-env agents (about 215 MB,
# left running for good: measured, issue 33).
REAPER = """
import json, sys, psutil
lines = sys.stdin.read().splitlines()   # returns once the process that started Ray is gone
if lines and lines[-1] == "exit":       # it exited normally: Ray's own shutdown ended its processes
    sys.exit(0)
started = [tuple(p) for line in lines for p in json.loads(line)]
left = []
for pid, created in started:
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - created) < 0.01:
            left.append(process)
    except psutil.Error:
        pass
for process in left:
    try:
        process.terminate()
    except psutil.Error:
        pass
for process in psutil.wait_procs(left, timeout=3)[1]:
    try:
        process.kill()
    except psutil.Error:
        pass
"""
_reaper: list[subprocess.Popen] = []   # one per process, held: closing its pipe ends what it watches


def children() -> set[tuple[int, float]]:
    """This process's descendants as (pid, start time): a pid alone may be reused."""
    import psutil
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            found.add((child.pid, child.create_time()))
        except psutil.Error:
            pass
    return found


def reap_when_gone(started: set[tuple[int, float]]) -> None:
    """Hand ``started``, the local Ray's processes, to this process's watcher (:data:`REAPER`,
    started on first use: a process that starts Ray again after ``ray.shutdown`` has one watcher)."""
    if not _reaper or _reaper[0].poll() is not None:
        _reaper[:] = [subprocess.Popen([sys.executable, "-c", REAPER], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True, text=True)]
        atexit.register(stand_down)   # a normal exit: the watcher ends, touching nothing
    _reaper[0].stdin.write(json.dumps(sorted(started)) + "\n")
    _reaper[0].stdin.flush()


def stand_down() -> None:
    """Tell the watcher this process exits normally (Ray's atexit shutdown ends the local Ray), so it
    ends without touching a process while this one finishes."""
    for reaper in _reaper:
        with contextlib.suppress(OSError, ValueError):
            reaper.stdin.write("exit\n")
            reaper.stdin.close()


def on_local_ray() -> bool:
    """Whether this process runs on a local Ray that a pipeline command started (this process, or the
    command whose Ray started this worker: an ancestor), rather than on a cluster, where nodes come
    and go: true in a study's chain tasks on a laptop, false in them on a cluster."""
    import psutil
    marker = os.environ.get(LOCAL_RAY_ENV, "")
    if not marker.isdigit():
        return False
    me = psutil.Process()
    return int(marker) in {me.pid, *(p.pid for p in me.parents())}


def unplaceable(per_worker: dict[str, float], workers: int = 1) -> str | None:
    """What a local Ray started by a pipeline command can never give ``workers`` workers of
    ``per_worker`` resources (no autoscaler adds nodes to it), said for people; None when they fit,
    or on a cluster, where an autoscaler may add the nodes (:func:`on_local_ray`)."""
    import ray
    if not on_local_ray():
        return None
    total = ray.cluster_resources()
    short = [f"{workers} x {amount:g} {name} (this machine's Ray has {total.get(name, 0):g})"
             for name, amount in per_worker.items() if amount * workers > total.get(name, 0)]
    return "; ".join(short) or None


def fit_off_main_thread(trainer) -> Any:
    """``trainer.fit()`` on a helper thread, this one waiting: on the main thread, Ray Train puts
    its own SIGINT handler in place of the command's (it aborts the run and the command ends with
    exit 1 and no word), so Ctrl-C would not say how to resume."""
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # handed to the waiting thread below
            outcome["error"] = err

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)
        exits.check_interrupt()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def quiet_ray_train_logs() -> None:
    """Ray Train V2 logs every report and checkpoint at INFO on each worker; the rank-0 progress
    line already says what matters. (Its loggers are named after module files, hence the lookup.)"""
    import logging
    try:
        from ray.train.v2._internal.execution import context, storage
    except ImportError:  # another Ray version: keep its logs
        return
    for name in (context.__file__, storage.__name__):
        logging.getLogger(name).setLevel(logging.WARNING)
