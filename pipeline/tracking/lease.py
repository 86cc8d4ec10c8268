"""One writer per run: a lease held in the run's tags while a process trains or evaluates it,
renewed by a heartbeat; another live holder makes :func:`lease` raise :class:`RunHeld`.

Each process that claims a run writes a tag of its own (``lease.<host:pid>``), then reads the run's
tags back: it holds the lease only if it sees no other live claim, else it withdraws and tries
again after a random pause. Of two claims at once at most one can win, however slow either write:
the claim read back second sees the other's (a write is in the store before its writer reads), so
no timing is assumed. A holder marks its tag ``held``; a claim that finds a held tag is refused."""
from __future__ import annotations

import contextlib
import os
import random
import re
import threading
import time

from pipeline.tracking.runs import set_tags
from pipeline.tracking.store import client


LEASE_TAG_PREFIX = "lease."            # + the holder's name; value "<held|claim> <heartbeat> <holder>"
LEASE_RENEW_S, LEASE_STALE_S = 30.0, 120.0   # a holder silent for 2 minutes is taken to be dead
CLAIM_TRIES, CLAIM_PAUSE_S = 8, 0.25   # rounds of two claims at once that both withdraw; a round's pause is random



class RunHeld(RuntimeError):
    """The run is being trained or evaluated by another live process."""



def lease_holder() -> str:
    import socket
    return f"{socket.gethostname()}:{os.getpid()}"



def lease_tag(holder: str, state: str = "held", beat: float | None = None) -> dict[str, str]:
    """The tag a holder (or a claim in progress, ``state="claim"``) writes on the run."""
    return {_key(holder): f"{state} {time.time() if beat is None else beat:.0f} {holder}"}



def _key(holder: str) -> str:
    return LEASE_TAG_PREFIX + re.sub(r"[^\w.\-:]", "_", holder)



def lease_claims(tags: dict[str, str]) -> dict[str, str]:
    """The run's live lease tags: holder -> ``held`` or ``claim``; a holder silent for
    ``LEASE_STALE_S`` or dead on this machine is left out."""
    return {holder: state for holder, (state, beat) in _lease_tags(tags).items()
            if time.time() - beat < LEASE_STALE_S and _alive(holder)}



def _lease_tags(tags: dict[str, str]) -> dict[str, tuple[str, float]]:
    """Every lease tag on the run, live or not: holder -> (state, heartbeat)."""
    found = {}
    for key, value in tags.items():
        if not key.startswith(LEASE_TAG_PREFIX):
            continue
        state, beat, holder = (value.split(" ", 2) + ["", ""])[:3]
        if holder and beat.isdigit():
            found[holder] = (state, float(beat))
    return found



def _gone(tags: dict[str, str]) -> list[str]:
    """Holders whose lease tags are on the run, dead or silent."""
    return sorted(_lease_tags(tags).keys() - lease_claims(tags).keys())



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



def _tags(tracking_uri: str, run_id: str) -> dict[str, str]:
    return client(tracking_uri).get_run(run_id).data.tags



def _withdraw(tracking_uri: str, run_id: str, *holders: str) -> None:
    for holder in holders:
        with contextlib.suppress(Exception):  # gone already, or the server is away: a stale tag is ignored
            client(tracking_uri).delete_tag(run_id, _key(holder))



def _claim(tracking_uri: str, run_id: str, me: str, tags: dict[str, str]) -> str | None:
    """Take the run's lease unless another live process holds it; None on success, else the holder.
    ``tags``: the run's tags as just read."""
    others: dict[str, str] = {}
    for _ in range(CLAIM_TRIES):
        others = _others(tags, me)
        held = [holder for holder, state in others.items() if state == "held"]
        if held:
            return held[0]
        set_tags(tracking_uri, run_id, lease_tag(me, "claim"))
        tags = _tags(tracking_uri, run_id)
        others = _others(tags, me)
        if not others:
            set_tags(tracking_uri, run_id, lease_tag(me, "held"))
            _withdraw(tracking_uri, run_id, *_gone(tags))   # a dead or silent holder's tag goes too
            return None
        _withdraw(tracking_uri, run_id, me)   # claims at once: each withdraws and tries again at a random time
        time.sleep(random.uniform(0, CLAIM_PAUSE_S))
        tags = _tags(tracking_uri, run_id)
    return next(iter(others))



def _others(tags: dict[str, str], me: str) -> dict[str, str]:
    return {holder: state for holder, state in lease_claims(tags).items() if holder != me}



@contextlib.contextmanager
def lease(tracking_uri: str, run_id: str, what: str | None = None):
    """Hold the run's lease while the block runs (one writer per run): renewed every 30 s by a
    background thread, released at the end. Raises :class:`RunHeld` when another live process
    holds it; a holder that died on this machine, or silent for 2 minutes, is taken over.
    Re-entrant within a process."""
    me, tags = lease_holder(), _tags(tracking_uri, run_id)
    if lease_claims(tags).get(me) == "held":
        yield  # this process holds it already (the chain, then its pretraining)
        return
    holder = _claim(tracking_uri, run_id, me, tags)
    if holder is not None:
        raise RunHeld(f"{what or f'run {run_id}'} is held by {holder} (another study or pretraining of the same "
                      f"run, alive in the last {LEASE_STALE_S:.0f} s): let it finish, then run the same command again")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_RENEW_S):
            try:
                set_tags(tracking_uri, run_id, lease_tag(me))
            except Exception:  # a server outage: try again at the next beat
                pass

    beater = threading.Thread(target=renew, daemon=True, name=f"lease-{run_id}")
    beater.start()
    try:
        yield
    finally:
        stop.set()
        beater.join()
        _withdraw(tracking_uri, run_id, me)   # released: no lease tag left on the run's page
