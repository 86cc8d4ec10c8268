"""How fast a training loop runs, as one worker measures it: the time to its first step (model,
restore, compiling, the loader's start and the first batch), the time spent waiting for data, and
the steady state after the first step, timed to the last logging window (whose all-reduce waited
for the device). ``pipeline.pretrain.loop.Progress`` logs the window numbers (``throughput/*``) and the run's
summary line; ``bench/gpu_e2e.py`` reads both."""
from __future__ import annotations

import time
from typing import Any, Iterable, Iterator

import torch

from pipeline import hardware, trace


class StepClock:
    """Times one attempt of a loop: :meth:`batches` wraps the loader, :meth:`stepped` follows each
    step, :meth:`synced` each window's all-reduce, :meth:`summary` the end."""

    def __init__(self, started: float, device: torch.device) -> None:
        self.started, self.device = started, device
        self.first_step_s: float | None = None  # from the worker's start to the end of its first step
        self.window_waited = 0.0                 # data waits in the current window
        self.waited = 0.0                        # data waits since the first step
        self.steady: dict[str, Any] = {"from": None, "to": None, "steps": 0, "waited": 0.0}  # up to the last window

    def batches(self, loader: Iterable) -> Iterator:
        """``loader``'s batches, timing how long each was waited for."""
        batches = iter(loader)
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return
            waited = time.perf_counter() - start
            self.window_waited += waited
            self.waited += waited if self.first_step_s is not None else 0.0
            yield batch

    def stepped(self) -> None:
        """After a step: the first one ends the start-up (the device's queue drained to time it)."""
        if self.first_step_s is not None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.steady["from"] = time.perf_counter()
        self.first_step_s = self.steady["from"] - self.started
        trace.mark("first step done")

    def synced(self, window_steps: int) -> None:
        """After a window's all-reduce: the steady state runs to here (the first step excluded)."""
        first_window = self.steady["to"] is None
        self.steady.update(to=time.perf_counter(), steps=self.steady["steps"] + window_steps - first_window,
                           waited=self.waited)
        self.window_waited = 0.0

    def summary(self, batch_size: int, tflops_at: Any, peak_all: float | None) -> dict[str, Any]:
        """The first step, peak memory, and in the steady state images/s, the share of time waiting
        for data and MFU (``tflops_at(images_per_s)`` over ``peak_all``, every device's peak)."""
        out: dict[str, Any] = {"first_step_s": self.first_step_s,
                               "peak_memory_gib": hardware.peak_memory_gib(self.device)}
        steady = self.steady
        seconds = steady["to"] - steady["from"] if steady["to"] is not None and steady["from"] is not None else 0.0
        if steady["steps"] > 0 and seconds > 0:
            images_per_s = steady["steps"] * batch_size / seconds
            out.update(images_per_s=images_per_s, data_wait=steady["waited"] / seconds)
            if peak_all:
                out["mfu"] = tflops_at(images_per_s) / peak_all
        return out


def summary_line(summary: dict[str, Any]) -> str:
    """A run's throughput in one line (its ``throughput`` summary, with the compile decision)."""
    parts = [f"{summary['images_per_s']:,.0f} img/s" if "images_per_s" in summary else "too few steps to time",
             f"MFU {summary['mfu']:.1%}" if "mfu" in summary else "",
             f"first step {summary['first_step_s']:.1f} s",
             f"waiting for data {summary['data_wait']:.0%}" if "data_wait" in summary else "",
             f"peak memory {summary['peak_memory_gib']:.1f} GiB",
             f"torch.compile {'on' if summary['compiled'] else 'off'} ({summary['compile_reason']})"]
    return "throughput: " + ", ".join(p for p in parts if p)
