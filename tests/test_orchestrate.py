"""The study front door end to end, as users run it: `python -m pipeline.study scaling --preset
smoke` on local Ray, killed with SIGKILL mid-study, then run again. Real Ray, real SQLite MLflow,
real Parquet data made on first use. (`ray job submit` to a `ray start --head` cluster, submitted
twice, is in tests/test_cloud.py, with a worker node preempted.)"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.planning import plan
from pipeline.spec import load_study

from ray_head import end_processes

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SMOKE = load_study("scaling").expand("smoke")
PLANNED = {r["id"]: r for r in plan(load_study("scaling"), "smoke", tracking_uri=None)["runs"]}


def study_command(storage: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline.study", "scaling", "--preset", "smoke", "--storage", str(storage)]


def local_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


def spec_runs(storage: Path) -> dict[str, list]:
    """RunSpec id -> its MLflow runs (nested fine-tuning trials and the study run excluded)."""
    found: dict[str, list] = {}
    for run in tracking.runs_of_study(tracking.default_tracking_uri(storage), "scaling"):
        spec_id = run.data.tags.get(tracking.RUN_SPEC_TAG)
        if spec_id:
            found.setdefault(spec_id, []).append(run)
    return found


def assert_study_complete(storage: Path) -> dict[str, str]:
    """Exactly one FINISHED run per RunSpec with pretraining and transfer metrics; the study run
    is finished and holds the report. Returns {spec id: MLflow run id}."""
    runs = spec_runs(storage)
    assert set(runs) == {s.id for s in SMOKE}
    for spec_id, found in runs.items():
        assert len(found) == 1, f"{spec_id} has {len(found)} MLflow runs"
        run = found[0]
        assert run.info.status == "FINISHED"
        assert run.data.tags["pretrain_status"] == "done" and run.data.tags["transfer_status"] == "done"
        metrics = run.data.metrics
        assert metrics["compute/images_seen"] == PLANNED[spec_id]["images_seen"] == 40 * 32
        assert metrics["compute/exaflops"] == PLANNED[spec_id]["exaflops"]  # exactly: one function derives both
        assert {"pretrain/loss", "pretrain/val_prec1_best", "fewshot/digits/1shot", "fewshot/digits/5shot",
                "finetune/digits/acc", "finetune/digits/best_lr"} <= set(metrics)
    uri = tracking.default_tracking_uri(storage)
    study_run = tracking.find_study_run(uri, "scaling", "smoke")
    assert tracking.client(uri).get_run(study_run).info.status == "FINISHED"
    artifacts = {a.path for a in tracking.client(uri).list_artifacts(study_run, "report")}
    assert {"report/report.md", "report/runs.csv"} <= artifacts
    assert (storage / "reports" / "scaling-smoke" / "report.md").is_file()
    return {spec_id: found[0].info.run_id for spec_id, found in runs.items()}


def test_sigkill_of_the_driver_mid_study_then_the_same_command_finishes_it(tmp_path):
    storage = tmp_path / "runs"
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(study_command(storage), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                  env=local_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # mid-pretraining: the first checkpoint of some run is registered
        while not list(storage.glob("pretrain-*/checkpoint_manager_snapshot.json")):
            assert driver.poll() is None, f"the study ended before the kill:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no checkpoint within 5 minutes:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
    # the local Ray the driver started is orphaned: kill what is left of its session, as the
    # machine's loss would (the re-run must not need any of it)
    end_processes(driver.pid, str(tmp_path), term_grace=0)

    interrupted = spec_runs(storage)
    assert interrupted and all(len(r) == 1 for r in interrupted.values())
    assert any(r[0].info.status != "FINISHED" for r in interrupted.values())

    again = subprocess.run(study_command(storage), capture_output=True, text=True, cwd=tmp_path, env=local_env(),
                           timeout=600)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-4000:]
    resumed = re.search(r"(\d+) done, (\d+) to run \((\d+) to resume\)", output)
    assert resumed and int(resumed[3]) >= 1, output[-4000:]
    assert re.search(r"\[study\] 2/2 runs done, 0 running, elapsed \S+, ETA 0s", output), output[-4000:]
    assert_study_complete(storage)
