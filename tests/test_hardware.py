"""What runs only on a GPU machine, checked on the CPU (issue 30): the choices ``pipeline.hardware``
makes for a CUDA worker (compile or not, loader processes, CPUs a GPU worker asks for), a
checkpoint written on a GPU read back here, the pinned loader path, and ``compile`` leaving the
recipe without changing any RunSpec id."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from pipeline import hardware
from pipeline.data.loader import LoaderSpec, make_loader
from pipeline.data.synth import SynthSpec, generate
from pipeline.pretrain.checkpoint import STATE_FILE, load_state
from pipeline.spec import Recipe, load_study

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
H100 = hardware.PEAK_BF16_TFLOPS["H100"]


def flops_for(seconds: float, peak: float = H100) -> float:
    """Training FLOPs that take ``seconds`` eagerly at the assumed eager MFU."""
    return seconds * hardware.EAGER_MFU * peak * 1e12


def test_compile_auto_compiles_a_gpu_run_only_when_it_is_long_enough_to_repay_it():
    long_run, short_run = flops_for(hardware.COMPILE_AFTER_S * 1.01), flops_for(hardware.COMPILE_AFTER_S * 0.99)
    assert hardware.should_compile("auto", CUDA, long_run, H100)[0] is True
    assert hardware.should_compile("auto", CUDA, short_run, H100)[0] is False
    # a slower GPU takes longer for the same FLOPs; an unknown one counts as an H100
    assert hardware.should_compile("auto", CUDA, short_run, hardware.PEAK_BF16_TFLOPS["A100"])[0] is True
    assert hardware.should_compile("auto", CUDA, long_run, None)[0] is True
    compiled, why = hardware.should_compile("auto", CPU, long_run * 100, None)
    assert not compiled and why == "auto: not on a GPU"
    assert hardware.should_compile("on", CPU, 0.0, None) == (True, "--compile on")
    assert hardware.should_compile("off", CUDA, long_run, H100) == (False, "--compile off")
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        hardware.should_compile("yes", CUDA, long_run, H100)


def test_a_gpu_worker_decodes_on_all_its_cpus_but_one_and_a_cpu_worker_on_none():
    assert hardware.loader_workers(None, "cuda") is None  # outside Ray: the loader's own default
    assert hardware.loader_workers(16, "cuda") == 15
    assert hardware.loader_workers(2, "cuda") == 0
    assert hardware.loader_workers(200, "cuda") == hardware.MAX_LOADER_WORKERS
    assert hardware.loader_workers(8, "cpu") == 0  # its CPUs train
    # the CPUs a GPU worker asks for: the GPU nodes' fewest per GPU, one left for transfer tasks
    assert hardware.cpus_per_gpu([{"CPU": 16.0, "GPU": 1.0}]) == 15
    assert hardware.cpus_per_gpu([{"CPU": 4.0}, {"CPU": 96.0, "GPU": 8.0}, {"CPU": 208.0, "GPU": 8.0}]) == 11
    assert hardware.cpus_per_gpu([{"CPU": 4.0}]) == 1  # no GPU node up yet


def test_compile_is_no_longer_a_recipe_field_and_run_ids_stay_what_they_were():
    assert Recipe(compile=False) == Recipe()  # records written before say compile: false
    with pytest.raises(ValidationError, match="compile is no longer a recipe field"):
        Recipe(compile=True)
    # the smoke preset's ids as computed before compile left the recipe (commit 71c6c18)
    assert [s.id for s in load_study("scaling").expand("smoke")] == ["b4cbfc616ed7", "347bd2c052b7"]


def as_if_saved_on_a_gpu(path: Path) -> None:
    """Rewrite a torch.save file so that its tensors say they were saved from ``cuda:0``."""
    original = path.with_suffix(".cpu")
    shutil.move(path, original)
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            dst.writestr(item, data)


def test_a_checkpoint_written_on_a_gpu_is_read_on_a_cpu(tmp_path):
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    state = {"model": weights, "optimizer": {}, "schedule": {}, "step": 7, "best": {}, "rng": [], "spec": {}}
    torch.save(state, tmp_path / STATE_FILE)
    as_if_saved_on_a_gpu(tmp_path / STATE_FILE)
    if not torch.cuda.is_available():  # the file really is a CUDA one: read as it is, it cannot be
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / STATE_FILE, weights_only=True)
    loaded = load_state(tmp_path)  # map_location: the CPU
    assert loaded["step"] == 7 and loaded["model"]["w"].device == CPU
    assert torch.equal(loaded["model"]["w"], weights["w"])


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true but no accelerator:UserWarning")
def test_the_pinned_loader_path_gives_the_batches_of_the_plain_one(tmp_path):
    data = generate(tmp_path / "synth", SynthSpec(images=96, classes=4, image_size=16, seed=0), executor="inline",
                    progress=False)
    spec = LoaderSpec(data, batch_size=16, image_size=16, train=True, seed=3, label_format="multi_hot",
                      image_dtype="uint8")
    plain = list(make_loader(spec, num_workers=0))
    pinned = list(make_loader(spec, num_workers=2, pin_memory=True))
    assert [b.keys for b in pinned] == [b.keys for b in plain] and len(plain) == 6
    assert all(torch.equal(p.images, q.images) and torch.equal(p.labels, q.labels) for p, q in zip(pinned, plain))


def test_peak_memory_is_measured_on_a_cpu():
    assert 0.01 < hardware.peak_memory_gib(CPU) < 64
