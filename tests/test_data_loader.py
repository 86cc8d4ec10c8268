"""Streaming loader: rank splits, deterministic order, exact resume, transforms, bad rows."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import psutil
import pytest
import torch

from pipeline.data import DataError, normalize_images, num_classes, subset_size
from pipeline.data.loader import LoaderSpec, make_loader
from pipeline.data.dataset import Dataset
from pipeline.data.subsets import Subset
from pipeline.data.synth import SynthSpec, generate

from test_data_format import rewrite_row


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("d") / "synth", SynthSpec(images=300, classes=10, image_size=20,
                                                                      shards=3, seed=1), executor="inline",
                    progress=False)


@pytest.fixture(scope="module")
def downstream(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("d") / "novel", SynthSpec(task="novel", images=40, test_images=30,
                                                                      classes=4, class_offset=10,
                                                                      image_size=24), executor="inline",
                    progress=False)


def keys_of(loader) -> list[str]:
    return [k for batch in loader for k in batch.keys]


def test_eval_rank_shares_are_disjoint_and_cover_the_subset(synth):
    expected = set(Subset.build(Dataset(synth), fraction=0.5).keys())
    assert subset_size(synth, 0.5) == len(expected)
    shares = [keys_of(make_loader(LoaderSpec(synth, fraction=0.5, rank=r, world_size=3, batch_size=16,
                                             image_size=16, train=False), num_workers=0)) for r in range(3)]
    assert sum(len(s) for s in shares) == len(expected)       # nothing twice ...
    assert set().union(*map(set, shares)) == expected          # ... and nothing missing
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced


def test_train_ranks_are_disjoint_and_take_equal_full_batches(synth):
    loaders = [make_loader(LoaderSpec(synth, rank=r, world_size=2, batch_size=32, image_size=16, seed=5,
                                      epoch=2), num_workers=0) for r in range(2)]
    assert [len(l) for l in loaders] == [4, 4]                 # 150 rows a rank -> 4 full batches
    shares = [keys_of(l) for l in loaders]
    assert [len(s) for s in shares] == [128, 128]
    assert not set(shares[0]) & set(shares[1])


def test_order_depends_on_seed_and_epoch_only(synth):
    def order(**kw):
        return keys_of(make_loader(LoaderSpec(synth, batch_size=25, image_size=16, shuffle_window=100, **kw),
                                   num_workers=0))
    base = order(seed=0, epoch=0)
    assert base == order(seed=0, epoch=0)
    assert sorted(base) == sorted(Subset.build(Dataset(synth), fraction=1.0).keys())
    assert base != order(seed=0, epoch=1) and base != order(seed=1, epoch=0)
    assert sorted(base) == sorted(order(seed=0, epoch=1))      # an epoch is a permutation


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(synth, num_workers):
    common = dict(fraction=0.8, rank=1, world_size=2, batch_size=8, image_size=16, seed=3,
                  epoch=4, shuffle_window=32)
    full = list(make_loader(LoaderSpec(synth, **common), num_workers=0))
    resumed = list(make_loader(LoaderSpec(synth, **common), start_step=7, num_workers=num_workers))
    assert len(resumed) == len(full) - 7
    assert [b.keys for b in resumed] == [b.keys for b in full[7:]]
    for a, b in zip(resumed, full[7:]):                        # augmentation is replayed too
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_decode_workers_yield_what_the_loaders_process_yields(synth, tmp_path):
    """Workers decode batches the loader's process cut from its windows: same batches, same
    pixels, in order, whatever their number; a bad row decoded in a worker is still named."""
    spec = LoaderSpec(synth, batch_size=16, image_size=16, seed=2, epoch=1, shuffle_window=64)
    inline = list(make_loader(spec, num_workers=0))
    for workers in (1, 3):
        pooled = list(make_loader(spec, num_workers=workers))
        assert [b.keys for b in pooled] == [b.keys for b in inline]
        assert all(torch.equal(a.images, b.images) for a, b in zip(pooled, inline))
    data = Path(shutil.copytree(synth, tmp_path / "bad"))
    rewrite_row(data, 1, 3, image=b"not an image")
    shard = Dataset(data).shards()[1]
    before = {p.pid for p in psutil.Process().children()}   # e.g. a test server of the session
    with pytest.raises(Exception, match=rf"shard {shard.path}, row 3, field image: cannot decode"):
        keys_of(make_loader(LoaderSpec(data, batch_size=10, image_size=16, train=False), num_workers=2))
    # the failed epoch's workers are gone at once (left to the garbage collector, each took 5 s)
    assert not [p for p in psutil.Process().children() if p.pid not in before and p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("train", [True, False])
def test_a_process_decodes_a_small_dataset_once_and_yields_the_same_pixels(synth, monkeypatch, train):
    """Decoded pixels are kept in the loader's process: the next pass (an epoch, a validation, a
    probe) decodes nothing and yields what decode workers, which keep nothing, yield; a budget too
    small for the dataset keeps what fits and changes no pixel. Whole-image boxes resized to another
    size (``min_crop_area`` 1) keep their resize too, with the same pixels."""
    from pipeline.data import images, loader
    decodes = []
    real_open = images.open_image
    monkeypatch.setattr(images, "open_image", lambda data: decodes.append(1) or real_open(data))
    for budget in (loader.DECODED_CACHE_BYTES, 20_000):
        # the stored size (no resize), a smaller one, and a larger one of whole-image boxes
        for size, area in ((20, 0.5), (16, 0.5), (32, 1.0)):
            monkeypatch.setattr(loader, "_DECODED", images.DecodedCache(budget))
            spec = LoaderSpec(synth, batch_size=16, image_size=size, seed=3, train=train, min_crop_area=area)
            decodes.clear()
            first = list(make_loader(spec, num_workers=0))
            decoded_first = len(decodes)
            again = list(make_loader(spec, num_workers=0))
            workers = list(make_loader(spec, num_workers=1))
            assert [b.keys for b in first] == [b.keys for b in again] == [b.keys for b in workers]
            assert all(torch.equal(a.images, b.images) and torch.equal(a.images, c.images)
                       for a, b, c in zip(first, again, workers))
            kept = sum(len(key) != 2 for key in loader._DECODED.items)   # decoded images, not (bytes, size) resizes
            if train and size == 32 and budget == loader.DECODED_CACHE_BYTES:
                assert len(loader._DECODED.items) == 2 * kept   # every image's whole-box resize kept too
            if budget == loader.DECODED_CACHE_BYTES:
                assert decoded_first == sum(len(b.keys) for b in first) and len(decodes) == decoded_first
            else:
                assert 0 < kept < decoded_first and len(decodes) == 2 * decoded_first - kept


def test_the_next_epoch_reuses_the_subset_until_the_dataset_changes(synth, tmp_path):
    """A new epoch's loader reads no footer again (the subset is kept per process); a changed
    manifest (another digest) makes it read the dataset anew."""
    data = Path(shutil.copytree(synth, tmp_path / "epochs"))
    first = make_loader(LoaderSpec(data, batch_size=16, image_size=16, fraction=0.5, epoch=0), num_workers=0)
    second = make_loader(LoaderSpec(data, batch_size=16, image_size=16, fraction=0.5, epoch=1), num_workers=0)
    assert second.subset is first.subset
    subset_keys = set(first.subset.keys())
    assert keys_of(first) != keys_of(second) and set(keys_of(second)) <= subset_keys
    other = make_loader(LoaderSpec(data, batch_size=16, image_size=16, fraction=0.25, epoch=1), num_workers=0)
    assert other.subset is not first.subset
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["description"] = "edited"
    (data / "manifest.json").write_text(json.dumps(manifest))
    third = make_loader(LoaderSpec(data, batch_size=16, image_size=16, fraction=0.5, epoch=2), num_workers=0)
    assert third.subset is not first.subset


def test_a_rank_with_the_kept_subset_reads_only_its_own_shards_footers(tmp_path, monkeypatch):
    """With ``subset_cache`` the subset is built once and kept (one file per manifest digest and
    subset); a rank (of another process: the per-process cache is empty) that finds it builds
    nothing, reads the footers of the shards its batches come from and no other, and yields
    exactly what the rank that built the subset yielded."""
    import pyarrow.parquet as pq
    from pipeline.data import dataset, loader, subsets
    data = Path(generate(tmp_path / "many", SynthSpec(images=300, classes=10, image_size=20, shards=12, seed=2),
                         executor="inline", progress=False))
    cache = tmp_path / "subsets"
    spec = LoaderSpec(data, batch_size=4, image_size=16, count=60, rank=1, world_size=4, seed=3,
                      subset_cache=str(cache))
    expected = keys_of(make_loader(spec, num_workers=0))
    assert len(list(cache.glob("*-train-*.npz"))) == 1
    loader._SUBSETS.clear()
    footers = []
    read_footer = dataset.Dataset._footer
    monkeypatch.setattr(dataset.Dataset, "_footer", lambda self, shard, *a: footers.append(shard.path) or
                        read_footer(self, shard, *a))
    monkeypatch.setattr(subsets.Subset, "build", lambda *a, **k: pytest.fail("the kept subset was built again"))
    assert keys_of(make_loader(spec, num_workers=0)) == expected and len(expected) == 12
    shards = Dataset(data).shards("train")
    shard_of = {k: s.path for s in shards for k in pq.read_table(data / s.path, columns=["key"])["key"].to_pylist()}
    assert set(footers) == {shard_of[k] for k in expected} and len(set(footers)) < len(shards)
    loader._SUBSETS.clear()
    other = LoaderSpec(data, batch_size=4, image_size=16, count=80, rank=1, world_size=4, seed=3,
                       subset_cache=str(cache))
    with pytest.raises(pytest.fail.Exception, match="built again"):   # another subset: another file
        keys_of(make_loader(other, num_workers=0))


def test_batches_are_normalized_nchw_with_the_right_labels(synth, downstream):
    assert num_classes(synth) == 10 and num_classes(downstream) == 4
    batch = next(iter(make_loader(LoaderSpec(synth, batch_size=12, image_size=16), num_workers=0)))
    assert batch.images.shape == (12, 3, 16, 16) and batch.images.dtype == torch.float32
    assert -1.0 <= batch.images.min() < 0 < batch.images.max() <= 1.0
    assert batch.labels.shape == (12, 10) and set(batch.labels.unique().tolist()) == {0.0, 1.0}
    rows = {}
    for shard in Dataset(synth).shards():
        import pyarrow.parquet as pq
        t = pq.read_table(Dataset(synth).shard_path(shard), columns=["key", "labels"])
        rows.update(zip(t.column("key").to_pylist(), t.column("labels").to_pylist()))
    for key, target in zip(batch.keys, batch.labels):
        assert torch.nonzero(target).flatten().tolist() == rows[key]
    test = list(make_loader(LoaderSpec(downstream, split="test", batch_size=8, image_size=32, train=False),
                            num_workers=0))
    assert [len(b.keys) for b in test] == [8, 8, 8, 6]         # eval keeps the partial batch
    assert test[0].labels.dtype == torch.int64 and test[0].images.shape == (8, 3, 32, 32)
    raw = list(make_loader(LoaderSpec(downstream, split="test", batch_size=8, image_size=32, train=False,
                                      image_dtype="uint8"), num_workers=2))
    assert raw[0].images.dtype == torch.uint8 and raw[0].images.shape == (8, 3, 32, 32)
    assert all(torch.equal(normalize_images(a.images), b.images) for a, b in zip(raw, test))


def test_train_augmentation_crops_and_flips(downstream):
    common = dict(split="test", batch_size=30, image_size=24)
    plain = next(iter(make_loader(LoaderSpec(downstream, train=False, crop_fraction=1.0, **common),
                                  num_workers=0)))
    aug = next(iter(make_loader(LoaderSpec(downstream, train=True, **common), num_workers=0)))
    plain_by_key = dict(zip(plain.keys, plain.images))
    diffs = [float((img - plain_by_key[k]).abs().mean()) for k, img in zip(aug.keys, aug.images)]
    assert sum(d > 0.05 for d in diffs) > 20                   # most images were changed


def test_excluded_rows_are_never_yielded(synth, tmp_path):
    data = Path(shutil.copytree(synth, tmp_path / "ex"))
    ds = Dataset(data)
    shard = ds.shards()[1]
    import pyarrow.parquet as pq
    keys = pq.read_table(ds.shard_path(shard), columns=["key"]).column("key").to_pylist()
    manifest = ds.manifest
    manifest["exclusions"] = {"train": [{"shard": shard.path, "row": r, "key": keys[r]}
                                        for r in (0, 1, 17)]}
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert subset_size(data) == 297
    by_count = Subset.build(Dataset(data), count=290).keys()          # counts are of usable rows
    assert len(by_count) == 290 and not {keys[0], keys[1], keys[17]} & set(by_count)
    seen = keys_of(make_loader(LoaderSpec(data, batch_size=10, image_size=16, train=False), num_workers=0))
    assert len(seen) == 297 and not {keys[0], keys[1], keys[17]} & set(seen)
    assert {keys[0], keys[1]} <= set(keys_of(make_loader(LoaderSpec(synth, batch_size=50, image_size=16,
                                                                    train=False), num_workers=0)))


def test_bad_rows_raise_with_location_or_are_skipped_and_counted(synth, tmp_path, caplog):
    data = Path(shutil.copytree(synth, tmp_path / "bad"))
    bad_image_key = rewrite_row(data, 0, 4, image=b"GIF89a garbage")
    bad_label_key = rewrite_row(data, 2, 11, labels=[10])
    shards = Dataset(data).shards()
    with pytest.raises(DataError, match=rf"shard {shards[0].path}, row 4, field image: cannot decode"):
        keys_of(make_loader(LoaderSpec(data, batch_size=10, image_size=16, train=False), num_workers=0))
    with pytest.raises(DataError, match=rf"shard {shards[2].path}, row 11, field labels: labels \[10\] outside"):
        keys_of(make_loader(LoaderSpec(data, fraction=1.0, rank=1, world_size=2, batch_size=10, image_size=16,
                                       train=False), num_workers=0))
    loader = make_loader(LoaderSpec(data, batch_size=10, image_size=16, train=False, on_bad_row="skip"),
                         num_workers=0)
    with caplog.at_level(logging.WARNING):
        seen = keys_of(loader)
    assert len(seen) == 298 and not {bad_image_key, bad_label_key} & set(seen)
    assert [(b.shard, b.row, b.field) for b in loader.skipped] == [
        (shards[0].path, 4, "image"), (shards[2].path, 11, "labels")]
    assert "skipped 2 bad rows/shards" in caplog.text


def test_unreadable_shard_is_named_or_skipped_whole(synth, tmp_path):
    data = Path(shutil.copytree(synth, tmp_path / "trunc"))
    shard = Dataset(data).shards()[1]
    (data / shard.path).write_bytes((data / shard.path).read_bytes()[:-100])
    with pytest.raises(DataError, match=rf"shard {shard.path}: file is \d+ bytes.*truncated"):
        make_loader(LoaderSpec(data, batch_size=10, image_size=16, train=False), num_workers=0)
    loader = make_loader(LoaderSpec(data, batch_size=10, image_size=16, train=False, on_bad_row="skip"),
                         num_workers=0)
    seen = keys_of(loader)
    others = [s for s in Dataset(synth).shards() if s != shard]
    assert len(seen) == sum(s.num_rows for s in others) == 300 - shard.num_rows
    assert [(b.shard, b.row, b.field) for b in loader.skipped] == [(shard.path, None, "shard")]
    assert "truncated" in loader.skipped[0].reason


def test_corrupt_row_group_is_named_or_its_rows_skipped(synth, tmp_path):
    import pyarrow.parquet as pq
    data = Path(shutil.copytree(synth, tmp_path / "page"))
    shard = Dataset(data).shards()[0]
    path = data / shard.path
    image_chunk = pq.read_metadata(path).row_group(2).column(1)
    assert image_chunk.path_in_schema == "image"
    raw = bytearray(path.read_bytes())
    for i in range(4):                                  # break the page header, keep the size
        raw[image_chunk.data_page_offset + i] ^= 0xFF
    path.write_bytes(bytes(raw))
    first_row = sum(pq.read_metadata(path).row_group(g).num_rows for g in range(2))
    with pytest.raises(DataError, match=rf"shard {shard.path}, row {first_row}: row group 2 cannot be read"):
        keys_of(make_loader(LoaderSpec(data, batch_size=10, image_size=16, train=False), num_workers=0))
    loader = make_loader(LoaderSpec(data, batch_size=10, image_size=16, train=False, on_bad_row="skip"),
                         num_workers=0)
    seen = keys_of(loader)
    group_rows = pq.read_metadata(path).row_group(2).num_rows
    assert len(seen) == 300 - group_rows and len(loader.skipped) == group_rows
    assert {(b.shard, b.field) for b in loader.skipped} == {(shard.path, "row_group")}
    assert [b.row for b in loader.skipped] == list(range(first_row, first_row + group_rows))


def _photo(size: tuple[int, int], fmt: str = "JPEG") -> bytes:
    """A real photograph (scikit-learn's china.jpg) resized to ``size`` and encoded as ``fmt``."""
    import io
    from PIL import Image
    from sklearn.datasets import load_sample_image
    buf = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).resize(size, Image.LANCZOS).save(buf, format=fmt, quality=90)
    return buf.getvalue()


