"""The MLflow tracking store: its URI (SQLite under the storage by default, or a server), the
client every other tracking module uses (:func:`client`: retries on a server, calls not cut by
Ctrl-C), the server's health, the database's creation and one experiment per study."""
from __future__ import annotations

import contextlib
import functools
import os
import time
import urllib.parse
from pathlib import Path

from pipeline import exits
from pipeline import storage as store


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
    """An MlflowClient whose calls are not cut by Ctrl-C (``exits.deferred_interrupts``): an SQLite
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
            with exits.deferred_interrupts():
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
    with store_lock(tracking_uri):
        db = sqlite_path(tracking_uri)
        if db is not None and not (db.exists() and db.stat().st_size):
            copy_empty_store(db)
        client(tracking_uri).search_experiments(max_results=1)
    if tracking_uri.startswith("sqlite:///") and "%" in tracking_uri:
        # MLflow makes the database's folder from the URI without decoding it: an empty stray
        # folder ('q%3Fx' beside 'q?x'), removed here
        stray = Path(tracking_uri.removeprefix("sqlite:///")).parent
        with contextlib.suppress(OSError):
            stray.rmdir()  # only when empty, and never the storage itself (its name has no '%xx')



def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a SQLite tracking URI; None for a server."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(urllib.parse.unquote(tracking_uri.removeprefix("sqlite:///").split("?")[0]))


def copy_empty_store(db: Path) -> None:
    """A new SQLite store as a copy of an empty one made once per machine and MLflow version (in
    the cache): MLflow makes a new database by running its ~60 schema migrations, 2.6 s of each
    new study's start on the 2-core dev box (1 s in a process that made one before). The copy's
    default experiment is then given what MLflow would have given it: its artifact location under
    the working directory, and the time."""
    import shutil
    import sqlite3

    import mlflow
    template = store.cache_root() / f"mlflow-{mlflow.__version__}-empty.db"
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        making = template.with_name(f".{template.name}.{os.getpid()}")
        making.unlink(missing_ok=True)
        client(f"sqlite:///{making}").search_experiments(max_results=1)
        making.replace(template)   # atomic: another process sees a whole template or none
    db.parent.mkdir(parents=True, exist_ok=True)
    partial = db.with_name(f".{db.name}.partial")
    shutil.copyfile(template, partial)
    now = int(time.time() * 1000)
    with contextlib.closing(sqlite3.connect(partial)) as connection, connection:
        connection.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                           "WHERE experiment_id = 0", (str(Path.cwd() / "mlruns" / "0"), now, now))
    partial.replace(db)


@contextlib.contextmanager
def store_lock(tracking_uri: str):
    """An exclusive lock on a SQLite store (a file lock next to it, across processes); nothing for
    a tracking server, whose callers make their writes safe otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl
    db = sqlite_path(tracking_uri)
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield



# The experiment's kind, which MLflow's UI reads to choose its layout where it shows no GenAI/Model
# training toggle; MLflow 3.17 shows that toggle and ignores the tag (the study's links carry
# ``runs.TRAINING_LAYOUT`` for that, bench/screens/6_* and 7_*).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def experiment_id(tracking_uri: str, study: str, artifact_root: str | None = None) -> str:
    """The study's experiment, made on first use. Its artifacts go under ``artifact_root``, except
    with a tracking server, which decides where artifacts go (``--artifacts-destination``)."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(study)
    if exp is not None:
        if EXPERIMENT_KIND_TAG not in exp.tags:   # made by an earlier version
            c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    location = None
    if artifact_root is not None and not is_server(tracking_uri):
        location = store.file_uri(artifact_root)
    try:
        return c.create_experiment(study, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # created concurrently by another driver
        exp = c.get_experiment_by_name(study)
        if exp is None:
            raise
        return exp.experiment_id
