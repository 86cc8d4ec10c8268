"""One run of a study, as a chain: pretrain its RunSpec (or resume it, or skip it when finished),
then run its transfer stages, then mark its MLflow run FINISHED. ``pipeline.orchestrate`` runs
each chain as a Ray task that holds no CPU itself; :class:`ChainContext` is what the chains of a
study share."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pipeline import trace, tracking
from pipeline.pretrain.launch import Launch, pretrain
from pipeline.pretrain.loop import Hooks, Probes
from pipeline.spec import RunSpec, TransferPlan
from pipeline.transfer.base import Target
from pipeline.transfer.fewshot import FewshotSettings
from pipeline.transfer.registry import evaluate, evaluators_for


@dataclass(frozen=True)
class ChainContext:
    """What every run chain of a study shares: where data, checkpoints and MLflow are, the
    transfer stages, the GPUs per run and the study-level MLflow run."""
    data_path: str
    downstream: dict[str, str]
    transfer: TransferPlan
    storage: str
    tracking_uri: str
    gpus: int
    study_run_id: str
    on_bad_row: str = "raise"
    system_metrics: bool = True
    compile: str = "auto"       # torch.compile: auto | on | off (pipeline.hardware)
    cpus_per_gpu: int = 1       # CPUs each GPU worker asks for (its loader's processes and itself)


def run_chain(spec: RunSpec, ctx: ChainContext, previous: tracking.RunRecord | None) -> dict[str, Any]:
    """Pretrain one RunSpec (or resume it, or skip it when finished), then run its transfer stages,
    then mark its MLflow run FINISHED. Runs as a Ray task."""
    uri, start = ctx.tracking_uri, time.perf_counter()
    trace.mark(f"chain {spec.id} started")
    if previous is not None and previous.pretrained:
        run_id, checkpoint, resumed = previous.run_id, previous.checkpoint_uri, "finished"
    else:
        out = pretrain(spec, ctx.data_path, storage=ctx.storage, tracking_uri=uri,
                       launch=Launch(workers=max(ctx.gpus, 1), use_gpu=ctx.gpus > 0, on_bad_row=ctx.on_bad_row,
                                     system_metrics=ctx.system_metrics, compile=ctx.compile,
                                     cpus_per_worker=ctx.cpus_per_gpu if ctx.gpus else 1.0),
                       hooks=Hooks(probes=curve_probes(ctx)), finish=False,
                       parent_run_id=ctx.study_run_id)
        run_id, checkpoint, resumed = out["mlflow_run_id"], out["checkpoint_uri"], out["resumed_from"]
        if not out["done"]:
            raise RuntimeError(f"pretraining of {spec.id} stopped at step {out['step']} of {out['total_steps']}")
    pretrain_s = time.perf_counter() - start
    trace.mark(f"chain {spec.id} pretrained")
    # CPU chains share the cores with each other: their fine-tuning trials run one after another in
    # one process (bench/fixed_cost.py); a GPU chain's grid runs on as many GPUs as are free
    target = Target(checkpoint, ctx.storage, tracking_uri=uri, run_id=run_id, use_gpu=ctx.gpus > 0, on_ray=True,
                    label=spec.label, max_concurrent=None if ctx.gpus else 1)
    with tracking.lease(uri, run_id):  # one writer: another live study holding it raises RunHeld
        tracking.reopen_run(uri, run_id)
        try:
            metrics = evaluate(target, evaluators_for(ctx.transfer), ctx.downstream, skip_recorded=True)
        except Exception:
            tracking.set_tags(uri, run_id, {tracking.TRANSFER_STATUS_TAG: tracking.Status.FAILED})
            tracking.finish_run(uri, run_id, "FAILED")
            raise
        tracking.set_tags(uri, run_id, {tracking.TRANSFER_STATUS_TAG: tracking.Status.DONE})
        tracking.finish_run(uri, run_id)
    trace.mark(f"chain {spec.id} transferred")
    return {"id": spec.id, "run_id": run_id, "metrics": metrics, "resumed_from": resumed,
            "pretrain_seconds": pretrain_s, "seconds": time.perf_counter() - start}


def curve_probes(ctx: ChainContext) -> Probes:
    """The learning curves' probes: the preset's few-shot sets and shots (``pipeline.pretrain.loop.Probes``),
    and the final few-shot protocol at the end of pretraining, in the Train worker (``Probes.final``)."""
    return Probes(datasets=tuple((name, ctx.downstream[name]) for name in ctx.transfer.fewshot),
                  settings=FewshotSettings(shots=tuple(ctx.transfer.shots)), final=True)
