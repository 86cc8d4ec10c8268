"""The GPU check's CPU dry mode (bench/gpu_check.sh --dry), so that the script run on lent GPU
machines cannot rot between them: micro models, eager steps, the loader, the table."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_mode_measures_every_model_and_the_loader(tmp_path):
    out = tmp_path / "rows.jsonl"
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--dry", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    steps = [r for r in rows if "model" in r]
    assert [r.get("error") for r in steps] == [None] * len(steps)
    assert {(r["model"], r["mode"]) for r in steps} == {("vit-micro", "eager"), ("bit-micro", "eager"),
                                                        ("bit-micro", "eager channels-last")}
    assert all(r["images_per_s"] > 0 and r["tflops"] > 0 for r in steps)
    loader = [r for r in rows if "loader_workers" in r]
    assert {(r["loader_workers"], r["image_dtype"]) for r in loader} == {(0, "uint8"), (2, "uint8"),
                                                                          (0, "float32"), (2, "float32")}
    assert all(r["images"] == 64 for r in loader)
    assert "| model | mode | batch | img/s |" in done.stdout
