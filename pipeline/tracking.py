"""MLflow, and only here: one experiment per study, one run per RunSpec (found again by its id),
flat identically-named params, namespaced metrics logged in batches.

Run status as the study sees it, one vocabulary for the plan, the orchestrator and the report
(:class:`Status`): ``done`` (FINISHED), ``partial`` (exists, not finished: running or killed),
``failed`` (FAILED) or ``new`` (no run). Partial and failed runs resume from their checkpoint.
Other modules read a RunSpec's run as a :class:`RunRecord` and never touch MLflow objects.
"""
from __future__ import annotations

import contextlib
import enum
import functools
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipeline import cli
from pipeline import storage as store

RUN_SPEC_TAG = "run_spec_id"
STUDY_PRESET_TAG = "study_preset"  # marks the one study-level run of a preset
PRETRAIN_STATUS_TAG = "pretrain_status"  # done | partial | failed
TRANSFER_STATUS_TAG = "transfer_status"  # done | failed
CHECKPOINT_TAG = "checkpoint_uri"        # the last pretraining checkpoint
NESTED_KEY_TAG = "nested_key"            # identifies a nested (fine-tuning) run under its parent


class TrackingError(ValueError):
    """MLflow cannot be used as asked; the message says what to set."""


def default_tracking_uri(storage_root: str | os.PathLike) -> str:
    """SQLite file under the storage root, always absolute (MLflow's own default is cwd-relative).
    Remote storage has no default: SQLite cannot live in an object store."""
    if store.is_remote(storage_root):
        raise TrackingError(f"storage {storage_root} is remote, and MLflow's default store is a SQLite file under the "
                            "storage: give the MLflow server with --tracking-uri or MLFLOW_TRACKING_URI "
                            "(e.g. http://HEAD:5000, see docs/cluster.md)")
    # '%' and '?' percent-encoded: a '?' ended the path (--storage 'runs/q?x' put the database in the
    # file 'runs/q'), a '%' escaped what followed; SQLAlchemy decodes them (see init_store)
    path = str(Path(store.resolve(storage_root)) / "mlflow.db")
    return f"sqlite:///{path.replace('%', '%25').replace('?', '%3F')}"


def existing_default_uri(storage_root: str) -> str | None:
    """The default tracking URI of a local storage root if its database exists, else None."""
    if store.is_remote(storage_root) or not store.exists(store.join(storage_root, "mlflow.db")):
        return None
    return default_tracking_uri(storage_root)


def is_server(tracking_uri: str) -> bool:
    """An MLflow tracking server (it stores artifacts itself, e.g. proxied to an object store)."""
    return tracking_uri.startswith(("http://", "https://"))


# MLflow retries a failed request to a tracking server (connection refused, 429, 5xx) with
# exponential backoff; its defaults (7 retries, factor 2) wait about 4 minutes before failing.
# These ride out a server restart of ~30 s and then fail with the server's name in the error.
# The user's own settings win.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@functools.lru_cache(maxsize=8)
def client(tracking_uri: str):
    """One client per tracking URI and process (every metric flush goes through it); on SQLite,
    each call finishes before a Ctrl-C is raised (:class:`_WholeCalls`)."""
    from mlflow.tracking import MlflowClient
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    found = MlflowClient(tracking_uri=tracking_uri)
    return _WholeCalls(found) if tracking_uri.startswith("sqlite:") else found


class _WholeCalls:
    """An MlflowClient whose calls are not cut by Ctrl-C (``cli.deferred_interrupts``): an SQLite
    write interrupted midway kept the database locked, and the study could not mark itself KILLED.
    A server's client is left as it is (its retries can last 30 s; the server keeps its own
    transactions whole)."""

    def __init__(self, wrapped) -> None:
        self._wrapped = wrapped

    def __getattr__(self, name: str):
        found = getattr(self._wrapped, name)
        if not callable(found):
            return found

        @functools.wraps(found)
        def whole(*args, **kwargs):
            with cli.deferred_interrupts():
                return found(*args, **kwargs)
        return whole


def server_problem(tracking_uri: str) -> str | None:
    """None when the tracking server answers its health check, else what went wrong."""
    import requests
    try:
        answer = requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=3)
        return None if answer.ok else f"HTTP {answer.status_code}"
    except requests.RequestException as err:
        return type(err).__name__


