"""Where a run comes from, on its MLflow run: the datasets it read (as MLflow dataset inputs),
the code (git commit and version tags) and, while it trains, the machine's system metrics."""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping


from pipeline import storage as store
from pipeline.tracking.store import client


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset a run used, as MLflow's dataset inputs show it: ``context`` says what for
    (pretrain, fewshot, finetune, ...); ``profile`` what part (split, subset, rows)."""
    name: str
    location: str
    digest: str
    context: str
    profile: Mapping[str, Any]

    @classmethod
    def of(cls, dataset, context: str, **profile: Any) -> "DatasetRecord":
        """From an opened ``pipeline.data`` dataset (its name, location and manifest digest)."""
        return cls(dataset.name, dataset.root, dataset.digest, context, profile)



def source_type(location: str) -> str:
    """MLflow's name for where a dataset lives: its UI shows the location (the URI) in the dataset
    drawer only for the kinds it knows (``s3``, ``http``, ``local``, ...)."""
    if not store.is_remote(location):
        return "local"
    return {"s3": "s3", "http": "http", "https": "http"}.get(location.split("://", 1)[0], "external")


def log_datasets(tracking_uri: str, run_id: str, datasets: Iterable[DatasetRecord]) -> None:
    """The datasets as the run's inputs (the run page's Datasets section). MLflow keeps one entry
    per (name, digest, context), so logging again on a resumed run adds nothing."""
    import json
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.exceptions import MlflowException
    inputs = [DatasetInput(Dataset(name=d.name, digest=d.digest, source_type=source_type(d.location),
                                   source=json.dumps({"uri": d.location}), profile=json.dumps(dict(d.profile))),
                           tags=[InputTag("mlflow.data.context", d.context)]) for d in datasets]
    for attempt in range(DATASET_RACE_TRIES):
        try:
            return client(tracking_uri).log_inputs(run_id, datasets=inputs)
        except MlflowException as err:
            if not lost_insert_race(err) or attempt == DATASET_RACE_TRIES - 1:
                raise
            time.sleep(0.2 * (attempt + 1))



# MLflow's store looks a dataset up by (experiment, name, digest) and inserts it when missing, in
# one transaction: two runs logging the same new dataset at once both insert, and the second fails
# on the unique key (SQLAlchemy's IntegrityError, answered as 400, which MLflow's client does not
# retry). Asked again, the store finds the dataset the other run wrote.
DATASET_RACE_TRIES = 4



def lost_insert_race(err: Exception) -> bool:
    """An MLflow store error from a unique key another writer got to first (any SQL backend)."""
    text = str(err)
    return any(mark in text for mark in ("IntegrityError", "/gkpj)", "UNIQUE constraint failed", "UniqueViolation",
                                         "Duplicate entry"))



@functools.cache
def source_tags() -> dict[str, str]:
    """Where the code came from, as MLflow's source tags (shown on every run page): the git commit
    of this checkout and whether it had uncommitted changes (``git_dirty``), when it is a git
    checkout (a ``ray job submit`` working dir copy is not: then only the package version)."""
    import subprocess
    from importlib import metadata
    tags = {"mlflow.source.type": "JOB", "mlflow.source.name": "pipeline",
            "code_version": metadata.version("vit-scaling")}
    root = Path(__file__).resolve().parents[2]   # the checkout: pipeline/tracking/provenance.py

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:  # an installed copy inside another repo
            return tags
        tags["mlflow.source.git.commit"] = git("rev-parse", "HEAD")
        tags["git_dirty"] = str(bool(git("status", "--porcelain", "--untracked-files=no")))
    except (OSError, subprocess.SubprocessError):
        pass
    return tags



@contextlib.contextmanager
def system_metrics(tracking_uri: str, run_id: str, enabled: bool = True, interval_s: float = 10.0):
    """MLflow's system metrics of this machine (``system/cpu_utilization_percentage``, memory,
    disk, network; GPU utilisation and memory where NVML sees a GPU) on the run every
    ``interval_s`` while the block runs, continuing the steps a resumed run logged."""
    if not enabled:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=True,
                                   tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        last = monitor.aggregate_metrics()  # the samples since the last publish (MLflow drops them)
        if last:
            monitor.publish_metrics(last)
            monitor.mlflow_logger.flush()
