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
same loop in the calling process without Ray (``pretrain(..., in_process=True)``).

CLI: python -m pipeline.pretrain --model NAME --data PATH [--subset 30M] [--epochs E | --steps S] ...
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models import build_model
from pipeline import compute, tracking
from pipeline import storage as store
from pipeline.spec import Recipe, RunSpec

# Dense bf16 peak per device (TFLOP/s) for MFU; unknown devices get no MFU.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
STATE_FILE = "state.pt"


def state_file(checkpoint: str | os.PathLike) -> Path:
    """The state file of a pretraining checkpoint given as its folder or as the file itself."""
    path = Path(checkpoint)
    return path / STATE_FILE if path.is_dir() else path


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


def peak_tflops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda" or precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def use_assigned_cpus() -> int | None:
    """In a Ray task or actor, let torch use as many threads as CPUs Ray gave it (at least one).
    Threads beyond a worker's share spin-wait on cores that other workers hold: two Train workers
    of 2 threads each on 2 cores trained a micro ViT 2.2x slower than with 1 thread each (106 s vs
    47 s, tests/test_pretrain.py). Elsewhere (the driver, a zero-CPU task) nothing changes."""
    try:
        import ray
        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not in a Ray worker
        return None
    if not cpus:
        return None
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    return threads


# ----------------------------------------------------------------------------- the worker loop

