"""Pretraining on a real local Ray cluster with 2 workers (gloo), a real SQLite MLflow store and
real Parquet data: learning, MLflow contents, worker loss, exact resume."""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from pipeline import tracking
from pipeline.data import DataError
from pipeline.data.loader import LoaderSpec, make_loader
from pipeline.data.synth import SynthSpec, generate
from pipeline.pretrain.checkpoint import STATE_FILE, load_state
from pipeline.pretrain.launch import Launch, pretrain
from pipeline.pretrain.loop import Hooks, KeyTrace
from pipeline.spec import Recipe, RunSpec

from micro_models import MICRO

pytestmark = pytest.mark.slow

CLASSES, BATCH = 10, 64
LOCAL = Launch(in_process=True)  # the same loop in this process, without Ray


# The dashboard serves ray.util.state, which the fault test uses to find a worker process.
RAY_DASHBOARD = True


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "synth", SynthSpec(images=2000, val_images=400,
                                                                         classes=CLASSES, image_size=32,
                                                                         shards=2, seed=0), executor="inline",
                    progress=False)


def micro_spec(family: str, steps: int, **recipe) -> RunSpec:
    defaults = dict(batch_size=BATCH, base_lr=1e-3, warmup_steps=20, weight_decay=1e-4, image_size=32,
                    min_crop_area=1.0, val_every=steps, checkpoint_every=max(1, steps // 2), log_every=100)
    return RunSpec(study="test-pretrain", model=MICRO[family], dataset="synth", steps=steps,
                   recipe=Recipe(**{**defaults, **recipe}))


def test_a_corrupt_validation_shard_fails_the_run_before_its_first_step(synth, tmp_path):
    """Issue 33, probe 8: a damaged val shard (same size, flipped bytes) is found by its checksum
    before step 1, by name, not at the first validation after training with advice to skip rows."""
    data = tmp_path / "synth"
    shutil.copytree(synth, data)
    shard = sorted(data.glob("val-*.parquet"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    spec = micro_spec("vit", steps=20, val_every=10)
    with pytest.raises(DataError, match=f"shard {shard.name}.*checksum does not match") as err:
        pretrain(spec, str(data), storage=str(tmp_path / "runs"), launch=LOCAL)
    assert "--on-bad-row" not in str(err.value)
    uri = tracking.default_tracking_uri(str(tmp_path / "runs"))
    run = tracking.spec_runs(uri, spec.study)[spec.id]
    assert tracking.metric_history(uri, run.run_id, "pretrain/loss") == []   # not one step trained


def constant_baseline(synth) -> float:
    """Precision@1 on the val split of always predicting the most frequent training class."""
    freq = sum(b.labels.sum(0) for b in make_loader(LoaderSpec(synth, split="train", batch_size=500,
                                                               image_size=8, train=False), num_workers=0))
    val = torch.cat([b.labels for b in make_loader(LoaderSpec(synth, split="val", batch_size=500,
                                                              image_size=8, train=False), num_workers=0)])
    return float(val[:, int(freq.argmax())].mean())


# Steps each micro model needs to clear the bar with a margin (measured: BiT 0.71 at 300 steps,
# the ViT and the hybrid need about 800).
LEARNING_STEPS = {"vit": 800, "resnet": 300, "hybrid": 800}


def assert_learned_and_logged(out: dict, spec: RunSpec, synth, workers: int) -> None:
    """The run finished, its MLflow run holds what the compare view needs, and it learned."""
    steps, family = spec.steps, spec.family
    assert out["done"] and out["step"] == steps and out["images_seen"] == steps * BATCH
    uri, run_id = out["tracking_uri"], out["mlflow_run_id"]
    run = tracking.client(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["run_spec_id"] == spec.id and run.data.tags["family"] == family
    params = run.data.params
    assert params["model"] == MICRO[family]["name"] and params["batch_size"] == str(BATCH)
    assert params["workers"] == str(workers) and float(params["forward_gmacs"]) > 0
    losses = tracking.metric_history(uri, run_id, "pretrain/loss")
    assert [s for s, _ in losses] == list(range(100, steps + 1, 100))
    assert losses[-1][1] < losses[0][1]
    metrics = run.data.metrics
    expected = 6 * float(params["forward_gmacs"]) * 1e9 * steps * BATCH / 1e18
    assert metrics["compute/exaflops"] == pytest.approx(expected, rel=1e-6)
    assert metrics["compute/images_seen"] == steps * BATCH and metrics["throughput/images_per_s"] > 0
    assert metrics["throughput/first_step_s"] > 0 and 0 <= metrics["throughput/data_wait"] < 1
    assert metrics["throughput/peak_memory_gib"] > 0 and "throughput/mfu" not in metrics  # no peak known for CPUs
    checkpoint = Path(run.data.tags["checkpoint_uri"])
    assert (checkpoint / STATE_FILE).is_file()
    state = load_state(checkpoint)  # as data: weights_only
    assert state["step"] == steps

    baseline = constant_baseline(synth)
    assert metrics["pretrain/val_prec1_best"] >= metrics["pretrain/val_prec1"]
    assert metrics["pretrain/val_prec1_best"] > baseline + 0.05, (metrics["pretrain/val_prec1_best"], baseline)


@pytest.mark.parametrize("family", ["resnet", "hybrid"])
def test_micro_model_of_each_family_learns_in_process(family, synth, tmp_path, one_torch_thread):
    """The same loop without Ray (one worker): what each family learns, without Ray's start-up."""
    spec = micro_spec(family, steps=LEARNING_STEPS[family])
    out = pretrain(spec, str(synth), storage=str(tmp_path), launch=LOCAL)
    assert_learned_and_logged(out, spec, synth, workers=1)
    kept = sorted(p.name for p in (tmp_path / f"pretrain-{spec.id}").iterdir())
    assert kept == [f"checkpoint_{spec.steps // 2:09d}", f"checkpoint_{spec.steps:09d}"]


def test_bf16_autocast_trains_on_a_cpu_as_on_a_gpu(synth, tmp_path, one_torch_thread):
    """The precision GPU runs use (bf16 autocast, float32 loss) through the loop, validation and
    checkpoint on the CPU's autocast path: the loss falls, the run says how fast it went."""
    out = pretrain(micro_spec("vit", 60, precision="bf16", log_every=20), synth, storage=str(tmp_path / "runs"),
                   launch=LOCAL)
    losses = tracking.metric_history(out["tracking_uri"], out["mlflow_run_id"], "pretrain/loss")
    assert out["done"] and [s for s, _ in losses] == [20, 40, 60] and losses[-1][1] < losses[0][1]
    assert out["throughput"]["compiled"] is False and out["throughput"]["images_per_s"] > 0


def test_in_process_stop_and_resume_equals_uninterrupted_run(synth, tmp_path, one_torch_thread):
    spec = micro_spec("vit", steps=30, checkpoint_every=10, val_every=1000, dropout=0.1, log_every=10)
    whole = pretrain(spec, str(synth), storage=str(tmp_path / "whole"), launch=LOCAL)
    first = pretrain(spec, str(synth), storage=str(tmp_path / "parts"), launch=LOCAL, hooks=Hooks(stop_after_steps=20))
    assert not first["done"] and first["step"] == 20
    second = pretrain(spec, str(synth), storage=str(tmp_path / "parts"), launch=LOCAL)
    assert second["done"] and second["resumed_from"] == 20 and second["mlflow_run_id"] == first["mlflow_run_id"]
    a = load_state(whole["checkpoint_uri"])["model"]
    b = load_state(second["checkpoint_uri"])["model"]
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def _ray_train_worker_pids(ray_context) -> list[int]:
    from ray.util.state import list_actors
    actors = list_actors(address=f"http://{ray_context.dashboard_url}",
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors if a.pid]


def _registered_steps(snapshot: Path) -> list[int]:
    try:
        return [r["metrics"]["step"] for r in json.loads(snapshot.read_text())["checkpoint_results"]]
    except (OSError, ValueError, KeyError):
        return []


def test_micro_vit_on_two_ray_workers_resumes_after_a_worker_is_killed_learns_and_logs_to_mlflow(
        ray_cluster, synth, tmp_path):
    """Two Ray Train workers (gloo), one SIGKILLed right after the first registered checkpoint: the
    run resumes from it (not from step 0), finishes, has learned, and its MLflow run holds what the
    compare view needs, each step's loss logged once. The kill lands mid-run: 800 steps are about
    20 s of training on 2 idle cores; the state API is warmed up first so finding workers is quick."""
    steps = LEARNING_STEPS["vit"]
    spec = micro_spec("vit", steps=steps, checkpoint_every=25)
    assert _ray_train_worker_pids(ray_cluster) == []
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(pretrain(spec, str(synth), storage=str(tmp_path),
                                                                    launch=Launch(workers=2, max_failures=2))))
    runner.start()
    # Kill once Ray Train has *registered* a checkpoint (its snapshot lists it): a checkpoint
    # folder alone may still be mid-report, and a kill then rightly restarts from step 0.
    snapshot = tmp_path / f"pretrain-{spec.id}" / "checkpoint_manager_snapshot.json"
    deadline = time.time() + 120
    while time.time() < deadline and not _registered_steps(snapshot):
        time.sleep(0.1)
    assert _registered_steps(snapshot), "no checkpoint was registered"
    pids = _ray_train_worker_pids(ray_cluster)
    assert len(pids) == 2 and runner.is_alive()
    os.kill(pids[1], signal.SIGKILL)
    runner.join(timeout=300)
    assert not runner.is_alive()
    assert result["done"], result
    assert result["resumed_from"] is not None and result["resumed_from"] >= 25  # not from step 0
    assert_learned_and_logged(result, spec, synth, workers=2)
    assert len(list((tmp_path / "subsets").glob("*-train-*.npz"))) == 1  # built once, read by both ranks


def _last_keys_per_step(trace_dir: Path) -> dict[tuple[int, int], str]:
    """(rank, step) -> keys; a resumed run re-does the steps after its checkpoint: keep the last."""
    out = {}
    for rank_file in sorted(trace_dir.glob("keys-rank*.txt")):
        rank = int(rank_file.stem.removeprefix("keys-rank"))
        for line in rank_file.read_text().splitlines():
            step, keys = line.split("\t")
            out[(rank, int(step))] = keys
    return out


def test_stop_and_resume_equals_uninterrupted_run(ray_cluster, synth, tmp_path):
    # Dropout on, so that the per-rank RNG state must be restored too; 20 steps of 64 cross an
    # epoch boundary of the 2000-image set (31 steps per epoch) only in the longer run below.
    spec = micro_spec("vit", steps=40, checkpoint_every=10, val_every=1000, dropout=0.1, log_every=10)
    two, trace = Launch(workers=2), KeyTrace(str(tmp_path / "parts-keys"))
    whole = pretrain(spec, str(synth), storage=str(tmp_path / "whole"), launch=two,
                     hooks=Hooks(on_batch=KeyTrace(str(tmp_path / "whole-keys"))))
    first = pretrain(spec, str(synth), storage=str(tmp_path / "parts"), launch=two,
                     hooks=Hooks(stop_after_steps=20, on_batch=trace))
    assert not first["done"] and first["step"] == 20
    run = tracking.client(first["tracking_uri"]).get_run(first["mlflow_run_id"])
    assert run.info.status == "RUNNING" and run.data.tags["pretrain_status"] == "partial"
    # What a full disk or a SIGKILL during a checkpoint's upload leaves: folders Ray Train never registered.
    run_dir = tmp_path / "parts" / f"pretrain-{spec.id}"
    for name, data in [("checkpoint_2099-01-01_00-00-00.000000", b""), ("checkpoint_2099-01-01_00-00-01.000000", b"PK\x03")]:
        (run_dir / name).mkdir()
        (run_dir / name / "state.pt").write_bytes(data)
    second = pretrain(spec, str(synth), storage=str(tmp_path / "parts"), launch=two, hooks=Hooks(on_batch=trace))
    assert second["done"] and second["resumed_from"] == 20 and second["images_seen"] == 40 * BATCH
    left = sorted(p.name for p in run_dir.glob("checkpoint_2*"))
    assert len(left) == 2 and not any(n.startswith("checkpoint_2099") for n in left), left  # the two kept, no strays
    assert second["mlflow_run_id"] == first["mlflow_run_id"]  # the same MLflow run, not a new one

    assert _last_keys_per_step(tmp_path / "parts-keys") == _last_keys_per_step(tmp_path / "whole-keys")
    a = load_state(whole["checkpoint_uri"])["model"]
    b = load_state(second["checkpoint_uri"])["model"]
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_cli_maps_its_flags_onto_the_recipe(ray_cluster, synth, tmp_path, capsys):
    """`python -m pipeline.pretrain`: flags given reach the run's recipe; flags not given keep the
    Recipe's own defaults (Table 3's), which the CLI does not restate."""
    from pipeline.pretrain.__main__ import main
    argv = ["--model", json.dumps(MICRO["vit"]), "--data", str(synth), "--steps", "4", "--workers", "2",
            "--batch-size", "32", "--micro-batch-size", "8", "--base-lr", "0.002", "--warmup-steps", "2",
            "--image-size", "32", "--min-crop-area", "1.0", "--checkpoint-every", "2", "--val-every", "4",
            "--log-every", "2", "--storage", str(tmp_path)]
    assert main(argv) == 0
    out = "\n" + capsys.readouterr().out
    summary = json.loads(out[out.rindex("\n{") + 1:])  # the CLI prints its summary last
    assert summary["done"] and summary["step"] == 4 and summary["images_seen"] == 4 * 32
    runs = list(tracking.runs_of_study(tracking.default_tracking_uri(tmp_path), "adhoc"))
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    params = runs[0].data.params
    assert {k: params[k] for k in ("batch_size", "base_lr", "base_lr_source", "warmup_steps", "image_size", "steps")} \
        == {"batch_size": "32", "base_lr": "0.002", "base_lr_source": "recipe", "warmup_steps": "2",
            "image_size": "32", "steps": "4"}
    assert params["weight_decay"] == str(Recipe().weight_decay) and params["grad_clip"] == str(Recipe().grad_clip)


def test_bad_data_fails_at_once_or_is_skipped_and_counted(ray_cluster, synth, tmp_path):
    """A row that cannot be labelled fails the run in seconds, not after Ray Train's retries (the
    same row fails every attempt); with on_bad_row='skip' the run finishes and counts it."""
    import shutil
    from test_data_format import rewrite_row
    from pipeline.data import DataError
    data = Path(shutil.copytree(synth, tmp_path / "bad"))
    for shard in (0, 1):  # a row of each shard, so some epoch surely reads one
        rewrite_row(data, shard, 4, labels=[CLASSES])
    spec = micro_spec("resnet", steps=40, checkpoint_every=20, val_every=1000, log_every=20)
    start = time.monotonic()
    with pytest.raises(DataError, match=r"row 4, field labels: labels \[10\] outside"):
        pretrain(spec, str(data), storage=str(tmp_path / "raise"), launch=Launch(workers=2, max_failures=3))
    assert time.monotonic() - start < 60  # one attempt (retries took 81-98 s)
    out = pretrain(spec, str(data), storage=str(tmp_path / "skip"), launch=Launch(workers=2, on_bad_row="skip"))
    assert out["done"] and out["skipped_rows"] >= 1
    run = tracking.client(out["tracking_uri"]).get_run(out["mlflow_run_id"])
    assert run.data.params["on_bad_row"] == "skip" and run.data.metrics["data/skipped_rows"] == out["skipped_rows"]


def test_a_corrupt_shard_fails_before_step_0_and_good_shards_are_checked_once(synth, tmp_path, one_torch_thread):
    """Shard checksums are checked before the first step (a corrupt shard fails the run at once,
    naming it); a shard once checked is marked in the storage and not read again for it."""
    import shutil
    from pipeline.data import DataError
    from pipeline.data.dataset import Dataset
    from pipeline.data.verify import check_checksums
    bad = Path(shutil.copytree(synth, tmp_path / "flipped"))
    shard = Dataset(bad).shards()[1]
    data = bytearray((bad / shard.path).read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size, other bytes: only the checksum can tell
    (bad / shard.path).write_bytes(bytes(data))
    spec = micro_spec("vit", steps=4, checkpoint_every=2, val_every=1000, log_every=2)
    with pytest.raises(DataError, match=rf"shard {shard.path}, field sha256: checksum does not match the manifest"):
        pretrain(spec, str(bad), storage=str(tmp_path / "runs"), launch=LOCAL)
    assert not list((tmp_path / "runs").glob(f"pretrain-{spec.id}/checkpoint_*"))  # failed before step 0

    out = pretrain(spec, str(synth), storage=str(tmp_path / "runs"), launch=LOCAL)
    assert out["done"]
    bad_marks, marks = sorted((tmp_path / "runs" / "checksums-checked").iterdir(),
                              key=lambda folder: len(list(folder.iterdir())))
    assert len(list(bad_marks.iterdir())) == 1  # the good shard before the corrupt one
    checked = len(Dataset(synth).shards()) + len(Dataset(synth).shards("val"))   # training and validation shards
    assert len(list(marks.iterdir())) == checked  # every shard checked, and marked
    assert check_checksums(synth, marks=str(marks)) == 0 and check_checksums(synth) == len(Dataset(synth).shards())


def test_a_failed_final_few_shot_fails_no_pretraining(synth, tmp_path, one_torch_thread, monkeypatch, capsys):
    """The few-shot protocol at the end of pretraining (``Probes.final``) is a shortcut: if it fails,
    the run is still pretrained, says why in one line, and holds no few-shot metrics (the chain's
    transfer stage then runs the protocol on the checkpoint, as it does for a worker stopped early)."""
    from pipeline.data.digits import convert_digits
    from pipeline.pretrain import loop
    from pipeline.pretrain.loop import Probes
    from pipeline.transfer.fewshot import FewshotSettings
    convert_digits(tmp_path / "digits", progress=False)

    def broken(*args, **kwargs):
        raise OSError("the digits' shard went away")
    monkeypatch.setattr(loop, "evaluate", broken)
    probes = Probes(datasets=(("digits", str(tmp_path / "digits")),), settings=FewshotSettings(shots=(1,)), final=True)
    spec = micro_spec("vit", steps=10, checkpoint_every=10, val_every=10, log_every=10)
    out = pretrain(spec, str(synth), storage=str(tmp_path / "runs"), launch=LOCAL, hooks=Hooks(probes=probes))
    assert out["done"] and out["step"] == 10
    assert not [k for k in tracking.recorded_metrics(out["tracking_uri"], out["mlflow_run_id"]) if k.startswith("fewshot/")]
    assert "the few-shot protocol at the end of pretraining failed (OSError: the digits' shard went away)" \
        in capsys.readouterr().out


def test_few_shot_probes_log_a_learning_curve_at_every_validation(synth, tmp_path, one_torch_thread):
    """Learning curves: at each validation step and at the end, the few-shot accuracies of the
    model being trained, with the compute spent so far, are logged at that step. With ``final``,
    the run also holds the transfer stage's few-shot protocol on its final weights: the numbers that
    protocol gives on the run's last checkpoint loaded elsewhere, with the set as the run's input."""
    from pipeline.data.digits import convert_digits
    from pipeline.pretrain.loop import Probes
    from pipeline.transfer.fewshot import FewshotSettings, fewshot_metrics, run_fewshot
    convert_digits(tmp_path / "digits", progress=False)
    digits = tmp_path / "digits"
    spec = micro_spec("vit", steps=30, checkpoint_every=30, val_every=10, log_every=10)
    settings = FewshotSettings(shots=(1, 5))
    probes = Probes(datasets=(("digits", str(digits)),), settings=settings, final=True)
    out = pretrain(spec, str(synth), storage=str(tmp_path / "runs"), launch=LOCAL, hooks=Hooks(probes=probes))
    recorded = tracking.recorded_metrics(out["tracking_uri"], out["mlflow_run_id"])
    elsewhere = fewshot_metrics("digits", run_fewshot(out["checkpoint_uri"], str(digits), settings))
    assert {k: v for k, v in recorded.items() if k.startswith("fewshot/")} == elsewhere
    inputs = tracking.client(out["tracking_uri"]).get_run(out["mlflow_run_id"]).inputs.dataset_inputs
    assert "digits" in {d.dataset.name for d in inputs}
    history = {key: tracking.metric_history(out["tracking_uri"], out["mlflow_run_id"], key)
               for key in ("curve/fewshot/digits/1shot", "curve/fewshot/digits/5shot", "curve/exaflops")}
    assert {key: [step for step, _ in points] for key, points in history.items()} == \
        {key: [10, 20, 30] for key in history}
    final = tracking.recorded_metrics(out["tracking_uri"], out["mlflow_run_id"])["compute/exaflops"]
    assert [value for _, value in history["curve/exaflops"]] == pytest.approx([final / 3, final * 2 / 3, final])
    assert all(0.1 < value <= 1 for _, value in history["curve/fewshot/digits/5shot"])  # 10 classes: chance 0.1
