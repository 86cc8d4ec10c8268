"""Bench scripts at toy sizes, so that they cannot rot between the runs that measure: the GPU
check's CPU dry mode (bench/gpu_check.sh --dry; micro models, eager steps, the loader on photos alone and feeding a step, the tables)
the real-photo loader bench (bench/bench_photos.py), the conversion bench (bench/bench_convert.py), the
extrapolation benchmark on its smallest dataset (bench/extrapolation.py) and the packages carried to a lent GPU
machine (bench/device_env.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_mode_measures_every_model_and_the_loader(tmp_path):
    out = tmp_path / "rows.jsonl"
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--dry", "--timm", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # timm's rows beside ours where timm imports (the GPU machines' image), else one line says they are left out
    timm_rows = [r for r in rows if r.get("impl", "ours") != "ours"]
    assert [(r["model"], r["mode"]) for r in timm_rows] == [(r["model"], r["mode"]) for r in rows if r.get("impl") == "ours"] \
        if timm_rows else "# timm cannot be imported here" in done.stdout
    steps = [r for r in rows if "model" in r]
    assert [r.get("error") for r in steps] == [None] * len(steps)
    assert {(r["model"], r["mode"]) for r in steps} == {("vit-micro", "eager"), ("bit-micro", "eager"),
                                                        ("bit-micro", "eager channels-last")}
    assert all(r["images_per_s"] > 0 and r["tflops"] > 0 for r in steps)
    loader = [r for r in rows if "loader_workers" in r and "fed" not in r]
    # 40 photos in batches of 4; the first 3 (+ 2 a worker: the prefetch queue) are not timed
    assert [(r["stored"], r["loader_workers"], r["images"]) for r in loader] == [("original", 0, 28), ("original", 2, 12)]
    fed = [r for r in rows if "fed" in r]
    assert [(r["fed"], r["loader_workers"], r["images"]) for r in fed] == [("vit-micro", 2, 12)]
    assert all(r["images_per_s"] > 0 for r in loader + fed) and 0 < fed[0]["share_of_device_rate"]
    assert "| model | mode | batch | img/s |" in done.stdout and "| photos | step fed |" in done.stdout


def test_bench_photos_smoke_run_measures_every_row(tmp_path):
    """bench/bench_photos.py (issue 17) at toy sizes: photos made, converted (original and a stored
    resolution), every decode and loader row measured."""
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, "bench/bench_photos.py", "--images", "40", "--decode-images", "16",
                           "--repeats", "1", "--stored", "48", "--batch-size", "8", "--workers", "1",
                           "--workdir", str(tmp_path / "work"), "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"original", "stored 48"}
    assert results["original"]["images"] == results["stored 48"]["images"] == 40
    labels = [label for label, *_ in results["original"]["rows"]]
    assert labels[:4] == ["PIL baseline (torchvision way), float32",
                          "ours decode_rgb + train_transform (full decode), uint8",
                          "ours decode_train, uint8", "ours decode_train, float32"]
    assert sum("make_loader" in label for label in labels) == 4
    assert all(per_cpu > 0 and per_wall > 0 for r in results.values() for _, per_cpu, per_wall in r["rows"])
    assert results["stored 48"]["crops"]["short_side_mean"] <= 48
    assert "| stored | measurement | images per CPU-second |" in done.stdout


def test_bench_convert_smoke_run_times_every_phase_and_rate(tmp_path):
    """bench/bench_convert.py (issue 18) at toy sizes: 120 synset tars into 12 shards through and
    resumed, in a folder and in the S3 store; the rate rows on 28 photos."""
    out = tmp_path / "convert.json"
    done = subprocess.run([sys.executable, "bench/bench_convert.py", "--synsets", "120", "--shards", "12",
                           "--photos", "28", "--repeats", "1", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    book = result["bookkeeping"]
    assert set(book["folder"]) == set(book["store"]) == {"through", "resumed"}
    assert all(row[k] >= 0 for where in ("folder", "store") for row in book[where].values()
               for k in ("before_s", "jobs_s", "after_s", "total_s"))
    assert "resuming: 11 of 12 shards already written" in done.stderr
    assert result["rate"]["photos"] == 28 and len(result["rate"]["ms_per_image"]) == 5
    assert all(ms > 0 for ms in result["rate"]["ms_per_image"].values())
    assert "| into | conversion |" in done.stdout and "| step | CPU ms / image |" in done.stdout


def test_extrapolation_benchmark_data_and_its_smallest_dataset(tmp_path):
    """bench/extrapolation.py (issue 29): its published curves are the files the README lists (checksums),
    split as documented; the smallest dataset runs end to end and scores every method on every curve."""
    data = ROOT / "bench" / "data"
    listed = (data / "README.md").read_text().split("## Checksums (sha256)\n```\n", 1)[1].split("```", 1)[0]
    check = subprocess.run(["sha256sum", "-c", "-"], input=listed, cwd=data, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 5, check.stdout + check.stderr
    sys.path.insert(0, str(ROOT / "bench"))
    import extrapolation
    counts = {name: len(load()) for name, load in extrapolation.DATASETS.items()}
    assert counts == {"lang": 20, "clip-compute": 28, "clip-checkpoints": 4, "clip-curves": 29}
    for curve in extrapolation.lang_curves():      # fitted below, predicted above, as the file splits them
        assert curve.x_fit.max() < curve.x_test.min()
    out = tmp_path / "scores.json"
    done = subprocess.run([sys.executable, "bench/extrapolation.py", "--datasets", "clip-checkpoints", "--workers", "2",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["curve"] for r in rows] == ["LAION-2B", "LAION-400M", "LAION-80M", "all"]
    methods = ["M1", "M2", "M3", "M4", "floor", "report"]
    forms = ("power", "knee", "saturating", "sigmoid")
    assert all(r[m] > 0 for r in rows for m in methods) and all(set(r["law"].split("+")) <= set(forms) for r in rows)
    assert all("+" in r["law"] for r in rows)      # 13-57 points: two forms scored, the law is their blend
    assert "| clip-checkpoints | 4 |" in done.stdout


def test_device_env_carries_what_the_device_image_lacks_and_its_check_imports_the_pipeline(tmp_path):
    """bench/device_env.py (issue 30): the requirements it resolves leave torch to the image, the
    packages kept are those the image's list lacks (names compared as pip compares them), and
    ``check`` imports what the pipeline imports (here, in the test environment)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import device_env
    req, cons = device_env.requirements(tmp_path)
    assert not any(device_env.canonical(line).startswith("torch") for line in req.read_text().splitlines())
    assert not any(device_env.canonical(line).startswith("torch=") for line in cons.read_text().splitlines())
    assert any(line.startswith("ray[") for line in req.read_text().splitlines())
    report = {"install": [{"metadata": {"name": n, "version": "1"}}
                          for n in ("ray", "NumPy", "pydantic_core", "Flask", "nvidia_ml_py", "pyarrow")]}
    assert device_env.missing_on_image(report) == ["Flask==1", "pydantic_core==1", "ray==1"]
    done = subprocess.run([sys.executable, "bench/device_env.py", "check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "IMPORT FAILED" not in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[device_env] python 3." in done.stdout


def test_gpu_e2e_dry_mode_runs_every_step_on_the_cpu(smoke_killed_and_resumed):
    """bench/gpu_e2e.sh --dry (issue 30): the smoke study killed at its first checkpoint, resumed,
    then found done; pipeline.pretrain --compile; every run's throughput in MLflow. (The study it
    leaves is checked as a researcher reads it in tests/test_orchestrate.py.)"""
    done, result = smoke_killed_and_resumed["done"], smoke_killed_and_resumed["result"]
    assert list(result["seconds"]) == ["smoke until killed", "smoke resumed", "smoke again", "pretrain --compile"]
    runs = {r["run"]: r for r in result["runs"]}
    assert set(runs) == {"ViT-nano / full / 40 steps", "BiT-nano / full / 40 steps", "ViT-nano / 60 steps, compiled"}
    for row in runs.values():  # on a CPU: no MFU (no known peak), every other number measured
        assert row["mfu"] is None and row["images_per_s"] > 0 and row["first_step_s"] > 0
        assert 0 <= row["data_wait"] < 1 and row["peak_memory_gib"] > 0
    assert "| run | img/s | MFU | first step s | waiting for data | peak GiB |" in done.stdout


def test_fixed_cost_reads_each_chains_phases_from_the_trace(tmp_path, monkeypatch):
    """pipeline.trace marks (on when PIPELINE_TRACE names a file) become bench/fixed_cost.py's
    per-phase seconds, chain by chain."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import fixed_cost
    from pipeline import trace
    monkeypatch.setenv(trace.TRACE_ENV, str(tmp_path / "trace.txt"))
    trace.mark("chain abc started", at=100.0)
    trace.mark("pretraining run tracked", at=100.5)
    trace.mark("fit started", at=101.0)
    trace.mark("train worker process started", at=103.0)
    trace.mark("trial dev lr 0.1 entered", at=110.0)
    trace.mark("trial dev lr 0.1 finished", at=111.0)
    trace.mark("trial test lr 0.1 finished", at=112.5)
    trace.mark("chain abc transferred", at=113.0)
    trace.mark("chain def started", at=120.0)
    trace.mark("pretraining run tracked", at=121.0)
    found = fixed_cost.phases((tmp_path / "trace.txt").read_text())
    assert found["chain start -> pretraining run tracked"] == [0.5, 1.0]
    assert found["fit started -> worker process spawned"] == [2.0]
    assert found["trials (2 dev, 1 final)"] == [2.5]
    monkeypatch.delenv(trace.TRACE_ENV)
    trace.mark("not written")
    assert "not written" not in (tmp_path / "trace.txt").read_text()
