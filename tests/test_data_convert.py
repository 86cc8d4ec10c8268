"""Converters round-trip: what goes in (pixels, labels, counts) comes back out of the dataset."""
from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.data import DataError
from pipeline.data.loader import LoaderSpec, make_loader
from pipeline.data.convert import ConvertOptions
from pipeline.data.digits import convert_digits
from pipeline.data.convert import convert
from pipeline.data.dataset import Dataset
from pipeline.data.verify import verify

ROOT = Path(__file__).resolve().parents[1]


def stored(path: Path, split: str = "train") -> dict[str, tuple[bytes, list[int]]]:
    ds = Dataset(path)
    out = {}
    for shard in ds.shards(split):
        t = pq.read_table(ds.shard_path(shard))
        out.update(zip(t.column("key").to_pylist(),
                       zip(t.column("image").to_pylist(), t.column("labels").to_pylist())))
    return out


def pixels(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    assert img.mode == "RGB"
    return np.asarray(img)


def encode(arr: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def assert_usable(path: Path, splits: dict[str, int]) -> None:
    report = verify(path, full=True, progress=False)
    assert report.ok, report.problems
    assert report.rows == splits
    for split, n in splits.items():
        seen = sum(len(b.keys) for b in make_loader(LoaderSpec(path, split=split, batch_size=64,
                                                               image_size=16, train=False), num_workers=0))
        assert seen == n


def test_digits_are_real_images_with_a_fixed_split(tmp_path):
    from sklearn.datasets import load_digits
    result = convert_digits(tmp_path / "digits", progress=False)
    assert [(s["split"], s["rows"]) for s in result["splits"]] == [("train", 1347), ("test", 450)]
    assert_usable(tmp_path / "digits", {"train": 1347, "test": 450})
    digits = load_digits()
    test = stored(tmp_path / "digits", "test")
    assert len(test) == 450 and not set(test) & set(stored(tmp_path / "digits", "train"))
    for key, (image, labels) in list(test.items())[:20]:
        i = int(key.split("-")[1])
        expected = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
        assert np.array_equal(pixels(image), np.repeat(expected[:, :, None], 3, axis=2))
        assert labels == [int(digits.target[i])]
    again = tmp_path / "again"
    convert_digits(again, progress=False)
    assert set(stored(again, "test")) == set(test)               # the split is fixed


@pytest.fixture()
def image_tree(tmp_path) -> tuple[Path, dict[str, tuple[np.ndarray, str]]]:
    """A folder tree with RGB JPEG, grayscale PNG, palette PNG and RGBA PNG files."""
    rng = np.random.default_rng(0)
    expected = {}
    src = tmp_path / "tree"
    for c, cls in enumerate(["cat", "dog", "eel"]):
        (src / cls).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
            kind = ["rgb_jpeg", "gray_png", "palette_png", "rgba_png"][i]
            if kind == "rgb_jpeg":
                data = encode(arr, "JPEG")
                want = pixels(data)
            elif kind == "gray_png":
                data = encode(arr[:, :, 0], "PNG")
                want = np.repeat(arr[:, :, :1], 3, axis=2)
            elif kind == "palette_png":
                img = Image.fromarray(arr).convert("P")
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                data = buf.getvalue()
                want = np.asarray(img.convert("RGB"))
            else:
                data = encode(np.dstack([arr, np.full((12, 10), 255, np.uint8)]), "PNG")
                want = arr
            ext = ".jpg" if kind == "rgb_jpeg" else ".png"
            (src / cls / f"{kind}{ext}").write_bytes(data)
            expected[f"train/{cls}/{kind}{ext}"] = (want, c, data)
    (src / "cat" / "notes.txt").write_text("not an image")
    return src, expected


def test_imagefolder_round_trip_makes_everything_rgb(image_tree, tmp_path):
    src, expected = image_tree
    out = tmp_path / "out"
    result = convert("imagefolder", src, out, ConvertOptions(shards=2), progress=False)
    assert (result["rows"], result["shards"], result["skipped"], result["ignored_files"]) == (12, 2, 0, 1)
    assert result["rows_per_class"] == {0: 4, 1: 4, 2: 4}
    rows = stored(out)
    assert set(rows) == set(expected)
    for key, (image, labels) in rows.items():
        want, label, original = expected[key]
        assert labels == [label] and np.array_equal(pixels(image), want), key
        if key.endswith("rgb_jpeg.jpg"):
            assert image == original                            # RGB JPEG kept byte for byte
    ds = Dataset(out)
    assert ds.manifest["class_names"] == ["cat", "dog", "eel"] and ds.num_classes == 3
    assert ds.manifest["image"]["encodings"] == ["jpeg", "png"]
    assert_usable(out, {"train": 12})


def test_links_that_lead_nowhere_are_counted_not_silently_dropped(tmp_path):
    """Issue 33, probe 11: a dangling link, a link to itself and a link to a folder (not followed:
    it could loop) are counted in the report, and the images are converted once."""
    folder = tmp_path / "src" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "x.png")
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "self").symlink_to(folder / "self")
    (folder / "loop").symlink_to(folder)
    report = convert("imagefolder", tmp_path / "src", tmp_path / "out", executor="inline", progress=False)
    assert report["rows"] == 1 and report["skipped_links"] == 3 and report["ignored_files"] == 0


