"""What a command says on its console: every line once, named by the run it belongs to, from
wherever in the cluster it is said.

Code on Ray workers (pretraining's rank 0, few-shot tasks of a resumed chain, fine-tuning trials) calls :func:`say`.
While a :class:`Board` is open in the driver (``python -m pipeline.study``, ``pipeline.pretrain``),
lines travel to the job's :class:`Inbox` actor and the driver shows them: plain lines, or in a
terminal a progress bar per run with the lines above the bars; ``quiet`` keeps the study's own
lines only. The driver's Ray is started with ``log_to_driver=False``, so Ray's own worker output
(controller messages, internal warnings) stays in Ray's logs (``/tmp/ray/session_latest/logs`` on
a local Ray) instead of mixing with the study's; each line is sent once, so nothing is printed
twice. Without a Board (a test calling ``pretrain()``), :func:`say` prints, as any worker would.
"""
from __future__ import annotations

import functools
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

from pipeline.raycluster import ensure_ray

INBOX_PREFIX = "pipeline-console-"
# Ray's notes that reach a driver's stdout even with log_to_driver=False (its raylet warnings are
# pushed to every driver): the ones that are about Ray's own workings, not the study, are dropped.
RAY_NOISE = ("worker processes have been started on node", "PreemptionWatcher")


@dataclass(frozen=True)
class Event:
    """One thing said: ``text`` about ``run`` (a label such as "ViT-B/16 / full / 7 epochs");
    ``step``/``total`` when it is a training step's progress."""
    run: str
    text: str
    step: int | None = None
    total: int | None = None


def _inbox_name() -> str:
    import ray
    return INBOX_PREFIX + ray.get_runtime_context().get_job_id()  # one per job: two studies never share one


class Inbox:
    """The job's console queue (a named Ray actor holding no CPU): workers put, the driver takes."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def put(self, event: Event) -> None:
        self.events.append(event)

    def take(self) -> list[Event]:
        events, self.events = self.events, []
        return events


def _inbox():
    """This job's Inbox, or None (no Board open, or Ray not up: a handle kept from an earlier
    session would start a new Ray if called)."""
    import ray
    return _looked_up() if ray.is_initialized() else None


@functools.cache
def _looked_up():
    """This job's Inbox, looked up once per process (a Board clears it when it opens and closes)."""
    import ray
    try:
        return ray.get_actor(_inbox_name())
    except ValueError:
        return None


def clock(seconds: float) -> str:
    """Seconds as a short clock: 4m05s, or 2h07m from an hour up."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def say(run: str, text: str, *, step: int | None = None, total: int | None = None) -> None:
    """Say ``text`` about ``run``: to the driver's Board when one is open, else printed here. The
    call waits for the Board to have it (about a millisecond), so lines keep their order with the
    driver's own."""
    event, inbox = Event(run, text, step, total), _inbox()
    if inbox is not None:
        import ray
        try:
            ray.get(inbox.put.remote(event), timeout=10)
            return
        except Exception:  # the driver is gone or slow: the line goes to this worker's log instead
            pass
    print(f"[{run}] {text}", flush=True)


class Board:
    """The driver's side: opens the Inbox, shows what arrives (a background thread drains it every
    ``poll_s``), and says the driver's own lines in between (:meth:`line`), in order."""

    def __init__(self, *, quiet: bool = False, bars: bool | None = None, poll_s: float = 0.5,
                 write: Callable[[str], None] | None = None, on_ray: bool = True) -> None:
        self.quiet, self.poll_s, self.on_ray = quiet, poll_s, on_ray   # on_ray=False: the driver's lines only
        self.bars_on = (sys.stdout.isatty() if bars is None else bars) and not quiet
        self.write = write or (lambda text: print(text, flush=True))
        self.bars: dict[str, Any] = {}
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.inbox, self.thread = None, None

    def __enter__(self) -> "Board":
        if not self.on_ray:
            return self
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        ensure_ray(log_to_driver=False)
        # on the driver's node: a worker node that is lost (preempted) must not take the console with it
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.inbox = ray.remote(num_cpus=0)(Inbox).options(name=_inbox_name(), get_if_exists=True,
                                                           scheduling_strategy=here).remote()
        _looked_up.cache_clear()
        self.thread = threading.Thread(target=self._drain_loop, daemon=True, name="console")
        self.thread.start()
        self.stdout, sys.stdout = sys.stdout, NoiseFilter(sys.stdout)
        return self

    def __exit__(self, *exc) -> None:
        if not self.on_ray:
            return
        self.stop.set()
        self.thread.join()
        try:
            self.drain()
        except Exception:  # Ray is already shut down (Ctrl-C): what was not shown is in Ray's logs
            pass
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
        try:
            import ray
            ray.kill(self.inbox)  # a worker still holding it prints its lines itself from now on
        except Exception:
            pass
        _looked_up.cache_clear()
        sys.stdout.close_filter()
        sys.stdout = self.stdout

    def _drain_loop(self) -> None:
        while not self.stop.wait(self.poll_s):
            try:
                self.drain()
            except Exception:  # Ray going down under the thread: the driver reports why
                return

    def drain(self) -> None:
        if not self.on_ray:
            return
        import ray
        with self.lock:
            for event in ray.get(self.inbox.take.remote()):
                self._show(event)

    def line(self, text: str) -> None:
        """A line of the driver's own (the study's), after everything said before it."""
        try:
            self.drain()
        except Exception:
            pass
        with self.lock:
            self._write(text)

    def run_ended(self, run: str) -> None:
        """Close the run's bar (in a terminal) once it has finished or failed."""
        with self.lock:
            bar = self.bars.pop(run, None)
            if bar is not None:
                bar.close()

    def _show(self, event: Event) -> None:
        if self.quiet:
            return
        if event.step is not None and self.bars_on:
            self._bar(event)
        else:
            self._write(f"[{event.run}] {event.text}")

    def _bar(self, event: Event) -> None:
        from tqdm import tqdm
        bar = self.bars.get(event.run)
        if bar is None:  # from the run's first step seen (a resumed run starts past 0)
            bar = self.bars[event.run] = tqdm(total=event.total, initial=event.step, desc=event.run, unit="step",
                                              leave=False, position=len(self.bars), dynamic_ncols=True)
        bar.update(event.step - bar.n)
        bar.set_postfix_str(event.text.split(" ", 2)[-1] if event.text.startswith("step ") else event.text)

    def _write(self, text: str) -> None:
        if self.bars:
            from tqdm import tqdm
            tqdm.write(text)
        else:
            self.write(text)


class NoiseFilter:
    """A text stream that passes every line to ``stream`` but those naming :data:`RAY_NOISE`."""

    def __init__(self, stream) -> None:
        self.stream, self.partial = stream, ""

    def write(self, text: str) -> int:
        *lines, self.partial = (self.partial + text).split("\n")
        kept = [line for line in lines if not any(noise in line for noise in RAY_NOISE)]
        if kept:
            self.stream.write("\n".join(kept) + "\n")
        return len(text)

    def close_filter(self) -> None:
        if self.partial:
            self.stream.write(self.partial)
        self.partial = ""
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, flush, fileno, encoding: the stream's
        return getattr(self.stream, name)


def quiet_libraries() -> None:
    """INFO chatter of the libraries under a command (MLflow's database migration notes, Ray's
    start-up lines) kept off the console; their warnings and errors still show."""
    import os
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported, here and by workers
    for name in ("mlflow", "alembic", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
