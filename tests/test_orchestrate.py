"""The study front door end to end, as users run it: `python -m pipeline.study scaling --preset
smoke` on local Ray, killed with SIGKILL mid-study, then run again (as bench/gpu_e2e.sh --dry runs
it, once per test session: tests/conftest.py). Real Ray, real SQLite MLflow,
real Parquet data made on first use. (`ray job submit` to a `ray start --head` cluster, submitted
twice, is in tests/test_cloud.py, with a worker node preempted.) The same two invocations' console
output and the MLflow store they leave are then checked as a researcher reads them."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.gpu_e2e import spec_runs
from pipeline import tracking
from pipeline.data import open_dataset
from pipeline.analysis.scaling_laws import FORMS
from pipeline.planning import plan
from pipeline.spec import load_study

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SMOKE = load_study("scaling").expand("smoke")
PLANNED = {r["id"]: r for r in plan(load_study("scaling"), "smoke", tracking_uri=None)["runs"]}


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


@pytest.fixture(scope="module")
def killed_then_finished(smoke_killed_and_resumed) -> dict:
    """The smoke study killed mid-pretraining (SIGKILL of the driver and of the local Ray it
    started, as a lost machine), then the same command again, as ``bench/gpu_e2e.sh --dry`` runs
    them (tests/conftest.py): {storage, first: its console until the kill, again: the second
    run's output, interrupted: each RunSpec's MLflow run statuses as the kill left them}."""
    work = smoke_killed_and_resumed["work"]
    killed, resumed = work / "smoke-killed.log", work / "smoke-resumed.log"
    return {"storage": smoke_killed_and_resumed["storage"],
            "first": killed.read_text() + killed.with_suffix(".err").read_text(),
            "again": subprocess.CompletedProcess([], 0, resumed.read_text(), resumed.with_suffix(".err").read_text()),
            "interrupted": smoke_killed_and_resumed["result"]["interrupted"]}


def test_sigkill_of_the_driver_mid_study_then_the_same_command_finishes_it(killed_then_finished):
    storage, interrupted, again = (killed_then_finished[k] for k in ("storage", "interrupted", "again"))
    assert interrupted and all(len(r) == 1 for r in interrupted.values())
    assert any(r[0] != "FINISHED" for r in interrupted.values())
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-4000:]
    resumed = re.search(r"(\d+) done, (\d+) to run \((\d+) to resume\)", output)
    assert resumed and int(resumed[3]) >= 1, output[-4000:]
    assert re.search(r"\[study\] 2/2 runs done, 0 running, elapsed \S+, ETA 0m00s", output), output[-4000:]
    assert_study_complete(storage)


RAY_INTERNALS = ("(raylet)", "PreemptionWatcher", "core_worker", "TrainController", "RayTrainWorker", "pid=",
                 "Ray deduplicates logs", " INFO ", "WARNING")


def test_console_says_each_line_once_named_by_its_run_without_ray_internals(killed_then_finished):
    labels = {s.label for s in SMOKE}
    for output in (killed_then_finished["first"], killed_then_finished["again"].stdout):
        lines = [line for line in output.splitlines() if line.strip()]
        assert lines and len(lines) == len(set(lines)), "a line printed twice:\n" + output
        assert not [line for line in lines if any(noise in line for noise in RAY_INTERNALS)], output
        named = [re.match(r"\[(.+?)\] ", line) for line in lines]
        assert all(m and (m[1] in ("study", "compute") or m[1] in labels) for m in named), output
    again = killed_then_finished["again"]
    transfer = [line for line in again.stdout.splitlines() if "finetune" in line or "fewshot" in line]
    assert {line.split("]")[0][1:] for line in transfer} == labels, again.stdout   # both runs' results, named
    assert again.stderr == ""   # MLflow's and Ray's notes stay off the console
    assert re.search(r"^\[.+?\] (resumed from the checkpoint at|step \d+/40 )", again.stdout, re.M)


def test_mlflow_holds_what_a_researcher_compares(killed_then_finished):
    from pipeline.data import open_dataset
    storage = killed_then_finished["storage"]
    uri = tracking.default_tracking_uri(storage)
    runs = tracking.runs_of_study(uri, "scaling")
    pretraining = {r.data.tags[tracking.RUN_SPEC_TAG]: r for r in runs
                   if tracking.RUN_SPEC_TAG in r.data.tags and tracking.NESTED_KEY_TAG not in r.data.tags}
    data, digits = open_dataset(storage / "data" / "synth-jft-smoke"), open_dataset(storage / "data" / "digits")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for spec in SMOKE:
        run = pretraining[spec.id]
        assert run.info.run_name == spec.label == f"{spec.model_name} / full / 40 steps"
        assert run.data.tags[tracking.NOTE_TAG].startswith(f"{spec.model_name} (")   # its description
        assert run.data.params["steps"] == "40" and float(run.data.params["epochs"]) == 40 * 32 / 512
        assert float(run.data.params["gflops"]) == pytest.approx(PLANNED[spec.id]["exaflops"] * 1e9, rel=1e-3)
        assert run.data.metrics["compute/gflops"] == pytest.approx(run.data.metrics["compute/exaflops"] * 1e9)
        inputs = {(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs}
        assert inputs == {(data.name, data.digest), ("digits", digits.digest)}
        # issue 33, walk 5: MLflow's dataset drawer shows where each dataset is (it does for known source types)
        sources = {d.dataset.name: (d.dataset.source_type, json.loads(d.dataset.source)["uri"]) for d in run.inputs.dataset_inputs}
        assert sources[data.name] == ("local", str(storage / "data" / "synth-jft-smoke"))
        if commit:  # a git checkout (CI's clean clone is one)
            assert run.data.tags["mlflow.source.git.commit"] == commit and run.data.tags["git_dirty"] in ("True", "False")
        artifacts = {a.path for a in tracking.client(uri).list_artifacts(run.info.run_id)}
        assert "run_spec.json" in artifacts
    trials = [r for r in runs if tracking.NESTED_KEY_TAG in r.data.tags]
    assert len(trials) == len(SMOKE)   # the smoke grid has one LR: only the final retrain per run
    for trial in trials:
        parent = pretraining[trial.data.tags[tracking.PARENT_SPEC_TAG]]
        assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {k: trial.data.tags[k] for k in ("model", "family")} == \
            {k: parent.data.tags[k] for k in ("model", "family")}
        assert trial.info.run_name.startswith(parent.info.run_name + " / finetune digits")
        assert all(key.startswith("finetune/") for key in trial.data.params)
        assert set(trial.data.metrics) == {"finetune/digits/test_acc", "finetune/digits/loss"}   # its score and its loss curve
    study_run = tracking.client(uri).get_run(tracking.find_study_run(uri, "scaling", "smoke"))
    assert study_run.data.tags.get(tracking.NOTE_TAG)   # the result in a paragraph, on the run's page
    from pipeline.analysis import family_key
    fitted = json.loads((storage / "reports" / "scaling-smoke" / "fits.json").read_text())["families"]
    for family in fitted:   # every family the report fits on (smoke's have too few points: no law)
        key = family_key(family)
        assert study_run.data.metrics[f"fit/{key}/points"] == fitted[family]["points"]
        assert study_run.data.tags[f"fit/{key}/law"] in (*FORMS, "none")
    experiment = tracking.client(uri).get_experiment(study_run.info.experiment_id)
    view = json.loads(experiment.tags[tracking.SHARED_VIEW_TAG + "smoke"])   # the runs table's columns that matter
    assert {"params.`model`", "params.`steps`", "metrics.`compute/gflops`", "metrics.`fewshot/digits/5shot`"} \
        <= set(view["selectedColumns"])
    assert "viewStateShareKey=smoke&workflowType=machine_learning" in experiment.tags[tracking.NOTE_TAG]  # issue 33, walk 2
    studied = {a.path for a in tracking.client(uri).list_artifacts(study_run.info.run_id, "study")}
    assert studied == {"study/scaling.yaml", "study/runs.json"}   # the study file as it was, the runs resolved
    report = {a.path for a in tracking.client(uri).list_artifacts(study_run.info.run_id, "report")}
    assert {"report/report.html", "report/performance_vs_compute.png"} <= report


def test_a_new_storage_with_the_same_mlflow_store_says_its_runs_are_elsewhere(killed_then_finished, tmp_path):
    """Issue 33, probe 7: runs are found by RunSpec in the experiment, whatever storage: a study
    given a new --storage but the same MLflow store finds them done and says where their
    checkpoints are (the README promised that a new --storage trains again)."""
    old = killed_then_finished["storage"]
    uri = tracking.default_tracking_uri(str(old))
    done = subprocess.run([sys.executable, "-m", "pipeline.study", "scaling", "--preset", "smoke", "--storage",
                           str(tmp_path / "new"), "--tracking-uri", uri],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert f"2 of these runs are in MLflow with their checkpoints outside --storage {tmp_path / 'new'}" in said
    assert f"(e.g. {old}" in said and "2 runs, 2 done, 0 to run" in said


def test_data_made_meanwhile_says_nothing_when_stopped_and_why_when_it_failed(tmp_path, monkeypatch):
    """The preset's synthetic data is made by another process while the study starts up
    (``preflight.synth_started``). Stopped early (a study refused or interrupted), it says nothing on
    the user's console (its pool's warnings included); when it failed, ``prepare_data`` says why in
    one line and makes the data itself."""
    from pipeline import preflight

    preset = load_study("scaling").presets["smoke"]
    code = textwrap.dedent(f"""
        import time
        import psutil
        from pipeline import preflight
        from pipeline.spec import load_study
        with preflight.synth_started(load_study("scaling").presets["tiny"], {str(tmp_path / "stopped")!r}):
            (maker, _), = preflight._MAKING.values()
            deadline = time.time() + 60
            while not psutil.Process(maker.pid).children() and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)   # its pool's workers and semaphores exist; its work (about 8 s) is not done
            assert psutil.Process(maker.pid).children() and maker.poll() is None, "not stopped while it works"
    """)
    stopped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0 and stopped.stderr == "", stopped.stderr   # before: the pool's leaked semaphores

    monkeypatch.setattr(preflight, "SYNTH_MAIN", "import sys; sys.exit('no space left on device')")
    said = []
    with preflight.synth_started(preset, str(tmp_path / "failed"), emit=said.append):
        data = preflight.prepare_data(preset, None, str(tmp_path / "failed"), progress=False, emit=said.append)
    assert said[1] == ("[study] making the synthetic data in another process failed (no space left on device): "
                       "making it here")
    assert open_dataset(data).num_rows("train") == 512
