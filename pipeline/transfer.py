"""Transfer evaluation of a pretrained checkpoint, the paper's two protocols (Sec. 4.1, App. B.1):

- few-shot linear probes on frozen pre-logits features (closed form, ``pipeline.fewshot``);
  features are computed once per (checkpoint, dataset, split, resolution) and cached;
- fine-tuning with Table 4's recipe: the head replaced by a zero-initialized linear layer, SGD
  with momentum 0.9, cosine decay, no weight decay, gradient clipping at 1, optionally at a higher
  resolution (position embeddings interpolated). The learning rate is chosen on a held-out dev
  slice of the training split (10% / 2% / 1% by dataset size) with the grid running as Ray Tune
  trials, then the chosen rate is retrained on the whole training split and scored on test.

Results land on the pretraining run in MLflow: ``fewshot/<dataset>/<k>shot`` (mean over seeds,
``..._std`` their spread), ``finetune/<dataset>/acc`` and ``finetune/<dataset>/best_lr``; each
fine-tuning trial is a nested run.

CLI: python -m pipeline.transfer CHECKPOINT --dataset NAME|PATH [--fewshot 1,5,10,25] [--finetune]
     [--lrs 0.001,0.003,...] [--resolution R] [--steps N] [--batch-size B]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import fewshot, tracking
from pipeline import storage as store

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

    @classmethod
    def for_dataset(cls, name: str, **overrides: Any) -> "FinetuneSettings":
        base = TABLE4.get(name.lower().replace("-", ""), DEFAULT_FINETUNE)
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


# ----------------------------------------------------------------------------- checkpoints

def load_checkpoint(path: str | os.PathLike, timm_name: str | None = None) -> tuple[torch.nn.Module, dict]:
    """A pretrained model with its pretraining head, and facts about it.

    ``path``: a pretraining checkpoint of this pipeline (the Ray Train checkpoint folder, or its
    ``state.pt``), or with ``timm_name`` a timm state-dict file (``.pth``/``.bin``)."""
    from models import build_model
    from pipeline.pretrain import STATE_FILE, state_file
    path = store.fetch(path, "checkpoints")  # a remote checkpoint: this node's cached copy
    if timm_name:
        from models.timm_import import load_timm
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = load_timm(timm_name, state.get("state_dict", state) if isinstance(state, dict) else state)
        return model, {"model": timm_name, "image_size": model.image_size, "source": "timm"}
    if not state_file(path).is_file():
        raise FileNotFoundError(f"no pretraining checkpoint at {path}: expected a folder with {STATE_FILE} "
                                "(the checkpoint_uri tag of the MLflow run) or a timm file with --timm NAME")
    state = torch.load(state_file(path), map_location="cpu", weights_only=False)
    spec = state["spec"]
    weights = state["model"]
    model = build_model(spec["model"], num_classes=weights["head.fc.weight"].shape[0],
                        image_size=spec["recipe"]["image_size"],
                        pre_logits="head.pre_logits.fc.weight" in weights)
    model.load_state_dict(weights)
    return model, {"model": spec["model"], "image_size": spec["recipe"]["image_size"], "source": "pipeline",
                   "step": state.get("step"), "run_spec": spec}


def checkpoint_key(path: str | os.PathLike) -> str:
    """Identity of a checkpoint (folder or file, local or remote) for the feature cache: its
    location and its files' sizes and modification times, the same seen from every node."""
    return store.content_key(path)


def dataset_key(data_path: str | os.PathLike) -> str:
    from pipeline.data.format import MANIFEST_NAME
    return hashlib.sha1(store.read_bytes(store.join(data_path, MANIFEST_NAME))).hexdigest()[:16]


# ----------------------------------------------------------------------------- features