def test_train_decode_reduces_large_jpegs_with_the_same_crop_and_flip():
    import numpy as np
    from pipeline.data.images import decode_rgb, decode_train, draft_scale, inception_crop_box, train_transform
    big = _photo((1600, 1068))
    drafted, diffs = 0, []
    for seed in range(16):
        fast = decode_train(big, 224, np.random.default_rng(seed))
        full = train_transform(decode_rgb(big), 224, np.random.default_rng(seed))
        assert fast.shape == full.shape == (224, 224, 3) and fast.dtype == np.uint8
        box = inception_crop_box(1600, 1068, np.random.default_rng(seed))
        drafted += draft_scale(box, 224) > 1
        diffs.append(np.abs(fast.astype(np.int16) - full).mean())
        if draft_scale(box, 224) == 1:
            assert np.array_equal(fast, full)                   # crops under 448 px: decoded in full
    assert 4 <= drafted < 16                                   # both paths taken
    assert max(diffs) < 4 and np.mean(diffs) < 2.5             # grey levels of 255: the same box, the same flip
    mirrored = np.abs(decode_train(big, 224, np.random.default_rng(0))[:, ::-1].astype(np.int16) -
                      train_transform(decode_rgb(big), 224, np.random.default_rng(0))).mean()
    assert mirrored > 5 * max(diffs)                           # (a wrong flip would show)
    for small in (_photo((400, 300)), _photo((900, 600), "PNG")):   # small JPEGs, PNGs: the full path
        for seed in range(4):
            assert np.array_equal(decode_train(small, 224, np.random.default_rng(seed)),
                                  train_transform(decode_rgb(small), 224, np.random.default_rng(seed)))


