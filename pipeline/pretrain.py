"""Pretraining one RunSpec with Ray Train (TorchTrainer, data parallel; gloo on CPU, NCCL on GPU).

Recipe (paper Table 3 / Appendix B.1): Adam(0.9, 0.999) with decoupled weight decay on kernels,
linear warmup then linear (or cosine) decay to zero, global-norm gradient clipping, sigmoid
cross-entropy on multi-hot targets (sum over classes, mean over the batch). The global batch is
fixed by the recipe; each of W workers takes B/W, split into micro-batches (gradient
accumulation) when ``micro_batch_size`` is smaller.

Checkpoints (every ``checkpoint_every`` steps and at the end) hold the model, optimizer, schedule,
the step (which fixes the data position) and every rank's RNG state, so a resumed run continues
exactly where it stopped. The Train run is named after the RunSpec id: re-submitting resumes it.
Metrics go to the RunSpec's MLflow run from rank 0, in batches. The loop (:func:`train_loop`)
sees Ray Train only through a session (rank, device, restore, report); ``LocalSession`` runs the
same loop in the calling process without Ray (``pretrain(..., launch=Launch(in_process=True))``).

The worker's pieces: :class:`PretrainPlan` (one frozen, typed object: everything a worker needs,
built by :func:`plan_run` on the driver), :class:`Trainer` (model, optimizer and schedule;
``restore``, ``train_step``, ``evaluate``, ``save``), :class:`Progress` (window metrics, MLflow,
console) and :func:`train_loop`, which strings them together; tests attach :class:`Hooks`.

CLI: python -m pipeline.pretrain --model NAME --data PATH [--subset 30M] [--epochs E | --steps S] ...
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import pickle
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from models import build_model
from pipeline import cli, compute, console, hardware, trace, tracking
from pipeline import storage as store
from pipeline.fewshot import DEFAULT_SHOTS
from pipeline.planning import RunNumbers, run_numbers
from pipeline.raycluster import ensure_ray, fit_off_main_thread, quiet_ray_train_logs
from pipeline.spec import Recipe, RunSpec
from pipeline.throughput import StepClock, summary_line

STATE_FILE = "state.pt"


def state_file(checkpoint: str | os.PathLike) -> Path:
    """The state file of a pretraining checkpoint given as its folder or as the file itself."""
    path = Path(checkpoint)
    return path / STATE_FILE if path.is_dir() else path


class CheckpointError(ValueError):
    """A file that is not a pretraining checkpoint this pipeline can read."""


CHECKPOINT_KEYS = frozenset({"model", "optimizer", "schedule", "step", "best", "rng", "spec"})


def load_state(checkpoint: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A pretraining checkpoint's state, read as data: ``weights_only`` admits tensors and plain
    values only, so a crafted file cannot run code while it is read; anything else is refused."""
    path = state_file(checkpoint)
    what = (f"a pretraining checkpoint is a folder holding {STATE_FILE}, written by pipeline.pretrain "
            "(tensors and plain values only)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a checkpoint this pipeline reads ({reason[:200]}): {what}; files "
                              "that need code to load are refused") from None
    missing = sorted(CHECKPOINT_KEYS - (set(state) if isinstance(state, dict) else set()))
    if missing:
        raise CheckpointError(f"{path} holds no pretraining state (missing {', '.join(missing)}): {what}")
    return state


# ----------------------------------------------------------------------------- recipe pieces

def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on kernels (matrices and conv filters) only, as the authors' code does; not
    on biases, norms, the class token or the position embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_kernel = p.ndim >= 2 and not name.endswith(("pos_embed", "cls_token"))
        (decay if is_kernel else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, warmup: int, total: int, decay: str = "linear") -> float:
    """Multiplier of the base LR after ``step`` optimizer steps: linear warmup from 0, then
    linear (or cosine) decay to 0 at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def sigmoid_xent(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy, summed over classes, averaged over the batch."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").sum(-1).mean()


def precision_at_1(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Hits of the top-scoring class among the true labels (multi-label precision@1), summed."""
    top = logits.argmax(-1)
    return targets.gather(1, top[:, None]).squeeze(1).gt(0).sum()


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (what a ``weights_only`` load reads back)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    n = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- the worker loop

def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_sum(values: list, device) -> list[float]:
    """Sum numbers (Python floats or 0-d tensors) over all ranks; one host sync for all of them."""
    return _all_reduce(torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])).tolist()


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    """A tensor summed over all ranks (itself when not distributed)."""
    if _distributed():
        torch.distributed.all_reduce(t)
    return t


def _gather(obj):
    if not _distributed():
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


class RaySession:
    """The loop's view of Ray Train: rank, device, the checkpoint to resume, reports."""

    def __init__(self) -> None:
        import ray.train
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
        from ray.train import Checkpoint
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder) if folder else None)

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
        import shutil
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


