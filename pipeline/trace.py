"""Timestamps of a run chain's phases, for ``bench/fixed_cost.py``: where the seconds go between a
chain's start and its first step, and between its last step and the end of its transfer stages.
Off unless ``PIPELINE_TRACE`` names a file; each process (driver, Ray workers: they inherit the
variable from a local Ray) appends ``<unix time> <pid> <event>`` lines to it."""
from __future__ import annotations

import os
import time

TRACE_ENV = "PIPELINE_TRACE"


def mark(event: str, at: float | None = None) -> None:
    """Append ``event`` (at ``at``, a Unix time; now by default) to the trace file, if one is set."""
    path = os.environ.get(TRACE_ENV)
    if path:
        with open(path, "a") as out:
            out.write(f"{time.time() if at is None else at:.3f} {os.getpid()} {event}\n")


def mark_process_start(event: str) -> None:
    """``event`` at the time this process was started (a Ray worker: when Ray spawned it)."""
    if os.environ.get(TRACE_ENV):
        import psutil
        mark(event, psutil.Process().create_time())
