"""What the machine a worker runs on decides: the device's peak for MFU, the CPUs Ray gave the
worker (torch threads, loader processes), whether ``torch.compile`` repays its compile time, the
CPUs a GPU worker asks for, and the peak memory a run used.

Measured on one H200 (bench/RESULTS.md, "GPU check (issue 17)"): compiling cost 26 s (ViT-B/16),
82 s (R50x1) and 104 s (R50+ViT-B/16) more on the first step and made the steps 1.28x, 1.85x and
1.80x faster; eager MFU was 29%, 6% and 15%. A run breaks even once its eager training time passes
C / (1 - 1/speedup): 118 s, 180 s and 233 s. ``--compile auto`` compiles on CUDA when the run's
remaining steps would take longer than :data:`COMPILE_AFTER_S` eagerly, estimated at
:data:`EAGER_MFU` (the best eager MFU measured, so the estimate is short and compiling is chosen
only where it surely pays; a resumed attempt compiles again, hence the margin).
"""
from __future__ import annotations

import resource
import sys
from typing import Callable, Literal

import torch

# Dense bf16 peak per device (TFLOP/s) for MFU; unknown devices get no MFU.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}

CompileMode = Literal["auto", "on", "off"]
COMPILE_MODES: tuple[str, ...] = ("auto", "on", "off")
COMPILE_AFTER_S = 600.0   # 2.6x the slowest break-even measured (233 s, the hybrid)
EAGER_MFU = 0.30          # ViT-B/16 eager on the H200: 29.4%
MAX_LOADER_WORKERS = 32


def peak_tflops(device: torch.device, precision: str) -> float | None:
    """The device's dense bf16 peak (TFLOP/s) when it trains in bf16 on a GPU we know; else None."""
    if device.type != "cuda" or precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def assigned_cpus() -> int | None:
    """The CPUs Ray gave this task or actor (at least 1), or None outside a Ray worker."""
    try:
        import ray  # optional here: the in-process loop and the tests run without Ray
        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not in a Ray worker
        return None
    return max(1, int(cpus)) if cpus else None


def use_assigned_cpus(loader_workers: int = 0) -> int | None:
    """In a Ray task or actor, let torch use as many threads as CPUs Ray gave it, less the loader's
    processes (at least one). Threads beyond a worker's share spin-wait on cores that other workers
    hold: two Train workers of 2 threads each on 2 cores trained a micro ViT 2.2x slower than with 1
    thread each (106 s vs 47 s, tests/test_pretrain.py). Elsewhere (the driver, a zero-CPU task)
    nothing changes."""
    cpus = assigned_cpus()
    if cpus is None:
        return None
    threads = max(1, cpus - loader_workers)
    torch.set_num_threads(threads)
    return threads


def loader_workers(cpus: int | None, device_type: str) -> int | None:
    """Decode processes for a training loader, from the CPUs Ray gave the worker: none on a CPU
    worker (its CPUs train) or with 2 CPUs or fewer; on a GPU worker all but one (the process that
    drives the GPU). None outside Ray: the loader's own default (by the machine's CPU count)."""
    if cpus is None:
        return None
    if device_type == "cpu" or cpus <= 2:
        return 0
    return min(MAX_LOADER_WORKERS, cpus - 1)


def cpus_per_gpu(resources_by_node: list[dict[str, float]]) -> int:
    """CPUs a GPU worker asks Ray for: the fewest CPUs per GPU over the nodes that have GPUs, less
    one left for the run's few-shot and fine-tuning tasks; 1 when no GPU node is up yet (an
    autoscaling cluster: pass ``--cpus-per-gpu`` to say what its GPU nodes hold)."""
    ratios = [r.get("CPU", 0) / r["GPU"] for r in resources_by_node if r.get("GPU")]
    return max(1, int(min(ratios)) - 1) if ratios else 1


def gpu_worker_cpus(gpus_per_run: int, given: int | None, emit: Callable[[str], None]) -> int:
    """CPUs each GPU worker of a study asks Ray for (said with ``emit``): ``given``
    (``--cpus-per-gpu``), else what the cluster's GPU nodes hold per GPU less one
    (:func:`cpus_per_gpu`); 1 for CPU studies (``gpus_per_run`` 0)."""
    import ray  # the driver's Ray, up by now; workers never call this
    if not gpus_per_run:
        return 1
    if given is not None:
        cpus, source = given, "--cpus-per-gpu"
    else:
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        cpus = cpus_per_gpu(nodes)
        source = ("the GPU nodes' CPUs per GPU, less one" if any(n.get("GPU") for n in nodes) else
                  "no GPU node is up yet: give --cpus-per-gpu (what a GPU node holds per GPU, less one) so that "
                  "the loader decodes on more than the training process")
    emit(f"[study] each GPU worker asks for {cpus} CPU(s), {loader_workers(cpus, 'cuda')} of them "
         f"decoding images ({source})")
    return cpus


def should_compile(mode: str, device: torch.device, remaining_flops: float, peak: float | None) -> tuple[bool, str]:
    """(compile?, why): ``on``/``off`` as said; ``auto`` compiles on CUDA when the remaining
    training FLOPs at :data:`EAGER_MFU` of the device's peak take longer than
    :data:`COMPILE_AFTER_S` (an unknown GPU counts as an H100)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "on", f"--compile {mode}"
    if device.type != "cuda":
        return False, "auto: not on a GPU"
    eager_s = remaining_flops / (EAGER_MFU * (peak or PEAK_BF16_TFLOPS["H100"]) * 1e12)
    verdict = "longer" if eager_s > COMPILE_AFTER_S else "not longer"
    return eager_s > COMPILE_AFTER_S, (f"auto: about {eager_s:.0f} s eager, {verdict} than the {COMPILE_AFTER_S:.0f} s "
                                       "that repay compiling")


def peak_memory_gib(device: torch.device) -> float:
    """The most memory this process held: the GPU's allocator peak on CUDA, else the process's
    peak resident set (the CPU's)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20)
