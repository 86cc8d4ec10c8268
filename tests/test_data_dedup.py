"""De-duplication: resized, JPEG re-encoded copies of downstream test images hidden in the
pretraining set are excluded (and never loaded); distinct images are kept."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from pipeline.data import subset_size
from pipeline.data.loader import LoaderSpec, make_loader
from pipeline.data.dedup import dedup
from pipeline.data.dataset import Dataset
from pipeline.data.format import Row, write_manifest, write_shard
from pipeline.data.synth import SynthSpec, generate
from pipeline.data.verify import verify

ROOT = Path(__file__).resolve().parents[1]


def resized_jpeg(data: bytes, scale: float, quality: int) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def build(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A downstream task, and a pretraining set with copies of 24 of its test images hidden in
    an extra shard among 100 distinct images. Returns (pretrain, downstream, copy key -> test key)."""
    downstream = generate(tmp_path / "task", SynthSpec(task="novel", images=20, test_images=60, classes=5,
                                                       class_offset=20, image_size=64, seed=11),
                          executor="inline", progress=False)
    pretrain = generate(tmp_path / "pre", SynthSpec(images=300, classes=20, image_size=64, seed=12, shards=2),
                        executor="inline", progress=False)
    ds = Dataset(downstream)
    test = pq.read_table(ds.shard_path(ds.shards("test")[0]), columns=["key", "image"])
    pre = Dataset(pretrain)
    distinct = pq.read_table(pre.shard_path(pre.shards()[0]), columns=["key", "image", "labels"])
    rows, copies = [], {}
    for i in range(24):
        scale, quality = [(2.0, 75), (3.0, 90), (0.75, 85)][i % 3]
        key = f"crawl-copy-{i:02d}"
        copies[key] = test.column("key")[i].as_py()
        rows.append(Row(key, resized_jpeg(test.column("image")[i].as_py(), scale, quality), [i % 20]))
    for key, image, labels in zip(*(distinct.column(c).to_pylist() for c in ("key", "image", "labels"))):
        rows.append(Row("crawl-" + key, image, labels))    # same pixels as shard 0: not test images
    manifest = pre.manifest
    entry = write_shard(f"{pretrain}/train-extra.parquet", rows, pre.subset_seed)
    manifest["splits"]["train"]["shards"].append(entry)
    manifest["splits"]["train"]["num_rows"] += len(rows)
    write_manifest(pretrain, manifest)
    return Path(pretrain), Path(downstream), copies


def test_hidden_copies_are_excluded_and_distinct_images_kept(tmp_path):
    pretrain, downstream, copies = build(tmp_path)
    total = Dataset(pretrain).num_rows()
    report = dedup(pretrain, [str(downstream)], executor="processes", progress=False)
    assert report["rows_scanned"] == total == 300 + 24 + 150
    assert report["reference_images"] == 60
    assert report["duplicates_found"] == report["test_images_with_duplicates"] == 24
    excluded = Dataset(pretrain).manifest["exclusions"]["train"]
    assert {e["key"]: e["duplicate_of"] for e in excluded} == {
        k: [f"task:test:{v}"] for k, v in copies.items()}
    assert verify(pretrain, progress=False).ok
    assert subset_size(pretrain) == total - 24
    seen = {k for b in make_loader(LoaderSpec(pretrain, batch_size=64, image_size=16, train=False),
                                   num_workers=0) for k in b.keys}
    assert len(seen) == total - 24 and not seen & set(copies)


def test_dedup_cli_against_several_sets_is_idempotent(tmp_path):
    pretrain, downstream, copies = build(tmp_path)
    digits = subprocess.run([sys.executable, "-m", "pipeline.data", "digits", str(tmp_path / "digits")],
                            cwd=ROOT, capture_output=True, text=True, check=True)
    assert "{'train': 1347, 'test': 450} rows" in digits.stdout
    for _ in range(2):
        run = subprocess.run([sys.executable, "-m", "pipeline.data", "dedup", str(pretrain),
                              "--against", f"{downstream}:test", str(tmp_path / "digits")],
                             cwd=ROOT, capture_output=True, text=True, check=True)
        report = json.loads(run.stdout)
        assert report["reference_images"] == 60 + 450
        assert report["duplicates_found"] == report["excluded_total"] == 24
    manifest = Dataset(pretrain).manifest
    assert len(manifest["exclusions"]["train"]) == 24 and len(manifest["dedup_runs"]) == 2
    # An exclusion that no longer points at its row (a shard rewritten after dedup) is reported.
    manifest["exclusions"]["train"][0]["row"] += 1
    (pretrain / "manifest.json").write_text(json.dumps(manifest))
    (problem,) = verify(pretrain, progress=False).problems
    assert problem.field == "exclusions.train[0].key" and "rewritten after dedup" in problem.message