def test_crop_resize_matches_pil_resize_inside_the_box():
    import numpy as np
    from PIL import Image
    from pipeline.data.images import crop_resize, decode_rgb
    img = decode_rgb(_photo((500, 375)))
    for box in ((10, 20, 110, 100), (0, 0, 500, 375), (100, 50, 324, 274), (37, 11, 460, 350)):
        ours = crop_resize(img, box, 224).astype(np.int16)
        pil = np.asarray(img.crop(box).resize((224, 224), Image.BILINEAR))
        assert np.abs(ours - pil).max() <= 1, box                 # bilinear, antialiased as PIL's


def test_train_decode_by_libjpeg_turbo_gives_pillows_pixels_and_falls_back_to_pillow():
    """JPEGs decode through simplejpeg when they can (the same pixels as Pillow's decode, exactly);
    a CMYK JPEG, which it refuses, goes through Pillow with the same crop and flip."""
    import io

    import numpy as np
    from PIL import Image

    from pipeline.data.images import _turbo_rgb, decode_rgb, decode_train, train_transform
    photo = _photo((640, 427))
    assert _turbo_rgb(photo) is not None
    cmyk = io.BytesIO()
    decode_rgb(photo).convert("CMYK").save(cmyk, "JPEG", quality=90)
    for data in (photo, cmyk.getvalue()):
        for seed in range(4):
            assert np.array_equal(decode_train(data, 224, np.random.default_rng(seed)),
                                  train_transform(decode_rgb(data), 224, np.random.default_rng(seed)))
    assert Image.open(io.BytesIO(cmyk.getvalue())).mode == "CMYK"


def test_normalize_images_leaves_its_input_as_it_was():
    import torch

    from pipeline.data import normalize_images
    raw = torch.tensor([[0, 255]], dtype=torch.uint8)
    assert normalize_images(raw).tolist() == [[-1.0, 1.0]]
    already = torch.tensor([[0.0, 255.0]])
    normalize_images(already)
    assert already.tolist() == [[0.0, 255.0]]   # a float32 input is not scaled in place