@dataclass(frozen=True)
class PretrainPlan:
    """Everything a worker needs, derived once on the driver by :func:`plan_run` (so that a bad
    run fails there, with a clear message, and not inside a Ray worker)."""
    spec: RunSpec
    data_path: str
    numbers: RunNumbers         # steps, images seen, head size, forward MACs (pipeline.planning)
    micro_batch: int            # per forward pass; per-worker batch = micro_batch x accum_steps
    accum_steps: int
    base_lr: float
    base_lr_source: str         # 'recipe' | 'table3' | 'choice'
    val_split: str | None
    subset: dict[str, Any] = dataclasses.field(default_factory=dict)  # the loader's fraction= or count=
    on_bad_row: str = "raise"   # "skip": rows that cannot be read are dropped and counted (data/skipped_rows)
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    checksum_marks: str | None = None  # where shards whose checksum was checked are marked (None: not checked)
    subset_cache: str | None = None    # where the training subset is kept once built (format.cached_subset)
    system_metrics: bool = True  # rank 0 logs MLflow's system metrics (tracking.system_metrics)
    compile: str = "auto"        # torch.compile: "auto" (on CUDA when it repays, pipeline.hardware) | "on" | "off"
    loader_workers: int | None = None  # decode processes a rank (None: from the CPUs Ray gives it, else the
                                       # loader's default; hardware.loader_workers)


@dataclass(frozen=True)
class Probes:
    """Few-shot probes during pretraining, for learning curves (as big_vision runs its evaluators
    every N steps): at every validation step and at the end, rank 0 fits the paper's linear
    few-shot probes (``pipeline.fewshot``) on the current model's features of the largest shot's
    count of examples per class of each dataset's train split (drawn once per run:
    ``features.probe_sets``), scores its whole test split, and logs ``curve/fewshot/<name>/<k>shot`` with ``curve/exaflops`` (the compute
    spent so far) at that step. The images are held in memory: meant for small downstream sets
    (digits, Pets, Flowers), not ImageNet."""
    datasets: tuple[tuple[str, str], ...] = ()   # (name, location)
    shots: tuple[int, ...] = DEFAULT_SHOTS
    seeds: int = 3   # draws of the k examples per point, as the final evaluation (ridge solves only: cheap)


@dataclass(frozen=True)
class Hooks:
    """What a caller attaches to the loop from outside: few-shot probes for learning curves, and
    for tests and debugging, a stop after some steps as if interrupted and a call
    ``on_batch(rank, step, batch)`` before each step."""
    stop_after_steps: int | None = None
    on_batch: Callable[[int, int, Any], None] | None = None
    probes: Probes = Probes()


@dataclass(frozen=True)
class KeyTrace:
    """An ``on_batch`` hook: the keys of every step's batch, per rank, appended to
    ``<folder>/keys-rank<r>.txt`` (to check that a resumed run sees exactly the same data)."""
    folder: str

    def __call__(self, rank: int, step: int, batch) -> None:
        path = Path(self.folder) / f"keys-rank{rank}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(f"{step}\t{','.join(batch.keys)}\n")


@dataclass(frozen=True)
class Launch:
    """Where the loop runs: Ray Train workers (CPU or one GPU each, retried ``max_failures``
    times), or ``in_process`` without Ray (one worker, local storage; debugging and tests)."""
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 3
    in_process: bool = False
    on_bad_row: str = "raise"   # a row that cannot be decoded or labelled: "raise" (stop at once) | "skip" (count it)
    system_metrics: bool = True  # rank 0 logs its machine's CPU, memory (GPU) use to MLflow every 10 s
    compile: str = "auto"        # torch.compile: "auto" (on CUDA when the run is long enough to repay it) | "on" | "off"


