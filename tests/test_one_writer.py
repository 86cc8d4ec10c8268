"""One writer per run: a run's lease (MLflow tags with a heartbeat) lets one live process train or
evaluate it; another is refused with the holder's name, and a dead or silent holder is taken
over. A new SQLite store made by two processes at once is made once."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from pipeline import tracking


@pytest.fixture()
def run(tmp_path):
    uri = tracking.default_tracking_uri(tmp_path)
    tracking.init_store(uri)
    return uri, tracking.start_run(uri, "test-leases", "spec0", tags={}, params={})


def hold(uri: str, run_id: str, seconds: float) -> subprocess.Popen:
    """Another process that takes the lease, says so, holds it ``seconds``, releases it."""
    code = textwrap.dedent(f"""
        import sys, time
        from pipeline import tracking
        try:
            with tracking.lease({uri!r}, {run_id!r}):
                print("holding", flush=True)
                time.sleep({seconds})
        except tracking.RunHeld as err:
            print("refused:", err, flush=True)
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_a_live_holder_refuses_others_by_name_until_it_releases(run):
    uri, run_id = run
    holder = hold(uri, run_id, 4)
    assert holder.stdout.readline().strip() == "holding"
    with pytest.raises(tracking.RunHeld, match=rf"run {run_id} is held by {socket.gethostname()}:{holder.pid}"):
        with tracking.lease(uri, run_id):
            pass
    holder.wait(timeout=30)
    with tracking.lease(uri, run_id):  # released: free again
        with tracking.lease(uri, run_id):  # re-entrant in the holding process
            assert client_tags(uri, run_id)[tracking.LEASE_HOLDER_TAG] == tracking.lease_holder()
    assert client_tags(uri, run_id)[tracking.LEASE_HOLDER_TAG] == ""


def test_two_claims_at_once_give_one_holder(run):
    uri, run_id = run
    a, b = hold(uri, run_id, 3), hold(uri, run_id, 3)
    said = sorted(p.communicate(timeout=60)[0].split(":")[0].strip() for p in (a, b))
    assert said == ["holding", "refused"]


def client_tags(uri: str, run_id: str) -> dict[str, str]:
    return tracking.client(uri).get_run(run_id).data.tags


def test_a_dead_or_silent_holder_is_taken_over(run):
    uri, run_id = run
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = f"{time.time():.0f}"
    cases = [(f"{socket.gethostname()}:{gone.stdout.strip()}", now, True),    # died on this machine: at once
             ("elsewhere:123", now, False),                                    # alive elsewhere: refused
             ("elsewhere:123", f"{time.time() - tracking.LEASE_STALE_S - 5:.0f}", True)]  # silent: taken
    for holder, beat, taken in cases:
        tracking.set_tags(uri, run_id, {tracking.LEASE_HOLDER_TAG: holder, tracking.LEASE_HEARTBEAT_TAG: beat})
        if taken:
            with tracking.lease(uri, run_id):
                assert client_tags(uri, run_id)[tracking.LEASE_HOLDER_TAG] == tracking.lease_holder()
        else:
            with pytest.raises(tracking.RunHeld, match="held by elsewhere:123"):
                with tracking.lease(uri, run_id):
                    pass


def test_a_new_sqlite_store_made_by_two_processes_at_once(tmp_path):
    uri = tracking.default_tracking_uri(tmp_path / "new")
    code = f"from pipeline import tracking; tracking.init_store({uri!r}); print('ok')"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ}) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert tracking.client(uri).search_experiments()  # the store opens, migrated once