def check_server(tracking_uri: str, wait_s: float = 10.0) -> None:
    """Fail fast, before anything is launched, when a tracking server does not answer."""
    if not is_server(tracking_uri):
        return
    deadline = time.monotonic() + wait_s
    while True:
        problem = server_problem(tracking_uri)
        if problem is None:
            return
        if time.monotonic() > deadline:
            raise TrackingError(f"the MLflow server {tracking_uri} does not answer ({problem} from /health, for "
                                f"{wait_s:.0f} s): start it (`mlflow server --host ... --port ...`) or fix --tracking-uri / "
                                "MLFLOW_TRACKING_URI")
        time.sleep(1.0)


def init_store(tracking_uri: str) -> None:
    """Create/migrate the tracking database once, from the driver, before any worker logs.
    A SQLite store is made under a file lock: two first-time migrations at once corrupt it (two
    studies started together on a new storage)."""
    with _store_lock(tracking_uri):
        client(tracking_uri).search_experiments(max_results=1)
    if tracking_uri.startswith("sqlite:///") and "%" in tracking_uri:
        # MLflow makes the database's folder from the URI without decoding it: an empty stray
        # folder ('q%3Fx' beside 'q?x'), removed here
        stray = Path(tracking_uri.removeprefix("sqlite:///")).parent
        with contextlib.suppress(OSError):
            stray.rmdir()  # only when empty, and never the storage itself (its name has no '%xx')


@contextlib.contextmanager
def _store_lock(tracking_uri: str):
    """An exclusive lock on a SQLite store (a file lock next to it, across processes); nothing for
    a tracking server, whose callers make their writes safe otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl
    db = Path(urllib.parse.unquote(tracking_uri.removeprefix("sqlite:///").split("?")[0]))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def experiment_id(tracking_uri: str, study: str, artifact_root: str | None = None) -> str:
    """The study's experiment, made on first use. Its artifacts go under ``artifact_root``, except
    with a tracking server, which decides where artifacts go (``--artifacts-destination``)."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(study)
    if exp is not None:
        return exp.experiment_id
    location = None
    if artifact_root is not None and not is_server(tracking_uri):
        location = store.file_uri(artifact_root)
    try:
        return c.create_experiment(study, artifact_location=location)
    except Exception:  # created concurrently by another driver
        exp = c.get_experiment_by_name(study)
        if exp is None:
            raise
        return exp.experiment_id


class Status(enum.StrEnum):
    """A RunSpec's state in the study's words (equal to its string: ``Status.DONE == "done"``)."""
    DONE = "done"
    PARTIAL = "partial"
    FAILED = "failed"
    NEW = "new"


STATUSES = tuple(s.value for s in Status)


@dataclass(frozen=True)
class RunRecord:
    """A RunSpec's MLflow run as the study reads it."""
    run_id: str
    status: Status
    start_time: int
    pretrain_status: str | None
    transfer_status: str | None
    checkpoint_uri: str | None
    metrics: dict[str, float]

    @classmethod
    def of(cls, run) -> "RunRecord":
        tags = run.data.tags
        return cls(run_id=run.info.run_id, status=run_status(run), start_time=run.info.start_time,
                   pretrain_status=tags.get(PRETRAIN_STATUS_TAG), transfer_status=tags.get(TRANSFER_STATUS_TAG),
                   checkpoint_uri=tags.get(CHECKPOINT_TAG), metrics=dict(run.data.metrics))

    @property
    def pretrained(self) -> bool:
        """Pretraining finished and left a checkpoint: only the transfer stages may be missing."""
        return self.pretrain_status == Status.DONE and bool(self.checkpoint_uri)


def run_status(run) -> Status:
    """An MLflow run (or None) in the study's words."""
    if run is None:
        return Status.NEW
    return {"FINISHED": Status.DONE, "FAILED": Status.FAILED}.get(run.info.status, Status.PARTIAL)


def _find_or_create(tracking_uri: str, experiment: str, filter_string: str, tags: Mapping[str, str],
                    run_name: str | None, params: Mapping[str, Any]) -> str:
    """The run matching ``filter_string``, marked RUNNING again; or a new one created with its
    identifying tags in the same call (a crash can never leave a run without them) and params.
    Two processes asking at once get the same run: a SQLite store is locked meanwhile; with a
    server, each waits ``CREATE_SETTLE_S`` after creating, then all keep the oldest."""
    with _store_lock(tracking_uri):
        return _find_or_create_unlocked(tracking_uri, experiment, filter_string, tags, run_name, params)


CREATE_SETTLE_S = 1.0  # longer than a create takes from its start time to its commit