class Trainer:
    """One worker's model, optimizer and schedule, and what is done with them: restore, a
    training step, validation, save. Callable without Ray (``LocalSession``)."""

    def __init__(self, plan: PretrainPlan, session: RaySession | LocalSession) -> None:
        spec, recipe = plan.spec, plan.spec.recipe
        self.plan, self.session, self.recipe = plan, session, recipe
        self.device = session.device
        self.precision = recipe.precision if recipe.precision != "auto" else (
            "bf16" if self.device.type == "cuda" else "fp32")
        torch.manual_seed(spec.seed)  # identical initial weights on every rank
        options = {"dropout": recipe.dropout} if spec.family != "resnet" else {}
        self.model = build_model(spec.model, num_classes=plan.numbers.head_classes,
                                 image_size=recipe.image_size, **options)
        torch.nn.init.constant_(self.model.head.fc.bias, recipe.head_bias_init)
        self.model.to(self.device)
        self.params = list(self.model.parameters())
        # fused on CUDA: one kernel for the whole update (as bench/gpu_check.py times the step)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, recipe.weight_decay), lr=plan.base_lr,
                                           betas=(recipe.beta1, recipe.beta2), fused=self.device.type == "cuda")
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, recipe.warmup_steps, plan.numbers.steps, recipe.decay))
        self.step, self.best, self.resumed_from = 0, {}, None
        self.probe_sets: dict[str, tuple] = {}  # Probes' datasets, decoded once (probe_data)
        self.restore()
        self.train_model = session.wrap(self.model)
        self.compiled, self.compile_reason = hardware.should_compile(
            plan.compile, self.device, self.remaining_flops() / session.world,
            hardware.peak_tflops(self.device, self.precision))
        if self.compiled:
            self.train_model = torch.compile(self.train_model)

    def remaining_flops(self) -> float:
        """Training FLOPs from the current step to the end of the run (every rank together)."""
        images = (self.plan.numbers.steps - self.step) * self.recipe.batch_size
        return compute.FLOPS_PER_MAC * compute.FORWARD_AND_BACKWARD * self.plan.numbers.forward_macs * images

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def restore(self) -> None:
        """The session's last checkpoint, if any: weights, optimizer, schedule, step, best values and
        this rank's RNG state; else seed this rank's RNG (dropout differs across ranks, reproducibly)."""
        state = self.session.restore(self.device)
        rank = self.session.rank
        if state is None:
            torch.manual_seed(self.plan.spec.seed * 1000 + rank)
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step, self.best, self.resumed_from = state["step"], state["best"], state["step"]
        set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])

    def check_shards(self) -> None:
        """Before the first step: the checksums of this rank's share of the training shards (a
        corrupt shard fails the run now, not hours in); once per storage, see ``check_checksums``."""
        from pipeline.data.verify import check_checksums
        if self.plan.checksum_marks is not None:
            check_checksums(self.plan.data_path, rank=self.session.rank, world_size=self.session.world,
                            marks=self.plan.checksum_marks)

    def batches(self):
        """This rank's training batches from the current step to the end of its epoch."""
        from pipeline.data import LoaderSpec, make_loader
        epoch, position = divmod(self.step, self.plan.numbers.steps_per_epoch)
        spec = LoaderSpec(self.plan.data_path, batch_size=self.plan.micro_batch * self.plan.accum_steps,
                          image_size=self.recipe.image_size, train=True, rank=self.session.rank,
                          world_size=self.session.world, seed=self.plan.spec.seed, epoch=epoch,
                          label_format="multi_hot", min_crop_area=self.recipe.min_crop_area, image_dtype="uint8",
                          on_bad_row=self.plan.on_bad_row, subset_cache=self.plan.subset_cache, **self.plan.subset)
        return make_loader(spec, start_step=position, pin_memory=self.device.type == "cuda",
                           num_workers=self.plan.loader_workers)

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gradients of the batch's mean loss, accumulated over ``accum_steps`` micro-batches, each
        weighted by its share of the batch (DDP syncs gradients on the last one only). Returns the
        loss (on the device)."""
        accum, n = self.plan.accum_steps, len(x)
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        for i, (xs, ys) in enumerate(zip(torch.tensor_split(x, accum), torch.tensor_split(y, accum))):
            last = i == accum - 1 or self.session.world == 1
            no_sync = getattr(self.train_model, "no_sync", None)
            with (no_sync() if not last and no_sync else contextlib.nullcontext()), self.autocast():
                loss = sigmoid_xent(self.train_model(xs), ys) * (len(xs) / n)
            loss.backward()
            total += loss.detach()
        return total

    def on_device(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's images and labels on the device, images normalised there: batches leave the
        loader as uint8 (a quarter of float32's bytes to copy; the float conversion costs a CPU
        0.4-0.7 ms an image, a GPU next to nothing)."""
        from pipeline.data import normalize_images
        x = normalize_images(batch.images.to(self.device, non_blocking=True))
        return x, batch.labels.to(self.device, non_blocking=True)

    def train_step(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on ``batch``; returns (loss, gradient norm), both still on the device
        (reading them every step would stall a GPU)."""
        x, y = self.on_device(batch)
        loss = self.backward(x, y)
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = (torch.nn.utils.clip_grad_norm_(self.params, self.recipe.grad_clip) if self.recipe.grad_clip
                else torch.nn.utils.get_total_norm(grads))
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss, norm

    def evaluate(self) -> dict[str, float]:
        """Validation loss and precision@1 over every rank's share, with the best values so far.
        Runs the unwrapped model: ranks may hold different numbers of batches, and a DDP forward
        can broadcast buffers (a collective every rank must join)."""
        from pipeline.data import LoaderSpec, make_loader
        loader = make_loader(LoaderSpec(self.plan.data_path, split=self.plan.val_split, train=False,
                                        rank=self.session.rank, world_size=self.session.world,
                                        batch_size=self.plan.micro_batch, image_size=self.recipe.image_size,
                                        count=self.recipe.val_images, label_format="multi_hot", image_dtype="uint8"))
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        counts = torch.zeros(self.plan.numbers.head_classes, dtype=torch.float64, device=self.device)
        n = 0
        self.model.eval()
        with torch.no_grad():
            for batch in loader:
                x, y = self.on_device(batch)
                with self.autocast():
                    logits = self.model(x)
                sums[0] += F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none").sum()
                sums[1] += precision_at_1(logits, y)
                counts += y.sum(0)
                n += len(y)
        self.model.train()
        most_common = float(_all_reduce(counts).max())
        loss_sum, hits, n = _all_reduce_sum([sums[0], sums[1], n], self.device)
        values = {"pretrain/val_loss": loss_sum / max(n, 1), "pretrain/val_prec1": hits / max(n, 1)}
        # what always answering the most common class scores: the line a run must rise above
        baseline = {"pretrain/val_prec1_baseline": most_common / max(n, 1)}
        for key, value in values.items():
            best = self.best.get(f"{key}_best")
            if best is None or (value < best if key.endswith("loss") else value > best):
                self.best[f"{key}_best"] = value
        return {**values, **baseline, **self.best}

    def probe(self, probes: Probes) -> dict[str, float]:
        """Rank 0: the few-shot accuracies of the current model on ``probes``' datasets, with the
        compute spent so far (``Probes``); {} on other ranks or without datasets."""
        if self.session.rank != 0 or not probes.datasets:
            return {}
        from pipeline.fewshot import fewshot_accuracy
        from pipeline.features import features_of
        out = {"curve/exaflops": compute.pretrain_exaflops(self.plan.numbers.forward_macs,
                                                           self.step * self.recipe.batch_size)}
        for name, path in probes.datasets:
            (train_x, train_y), (test_x, test_y), classes = self.probe_data(path, max(probes.shots))
            found = fewshot_accuracy(features_of(self.model, train_x, self.device), train_y,
                                     features_of(self.model, test_x, self.device), test_y, classes,
                                     shots=probes.shots, seeds=probes.seeds)
            out.update({f"curve/fewshot/{name}/{k}shot": r["mean"] for (k, _), r in found.items()})
        self.model.train()
        return out

    def probe_data(self, path: str, shots: int) -> tuple[tuple, tuple, int]:
        """A probe set's train images and labels (``shots`` per class, drawn once: all a probe's
        draws need), its test images and labels, and its class count; decoded on first use."""
        from pipeline.features import probe_sets
        if path not in self.probe_sets:
            self.probe_sets[path] = probe_sets(path, self.recipe.image_size, shots)
        return self.probe_sets[path]

    def save(self, metrics: dict[str, float]) -> None:
        """A checkpoint (model, optimizer, schedule, step, best values, every rank's RNG state, the
        spec), reported with ``metrics``; every rank takes part, rank 0 writes."""
        states = _gather(rng_state())  # every rank's RNG, so that dropout resumes exactly too
        if self.session.rank != 0:
            self.session.report(metrics, None)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "schedule": self.schedule.state_dict(), "step": self.step, "best": self.best,
                        "rng": states, "spec": self.plan.spec.model_dump(mode="json")}, Path(folder) / STATE_FILE)
            self.session.report(metrics, folder)


class Progress:
    """The loop's logging: loss and gradient norm averaged over a window of steps and over ranks,
    throughput (images/s, MFU, the share of time spent waiting for data, peak memory, the time to
    the first step) and compute so far; rank 0 sends metrics to MLflow in batches (steps an
    interrupted attempt already logged are not logged twice) and prints one line per window."""

    def __init__(self, plan: PretrainPlan, trainer: Trainer, stop_at: int, started: float) -> None:
        self.plan, self.trainer, self.stop_at = plan, trainer, stop_at
        self.clock = StepClock(started, trainer.device)
        self.rank, self.world = trainer.session.rank, trainer.session.world
        self.peak = hardware.peak_tflops(trainer.device, trainer.precision)
        self.logger, self.skipped_total = None, 0
        if self.rank == 0 and plan.mlflow_run_id:
            logged = tracking.last_step(plan.tracking_uri, plan.mlflow_run_id, "pretrain/loss")
            self.logger = tracking.MetricLogger(plan.tracking_uri, plan.mlflow_run_id, logged_through=logged)
        self._new_window()
        if self.rank == 0 and trainer.resumed_from is not None:
            self._print(f"resumed from the checkpoint at step {trainer.resumed_from}/{plan.numbers.steps}")

    def _new_window(self) -> None:
        device = self.trainer.device
        self.loss, self.grad_norm = (torch.zeros((), dtype=torch.float32, device=device) for _ in range(2))
        self.steps, self.skipped, self.start = 0, 0, time.perf_counter()

    def _print(self, text: str, **progress: int) -> None:
        console.say(self.plan.spec.label, text, **progress)

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, batch) -> None:
        self.loss += loss
        self.grad_norm += grad_norm
        self.skipped += len(batch.bad_rows)
        self.steps += 1
        self.clock.stepped()

    def window(self) -> dict[str, float]:
        """The window's metrics (every rank must call this at the same step), then a new window."""
        step, batch, macs = self.trainer.step, self.plan.spec.recipe.batch_size, self.plan.numbers.forward_macs
        elapsed = time.perf_counter() - self.start
        loss_sum, norm_sum, skipped = _all_reduce_sum([self.loss, self.grad_norm, self.skipped], self.trainer.device)
        waited = self.clock.window_waited
        self.clock.synced(self.steps)
        images_per_s = self.steps * batch / max(elapsed, 1e-9)
        achieved = self.tflops(images_per_s)
        metrics = {"pretrain/loss": loss_sum / self.world / self.steps,
                   "pretrain/lr": self.trainer.schedule.get_last_lr()[0],
                   "pretrain/grad_norm": norm_sum / self.world / self.steps,
                   "throughput/images_per_s": images_per_s, "throughput/tflops": achieved,
                   "throughput/data_wait": waited / max(elapsed, 1e-9),
                   "throughput/peak_memory_gib": hardware.peak_memory_gib(self.trainer.device),
                   "throughput/first_step_s": self.clock.first_step_s or 0.0,
                   "compute/images_seen": step * batch,
                   "compute/exaflops": compute.pretrain_exaflops(macs, step * batch),
                   "compute/gflops": compute.pretrain_exaflops(macs, step * batch) * GFLOPS_PER_EXAFLOP,
                   "pretrain/epoch": step / self.plan.numbers.steps_per_epoch}
        if self.peak:
            metrics["throughput/mfu"] = achieved / (self.peak * self.world)
        if self.plan.on_bad_row == "skip":
            self.skipped_total += int(skipped)
            metrics["data/skipped_rows"] = self.skipped_total
        self._new_window()
        return metrics

    def tflops(self, images_per_s: float) -> float:
        """Training TFLOP/s at ``images_per_s`` (forward and backward, every rank together)."""
        macs = self.plan.numbers.forward_macs
        return compute.FLOPS_PER_MAC * compute.FORWARD_AND_BACKWARD * macs * images_per_s / 1e12

    def summary(self) -> dict[str, Any]:
        """This attempt's throughput (``StepClock.summary``) and whether it was compiled."""
        trainer = self.trainer
        out = self.clock.summary(self.plan.spec.recipe.batch_size, self.tflops,
                                 self.peak * self.world if self.peak else None)
        return {**out, "compiled": trainer.compiled, "compile_reason": trainer.compile_reason}

    def say_summary(self, summary: dict[str, Any]) -> None:
        """Rank 0: one line with :meth:`summary`'s numbers."""
        if self.rank == 0 and summary["first_step_s"] is not None:
            self._print(summary_line(summary))

    def emit(self, metrics: dict[str, float]) -> None:
        """Rank 0: ``metrics`` to MLflow; after a window, send the batch and print a line."""
        if self.rank != 0 or not metrics:
            return
        step = self.trainer.step
        if self.logger is not None:
            self.logger.log(step, metrics)
        if "pretrain/loss" in metrics:
            self.flush()
            eta = (self.stop_at - step) * self.plan.spec.recipe.batch_size / max(metrics["throughput/images_per_s"], 1e-9)
            val = f" val_prec1 {metrics['pretrain/val_prec1']:.3f}" if "pretrain/val_prec1" in metrics else ""
            val += f" skipped rows {metrics['data/skipped_rows']}" if metrics.get("data/skipped_rows") else ""
            self._print(f"step {step}/{self.plan.numbers.steps} loss {metrics['pretrain/loss']:.4f} "
                        f"lr {metrics['pretrain/lr']:.2e} {metrics['throughput/images_per_s']:.1f} img/s{val} eta {eta:.0f}s",
                        step=step, total=self.plan.numbers.steps)

    def flush(self) -> None:
        if self.logger is not None:
            self.logger.flush()


