"""One writer per run: a run's lease (MLflow tags with a heartbeat) lets one live process train or
evaluate it; another is refused with the holder's name, and a dead or silent holder is taken
over. A new SQLite store made by two processes at once is made once."""
from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pipeline import tracking

lease_module = importlib.import_module("pipeline.tracking.lease")   # the package's `lease` is the function


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
            assert tracking.lease_claims(client_tags(uri, run_id)) == {tracking.lease_holder(): "held"}
    assert lease_tags(uri, run_id) == []   # released: no lease tags left on the run (issue 33, walk 5)


def test_two_claims_at_once_give_one_holder(run):
    uri, run_id = run
    a, b = hold(uri, run_id, 3), hold(uri, run_id, 3)
    said = sorted(p.communicate(timeout=60)[0].split(":")[0].strip() for p in (a, b))
    assert said == ["holding", "refused"]


def test_a_claim_whose_write_lands_late_does_not_take_a_held_run(run, monkeypatch):
    """Claim B reads no holder, then its write is slow (a loaded machine) and lands after claim A
    has taken the lease: B is refused, A keeps it, whatever the delay."""
    uri, run_id = run
    b_writing, a_holds = threading.Event(), threading.Event()
    write = lease_module.set_tags

    def slow_for_b(uri_: str, run_id_: str, tags: dict[str, str]) -> None:
        if any("elsewhere-b" in key for key in tags):
            b_writing.set()
            assert a_holds.wait(30)
        write(uri_, run_id_, tags)

    monkeypatch.setattr(lease_module, "set_tags", slow_for_b)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        b = pool.submit(lease_module._claim, uri, run_id, "elsewhere-b:2", client_tags(uri, run_id))
        assert b_writing.wait(30)                        # B has read the run's tags: no holder
        assert lease_module._claim(uri, run_id, "elsewhere-a:1", client_tags(uri, run_id)) is None   # A takes it meanwhile
        a_holds.set()
        assert b.result(timeout=60) == "elsewhere-a:1"   # B's late write does not make it a second holder
    assert tracking.lease_claims(client_tags(uri, run_id)) == {"elsewhere-a:1": "held"}


def client_tags(uri: str, run_id: str) -> dict[str, str]:
    return tracking.client(uri).get_run(run_id).data.tags


def lease_tags(uri: str, run_id: str) -> list[str]:
    return [key for key in client_tags(uri, run_id) if key.startswith(tracking.LEASE_TAG_PREFIX)]


def test_a_dead_or_silent_holder_is_taken_over(run):
    uri, run_id = run
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = f"{time.time():.0f}"
    cases = [(f"{socket.gethostname()}:{gone.stdout.strip()}", now, True),    # died on this machine: at once
             ("elsewhere:123", now, False),                                    # alive elsewhere: refused
             ("elsewhere:123", f"{time.time() - tracking.LEASE_STALE_S - 5:.0f}", True)]  # silent: taken
    for holder, beat, taken in cases:
        tracking.set_tags(uri, run_id, tracking.lease_tag(holder, beat=float(beat)))
        if taken:
            with tracking.lease(uri, run_id):   # the one lease tag left on the run is this process's
                assert lease_tags(uri, run_id) == list(tracking.lease_tag(tracking.lease_holder()))
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