def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def extract_features(model: torch.nn.Module, data_path: str, split: str, image_size: int, *,
                     batch_size: int = 256, device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logits features and integer labels of a whole split (resize + center crop)."""
    from pipeline.data import LoaderSpec, make_loader
    device = device or default_device()
    model = model.to(device).eval()
    feats, labels = [], []
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        for batch in make_loader(LoaderSpec(data_path, split=split, train=False, batch_size=batch_size,
                                            image_size=image_size, label_format="index")):
            feats.append(model.features(batch.images.to(device)).float().cpu().numpy())
            labels.append(batch.labels.numpy())
    return np.concatenate(feats), np.concatenate(labels)


def cached_features(model, checkpoint: str, data_path: str, split: str, image_size: int, cache_dir: str | None,
                    **kw) -> tuple[np.ndarray, np.ndarray]:
    if cache_dir is None:
        return extract_features(model, data_path, split, image_size, **kw)
    path = Path(cache_dir) / f"{checkpoint_key(checkpoint)}-{dataset_key(data_path)}-{split}-{image_size}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["features"], z["labels"]
    x, y = extract_features(model, data_path, split, image_size, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, features=x, labels=y)
    tmp.replace(path)
    return x, y


def run_fewshot(checkpoint: str, data_path: str, *, shots: Sequence[int] = fewshot.DEFAULT_SHOTS, seeds: int = 3,
                l2_regs: Sequence[float] = (fewshot.DEFAULT_L2,), cache_dir: str | None = None,
                timm_name: str | None = None, model: torch.nn.Module | None = None,
                image_size: int | None = None) -> dict[str, Any]:
    """Few-shot accuracies on the dataset's test split, probes fit on its train split."""
    from pipeline.data import num_classes
    from pipeline.pretrain import use_assigned_cpus
    use_assigned_cpus()
    if model is None:
        model, info = load_checkpoint(checkpoint, timm_name)
        image_size = image_size or info["image_size"]
    image_size = image_size or model.image_size
    k = num_classes(data_path)
    train = cached_features(model, checkpoint, data_path, "train", image_size, cache_dir)
    test = cached_features(model, checkpoint, data_path, "test", image_size, cache_dir)
    start = time.perf_counter()
    results = fewshot.fewshot_accuracy(*train, *test, k, shots=tuple(shots), seeds=seeds, l2_regs=tuple(l2_regs))
    return {"results": results, "seconds": time.perf_counter() - start, "num_classes": k,
            "train_rows": len(train[1]), "test_rows": len(test[1])}


# ----------------------------------------------------------------------------- fine-tuning

def finetune_once(checkpoint: str, data_path: str, lr: float, settings: FinetuneSettings, *, evaluate_on: str,
                  timm_name: str | None = None, device: torch.device | None = None) -> dict[str, float]:
    """Fine-tune a fresh copy of the checkpoint at ``lr`` and score it.

    evaluate_on="dev": train on the training split minus the dev slice, score on the dev slice
    (for choosing the LR). evaluate_on="test": train on the whole training split, score on test.
    """
    from pipeline.data import LoaderSpec, make_loader, num_classes
    from pipeline.pretrain import lr_factor, use_assigned_cpus
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
    return {"accuracy": hits / max(n, 1), "examples": n, "final_loss": float(loss.item()),
            "seconds": time.perf_counter() - start, "resolution": resolution}


def finetune_recorded(checkpoint: str, data_path: str, lr: float, settings: FinetuneSettings, *, evaluate_on: str,
                      dataset: str, tracking_uri: str | None = None, parent_run_id: str | None = None,
                      timm_name: str | None = None) -> dict[str, float]:
    """``finetune_once``, recorded (when a parent run is given) as the nested MLflow run of its
    phase: one per LR on the dev slice, one for the final retrain scored on test."""
    dev = evaluate_on == "dev"
    metric = "dev_accuracy" if dev else "test_accuracy"
    run = None
    if tracking_uri and parent_run_id:
        key = f"finetune/{dataset}/dev/lr={lr}" if dev else f"finetune/{dataset}/final"
        recorded = tracking.nested_result(tracking_uri, parent_run_id, key, metric)
        if recorded is not None:  # finished before an interruption: not trained again
            return {"accuracy": recorded, "examples": None, "seconds": 0.0, "reused": True,
                    "resolution": settings.resolution}
        params = {"phase": "dev" if dev else "final", "dataset": dataset, "lr": lr,
                  **{k: v for k, v in asdict(settings).items() if k != "lrs"}}
        run = tracking.start_nested_run(tracking_uri, parent_run_id, key=key, params=params)
    out = finetune_once(checkpoint, data_path, lr, settings, evaluate_on=evaluate_on, timm_name=timm_name)
    if run:
        tracking.MetricLogger(tracking_uri, run).log_now(settings.steps, {metric: out["accuracy"]})
        tracking.finish_run(tracking_uri, run)
    print(f"[finetune {dataset}] lr {lr:g}: {evaluate_on} accuracy {out['accuracy']:.4f} "
          f"({settings.steps} steps, {out['seconds']:.0f}s)", flush=True)
    return out


def _tune_trial(config: dict) -> None:
    """One LR of the grid, as a Ray Tune function trial."""
    import ray.tune
    settings = FinetuneSettings(**{**config["settings"], "lrs": tuple(config["settings"]["lrs"])})
    out = finetune_recorded(config["checkpoint"], config["data_path"], config["lr"], settings, evaluate_on="dev",
                            dataset=config["dataset"], tracking_uri=config.get("tracking_uri"),
                            parent_run_id=config.get("parent_run_id"), timm_name=config.get("timm_name"))
    ray.tune.report({"dev_accuracy": out["accuracy"], "seconds": out["seconds"]})


def run_finetune(checkpoint: str, data_path: str, settings: FinetuneSettings, *, dataset_name: str,
                 storage: str, tracking_uri: str | None = None, parent_run_id: str | None = None,
                 timm_name: str | None = None, use_gpu: bool = False, max_concurrent: int | None = None) -> dict:
    """The LR grid as Ray Tune trials selected on the dev slice, then the final retrain scored on test.
    A grid of one LR leaves nothing to select: no dev trials, only the final retrain."""
    import ray
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None)
    checkpoint, data_path = store.resolve(checkpoint), store.resolve(data_path)
    if len(settings.lrs) == 1:
        dev_accuracy, best_lr = {}, settings.lrs[0]
    else:
        dev_accuracy = select_lr_on_tune(checkpoint, data_path, settings, dataset_name=dataset_name, storage=storage,
                                         tracking_uri=tracking_uri, parent_run_id=parent_run_id, timm_name=timm_name,
                                         use_gpu=use_gpu, max_concurrent=max_concurrent)
        best_lr = max(sorted(dev_accuracy), key=lambda lr: dev_accuracy[lr])  # ties: the smaller LR
    final = ray.get(ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(finetune_recorded).remote(
        checkpoint, data_path, best_lr, settings, evaluate_on="test", dataset=dataset_name,
        tracking_uri=tracking_uri, parent_run_id=parent_run_id, timm_name=timm_name))
    return {"best_lr": best_lr, "dev_accuracy": dev_accuracy, "test_accuracy": final["accuracy"],
            "test_examples": final["examples"], "resolution": final["resolution"]}


