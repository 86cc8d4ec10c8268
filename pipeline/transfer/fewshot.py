"""The few-shot linear protocol (paper Sec. 4.1): closed-form least-squares probes
(``pipeline.ridge``) on frozen pre-logits features of the dataset's train split, scored on its
test split; ``fewshot/<dataset>/<k>shot`` is the mean accuracy over seeds, ``..._std`` its spread.
The same evaluator draws the learning curves during pretraining (:meth:`FewShot.probe_live`, on
the live model: ``curve/fewshot/<dataset>/<k>shot``)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline import ridge
from pipeline import storage as store
from pipeline.data import num_classes
from pipeline.features import features_of, probe_sets
from pipeline.hardware import use_assigned_cpus
from pipeline.spec import TransferPlan
from pipeline.transfer.base import Evaluator, Target
from pipeline.transfer.checkpoints import cached_features, load_checkpoint


@dataclass(frozen=True)
class FewshotSettings:
    shots: tuple[int, ...] = ridge.DEFAULT_SHOTS
    seeds: int = 3                                   # random draws of the k examples per class
    l2_regs: tuple[float, ...] = (ridge.DEFAULT_L2,)

    def __post_init__(self) -> None:
        if not self.shots or any(k < 1 for k in self.shots):
            raise ValueError(f"shots must be 1 or more examples per class, got {list(self.shots)}")
        if self.seeds < 1:
            raise ValueError(f"seeds (random draws of the shots) must be 1 or more, got {self.seeds}")
        if not self.l2_regs or any(not l2 > 0 for l2 in self.l2_regs):
            raise ValueError(f"L2 strengths must be positive, got {list(self.l2_regs)}")


def run_fewshot(checkpoint: str, data_path: str, settings: FewshotSettings = FewshotSettings(), *,
                cache_dir: str | None = None, timm_name: str | None = None, model: torch.nn.Module | None = None,
                image_size: int | None = None) -> dict[str, Any]:
    """Few-shot accuracies on the dataset's test split, probes fit on its train split. ``model``:
    evaluate this module where it is (its device; the caller's torch threads) instead of loading
    ``checkpoint`` (which then only names the cache)."""
    device = None
    if model is None:
        use_assigned_cpus()
        model, info = load_checkpoint(checkpoint, timm_name)
        image_size = image_size or info["image_size"]
    else:
        device = next(model.parameters()).device
    image_size = image_size or model.image_size
    k = num_classes(data_path)
    train = cached_features(model, checkpoint, data_path, "train", image_size, cache_dir, device=device)
    test = cached_features(model, checkpoint, data_path, "test", image_size, cache_dir, device=device)
    check_shots(data_path, k, train[1], settings.shots)
    start = time.perf_counter()
    results = ridge.fewshot_accuracy(*train, *test, k, shots=settings.shots, seeds=settings.seeds,
                                     l2_regs=settings.l2_regs)
    return {"results": results, "seconds": time.perf_counter() - start, "num_classes": k,
            "train_rows": len(train[1]), "test_rows": len(test[1])}


def check_shots(data_path: str, num_classes: int, labels: np.ndarray, shots: tuple[int, ...]) -> None:
    """A probe needs two classes or more, and ``max(shots)`` training examples of each: fewer would
    score a smaller probe than its name says (``1000shot`` of a class with 100 images)."""
    if num_classes < 2:
        raise ValueError(f"{data_path} has {num_classes} class: a few-shot probe needs two or more")
    fewest = int(np.bincount(labels, minlength=num_classes).min())
    if max(shots) > fewest:
        raise ValueError(f"{data_path}: {max(shots)} shots asked, but its train split has {fewest} images of its "
                         f"rarest class: ask for {fewest} shots or fewer")


def fewshot_metrics(dataset_name: str, fewshot_out: dict, l2: float = ridge.DEFAULT_L2) -> dict[str, float]:
    metrics = {}
    for (k, reg), r in fewshot_out["results"].items():
        if reg == l2:
            metrics[f"fewshot/{dataset_name}/{k}shot"] = r["mean"]
            metrics[f"fewshot/{dataset_name}/{k}shot_std"] = r["std"]
    return metrics


@dataclass(frozen=True)
class FewShot(Evaluator):
    name = "fewshot"
    datasets: tuple[str, ...] = ()
    settings: FewshotSettings = field(default_factory=FewshotSettings)

    @classmethod
    def from_plan(cls, plan: TransferPlan) -> "FewShot | None":
        if not plan.fewshot:
            return None
        return cls(datasets=tuple(plan.fewshot), settings=FewshotSettings(shots=tuple(plan.shots)))

    def metric_keys(self, dataset: str) -> list[str]:
        return [f"fewshot/{dataset}/{k}shot" for k in self.settings.shots]

    def run(self, target: Target, dataset: str, path: str) -> dict[str, float]:
        """The probe in this process, or as a Ray task holding one CPU (or GPU) with ``on_ray``; a
        target's model in memory is probed where it is (its features not cached: no checkpoint names them)."""
        kwargs = (dict(model=target.model) if target.model is not None else
                  dict(cache_dir=str(store.node_dir(target.storage, "features")), timm_name=target.timm_name))
        if target.on_ray and target.model is None:
            import ray
            task = ray.remote(num_cpus=0 if target.use_gpu else 1, num_gpus=1 if target.use_gpu else 0)(run_fewshot)
            out = ray.get(task.remote(target.checkpoint, path, self.settings, **kwargs))
        else:
            out = run_fewshot(target.checkpoint, path, self.settings, **kwargs)
        return fewshot_metrics(dataset, out, self.settings.l2_regs[0])

    def probe_live(self, model: torch.nn.Module, device: torch.device, image_size: int, dataset: str,
                   path: str) -> dict[str, float]:
        """A learning curve's point: the probe on ``model`` as it trains (its current weights, no
        checkpoint, no feature cache), fit on the largest shot count's examples per class of the train
        split (drawn once, ``features.probe_sets``, decoded once per process) and scored on the whole
        test split. Metrics ``curve/fewshot/<dataset>/<k>shot`` (means over seeds); leaves the model
        in eval mode."""
        (train_x, train_y), (test_x, test_y), classes = probe_sets(path, image_size, max(self.settings.shots))
        found = ridge.fewshot_accuracy(features_of(model, train_x, device), train_y,
                                       features_of(model, test_x, device), test_y, classes,
                                       shots=self.settings.shots, seeds=self.settings.seeds,
                                       l2_regs=self.settings.l2_regs)
        return {f"curve/fewshot/{dataset}/{k}shot": r["mean"] for (k, _), r in found.items()}
