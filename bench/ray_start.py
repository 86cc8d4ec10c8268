"""What a local Ray's start costs with and without its dashboard (issue 31): the wall time of
``ray.init`` and a first task, and the CPU seconds its processes used, for each setting in turn.

    python bench/ray_start.py --repeat 2
"""
from __future__ import annotations

import argparse
import os
import time


def start_once(dashboard: bool) -> dict:
    import psutil
    import ray
    before = sum(os.times()[:2])
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=dashboard, log_to_driver=False)
    ray.get(ray.remote(lambda: 1).remote())
    wall = time.perf_counter() - start
    time.sleep(3)   # the processes' own start-up work, done by now
    processes = psutil.Process().children(recursive=True)
    cpu = sum(sum(p.cpu_times()[:2]) for p in processes)
    row = {"dashboard": dashboard, "wall_s": round(wall, 2), "cpu_s_ray": round(cpu, 2),
           "cpu_s_driver": round(sum(os.times()[:2]) - before, 2), "processes": len(processes)}
    ray.shutdown()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.repeat):
        for dashboard in (True, False):
            print(start_once(dashboard), flush=True)


if __name__ == "__main__":
    main()
