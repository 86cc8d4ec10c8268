"""The pretraining loop, run by every worker (rank): :class:`PretrainPlan` (one frozen, typed
object: everything a worker needs, built on the driver by ``pipeline.pretrain.launch.plan_run``),
:class:`Trainer` (model, optimizer and schedule: ``restore``, ``train_step``, ``evaluate``,
``probe``, ``save``), :class:`Progress` (window metrics, MLflow, console) and :func:`train_loop`,
which strings them together. The loop sees where it runs only through a ``Session``
(``pipeline.pretrain.session``); tests attach :class:`Hooks`.

The global batch is fixed by the recipe; each of W workers takes B/W, split into micro-batches
(gradient accumulation) when ``micro_batch_size`` is smaller. Checkpoints (every
``checkpoint_every`` steps and at the end) hold the model, optimizer, schedule, the step (which
fixes the data position) and every rank's RNG state, so a resumed run continues exactly where it
stopped. Metrics go to the RunSpec's MLflow run from rank 0, in batches."""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from models import build_model
from pipeline import compute, console, exits, hardware, trace, tracking
from pipeline.data import normalize_images
from pipeline.data.loader import LoaderSpec, make_loader
from pipeline.data.verify import check_checksums
from pipeline.planning import RunNumbers
from pipeline.pretrain.checkpoint import STATE_FILE, rng_state, set_rng_state
from pipeline.pretrain.recipe import lr_factor, param_groups, precision_at_1, sigmoid_xent
from pipeline.pretrain.session import RaySession, Session, all_reduce, all_reduce_sum, gather
from pipeline.raycluster import quiet_ray_train_logs
from pipeline.spec import RunSpec
from pipeline.throughput import StepClock, summary_line
from pipeline.transfer.base import Target
from pipeline.transfer.fewshot import FewShot, FewshotSettings
from pipeline.transfer.registry import evaluate


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
    subset_cache: str | None = None    # where the training subset is kept once built (subsets.cached_subset)
    system_metrics: bool = True  # rank 0 logs MLflow's system metrics (tracking.system_metrics)
    compile: str = "auto"        # torch.compile: "auto" (on CUDA when it repays, pipeline.hardware) | "on" | "off"
    loader_workers: int | None = None  # decode processes a rank (None: from the CPUs Ray gives it, else the
                                       # loader's default; hardware.loader_workers)


@dataclass(frozen=True)
class Probes:
    """Few-shot probes during pretraining, for learning curves (as big_vision runs its evaluators
    every N steps): at every validation step and at the end, rank 0 runs the transfer stage's
    few-shot evaluator (``pipeline.transfer.fewshot.FewShot.probe_live``) on the live model and logs
    ``curve/fewshot/<name>/<k>shot`` with ``curve/exaflops`` (the compute spent so far) at that step.
    The images are decoded once per process and held in memory: meant for small downstream sets
    (digits, Pets, Flowers), not ImageNet."""
    datasets: tuple[tuple[str, str], ...] = ()   # (name, location)
    settings: FewshotSettings = FewshotSettings()  # shots; seeds: draws per point (ridge solves only: cheap)
    # At the end of a finished run, rank 0 also runs the transfer stage's few-shot protocol on the final
    # weights where they are (``fewshot/<name>/<k>shot`` on the run, as ``pipeline.transfer.evaluate``
    # records it): a run chain then loads no checkpoint in another process for it (bench/RESULTS.md)
    final: bool = False

    def fewshot(self) -> FewShot:
        """The transfer stage's few-shot evaluator on these datasets and settings."""
        return FewShot(datasets=tuple(name for name, _ in self.datasets), settings=self.settings)


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


class Trainer:
    """One worker's model, optimizer and schedule, and what is done with them: restore, a
    training step, validation, save. Callable without Ray (``LocalSession``)."""

    def __init__(self, plan: PretrainPlan, session: Session) -> None:
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
        """Before the first step: the checksums of this rank's share of the training shards and of the
        validation shards (a corrupt shard fails the run now, not at its first validation or hours
        in); once per storage, see ``check_checksums``."""
        if self.plan.checksum_marks is None:
            return
        for split in ("train", self.plan.val_split) if self.plan.val_split else ("train",):
            check_checksums(self.plan.data_path, split, rank=self.session.rank, world_size=self.session.world,
                            marks=self.plan.checksum_marks)

    def batches(self):
        """This rank's training batches from the current step to the end of its epoch."""
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
        most_common = float(all_reduce(counts).max())
        loss_sum, hits, n = all_reduce_sum([sums[0], sums[1], n], self.device)
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
        out = {"curve/exaflops": compute.pretrain_exaflops(self.plan.numbers.forward_macs,
                                                           self.step * self.recipe.batch_size)}
        fewshot = probes.fewshot()
        for name, path in probes.datasets:
            out.update(fewshot.probe_live(self.model, self.device, self.recipe.image_size, name, path))
        self.model.train()
        return out

    def final_fewshot(self, probes: Probes) -> None:
        """Rank 0 of a run at its last step: the few-shot protocol on ``probes``' datasets with the
        final weights, recorded on the run (datasets whose metrics it holds are skipped: a resumed run).
        A failure here fails no pretraining: it is said, and the chain's transfer stage runs the protocol
        on the checkpoint, where a failure is the transfer's, as before."""
        if self.session.rank != 0 or not probes.final or not probes.datasets:
            return
        target = Target(f"{self.plan.spec.label} at step {self.step}", "", tracking_uri=self.plan.tracking_uri,
                        run_id=self.plan.mlflow_run_id, label=self.plan.spec.label, model=self.model)
        try:
            evaluate(target, [probes.fewshot()], dict(probes.datasets), skip_recorded=True)
        except Exception as err:
            console.say(self.plan.spec.label, f"the few-shot protocol at the end of pretraining failed "
                                              f"({exits.one_line(err)[:300]}): the transfer stage runs it")

    def save(self, metrics: dict[str, float]) -> None:
        """A checkpoint (model, optimizer, schedule, step, best values, every rank's RNG state, the
        spec), reported with ``metrics``; every rank takes part, rank 0 writes."""
        states = gather(rng_state())  # every rank's RNG, so that dropout resumes exactly too
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
        loss_sum, norm_sum, skipped = all_reduce_sum([self.loss, self.grad_norm, self.skipped], self.trainer.device)
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
                   "compute/gflops": compute.pretrain_exaflops(macs, step * batch) * compute.GFLOPS_PER_EXAFLOP,
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


def train_loop(plan: PretrainPlan, session: Session, hooks: Hooks = Hooks()) -> dict[str, Any]:
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
    if trainer.step == total:
        trainer.final_fewshot(hooks.probes)
    throughput = progress.summary()
    progress.say_summary(throughput)
    return {"step": trainer.step, "total_steps": total, "images_seen": trainer.step * recipe.batch_size,
            "resumed_from": trainer.resumed_from, "best": trainer.best, "skipped_rows": progress.skipped_total,
            "throughput": throughput}


def train_steps(plan: PretrainPlan, trainer: Trainer, session: Session, hooks: Hooks,
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

