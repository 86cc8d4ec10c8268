"""Where the pipeline's files live: a local path or a URI (``s3://``, ``gs://``, ``file://``),
decided here and only here, on ``pyarrow.fs``.

Every other module passes locations around as strings and calls these functions: datasets
(manifests and shards), checkpoints and Ray Train run folders, downstream sets, reports. A
location is either an absolute local path or a URI; :func:`resolve` makes it one of the two.

Endpoint and credentials come only from the standard chain that pyarrow (and boto3, the AWS CLI,
Ray) read: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
profiles, instance roles; for ``gs://`` Google's application default credentials. Nothing here
takes or logs a secret.

Writes are whole-object: a local file is written under a temporary name and renamed, an object
is stored by one upload that becomes visible only when complete. So a dataset writer that puts its
manifest last never leaves a dataset that opens half written.

Remote things a node needs as local files (checkpoints) are fetched into the node's cache
(``$VIT_SCALING_CACHE`` or ``~/.cache/vit-scaling``) under a key of their content identity (the
location plus every file's size and modification time), so two nodes never disagree and a stale
copy is never used.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import posixpath
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

# Bounded waits, so that an unreachable or misconfigured store fails within seconds with a clear
# message rather than after minutes of retries. The request timeout is the wait for the next
# bytes of an answer (not for a whole transfer), so it does not limit large reads.
CONNECT_TIMEOUT_S = 3.0
REQUEST_TIMEOUT_S = 20.0
S3_ATTEMPTS = 3  # transient errors (5xx, throttling, resets) are retried by the AWS SDK
FileType = pafs.FileType


class StorageError(OSError):
    """A location that cannot be used, said for people: which location, what is wrong, what to
    check."""


def is_remote(location: str | os.PathLike) -> bool:
    """True for object-store URIs (``s3://``, ``gs://``); False for local paths and ``file://``."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def resolve(location: str | os.PathLike) -> str:
    """An absolute local path (``~`` expanded, ``file://`` removed) or the URI as given."""
    text = str(location)
    if is_remote(text):
        return text.rstrip("/")
    if text.startswith("file://"):
        text = urlparse(text).path
    return str(Path(text).expanduser().resolve())


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base/part/...`` for URIs and local paths alike."""
    base = str(base)
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def name(location: str | os.PathLike) -> str:
    """The last component of a location (a dataset's folder name)."""
    return posixpath.basename(str(location).rstrip("/"))


def file_uri(location: str | os.PathLike) -> str:
    """A URI for the location (``file://`` for local paths), as MLflow's artifact root wants."""
    return str(location) if is_remote(location) else Path(resolve(location)).as_uri()


def with_scheme_of(root: str, path: str) -> str:
    """A filesystem path as returned by pyarrow or Ray Train (``bucket/key`` for object stores)
    made into a location of the same kind as ``root``."""
    if is_remote(root) and not is_remote(path):
        return f"{urlparse(root).scheme}://{path.lstrip('/')}"
    return path


# ----------------------------------------------------------------------------- filesystems

def _env_key() -> tuple:
    """What a cached filesystem depends on: the standard variables (tests and users may change
    them between calls in one process)."""
    names = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")
    return tuple(os.environ.get(n) for n in names)


@functools.lru_cache(maxsize=16)
def _s3(region: str | None, quick: bool, env_key: tuple) -> pafs.S3FileSystem:
    """S3 with bounded waits; keys, session token and profile come from the AWS SDK's own chain.
    pyarrow's constructor does not read AWS_ENDPOINT_URL (only ``from_uri`` does), so it is passed
    here. ``quick``: short waits and one retry, for checks made before launching anything."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    where = {}
    if endpoint:
        parsed = urlparse(endpoint if "//" in endpoint else f"https://{endpoint}")
        where = {"endpoint_override": parsed.netloc, "scheme": parsed.scheme}
    return pafs.S3FileSystem(region=region, connect_timeout=CONNECT_TIMEOUT_S,
                             request_timeout=4.0 if quick else REQUEST_TIMEOUT_S,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2 if quick else S3_ATTEMPTS),
                             **where)


@functools.lru_cache(maxsize=16)
def _bucket_region(bucket: str, env_key: tuple) -> str | None:
    """The bucket's region on AWS itself; None (the SDK's default) with a custom endpoint or a
    region given in the environment."""
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or \
            os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
        return None
    try:
        return pafs.resolve_s3_region(bucket)
    except OSError:
        return None  # the first real request says what is wrong


def filesystem(location: str | os.PathLike, quick: bool = False) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path on it) for a location."""
    text = str(location)
    if not is_remote(text):
        return pafs.LocalFileSystem(), resolve(text)
    parsed = urlparse(text)
    path = (parsed.netloc + parsed.path).rstrip("/")
    if parsed.scheme == "s3":
        return _s3(_bucket_region(parsed.netloc, _env_key()), quick, _env_key()), path
    fs, path = pafs.FileSystem.from_uri(text)
    return fs, path.rstrip("/")


def ray_storage(location: str) -> dict:
    """``storage_path`` (and ``storage_filesystem``) for Ray Train's and Tune's RunConfig: remote
    storage goes through this module's filesystem (its timeouts, region and credential chain)."""
    if not is_remote(location):
        return {"storage_path": resolve(location)}
    fs, path = filesystem(location)
    return {"storage_path": path, "storage_filesystem": fs}


# ----------------------------------------------------------------------------- files

def info(location: str | os.PathLike) -> pafs.FileInfo:
    fs, path = filesystem(location)
    return _call(location, fs.get_file_info, path)


def exists(location: str | os.PathLike) -> bool:
    return info(location).type != pafs.FileType.NotFound


def is_file(location: str | os.PathLike) -> bool:
    return info(location).type == pafs.FileType.File


def size(location: str | os.PathLike) -> int:
    return info(location).size


def open_input(location: str | os.PathLike) -> pa.NativeFile:
    """A random-access file: Parquet reads only the byte ranges it needs (footer, row groups)."""
    fs, path = filesystem(location)
    return _call(location, fs.open_input_file, path)


def read_bytes(location: str | os.PathLike) -> bytes:
    with open_input(location) as f:
        return f.read()


def read_text(location: str | os.PathLike) -> str:
    return read_bytes(location).decode("utf-8")


def write_bytes(location: str | os.PathLike, data: bytes | pa.Buffer) -> None:
    """Write a whole file or object; readers never see it half written."""
    fs, path = filesystem(location)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(memoryview(data))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    # One object upload, visible only once complete.
    with _call(location, fs.open_output_stream, path) as f:
        f.write(data)


def write_text(location: str | os.PathLike, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def makedirs(location: str | os.PathLike) -> None:
    """A folder, for local paths (object stores have no folders to make)."""
    if not is_remote(location):
        Path(resolve(location)).mkdir(parents=True, exist_ok=True)


def listdir(location: str | os.PathLike) -> list[str]:
    """Names directly inside a folder (empty when it does not exist)."""
    fs, path = filesystem(location)
    found = _call(location, fs.get_file_info, pafs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(f.path) for f in found)


def files_under(location: str | os.PathLike) -> list[pafs.FileInfo]:
    fs, path = filesystem(location)
    found = _call(location, fs.get_file_info, pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted((f for f in found if f.type == pafs.FileType.File), key=lambda f: f.path)


def move(source: str | os.PathLike, target: str | os.PathLike) -> None:
    fs, src = filesystem(source)
    _call(source, fs.move, src, filesystem(target)[1])


def delete(location: str | os.PathLike) -> None:
    """Delete a file (nothing when it is not there)."""
    fs, path = filesystem(location)
    if info(location).type == pafs.FileType.File:
        _call(location, fs.delete_file, path)


def delete_folder(location: str | os.PathLike) -> None:
    """Delete a folder and everything in it (nothing when it is not there)."""
    fs, path = filesystem(location)
    if info(location).type == pafs.FileType.Directory:
        _call(location, fs.delete_dir, path)


def copy_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Stream one file to another location (local or remote, either way)."""
    src_fs, src = filesystem(source)
    dst_fs, dst = filesystem(target)
    if isinstance(dst_fs, pafs.LocalFileSystem):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
    _call(target, pafs.copy_files, src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)


def sha256(location: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open_input(location) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def upload_folder(local: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy a local folder's files to ``target`` (a URI or another local folder)."""
    fs, path = filesystem(target)
    if isinstance(fs, pafs.LocalFileSystem) and Path(resolve(local)) == Path(path):
        return
    _call(target, pafs.copy_files, str(Path(local).resolve()), path,
          source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


@contextlib.contextmanager
def folder_to_write(location: str | os.PathLike):
    """A local folder whose files end up at ``location``: the folder itself when local, else a
    temporary folder uploaded when the block succeeds (reports: made by libraries that write
    local files)."""
    if not is_remote(location):
        Path(resolve(location)).mkdir(parents=True, exist_ok=True)
        yield Path(resolve(location))
        return
    with tempfile.TemporaryDirectory(prefix="vit-scaling-") as tmp:
        yield Path(tmp)
        upload_folder(tmp, location)


# ----------------------------------------------------------------------------- node-local caches

def cache_root() -> Path:
    return Path(os.environ.get("VIT_SCALING_CACHE") or Path.home() / ".cache" / "vit-scaling")


def node_dir(storage: str, name: str) -> Path:
    """A local folder for ``name`` (e.g. feature caches): under the storage when it is local,
    else in this node's cache."""
    return Path(resolve(storage)) / name if not is_remote(storage) else cache_root() / name


def content_key(location: str | os.PathLike) -> str:
    """Identity of a file or folder's content: its location and every file's size and
    modification time (one listing; no bytes read). A rewritten file gets a new key."""
    found = files_under(location) if info(location).type == pafs.FileType.Directory else [info(location)]
    if not found or found[0].type == pafs.FileType.NotFound:
        raise StorageError(f"{location}: nothing there")
    text = "\n".join([resolve(location), *(f"{f.path}:{f.size}:{f.mtime_ns}" for f in found)])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def fetch(location: str | os.PathLike, kind: str = "fetched") -> Path:
    """A local path for a file or folder: itself when local, else a copy in this node's cache
    under its content key, downloaded once (whole, then renamed, so a half copy is never used)."""
    if not is_remote(location):
        return Path(resolve(location))
    target = cache_root() / kind / content_key(location)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        fs, path = filesystem(location)
        if info(location).type == pafs.FileType.File:
            _call(location, pafs.copy_files, path, str(partial / name(location)), source_filesystem=fs,
                  destination_filesystem=pafs.LocalFileSystem())
        else:
            _call(location, pafs.copy_files, path, str(partial), source_filesystem=fs,
                  destination_filesystem=pafs.LocalFileSystem())
        try:
            os.rename(partial, target)
        except OSError:  # another process of this node fetched it first
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


# ----------------------------------------------------------------------------- errors and checks

def _hint(location: str, error: Exception) -> str:
    """What to check, from the store's answer (pyarrow reports the AWS error names in its text)."""
    text = str(error)
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if "NETWORK_CONNECTION" in text or "Couldn't connect" in text or ("connect" in text.lower() and "timed out" in text):
        where = f"AWS_ENDPOINT_URL={endpoint}" if endpoint else "the default AWS endpoint"
        return (f"the object store did not answer ({where}): check the endpoint variable AWS_ENDPOINT_URL "
                "and that the store is running and reachable from this machine")
    if any(s in text for s in ("INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "InvalidAccessKeyId",
                               "SignatureDoesNotMatch", "ACCESS_DENIED", "AccessDenied", "Forbidden", "403")):
        return ("the store refused the credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, "
                "the instance role), e.g. with `aws s3 ls " + _bucket_uri(location) + "`")
    if "NoSuchBucket" in text or "NO_SUCH_BUCKET" in text or "bucket does not exist" in text.lower():
        return f"the bucket does not exist: create it (`aws s3 mb {_bucket_uri(location)}`) or fix the URI"
    return "check the URI, AWS_ENDPOINT_URL and the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE)"


def _bucket_uri(location: str) -> str:
    parsed = urlparse(str(location))
    return f"{parsed.scheme}://{parsed.netloc}" if parsed.netloc else str(location)


def _call(location, fn, *args, **kwargs):
    """``fn(*args)``, with store errors turned into a :class:`StorageError` naming the location
    and what to check; a missing file stays a FileNotFoundError."""
    try:
        return fn(*args, **kwargs)
    except FileNotFoundError:
        raise
    except OSError as err:
        if not is_remote(location):
            raise
        raise StorageError(f"{location}: {str(err).strip().splitlines()[0]} ({_hint(str(location), err)})") from err


def answers(location: str | os.PathLike) -> bool:
    """Whether the store behind ``location`` answers a listing now (a local path always does)."""
    if not is_remote(location):
        return True
    fs, path = filesystem(location, quick=True)
    try:
        fs.get_file_info(path)
        return True
    except OSError:
        return False


def wait_until_answering(location: str | os.PathLike, patience_s: float, every_s: float = 2.0) -> bool:
    """Wait (up to ``patience_s``) for the store behind ``location``, which did not answer just now
    (:func:`answers`), to answer again, as after an outage or a restart of the store; True once it does."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        time.sleep(every_s)
        if answers(location):
            return True
    return False


def check_writable(location: str | os.PathLike) -> None:
    """A local folder that can be made and written (a file in its way, read-only storage, no
    permission: an OSError that says which), checked before anything is launched."""
    path = Path(resolve(location))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise StorageError(f"cannot write to {path} ({err.strerror or err}): give a folder you can write") from None


def check_bucket(location: str | os.PathLike) -> None:
    """Fail fast, before anything is launched, when a remote location's bucket cannot be used:
    unreachable endpoint, refused credentials, missing bucket (never created on the fly)."""
    if not is_remote(location):
        return
    bucket = _bucket_uri(str(location))
    fs, path = filesystem(bucket, quick=True)
    found = _call(bucket, fs.get_file_info, path)
    if found.type == pafs.FileType.NotFound:
        raise StorageError(f"{location}: the bucket {bucket} does not exist (create it with `aws s3 mb {bucket}`, "
                           "or fix the URI; check AWS_ENDPOINT_URL if the bucket is on another store)")
