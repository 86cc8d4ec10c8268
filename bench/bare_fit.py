"""Ray Train's own fixed cost (issue 31): ``TorchTrainer.fit`` of a function that returns at once, one
CPU worker, ``--fits`` times in a row on one warm local Ray (health checks every 0.1 s, as a command's),
with the trainer pretraining uses on a command's local Ray (``pipeline.pretrain.launch.torch_trainer``:
no DatasetManager, no PlacementGroupCleaner) and with Ray Train's own, alternately. Prints each fit's
seconds, when the function was entered, and the medians (the first fit of each pays Ray's warm-up).

    python bench/bare_fit.py [--fits 4]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from pipeline.raycluster import TRAIN_HEALTH_CHECK_S


def entered(config: dict) -> None:
    with open(config["mark"], "w") as out:
        out.write(str(time.time()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fits", type=int, default=4)
    args = parser.parse_args()
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = TRAIN_HEALTH_CHECK_S
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from pipeline.pretrain.launch import torch_trainer
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    work = tempfile.mkdtemp(prefix="bare_fit-")
    seconds: dict[str, list[float]] = {"pipeline's (local Ray)": [], "Ray Train's": []}
    for i in range(args.fits):
        for which, (name, trainer) in enumerate((("pipeline's (local Ray)", torch_trainer(True)),
                                                  ("Ray Train's", TorchTrainer))):
            mark = os.path.join(work, "entered")
            start = time.time()
            trainer(entered, train_loop_config={"mark": mark}, scaling_config=ScalingConfig(num_workers=1),
                    run_config=RunConfig(storage_path=work, name=f"fit-{i}-{which}")).fit()
            took = time.time() - start
            with open(mark) as f:
                at = float(f.read()) - start
            seconds[name].append(took)
            print(f"fit {i} {name:24s} {took:5.2f} s (function entered at {at:4.2f} s)", flush=True)
            time.sleep(1)
    for name, values in seconds.items():
        print(f"median {name:24s} {statistics.median(values[1:] or values):5.2f} s (first fit left out)")


if __name__ == "__main__":
    main()