def train_loop_per_worker(config: dict) -> dict[str, Any]:
    """The Ray Train entry point of :func:`train_loop`: ``config`` is {"plan": ..., "hooks": ...}."""
    trace.mark_process_start("train worker process started")
    trace.mark("train worker function entered")
    quiet_ray_train_logs()
    session, plan = RaySession(), config["plan"]
    if plan.loader_workers is None:  # from the CPUs Ray gave this worker, the rest train (torch threads)
        plan = dataclasses.replace(plan, loader_workers=hardware.loader_workers(hardware.assigned_cpus(),
                                                                                session.device.type))
    hardware.use_assigned_cpus(plan.loader_workers or 0)
    return train_loop(plan, session, config.get("hooks") or Hooks())


def train_loop(plan: PretrainPlan, session: RaySession | LocalSession, hooks: Hooks = Hooks()) -> dict[str, Any]:
    """Pretrain from the session's last checkpoint (or from scratch) to the plan's last step."""
    started = time.perf_counter()
    trainer, recipe, total = Trainer(plan, session), plan.spec.recipe, plan.numbers.steps
    trace.mark("trainer built")
    trainer.check_shards()
    stop_at = min(total, hooks.stop_after_steps or total)
    progress = Progress(plan, trainer, stop_at, started)
    monitored = plan.system_metrics and session.rank == 0 and plan.mlflow_run_id is not None
    with tracking.system_metrics(plan.tracking_uri, plan.mlflow_run_id, enabled=monitored):
        train_steps(plan, trainer, session, hooks, progress, stop_at)
    progress.flush()
    trace.mark("last step done")
    throughput = progress.summary()
    progress.say_summary(throughput)
    return {"step": trainer.step, "total_steps": total, "images_seen": trainer.step * recipe.batch_size,
            "resumed_from": trainer.resumed_from, "best": trainer.best, "skipped_rows": progress.skipped_total,
            "throughput": throughput}


