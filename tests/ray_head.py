"""A real Ray head for tests: `ray start --head` on free ports and its own temp dir, with token
auth on, and stopped afterwards by ending only its own processes (never `ray stop`, which would
end every Ray process on the machine)."""
from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.raycluster import LOCAL_RAY_ENV


# Ports for test servers come from below the kernel's ephemeral range (32768-60999 here), so an
# outgoing connection can never take one between our check and the server's bind, and above Ray's
# default worker ports (10002-19999). A preemption test once failed because a worker node could not
# reach a head whose GCS port had been picked from the ephemeral range.
PORT_RANGE = range(20000, 32768)
_handed_out: set[int] = set()  # never the same port twice in one test session


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))  # servers here bind every interface (Ray's GCS does)
            return True
        except OSError:
            return False


def free_port(also: tuple[int, ...] = ()) -> int:
    """A free port in PORT_RANGE, not handed out before in this process, with ``port + offset``
    free as well for each offset in ``also`` (SeaweedFS serves gRPC on port + 10000)."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    candidates = [p for p in PORT_RANGE if all(p + offset in PORT_RANGE for offset in also)]
    for _ in range(2000):
        port = rng.choice(candidates)
        wanted = [port + offset for offset in (0, *also)]
        if not _handed_out.intersection(wanted) and all(map(_bindable, wanted)):
            _handed_out.update(wanted)
            return port
    raise AssertionError(f"no free port in {PORT_RANGE} (with offsets {also}) after 2000 tries")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def processes_of(session_id: int, marker: str) -> list[int]:
    """Our processes: those in the head's session, or whose command line names our temp dir."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            if (os.getsid(pid) == session_id or marker in cmdline) and alive(pid):
                found.append(pid)
        except (OSError, ProcessLookupError):
            continue
    return found


def end_processes(session_id: int, marker: str, term_grace: float = 5.0) -> None:
    """SIGTERM to our processes, then SIGKILL to those still there after ``term_grace`` seconds
    (0: SIGKILL at once). Some Ray processes take 15 s or more to honour a SIGTERM."""
    steps = ((signal.SIGTERM, term_grace), (signal.SIGKILL, 5)) if term_grace else ((signal.SIGKILL, 5),)
    for sig, grace in steps:
        pids = processes_of(session_id, marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = [pid for pid in pids if alive(pid)]


def _start_node(command: list[str], env: dict, temp_dir: Path, cwd: Path | None) -> subprocess.Popen:
    """`ray start --block` in its own session, logging to ``temp_dir/node.log``; returns once the
    node is up."""
    log_path = temp_dir / "node.log"
    with open(log_path, "w") as log:
        node = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while "Ray runtime started" not in log_path.read_text():
        if node.poll() is not None or time.monotonic() > deadline:
            stop_node(node, temp_dir)
            raise AssertionError(f"ray start did not come up:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    return node


def stop_node(node: subprocess.Popen, temp_dir: Path, term_grace: float = 5.0) -> None:
    """Every process of the node at once (`ray start --block` would stop them one by one on
    SIGTERM, which took 30 s here); what ignores SIGTERM for ``term_grace`` s is killed (0: SIGKILL
    at once, as a preempted machine)."""
    end_processes(node.pid, str(temp_dir), term_grace=term_grace)
    if node.poll() is None:
        node.kill()
    node.wait()


@contextlib.contextmanager
def ray_head(*, num_cpus: int, extra_args: tuple[str, ...] = (), extra_env: dict | None = None,
             temp_dir: Path | None = None, gcs_port: int | None = None, cwd: Path | None = None):
    """Yields {"dashboard", "address", "token", "dir", "env"}; ``env`` is what a client (``ray job
    submit``) needs: the token and no inherited RAY_ADDRESS."""
    temp_dir = temp_dir or Path(tempfile.mkdtemp(prefix="vitc-", dir="/tmp"))  # short: socket paths
    gcs_port, dashboard_port = gcs_port or free_port(), free_port()
    token = secrets.token_hex(32)
    client_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    client_env.pop("RAY_ADDRESS", None)
    client_env.pop(LOCAL_RAY_ENV, None)   # a cluster's processes are on no command's local Ray
    env = {**client_env, "RAY_USAGE_STATS_ENABLED": "0", **(extra_env or {})}
    command = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        f"--port={gcs_port}", f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={temp_dir / 'ray'}",
        f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats", *extra_args,
    ]
    head = _start_node(command, env, temp_dir, cwd)
    try:
        yield {"dashboard": f"http://127.0.0.1:{dashboard_port}", "address": f"127.0.0.1:{gcs_port}",
               "token": token, "dir": temp_dir, "env": client_env, "node_env": env}
    finally:
        stop_node(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def ray_worker_node(head: dict, *, num_cpus: int, cwd: Path | None = None):
    """A worker node joined to ``head`` (`ray start --address`), with its own temp dir and ports.
    Yields {"process", "dir"}; ``stop_node(process, dir, term_grace=0)`` preempts it."""
    temp_dir = Path(tempfile.mkdtemp(prefix="vitw-", dir="/tmp"))
    command = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--block", f"--address={head['address']}",
        f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={temp_dir / 'ray'}",
        f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}", "--min-worker-port=0", "--max-worker-port=0",
        "--disable-usage-stats",
    ]
    try:
        node = _start_node(command, head["node_env"], temp_dir, cwd)
    except AssertionError as err:  # say what the head's GCS was doing (a join failed once in ~8 runs)
        gcs = sorted((head["dir"] / "ray").glob("session_*/logs/gcs_server.out"))
        tail = gcs[-1].read_text(errors="replace")[-2000:] if gcs else "(no gcs_server.out)"
        raise AssertionError(f"{err}\nhead's GCS log, last lines:\n{tail}") from None
    try:
        yield {"process": node, "dir": temp_dir}
    finally:
        stop_node(node, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