def select_lr_on_tune(checkpoint: str, data_path: str, settings: FinetuneSettings, *, dataset_name: str,
                      storage: str, tracking_uri: str | None, parent_run_id: str | None, timm_name: str | None,
                      use_gpu: bool, max_concurrent: int | None) -> dict[float, float]:
    """Dev accuracy of each LR of the grid, one Ray Tune trial (and nested MLflow run) each."""
    from ray import tune
    base = {"checkpoint": checkpoint, "data_path": data_path, "settings": asdict(settings), "dataset": dataset_name,
            "tracking_uri": tracking_uri, "parent_run_id": parent_run_id, "timm_name": timm_name}
    resources = {"cpu": 1, "gpu": 1} if use_gpu else {"cpu": 1}
    name = f"finetune-{dataset_name}-{checkpoint_key(checkpoint) if timm_name is None else 'timm'}"
    tuner = tune.Tuner(
        tune.with_resources(_tune_trial, resources),
        param_space={**base, "lr": tune.grid_search(list(settings.lrs))},
        tune_config=tune.TuneConfig(metric="dev_accuracy", mode="max", max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name=name, **store.ray_storage(storage), verbose=0))  # each trial prints one line itself
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
        raise RuntimeError(f"fine-tuning trials failed on {dataset_name}: {errors[0]}")
    return {r.config["lr"]: r.metrics["dev_accuracy"] for r in grid}


