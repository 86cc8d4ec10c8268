"""Dataset format, nested subsets, the synthetic generator and `verify`."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.dataset import Dataset
from pipeline.data.format import DataError, Row, subset_priority, write_manifest, write_shard
from pipeline.data.subsets import Subset, iter_blocks
from pipeline.data.synth import SynthSpec, generate
from pipeline.data.verify import verify

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("d") / "synth", SynthSpec(images=400, classes=12, image_size=16,
                                                                      shards=3, seed=7, label_noise=0.05),
                    executor="inline", progress=False)


@pytest.fixture(scope="module")
def large_shards(tmp_path_factory) -> Path:
    """Two shards of 1000 rows: big enough that a 3% subset is several row groups per shard."""
    return generate(tmp_path_factory.mktemp("d") / "big", SynthSpec(images=2000, classes=20, image_size=64,
                                                                    shards=2, seed=3), executor="processes",
                    progress=False)


def all_rows(path: Path, split: str = "train") -> dict[str, dict]:
    ds = Dataset(path)
    out = {}
    for shard in ds.shards(split):
        t = pq.read_table(ds.shard_path(shard))
        for key, image, labels, prio in zip(*(t.column(c).to_pylist() for c in
                                             ("key", "image", "labels", "priority"))):
            out[key] = {"image": image, "labels": labels, "priority": prio}
    return out


# -- generator -----------------------------------------------------------------------------

def test_synth_is_deterministic_and_independent_of_sharding(synth, tmp_path):
    again = generate(tmp_path / "one", SynthSpec(images=400, classes=12, image_size=16, shards=1, seed=7,
                                                 label_noise=0.05), executor="inline", progress=False)
    assert all_rows(again) == all_rows(synth)
    other = generate(tmp_path / "seed8", SynthSpec(images=50, classes=12, image_size=16, shards=1, seed=8),
                     executor="inline", progress=False)
    first = all_rows(synth)
    assert not {r["image"] for r in all_rows(other).values()} & {r["image"] for r in first.values()}


def test_synth_is_multi_label_long_tailed_and_in_range(synth):
    rows = all_rows(synth)
    ds = Dataset(synth)
    assert ds.multi_label and ds.num_classes == 12 and len(rows) == 400
    labels = [r["labels"] for r in rows.values()]
    # up to 3 objects, plus at most one spurious label from the 5% label noise
    assert all(0 < len(l) <= 4 and all(0 <= c < 12 for c in l) for l in labels)
    assert sum(len(l) > 1 for l in labels) > 80          # many images hold several objects
    freq = np.bincount([c for l in labels for c in l], minlength=12)
    assert freq[0] > 4 * freq[-1]                          # long tail: head class >> tail class
    manifest = ds.manifest
    assert manifest["image"] == {"encoding": "png", "height": 16, "width": 16, "channels": 3}
    assert manifest["source"]["generator"] == "pipeline.data.synth"
    assert all(len(s["sha256"]) == 64 for s in manifest["splits"]["train"]["shards"])


def test_synth_downstream_tasks_have_train_and_test_splits(tmp_path):
    novel = generate(tmp_path / "novel", SynthSpec(task="novel", images=60, test_images=30, classes=5,
                                                   class_offset=12, image_size=16), executor="inline",
                     progress=False)
    ds = Dataset(novel)
    assert ds.splits == ["train", "test"] and not ds.multi_label
    assert (ds.num_rows("train"), ds.num_rows("test")) == (60, 30)
    train, test = all_rows(novel, "train"), all_rows(novel, "test")
    assert not set(train) & set(test)
    assert {c for r in test.values() for c in r["labels"]} == set(range(5))
    count = generate(tmp_path / "count", SynthSpec(task="count", images=40, classes=4, image_size=16),
                     executor="inline", progress=False)
    assert Dataset(count).num_rows("test") == 10
    assert {len(r["labels"]) for r in all_rows(count).values()} == {1}


def test_synth_cli_reports_rows(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline.data", "synth", str(tmp_path / "cli"),
                          "--images", "30", "--classes", "4", "--image-size", "16", "--shards", "2"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert "{'train': 30} rows, 4 classes, 2 shards" in out.stdout
    assert "30/30" in out.stderr                          # progress bar reached the end
    verified = subprocess.run([sys.executable, "-m", "pipeline.data", "verify", str(tmp_path / "cli")],
                              cwd=ROOT, capture_output=True, text=True)
    assert verified.returncode == 0 and verified.stdout.startswith("OK: rows {'train': 30}")


def test_glyph_style_is_deterministic_grey_multi_label_and_named(tmp_path):
    from PIL import Image
    out = generate(tmp_path / "glyphs", SynthSpec(images=120, classes=30, image_size=16, shards=3, seed=4,
                                                  style="glyphs"), executor="inline", progress=False)
    again = generate(tmp_path / "one", SynthSpec(images=120, classes=30, image_size=16, shards=1, seed=4,
                                                 style="glyphs"), executor="inline", progress=False)
    rows = all_rows(out)
    assert rows == all_rows(again)                        # independent of sharding
    shapes = all_rows(generate(tmp_path / "shapes", SynthSpec(images=120, classes=30, image_size=16, seed=4),
                               executor="inline", progress=False))
    assert not {r["image"] for r in rows.values()} & {r["image"] for r in shapes.values()}
    assert all(k.startswith("glyphs-pretrain4-train-") for k in rows)
    labels = [r["labels"] for r in rows.values()]
    assert all(0 < len(l) <= 3 and all(0 <= c < 30 for c in l) for l in labels)
    assert sum(len(l) > 1 for l in labels) > 20           # scenes of several glyphs, as in `pretrain`
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB"), np.int16)
                       for r in rows.values()])
    assert pixels.shape == (120, 16, 16, 3)
    assert np.abs(pixels - pixels.mean(-1, keepdims=True)).mean() < 12   # grey levels, a faint tint
    contrast = pixels.reshape(120, -1).max(1) - pixels.reshape(120, -1).min(1)
    assert np.median(contrast) > 80                       # visible ink on its ground
    ds = Dataset(out)
    assert ds.manifest["source"]["style"] == "glyphs" and ds.manifest["class_names"][:2] == ["glyph0000", "glyph0001"]


def test_glyph_classes_are_fixed_figures_and_the_style_is_checked(tmp_path):
    from pipeline.data.synth import NUM_GLYPH_CLASSES, glyph_prototype
    a, b = glyph_prototype(5), glyph_prototype(5)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert 1 <= len(a) <= 4 and all(s.ndim == 2 and s.shape[1] == 2 for s in a)
    pts = np.concatenate(a)
    assert np.isclose(np.abs(pts).max(), 1.0)             # longer side spans [-1, 1]
    assert not all(len(glyph_prototype(c)) == len(a) and np.allclose(np.concatenate(glyph_prototype(c)), pts)
                   for c in range(6, 9))
    with pytest.raises(ValueError, match="glyph class space"):
        glyph_prototype(NUM_GLYPH_CLASSES)
    novel = generate(tmp_path / "novel", SynthSpec(task="novel", style="glyphs", images=40, test_images=20,
                                                   classes=4, class_offset=500, image_size=16),
                     executor="inline", progress=False)
    ds = Dataset(novel)
    assert ds.splits == ["train", "test"] and not ds.multi_label and ds.manifest["class_names"][0] == "glyph0500"
    with pytest.raises(ValueError, match="style"):
        generate(tmp_path / "bad", SynthSpec(images=4, classes=2, style="emoji"), executor="inline",
                 progress=False)
    with pytest.raises(ValueError, match="glyphs class space"):
        generate(tmp_path / "bad", SynthSpec(task="novel", images=4, classes=2,
                                             class_offset=NUM_GLYPH_CLASSES - 1, style="glyphs"),
                 executor="inline", progress=False)


def test_synth_cli_makes_glyphs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline.data", "synth", str(tmp_path / "cli"), "--style", "glyphs",
                          "--images", "20", "--classes", "300", "--image-size", "16", "--max-objects", "1",
                          "--executor", "inline"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "{'train': 20} rows, 300 classes, 1 shards" in out.stdout
    ds = Dataset(tmp_path / "cli")
    assert ds.manifest["source"]["style"] == "glyphs" and ds.manifest["source"]["max_objects"] == 1
    assert all(len(r["labels"]) == 1 for r in all_rows(tmp_path / "cli").values())


# -- subsets ---------------------------------------------------------------------------------

def test_subsets_nest_and_are_exactly_the_low_priority_rows(large_shards):
    ds = Dataset(large_shards)
    rows = all_rows(large_shards)
    seed = ds.subset_seed
    assert all(r["priority"] == subset_priority(k, seed) for k, r in rows.items())
    previous: set[str] = set()
    for fraction in (0.03, 0.1, 0.3, 1.0):
        keys = set(Subset.build(ds, fraction=fraction).keys())
        assert keys == {k for k, r in rows.items() if r["priority"] < fraction}
        assert previous <= keys
        previous = keys
    by_count = [set(Subset.build(ds, count=n).keys()) for n in (7, 100, 1999)]
    assert [len(k) for k in by_count] == [7, 100, 1999]
    assert by_count[0] <= by_count[1] <= by_count[2]
    assert by_count[1] == set(sorted(rows, key=lambda k: rows[k]["priority"])[:100])
    with pytest.raises(DataError, match="only 2000 usable rows"):
        Subset.build(ds, count=2001)


class _CountingFile(io.RawIOBase):
    def __init__(self, path, counter):
        self._f, self._counter = open(path, "rb"), counter

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def readinto(self, buffer):
        n = self._f.readinto(buffer)
        self._counter[0] += n
        return n

    def close(self):
        self._f.close()
        super().close()


class _ByteCountingDataset(Dataset):
    """The real reader, with every byte it reads from the shards counted."""

    def __init__(self, path):
        super().__init__(path)
        self.bytes_read = [0]

    def open_shard(self, shard):
        return pa.PythonFile(_CountingFile(self.shard_path(shard), self.bytes_read), mode="r")


def test_three_percent_subset_reads_at_most_five_percent_of_the_bytes(large_shards):
    ds = _ByteCountingDataset(large_shards)
    total = sum(s.bytes for s in ds.shards())
    subset = Subset.build(ds, fraction=0.03)
    keys = []
    for _, table in iter_blocks(subset, subset.blocks, ["key", "image", "labels"]):
        keys += table.column("key").to_pylist()
    expected = {k for k, r in all_rows(large_shards).items() if r["priority"] < 0.03}
    assert set(keys) == expected and len(keys) == len(expected) > 40
    read = ds.bytes_read[0] / total
    # This draw holds 3.4% of the rows; on top of that: at most one row group a shard (1% of it)
    # and the footers (about 0.3% here, nothing on real shards).
    assert read <= len(keys) / 2000 + 0.015, f"read {read:.2%} of the bytes for {len(keys)} rows"
    assert read <= 0.05, f"read {read:.2%} of the bytes"


# -- verify and corruption -------------------------------------------------------------------

def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_row(path: Path, shard_index: int, row: int, **changes) -> str:
    """Re-write one shard with one row changed, as a buggy producer would (the manifest's
    checksum is updated, so only content checks can catch it). Returns the row's key."""
    ds = Dataset(path)
    shard = ds.shards()[shard_index]
    t = pq.read_table(ds.shard_path(shard))
    rows = [Row(k, i, l) for k, i, l in zip(*(t.column(c).to_pylist() for c in ("key", "image", "labels")))]
    key = rows[row].key
    rows[row] = Row(key, changes.get("image", rows[row].image), changes.get("labels", rows[row].labels))
    manifest = ds.manifest
    entries = manifest["splits"]["train"]["shards"]
    entries[shard_index] = write_shard(ds.shard_path(shard), rows, ds.subset_seed,
                                       entries[shard_index]["row_group_rows"])
    write_manifest(path, manifest)
    # The row keeps its position: rows are ordered by priority, a function of the key.
    assert pq.read_table(ds.shard_path(shard), columns=["key"]).column("key")[row].as_py() == key
    return key


