"""Transfer evaluation of a pretrained checkpoint: the paper's protocols (Sec. 4.1, App. B.1) as
pluggable evaluators (as big_vision's), each in its own module:

- ``fewshot``: few-shot linear probes on frozen pre-logits features (closed form,
  ``pipeline.ridge``); features are computed once per (checkpoint, dataset, split, resolution)
  and cached;
- ``finetune``: fine-tuning with Table 4's recipe, the learning rate chosen on a dev slice with
  the grid as Ray Tune trials, then retrained on the whole training split and scored on test.

``base`` holds what they share (:class:`Target`, :class:`Evaluator`), ``checkpoints`` the loading
of checkpoints and features and the downstream datasets, ``registry`` the protocols by name and
:func:`evaluate`, which runs them and logs each result to the pretraining run in MLflow as soon
as it exists: ``fewshot/<dataset>/<k>shot`` (mean over seeds, ``..._std`` their spread),
``finetune/<dataset>/acc`` and ``finetune/<dataset>/best_lr``; each fine-tuning trial is a nested
run. ``cli``: ``python -m pipeline.transfer CHECKPOINT --dataset NAME|PATH ...``.
"""
from pipeline.transfer.base import Evaluator, Target
from pipeline.features import extract_features
from pipeline.transfer.checkpoints import (builtin_dataset, cached_features, checkpoint_key, dataset_key,
                                           load_checkpoint, resolve_dataset)
from pipeline.transfer.cli import main
from pipeline.transfer.fewshot import FewShot, FewshotSettings, fewshot_metrics, run_fewshot
from pipeline.transfer.finetune import TABLE4, FineTune, FinetuneSettings, finetune_once, run_finetune
from pipeline.transfer.registry import EVALUATORS, datasets_of, evaluate, evaluators_for, expected_metrics

__all__ = ["EVALUATORS", "Evaluator", "FewShot", "FewshotSettings", "FineTune", "FinetuneSettings", "TABLE4",
           "Target", "builtin_dataset", "cached_features", "checkpoint_key", "dataset_key", "datasets_of",
           "evaluate", "evaluators_for", "expected_metrics", "extract_features", "fewshot_metrics",
           "finetune_once", "load_checkpoint", "main", "resolve_dataset", "run_fewshot", "run_finetune"]
