"""The transfer protocols a study can use, by name, and the loop that runs them on a checkpoint.

A new protocol is one new module with an :class:`~pipeline.transfer.base.Evaluator` subclass, and
one line in :data:`EVALUATORS`; a study file turns it on under ``transfer.protocols.<name>``
(docs/architecture.md shows one)."""
from __future__ import annotations

from typing import Mapping, Sequence

from pipeline import console, trace, tracking
from pipeline.data import open_dataset
from pipeline.spec import TransferPlan
from pipeline.transfer.base import Evaluator, Target
from pipeline.transfer.fewshot import FewShot
from pipeline.transfer.finetune import FineTune

EVALUATORS: dict[str, type[Evaluator]] = {"fewshot": FewShot, "finetune": FineTune}


def evaluators_for(plan: TransferPlan) -> list[Evaluator]:
    """The protocols the study file's ``transfer`` section turns on, in registry order."""
    unknown = sorted(set(plan.protocols) - set(EVALUATORS))
    if unknown:
        raise ValueError(f"transfer.protocols: unknown protocol(s) {unknown}; registered: {sorted(EVALUATORS)} "
                         "(pipeline/transfer/registry.py)")
    return [e for e in (cls.from_plan(plan) for cls in EVALUATORS.values()) if e is not None]


def datasets_of(evaluators: Sequence[Evaluator]) -> list[str]:
    """Every downstream dataset the evaluators use, once, in order."""
    return list(dict.fromkeys(name for e in evaluators for name in e.datasets))


def expected_metrics(plan: TransferPlan) -> list[str]:
    """The metrics a finished run of this plan holds, one list for every protocol."""
    return [key for e in evaluators_for(plan) for name in e.datasets for key in e.metric_keys(name)]


def record_input(target: Target, protocol: str, path: str) -> None:
    """A downstream dataset as an input of the target's run, its context the protocol's name."""
    dataset = open_dataset(path)
    tracking.log_datasets(target.tracking_uri, target.run_id, [tracking.DatasetRecord.of(
        dataset, protocol, splits=",".join(dataset.splits))])


def evaluate(target: Target, evaluators: Sequence[Evaluator], paths: Mapping[str, str], *,
             skip_recorded: bool = False) -> dict[str, float]:
    """Each evaluator on each of its datasets (``paths``: {name: location}); each result is logged
    to the target's run as soon as it exists. ``skip_recorded``: a dataset whose metrics the run
    already holds is not evaluated again (a resumed study)."""
    recorded = tracking.recorded_metrics(target.tracking_uri, target.run_id) \
        if skip_recorded and target.recorded else {}
    metrics: dict[str, float] = {}
    for evaluator in evaluators:
        for name in evaluator.datasets:
            if all(key in recorded for key in evaluator.metric_keys(name)):
                prefix = f"{evaluator.name}/{name}/"
                metrics.update({k: v for k, v in recorded.items() if k.startswith(prefix)})
                continue
            if target.recorded:
                record_input(target, evaluator.name, paths[name])
            trace.mark(f"{evaluator.name} {name} started")
            new = evaluator.run(target, name, paths[name])
            trace.mark(f"{evaluator.name} {name} done")
            metrics.update(new)
            console.say(target.name, ", ".join(f"{key} {value:.4g}" for key, value in new.items()
                                               if not key.endswith("_std")))
            if target.recorded and new:
                tracking.MetricLogger(target.tracking_uri, target.run_id).log_now(0, new)
    return metrics
