import os
import sys
from pathlib import Path

import pytest
import torch

# Tests import the packages from this checkout even when it is not installed.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# The suite runs on two pytest-xdist workers (`-n 2 --dist loadgroup --no-loadscope-reorder`,
# pyproject.toml): its tests wait on processes one after another (Ray's, servers', commands') and
# left a third of the two cores idle when run in one process (bench/RESULTS.md, "The suite on two
# workers"). Each test module is one group, run by one worker, so that its module fixtures are made
# once; modules that share a session fixture are one group, so that the fixture is made once (the
# smoke study of bench/gpu_e2e.sh --dry; the S3 store and the MLflow server). Groups are handed out
# slowest first (seconds measured in one process), so that the last minutes are not one long module
# on one worker while the other idles. (xdist's own loadgroup reads `xdist_group` marks into test ids
# that pytest 9 no longer lets it change: its groups fell apart, so the groups are made here.)
SHARED_GROUPS = {"test_bench": "smoke_e2e", "test_orchestrate": "smoke_e2e",
                 "test_cloud": "servers", "test_servers": "servers"}
SLOWEST_FIRST = ("servers", "test_pretrain", "smoke_e2e", "test_cli_errors", "test_one_writer", "test_forecast",
                 "test_transfer_pretrained", "test_transfer", "test_cluster", "test_analysis", "test_study",
                 "test_data_learn", "test_suggest", "test_data_ray", "test_compute")


def suite_group(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0].rpartition("/")[2].removesuffix(".py")
    return SHARED_GROUPS.get(module, module)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(suite_group(item.nodeid), len(rank)))   # stable: file order within a group


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:   # pytest-xdist is not installed: the suite runs in one process
    pass
else:
    class GroupScheduling(LoadScopeScheduling):
        """xdist's scope scheduling with suite_group() as the scope; with --no-loadscope-reorder the
        groups are handed out in collection order."""
        def _split_scope(self, nodeid: str) -> str:
            return suite_group(nodeid)

    def pytest_xdist_make_scheduler(config, log):
        return GroupScheduling(config, log) if config.getvalue("dist") == "loadgroup" else None


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_beside_another_worker():
    """On an xdist worker, torch in the test process uses one thread (a test that compares learned
    numbers pins its own, below): threads beyond a core spin-wait on the core the other worker holds
    (a micro model 20x slower, measured)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session", autouse=True)
def own_mac_cache(tmp_path_factory):
    """Forward MACs are counted into a cache of the test session's own, empty at the start (as on
    a new machine, so suite times do not depend on earlier runs), never into the user's; xdist's
    workers share it (the folder above theirs is the session's)."""
    before = os.environ.get("VIT_SCALING_CACHE")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        cache = tmp_path_factory.getbasetemp().parent / "mac-cache"
        cache.mkdir(exist_ok=True)
    else:
        cache = tmp_path_factory.mktemp("mac-cache")
    os.environ["VIT_SCALING_CACHE"] = str(cache)
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
    from pipeline.raycluster import LOCAL_RAY_ENV, LOCAL_TRAIN_ENV
    os.environ.update(LOCAL_TRAIN_ENV)   # as a command's local Ray: faster health checks, no preemption watcher
    os.environ[LOCAL_RAY_ENV] = str(os.getpid())   # a local Ray, as a command's (pipeline.raycluster.ensure_ray)
    context = ray.init(num_cpus=2, include_dashboard=getattr(request.module, "RAY_DASHBOARD", False),
                       log_to_driver=False)
    yield context   # its dashboard_url: ray.util.state's address (the suite's other worker has a Ray too)
    ray.shutdown()
    del os.environ[LOCAL_RAY_ENV]


def _pinned_torch_threads(threads: int):
    # The number of intra-op threads changes float sums, hence learned weights: a test that
    # compares learned quality pins it, so that every machine computes the same numbers. One
    # thread also keeps a micro model from spin-waiting for cores that other processes hold (20x
    # slower, measured; beside the suite's other worker a 2-thread test ran 2.1x slower than alone, a
    # 1-thread one 1.06x).
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def one_torch_thread():
    yield from _pinned_torch_threads(1)


@pytest.fixture(scope="module")
def one_torch_thread_module():
    yield from _pinned_torch_threads(1)


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
