"""The fine-tuning protocol with Table 4's recipe (paper Sec. 4.1, App. B.1): the head replaced by a
zero-initialized linear layer, SGD with momentum 0.9, cosine decay, no weight decay, gradient
clipping at 1, optionally at a higher resolution (position embeddings interpolated). The learning
rate is chosen on a held-out dev slice of the training split (10% / 2% / 1% by dataset size)
with the grid running as Ray Tune trials, then the chosen rate is retrained on the whole training
split and scored on test: ``finetune/<dataset>/acc`` and ``finetune/<dataset>/best_lr``. Each
trial is a nested MLflow run under the pretraining run.

One :class:`FinetuneSettings` per dataset is made from the study file (``FineTune.from_plan``) and
travels as it is to every Tune trial.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from pipeline import storage as store
from pipeline import console, trace, tracking
from pipeline.data import num_classes, open_dataset
from pipeline.data.loader import LoaderSpec, make_loader
from pipeline.features import default_device
from pipeline.hardware import use_assigned_cpus
from pipeline.pretrain.recipe import lr_factor
from pipeline.raycluster import ensure_ray
from pipeline.spec import TransferPlan
from pipeline.transfer.base import Evaluator, Target
from pipeline.transfer.checkpoints import checkpoint_key, load_checkpoint

# Table 4 of the paper: fine-tuning steps and LR grid; the dev-slice rule of Appendix B.1.1.
TABLE4 = {
    "imagenet": dict(steps=20_000, lrs=(0.003, 0.01, 0.03, 0.06), dev_fraction=0.01),
    "cifar10": dict(steps=10_000, lrs=(0.001, 0.003, 0.01, 0.03), dev_fraction=0.02),
    "cifar100": dict(steps=10_000, lrs=(0.001, 0.003, 0.01, 0.03), dev_fraction=0.02),
    "pets": dict(steps=500, lrs=(0.001, 0.003, 0.01, 0.03), dev_fraction=0.1),
    "flowers": dict(steps=500, lrs=(0.001, 0.003, 0.01, 0.03), dev_fraction=0.1),
    "vtab": dict(steps=2_500, lrs=(0.01,), dev_fraction=0.2),
}
# Datasets the paper does not list get the small-dataset row (Pets/Flowers).
DEFAULT_FINETUNE = TABLE4["pets"]


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 500
    batch_size: int = 512
    lrs: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03)
    dev_fraction: float = 0.1
    resolution: int | None = None        # None: the pretraining resolution
    momentum: float = 0.9
    grad_clip: float | None = 1.0
    warmup_steps: int = 0                # Table 4 states none; an option for small-batch runs
    min_crop_area: float = 0.05          # inception crop + flip on the training images
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [f"{name} must be 1 or more, got {value}" for name, value in
                    (("steps", self.steps), ("batch size", self.batch_size)) if value < 1]
        problems += [f"learning rates must be positive, got {list(self.lrs)}"] if not self.lrs or min(self.lrs) <= 0 else []
        problems += [f"the dev fraction must be in (0, 1), got {self.dev_fraction}"] if not 0 < self.dev_fraction < 1 else []
        if problems:
            raise ValueError("fine-tuning: " + "; ".join(problems))

    @classmethod
    def for_dataset(cls, name: str, **overrides: Any) -> "FinetuneSettings":
        base = TABLE4.get(name.lower().replace("-", ""), DEFAULT_FINETUNE)
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


def finetune_once(checkpoint: str, data_path: str, lr: float, settings: FinetuneSettings, *, evaluate_on: str,
                  timm_name: str | None = None, device: torch.device | None = None) -> dict[str, float]:
    """Fine-tune a fresh copy of the checkpoint at ``lr`` and score it.

    evaluate_on="dev": train on the training split minus the dev slice, score on the dev slice
    (for choosing the LR). evaluate_on="test": train on the whole training split, score on test.
    """
    if evaluate_on not in ("dev", "test"):
        raise ValueError("evaluate_on must be 'dev' or 'test'")
    device = device or default_device()
    use_assigned_cpus()
    model, info = load_checkpoint(checkpoint, timm_name)
    resolution = settings.resolution or info["image_size"]
    k = num_classes(data_path)
    model.reset_head(k)
    model.set_image_size(resolution)
    model.to(device).train()
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=settings.momentum, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, settings.warmup_steps, settings.steps, "cosine"))
    dev = settings.dev_fraction if evaluate_on == "dev" else None
    bf16 = device.type == "cuda"
    step, epoch, start = 0, 0, time.perf_counter()
    losses, every = [], max(1, settings.steps // 10)   # the training loss at about 10 steps: the trial's curve
    while step < settings.steps:
        loader = make_loader(LoaderSpec(data_path, split="train", train=True, batch_size=settings.batch_size,
                                        image_size=resolution, seed=settings.seed, epoch=epoch,
                                        label_format="index", exclude_fraction=dev,
                                        min_crop_area=settings.min_crop_area))
        for batch in loader:
            x, y = batch.images.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % every == 0 or step == settings.steps:
                losses.append((step, float(loss.item())))
            if step == settings.steps:
                break
        epoch += 1
    eval_kw = dict(split="train", fraction=dev) if dev else dict(split="test")
    hits = n = 0
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        for batch in make_loader(LoaderSpec(data_path, train=False, batch_size=settings.batch_size,
                                            image_size=resolution, label_format="index", **eval_kw)):
            hits += (model(batch.images.to(device)).argmax(-1).cpu() == batch.labels).sum().item()
            n += len(batch.labels)
    return {"accuracy": hits / max(n, 1), "examples": n, "losses": losses,
            "seconds": time.perf_counter() - start, "resolution": resolution}


def trial_key(dataset: str, lr: float, phase: str) -> tuple[str, str]:
    """(the nested run's key, its score's metric) of a dev trial or of the final retrain."""
    dev = phase == "dev"
    return (f"finetune/{dataset}/dev/lr={lr}" if dev else f"finetune/{dataset}/final",
            f"finetune/{dataset}/{'dev_acc' if dev else 'test_acc'}")


def recorded_trial(target: Target, dataset: str, lr: float, phase: str) -> float | None:
    """The score of a trial that finished before an interruption (its nested run holds it), else None."""
    if not target.recorded:
        return None
    key, metric = trial_key(dataset, lr, phase)
    return tracking.nested_result(target.tracking_uri, target.run_id, key, metric)


def run_trial(target: Target, data_path: str, dataset: str, lr: float, settings: FinetuneSettings,
              phase: str) -> dict[str, Any]:
    """One fine-tuning (``finetune_once``; ``phase`` "dev" or "test"), said on the console. Runs in a
    trial's process, which writes nothing to MLflow (no MLflow import there: 1.3 CPU-s a chain,
    bench/RESULTS.md): the process that drives the grid records it (:func:`record_trial`)."""
    trace.mark(f"trial {phase} lr {lr:g} entered")
    out = finetune_once(target.checkpoint, data_path, lr, settings, evaluate_on=phase, timm_name=target.timm_name)
    console.say(target.name, f"finetune {dataset} lr {lr:g}: {phase} accuracy {out['accuracy']:.4f} "
                             f"({settings.steps} steps, {out['seconds']:.0f}s)")
    trace.mark(f"trial {phase} lr {lr:g} finished")
    return out


def record_trial(target: Target, data_path: str, dataset: str, lr: float, settings: FinetuneSettings,
                 phase: str, out: Mapping[str, Any]) -> None:
    """A finished trial as the nested MLflow run of its phase (when the target has a run): one per LR
    on the dev slice, one for the final retrain scored on test; its loss curve and its score."""
    if not target.recorded:
        return
    key, metric = trial_key(dataset, lr, phase)
    run = start_trial_run(target, data_path, dataset, lr, settings, key, phase == "dev")
    logger = tracking.MetricLogger(target.tracking_uri, run)
    for step, loss in out["losses"]:
        logger.log(step, {f"finetune/{dataset}/loss": loss})
    logger.log_now(settings.steps, {metric: out["accuracy"]})
    tracking.finish_run(target.tracking_uri, run)


def start_trial_run(target: Target, data_path: str, dataset: str, lr: float, settings: FinetuneSettings, key: str,
                    dev: bool) -> str:
    """The nested MLflow run of one fine-tuning (a dev trial or the final retrain): named after its
    model, params under ``finetune/``, the downstream dataset as its input."""
    phase = "dev" if dev else "final"
    params = {"finetune/phase": phase, "finetune/dataset": dataset, "finetune/lr": lr,
              **{f"finetune/{k}": v for k, v in asdict(settings).items() if k != "lrs"}}
    what = (f"a trial of the LR grid: trained on `{dataset}`'s train split less a {settings.dev_fraction:g} dev slice, "
            "scored on that slice (the LR with the best score is retrained)" if dev else
            f"the final retrain at the grid's best LR: trained on `{dataset}`'s whole train split, scored on its test split "
            "(the accuracy the report uses)")
    run = tracking.start_nested_run(target.tracking_uri, target.run_id, key=key, params=params,
                                    run_name=f"{target.name} / finetune {dataset} / {phase} lr {lr:g}",
                                    description=f"Fine-tuning of {target.name} at LR {lr:g} for {settings.steps} steps "
                                                f"(batch {settings.batch_size}, SGD with momentum, cosine schedule): "
                                                f"{what}. Its parent run holds the pretrained checkpoint.")
    tracking.log_datasets(target.tracking_uri, run, [tracking.DatasetRecord.of(
        open_dataset(data_path), "finetune", split="train", held_out=f"dev {settings.dev_fraction:g}" if dev else "none",
        scored_on="dev" if dev else "test")])
    return run


def _tune_trial(config: dict) -> None:
    """One trial of the fine-tuning Tune run: an LR of the grid scored on the dev slice, or the final
    retrain (``phase`` "test"); its result (with the loss curve) goes back to the Tune run."""
    import ray.tune
    out = run_trial(config["target"], config["data_path"], config["dataset"], config["lr"], config["settings"],
                    config["phase"])
    ray.tune.report({"accuracy": out["accuracy"], "examples": out["examples"], "resolution": out["resolution"],
                     "seconds": out["seconds"], "losses": out["losses"]})


def best_lr(dev_accuracy: dict[float, float]) -> float:
    """The LR of the best dev accuracy; ties: the smaller LR."""
    return max(sorted(dev_accuracy), key=lambda lr: dev_accuracy[lr])


def grid_then_final(lrs: tuple[float, ...], done: Mapping[float, float] | None = None):
    """A Ray Tune searcher (made on first use: Tune is imported only where trials run) that suggests
    the LR grid's dev trials, then, once they are all done, the final retrain at the best of them:
    grid and retrain are trials of one Tune run, so the retrain reuses a trial's process (its torch
    already imported) instead of starting one more. Ends early if a dev trial fails. ``done``: dev
    scores recorded before an interruption ({lr: accuracy}), not suggested again."""
    from ray.tune.search import Searcher
    done = dict(done or {})

    class GridThenFinal(Searcher):
        def __init__(self) -> None:
            super().__init__()
            self.state = {"todo": [lr for lr in lrs if lr not in done], "lr_of": {}, "dev": dict(done),
                          "final": None, "failed": False}

        def suggest(self, trial_id: str):
            s = self.state
            if s["failed"] or s["final"] is not None:
                return Searcher.FINISHED
            if s["todo"]:
                s["lr_of"][trial_id] = lr = s["todo"].pop(0)
                return {"lr": lr, "phase": "dev"}
            if len(s["dev"]) < len(lrs):
                return None  # the retrain waits for the whole grid
            s["final"] = best_lr(s["dev"])
            return {"lr": s["final"], "phase": "test"}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id not in self.state["lr_of"]:
                return  # the final retrain
            if error or not result or "accuracy" not in result:
                self.state["failed"] = True
            else:
                self.state["dev"][self.state["lr_of"][trial_id]] = result["accuracy"]

        def get_state(self) -> dict:
            return self.state

        def set_state(self, state: dict) -> None:
            self.state = state

        def save(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "w") as f:
                json.dump(self.state, f)

        def restore(self, checkpoint_path: str) -> None:
            with open(checkpoint_path) as f:
                self.state = json.load(f)

    return GridThenFinal()


def run_finetune(target: Target, data_path: str, dataset: str, settings: FinetuneSettings) -> dict[str, Any]:
    """The LR grid as Ray Tune trials selected on the dev slice, then the final retrain scored on test.
    A grid of one LR leaves nothing to select: no dev trials, only the final retrain (a Ray task)."""
    import ray
    ensure_ray()
    target = dataclasses.replace(target, checkpoint=store.resolve(target.checkpoint))
    data_path = store.resolve(data_path)
    if len(settings.lrs) == 1:
        dev_accuracy, lr = {}, settings.lrs[0]
        final = final_recorded(target, dataset, lr, settings)
        if final is None:
            final = ray.get(ray.remote(num_cpus=1, num_gpus=1 if target.use_gpu else 0)(run_trial).remote(
                target, data_path, dataset, lr, settings, "test"))
            record_trial(target, data_path, dataset, lr, settings, "test", final)
    else:
        dev_accuracy, lr, final = select_and_retrain_on_tune(target, data_path, dataset, settings)
    return {"best_lr": lr, "dev_accuracy": dev_accuracy, "test_accuracy": final["accuracy"],
            "test_examples": final["examples"], "resolution": final["resolution"]}


def select_and_retrain_on_tune(target: Target, data_path: str, dataset: str,
                               settings: FinetuneSettings) -> tuple[dict[float, float], float, dict[str, Any]]:
    """One Ray Tune run: a trial (and nested MLflow run) per LR of the grid on the dev slice, then the
    final retrain at the best LR. Returns ({lr: dev accuracy}, the best LR, the retrain's result).
    Trials recorded before an interruption are not run again; this process records the others as they
    finish (``record_trial``, from a Tune callback)."""
    from ray import tune
    done = {lr: acc for lr in settings.lrs if (acc := recorded_trial(target, dataset, lr, "dev")) is not None}
    if len(done) == len(settings.lrs):
        lr = best_lr(done)
        final = final_recorded(target, dataset, lr, settings)
        if final is not None:
            return done, lr, final

    class RecordTrials(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            c = trial.config
            record_trial(target, data_path, dataset, c["lr"], settings, c["phase"], trial.last_result)

    base = {"target": target, "data_path": data_path, "dataset": dataset, "settings": settings}
    resources = {"cpu": 1, "gpu": 1} if target.use_gpu else {"cpu": 1}
    name = f"finetune-{dataset}-{checkpoint_key(target.checkpoint) if target.timm_name is None else 'timm'}"
    tuner = tune.Tuner(
        tune.with_resources(_tune_trial, resources), param_space=base,
        # reuse_actors: trials run one after another in the same process (Ray 2.60's default starts
        # one per trial: 3 trials that import torch and MLflow and return took 15.5 s so, 4.5 s in one
        # process, on the 2-core dev machine); a failed trial still gets a fresh one
        tune_config=tune.TuneConfig(search_alg=grid_then_final(tuple(settings.lrs), done),
                                    num_samples=len(settings.lrs) - len(done) + 1,
                                    max_concurrent_trials=target.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=name, **store.ray_storage(target.storage), verbose=0,  # each trial prints one line itself
                                  callbacks=[RecordTrials()]))
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # with verbose=0: no trial tables (each trial prints its line)
    try:
        grid = tuner.fit()
    finally:
        if before is None:
            del os.environ["RAY_AIR_NEW_OUTPUT"]
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before
    errors = [r.error for r in grid if r.error]
    if errors:
        raise RuntimeError(f"fine-tuning trials failed on {dataset}: {errors[0]}")
    dev = {**done, **{r.config["lr"]: r.metrics["accuracy"] for r in grid if r.config["phase"] == "dev"}}
    (final,) = [r.metrics for r in grid if r.config["phase"] == "test"]
    return dev, best_lr(dev), final


def final_recorded(target: Target, dataset: str, lr: float, settings: FinetuneSettings) -> dict[str, Any] | None:
    """The final retrain's result as recorded before an interruption (its nested run), else None."""
    accuracy = recorded_trial(target, dataset, lr, "test")
    return None if accuracy is None else {"accuracy": accuracy, "examples": None, "seconds": 0.0, "reused": True,
                                          "resolution": settings.resolution}


@dataclass(frozen=True)
class FineTune(Evaluator):
    name = "finetune"
    settings: Mapping[str, FinetuneSettings] = dataclasses.field(default_factory=dict)  # per dataset

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(self.settings)

    @classmethod
    def from_plan(cls, plan: TransferPlan) -> "FineTune | None":
        """Table 4's settings for each dataset, with the study file's overrides."""
        if not plan.finetune:
            return None
        overrides = dict(steps=plan.finetune_steps, batch_size=plan.finetune_batch_size,
                         lrs=tuple(plan.finetune_lrs) if plan.finetune_lrs else None, min_crop_area=plan.min_crop_area)
        return cls(settings={name: FinetuneSettings.for_dataset(name, **overrides) for name in plan.finetune})

    def metric_keys(self, dataset: str) -> list[str]:
        return [f"finetune/{dataset}/acc"]

    def run(self, target: Target, dataset: str, path: str) -> dict[str, float]:
        if target.model is not None:
            raise ValueError(f"fine-tuning {target.name} needs its checkpoint: each trial trains a fresh copy of it "
                             "in its own process, not a model in memory")
        out = run_finetune(target, path, dataset, self.settings[dataset])
        return {f"finetune/{dataset}/acc": out["test_accuracy"], f"finetune/{dataset}/best_lr": out["best_lr"]}