def train_steps(plan: PretrainPlan, trainer: Trainer, session: RaySession | LocalSession, hooks: Hooks,
                progress: Progress, stop_at: int) -> None:
    """The loop itself: steps, and at their intervals logs, validation, probes and checkpoints."""
    recipe, total = plan.spec.recipe, plan.numbers.steps
    while trainer.step < stop_at:
        for batch in progress.clock.batches(trainer.batches()):
            if hooks.on_batch is not None:
                hooks.on_batch(session.rank, trainer.step, batch)
            progress.add(*trainer.train_step(batch), batch)
            step, last = trainer.step, trainer.step == stop_at
            metrics = progress.window() if step % recipe.log_every == 0 or last else {}
            if step % recipe.val_every == 0 or step == total:
                metrics.update(trainer.evaluate() if plan.val_split else {})
                metrics.update(trainer.probe(hooks.probes))
            progress.emit(metrics)
            if step % recipe.checkpoint_every == 0 or last:
                trainer.save({"step": step, **metrics})
            if last:
                break


# ----------------------------------------------------------------------------- the driver

def plan_run(spec: RunSpec, data_path: str, launch: Launch) -> PretrainPlan:
    """The run's plan from the spec and the dataset, checked up front (batch split over workers,
    at least one batch per epoch, a learning rate)."""
    from pipeline.data import open_dataset
    recipe = spec.recipe
    dataset, workers = open_dataset(data_path), launch.workers
    # Sizes from the manifest alone; one listing of the folder finds a missing or truncated shard
    # before anything starts (not a footer read per shard: 100k requests at 300M images).
    dataset.check_listed_sizes("train")
    subset = spec.subset_selector(dataset.usable_rows("train"))
    rows = dataset.subset_rows("train", **subset)
    if launch.on_bad_row not in ("raise", "skip"):
        raise ValueError(f"on_bad_row must be 'raise' or 'skip', got {launch.on_bad_row!r}")
    if launch.compile not in hardware.COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(hardware.COMPILE_MODES)}, got {launch.compile!r}")
    if recipe.batch_size % workers:
        raise ValueError(f"batch size {recipe.batch_size} is not divisible by {workers} workers")
    per_rank = recipe.batch_size // workers
    micro = min(recipe.micro_batch_size or per_rank, per_rank)
    if per_rank % micro:
        raise ValueError(f"per-worker batch {per_rank} is not a multiple of micro_batch_size {micro}")
    if rows < recipe.batch_size:
        raise ValueError(f"subset {spec.subset!r} of {data_path} has {rows} images, fewer than one global "
                         f"batch of {recipe.batch_size}: use a smaller batch or a larger subset")
    base_lr, lr_source = spec.base_lr()
    return PretrainPlan(spec=spec, data_path=store.resolve(data_path),
                        numbers=run_numbers(spec, rows, dataset.num_classes), micro_batch=micro,
                        accum_steps=per_rank // micro, base_lr=base_lr, base_lr_source=lr_source,
                        val_split="val" if "val" in dataset.splits else None, subset=subset,
                        on_bad_row=launch.on_bad_row, system_metrics=launch.system_metrics, compile=launch.compile)


