"""pipeline.data with Ray: shards generated as Ray tasks; the loader inside Ray Train workers
that hold every CPU of a 2-CPU cluster (it must not wait for CPUs that Ray Data would need)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeline.data.dataset import Dataset
from pipeline.data.subsets import Subset
from pipeline.data.synth import SynthSpec, generate

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def _train_loop(config):
    import ray.train
    import torch
    from pipeline.data.loader import LoaderSpec, make_loader
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seen = []
    for epoch in range(2):
        loader = make_loader(LoaderSpec(config["path"], fraction=0.5, rank=rank, world_size=world, seed=0,
                                        epoch=epoch, batch_size=16, image_size=16), num_workers=1)
        for images, labels, keys, _ in loader:
            assert images.shape == (16, 3, 16, 16) and torch.isfinite(images).all()
            seen.append([epoch, keys])
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(seen))


def test_loader_runs_in_ray_train_workers_holding_all_cpus(ray_cluster, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    # Workers cannot import this test module by name: ship the training function by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    data = generate(tmp_path / "synth", SynthSpec(images=200, classes=8, image_size=16, shards=2),
                    executor="ray", progress=False)
    local = generate(tmp_path / "local", SynthSpec(images=200, classes=8, image_size=16, shards=2),
                     executor="inline", progress=False)
    # Ray tasks write exactly what local processes write.
    assert [s.sha256 for s in Dataset(data).shards()] == [s.sha256 for s in Dataset(local).shards()]
    trainer = TorchTrainer(
        _train_loop, train_loop_config={"path": str(data), "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="data-loader", storage_path=str(tmp_path / "ray")))
    trainer.fit()
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    subset = set(Subset.build(Dataset(data), fraction=0.5).keys())
    for epoch in range(2):
        shares = [{k for e, keys in seen if e == epoch for k in keys} for seen in per_rank]
        assert not shares[0] & shares[1]
        assert shares[0] | shares[1] <= subset
        assert len(shares[0]) == len(shares[1]) == (len(subset) // 2 // 16) * 16


def test_an_imagenet21k_conversion_runs_as_ray_tasks_and_makes_what_processes_make(ray_cluster, tmp_path):
    """`convert` with Ray up: the synset tars' shard jobs run as Ray tasks (the job function and
    its resume record shipped by reference) and write the same dataset as one process does."""
    import tarfile
    from pipeline.data.convert import ConvertOptions
    from pipeline.data.convert import convert
    from test_data_imagenet import add_bytes, jpeg
    src = tmp_path / "synsets"
    src.mkdir()
    for k in range(5):
        with tarfile.open(src / f"n{k + 1:08d}.tar", "w") as tar:
            for i in range(3):
                add_bytes(tar, f"n{k + 1:08d}_{i}.JPEG", jpeg(10 * k + i))
    made = {executor: convert("imagenet21k", src, tmp_path / executor / "in21k", ConvertOptions(shards=3),
                              executor=executor, progress=False)
            for executor in ("ray", "inline")}
    assert made["ray"] == made["inline"] and made["ray"]["rows"] == 15
    assert Dataset(tmp_path / "ray" / "in21k").digest == Dataset(tmp_path / "inline" / "in21k").digest