def _find_or_create_unlocked(tracking_uri: str, experiment: str, filter_string: str, tags: Mapping[str, str],
                             run_name: str | None, params: Mapping[str, Any]) -> str:
    c = client(tracking_uri)
    found = c.search_runs([experiment], filter_string=filter_string, max_results=2)
    if len(found) > 1:
        raise RuntimeError(f"several MLflow runs match {filter_string!r}: {[r.info.run_id for r in found]}; "
                           "delete the extra ones in the MLflow UI")
    if found:
        if found[0].info.status != "RUNNING":
            c.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    c.create_run(experiment, tags=dict(tags), run_name=run_name)
    # Another process's create at the same moment, or a create retried after a lost answer (a
    # server's response dropped by the network), makes two runs: keep the first, delete the others.
    if is_server(tracking_uri):
        time.sleep(CREATE_SETTLE_S)
    made = sorted(c.search_runs([experiment], filter_string=filter_string, max_results=10),
                  key=lambda r: (r.info.start_time, r.info.run_id))
    for extra in made[1:]:
        c.delete_run(extra.info.run_id)
    log_params(tracking_uri, made[0].info.run_id, params)
    return made[0].info.run_id


def start_run(tracking_uri: str, study: str, run_spec_id: str, *, tags: Mapping[str, Any],
              params: Mapping[str, Any], run_name: str | None = None, artifact_root: str | None = None,
              parent_run_id: str | None = None) -> str:
    """The one MLflow run of this RunSpec in the study's experiment (nested under ``parent_run_id``,
    the study-level run, when given)."""
    all_tags = {RUN_SPEC_TAG: run_spec_id, "study": study, **{k: str(v) for k, v in tags.items()},
                **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    return _find_or_create(tracking_uri, experiment_id(tracking_uri, study, artifact_root),
                           f"tags.{RUN_SPEC_TAG} = '{run_spec_id}'", all_tags, run_name, params)


PARENT_SPEC_TAG = "parent_run_spec_id"  # a nested run's parent's RunSpec (run_spec_id marks RunSpec runs only)
INHERITED_TAGS = ("model", "family", "subset", "length")


def start_nested_run(tracking_uri: str, parent_run_id: str, key: str, params: Mapping[str, Any],
                     run_name: str | None = None) -> str:
    """A child run of ``parent_run_id`` (shown nested in the MLflow UI), found again by ``key`` so
    that an evaluation that is re-run or resumed never makes a second one. It carries its
    parent's model, family, subset and length tags and RunSpec id (``parent_run_spec_id``), so that
    a filter on a model shows its trials too, while its params and metrics have names of their own."""
    parent = client(tracking_uri).get_run(parent_run_id)
    tags = {"mlflow.parentRunId": parent_run_id, NESTED_KEY_TAG: key,
            **{k: parent.data.tags[k] for k in INHERITED_TAGS if k in parent.data.tags},
            **({PARENT_SPEC_TAG: parent.data.tags[RUN_SPEC_TAG]} if RUN_SPEC_TAG in parent.data.tags else {})}
    return _find_or_create(tracking_uri, parent.info.experiment_id,
                           f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.{NESTED_KEY_TAG} = '{key}'",
                           tags, run_name or key, params)


def start_study_run(tracking_uri: str, study: str, preset: str, *, params: Mapping[str, Any],
                    artifact_root: str | None = None) -> str:
    """The one study-level run of ``study``/``preset``: it groups the study's runs (they are
    created as its children) and holds the report."""
    return _find_or_create(tracking_uri, experiment_id(tracking_uri, study, artifact_root),
                           f"tags.{STUDY_PRESET_TAG} = '{preset}'", {STUDY_PRESET_TAG: preset, "study": study},
                           f"study {study} / {preset}", params)


def find_study_run(tracking_uri: str, study: str, preset: str) -> str | None:
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(study)
    found = [] if exp is None else c.search_runs([exp.experiment_id], f"tags.{STUDY_PRESET_TAG} = '{preset}'",
                                                  max_results=1)
    return found[0].info.run_id if found else None


def nested_result(tracking_uri: str, parent_run_id: str, key: str, metric: str) -> float | None:
    """The recorded ``metric`` of a finished nested run, or None (not run, or interrupted)."""
    c = client(tracking_uri)
    experiment = c.get_run(parent_run_id).info.experiment_id
    found = c.search_runs([experiment], max_results=1, filter_string=(
        f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.{NESTED_KEY_TAG} = '{key}' and "
        "attributes.status = 'FINISHED'"))
    return found[0].data.metrics.get(metric) if found else None


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param
    items = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client(tracking_uri).log_batch(run_id, params=items[i:i + 100])


def set_tags(tracking_uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag
    client(tracking_uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(tracking_uri).set_terminated(run_id, status=status)


def metric_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client(tracking_uri).get_metric_history(run_id, key)]


def last_step(tracking_uri: str, run_id: str, key: str) -> int:
    """The last step logged for ``key`` (-1 when none): a run resumed from an earlier checkpoint
    repeats the steps after it exactly, and does not log them twice."""
    return max((step for step, _ in metric_history(tracking_uri, run_id, key)), default=-1)


class MetricLogger:
    """Buffers metrics and sends them with ``log_batch`` (about 30x faster than one call per
    value). ``flush`` is called at every log interval and at the end."""

    def __init__(self, tracking_uri: str, run_id: str, flush_every: int = 200, logged_through: int = -1):
        self.tracking_uri, self.run_id, self.flush_every = tracking_uri, run_id, flush_every
        self.logged_through = logged_through  # steps up to here are in MLflow already: not logged again
        self._pending: list = []

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric
        if step <= self.logged_through:
            return
        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items())
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), 1000):  # MLflow's per-batch limit
            client(self.tracking_uri).log_batch(self.run_id, metrics=pending[i:i + 1000])

    def log_now(self, step: int, metrics: Mapping[str, float]) -> None:
        self.log(step, metrics)
        self.flush()