def test_a_16_bit_png_keeps_its_brightness(tmp_path):
    """Issue 33, probe 9: a 16-bit grayscale PNG is scaled to 8 bits, not clipped at 255 (its mean
    was 254.6 against 124 in the source)."""
    ramp = (np.arange(24 * 32).reshape(24, 32) * 85).astype(np.uint16)   # 0 .. 65195
    (tmp_path / "src" / "gray").mkdir(parents=True)
    Image.fromarray(ramp).save(tmp_path / "src" / "gray" / "deep.png")
    assert Image.open(tmp_path / "src" / "gray" / "deep.png").mode in ("I;16", "I")
    convert("imagefolder", tmp_path / "src", tmp_path / "out", executor="inline", progress=False)
    (data, _), = stored(tmp_path / "out").values()
    got = pixels(data)
    assert np.abs(got[..., 0].astype(float) - ramp / 257).max() <= 0.5 and (got[..., 0] == got[..., 2]).all()


def test_imagefolder_adds_splits_and_reports_bad_files(image_tree, tmp_path):
    src, _ = image_tree
    out = tmp_path / "out"
    convert("imagefolder", src, out, progress=False)
    (src / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(DataError, match=r"broken.jpg, field image: cannot decode image.*; 0 of 1 shards written"):
        convert("imagefolder", src, out, ConvertOptions(split="test"), progress=False)
    # No shard finished: nothing kept for a resume, the dataset as it was (a failure that kept
    # finished shards is test_an_interrupted_conversion_continues_where_it_stopped's)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")] and Dataset(out).splits == ["train"]
    result = convert("imagefolder", src, out, ConvertOptions(split="test", skip_bad=True), progress=False)
    assert (result["rows"], result["skipped"]) == (12, 1)
    assert "broken.jpg" in result["skipped_examples"][0]
    assert_usable(out, {"train": 12, "test": 12})
    with pytest.raises(DataError, match="split 'test' already exists"):
        convert("imagefolder", src, out, ConvertOptions(split="test"), progress=False)
    (src / "fox").mkdir()
    (src / "fox" / "a.png").write_bytes(encode(np.zeros((4, 4, 3), np.uint8), "PNG"))
    with pytest.raises(DataError, match="classes differ"):
        convert("imagefolder", src, out, ConvertOptions(split="val"), progress=False)


def test_convert_cli_prints_exact_counts(image_tree, tmp_path):
    src, _ = image_tree
    run = subprocess.run([sys.executable, "-m", "pipeline.data", "convert", "imagefolder", str(src),
                          str(tmp_path / "cli"), "--split", "val"], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert '"rows": 12' in run.stdout and "{'val': 12} rows, 3 classes" in run.stdout
    assert "12/12" in run.stderr                                # progress reached the end


def write_cifar(folder: Path, variant: str, rng) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A miniature CIFAR folder in the official python-pickle layout (bytes keys, CHW rows)."""
    folder.mkdir()
    classes = 10 if variant == "cifar10" else 100
    label_key = b"labels" if variant == "cifar10" else b"fine_labels"
    files = ({"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
             if variant == "cifar10" else {"train": ["train"], "test": ["test"]})
    truth = {}
    for split, names in files.items():
        images, labels = [], []
        for name in names:
            n = 3 if split == "train" else 4
            hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            lab = rng.integers(0, classes, n).tolist()
            batch = {b"batch_label": name.encode(), label_key: lab,
                     b"data": hwc.transpose(0, 3, 1, 2).reshape(n, 3072),
                     b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
            images.append(hwc)
            labels += lab
        truth[split] = (np.concatenate(images), labels)
    meta_name, names_key = (("batches.meta", b"label_names") if variant == "cifar10"
                            else ("meta", b"fine_label_names"))
    (folder / meta_name).write_bytes(pickle.dumps(
        {names_key: [f"class{i}".encode() for i in range(classes)]}, protocol=2))
    return truth


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_round_trip(tmp_path, variant):
    truth = write_cifar(tmp_path / "src", variant, np.random.default_rng(1))
    result = convert("cifar", tmp_path / "src", tmp_path / "out", progress=False)
    n_train = 15 if variant == "cifar10" else 3
    assert [(s["split"], s["rows"]) for s in result["splits"]] == [("train", n_train), ("test", 4)]
    ds = Dataset(tmp_path / "out")
    assert ds.num_classes == (10 if variant == "cifar10" else 100)
    assert ds.manifest["class_names"][:2] == ["class0", "class1"]
    for split, (images, labels) in truth.items():
        rows = stored(tmp_path / "out", split)
        for i in range(len(labels)):
            image, stored_labels = rows[f"{variant}-{split}-{i:05d}"]
            assert np.array_equal(pixels(image), images[i]) and stored_labels == [labels[i]]
    assert_usable(tmp_path / "out", {"train": n_train, "test": 4})
    with pytest.raises(DataError, match="not a CIFAR python-version folder"):
        convert("cifar", tmp_path, tmp_path / "nope", progress=False)


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_round_trip_with_cls_and_json_labels(tmp_path):
    rng = np.random.default_rng(2)
    arrays = [rng.integers(0, 256, (9, 11, 3), dtype=np.uint8) for _ in range(5)]
    jpeg = encode(arrays[0], "JPEG")
    src = tmp_path / "wds"
    src.mkdir()
    write_tar(src / "shard-000.tar", {
        "a/s0.jpg": jpeg, "a/s0.cls": b"3",
        "a/s1.png": encode(arrays[1], "PNG"), "a/s1.json": json.dumps({"label": 1}).encode(),
        "s2.png": encode(arrays[2], "PNG", mode="L"), "s2.cls": b" 0\n",
    })
    write_tar(src / "shard-001.tar", {
        "s3.PNG": encode(arrays[3], "PNG"), "s3.json": json.dumps({"labels": [4, 2]}).encode(),
        "s4.webp": encode(arrays[4], "WEBP", mode=None), "s4.cls": b"2",
    })
    result = convert("webdataset", src, tmp_path / "out", progress=False)
    assert (result["rows"], result["shards"], result["skipped"]) == (5, 2, 0)
    rows = stored(tmp_path / "out")
    assert rows["shard-000.tar/a/s0"] == (jpeg, [3])
    assert np.array_equal(pixels(rows["shard-000.tar/a/s1"][0]), arrays[1])
    assert np.array_equal(pixels(rows["shard-000.tar/s2"][0]),
                          np.asarray(Image.fromarray(arrays[2]).convert("L").convert("RGB")))
    assert rows["shard-000.tar/s2"][1] == [0]
    assert rows["shard-001.tar/s3"][1] == [2, 4]
    assert pixels(rows["shard-001.tar/s4"][0]).shape == (9, 11, 3)
    ds = Dataset(tmp_path / "out")
    assert ds.num_classes == 5 and ds.multi_label
    assert_usable(tmp_path / "out", {"train": 5})


def test_webdataset_bad_samples_are_named_or_skipped(tmp_path):
    png = encode(np.zeros((4, 4, 3), np.uint8), "PNG")
    write_tar(tmp_path / "bad.tar", {"ok.png": png, "ok.cls": b"1", "nolabel.png": png,
                                     "big.png": png, "big.cls": b"7"})
    write_tar(tmp_path / "big.tar", {"ok.png": png, "ok.cls": b"1", "big.png": png, "big.cls": b"7"})
    with pytest.raises(DataError, match=r"source .*bad.tar:nolabel, field labels: no label member"):
        convert("webdataset", tmp_path / "bad.tar", tmp_path / "out", progress=False)
    with pytest.raises(DataError, match=r"big.tar:big, field labels: labels \[7\] outside \[0, 5\)"):
        convert("webdataset", tmp_path / "big.tar", tmp_path / "out2", ConvertOptions(num_classes=5),
                progress=False)
    result = convert("webdataset", tmp_path / "bad.tar", tmp_path / "out3",
                     ConvertOptions(num_classes=5, skip_bad=True), progress=False)
    assert (result["rows"], result["skipped"]) == (1, 2)
    assert_usable(tmp_path / "out3", {"train": 1})


def test_max_short_side_stores_large_images_resized_and_records_it(tmp_path):
    """--max-short-side N: every stored image's shorter side is at most N (large ones exactly N,
    JPEGs stay JPEG, others PNG), small ones are stored byte for byte, labels and counts as
    without it, and the manifest records N (null for a split stored as it was)."""
    from sklearn.datasets import load_sample_image
    photo = load_sample_image("flower.jpg")                    # 427 x 640, a real photograph
    src = tmp_path / "tree"
    files = {"a/wide.jpg": encode(photo[:200, :300], "JPEG"), "a/tall.png": encode(photo[:300, :90, 0], "PNG"),
             "b/small.jpg": encode(photo[:50, :40], "JPEG"), "b/edge.jpg": encode(photo[:64, :100], "JPEG")}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    plain = convert("imagefolder", src, tmp_path / "plain", executor="inline", progress=False)
    small = convert("imagefolder", src, tmp_path / "small", ConvertOptions(max_short_side=64, shards=2),
                    executor="inline", progress=False)
    assert (small["rows"], small["rows_per_class"]) == (plain["rows"], plain["rows_per_class"]) == (4, {0: 2, 1: 2})
    rows, before = stored(tmp_path / "small"), stored(tmp_path / "plain")
    assert {k: labels for k, (_, labels) in rows.items()} == {k: labels for k, (_, labels) in before.items()}
    sizes = {k: Image.open(io.BytesIO(image)).size for k, (image, _) in rows.items()}
    formats = {k: Image.open(io.BytesIO(image)).format for k, (image, _) in rows.items()}
    assert sizes == {"train/a/wide.jpg": (96, 64), "train/a/tall.png": (64, 213),
                     "train/b/small.jpg": (40, 50), "train/b/edge.jpg": (100, 64)}
    assert formats["train/a/wide.jpg"] == "JPEG" and formats["train/a/tall.png"] == "PNG"
    assert rows["train/b/small.jpg"][0] == files["b/small.jpg"]       # already small: as it was
    assert rows["train/b/edge.jpg"][0] == files["b/edge.jpg"]
    assert Dataset(tmp_path / "small").manifest["image"]["max_short_side"] == 64
    assert Dataset(tmp_path / "plain").manifest["image"]["max_short_side"] is None
    assert_usable(tmp_path / "small", {"train": 4})
    convert("imagefolder", src, tmp_path / "small", ConvertOptions(split="test"), executor="inline", progress=False)
    manifest = Dataset(tmp_path / "small").manifest
    assert manifest["image"]["max_short_side"] is None          # the test split is not bounded
    assert manifest["source"]["splits"]["train"]["max_short_side"] == 64
    write_cifar(tmp_path / "c10", "cifar10", np.random.default_rng(0))
    convert("cifar", tmp_path / "c10", tmp_path / "c16", ConvertOptions(max_short_side=16), executor="inline",
            progress=False)
    ds = Dataset(tmp_path / "c16")
    assert ds.manifest["image"]["max_short_side"] == 16 and (ds.manifest["image"]["width"], ds.num_rows("test")) == (16, 4)
    from pipeline.data.__main__ import build_parser
    args = build_parser().parse_args(["convert", "cifar", "src", "out", "--max-short-side", "256"])
    assert args.max_short_side == 256
    with pytest.raises(SystemExit):
        build_parser().parse_args(["convert", "cifar", "src", "out", "--max-short-side", "0"])


def test_synth_max_short_side_stores_the_rendered_images_smaller(tmp_path):
    from pipeline.data.synth import SynthSpec, generate
    path = generate(tmp_path / "s", SynthSpec(images=6, classes=3, image_size=48, max_short_side=32,
                                              encoding="png"), executor="inline", progress=False)
    ds = Dataset(path)
    assert ds.manifest["image"] == {"encoding": "png", "height": 32, "width": 32, "channels": 3, "max_short_side": 32}
    assert {Image.open(io.BytesIO(image)).size for image, _ in stored(path).values()} == {(32, 32)}


# --------------------------------------------------------------------------------------------
# An interrupted conversion continues where it stopped (issue 18)

def write_wds(src: Path, tars: int = 6, per_tar: int = 3) -> None:
    """``tars`` WebDataset shards of ``per_tar`` 16-px PNG samples each."""
    rng = np.random.default_rng(7)
    src.mkdir(parents=True)
    for t in range(tars):
        members = {}
        for k in range(per_tar):
            members[f"s{k}.png"] = encode(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "PNG")
            members[f"s{k}.cls"] = str((t + k) % 4).encode()
        write_tar(src / f"part-{t:03d}.tar", members)


def files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def identity(path: Path) -> tuple[int, int]:
    """A file's inode and modification time: a shard written again (a new file renamed over the
    name) gets a new inode; a shard only renamed keeps both."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_an_interrupted_conversion_continues_where_it_stopped(tmp_path, capsys, monkeypatch):
    import pipeline.data.webdataset as conversion
    src, out = tmp_path / "wds", tmp_path / "resumed" / "ds"
    write_wds(src)
    tar3, tar4 = src / "part-003.tar", src / "part-004.tar"
    whole = tar3.read_bytes()
    tar3.write_bytes(whole[:700])                                 # still being downloaded
    with pytest.raises(DataError, match=r"part-003.tar: not a readable tar file.*; 3 of 6 shards written; "
                                        rf"run the same command again to continue, or delete {out}"):
        convert("webdataset", src, out, executor="inline", progress=False)
    with pytest.raises(DataError, match="no manifest.json"):   # no dataset until it is whole
        Dataset(out)
    assert files(out) == sorted([".train-plan.json", *(f".train-{i:05d}-of-00006.result.json" for i in range(3)),
                                 *(f"train-{i:05d}-of-00006.parquet" for i in range(3))])   # final names
    first = {i: identity(out / f"train-{i:05d}-of-00006.parquet") for i in range(3)}

    # Run again with the tar complete, and Ctrl-C while part-004 is read.
    tar3.write_bytes(whole)
    real = conversion._wds_samples

    def ctrl_c_at_part_4(path):
        if path == str(tar4):
            raise KeyboardInterrupt
        return real(path)
    monkeypatch.setattr(conversion, "_wds_samples", ctrl_c_at_part_4)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        convert("webdataset", src, out, executor="inline", progress=False)
    err = capsys.readouterr().err
    assert "resuming: 3 of 6 shards already written" in err and "interrupted: 4 of 6 shards written" in err
    monkeypatch.setattr(conversion, "_wds_samples", real)

    report = convert("webdataset", src, out, executor="inline", progress=False)   # the same command
    assert "resuming: 4 of 6 shards already written" in capsys.readouterr().err
    assert files(out) == ["manifest.json", *(f"train-{i:05d}-of-00006.parquet" for i in range(6))]
    assert {i: identity(out / f"train-{i:05d}-of-00006.parquet") for i in range(3)} == first  # not redone
    fresh = tmp_path / "fresh" / "ds"
    assert report == convert("webdataset", src, fresh, executor="inline", progress=False)
    assert Dataset(out).digest == Dataset(fresh).digest           # the same dataset, shard for shard
    assert_usable(out, {"train": 18})


