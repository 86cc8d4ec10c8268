"""Common mistakes, run as a user runs them (``python -m pipeline.<command>`` in a subprocess):
each is said in one line that names what and where, with a non-zero exit and no traceback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.gpu_e2e import spec_runs
from micro_models import MICRO
from pipeline import tracking
from pipeline.data.synth import SynthSpec, generate
from study_files import smoke_variant

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VIT_SCALING_DEBUG")}, **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=env)


def said_lines(stderr: str) -> list[str]:
    """What the command said, without argparse's usage lines."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(("usage:", " "))]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> str:
    return generate(tmp_path_factory.mktemp("data") / "small", SynthSpec(images=64, val_images=16, classes=4,
                    image_size=16), executor="inline", progress=False)


@pytest.fixture(scope="module")
def truncated(small, tmp_path_factory) -> str:
    import shutil
    copy = tmp_path_factory.mktemp("broken") / "small"
    shutil.copytree(small, copy)
    shard = sorted(copy.glob("**/*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    return str(copy)


def mistakes(tmp_path: Path, small: str, truncated: str) -> dict[str, tuple[list[str], int, str]]:
    """{case: (command, exit code, what the line says)}"""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    custom = json.dumps(MICRO["vit"])
    pretrain = ["pipeline.pretrain", "--model", custom, "--steps", "1", "--batch-size", "8", "--image-size", "16"]
    return {
        "study file missing": (["pipeline.study", str(tmp_path / "nowhere.yaml"), "--plan"], 2,
                               f"study file {tmp_path / 'nowhere.yaml'} does not exist (built-in studies: data, scaling)"),
        "storage under a file": (["pipeline.study", "scaling", "--preset", "smoke", "--storage", str(a_file / "runs")], 2,
                                 f"--storage {a_file / 'runs'}: cannot write to {a_file / 'runs'} (Not a directory)"),
        "custom model without --base-lr": ([*pretrain, "--data", small], 2,
                                      f"Table 3 gives no learning rate for {MICRO['vit']['name']}: give one with --base-lr"),
        "truncated shard": ([*pretrain, "--lr", "1e-3", "--data", truncated, "--storage", str(tmp_path / "runs")], 1,
                            "DataError: dataset"),
        "unknown study": (["pipeline.study", "scalling", "--plan"], 2, "no study 'scalling'; available: data, scaling"),
        "dead Ray address": (["pipeline.study", "scaling", "--preset", "smoke", "--storage", str(tmp_path / "runs")], 2,
                             "RAY_ADDRESS=127.0.0.1:9: nothing answers at 127.0.0.1:9 (Connection refused"),
        "dead tracking server": (["pipeline.study", "scaling", "--preset", "smoke", "--storage", str(tmp_path / "runs"),
                                  "--tracking-uri", "http://127.0.0.1:9"], 2,
                                 "the MLflow server http://127.0.0.1:9 does not answer"),
        # issue 33, probe 3: work a local Ray can never place was waited for forever, without a word
        "more workers than CPUs": ([*pretrain, "--lr", "1e-3", "--data", small, "--storage", str(tmp_path / "runs"),
                                    "--workers", str(WORKERS), "--batch-size", str(2 * WORKERS)], 1,
                                   f"pretraining needs {WORKERS} x 1 CPU (this machine's Ray has {os.cpu_count()})"),
        "a GPU per run without GPUs": (["pipeline.study", "scaling", "--preset", "smoke", "--storage",
                                        str(tmp_path / "runs"), "--gpus-per-run", "1"], 2,
                                       "each run needs 1 x 1 GPU (this machine's Ray has 0): none can ever start here"),
    }


WORKERS = (os.cpu_count() or 1) + 1   # one more than a local Ray has CPUs


CASES = ["study file missing", "storage under a file", "custom model without --base-lr", "truncated shard", "unknown study",
         "dead Ray address", "dead tracking server", "more workers than CPUs",
         pytest.param("a GPU per run without GPUs", marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                                              reason="this machine has a GPU"))]


@pytest.mark.parametrize("case", CASES)
def test_a_mistake_is_one_line_and_a_nonzero_exit(case, tmp_path, small, truncated):
    command, code, message = mistakes(tmp_path, small, truncated)[case]
    start = time.monotonic()
    done = run(*command, env={"RAY_ADDRESS": "127.0.0.1:9"} if case == "dead Ray address" else None)
    lines = [line for line in said_lines(done.stderr) if not line.startswith("[compute]")]   # progress, not errors
    assert done.returncode == code, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-2000:]
    assert message in lines[0], lines[0]
    if case == "truncated shard":
        assert "truncated" in lines[0] and not (tmp_path / "runs" / "mlflow.db").exists()  # refused before MLflow
    if case.startswith("dead"):  # said within seconds (10 s of waiting for an answer), before anything is made
        storage = tmp_path / "runs"  # checked writable (made if need be), and nothing put there
        # 10 s of waiting plus the command's start: 12.9 s in all alone, 15.1 s beside the suite's other worker
        assert time.monotonic() - start < 25 and (not storage.exists() or not any(storage.iterdir()))