def runs_of_study(tracking_uri: str, study: str) -> Iterable:
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(study)
    return [] if exp is None else c.search_runs([exp.experiment_id], max_results=50_000)


def spec_runs(tracking_uri: str, study: str) -> dict[str, RunRecord]:
    """{RunSpec id: its run} from one search of the study's experiment; fine-tuning trials
    (nested) and the study-level run are not RunSpec runs. Tracking never makes two runs of one
    RunSpec; if something else did, the latest counts."""
    found: dict[str, RunRecord] = {}
    for run in runs_of_study(tracking_uri, study):
        spec_id = run.data.tags.get(RUN_SPEC_TAG)
        if spec_id is None or NESTED_KEY_TAG in run.data.tags:
            continue
        if spec_id not in found or run.info.start_time > found[spec_id].start_time:
            found[spec_id] = RunRecord.of(run)
    return found


def mark_killed(tracking_uri: str, study: str, spec_ids: set[str], study_run_id: str | None = None) -> int:
    """After Ctrl-C: the study's unfinished runs among ``spec_ids`` (and its study run) become
    KILLED, not RUNNING forever; the next invocation resumes them. Returns how many runs."""
    killed = [r.run_id for spec_id, r in spec_runs(tracking_uri, study).items()
              if spec_id in spec_ids and r.status == Status.PARTIAL]
    for run_id in [*killed, *([study_run_id] if study_run_id else [])]:
        finish_run(tracking_uri, run_id, "KILLED")
    return len(killed)


# ----------------------------------------------------------------------------- one writer per run

LEASE_HOLDER_TAG, LEASE_HEARTBEAT_TAG = "lease_holder", "lease_heartbeat"
LEASE_RENEW_S, LEASE_STALE_S = 30.0, 120.0   # a holder silent for 2 minutes is taken to be dead


class RunHeld(RuntimeError):
    """The run is being trained or evaluated by another live process."""


def lease_holder() -> str:
    import socket
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(holder: str) -> bool:
    """Whether a holder may still be alive: a process of this machine is looked up (a killed
    study's runs are taken over at once); one of another machine is trusted to its heartbeat."""
    import socket
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _claim(tracking_uri: str, run_id: str, me: str, settle_s: float) -> str | None:
    """Take the run's lease unless another live holder's heartbeat is fresh; None on success, else
    the holder. Two claims at once both write; the last write wins, and each reads back after
    ``settle_s`` to see whose it is. That holds while a claim writes within ``settle_s / 2`` of its
    read; a slower one (a loaded machine) looks again."""
    for _ in range(5):
        start = time.monotonic()
        tags = client(tracking_uri).get_run(run_id).data.tags
        holder, beat = tags.get(LEASE_HOLDER_TAG), float(tags.get(LEASE_HEARTBEAT_TAG) or 0)
        if holder and holder != me and time.time() - beat < LEASE_STALE_S and _alive(holder):
            return holder
        set_tags(tracking_uri, run_id, {LEASE_HOLDER_TAG: me, LEASE_HEARTBEAT_TAG: f"{time.time():.0f}"})
        if time.monotonic() - start < settle_s / 2:
            break
    time.sleep(settle_s)
    holder = client(tracking_uri).get_run(run_id).data.tags.get(LEASE_HOLDER_TAG)
    return None if holder == me else holder