# ----------------------------------------------------------------------------- results

def fewshot_metrics(dataset_name: str, fewshot_out: dict, l2: float = fewshot.DEFAULT_L2) -> dict[str, float]:
    metrics = {}
    for (k, reg), r in fewshot_out["results"].items():
        if reg == l2:
            metrics[f"fewshot/{dataset_name}/{k}shot"] = r["mean"]
            metrics[f"fewshot/{dataset_name}/{k}shot_std"] = r["std"]
    return metrics


def finetune_metrics(dataset_name: str, out: dict) -> dict[str, float]:
    return {f"finetune/{dataset_name}/acc": out["test_accuracy"], f"finetune/{dataset_name}/best_lr": out["best_lr"]}


def evaluate(checkpoint: str, *, fewshot_on: Sequence[tuple[str, str]] = (), finetune_on: Sequence[tuple[str, str]] = (),
             shots: Sequence[int] = fewshot.DEFAULT_SHOTS, seeds: int = 3,
             l2_regs: Sequence[float] = (fewshot.DEFAULT_L2,), finetune_overrides: dict[str, Any] | None = None,
             storage: str, tracking_uri: str | None = None, run_id: str | None = None,
             timm_name: str | None = None, use_gpu: bool = False, on_ray: bool = False,
             skip_recorded: bool = False, max_concurrent: int | None = None) -> dict[str, float]:
    """Few-shot probes on ``fewshot_on`` and fine-tuning on ``finetune_on`` ([(name, path)]).

    Each dataset's metrics are logged to ``run_id`` as soon as they exist. ``skip_recorded``:
    a dataset whose metrics the run already holds is not evaluated again (a resumed study).
    ``on_ray``: the few-shot probe runs as a Ray task holding one CPU (or GPU), as the
    fine-tuning trials do, instead of in this process."""
    recorded = tracking.recorded_metrics(tracking_uri, run_id) if skip_recorded and tracking_uri and run_id else {}
    metrics: dict[str, float] = {}

    def keep(new: dict[str, float]) -> None:
        metrics.update(new)
        if tracking_uri and run_id and new:
            tracking.MetricLogger(tracking_uri, run_id).log_now(0, new)

    cache = str(store.node_dir(storage, "features"))
    for name, path in fewshot_on:
        wanted = [f"fewshot/{name}/{k}shot" for k in shots]
        if all(key in recorded for key in wanted):
            metrics.update({k: v for k, v in recorded.items() if k.startswith(f"fewshot/{name}/")})
            continue
        kwargs = dict(shots=shots, seeds=seeds, l2_regs=l2_regs, cache_dir=cache, timm_name=timm_name)
        if on_ray:
            import ray
            task = ray.remote(num_cpus=0 if use_gpu else 1, num_gpus=1 if use_gpu else 0)(run_fewshot)
            out = ray.get(task.remote(checkpoint, path, **kwargs))
        else:
            out = run_fewshot(checkpoint, path, **kwargs)
        keep(fewshot_metrics(name, out, l2_regs[0]))
    for name, path in finetune_on:
        if f"finetune/{name}/acc" in recorded:
            metrics.update({k: v for k, v in recorded.items() if k.startswith(f"finetune/{name}/")})
            continue
        settings = FinetuneSettings.for_dataset(name, **(finetune_overrides or {}))
        out = run_finetune(checkpoint, path, settings, dataset_name=name, storage=storage, tracking_uri=tracking_uri,
                           parent_run_id=run_id, timm_name=timm_name, use_gpu=use_gpu, max_concurrent=max_concurrent)
        keep(finetune_metrics(name, out))
    return metrics