def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_sum(values: list, device) -> list[float]:
    """Sum numbers (Python floats or 0-d tensors) over all ranks; one host sync for all of them."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    if _distributed():
        torch.distributed.all_reduce(t)
    return t.tolist()


def _gather(obj):
    if not _distributed():
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def validate(model, config: dict, rank: int, world: int, device, autocast) -> dict[str, float]:
    from pipeline.data import make_loader
    recipe = Recipe.model_validate(config["spec"]["recipe"])
    loader = make_loader(config["data_path"], split=config["val_split"], train=False, rank=rank,
                         world_size=world, batch_size=config["micro_batch"], image_size=recipe.image_size,
                         count=recipe.val_images, label_format="multi_hot")
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    hits = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    model.eval()
    with torch.no_grad():
        for batch in loader:
            x, y = batch.images.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
            with autocast():
                logits = model(x)
            loss_sum += F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none").sum()
            hits += precision_at_1(logits, y)
            n += len(y)
    model.train()
    loss_sum, hits, n = _all_reduce_sum([loss_sum, hits, n], device)
    return {"pretrain/val_loss": loss_sum / max(n, 1), "pretrain/val_prec1": hits / max(n, 1)}


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
            return torch.load(state_file(folder), map_location=device, weights_only=False)

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
        return torch.load(state_file(found[-1]), map_location=device, weights_only=False) if found else None

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


def train_loop_per_worker(config: dict) -> dict[str, Any]:
    """The Ray Train entry point of :func:`train_loop`."""
    quiet_ray_train_logs()
    use_assigned_cpus()
    return train_loop(config, RaySession())


def train_loop(config: dict, session: RaySession | LocalSession) -> dict[str, Any]:
    from pipeline.data import make_loader

    spec = RunSpec.model_validate(config["spec"])
    recipe = spec.recipe
    rank, world, device = session.rank, session.world, session.device
    precision = recipe.precision if recipe.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    total_steps, micro, accum = config["total_steps"], config["micro_batch"], config["accum_steps"]
    per_rank = micro * accum

    torch.manual_seed(spec.seed)  # identical initial weights on every rank
    options = {"dropout": recipe.dropout} if spec.family != "resnet" else {}
    model = build_model(spec.model, num_classes=config["num_classes"], image_size=recipe.image_size, **options)
    torch.nn.init.constant_(model.head.fc.bias, recipe.head_bias_init)
    model.to(device)
    base_lr = config["base_lr"]
    optimizer = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=base_lr,
                                  betas=(recipe.beta1, recipe.beta2))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, recipe.warmup_steps, total_steps, recipe.decay))

    step, best, resumed_from = 0, {}, None
    state = session.restore(device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, best, resumed_from = state["step"], state["best"], state["step"]
        set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
    else:
        torch.manual_seed(spec.seed * 1000 + rank)  # dropout differs across ranks, reproducibly

    train_model = session.wrap(model)
    if recipe.compile:
        train_model = torch.compile(train_model)

    logger = None
    if rank == 0:  # steps an interrupted attempt logged are repeated exactly: not logged twice
        logged = tracking.last_step(config["tracking_uri"], config["mlflow_run_id"], "pretrain/loss")
        logger = tracking.MetricLogger(config["tracking_uri"], config["mlflow_run_id"], logged_through=logged)
    trace = Path(config["trace_keys_dir"]) / f"keys-rank{rank}.txt" if config.get("trace_keys_dir") else None
    if trace is not None:  # the keys of every step, per rank (to check exact resumption)
        trace.parent.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = config["steps_per_epoch"]
    stop_at = min(total_steps, config.get("stop_after_steps") or total_steps)
    fwd_macs, global_batch = config["forward_macs"], recipe.batch_size
    peak = peak_tflops(device, precision)
    params = list(model.parameters())

    def new_window() -> dict[str, Any]:
        # Loss and gradient-norm sums stay on the device: reading them every step (.item()) would
        # stall a GPU on every step; they are read once per logging window.
        zero = lambda: torch.zeros((), dtype=torch.float32, device=device)  # noqa: E731
        return {"loss": zero(), "grad_norm": zero(), "steps": 0, "start": time.perf_counter()}

    window = new_window()
    if rank == 0 and resumed_from is not None:
        print(f"[pretrain {spec.id}] resumed from the checkpoint at step {resumed_from}/{total_steps}", flush=True)

    def save_and_report(metrics: dict[str, float]) -> None:
        states = _gather(rng_state())  # every rank's RNG, so that dropout resumes exactly too
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "step": step, "best": best, "rng": states,
                            "spec": config["spec"]}, Path(folder) / STATE_FILE)
                session.report(metrics, folder)
        else:
            session.report(metrics, None)

    while step < stop_at:
        epoch, position = divmod(step, steps_per_epoch)
        loader = make_loader(config["data_path"], batch_size=per_rank, image_size=recipe.image_size, train=True,
                             rank=rank, world_size=world, seed=spec.seed, epoch=epoch, start_step=position,
                             label_format="multi_hot", min_crop_area=recipe.min_crop_area,
                             **spec.subset_selector())
        for batch in loader:
            if trace is not None:
                with trace.open("a") as f:
                    f.write(f"{step}\t{','.join(batch.keys)}\n")
            x, y = batch.images.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
            for i in range(accum):
                xs, ys = x[i * micro:(i + 1) * micro], y[i * micro:(i + 1) * micro]
                sync = i == accum - 1 or world == 1
                ctx_sync = (train_model.no_sync() if not sync and hasattr(train_model, "no_sync")
                            else contextlib.nullcontext())
                with ctx_sync, autocast():
                    loss = sigmoid_xent(train_model(xs), ys) / accum
                loss.backward()
                window["loss"] += loss.detach()
            window["grad_norm"] += (torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip) if recipe.grad_clip
                                   else torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window["steps"] += 1

            metrics: dict[str, float] = {}
            last = step == stop_at
            if step % recipe.log_every == 0 or last:
                elapsed = time.perf_counter() - window["start"]
                # every rank is here at the same step: average the loss over the global batch
                loss_sum, norm_sum = _all_reduce_sum([window["loss"], window["grad_norm"]], device)
                images_per_s = window["steps"] * global_batch / max(elapsed, 1e-9)
                achieved = compute.FLOPS_PER_MAC * compute.FORWARD_AND_BACKWARD * fwd_macs * images_per_s / 1e12
                metrics.update({
                    "pretrain/loss": loss_sum / world / window["steps"],
                    "pretrain/lr": schedule.get_last_lr()[0],
                    "pretrain/grad_norm": norm_sum / world / window["steps"],
                    "throughput/images_per_s": images_per_s,
                    "throughput/tflops": achieved,
                    "compute/images_seen": step * global_batch,
                    "compute/exaflops": compute.pretrain_exaflops(fwd_macs, step * global_batch),
                    "pretrain/epoch": step / steps_per_epoch,
                })
                if peak:
                    metrics["throughput/mfu"] = achieved / (peak * world)
                window = new_window()
            if config["val_split"] and (step % recipe.val_every == 0 or step == total_steps):
                # the unwrapped model: ranks may hold different numbers of val batches, and a
                # DDP forward can broadcast buffers (a collective every rank must join)
                val = validate(model, config, rank, world, device, autocast)
                for key, value in val.items():
                    best_key = f"{key}_best"
                    better = value < best.get(best_key, math.inf) if key.endswith("loss") else \
                        value > best.get(best_key, -math.inf)
                    if better:
                        best[best_key] = value
                metrics.update(val)
                metrics.update(best)
            if rank == 0 and metrics:
                logger.log(step, metrics)
                if "pretrain/loss" in metrics:
                    logger.flush()
                    eta = (stop_at - step) * global_batch / max(metrics["throughput/images_per_s"], 1e-9)
                    val_text = f" val_prec1 {metrics['pretrain/val_prec1']:.3f}" if "pretrain/val_prec1" in metrics else ""
                    print(f"[pretrain {spec.id}] step {step}/{total_steps} loss {metrics['pretrain/loss']:.4f} "
                          f"lr {metrics['pretrain/lr']:.2e} {metrics['throughput/images_per_s']:.1f} img/s"
                          f"{val_text} eta {eta:.0f}s", flush=True)
            if step % recipe.checkpoint_every == 0 or last:
                save_and_report({"step": step, **metrics})
            if step >= stop_at:
                break

    if rank == 0 and logger is not None:
        logger.flush()
    return {"step": step, "total_steps": total_steps, "images_seen": step * global_batch,
            "resumed_from": resumed_from, "best": best}


# ----------------------------------------------------------------------------- the driver

def plan_run(spec: RunSpec, data_path: str, workers: int) -> dict[str, Any]:
    """Everything derived from the spec and the dataset that the workers need, checked up front
    so that a bad run fails here with a clear message and not inside a Ray worker."""
    from pipeline.data import open_dataset
    recipe = spec.recipe
    dataset = open_dataset(data_path)
    subset = dataset.subset(split="train", **spec.subset_selector())
    rows = subset.num_rows
    if recipe.batch_size % workers:
        raise ValueError(f"batch size {recipe.batch_size} is not divisible by {workers} workers")
    per_rank = recipe.batch_size // workers
    micro = min(recipe.micro_batch_size or per_rank, per_rank)
    if per_rank % micro:
        raise ValueError(f"per-worker batch {per_rank} is not a multiple of micro_batch_size {micro}")
    steps_per_epoch = rows // recipe.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"subset {spec.subset!r} of {data_path} has {rows} images, fewer than one global "
                         f"batch of {recipe.batch_size}: use a smaller batch or a larger subset")
    base_lr, lr_source = spec.base_lr()
    val_split = "val" if "val" in dataset.splits else None
    counts = compute.model_counts(spec.model, recipe.image_size, dataset.num_classes, progress=True)
    return {"spec": spec.model_dump(mode="json"), "data_path": store.resolve(data_path),
            "num_classes": dataset.num_classes, "subset_rows": rows, "steps_per_epoch": steps_per_epoch,
            "total_steps": spec.total_steps(rows), "micro_batch": micro, "accum_steps": per_rank // micro,
            "base_lr": base_lr, "base_lr_source": lr_source, "val_split": val_split,
            "forward_macs": counts["forward_macs"], "params": counts["params"]}


def run_params(spec: RunSpec, plan: dict[str, Any], workers: int) -> dict[str, Any]:
    """Flat params, named identically across runs (MLflow compare view and scatter plots)."""
    r = spec.recipe
    return {"run_spec_id": spec.id, "model": spec.model_name, "family": spec.family, "dataset": spec.dataset,
            "subset": spec.subset, "subset_images": plan["subset_rows"], "epochs": spec.epochs, "steps": plan["total_steps"],
            "batch_size": r.batch_size, "base_lr": plan["base_lr"], "base_lr_source": plan["base_lr_source"],
            "warmup_steps": r.warmup_steps, "decay": r.decay, "weight_decay": r.weight_decay,
            "grad_clip": r.grad_clip, "image_size": r.image_size, "dropout": r.dropout, "seed": spec.seed,
            "workers": workers, "params": plan["params"], "forward_gmacs": plan["forward_macs"] / 1e9,
            "num_classes": plan["num_classes"]}


def fit_on_ray(config: dict[str, Any], storage: str, spec_id: str, workers: int, use_gpu: bool,
               cpus_per_worker: float, max_failures: int) -> tuple[dict[str, Any], str | None]:
    """Run the loop on Ray Train; the Train run is named after the RunSpec (re-running resumes).
    Returns the loop's summary and the URI of the last checkpoint."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(name=f"pretrain-{spec_id}", **store.ray_storage(storage),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    result = trainer.fit()
    summary = dict(getattr(result, "return_value", None) or {})
    checkpoint_uri = store.with_scheme_of(storage, result.checkpoint.path) if result.checkpoint else None
    return summary, checkpoint_uri


