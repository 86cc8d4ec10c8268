"""What a study checks and prepares before it launches anything, so that a mistake is said in
seconds, by name: the storage (absolute, writable, its bucket there), the tracking server and a
Ray address answering, the pretraining data (the preset's, of the declared size; the built-in
synthetic sets made on first use under ``<storage>/data/<name>``) and the downstream sets (made
there on first use when built in, like ``digits``)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Callable, Iterator

from pipeline import storage as store
from pipeline import tracking
from pipeline.compute import parse_count
from pipeline.data import DataError, open_dataset
from pipeline.data.synth import generate
from pipeline.spec import Preset, TransferPlan
from pipeline.transfer.checkpoints import builtin_dataset
from pipeline.transfer.registry import datasets_of, evaluators_for


class StudyError(ValueError):
    """A study that cannot start as asked; the message says what to change."""


def resolve_storage(storage: str) -> str:
    """Storage as an absolute path or a URI. A relative path inside a ``ray job submit`` working
    dir is refused: that folder is Ray's temporary copy, so results would be lost and a re-submitted
    study could not find its runs."""
    if not store.is_remote(storage) and not Path(storage).expanduser().is_absolute() \
            and "runtime_resources" in str(Path.cwd()):
        raise StudyError(f"--storage {storage!r} is relative, and this job runs in Ray's temporary copy of the "
                         f"working dir ({Path.cwd()}): give an absolute path or a URI (s3://bucket/dir), or set "
                         "VIT_SCALING_STORAGE")
    return store.resolve(storage)


def check_services(storage: str, tracking_uri: str) -> None:
    """The storage can be written (a local folder) or its bucket answers, and the tracking server
    answers (within seconds, before anything is made or launched): a file in the way, read-only
    storage, a typo in a bucket, a wrong key or a server that is down is said here."""
    try:
        if store.is_remote(storage):
            store.check_bucket(storage)
        else:
            store.check_writable(storage)
    except OSError as err:
        raise StudyError(f"--storage {storage}: {err}") from None
    try:
        tracking.check_server(tracking_uri)
    except tracking.TrackingError as err:
        raise StudyError(str(err)) from None
    check_ray_address(os.environ.get("RAY_ADDRESS"))


def check_ray_address(address: str | None, wait_s: float = 10.0) -> None:
    """A cluster named by RAY_ADDRESS (host:port, or ray://host:port) answers on its port within
    ``wait_s``; unset or "auto"/"local" leaves the choice to Ray."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise StudyError(f"RAY_ADDRESS={address!r} is not host:port: fix it, or unset it to run on a local Ray")
    deadline, problem = time.monotonic() + wait_s, "no answer"
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
            return
        except OSError as err:
            problem = err.strerror or type(err).__name__
            time.sleep(1.0)
    raise StudyError(f"RAY_ADDRESS={address}: nothing answers at {host}:{port} ({problem}, for {wait_s:.0f} s): start "
                     "the cluster (`ray start --head`), fix the address, or unset RAY_ADDRESS to run on a local Ray")


def synth_target(preset: Preset, storage: str) -> str:
    """Where the preset's built-in synthetic data lives; an error when it has none."""
    if preset.dataset.synth is None:
        raise StudyError(f"the preset's dataset {preset.dataset.name!r} is not built in: give its location with "
                         "--data (a folder or URI made by `python -m pipeline.data convert ...`)")
    return store.join(storage, "data", preset.dataset.name)


@contextlib.contextmanager
def synth_started(preset: Preset, storage: str, emit: Callable[[str], None] = print) -> Iterator[None]:
    """The preset's built-in synthetic data, when it is not made yet, made meanwhile by another
    process (its shards on two more: ``generate``'s "processes") while the study starts up (MLflow,
    the compute counts, Ray: bench/RESULTS.md); :func:`prepare_data` then waits for it. Leaving the
    block early (an error, Ctrl-C) stops it: a half-made dataset has no manifest and is made again on
    the next use. If it fails, ``prepare_data`` makes it again in this process and says why."""
    target = synth_target(preset, storage)
    if store.is_file(store.join(target, "manifest.json")):  # written last: its presence means complete
        yield
        return
    emit(f"[study] generating the synthetic dataset {preset.dataset.name!r} in {target} (first use)")
    # a fresh interpreter (a multiprocessing child would import the study's own modules, 1.5 CPU-s each,
    # in it and in its workers), in a session of its own: a terminal's Ctrl-C reaches the driver only
    # Its stderr goes to a file, said by prepare_data if it fails: the warnings of a maker stopped early
    # (multiprocessing's resource tracker outlives it and reports its pool's semaphores) are not the user's
    with tempfile.TemporaryFile() as said:
        maker = subprocess.Popen([sys.executable, "-c", SYNTH_MAIN, target, preset.dataset.synth.model_dump_json()],
                                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=said)
        _MAKING[target] = (maker, said)
        try:
            yield
        finally:
            _MAKING.pop(target, None)
            if maker.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(maker.pid, signal.SIGTERM)
            maker.wait()


def _made_meanwhile(target: str, emit: Callable[[str], None]) -> None:
    """Wait for the process making ``target`` (synth_started), if any; say why if it failed."""
    maker, said = _MAKING.get(target, (None, None))
    if maker is not None and maker.wait() != 0:
        said.seek(0)
        lines = said.read().decode(errors="replace").strip().splitlines() or [f"exit status {maker.returncode}"]
        emit(f"[study] making the synthetic data in another process failed ({lines[-1][:300]}): making it here")


SYNTH_MAIN = ("import sys; from pipeline.data.synth import SynthSpec, generate; "
              "generate(sys.argv[1], SynthSpec.model_validate_json(sys.argv[2]), executor='processes', progress=False)")
_MAKING: dict[str, tuple[subprocess.Popen, IO[bytes]]] = {}   # {dataset location: (the process making it, its stderr)}


def prepare_data(preset: Preset, data: str | None, storage: str, progress: bool = True,
                 emit: Callable[[str], None] = print) -> str:
    """The pretraining dataset's location: ``data`` when given (its name must be the preset's),
    or the preset's synthetic data, generated under ``<storage>/data/<name>`` on first use."""
    name = preset.dataset.name
    if data is None:
        target = synth_target(preset, storage)
        _made_meanwhile(target, emit)
        if not store.is_file(store.join(target, "manifest.json")):  # written last: its presence means complete
            emit(f"[study] generating the synthetic dataset {name!r} in {target} (first use)")
            generate(target, preset.dataset.synth, progress=progress)
        data = target
    try:
        store.check_bucket(data)
        dataset = open_dataset(data)
    except (DataError, OSError) as err:
        raise StudyError(f"--data {data}: not a readable dataset: {err}") from None
    if dataset.name != name:
        raise StudyError(f"--data {data} holds dataset {dataset.name!r}, but the preset pretrains on {name!r} "
                         "(the name is part of every run id): give the right folder")
    check_size(preset, data, dataset.num_rows("train"))
    return data


SIZE_TOLERANCE = 0.01  # declared sizes are rounded ("303M"); beyond 1% the plan would misstate compute


def check_size(preset: Preset, data: str, rows: int) -> None:
    """The data's training rows must be the preset's declared images (within the rounding of a
    count like 303M): the plan, the progress and the report count the preset's."""
    if preset.dataset.images is None:
        return
    images = preset.dataset.images
    declared = parse_count(images)
    if abs(rows / declared - 1) > SIZE_TOLERANCE:
        said = f"{images} ({declared:,})" if isinstance(images, str) else f"{declared:,}"
        raise StudyError(f"--data {data} holds {rows:,} training images, but the preset declares {said}, which "
                         f"its plan and report count: give the full dataset, or a study file whose dataset.images "
                         f"is {rows}")


def prepare_downstream(plan: TransferPlan, storage: str, progress: bool = True) -> dict[str, str]:
    """{name: location} of every downstream set of the plan: ``<storage>/data/<name>`` (a folder
    or a URI) or a built-in one (digits), made there on first use."""
    root = store.join(storage, "data")
    paths = {}
    for name in datasets_of(evaluators_for(plan)):
        candidate = store.join(root, name)
        paths[name] = candidate if store.is_file(store.join(candidate, "manifest.json")) else \
            builtin_dataset(name, root, progress)
        if paths[name] is None:
            raise StudyError(f"downstream dataset {name!r} is not in {root}: convert it there first "
                             f"(`python -m pipeline.data convert --help`; the folder must be {candidate})")
    return paths