def test_a_new_store_copied_from_the_empty_one_equals_one_mlflow_makes(tmp_path, monkeypatch):
    """A new SQLite store is a copy of an empty store made once (MLflow's schema migrations take
    seconds): the same schema version, tables and default experiment as a store MLflow makes."""
    import sqlite3

    from mlflow import MlflowClient
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VIT_SCALING_CACHE", str(tmp_path / "cache"))
    made_by_mlflow, copied = tmp_path / "mlflow" / "mlflow.db", tmp_path / "ours" / "mlflow.db"
    MlflowClient(f"sqlite:///{made_by_mlflow}").search_experiments()
    for folder in ("ours", "again"):   # the first makes the empty store in the cache, the second only copies it
        tracking.init_store(tracking.default_tracking_uri(tmp_path / folder))
    assert len(list((tmp_path / "cache").glob("mlflow-*-empty.db"))) == 1

    def contents(db: Path) -> dict:
        with contextlib.closing(sqlite3.connect(db)) as c:
            tables = [t for (t,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            # each statement's lines as a set: MLflow itself orders a table's constraints differently in
            # the first store a process makes and in the next ones
            schema = [sorted(line.strip().rstrip(",") for line in (sql or "").splitlines())
                      for (sql,) in c.execute("SELECT sql FROM sqlite_master ORDER BY name")]
            rows = {t: c.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables}
        return {"schema": schema, "rows": rows}
    ours, theirs = contents(copied), contents(made_by_mlflow)
    assert ours["schema"] == theirs["schema"]
    (default,) = ours["rows"].pop("experiments")
    (expected,) = theirs["rows"].pop("experiments")
    assert default[:2] == expected[:2] == (0, "Default") and default[2] == expected[2] == str(tmp_path / "mlruns" / "0")
    assert abs(default[4] - expected[4]) < 60_000                       # made now, not when the copy was
    assert ours["rows"] == theirs["rows"]                               # the schema version, the workspace
    assert tracking.client(tracking.default_tracking_uri(tmp_path / "again")).search_experiments()


# ----------------------------------------------------------------------------- two studies at once, end to end

ONE_RUN_STUDY = """\
name: {name}
presets:
  p:
    dataset:
      name: synth-two-drivers
      images: 256
      synth: {{images: 256, val_images: 32, classes: 5, image_size: 16, seed: 0}}
    recipe: {{batch_size: 32, base_lr: 0.001, warmup_steps: 2, image_size: 16, min_crop_area: 1.0,
             val_every: 20, checkpoint_every: 10, log_every: 10}}
    runs:
      - {{model: {{name: ViT-nano, family: vit, depth: 1, width: 32, heads: 2, mlp_dim: 64, patch_size: 8}}, steps: {steps}}}
    transfer: {{fewshot: [digits], shots: [1]}}
"""


def start_driver(study_file: Path, storage: Path, log: Path) -> tuple[subprocess.Popen, Path]:
    """A study driver, its stderr to ``log`` (a file: a full pipe would stall it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VIT_SCALING_DEBUG")}
    command = [sys.executable, "-m", "pipeline.study", str(study_file), "--preset", "p", "--storage", str(storage)]
    with open(log, "w") as err:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=storage.parent), log


def assert_trained_once(storage: Path, study: str, steps: int) -> None:
    """One MLflow run per RunSpec (and one study run); its loss logged once per logging step; one
    sequence of checkpoints, written by one trainer."""
    uri = tracking.default_tracking_uri(storage)
    runs = tracking.runs_of_study(uri, study)
    spec_runs = [r for r in runs if r.data.tags.get(tracking.RUN_SPEC_TAG)]
    assert len(spec_runs) == 1 and spec_runs[0].info.status == "FINISHED"
    assert len([r for r in runs if r.data.tags.get(tracking.STUDY_PRESET_TAG)]) == 1
    loss = tracking.client(uri).get_metric_history(spec_runs[0].info.run_id, "pretrain/loss")
    assert sorted(m.step for m in loss) == list(range(10, steps + 1, 10))  # log_every 10
    trainings = list(storage.glob(f"pretrain-*{spec_runs[0].data.tags[tracking.RUN_SPEC_TAG]}*"))
    assert len(trainings) == 1, trainings
    # checkpoints every 10 steps, the last 2 kept: one trainer's, reported in order (two trainers
    # would leave 4 folders, or a sequence that starts again)
    kept = json.loads((trainings[0] / "checkpoint_manager_snapshot.json").read_text())
    assert [c["metrics"]["step"] for c in kept["checkpoint_results"]] == [steps - 10, steps]
    assert kept["checkpoint_report_indices"] == [steps // 10 - 2, steps // 10 - 1]
    assert len([p for p in trainings[0].glob("checkpoint_*") if p.is_dir()]) == 2


@pytest.mark.slow
def test_two_studies_at_once_on_a_new_and_on_an_existing_storage(tmp_path):
    """Two drivers of one study at once: both finish, or the later one is refused in one line
    naming the live one; either way the study is trained once. On a new storage (the SQLite store,
    the data and the study run are made by whichever comes first) and, at the same time, on one
    whose MLflow store exists (another study ran there)."""
    new, existing = tmp_path / "new" / "runs", tmp_path / "existing" / "runs"
    for storage in (new, existing):
        storage.parent.mkdir()
    tracking.init_store(tracking.default_tracking_uri(existing))
    cases = {"first": (new, 20), "second": (existing, 30)}  # other steps: another run (run ids leave out the study)
    drivers = {}
    for name, (storage, steps) in cases.items():
        study_file = storage.parent / f"{name}.yaml"
        study_file.write_text(ONE_RUN_STUDY.format(name=name, steps=steps))
        drivers[name] = [start_driver(study_file, storage, storage.parent / f"driver{i}.err") for i in range(2)]
    for name, (storage, steps) in cases.items():
        said = [(d.wait(timeout=600), log.read_text()) for d, log in drivers[name]]
        assert sorted(code for code, _ in said) in ([0, 0], [0, 1]), [err[-3000:] for _, err in said]
        for code, err in said:
            lines = [line for line in err.splitlines() if line.strip()]
            assert code == 0 or len(lines) == 1 and re.fullmatch(
                rf"error: RunHeld: study {name}/p is held by {socket.gethostname()}:\d+ .*", lines[0]), err[-3000:]
        assert_trained_once(storage, name, steps)