@contextlib.contextmanager
def lease(tracking_uri: str, run_id: str, settle_s: float = 0.5, what: str | None = None):
    """Hold the run's lease while the block runs (one writer per run): renewed every 30 s by a
    background thread, released at the end. Raises :class:`RunHeld` when another live process
    holds it; a holder that died on this machine, or silent for 2 minutes, is taken over.
    Re-entrant within a process."""
    me = lease_holder()
    if client(tracking_uri).get_run(run_id).data.tags.get(LEASE_HOLDER_TAG) == me:
        yield  # this process holds it already (the chain, then its pretraining)
        return
    holder = _claim(tracking_uri, run_id, me, settle_s)
    if holder is not None:
        raise RunHeld(f"{what or f'run {run_id}'} is held by {holder} (another study or pretraining of the same "
                      f"run, alive in the last {LEASE_STALE_S:.0f} s): let it finish, then run the same command again")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_RENEW_S):
            try:
                set_tags(tracking_uri, run_id, {LEASE_HEARTBEAT_TAG: f"{time.time():.0f}"})
            except Exception:  # a server outage: try again at the next beat
                pass

    beater = threading.Thread(target=renew, daemon=True, name=f"lease-{run_id}")
    beater.start()
    try:
        yield
    finally:
        stop.set()
        beater.join()
        try:
            set_tags(tracking_uri, run_id, {LEASE_HOLDER_TAG: "", LEASE_HEARTBEAT_TAG: "0"})
        except Exception:  # the server is away: the lease goes stale on its own, and the block's error matters
            pass


def reopen_run(tracking_uri: str, run_id: str) -> None:
    """Mark a run RUNNING again (its transfer stages are about to run)."""
    client(tracking_uri).update_run(run_id, status="RUNNING")


def recorded_metrics(tracking_uri: str, run_id: str) -> dict[str, float]:
    """The latest value of every metric of a run."""
    return dict(client(tracking_uri).get_run(run_id).data.metrics)


def log_files(tracking_uri: str, run_id: str, paths: Iterable[str | os.PathLike], artifact_path: str) -> None:
    """Files as artifacts of a run, under ``artifact_path``."""
    for path in paths:
        client(tracking_uri).log_artifact(run_id, str(path), artifact_path=artifact_path)


def log_json(tracking_uri: str, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
    """A mapping as a JSON artifact of a run (written again on a resumed run: the same content)."""
    client(tracking_uri).log_dict(run_id, dict(data), artifact_file)


NOTE_TAG = "mlflow.note.content"   # what MLflow's UI shows as a run's or an experiment's description


def describe_experiment(tracking_uri: str, study: str, text: str) -> None:
    """The study's experiment description (shown above its runs table), unless it has one: a
    user's own is kept."""
    experiment = client(tracking_uri).get_experiment(experiment_id(tracking_uri, study))
    if NOTE_TAG not in experiment.tags:
        client(tracking_uri).set_experiment_tag(experiment.experiment_id, NOTE_TAG, text)


SHARED_VIEW_TAG = "mlflow.sharedViewState."  # MLflow 3.15+: a runs-table view, opened by ?viewStateShareKey=KEY


def set_runs_view(tracking_uri: str, study: str, key: str, *, params: Iterable[str], metrics: Iterable[str],
                  order_by: str) -> str:
    """A shared view of the study's runs table, stored on its experiment as MLflow's UI stores the
    views it shares: the pretraining runs (those with a ``model`` param: not the fine-tuning trials
    nor the study run), these params and metrics as columns, sorted by the metric ``order_by``. The
    UI opens it at ``#/experiments/<id>/runs?viewStateShareKey=<key>``, which is returned."""
    import json
    experiment = experiment_id(tracking_uri, study)
    state = {"searchFilter": "params.model != ''", "orderByKey": f"metrics.`{order_by}`", "orderByAsc": True,
             "selectedColumns": [f"params.`{p}`" for p in params] + [f"metrics.`{m}`" for m in metrics]}
    client(tracking_uri).set_experiment_tag(experiment, SHARED_VIEW_TAG + key, json.dumps(state))
    return f"#/experiments/{experiment}/runs?viewStateShareKey={key}"


# ----------------------------------------------------------------------------- provenance

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


def log_datasets(tracking_uri: str, run_id: str, datasets: Iterable[DatasetRecord]) -> None:
    """The datasets as the run's inputs (the run page's Datasets section). MLflow keeps one entry
    per (name, digest, context), so logging again on a resumed run adds nothing."""
    import json
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.exceptions import MlflowException
    inputs = [DatasetInput(Dataset(name=d.name, digest=d.digest, source_type="vit-scaling",
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
    root = Path(__file__).resolve().parents[1]

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
