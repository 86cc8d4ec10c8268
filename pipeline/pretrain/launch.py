"""Pretraining one RunSpec, the driver's side: :func:`plan_run` checks the run against its data
and derives a :class:`~pipeline.pretrain.loop.PretrainPlan`; :func:`pretrain` opens (or finds
again) the RunSpec's MLflow run, builds the training subset once, runs the loop on Ray Train
(:func:`fit_on_ray`: a TorchTrainer, data parallel, gloo on CPU and NCCL on GPU; the Train run is
named after the RunSpec id, so re-submitting resumes it) or in this process (:func:`fit_in_process`),
and records how it ended. Failed attempts are retried from their last checkpoint, except for bad
data, which fails the same way every time."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import compute, console, exits, hardware, trace, tracking
from pipeline import storage as store
from pipeline.data import DataError, open_dataset
from pipeline.data.subsets import cached_subset
from pipeline.planning import run_numbers
from pipeline.pretrain.checkpoint import drop_unregistered
from pipeline.pretrain.loop import Hooks, PretrainPlan, train_loop, train_loop_per_worker
from pipeline.pretrain.session import LocalSession
from pipeline.raycluster import ensure_ray, fit_off_main_thread, on_local_ray, unplaceable
from pipeline.spec import RunSpec


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



# How long a failed attempt waits for its store to answer again before it is retried (the store's
# own client retries for seconds only: a restart or a network outage lasts longer).
STORE_PATIENCE_S = 180.0


def plan_run(spec: RunSpec, data_path: str, launch: Launch) -> PretrainPlan:
    """The run's plan from the spec and the dataset, checked up front (batch split over workers,
    at least one batch per epoch, a learning rate)."""
    recipe = spec.recipe
    dataset, workers = open_dataset(data_path), launch.workers
    # Sizes from the manifest alone; one listing of the folder finds a missing or truncated shard
    # before anything starts (not a footer read per shard: 100k requests at 300M images).
    for split in ("train", "val") if "val" in dataset.splits else ("train",):
        dataset.check_listed_sizes(split)
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


def run_params(plan: PretrainPlan, workers: int) -> dict[str, Any]:
    """Flat params, named identically across runs (MLflow compare view and scatter plots). Epochs
    and steps are both numbers whichever the study file gave; compute is in GFLOPs and exaFLOPs."""
    spec, r, n = plan.spec, plan.spec.recipe, plan.numbers
    exaflops = n.exaflops
    return {"run_spec_id": spec.id, "model": spec.model_name, "family": spec.family, "dataset": spec.dataset,
            "subset": spec.subset, "subset_images": n.subset_images, "length": spec.length,
            "epochs": f"{n.images_seen / n.subset_images:.4g}", "steps": n.steps,
            "exaflops": f"{exaflops:.4g}", "gflops": f"{exaflops * compute.GFLOPS_PER_EXAFLOP:.4g}",
            "batch_size": r.batch_size, "base_lr": plan.base_lr, "base_lr_source": plan.base_lr_source,
            "warmup_steps": r.warmup_steps, "decay": r.decay, "weight_decay": r.weight_decay,
            "grad_clip": r.grad_clip, "image_size": r.image_size, "dropout": r.dropout, "seed": spec.seed,
            "workers": workers, "params": n.params, "forward_gmacs": n.forward_macs / 1e9,
            "num_classes": n.head_classes, "on_bad_row": plan.on_bad_row}


def data_error_of(err: BaseException) -> Exception | None:
    """The worker's data error behind a failed Train run, if that is what failed it (Ray Train
    keeps each worker's own exception in ``worker_failures``, wrapped with its traceback)."""
    for failure in (getattr(err, "worker_failures", None) or {}).values():
        cause = getattr(failure, "_base_exc", failure)
        if isinstance(cause, DataError):
            return cause
    return None