def test_debug_shows_the_traceback(tmp_path, small, truncated):
    command, _, _ = mistakes(tmp_path, small, truncated)["truncated shard"]
    done = run(*command, "--debug")
    assert done.returncode == 1 and "Traceback" in done.stderr and "DataError" in done.stderr


def one_run_smoke(path: Path) -> Path:
    """The smoke preset cut to its ViT run and its few-shot probes, as a study file of its own
    (``ctrlc``): every stage a Ctrl-C can land in, at half the smoke study's seconds."""
    def one_run(smoke: dict) -> None:
        smoke["runs"], smoke["transfer"]["finetune"] = smoke["runs"][:1], []
    return smoke_variant(path, "ctrlc", one_run, title="Ctrl-C at every moment")


def interrupt_study_at(study_file: Path, storage: Path, line: str, sig: int = signal.SIGINT) -> tuple[str, str]:
    """The study in ``study_file`` (its ``smoke`` preset) in ``storage``, sent ``sig`` (SIGINT: a
    Ctrl-C) the moment it prints ``line``; its output until then and after. Our handler is in place
    before the first line is printed."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    study = subprocess.Popen([sys.executable, "-m", "pipeline.study", str(study_file), "--preset", "smoke", "--storage",
                              str(storage)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, seen = time.monotonic() + 240, ""
    while line not in seen and time.monotonic() < deadline and study.poll() is None:
        seen += study.stdout.readline()
    assert line in seen, seen
    study.send_signal(sig)
    out, err = study.communicate(timeout=120)
    assert study.returncode == 128 + sig, f"exit {study.returncode} after {sig!r} at {line!r}:\n{out[-2000:]}\n{err[-2000:]}"
    assert "Traceback" not in err + out and (seen + out).count("[study] interrupted") == 1, \
        f"after a Ctrl-C at {line!r}, stdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}"
    return seen, out


def test_ctrl_c_at_every_moment_says_one_line_marks_the_study_run_killed_and_the_command_resumes(tmp_path):
    """Ctrl-C before the runs start (Ray up, data not made), right as they are launched, and while
    the report is written, and a SIGTERM (kill, timeout, Slurm) while a run trains: exit 130 (143),
    one line, the study run KILLED each time; then the same command finishes the study with one
    MLflow run per RunSpec."""
    storage, study_file = tmp_path / "runs", one_run_smoke(tmp_path / "ctrlc.yaml")
    uri = tracking.default_tracking_uri(storage)
    for line, sig in (("[study] on Ray", signal.SIGINT), ("to run", signal.SIGINT), ("step 10/40", signal.SIGTERM),
                      ("[study] writing the report", signal.SIGINT)):
        interrupt_study_at(study_file, storage, line, sig)
        study_run = tracking.find_study_run(uri, "ctrlc", "smoke")
        assert tracking.client(uri).get_run(study_run).info.status == "KILLED", line
    again = run("pipeline.study", str(study_file), "--preset", "smoke", "--storage", str(storage))
    assert again.returncode == 0 and "1 done, 0 to run" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
    (runs,) = spec_runs(storage, "ctrlc").values()
    assert len(runs) == 1 and {r.info.status for r in runs} == {"FINISHED"}
    assert tracking.client(uri).get_run(tracking.find_study_run(uri, "ctrlc", "smoke")).info.status == "FINISHED"


def test_ctrl_c_of_pretraining_says_one_line_marks_the_run_killed_and_the_command_resumes(small, tmp_path):
    """Ray Train's fit puts its own SIGINT handler on the main thread (it ended the command with
    exit 1 and no word); fit runs off it, so Ctrl-C is the command's: 130, one line, KILLED."""
    storage = tmp_path / "runs"
    command = [sys.executable, "-m", "pipeline.pretrain", "--model", json.dumps(MICRO["vit"]), "--data", small,
               "--steps", "120", "--batch-size", "8", "--image-size", "16", "--lr", "1e-3", "--log-every", "10",
               "--checkpoint-every", "10", "--val-every", "120", "--storage", str(storage), "--no-system-metrics"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VIT_SCALING_DEBUG")}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline = "", time.monotonic() + 240
    while "step 20/120" not in seen and time.monotonic() < deadline and first.poll() is None:
        seen += first.stdout.readline()
    assert "step 20/120" in seen, seen
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130 and "Traceback" not in err, err[-3000:]
    said = [line for line in said_lines(err) if not line.startswith("[compute]")]  # the MAC count, said once
    assert said == ["[pretrain] interrupted: run the same command again to resume from the last checkpoint"]
    uri = tracking.default_tracking_uri(storage)
    (record,) = tracking.runs_of_study(uri, "adhoc")
    assert record.info.status == "KILLED"
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from the checkpoint at step" in again.stdout + again.stderr
    (record,) = tracking.runs_of_study(uri, "adhoc")
    assert record.info.status == "FINISHED" and json.loads(again.stdout[again.stdout.index("\n{") + 1:])["done"]


def test_a_ctrl_c_inside_a_whole_write_waits_for_it_and_is_recorded():
    """exits.deferred_interrupts (SQLite writes through tracking.client): the write finishes, then the
    KeyboardInterrupt comes; outside such a block it comes at once; either way exits.interrupted()."""
    from pipeline import exits
    before = signal.getsignal(signal.SIGINT)
    exits.catch_ctrl_c()
    finished = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with exits.deferred_interrupts():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler has run by now, and not raised
                finished.append("write")
        assert finished == ["write"] and exits.interrupted()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
            finished.append("not reached")
        assert finished == ["write"]
    finally:
        signal.signal(signal.SIGINT, before)
        exits._INTERRUPTED.clear()


def test_one_line_errors_keep_their_cause_not_a_link(tmp_path):
    """SQLAlchemy's and pydantic's messages end with a link to their docs; the line says what the
    database said and which field is wrong (issue 33, probe 2)."""
    import sqlite3

    import sqlalchemy

    from pipeline import exits
    full = sqlalchemy.exc.OperationalError("INSERT INTO metrics VALUES (?)", (1,), sqlite3.OperationalError(
        "database or disk is full"))
    assert "sqlalche.me" in str(full)
    assert exits.one_line(full) == "OperationalError: database or disk is full"
    done = run("pipeline.data", "synth", str(tmp_path / "x"), "--images", "0", "--classes", "2")
    assert done.returncode == 1 and said_lines(done.stderr) == [
        "error: invalid SynthSpec: images: Input should be greater than or equal to 1 (add --debug for the traceback)"]


@pytest.mark.slow
def test_a_command_killed_with_sigkill_leaves_no_process_of_its_local_ray_behind(tmp_path):
    """Ray 2.60 ends its GCS and raylet after its driver is SIGKILLed, but left the dashboard and
    runtime-env agents (about 215 MB) running for good; the command's watcher ends them."""
    import psutil
    script = ("import json, time, psutil\n"
              "from pipeline.raycluster import ensure_ray\n"
              "ensure_ray(log_to_driver=False)\n"
              "print(json.dumps([(p.pid, p.create_time(), p.name()) for p in psutil.Process().children(recursive=True)]),"
              " flush=True)\n"
              "time.sleep(600)\n")
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        started = json.loads(driver.stdout.readline())
    finally:
        driver.kill()
        driver.wait()
    assert {"raylet", "ray::DashboardAgent"} <= {name for _, _, name in started}, started

    def alive() -> list[str]:
        found = []
        for pid, created, name in started:
            try:
                if abs(psutil.Process(pid).create_time() - created) < 0.01:
                    found.append(name)
            except psutil.NoSuchProcess:
                pass
        return found
    deadline = time.monotonic() + 30
    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert alive() == []
