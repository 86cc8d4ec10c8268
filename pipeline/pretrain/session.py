"""Where the loop runs, as the loop sees it (:class:`Session`: rank, world size, device, the
checkpoint to resume, reports): :class:`RaySession` inside a Ray Train worker, :class:`LocalSession`
in the calling process without Ray; and the collectives the loop uses (no-ops on one process)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch

from pipeline.pretrain.checkpoint import load_state


class Session(Protocol):
    """What :func:`pipeline.pretrain.loop.train_loop` needs from where it runs."""
    rank: int
    world: int
    device: torch.device

    def restore(self, device: torch.device) -> dict[str, Any] | None:
        """The last checkpoint's state, or None to start from scratch."""

    def report(self, metrics: dict[str, float], folder: str | None) -> None:
        """Metrics of a checkpoint step, with the checkpoint's folder on rank 0 (None elsewhere)."""

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to train (DDP-wrapped over several workers)."""


def distributed() -> bool:
    """Whether this process is one rank of several (a torch.distributed group is up)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_sum(values: list, device) -> list[float]:
    """Sum numbers (Python floats or 0-d tensors) over all ranks; one host sync for all of them."""
    return all_reduce(torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])).tolist()


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """A tensor summed over all ranks (itself when not distributed)."""
    if distributed():
        torch.distributed.all_reduce(t)
    return t


def gather(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (``[obj]`` when not distributed)."""
    if not distributed():
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


class RaySession:
    """The loop's view of Ray Train: rank, device, the checkpoint to resume, reports."""

    def __init__(self) -> None:
        import ray.train   # Ray Train only where it runs (1.2 s to import: CLIs' --help and in-process runs skip it)
        import ray.train.torch
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def restore(self, device: torch.device) -> dict[str, Any] | None:
        import ray.train
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return load_state(folder, map_location=device)

    def report(self, metrics: dict[str, float], folder: str | None) -> None:
        import ray.train
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch
        return ray.train.torch.prepare_model(model) if self.world > 1 else model


class LocalSession:
    """The same loop in this process, without Ray (one worker): checkpoints are folders
    ``<run_dir>/checkpoint_<step>`` written whole, then renamed; the latest is resumed and the
    two latest are kept, as with Ray Train."""
    rank, world, keep = 0, 1, 2

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def checkpoints(self) -> list[Path]:
        return sorted(self.run_dir.glob("checkpoint_[0-9]*"))

    def restore(self, device: torch.device) -> dict[str, Any] | None:
        found = self.checkpoints()
        return load_state(found[-1], map_location=device) if found else None

    def report(self, metrics: dict[str, float], folder: str | None) -> None:
        if folder is None:
            return
        target = self.run_dir / f"checkpoint_{int(metrics['step']):09d}"
        partial = self.run_dir / f".{target.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(folder, partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        for old in self.checkpoints()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