GFLOPS_PER_EXAFLOP = 1e9  # compute/gflops: micro runs read 443.5, not 4.435e-07 cut off in MLflow's table


def run_params(plan: PretrainPlan, workers: int) -> dict[str, Any]:
    """Flat params, named identically across runs (MLflow compare view and scatter plots). Epochs
    and steps are both numbers whichever the study file gave; compute is in GFLOPs and exaFLOPs."""
    spec, r, n = plan.spec, plan.spec.recipe, plan.numbers
    exaflops = n.exaflops
    return {"run_spec_id": spec.id, "model": spec.model_name, "family": spec.family, "dataset": spec.dataset,
            "subset": spec.subset, "subset_images": n.subset_images, "length": spec.length,
            "epochs": f"{n.images_seen / n.subset_images:.4g}", "steps": n.steps,
            "exaflops": f"{exaflops:.4g}", "gflops": f"{exaflops * GFLOPS_PER_EXAFLOP:.4g}",
            "batch_size": r.batch_size, "base_lr": plan.base_lr, "base_lr_source": plan.base_lr_source,
            "warmup_steps": r.warmup_steps, "decay": r.decay, "weight_decay": r.weight_decay,
            "grad_clip": r.grad_clip, "image_size": r.image_size, "dropout": r.dropout, "seed": spec.seed,
            "workers": workers, "params": n.params, "forward_gmacs": n.forward_macs / 1e9,
            "num_classes": n.head_classes, "on_bad_row": plan.on_bad_row}


def data_error_of(err: BaseException) -> Exception | None:
    """The worker's data error behind a failed Train run, if that is what failed it (Ray Train
    keeps each worker's own exception in ``worker_failures``, wrapped with its traceback)."""
    from pipeline.data import DataError
    for failure in (getattr(err, "worker_failures", None) or {}).values():
        cause = getattr(failure, "_base_exc", failure)
        if isinstance(cause, DataError):
            return cause
    return None


@functools.cache
def torch_trainer() -> type:
    """Ray Train's TorchTrainer, less the Ray Data shard provider when a run passes no Ray Dataset
    (ours read Parquet themselves): Ray Train 2.60 starts a DatasetManager actor for every run
    whatever its datasets: one more process, which imports Ray Data (1.3 s of CPU for that import alone
    on the 2-core dev box). On a Ray without that callback the plain TorchTrainer is used."""
    from ray.train.torch import TorchTrainer
    try:
        from ray.train.v2._internal.callbacks import DatasetsCallback
    except ImportError:
        return TorchTrainer

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            return callbacks if self.datasets else [c for c in callbacks if not isinstance(c, DatasetsCallback)]
    return LeanTorchTrainer


def fit_on_ray(plan: PretrainPlan, hooks: Hooks, storage: str, launch: Launch) -> tuple[dict[str, Any], str | None]:
    """Run the loop on Ray Train; the Train run is named after the RunSpec (re-running resumes).
    Returns the loop's summary and the URI of the last checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    ensure_ray()
    resources = {"CPU": launch.cpus_per_worker, **({"GPU": 1} if launch.use_gpu else {})}
    for attempt in range(launch.max_failures + 1):
        # Each attempt is one Train run of the same name: it resumes from the last checkpoint.
        # Failures are retried here rather than inside Ray Train, which cannot tell bad data
        # (the same rows fail the same way every time) from a lost worker.
        trainer = torch_trainer()(
            train_loop_per_worker, train_loop_config={"plan": plan, "hooks": hooks},
            scaling_config=ScalingConfig(num_workers=launch.workers, use_gpu=launch.use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(name=f"pretrain-{plan.spec.id}", **store.ray_storage(storage),
                                 failure_config=FailureConfig(max_failures=0),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)))
        try:
            result = fit_off_main_thread(trainer)
            break
        except Exception as err:
            permanent = data_error_of(err)
            if permanent is not None:
                raise permanent from None
            if attempt == launch.max_failures:
                raise
            console.say(plan.spec.label, f"pretraining attempt {attempt + 1} failed ({cli.one_line(err)[:300]}); "
                        f"resuming from its last checkpoint ({launch.max_failures - attempt} retries left)")
    summary = dict(getattr(result, "return_value", None) or {})
    checkpoint_uri = store.with_scheme_of(storage, result.checkpoint.path) if result.checkpoint else None
    return summary, checkpoint_uri


def fit_in_process(plan: PretrainPlan, hooks: Hooks, storage: str) -> tuple[dict[str, Any], str | None]:
    """The same loop in this process (``LocalSession``); returns what :func:`fit_on_ray` does."""
    session = LocalSession(Path(storage) / f"pretrain-{plan.spec.id}")
    summary = train_loop(plan, session, hooks)
    found = session.checkpoints()
    return summary, str(found[-1]) if found else None


def start_tracking(plan: PretrainPlan, storage: str, tracking_uri: str, launch: Launch,
                   parent_run_id: str | None) -> PretrainPlan:
    """The RunSpec's MLflow run (found again on re-runs), with its params; the plan that logs to it."""
    spec = plan.spec
    tracking.init_store(tracking_uri)
    run_id = tracking.start_run(
        tracking_uri, spec.study, spec.id, run_name=spec.label,
        tags={"family": spec.family, "model": spec.model_name, "subset": spec.subset, "length": spec.length,
              tracking.NOTE_TAG: run_description(plan), **tracking.source_tags()},
        params=run_params(plan, launch.workers), artifact_root=store.join(storage, "artifacts"),
        parent_run_id=parent_run_id)
    record_inputs(plan, tracking_uri, run_id)
    return dataclasses.replace(plan, tracking_uri=tracking_uri, mlflow_run_id=run_id)