def builtin_dataset(name: str, data_root: str) -> str | None:
    """The location of a built-in downstream set (``digits``), made under ``data_root`` (a folder
    or a URI) on first use; None for other names."""
    if name != "digits":
        return None
    target = store.join(data_root, "digits")
    if not store.is_file(store.join(target, "manifest.json")):  # written last: complete
        from pipeline.data.convert import convert_digits
        convert_digits(target)
    return target


def resolve_dataset(name_or_path: str, data_root: str) -> tuple[str, str]:
    """(name, location): an existing dataset (folder or URI), or a built-in downstream set made
    on first use under ``data_root`` (``digits``)."""
    if store.is_file(store.join(name_or_path, "manifest.json")):
        from pipeline.data import open_dataset
        return open_dataset(name_or_path).name, store.resolve(name_or_path)
    built = builtin_dataset(name_or_path, data_root)
    if built is not None:
        return name_or_path, built
    raise ValueError(f"dataset {name_or_path!r} is neither a dataset folder (with manifest.json) nor a built-in "
                     "name (digits); make one with `python -m pipeline.data convert|digits|synth`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.transfer",
                                     description="Few-shot linear probes and fine-tuning of a pretrained checkpoint.")
    parser.add_argument("checkpoint", help="pretraining checkpoint folder (MLflow tag checkpoint_uri) or timm file")
    parser.add_argument("--dataset", required=True, action="append", help="dataset folder or built-in name (digits); repeatable")
    parser.add_argument("--fewshot", default="1,5,10,25", help="shots, comma-separated ('' to skip)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--l2", default=str(fewshot.DEFAULT_L2), help="L2 strengths, comma-separated")
    parser.add_argument("--finetune", action="store_true")
    parser.add_argument("--lrs", default=None, help="fine-tuning LR grid (default: Table 4's for the dataset)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=None, help="fine-tuning resolution (default: pretraining's)")
    parser.add_argument("--dev-fraction", type=float, default=None)
    parser.add_argument("--min-crop-area", type=float, default=None,
                        help="inception crop's smallest area (default 0.05; 1.0 = flip only, for tiny images)")
    parser.add_argument("--timm", default=None, metavar="NAME", help="the checkpoint is a timm state dict of this model")
    parser.add_argument("--storage", default="runs")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="MLflow (default $MLFLOW_TRACKING_URI or SQLite under --storage)")
    parser.add_argument("--mlflow-run-id", default=None, help="pretraining run to attach results to")
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args(argv)
    try:
        shots = [int(s) for s in args.fewshot.split(",") if s.strip()]
        l2s = [float(s) for s in args.l2.split(",") if s.strip()]
        lrs = tuple(float(s) for s in args.lrs.split(",")) if args.lrs else None
        datasets = [resolve_dataset(d, store.join(args.storage, "data")) for d in args.dataset]
        load_checkpoint(args.checkpoint, args.timm)  # fail early on a bad checkpoint
        uri = args.tracking_uri or (tracking.default_tracking_uri(args.storage) if args.mlflow_run_id else None)
    except (ValueError, OSError) as err:  # OSError: FileNotFoundError, an unusable storage location
        parser.error(str(err))
    overrides = dict(lrs=lrs, steps=args.steps, batch_size=args.batch_size, resolution=args.resolution,
                     dev_fraction=args.dev_fraction, min_crop_area=args.min_crop_area)
    metrics = evaluate(args.checkpoint, fewshot_on=datasets if shots else [],
                       finetune_on=datasets if args.finetune else [], shots=shots, seeds=args.seeds,
                       l2_regs=l2s, finetune_overrides=overrides, storage=args.storage, tracking_uri=uri,
                       run_id=args.mlflow_run_id, timm_name=args.timm, use_gpu=args.gpu)
    rows = list(metrics.items())
    width = max(len(k) for k, _ in rows) if rows else 10
    print(f"{'metric'.ljust(width)}  value")
    for key, value in rows:
        print(f"{key.ljust(width)}  {value:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
