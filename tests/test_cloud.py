"""The cloud path on one machine, with real servers: SeaweedFS as the S3 object store, an MLflow
tracking server whose artifacts go to that store, and the pipeline's own commands run as users run
them (endpoint and keys only in the standard AWS variables)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from pipeline import storage, tracking
from pipeline.data import DataError, open_dataset
from pipeline.data.loader import LoaderSpec, make_loader
from pipeline.data.dataset import copy_dataset
from pipeline.data.subsets import Subset
from pipeline.raycluster import TRAIN_HEALTH_CHECK_S
from pipeline.spec import load_study

from ray_head import free_port
from study_files import smoke_variant

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def s3(object_store, monkeypatch):
    """The store's variables in this process, and a fresh prefix of the bucket for this test."""
    for name, value in object_store["env"].items():
        monkeypatch.setenv(name, value)
    return f"s3://{object_store['bucket']}/{uuid.uuid4().hex[:10]}"


def run(command: list[str], env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def client_env(object_store, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_ADDRESS"))}
    return {**env, **object_store["env"], "PYTHONPATH": str(ROOT), **extra}


# ----------------------------------------------------------------------------- datasets in the store

def test_datasets_are_written_to_and_read_from_the_store(s3, tmp_path):
    from pipeline.data.synth import SynthSpec, generate
    from pipeline.data.verify import verify
    spec = SynthSpec(images=300, classes=10, image_size=16, shards=3, seed=5)
    remote = generate(f"{s3}/synth", spec, executor="inline", progress=False)   # straight to the store
    local = generate(tmp_path / "synth", spec, executor="inline", progress=False)
    written = {storage.name(f.path): f.mtime_ns for f in storage.files_under(remote)}
    assert remote == f"{s3}/synth" and len(written) == 4 and written["manifest.json"] == max(written.values())
    ds, same = open_dataset(remote), open_dataset(local)
    assert ds.manifest["splits"] == same.manifest["splits"]   # byte-identical shards (sha256 in the manifest)
    assert Subset.build(ds, fraction=0.1).keys() == Subset.build(same, fraction=0.1).keys()
    a = next(iter(make_loader(LoaderSpec(remote, batch_size=16, image_size=16, fraction=0.5, seed=1),
                              num_workers=0)))
    b = next(iter(make_loader(LoaderSpec(local, batch_size=16, image_size=16, fraction=0.5, seed=1),
                              num_workers=0)))
    assert a.keys == b.keys and np.array_equal(a.images.numpy(), b.images.numpy())
    assert verify(remote, full=True, progress=False).ok
    from pipeline.data.dedup import dedup
    found = dedup(remote, [f"{s3}/synth:train"], executor="inline", dry_run=True, progress=False)
    assert found["duplicates_found"] == 300                  # every image is its own copy

    # Up and down again with `copy`: the copy opens and verifies, the manifest is the same.
    copy_dataset(local, f"{s3}/copied", progress=False)
    back = copy_dataset(f"{s3}/copied", tmp_path / "back", progress=False)
    assert verify(f"{s3}/copied", progress=False).ok and open_dataset(back).manifest == same.manifest


def test_a_failed_conversion_into_the_store_leaves_no_dataset_and_resumes(s3, tmp_path, capsys):
    from PIL import Image
    from pipeline.data.convert import ConversionError, ConvertOptions
    from pipeline.data.convert import convert
    for c in ("cat", "dog"):
        (tmp_path / "src" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "src" / c / f"{i}.png")
    (tmp_path / "src" / "dog" / "9.png").write_bytes(b"not an image")
    two = ConvertOptions(shards=2)      # cat/0-2 dog/0, then dog/1, dog/2, dog/9
    with pytest.raises(ConversionError, match=f"9.png.*; 1 of 2 shards written; .* or delete {s3}/broken"):
        convert("imagefolder", tmp_path / "src", f"{s3}/broken", two, executor="inline", progress=False)
    with pytest.raises(DataError, match="no manifest.json"):
        open_dataset(f"{s3}/broken")
    kept = storage.listdir(f"{s3}/broken")     # the finished shard and its result, for the next run
    assert kept == [".train-00000-of-00002.result.json", ".train-plan.json", "train-00000-of-00002.parquet"]

    Image.new("RGB", (8, 8), (0, 0, 90)).save(tmp_path / "src" / "dog" / "9.png")   # fixed
    capsys.readouterr()
    convert("imagefolder", tmp_path / "src", f"{s3}/broken", two, executor="inline", progress=False)
    assert "resuming: 1 of 2 shards already written" in capsys.readouterr().err
    assert storage.listdir(f"{s3}/broken") == ["manifest.json", "train-00000-of-00002.parquet",
                                               "train-00001-of-00002.parquet"]
    convert("imagefolder", tmp_path / "src", tmp_path / "broken", two, executor="inline", progress=False)
    assert open_dataset(f"{s3}/broken").digest == open_dataset(tmp_path / "broken").digest


def test_an_imagenet21k_outer_tar_stopped_midway_into_the_store_resumes_to_the_same_dataset(
        s3, tmp_path, capsys, monkeypatch):
    """README's first conversion: `convert imagenet21k fall11_whole.tar s3://...`. Ctrl-C while
    the third synset is read; the same command, run again (in worker processes this time),
    writes only the rest and makes the dataset a conversion that ran through makes."""
    import tarfile
    from pipeline.data import imagenet21k as imagenet
    from pipeline.data.__main__ import main
    from test_data_imagenet import add_bytes, jpeg
    wnids = [f"n{1000 + k:08d}" for k in range(6)]
    folder = tmp_path / "synsets"
    folder.mkdir()
    for k, wnid in enumerate(wnids):
        with tarfile.open(folder / f"{wnid}.tar", "w") as tar:
            for i in range(2 + k % 3):
                add_bytes(tar, f"{wnid}_{i}.JPEG", jpeg(10 * k + i))
    outer = tmp_path / "fall11_whole.tar"
    with tarfile.open(outer, "w") as tar:
        for wnid in reversed(wnids):
            tar.add(folder / f"{wnid}.tar", arcname=f"{wnid}.tar")
    out = f"{s3}/data/ImageNet-21k"
    command = ["convert", "imagenet21k", str(outer), out, "--shards", "6"]
    real = imagenet._synset_images

    def ctrl_c_at_the_third(synset, wanted=None):
        if synset.wnid == wnids[2]:
            raise KeyboardInterrupt
        return real(synset, wanted)
    monkeypatch.setattr(imagenet, "_synset_images", ctrl_c_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        with monkeypatch.context() as m:    # one job at a time, in this process: a known stop
            m.setattr(imagenet, "run_split_jobs", _inline(imagenet.run_split_jobs))
            main(command)
    assert "interrupted: 2 of 6 shards written" in capsys.readouterr().err
    with pytest.raises(DataError, match="no manifest.json"):
        open_dataset(out)
    monkeypatch.setattr(imagenet, "_synset_images", real)

    assert main(command) == 0                                            # the same command
    assert "resuming: 2 of 6 shards already written" in capsys.readouterr().err
    assert storage.listdir(out) == ["manifest.json", *(f"train-{i:05d}-of-00006.parquet" for i in range(6))]
    fresh = tmp_path / "fresh" / "ImageNet-21k"    # the name is the folder's
    assert main(["convert", "imagenet21k", str(outer), str(fresh), "--shards", "6"]) == 0
    made = open_dataset(out)
    assert made.digest == open_dataset(fresh).digest
    assert made.manifest["class_names"] == wnids and made.usable_rows("train") == 2 + 3 + 4 + 2 + 3 + 4
    assert main(["verify", out, "--full"]) == 0


def _inline(run_split_jobs):
    def inline(*args, **kw):
        return run_split_jobs(*args, **{**kw, "executor": "inline"})
    return inline


# ----------------------------------------------------------------------------- bad cloud input

BAD_INPUTS = {
    # case: (environment changes, --storage suffix or URI, --data, words the message must hold)
    "missing bucket": ({}, "s3://no-such-bucket/vs", None, ["s3://no-such-bucket", "does not exist", "aws s3 mb"]),
    "wrong credentials": ({"AWS_SECRET_ACCESS_KEY": "wrong"}, "{s3}/vs", None,
                          ["{s3}/vs", "credentials", "AWS_SECRET_ACCESS_KEY"]),
    "unreachable endpoint": ({"AWS_ENDPOINT_URL": "http://127.0.0.1:{port}"}, "{s3}/vs", None,
                             ["{s3}/vs", "did not answer", "AWS_ENDPOINT_URL=http://127.0.0.1:{port}"]),
    "data without a manifest": ({}, "{s3}/vs", "{s3}/nothing-here", ["--data {s3}/nothing-here", "no manifest.json",
                                                                      "python -m pipeline.data"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_cloud_input_is_said_within_30_s_and_launches_nothing(case, object_store, s3, tmp_path):
    changes, storage_uri, data, words = BAD_INPUTS[case]
    port = free_port()
    fill = lambda text: text.format(s3=s3, port=port)
    env = client_env(object_store, **{k: fill(v) for k, v in changes.items()})
    db = tmp_path / "mlflow.db"
    command = [sys.executable, "-m", "pipeline.study", "scaling", "--preset", "smoke", "--storage", fill(storage_uri),
               "--tracking-uri", f"sqlite:///{db}"] + (["--data", fill(data)] if data else [])
    (tmp_path / "cwd").mkdir()
    start = time.monotonic()
    out = run(command, env, tmp_path / "cwd", timeout=60)
    seconds = time.monotonic() - start
    message = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2 and seconds < 30, (seconds, out.stdout[-2000:], out.stderr[-3000:])
    for word in map(fill, words):
        assert word in message, message
    assert "Traceback" not in out.stderr and "Ray" not in out.stdout + out.stderr
    assert not db.exists() and storage.listdir(s3) == [] and list((tmp_path / "cwd").iterdir()) == []


# ----------------------------------------------------------------------------- the study on the store

def test_a_store_outage_during_pretraining_is_waited_out_and_the_run_resumes(object_store, s3, tmp_path):
    """The store stops answering (connections refused) while a run pretrains: its attempt fails, the
    next waits for the store instead of failing at once (Ray Train checks the storage first: all
    retries used up within seconds), then resumes from its last checkpoint. The store comes back
    once the run says it waits: a fixed outage of 10 s was at times ridden out by the S3 client's
    own retries on 2 busy cores, and the attempt never failed."""
    from servers import TcpOutage
    made = run([sys.executable, "-m", "pipeline.data", "synth", str(tmp_path / "data"), "--images", "512",
                "--val-images", "64", "--classes", "5", "--image-size", "16", "--executor", "inline"],
               client_env(object_store), tmp_path, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    relay = TcpOutage(object_store["endpoint"]).up()
    env = client_env(object_store, AWS_ENDPOINT_URL=relay.url, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=TRAIN_HEALTH_CHECK_S)
    storage_uri = f"{s3}/outage"
    model = '{"name": "ViT-nano", "family": "vit", "depth": 1, "width": 32, "heads": 2, "mlp_dim": 64, "patch_size": 8}'
    command = [sys.executable, "-m", "pipeline.pretrain", "--model", model, "--data", str(tmp_path / "data"),
               "--steps", "200", "--batch-size", "32", "--base-lr", "0.003", "--image-size", "16", "--warmup-steps", "2",
               "--checkpoint-every", "20", "--val-every", "1000", "--log-every", "20", "--no-system-metrics",
               "--storage", storage_uri, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    job = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not any(n.startswith("pretrain-") and storage.exists(f"{storage_uri}/{n}/checkpoint_manager_snapshot.json")
                      for n in storage.listdir(storage_uri)):
            assert job.poll() is None, job.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no registered checkpoint within 180 s"
            time.sleep(0.2)
        relay.down()
        said = []   # the run's output so far, read beside it
        reader = threading.Thread(target=lambda: said.extend(job.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 180
        while not any("does not answer: waiting" in line for line in said):
            assert job.poll() is None or reader.is_alive(), "".join(said)[-3000:]
            assert time.monotonic() < deadline, "the run did not say it waits for the store within 180 s"
            time.sleep(0.2)
        relay.up()
        job.wait(timeout=300)
        reader.join(timeout=30)
        output = "".join(said)
    finally:
        relay.down()
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, output[-4000:]
    assert "does not answer: waiting" in output, output[-4000:]
    resumed = re.findall(r"resumed from the checkpoint at step (\d+)/200", output)
    assert resumed and int(resumed[-1]) > 0, output[-4000:]


# ----------------------------------------------------------------------------- several Ray nodes, one preempted

def preempt_study(path: Path, vit_steps: int, name: str = "cloud-preempt") -> str:
    """The smoke preset as its own study (its own MLflow experiment), its ViT run ``vit_steps`` long
    (long enough that a node can be killed while it pretrains), a checkpoint every 50 steps."""
    def longer(smoke: dict) -> None:
        smoke["runs"][0]["steps"] = vit_steps
        smoke["recipe"].update(checkpoint_every=50, log_every=25, val_every=500)
    return smoke_variant(path, name, longer).name


def test_ray_job_on_a_head_and_a_preempted_worker_node(object_store, mlflow_http, s3, tmp_path):
    """The cloud path as the README shows it: the data made locally and copied into the store, the
    study submitted as a Ray job to a head with a worker node, storage and data in the store, MLflow
    over HTTP; the worker node is preempted mid-pretraining, a new one finishes the study, and the
    job submitted again finds every run done."""
    from ray_head import ray_head, ray_worker_node, stop_node
    vs = f"{s3}/vs"
    data_env = client_env(object_store)
    made = run([sys.executable, "-m", "pipeline.data", "synth", str(tmp_path / "synth-jft-smoke"), "--style", "glyphs",
                "--images", "512", "--val-images", "200", "--classes", "5", "--zipf-exponent", "0", "--max-objects", "1",
                "--image-size", "16", "--seed", "0", "--executor", "inline"], data_env, tmp_path, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    copied = run([sys.executable, "-m", "pipeline.data", "copy", str(tmp_path / "synth-jft-smoke"),
                  f"{vs}/data/synth-jft-smoke"], data_env, tmp_path, timeout=120)
    assert copied.returncode == 0, copied.stderr[-2000:]
    study_file = preempt_study(tmp_path / "job" / "preempt.yaml", vit_steps=500)
    study = load_study(str(tmp_path / "job" / study_file))
    vit = study.expand("smoke")[0]
    folders = {name: tmp_path / name for name in ("head", "worker-1", "worker-2")}
    for folder in folders.values():
        folder.mkdir()
    node_env = {**object_store["env"], "PYTHONPATH": str(ROOT), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": TRAIN_HEALTH_CHECK_S,
                # a dead node is noticed within seconds (default: 5 missed checks 3 s apart)
                "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    with ray_head(num_cpus=0, extra_env=node_env, cwd=folders["head"]) as head:
        env = {**head["env"], "PYTHONPATH": str(ROOT)}
        submit = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", head["dashboard"],
                  "--working-dir", str(tmp_path / "job"), "--", "python", "-m", "pipeline.study", study_file,
                  "--preset", "smoke", "--data", f"{vs}/data/synth-jft-smoke", "--storage", vs,
                  "--tracking-uri", mlflow_http]
        with ray_worker_node(head, num_cpus=2, cwd=folders["worker-1"]) as first:
            job = subprocess.Popen(submit, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
            deadline = time.monotonic() + 300
            # Two checkpoints in the store: the first is registered with Ray Train by now.
            while len([n for n in storage.listdir(f"{vs}/pretrain-{vit.id}") if n.startswith("checkpoint_")]) < 2:
                assert job.poll() is None, job.stdout.read()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint of the ViT run within 300 s"
                time.sleep(0.5)
            stop_node(first["process"], first["dir"], term_grace=0)   # preempted: every process SIGKILLed
        with ray_worker_node(head, num_cpus=2, cwd=folders["worker-2"]):
            output, _ = job.communicate(timeout=600)
            assert job.returncode == 0, output[-5000:]
            run_ids = {r.info.run_id for r in tracking.runs_of_study(mlflow_http, "cloud-preempt")}
            again = subprocess.run(submit, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    # submitted again: every run is found finished and skipped, nothing is made twice
    assert again.returncode == 0 and "2 runs, 2 done, 0 to run" in again.stdout, again.stdout[-3000:]
    assert {r.info.run_id for r in tracking.runs_of_study(mlflow_http, "cloud-preempt")} == run_ids
    resumed = re.findall(rf"\[{re.escape(vit.label)}\] resumed from the checkpoint at step (\d+)/500", output)
    assert resumed and int(resumed[0]) > 0, output[-5000:]
    runs = [r for r in tracking.runs_of_study(mlflow_http, "cloud-preempt") if "nested_key" not in r.data.tags
            and tracking.RUN_SPEC_TAG in r.data.tags]
    assert sorted(r.data.tags[tracking.RUN_SPEC_TAG] for r in runs) == sorted(s.id for s in study.expand("smoke"))
    assert all(r.info.status == "FINISHED" for r in runs)
    steps = [s for s, _ in tracking.metric_history(mlflow_http, [r for r in runs if r.data.tags[tracking.RUN_SPEC_TAG] == vit.id][0].info.run_id, "pretrain/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 500       # nothing logged twice after the resume
    for run_record in runs:
        assert run_record.data.tags["checkpoint_uri"].startswith(f"{vs}/pretrain-")
        assert {"finetune/digits/acc", "fewshot/digits/5shot"} <= set(run_record.data.metrics)
    report = f"{vs}/reports/cloud-preempt-smoke/report.md"
    assert storage.is_file(report) and "Study `cloud-preempt`" in storage.read_text(report)
    study_run = tracking.find_study_run(mlflow_http, "cloud-preempt", "smoke")
    assert "report/report.md" in {a.path for a in tracking.client(mlflow_http).list_artifacts(study_run, "report")}
    assert storage.is_file(f"{vs}/data/digits/manifest.json")    # downstream sets made in the store
    assert [n.split("-")[-2] for n in storage.listdir(f"{vs}/subsets")] == ["train"]  # one subset kept, in the store
    assert all(list(folder.iterdir()) == [] for folder in folders.values())  # nodes share only the store


# ----------------------------------------------------------------------------- MLflow over HTTP, when the network fails

def test_runs_logging_the_same_new_dataset_at_once_all_get_it(mlflow_http):
    """Chains that start together log the same dataset as their input at the same moment; the
    server's lookup-then-insert races (a unique-key error for all but one writer: 13 rounds in 20
    failed without the retry, 6 writers) and every run must still get its one input."""
    study = f"race-{uuid.uuid4().hex[:8]}"
    runs = [tracking.start_run(mlflow_http, study, f"spec-{i}", tags={}, params={}) for i in range(6)]
    errors = []
    for round_ in range(5):
        record = tracking.DatasetRecord("synth", "s3://bucket/synth", uuid.uuid4().hex[:12], "pretrain", {"round": round_})
        barrier = threading.Barrier(len(runs))

        def log(run_id: str) -> None:
            barrier.wait()
            try:
                tracking.log_datasets(mlflow_http, run_id, [record])
            except Exception as err:  # noqa: BLE001 - collected, asserted below
                errors.append(repr(err)[:300])
        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    for run_id in runs:
        inputs = tracking.client(mlflow_http).get_run(run_id).inputs.dataset_inputs
        assert sorted(i.dataset.digest for i in inputs) == sorted({i.dataset.digest for i in inputs}) and len(inputs) == 5


def test_tracking_server_errors_are_retried_without_duplicates(mlflow_http):
    from servers import FaultyProxy
    proxy = FaultyProxy(mlflow_http).up()
    try:
        uri, study = proxy.url, f"faults-{uuid.uuid4().hex[:8]}"
        proxy.fail_next = 2                                    # 5xx: retried
        first = tracking.start_run(uri, study, "spec-a", tags={}, params={"p": 1})
        proxy.lose_answer = "runs/create"                      # the server made a run, the client never heard
        second = tracking.start_run(uri, study, "spec-b", tags={}, params={"p": 2})
        assert tracking.start_run(uri, study, "spec-b", tags={}, params={"p": 2}) == second
        runs = tracking.spec_runs(mlflow_http, study)
        assert sorted(runs) == ["spec-a", "spec-b"] and runs["spec-a"].run_id == first
        assert len(list(tracking.runs_of_study(mlflow_http, study))) == 2
        calls = [path.split("?")[0].rsplit("/", 2)[-2:] for _, path in proxy.seen]
        assert calls.count(["runs", "create"]) == 3 and calls.count(["runs", "delete"]) == 1  # the extra run went

        logger = tracking.MetricLogger(uri, first)
        for step in range(6):
            if step == 3:                                      # the server restarts: refused for 3 s
                proxy.down()
                threading.Timer(3.0, proxy.up).start()
            if step == 4:
                proxy.lose_answer = "log-batch"                # logged, answer lost, sent again
            logger.log_now(step, {"loss": 1.0 / (step + 1)})
        assert tracking.metric_history(mlflow_http, first, "loss") == [(s, 1.0 / (s + 1)) for s in range(6)]
        assert sum(path.split("?")[0].endswith("log-batch") for _, path in proxy.seen) >= 8  # retries went through
    finally:
        proxy.down()
    start = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=f"{uri} does not answer"):
        tracking.check_server(uri, wait_s=3)                   # down for good: said in seconds
    assert time.monotonic() - start < 10


def test_a_tracking_server_that_stays_down_stops_the_study_clearly_and_the_same_command_resumes(
        object_store, mlflow_http, s3, tmp_path):
    from servers import FaultyProxy
    study_file = tmp_path / preempt_study(tmp_path / "outage.yaml", vit_steps=40, name="cloud-outage")  # the outage comes at launch
    study = load_study(str(study_file))
    proxy = FaultyProxy(mlflow_http).up()
    # Few retries, so that the outage is given up on in seconds (the defaults ride out ~30 s).
    env = client_env(object_store, MLFLOW_TRACKING_URI=proxy.url, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1")
    command = [sys.executable, "-m", "pipeline.study", str(study_file), "--preset", "smoke", "--storage", f"{s3}/vs"]
    try:
        first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        # Down for good as soon as the study has its MLflow run (its runs are being launched): a
        # later outage takes Ray Train's 3 retries first, about a minute more on 2 cores.
        deadline = time.monotonic() + 300
        while tracking.find_study_run(mlflow_http, "cloud-outage", "smoke") is None:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.2)
        proxy.down()
        start = time.monotonic()
        _, err = first.communicate(timeout=300)
        print(f"study stopped {time.monotonic() - start:.0f} s after the server went down")
        assert first.returncode == 1, err[-3000:]
        assert f"error: the MLflow server {proxy.url} stopped answering" in err, err[-3000:]  # (Ray may print after it)
        proxy.up()
        again = run(command, env, tmp_path, timeout=600)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    finally:
        proxy.down()
    runs = [r for r in tracking.runs_of_study(mlflow_http, "cloud-outage") if tracking.RUN_SPEC_TAG in r.data.tags
            and "nested_key" not in r.data.tags]
    assert sorted(r.data.tags[tracking.RUN_SPEC_TAG] for r in runs) == sorted(s.id for s in study.expand("smoke"))
    assert all(r.info.status == "FINISHED" for r in runs)