def run_description(plan: PretrainPlan) -> str:
    """The run's description on its MLflow page: what is trained on what, for how long, at what cost."""
    spec, n, r = plan.spec, plan.numbers, plan.spec.recipe
    return (f"{spec.model_name} ({n.params:,} params) pretrained on `{spec.dataset}` ({spec.subset}: "
            f"{n.subset_images:,} images) for {n.steps:,} steps ({n.images_seen / n.subset_images:.3g} epochs) at batch "
            f"{r.batch_size}, base LR {plan.base_lr:g} ({plan.base_lr_source}): {n.exaflops:.3g} exaFLOPs. Study "
            f"`{spec.study}`, RunSpec `{spec.id}` (resolved in `run_spec.json`).")


def record_inputs(plan: PretrainPlan, tracking_uri: str, run_id: str) -> None:
    """What the run is made of, on its MLflow run: the resolved RunSpec and plan numbers
    (run_spec.json) and the pretraining data as a dataset input (manifest digest, subset)."""
    from pipeline.data import open_dataset
    spec, n = plan.spec, plan.numbers
    tracking.log_json(tracking_uri, run_id, {"id": spec.id, "spec": spec.model_dump(mode="json"),
                                             "numbers": dataclasses.asdict(n), "base_lr": plan.base_lr,
                                             "base_lr_source": plan.base_lr_source, "subset": plan.subset},
                      "run_spec.json")
    dataset = open_dataset(plan.data_path)
    tracking.log_datasets(tracking_uri, run_id, [tracking.DatasetRecord(
        dataset.name, plan.data_path, dataset.digest, "pretrain",
        {"split": "train", "subset": spec.subset, "subset_images": n.subset_images})])


def build_subset(plan: PretrainPlan) -> None:
    """The training subset built here, once, into the plan's subset cache: the ranks then read it
    instead of every shard's footer (at 100k shards on a store: minutes of requests a rank), and
    the next runs on the same subset build nothing."""
    from pipeline.data import open_dataset
    from pipeline.data.format import cached_subset
    cached_subset(open_dataset(plan.data_path), plan.subset_cache, split="train", on_unreadable=plan.on_bad_row,
                  **plan.subset)


def checksum_marks(storage: str, data_path: str) -> str:
    """Where the shards of ``data_path`` are marked once their checksums were checked
    (``Trainer.check_shards``): one folder per dataset location, in the storage."""
    return store.join(storage, "checksums-checked", hashlib.sha1(store.resolve(data_path).encode()).hexdigest()[:16])


def pretrain(spec: RunSpec, data_path: str, *, storage: str, tracking_uri: str | None = None,
             launch: Launch = Launch(), hooks: Hooks = Hooks(), finish: bool = True,
             parent_run_id: str | None = None) -> dict[str, Any]:
    """Run (or resume) the pretraining of ``spec``. Returns a summary with the MLflow run id and
    the final checkpoint's URI. ``parent_run_id``: the study-level run that groups this one;
    ``finish=False`` leaves the MLflow run open for the transfer stages."""
    if launch.in_process and (launch.workers != 1 or store.is_remote(storage)):
        raise ValueError("in_process pretraining runs one worker on local storage")
    storage = store.resolve(storage)
    tracking_uri = tracking_uri or tracking.default_tracking_uri(storage)
    plan = dataclasses.replace(plan_run(spec, data_path, launch), checksum_marks=checksum_marks(storage, data_path),
                               subset_cache=store.join(storage, "subsets"))
    plan = start_tracking(plan, storage, tracking_uri, launch, parent_run_id)
    trace.mark("pretraining run tracked")
    run_id, total = plan.mlflow_run_id, plan.numbers.steps
    with tracking.lease(tracking_uri, run_id):  # one writer: another live process holding it raises RunHeld
        try:
            build_subset(plan)
            trace.mark("fit started")
            summary, checkpoint_uri = (fit_in_process(plan, hooks, storage) if launch.in_process
                                       else fit_on_ray(plan, hooks, storage, launch))
        except KeyboardInterrupt:  # its checkpoints are kept: the same command resumes it
            tracking.finish_run(tracking_uri, run_id, "KILLED")
            raise
        except Exception:
            tracking.set_tags(tracking_uri, run_id, {tracking.PRETRAIN_STATUS_TAG: tracking.Status.FAILED})
            tracking.finish_run(tracking_uri, run_id, "FAILED")
            raise
        trace.mark("fit returned")
        done = summary.get("step") == total
        tracking.set_tags(tracking_uri, run_id, {tracking.CHECKPOINT_TAG: checkpoint_uri, tracking.PRETRAIN_STATUS_TAG:
                                                 tracking.Status.DONE if done else tracking.Status.PARTIAL})
        if done and finish:
            tracking.finish_run(tracking_uri, run_id)
    return {**summary, "mlflow_run_id": run_id, "checkpoint_uri": checkpoint_uri, "tracking_uri": tracking_uri,
            "done": done, "total_steps": total}