@functools.cache
def torch_trainer(local: bool, group: bool = True) -> type:
    """Ray Train's TorchTrainer less two callbacks that cost each run a process start on Ray Train
    2.60 (bench/RESULTS.md, "Ray Train's fixed cost"): the Ray Data shard provider when a run passes
    no Ray Dataset (ours read Parquet themselves), which starts a DatasetManager actor whatever the
    datasets (its process imports Ray Data: 1.3 s of CPU); and, on a local Ray that a pipeline command
    started (``local``), the PlacementGroupCleaner, a detached actor that frees a run's placement group
    if its controller dies while the cluster lives on (a local Ray ends with the command; the cleaner's
    stop also held every fit about 1 s). On a Ray without these callbacks the plain TorchTrainer is used.

    ``group=False`` (one CPU worker: nothing to all-reduce): the same trainer on Ray Train's base
    backend, without torch's process group: its controller does not import torch (1.2 CPU-s a run,
    bench/RESULTS.md, issue 31) and its worker starts no gloo group. Several workers or a GPU keep
    TorchTrainer (gloo, NCCL)."""
    from ray.train.torch import TorchTrainer   # Ray Train where runs launch (1.2 s: --help skips it)
    try:  # inside: private modules of Ray Train 2.60 (V2), absent from other versions
        from ray.train.v2._internal.callbacks import DatasetsCallback
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
    except ImportError:
        return TorchTrainer

    class LeanTorchTrainer(TorchTrainer if group else DataParallelTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks()
                    if not (isinstance(c, DatasetsCallback) and not self.datasets)
                    and not (isinstance(c, PlacementGroupCleanerCallback) and local)]
    return LeanTorchTrainer


def fit_on_ray(plan: PretrainPlan, hooks: Hooks, storage: str, launch: Launch) -> tuple[dict[str, Any], str | None]:
    """Run the loop on Ray Train; the Train run is named after the RunSpec (re-running resumes).
    Returns the loop's summary and the URI of the last checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    ensure_ray()
    resources = {"CPU": launch.cpus_per_worker, **({"GPU": 1} if launch.use_gpu else {})}
    problem = unplaceable(resources, launch.workers)
    if problem is not None:   # Ray would wait for it forever, saying nothing
        raise ValueError(f"pretraining needs {problem}: it can never start here; ask for fewer workers (--workers) "
                         "or none of what is missing, or run on a cluster that has them (RAY_ADDRESS)")
    run_name = f"pretrain-{plan.spec.id}"
    for attempt in range(launch.max_failures + 1):
        # Each attempt is one Train run of the same name: it resumes from the last checkpoint.
        # Failures are retried here rather than inside Ray Train, which cannot tell bad data
        # (the same rows fail the same way every time) from a lost worker.
        drop_unregistered(store.join(storage, run_name))   # what a full disk or a killed process left half written
        # The loop's config travels inside the function, which only the workers unpickle: Ray Train
        # 2.60 also hands a train_loop_config to the run's controller, whose unpickling of it imported
        # torch and the pipeline there (about 1.2 CPU-s a run, bench/RESULTS.md, issue 31)
        trainer = torch_trainer(on_local_ray(), group=launch.workers > 1 or launch.use_gpu)(
            functools.partial(train_loop_per_worker, {"plan": plan, "hooks": hooks}),
            scaling_config=ScalingConfig(num_workers=launch.workers, use_gpu=launch.use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(name=run_name, **store.ray_storage(storage),
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
            if not store.answers(storage):   # an outage of the store: retrying at once would fail the same way
                console.say(plan.spec.label, f"the store of {storage} does not answer: waiting up to "
                            f"{STORE_PATIENCE_S:.0f} s for it before resuming")
                if not store.wait_until_answering(storage, STORE_PATIENCE_S):
                    raise
            console.say(plan.spec.label, f"pretraining attempt {attempt + 1} failed ({exits.one_line(err)[:300]}); "
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