def test_verify_passes_a_good_dataset(synth):
    report = verify(synth, full=True, progress=False)
    assert report.ok, report.problems
    assert report.rows == {"train": 400} and report.decoded == 400


def test_truncated_shard_is_named(synth, tmp_path):
    bad = copy_dataset(synth, tmp_path / "trunc")
    shard = Dataset(bad).shards()[1]
    data = (bad / shard.path).read_bytes()
    (bad / shard.path).write_bytes(data[: len(data) // 2])
    report = verify(bad, progress=False)
    assert [(p.shard, "truncated" in p.message) for p in report.problems] == [(shard.path, True)]
    assert report.rows == {"train": 400 - shard.num_rows}   # the other shards are still checked
    with pytest.raises(DataError, match=rf"shard {shard.path}: file is \d+ bytes, the manifest says \d+ \(truncated\)"):
        Subset.build(Dataset(bad), fraction=1.0).keys()
    # the driver's check before a run: one listing of the folder, no shard opened
    with pytest.raises(DataError, match=rf"shard {shard.path}: file is \d+ bytes, the manifest says \d+ \(truncated\)"):
        Dataset(bad).check_listed_sizes("train")
    (bad / shard.path).unlink()
    with pytest.raises(DataError, match=rf"shard {shard.path}: shard file is missing"):
        Dataset(bad).check_listed_sizes("train")
    Dataset(synth).check_listed_sizes("train")


def test_flipped_bytes_fail_the_checksum(synth, tmp_path):
    bad = copy_dataset(synth, tmp_path / "flip")
    shard = Dataset(bad).shards()[0]
    data = bytearray((bad / shard.path).read_bytes())
    data[len(data) // 3] ^= 0xFF
    (bad / shard.path).write_bytes(bytes(data))
    (p,) = verify(bad, progress=False).problems
    assert (p.shard, p.field) == (shard.path, "sha256")


def test_undecodable_image_and_bad_label_name_shard_row_and_field(synth, tmp_path):
    bad = copy_dataset(synth, tmp_path / "rows")
    rewrite_row(bad, 0, 5, image=b"\x89PNG\r\n\x1a\n not really a png")
    rewrite_row(bad, 2, 9, labels=[3, 12])
    shards = Dataset(bad).shards()
    report = verify(bad, full=True, progress=False)
    found = {(p.shard, p.row, p.field) for p in report.problems}
    assert found == {(shards[0].path, 5, "image"), (shards[2].path, 9, "labels")}
    assert any("outside [0, 12)" in p.message for p in report.problems)
    cli = subprocess.run([sys.executable, "-m", "pipeline.data", "verify", str(bad), "--full"],
                         cwd=ROOT, capture_output=True, text=True)
    assert cli.returncode == 1
    assert f"shard {shards[0].path}, row 5, field image: cannot decode image" in cli.stdout


def test_manifest_path_escaping_the_folder_is_refused(synth, tmp_path):
    bad = copy_dataset(synth, tmp_path / "escape")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["path"] = "../../etc/passwd"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"field splits.train.shards\[0\].path: shard path "
                                        r"'../../etc/passwd' escapes the dataset folder"):
        Dataset(bad)
    (p,) = verify(bad, progress=False).problems
    assert "escapes the dataset folder" in p.message
    manifest["splits"]["train"]["shards"][0]["path"] = "/etc/passwd"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="escapes"):
        Dataset(bad)


def test_synth_val_split_is_held_out_from_train(tmp_path):
    out = generate(tmp_path / "val", SynthSpec(images=40, val_images=12, classes=6, image_size=16),
                   executor="inline", progress=False)
    ds = Dataset(out)
    assert ds.splits == ["train", "val"] and ds.num_rows("val") == 12 and ds.multi_label
    train, val = all_rows(out, "train"), all_rows(out, "val")
    assert not set(train) & set(val)
    assert not {r["image"] for r in train.values()} & {r["image"] for r in val.values()}


def test_exclude_fraction_is_the_exact_complement_of_a_dev_slice(tmp_path):
    """Fine-tuning holds out subset(fraction=f) as its dev slice and trains on the rest."""
    from pipeline.data.loader import LoaderSpec, make_loader
    from pipeline.data.synth import SynthSpec, generate
    path = generate(tmp_path / "ds", SynthSpec(images=300, classes=5, image_size=16, shards=3),
                    executor="inline", progress=False)
    ds = Dataset(path)
    dev = set(Subset.build(ds, fraction=0.1).keys())
    rest = set(Subset.build(ds, exclude_fraction=0.1).keys())
    assert dev and rest and not dev & rest and dev | rest == set(Subset.build(ds).keys())
    seen = [k for b in make_loader(LoaderSpec(path, batch_size=50, image_size=16, train=False,
                                              exclude_fraction=0.1), num_workers=0) for k in b.keys]
    assert sorted(seen) == sorted(rest)
    with pytest.raises(ValueError, match="exclude_fraction"):
        Subset.build(ds, fraction=0.1, exclude_fraction=0.2)


# -- metadata at scale (issue 17): what a count subset reads ------------------------------------

class _OpenCountingDataset(Dataset):
    def __init__(self, path):
        super().__init__(path)
        self.opened: dict[str, int] = {}
        self.groups_read: list[tuple[str, int]] = []

    def parquet_file(self, shard):
        self.opened[shard.path] = self.opened.get(shard.path, 0) + 1
        pf = super().parquet_file(shard)
        read, seen = pf.read_row_group, self.groups_read

        def counted(group, *args, **kwargs):
            seen.append((shard.path, group))
            return read(group, *args, **kwargs)
        pf.read_row_group = counted
        return pf


def test_a_count_subset_opens_each_shard_once_and_reads_its_boundary_group_once(large_shards, monkeypatch):
    """The threshold search and the subset's prefixes share one footer read and one read of the
    boundary row group a shard (before: up to four reads of it), shards read META_THREADS at a time;
    the rows are the same whatever the number of threads."""
    from pipeline.data import dataset as fmt
    ds = _OpenCountingDataset(large_shards)
    subset = Subset.build(ds, count=60)
    assert subset.num_rows == 60 and ds.opened == {s.path: 1 for s in ds.shards()}
    assert len(set(ds.groups_read)) == len(ds.groups_read) > 0   # no row group read twice
    monkeypatch.setattr(fmt, "META_THREADS", 1)
    one = Subset.build(Dataset(large_shards), count=60)
    assert (one.threshold, one.prefix_rows, one.blocks) == (subset.threshold, subset.prefix_rows, subset.blocks)


def test_each_shard_keeps_order_and_raises_the_first_error_in_order():
    from pipeline.data.dataset import each_shard
    assert each_shard(lambda i: i * i, range(10_000)) == [i * i for i in range(10_000)]

    def fails(i):
        if i in (5000, 9000):
            raise ValueError(f"item {i}")
        return i
    with pytest.raises(ValueError, match="item 5000"):
        each_shard(fails, range(10_000))


def test_sizes_from_the_manifest_match_the_built_subsets(synth, tmp_path):
    data = copy_dataset(synth, tmp_path / "ex")
    manifest = json.loads((data / "manifest.json").read_text())
    first = manifest["splits"]["train"]["shards"][0]["path"]
    manifest["exclusions"] = {"train": [{"shard": first, "row": r, "key": "k"} for r in (0, 3, 3, 40)]}
    (data / "manifest.json").write_text(json.dumps(manifest))
    ds = Dataset(data)
    assert ds.usable_rows("train") == ds.subset_rows("train") == Subset.build(ds).num_rows == 397
    assert ds.subset_rows("train", count=123) == Subset.build(ds, count=123).num_rows == 123