# CLI flag -> (Recipe field, type); the defaults and help are the Recipe's own, said once there.
# Flags are the fields' names (--base-lr is params.base_lr in MLflow); --lr is kept as an alias.
RECIPE_FLAGS = {"--batch-size": ("batch_size", int), "--micro-batch-size": ("micro_batch_size", int),
                "--base-lr": ("base_lr", float), "--warmup-steps": ("warmup_steps", int),
                "--weight-decay": ("weight_decay", float), "--image-size": ("image_size", int),
                "--min-crop-area": ("min_crop_area", float), "--val-every": ("val_every", int),
                "--checkpoint-every": ("checkpoint_every", int), "--log-every": ("log_every", int)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.pretrain",
                                     description="Pretrain one model on one dataset subset with Ray Train; "
                                                 "metrics go to MLflow. Re-running the same command resumes.")
    parser.add_argument("--model", required=True, help="paper name (ViT-B/16, R50x1, R50+ViT-B/16) or a JSON shape")
    parser.add_argument("--data", required=True, help="dataset folder (python -m pipeline.data synth ... makes one)")
    parser.add_argument("--subset", default="full", help="'full', a count (30M, 9000) or a fraction (0.1)")
    length = parser.add_mutually_exclusive_group(required=True)
    length.add_argument("--epochs", type=float, help="passes over the subset (the paper's unit)")
    length.add_argument("--steps", type=int, help="optimizer steps (instead of --epochs)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers; the batch is split over them")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    for flag, (field, kind) in RECIPE_FLAGS.items():
        info = Recipe.model_fields[field]
        default = f" (default {info.default})" if info.default is not None else ""
        aliases = ("--lr",) if field == "base_lr" else ()
        parser.add_argument(flag, *aliases, dest=field, type=kind,
                            help=f"{info.description or field.replace('_', ' ')}{default}")
    parser.add_argument("--compile", nargs="?", const="on", default="auto", choices=hardware.COMPILE_MODES,
                        help="torch.compile the model: auto (default: on a GPU when the run is long enough to repay "
                        "the compile time, pipeline/hardware.py), on (--compile alone) or off")
    parser.add_argument("--on-bad-row", choices=("raise", "skip"), default=Launch.on_bad_row,
                        help="a row that cannot be decoded or labelled: stop the run at once (raise), or drop it and "
                        "count it (skip: data/skipped_rows in MLflow)")
    parser.add_argument("--seed", type=int, default=0, help="weights' initialisation (the data order has the dataset's)")
    parser.add_argument("--study", default="adhoc", help="MLflow experiment (default adhoc)")
    parser.add_argument("--storage", default=os.environ.get("VIT_SCALING_STORAGE", "runs"),
                        help="checkpoints, Ray Train folders and the default MLflow DB (default $VIT_SCALING_STORAGE "
                        "or ./runs)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="MLflow (default $MLFLOW_TRACKING_URI or SQLite under --storage)")
    parser.add_argument("--quiet", action="store_true", help="no progress line per logging window")
    parser.add_argument("--no-system-metrics", dest="system_metrics", action="store_false",
                        help="do not log the workers' CPU, memory and GPU use to MLflow (every 10 s)")
    cli.add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console.quiet_libraries()
    try:
        model = json.loads(args.model) if args.model.lstrip().startswith("{") else args.model
        given = {field: getattr(args, field) for field, _ in RECIPE_FLAGS.values() if getattr(args, field) is not None}
        recipe = Recipe(**given)
        from pipeline.data import open_dataset
        spec = RunSpec(study=args.study, model=model, dataset=open_dataset(args.data).name, subset=args.subset,
                       epochs=args.epochs, steps=args.steps, recipe=recipe, seed=args.seed)
        uri = args.tracking_uri or tracking.default_tracking_uri(args.storage)
    except Exception as err:  # validation errors say which field and why
        parser.error(str(err))
    try:
        spec.base_lr()
    except ValueError:  # the message names the study key; here it is a flag
        parser.error(f"Table 3 gives no learning rate for {spec.model_name}: give one with --base-lr")
    try:
        with console.Board(quiet=args.quiet):
            summary = pretrain(spec, args.data, storage=args.storage, tracking_uri=uri,
                               launch=Launch(workers=args.workers, use_gpu=args.gpu, on_bad_row=args.on_bad_row,
                                             compile=args.compile, system_metrics=args.system_metrics))
    except KeyboardInterrupt:
        print("[pretrain] interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        raise cli.Interrupted from None
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
