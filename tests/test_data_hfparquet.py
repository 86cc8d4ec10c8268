"""``convert hfparquet``: Parquet files written by the real ``datasets`` library, laid out the way
``push_to_hub`` writes them (``data/<split>-0000i-of-0000n.parquet``, images embedded), come
back as a dataset with the same rows, labels, class names and image bytes."""
from __future__ import annotations

import io

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import ClassLabel, Features, Sequence
from datasets import Image as HFImage
from datasets.table import embed_table_storage
from PIL import Image

from pipeline.data import DataError, hfparquet
from pipeline.data.convert import ConvertOptions
from pipeline.data.convert import convert
from pipeline.data.dataset import Dataset
from pipeline.data.verify import verify

from test_data_convert import pixels, stored

datasets.disable_progress_bars()
NAMES = ["apple", "bee", "cat"]


def image_files(folder, n: int, seed: int) -> list[tuple[str, bytes, np.ndarray]]:
    """n tiny image files: RGB JPEGs, every third a grayscale PNG, every fifth an RGBA PNG;
    (path, file bytes, the RGB pixels the dataset must hold)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, made = np.random.default_rng(seed), []
    for i in range(n):
        arr = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
        img, ext = Image.fromarray(arr), "jpg"
        if i % 3 == 1:
            img, ext = img.convert("L"), "png"
        elif i % 5 == 4:
            img, ext = Image.fromarray(np.dstack([arr, np.full((16, 20), 255, np.uint8)])), "png"
        path = folder / f"{seed}-{i}.{ext}"
        img.save(path)
        data = path.read_bytes()
        made.append((str(path), data, pixels(data) if ext == "jpg" else np.asarray(Image.open(path).convert("RGB"))))
    return made


def push(ds: datasets.Dataset, root, split: str, num_shards: int, suffix: str = "") -> list:
    """Write ``ds`` as ``push_to_hub`` does: contiguous shards, external images embedded
    (``embed_table_storage``), ``data/<split>-<i>-of-<n>.parquet``; row groups of 3 rows."""
    paths = []
    for i in range(num_shards):
        shard = ds.shard(num_shards=num_shards, index=i, contiguous=True).with_format("arrow")
        shard = shard.map(embed_table_storage, batched=True, keep_in_memory=True).with_format()
        path = root / "data" / f"{split}-{i:05d}-of-{num_shards:05d}{suffix}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        shard.to_parquet(str(path), batch_size=3)
        paths.append(path)
    return paths


@pytest.fixture()
def hub(tmp_path):
    """train: 10 rows in 2 files (one with the Hub's hash suffix), test: 4 rows in 1 file."""
    truth = {}
    features = Features({"image": HFImage(), "label": ClassLabel(names=NAMES)})
    for split, n, shards in (("train", 10, 2), ("test", 4, 1)):
        files = image_files(tmp_path / "images" / split, n, seed=len(split))
        labels = [(i * 7) % 3 for i in range(n)]
        ds = datasets.Dataset.from_dict({"image": [f[0] for f in files], "label": labels}, features=features)
        paths = push(ds, tmp_path / "hub", split, shards, suffix="-a1b2c3" if split == "train" else "")
        per = n // shards
        for i, (path, data, want) in enumerate(files):
            key = f"data/{paths[i // per].name[:-len('.parquet')]}/{i % per}"
            truth[key] = (split, data, want, labels[i], path)
    return tmp_path / "hub", truth


def test_hub_layout_round_trip_two_splits(hub, tmp_path, monkeypatch):
    src, truth = hub
    first = pq.ParquetFile(next(src.glob("data/train-00000*.parquet")))
    cell = first.read_row_group(0, columns=["image"]).column("image")[0].as_py()
    assert first.metadata.num_row_groups == 2 and cell["bytes"] is not None   # embedded, 2 row groups
    monkeypatch.setattr(hfparquet, "ROWS_PER_SHARD", 4)                        # jobs span files
    result = convert("hfparquet", src, tmp_path / "out", executor="inline", progress=False)
    assert [(s["split"], s["rows"], s["shards"], s["skipped"]) for s in result["splits"]] == \
        [("test", 4, 1, 0), ("train", 10, 3, 0)]
    assert (result["image_column"], result["label_column"]) == ("image", "label")
    ds = Dataset(tmp_path / "out")
    assert ds.manifest["class_names"] == NAMES and ds.num_classes == 3 and not ds.multi_label
    assert ds.manifest["source"]["converter"] == "hfparquet"
    assert ds.manifest["source"]["label_column"] == "label"
    rows = {**stored(tmp_path / "out", "train"), **stored(tmp_path / "out", "test")}
    assert set(rows) == set(truth)
    for key, (image, labels) in rows.items():
        split, data, want, label, path = truth[key]
        assert labels == [label] and np.array_equal(pixels(image), want), key
        if path.endswith(".jpg"):
            assert image == data                                # RGB JPEG stored byte for byte
        else:
            assert Image.open(io.BytesIO(image)).format == "PNG"
    report = verify(tmp_path / "out", full=True, progress=False)
    assert report.ok and report.rows == {"train": 10, "test": 4}, report.problems
    convert("hfparquet", src, tmp_path / "again", executor="inline", progress=False)
    shas = [[s.sha256 for s in Dataset(p).shards("train")] for p in (tmp_path / "out", tmp_path / "again")]
    assert shas[0] == shas[1]                                    # a re-run makes the same shards


def test_cli_converts_one_split_and_verify_passes(hub, tmp_path, capsys):
    from pipeline.data.__main__ import main
    src, truth = hub
    out = str(tmp_path / "cli")
    assert main(["convert", "hfparquet", str(src), out, "--split", "test"]) == 0
    assert "{'test': 4} rows, 3 classes" in capsys.readouterr().out
    assert Dataset(out).splits == ["test"]
    assert main(["verify", out, "--full"]) == 0
    assert main(["convert", "hfparquet", str(src), out, "--split", "test"]) == 2
    assert "split 'test' already exists" in capsys.readouterr().err
    assert main(["convert", "hfparquet", str(src), out, "--split", "val"]) == 2
    assert "no files of split 'val'; found ['test', 'train']" in capsys.readouterr().err


def test_multi_label_sequence_of_class_labels_in_processes(tmp_path, monkeypatch):
    files = image_files(tmp_path / "images", 6, seed=3)
    tags = [[0, 2], [1], [2, 0, 2], [3], [1, 2, 3], [0]]
    features = Features({"img": HFImage(), "tags": Sequence(ClassLabel(names=list("wxyz"))),
                         "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"img": [f[0] for f in files], "tags": tags,
                                     "caption": ["c"] * 6}, features=features)
    push(ds, tmp_path / "hub", "train", 1)
    monkeypatch.setattr(hfparquet, "ROWS_PER_SHARD", 3)
    result = convert("hfparquet", f"{tmp_path}/hub/*/train-*.parquet", tmp_path / "out", executor="processes",
                     progress=False)                            # a glob: keys relative to hub/
    assert (result["image_column"], result["label_column"]) == ("img", "tags")
    assert result["splits"][0]["rows"] == 6 and result["splits"][0]["shards"] == 2
    ds_out = Dataset(tmp_path / "out")
    assert ds_out.multi_label and ds_out.manifest["class_names"] == list("wxyz")
    rows = stored(tmp_path / "out", "train")
    assert [rows[f"data/train-00000-of-00001/{i}"][1] for i in range(6)] == [sorted(set(t)) for t in tags]
    assert verify(tmp_path / "out", progress=False).ok


def test_unlabelled_rows_are_refused_by_name_or_skipped(tmp_path):
    files = image_files(tmp_path / "images", 4, seed=4)
    ds = datasets.Dataset.from_dict({"image": [f[0] for f in files], "label": [0, -1, 2, 1]},
                                    features=Features({"image": HFImage(), "label": ClassLabel(names=NAMES)}))
    push(ds, tmp_path / "hub", "test", 1)
    with pytest.raises(DataError, match=r"test-00000-of-00001.parquet, row 1, field label: label -1 "
                                        r"outside \[0, 3\) \(-1: the datasets library's 'no label'\)"):
        convert("hfparquet", tmp_path / "hub", tmp_path / "out", executor="inline", progress=False)
    assert not list((tmp_path / "out").glob(".*.parquet*"))   # nothing half-written left
    result = convert("hfparquet", tmp_path / "hub", tmp_path / "out", ConvertOptions(skip_bad=True),
                     executor="inline", progress=False)
    assert (result["splits"][0]["rows"], result["splits"][0]["skipped"]) == (3, 1)
    assert "test-00000-of-00001.parquet:1" in result["splits"][0]["skipped_examples"][0]
    assert verify(tmp_path / "out", progress=False).ok


def test_unusable_sources_say_what_is_wrong(tmp_path):
    files = image_files(tmp_path / "images", 2, seed=5)
    paths_only = datasets.Dataset.from_dict({"image": [f[0] for f in files], "label": [0, 1]},
                                            features=Features({"image": HFImage(), "label": ClassLabel(names=NAMES)}))
    (tmp_path / "refs").mkdir()
    paths_only.to_parquet(str(tmp_path / "refs" / "train-00000-of-00001.parquet"))  # not embedded
    with pytest.raises(DataError, match=r"row 0, field image: the Parquet does not embed the image, "
                                        r"only its path '.*5-0.jpg'"):
        convert("hfparquet", tmp_path / "refs", tmp_path / "o1", executor="inline", progress=False)
    no_image = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    no_image.to_parquet(str(tmp_path / "text.parquet"))
    with pytest.raises(DataError, match=r"text.parquet: no image \(struct of bytes and path\) column; "
                                        r"columns: text \(string\), label \(int64\) \(name the column with --image-column\)"):
        convert("hfparquet", tmp_path / "text.parquet", tmp_path / "o2", progress=False)
    with pytest.raises(DataError, match="no Parquet files found"):
        convert("hfparquet", tmp_path / "images", tmp_path / "o3", progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train-00000-of-00001.parquet").write_bytes(b"PK\x03\x04 a zip, not Parquet")
    with pytest.raises(DataError, match=r"bad/train-00000-of-00001.parquet: not a readable Parquet file"):
        convert("hfparquet", tmp_path / "bad", tmp_path / "o4", progress=False)
    two = datasets.Dataset.from_dict({"a": [f[0] for f in files], "b": [f[0] for f in files], "label": [0, 1]},
                                     features=Features({"a": HFImage(), "b": HFImage(), "label": datasets.Value("int64")}))
    push(two, tmp_path / "two", "train", 1)
    with pytest.raises(DataError, match=r"several image \(struct of bytes and path\) columns: a, b"):
        convert("hfparquet", tmp_path / "two", tmp_path / "o5", progress=False)
    result = convert("hfparquet", tmp_path / "two", tmp_path / "o5", ConvertOptions(image_column="b"),
                     executor="inline", progress=False)
    assert Dataset(tmp_path / "o5").num_classes == 2 and Dataset(tmp_path / "o5").manifest["class_names"] is None
    assert result["splits"][0]["rows"] == 2 and result["label_column"] == "label"
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "mnist-train.parquet").write_bytes((tmp_path / "text.parquet").read_bytes())
    with pytest.raises(DataError, match="cannot tell the split of 1 file"):
        convert("hfparquet", tmp_path / "odd", tmp_path / "o6", progress=False)


def test_split_names_from_file_names():
    from pathlib import Path
    split = hfparquet.split_of
    assert split(Path("data/train-00000-of-00010.parquet")) == "train"
    assert split(Path("data/validation-00001-of-00003-0a1b2c.parquet")) == "validation"
    assert split(Path("default/test/0000.parquet")) == "test"
    assert split(Path("train.parquet")) == "train"
    assert split(Path("mnist-train.parquet")) is None
