import os
import sys
from pathlib import Path

import pytest
import torch

# Tests import the packages from this checkout even when it is not installed.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session", autouse=True)
def own_mac_cache(tmp_path_factory):
    """Forward MACs are counted into a cache of the test session's own, empty at the start (as on
    a new machine, so suite times do not depend on earlier runs), never into the user's."""
    before = os.environ.get("VIT_SCALING_CACHE")
    os.environ["VIT_SCALING_CACHE"] = str(tmp_path_factory.mktemp("mac-cache"))
    yield
    if before is None:
        del os.environ["VIT_SCALING_CACHE"]
    else:
        os.environ["VIT_SCALING_CACHE"] = before


@pytest.fixture(scope="module")
def ray_cluster(request):
    """Local Ray on 2 CPUs for one test module. A module that needs the dashboard (it serves
    ray.util.state) sets ``RAY_DASHBOARD = True``; it costs a few seconds otherwise spared."""
    import ray
    from pipeline.raycluster import LOCAL_RAY_ENV, TRAIN_HEALTH_CHECK_S
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = TRAIN_HEALTH_CHECK_S  # the default costs seconds per run
    os.environ[LOCAL_RAY_ENV] = str(os.getpid())   # a local Ray, as a command's (pipeline.raycluster.ensure_ray)
    ray.init(num_cpus=2, include_dashboard=getattr(request.module, "RAY_DASHBOARD", False), log_to_driver=False)
    yield
    ray.shutdown()
    del os.environ[LOCAL_RAY_ENV]


def _pinned_torch_threads(threads: int):
    # The number of intra-op threads changes float sums, hence learned weights: a test that
    # compares learned quality pins it, so that every machine of CI's kind computes the same
    # numbers. One thread also keeps a micro model from spin-waiting for cores that other
    # processes hold (20x slower, measured).
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def one_torch_thread():
    yield from _pinned_torch_threads(1)


@pytest.fixture()
def two_torch_threads():
    yield from _pinned_torch_threads(2)


@pytest.fixture(scope="module")
def two_torch_threads_module():
    yield from _pinned_torch_threads(2)


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    """A real S3 (SeaweedFS) for the session, with an empty bucket; start-up is paid once. Yields
    servers.seaweedfs's dict plus "bucket". It sets no environment variables: a test that needs
    the AWS ones in-process sets ``object_store["env"]`` with monkeypatch.setenv."""
    from servers import make_bucket, seaweedfs
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as store:
        make_bucket(store["env"], "vits")
        yield {**store, "bucket": "vits"}


@pytest.fixture(scope="session")
def mlflow_http(object_store, tmp_path_factory):
    """A real MLflow tracking server for the session that proxies artifacts to
    s3://<bucket>/mlflow, so that its clients need no S3 credentials. Yields its URL."""
    from servers import mlflow_server
    artifacts = f"s3://{object_store['bucket']}/mlflow"
    with mlflow_server(tmp_path_factory.mktemp("mlflow"), artifacts, object_store["env"]) as url:
        yield url


@pytest.fixture(scope="session")
def smoke_killed_and_resumed(tmp_path_factory) -> dict:
    """``bash bench/gpu_e2e.sh --dry`` once per session: the smoke study from an empty storage,
    SIGKILLed (driver and its local Ray) once a pretraining checkpoint is registered, the same
    command again (it resumes and finishes), then once more (it finds both runs done); then
    ``pipeline.pretrain --compile``. Its checks (tests/test_bench.py) and the study it leaves
    (tests/test_orchestrate.py) are read by several tests: {work, storage, done (the script's
    CompletedProcess), result (its JSON)}."""
    import json
    import subprocess
    work = tmp_path_factory.mktemp("gpu_e2e") / "work"
    out = work.parent / "e2e.json"
    done = subprocess.run(["bash", "bench/gpu_e2e.sh", "--dry", "--work", str(work), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    return {"work": work, "storage": work / "smoke-killed", "done": done, "result": json.loads(out.read_text())}
