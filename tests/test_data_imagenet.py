"""ImageNet-21k synset tars and ImageNet-1k train folders / val folder + label file, made with the
real writers (PIL JPEGs, tarfile), converted, and read back: rows, labels, class order."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.data import DataError
from pipeline.data.__main__ import main
from pipeline.data.convert import ConvertOptions
from pipeline.data.convert import convert
from pipeline.data.dataset import Dataset
from pipeline.data.verify import verify

from test_data_convert import stored

# Unsorted on purpose; n00004475 gets an empty synset tar.
WNIDS = {"n02000003": 3, "n00004475": 0, "n01000002": 2, "n00005787": 4}
SORTED = sorted(WNIDS)


def jpeg(seed: int, size: tuple[int, int] = (20, 16)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def checked(path: Path) -> dict:
    report = verify(path, full=True, progress=False)
    assert report.ok, report.problems
    return json.loads((path / "manifest.json").read_text())


@pytest.fixture(scope="module")
def synsets(tmp_path_factory) -> tuple[Path, Path, dict[str, bytes]]:
    """A folder of synset tars (one empty) with words.txt, and an outer tar holding the same tars
    under a folder, next to a README that is not a synset."""
    root = tmp_path_factory.mktemp("in21k")
    folder, images = root / "synsets", {}
    folder.mkdir()
    for wnid, count in WNIDS.items():
        with tarfile.open(folder / f"{wnid}.tar", "w") as tar:
            for i in range(count):
                images[f"{wnid}/{wnid}_{i}.JPEG"] = data = jpeg(len(images), (16 + 4 * i, 24))
                add_bytes(tar, f"{wnid}_{i}.JPEG", data)
    (folder / "words.txt").write_text("n00004475\torganism, being\nn01000002\tthing\n"
                                      "n09999999\tnot in the dataset\n")
    outer = root / "winter21_whole.tar"
    with tarfile.open(outer, "w") as tar:
        add_bytes(tar, "winter21_whole/README", b"not a synset")
        for wnid in WNIDS:   # not in wnid order: the converter sorts
            tar.add(folder / f"{wnid}.tar", arcname=f"winter21_whole/{wnid}.tar")
    return folder, outer, images


def test_synset_tars_from_a_folder_and_from_an_outer_tar_are_the_same_dataset(synsets, tmp_path):
    folder, outer, images = synsets
    reports, manifests = [], []
    for name, src in (("a", folder), ("b", outer)):
        reports.append(convert("imagenet21k", src, tmp_path / name, ConvertOptions(shards=2),
                               executor="inline", progress=False))
        manifests.append(checked(tmp_path / name))
    a, b = reports
    assert (a["rows"], a["shards"], a["synsets"], a["empty_synsets"], a["skipped"]) == (9, 2, 4, 1, 0)
    assert a["rows_per_class"] == {1: 4, 2: 2, 3: 3}
    assert (a["ignored_files"], b["ignored_files"]) == (1, 1)          # words.txt; the README
    assert {k: v for k, v in a.items() if k != "ignored_files"} == \
        {k: v for k, v in b.items() if k != "ignored_files"}
    ma, mb = manifests
    assert ma["class_names"] == mb["class_names"] == SORTED
    assert ma["num_classes"] == 4 and ma["source"]["converter"] == "imagenet21k"
    assert ma["class_descriptions"] == ["organism, being", None, "thing", None]
    assert "class_descriptions" not in mb      # no words file next to the outer tar
    # The same rows in the same shards, byte for byte.
    assert [s["sha256"] for s in ma["splits"]["train"]["shards"]] == \
        [s["sha256"] for s in mb["splits"]["train"]["shards"]]
    rows = stored(tmp_path / "a", "train")
    assert set(rows) == set(images)
    for key, (image, labels) in rows.items():
        assert image == images[key]                                   # RGB JPEG kept as it is
        assert labels == [SORTED.index(key.split("/")[0])]


def test_val_fraction_holds_out_a_val_split_the_rest_untouched(synsets, tmp_path, capsys):
    """fall11 has no validation split: --val-fraction F holds out the images whose holdout draw
    (a keyed hash of the row key, independent of its subset priority) is below F as split "val";
    train keeps the rest with the priorities it has without a holdout."""
    from pipeline.data.format import holdout_draw
    _, outer, images = synsets
    out = tmp_path / "held"
    assert main(["convert", "imagenet21k", str(outer), str(out), "--val-fraction", "0.3", "--shards", "2"]) == 0
    assert "{'val': 4, 'train': 5} rows, 4 classes" in capsys.readouterr().out
    manifest = checked(out)
    held = {k for k in images if holdout_draw(k, 0) < 0.3}
    val, train = stored(out, "val"), stored(out, "train")
    assert set(val) == held and set(train) == set(images) - held and len(held) == 4
    assert all(image == images[key] and labels == [SORTED.index(key.split("/")[0])]
               for key, (image, labels) in {**val, **train}.items())
    assert manifest["source"]["splits"]["val"]["val_fraction"] == 0.3
    whole = tmp_path / "whole"
    convert("imagenet21k", outer, whole, executor="inline", progress=False)

    def priorities(path, split):
        tables = [pq.read_table(Dataset(path).shard_path(s)) for s in Dataset(path).shards(split)]
        return {k: p for t in tables for k, p in zip(t.column("key").to_pylist(), t.column("priority").to_pylist())}
    without = priorities(whole, "train")
    assert priorities(out, "train") == {k: without[k] for k in train}   # the same nested subsets

    # The held-out split is "val": --split val with it, or --val-fraction for another format, is refused.
    assert main(["convert", "imagenet21k", str(outer), str(tmp_path / "x"), "--val-fraction", "0.3",
                 "--split", "val"]) == 2
    assert "the rest cannot be 'val' too" in capsys.readouterr().err
    assert main(["convert", "imagefolder", str(tmp_path), str(tmp_path / "y"), "--val-fraction", "0.3"]) == 2
    assert "--val-fraction is for imagenet21k" in capsys.readouterr().err
    assert main(["convert", "imagenet21k", str(outer), str(tmp_path / "w"), "--val-fraction", "0.01"]) == 2
    assert "--val-fraction 0.01 held out no image" in capsys.readouterr().err   # 9 images: an empty val
    with pytest.raises(SystemExit):
        main(["convert", "imagenet21k", str(outer), str(tmp_path / "z"), "--val-fraction", "0.7"])
    assert "must be a fraction of the images in (0, 0.5), got 0.7" in capsys.readouterr().err


def test_outer_tar_words_file_max_short_side_and_compressed_tars(synsets, tmp_path):
    folder, outer, _ = synsets
    out = tmp_path / "small"
    convert("imagenet21k", outer, out, ConvertOptions(labels=str(folder / "words.txt"), max_short_side=16),
            executor="inline", progress=False)
    manifest = checked(out)
    assert manifest["class_descriptions"][0] == "organism, being"
    assert manifest["image"]["max_short_side"] == 16
    assert manifest["source"]["splits"]["train"]["max_short_side"] == 16
    assert all(min(Image.open(io.BytesIO(img)).size) == 16 for img, _ in stored(out, "train").values())
    gz = tmp_path / "winter21_whole.tar.gz"
    gz.write_bytes(gzip.compress(outer.read_bytes()))
    with pytest.raises(DataError, match=r"winter21_whole.tar.gz: is gzip-compressed.*gunzip"):
        convert("imagenet21k", gz, tmp_path / "gz", executor="inline", progress=False)
    with pytest.raises(DataError, match="holds no synset tars"):
        convert("imagenet21k", tmp_path, tmp_path / "none", executor="inline", progress=False)


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """Train class folders and a flat val folder (+ a non-image file); {val file: wnid}."""
    root = tmp_path_factory.mktemp("in1k")
    train, val, truth = root / "train", root / "val", {}
    for c, wnid in enumerate(SORTED):
        (train / wnid).mkdir(parents=True)
        for i in range(2):
            (train / wnid / f"{wnid}_{i}.JPEG").write_bytes(jpeg(100 + 10 * c + i))
    val.mkdir()
    for i in range(1, 7):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        truth[name] = SORTED[(i * 3) % 4]
        (val / name).write_bytes(jpeg(200 + i))
    (val / "readme.txt").write_text("ignored")
    return train, val, truth


def label_file(path: Path, truth: dict[str, str], style: str) -> Path:
    if style == "wnid":
        path.write_text("".join(f"{f} {w}\n" for f, w in truth.items()))
    elif style == "kaggle":
        path.write_text("ImageId,PredictionString\n" + "".join(
            f"{f.split('.')[0]},{w} 1 2 30 40 {w} 5 6 7 8\n" for f, w in reversed(truth.items())))
    else:
        path.write_text("".join(f"{f}\t{SORTED.index(w)}\n" for f, w in truth.items()))
    return path


@pytest.mark.parametrize("style", ["wnid", "kaggle", "ids"])
def test_train_folders_and_val_folder_share_the_class_order(ilsvrc, tmp_path, style):
    train, val, truth = ilsvrc
    out = tmp_path / "in1k"
    report = convert("imagenet", train, out, executor="inline", progress=False)
    assert (report["split"], report["rows"], report["rows_per_class"]) == ("train", 8, {0: 2, 1: 2, 2: 2, 3: 2})
    labels = label_file(tmp_path / "labels", truth, style)
    report = convert("imagenet", val, out, ConvertOptions(labels=str(labels)), executor="inline",
                     progress=False)
    assert (report["split"], report["rows"], report["skipped"], report["ignored_files"]) == \
        ("validation", 6, 0, 1)
    manifest = checked(out)
    assert manifest["class_names"] == SORTED and manifest["source"]["converter"] == "imagenet"
    train_rows, val_rows = stored(out, "train"), stored(out, "validation")
    by_wnid = {key.split("/")[1]: labels for key, (_, labels) in train_rows.items()}
    assert set(by_wnid) == set(SORTED) and all(by_wnid[w] == [i] for i, w in enumerate(SORTED))
    assert {key: labels for key, (_, labels) in val_rows.items()} == \
        {f"validation/{f}": by_wnid[w] for f, w in truth.items()}


def test_val_first_then_a_train_tar_with_other_classes_is_refused(ilsvrc, synsets, tmp_path):
    _, val, truth = ilsvrc
    out = tmp_path / "valfirst"
    some = dict(list(truth.items())[:3])
    labels = label_file(tmp_path / "labels", some, "wnid")
    report = convert("imagenet", val, out, ConvertOptions(labels=str(labels), skip_bad=True),
                     executor="inline", progress=False)
    assert (report["rows"], report["skipped"]) == (3, 3)               # 3 images without labels
    assert json.loads((out / "manifest.json").read_text())["class_names"] == sorted(set(some.values()))
    with pytest.raises(DataError, match="classes differ"):             # a tar of synset tars: train
        convert("imagenet", synsets[1], out, executor="inline", progress=False)
    with pytest.raises(DataError, match="integer class ids need the dataset's classes"):
        convert("imagenet", val, tmp_path / "ids", ConvertOptions(labels=str(label_file(
            tmp_path / "ids.txt", truth, "ids"))), executor="inline", progress=False)


def test_bad_val_labels_are_named_or_skipped(ilsvrc, tmp_path):
    train, val, truth = ilsvrc
    out = tmp_path / "in1k"
    convert("imagenet", train, out, executor="inline", progress=False)
    lines = [f"{f} {w}" for f, w in truth.items()]
    cases = {   # label file lines -> the error
        "unknown": (lines[:3] + ["ILSVRC2012_val_00000004.JPEG n09999999"] + lines[4:],
                    r"unknown.txt, field labels: line 4: wnid 'n09999999' is not one of the dataset's 4 classes"),
        "missing": (lines[1:], r"1 image\(s\) have no label line: ILSVRC2012_val_00000001.JPEG"),
        "extra": (lines + ["ILSVRC2012_val_00000099.JPEG n00004475"],
                  r"1 label line\(s\) name images not in the folder: ILSVRC2012_val_00000099"),
        "twice": (lines + [lines[0]], r"line 7: image ILSVRC2012_val_00000001 labelled again \(first on line 1\)"),
        "range": ([f"{f} 4" if i == 0 else f"{f} 0" for i, f in enumerate(truth)],
                  r"line 1: class id 4 outside \[0, 4\)"),
        "devkit": (["65"] * 6, r"line 1: expected .*devkit's ILSVRC2012_validation_ground_truth.txt"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name}.txt"
        path.write_text("\n".join(text) + "\n")
        with pytest.raises(DataError, match=message):
            convert("imagenet", val, out, ConvertOptions(labels=str(path)), executor="inline",
                    progress=False)
    assert "validation" not in json.loads((out / "manifest.json").read_text())["splits"]
    report = convert("imagenet", val, out, ConvertOptions(labels=str(tmp_path / "unknown.txt"),
                     skip_bad=True), executor="inline", progress=False)
    assert (report["rows"], report["skipped"]) == (5, 2)    # the unknown wnid; its unlabelled image
    assert "n09999999" in report["skipped_examples"][0]
    assert "ILSVRC2012_val_00000004.JPEG: no label line" in report["skipped_examples"][1]
    checked(out)


def test_layout_errors_say_what_was_expected(ilsvrc, tmp_path):
    train, val, _ = ilsvrc
    with pytest.raises(DataError, match="flat folder of images .* no label file"):
        convert("imagenet", val, tmp_path / "x", executor="inline", progress=False)
    with pytest.raises(DataError, match="holds class folders .* --labels is the label file"):
        convert("imagenet", train, tmp_path / "x", ConvertOptions(labels="x.txt"),
                executor="inline", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is neither a folder of class subfolders"):
        convert("imagenet", tmp_path / "empty", tmp_path / "x", executor="inline", progress=False)


def test_cli_converts_an_outer_tar_and_a_val_folder(synsets, ilsvrc, tmp_path, capsys):
    _, outer, _ = synsets
    _, val, truth = ilsvrc
    out = tmp_path / "cli"
    assert main(["convert", "imagenet21k", str(outer), str(out), "--executor", "processes"]) == 0
    labels = label_file(tmp_path / "LOC_val_solution.csv", truth, "kaggle")
    assert main(["convert", "imagenet", str(val), str(out), "--labels", str(labels)]) == 0
    assert "{'train': 9, 'validation': 6} rows, 4 classes" in capsys.readouterr().out
    assert main(["convert", "imagenet", str(val), str(out), "--labels", str(labels)]) == 2
    assert "split 'validation' already exists" in capsys.readouterr().err
    assert checked(out)["class_names"] == SORTED


def test_unreadable_synset_tars_and_images_are_named_or_skipped(tmp_path):
    src = tmp_path / "synsets"
    src.mkdir()
    with tarfile.open(src / "n00000001.tar", "w") as tar:
        add_bytes(tar, "n00000001_1.JPEG", jpeg(1))
        add_bytes(tar, "n00000001_2.JPEG", b"not a jpeg")
    (src / "n00000002.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(DataError, match=r"n00000001.tar:n00000001_2.JPEG, field image: cannot decode"):
        convert("imagenet21k", src, tmp_path / "a", executor="inline", progress=False)
    (src / "n00000001.tar").rename(src / "n00000001.bak")
    with pytest.raises(DataError, match=r"n00000002.tar: not a readable synset tar"):
        convert("imagenet21k", src, tmp_path / "a", executor="inline", progress=False)
    (src / "n00000001.bak").rename(src / "n00000001.tar")
    report = convert("imagenet21k", src, tmp_path / "a", ConvertOptions(skip_bad=True),
                     executor="inline", progress=False)
    assert (report["rows"], report["skipped"], report["empty_synsets"]) == (1, 2, 1)
    assert checked(tmp_path / "a")["class_names"] == ["n00000001", "n00000002"]