def pretrain(spec: RunSpec, data_path: str, *, storage: str, tracking_uri: str | None = None, workers: int = 1,
             use_gpu: bool = False, cpus_per_worker: float = 1.0, max_failures: int = 3,
             stop_after_steps: int | None = None, trace_keys_dir: str | None = None,
             finish: bool = True, parent_run_id: str | None = None, in_process: bool = False) -> dict[str, Any]:
    """Run (or resume) the pretraining of ``spec``. Returns a summary with the MLflow run id and
    the final checkpoint's URI. ``parent_run_id``: the study-level run that groups this one.
    ``in_process``: run the same loop in this process, without Ray (one worker, local storage;
    for debugging and for tests of what the loop learns)."""
    if in_process and (workers != 1 or store.is_remote(storage)):
        raise ValueError("in_process pretraining runs one worker on local storage")
    storage = store.resolve(storage)
    tracking_uri = tracking_uri or tracking.default_tracking_uri(storage)
    plan = plan_run(spec, data_path, workers)
    tracking.init_store(tracking_uri)
    run_id = tracking.start_run(
        tracking_uri, spec.study, spec.id, run_name=f"{spec.model_name} {spec.subset} {spec.id}",
        tags={"family": spec.family, "model": spec.model_name, "subset": spec.subset,
              "epochs": spec.epochs if spec.epochs is not None else f"{spec.steps} steps",
              **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})},
        params=run_params(spec, plan, workers), artifact_root=store.join(storage, "artifacts"))
    config = {**plan, "tracking_uri": tracking_uri, "mlflow_run_id": run_id,
              "stop_after_steps": stop_after_steps, "trace_keys_dir": trace_keys_dir}
    try:
        if in_process:
            session = LocalSession(Path(storage) / f"pretrain-{spec.id}")
            summary = train_loop(config, session)
            found = session.checkpoints()
            checkpoint_uri = str(found[-1]) if found else None
        else:
            summary, checkpoint_uri = fit_on_ray(config, storage, spec.id, workers, use_gpu, cpus_per_worker,
                                                 max_failures)
    except Exception:
        tracking.set_tags(tracking_uri, run_id, {"pretrain_status": "failed"})
        tracking.finish_run(tracking_uri, run_id, "FAILED")
        raise
    done = summary.get("step") == plan["total_steps"]
    tracking.set_tags(tracking_uri, run_id, {"checkpoint_uri": checkpoint_uri,
                                             "pretrain_status": "done" if done else "partial"})
    if done and finish:
        tracking.finish_run(tracking_uri, run_id)
    return {**summary, "mlflow_run_id": run_id, "checkpoint_uri": checkpoint_uri, "tracking_uri": tracking_uri,
            "done": done, "total_steps": plan["total_steps"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.pretrain",
                                     description="Pretrain one model on one dataset subset with Ray Train; "
                                                 "metrics go to MLflow. Re-running the same command resumes.")
    parser.add_argument("--model", required=True, help="paper name (ViT-B/16, R50x1, R50+ViT-B/16) or a JSON shape")
    parser.add_argument("--data", required=True, help="dataset folder (python -m pipeline.data synth ... makes one)")
    parser.add_argument("--subset", default="full", help="'full', a count (30M, 9000) or a fraction (0.1)")
    length = parser.add_mutually_exclusive_group(required=True)
    length.add_argument("--epochs", type=float)
    length.add_argument("--steps", type=int)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--batch-size", type=int, default=4096, help="global batch (Table 3: 4096)")
    parser.add_argument("--micro-batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="base LR (default: Table 3's for the model)")
    parser.add_argument("--warmup-steps", type=int, default=10_000)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--min-crop-area", type=float, default=0.05, help="inception crop (1.0: flip only)")
    parser.add_argument("--val-every", type=int, default=1000)
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--study", default="adhoc", help="MLflow experiment")
    parser.add_argument("--storage", default="runs", help="checkpoints, Ray Train folders and the default MLflow DB")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="MLflow (default $MLFLOW_TRACKING_URI or SQLite under --storage)")
    args = parser.parse_args(argv)
    try:
        model = json.loads(args.model) if args.model.lstrip().startswith("{") else args.model
        recipe = Recipe(batch_size=args.batch_size, micro_batch_size=args.micro_batch_size, base_lr=args.lr,
                        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, image_size=args.image_size,
                        min_crop_area=args.min_crop_area,
                        val_every=args.val_every, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                        compile=args.compile)
        from pipeline.data import open_dataset
        spec = RunSpec(study=args.study, model=model, dataset=open_dataset(args.data).name, subset=args.subset,
                       epochs=args.epochs, steps=args.steps, recipe=recipe, seed=args.seed)
        uri = args.tracking_uri or tracking.default_tracking_uri(args.storage)
    except Exception as err:  # validation errors say which field and why
        parser.error(str(err))
    summary = pretrain(spec, args.data, storage=args.storage, tracking_uri=uri, workers=args.workers,
                       use_gpu=args.gpu)
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
