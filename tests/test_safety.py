"""Files from elsewhere are data, not code: a crafted checkpoint or CIFAR pickle runs nothing
while it is read, and what is refused is named with what a good file holds."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import transfer
from pipeline.data.cifar import convert_cifar
from pipeline.data.convert import ConversionError, ConvertOptions
from pipeline.data.synth import SynthSpec, generate
from pipeline.pretrain.checkpoint import STATE_FILE, CheckpointError, load_state


class Payload:
    """Unpickling this creates ``marker``: what a malicious file could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def crafted_checkpoint(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True)
    torch.save({"model": {}, "optimizer": {}, "schedule": {}, "step": 1, "best": {}, "rng": [],
                "spec": Payload(marker)}, folder / STATE_FILE)
    return folder


def test_a_crafted_checkpoint_runs_nothing_and_is_refused_clearly(tmp_path):
    marker = tmp_path / "payload-ran"
    folder = crafted_checkpoint(tmp_path / "checkpoint_000000001", marker)
    with pytest.raises(CheckpointError, match=f"{folder / STATE_FILE} is not a checkpoint this pipeline reads"):
        transfer.load_checkpoint(str(folder))
    with pytest.raises(CheckpointError, match="a folder holding state.pt, written by pipeline.pretrain"):
        load_state(folder)
    assert not marker.exists()


def test_the_transfer_cli_says_so_in_one_line(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    folder = crafted_checkpoint(tmp_path / "ckpt", marker)
    data = generate(tmp_path / "small", SynthSpec(images=20, classes=2, image_size=8, task="novel", test_images=4),
                    executor="inline", progress=False)
    with pytest.raises(SystemExit) as exit_:
        transfer.main([str(folder), "--dataset", data, "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "is not a checkpoint this pipeline reads" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("content,message", [
    (b"\x00\x01 not a checkpoint at all", "is not a checkpoint this pipeline reads"),
    ({"weights": torch.zeros(2)}, r"holds no pretraining state \(missing best, model, optimizer"),
])
def test_foreign_files_are_refused_with_what_a_checkpoint_holds(tmp_path, content, message):
    path = tmp_path / STATE_FILE
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        load_state(tmp_path)


def test_a_cifar_pickle_that_names_code_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    src = tmp_path / "cifar-10-batches-py"
    src.mkdir()
    (src / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}))
    (src / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0],
                                                     b"extra": Payload(marker)}))
    with pytest.raises(ConversionError, match="pathlib.Path.touch, which a CIFAR batch never holds"):
        convert_cifar(src, tmp_path / "out", ConvertOptions(split="train"), executor="inline", progress=False)
    assert not marker.exists()
