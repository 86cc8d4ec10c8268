"""One writer per run: a lease held in the run's tags while a process trains or evaluates it,
renewed by a heartbeat; another live holder makes :func:`lease` raise :class:`RunHeld`."""
from __future__ import annotations

import contextlib
import os
import threading
import time


from pipeline.tracking.runs import set_tags
from pipeline.tracking.store import client


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
            for tag in (LEASE_HOLDER_TAG, LEASE_HEARTBEAT_TAG):   # released: no lease tags left on the run's page
                client(tracking_uri).delete_tag(run_id, tag)
        except Exception:  # the server is away: the lease goes stale on its own, and the block's error matters
            pass