def test_a_changed_plan_into_the_same_out_starts_over(tmp_path, capsys):
    src, out = tmp_path / "wds", tmp_path / "resumed" / "ds"
    write_wds(src)
    whole = (src / "part-002.tar").read_bytes()
    (src / "part-002.tar").write_bytes(b"not a tar")
    with pytest.raises(DataError, match="2 of 6 shards written"):
        convert("webdataset", src, out, executor="inline", progress=False)
    (src / "part-002.tar").write_bytes(whole)
    other = ConvertOptions(seed=5, max_short_side=8)                # other shard bytes
    capsys.readouterr()
    report = convert("webdataset", src, out, other, executor="inline", progress=False)
    err = capsys.readouterr().err
    assert "removing its 5 files and starting over" in err and "resuming" not in err
    assert files(out) == ["manifest.json", *(f"train-{i:05d}-of-00006.parquet" for i in range(6))]
    fresh = tmp_path / "fresh" / "ds"
    assert report == convert("webdataset", src, fresh, other, executor="inline", progress=False)
    assert Dataset(out).digest == Dataset(fresh).digest
    assert Dataset(out).manifest["image"]["max_short_side"] == 8


def test_a_conversion_stopped_before_its_manifest_resumes_without_rewriting_a_shard(tmp_path, capsys,
                                                                                   monkeypatch):
    """The window between the last job and the manifest: stopped there (webdataset), or after
    every split's jobs (cifar writes the manifest after both), the same command finds every job
    done and finishes the dataset; no shard is written again, renamed or copied."""
    import pipeline.data.convert as conversion
    src = tmp_path / "wds"
    write_wds(src)

    def killed(*args):
        raise OSError("killed")
    out = tmp_path / "a" / "ds"
    with monkeypatch.context() as m, pytest.raises(OSError, match="killed"):
        m.setattr(conversion, "write_manifest", killed)
        convert("webdataset", src, out, executor="inline", progress=False)
    shards = [f"train-{i:05d}-of-00006.parquet" for i in range(6)]
    assert "manifest.json" not in files(out) and set(shards) <= set(files(out))
    written = {name: identity(out / name) for name in shards}
    capsys.readouterr()
    convert("webdataset", src, out, executor="inline", progress=False)
    assert "resuming: 6 of 6 shards already written" in capsys.readouterr().err
    assert {name: identity(out / name) for name in shards} == written
    convert("webdataset", src, tmp_path / "b" / "ds", executor="inline", progress=False)
    assert Dataset(out).digest == Dataset(tmp_path / "b" / "ds").digest
    assert files(out) == ["manifest.json", *shards]

    # An unfinished conversion left by the previous resume format (hidden shards renamed at the end)
    # is not this plan: removed, and the conversion starts over.
    old = tmp_path / "old" / "ds"
    old.mkdir(parents=True)
    for name in (".train-plan.json", ".train-00000.parquet", ".train-00000.result.json", ".train-renames.json",
                 "train-00000-of-00001.parquet"):
        (old / name).write_text("{}")
    convert("webdataset", src, old, executor="inline", progress=False)
    assert "removing its 5 files and starting over" in capsys.readouterr().err
    assert files(old) == ["manifest.json", *shards] and Dataset(old).digest == Dataset(out).digest

    write_cifar(tmp_path / "c10", "cifar10", np.random.default_rng(0))
    with monkeypatch.context() as m, pytest.raises(OSError, match="killed"):
        m.setattr(conversion, "write_manifest", killed)         # after both splits' jobs
        convert("cifar", tmp_path / "c10", tmp_path / "c" / "ds", executor="inline", progress=False)
    assert {"train-00000-of-00001.parquet", "test-00000-of-00001.parquet"} <= set(files(tmp_path / "c" / "ds"))
    convert("cifar", tmp_path / "c10", tmp_path / "c" / "ds", executor="inline", progress=False)
    assert capsys.readouterr().err.count("resuming: 1 of 1 shards already written") == 2
    convert("cifar", tmp_path / "c10", tmp_path / "d" / "ds", executor="inline", progress=False)
    assert Dataset(tmp_path / "c" / "ds").digest == Dataset(tmp_path / "d" / "ds").digest
    assert files(tmp_path / "c" / "ds") == ["manifest.json", "test-00000-of-00001.parquet",
                                             "train-00000-of-00001.parquet"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe")
def test_the_cli_resumes_after_its_processes_are_killed(tmp_path):
    """SIGKILL of the driver and its worker processes (a node lost) while part-003 is being read
    (a named pipe that never delivers): the same command, run again, converts only part-003."""
    src, out = tmp_path / "wds", tmp_path / "resumed" / "ds"
    write_wds(src)
    whole = (src / "part-003.tar").read_bytes()
    (src / "part-003.tar").unlink()
    os.mkfifo(src / "part-003.tar")
    command = [sys.executable, "-m", "pipeline.data", "convert", "webdataset", str(src), str(out)]
    log = tmp_path / "first.log"
    with open(log, "w") as stderr:
        first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
                                 start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(list(out.glob(".train-*.result.json"))) < 5:   # every tar but part-003 done
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert "manifest.json" not in files(out)
    (src / "part-003.tar").unlink()
    (src / "part-003.tar").write_bytes(whole)
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming: 5 of 6 shards already written" in again.stderr
    fresh = tmp_path / "fresh" / "ds"
    convert("webdataset", src, fresh, executor="inline", progress=False)
    made, expected = Dataset(out).manifest, Dataset(fresh).manifest
    assert {**made, "created": None} == {**expected, "created": None}   # another second, else the same
