"""A run's numbers and a study's plan.

:func:`run_numbers` is the one place a run's steps, images seen, head size, params, forward MACs
and pretraining exaFLOPs are derived: the plan calls it with the preset's sizes, pretraining with
the dataset's, so planned and logged compute are equal by construction whenever the data has the
size the preset says.

:func:`plan` lists every run of a study with those numbers, the GPU-hours they need at a stated MFU
and GPU peak, and its status in MLflow. Used by ``python -m pipeline.study --plan``, the
orchestrator (progress weights) and the report (planned compute); it sits below all three, so none
of them imports the CLI. Given the data (``--plan --data``), the plan takes the full set's rows and
the head's classes from its manifest, as pretraining does, and reads no shard: a 300M-image
dataset of 100k shards plans as fast as the preset's declared size.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from pipeline import compute, tracking
from pipeline.data import open_dataset
from pipeline.spec import Preset, RunSpec, Study, subset_images

DEFAULT_MFU = 0.4           # a typical model-FLOPs utilization for large ViT/ResNet training
DEFAULT_PEAK_TFLOPS = 989.0  # H100 SXM dense bf16


@dataclass(frozen=True)
class RunNumbers:
    """What a run costs. ``subset_images``, ``steps`` and what follows from them are None when
    the subset's size is unknown (a fraction of a dataset of unstated size, run by epochs)."""
    subset_images: int | None
    steps: int | None          # optimizer steps: given, or ceil(epochs x subset images / batch)
    steps_per_epoch: int | None
    images_seen: int | None    # steps x global batch
    head_classes: int
    params: int
    forward_macs: int          # per image at the pretraining resolution, fvcore (pipeline.compute)
    exaflops: float | None     # pretraining compute, the paper's convention


def run_numbers(spec: RunSpec, subset_images: int | None, head_classes: int) -> RunNumbers:
    """The numbers of ``spec`` pretrained on ``subset_images`` rows with a ``head_classes`` head."""
    batch = spec.recipe.batch_size
    steps = spec.total_steps(subset_images) if spec.steps is not None or subset_images is not None else None
    images_seen = steps * batch if steps is not None else None
    counts = compute.model_counts(spec.model, spec.recipe.image_size, head_classes, progress=True)
    return RunNumbers(
        subset_images=subset_images, steps=steps,
        steps_per_epoch=subset_images // batch if subset_images is not None else None,
        images_seen=images_seen, head_classes=head_classes, params=counts["params"],
        forward_macs=counts["forward_macs"],
        exaflops=compute.pretrain_exaflops(counts["forward_macs"], images_seen) if images_seen else None)


def data_sizes(p: Preset, data: str | None) -> tuple[int | None, int, str | None]:
    """(full set's rows, head classes, data location) that a plan counts: the preset's, or with
    ``data`` the dataset's own from its manifest alone (what pretraining derives and logs)."""
    if data is None:
        full = compute.parse_count(p.dataset.images) if p.dataset.images is not None else None
        return full, p.dataset.head_classes, None
    dataset = open_dataset(data)
    if dataset.name != p.dataset.name:
        raise ValueError(f"--data {data} holds dataset {dataset.name!r}, but the preset pretrains on "
                         f"{p.dataset.name!r} (the name is part of every run id): give the right folder")
    return dataset.usable_rows("train"), dataset.num_classes, dataset.root


def plan(study: Study, preset: str, *, tracking_uri: str | None, mfu: float = DEFAULT_MFU,
         peak_tflops: float = DEFAULT_PEAK_TFLOPS, data: str | None = None, no_store: bool = False) -> dict[str, Any]:
    """Every run of the preset with its numbers and status. ``data``: a dataset (folder or URI)
    whose manifest gives the full set's rows and the head's classes, instead of the preset's.
    ``no_store``: there is no MLflow store yet (a new local storage), so every run is new."""
    p = study.preset(preset)
    full, head_classes, location = data_sizes(p, data)
    statuses, status_error = {}, None
    if tracking_uri:
        try:
            tracking.check_server(tracking_uri, wait_s=5.0)  # a dead server is said in seconds
            statuses = {spec_id: run.status for spec_id, run in tracking.spec_runs(tracking_uri, study.name).items()}
        except Exception as err:  # the plan still shows the compute; the statuses are unknown
            status_error = str(err)
            print(f"warning: could not read run status from {tracking_uri}: {err}", file=sys.stderr)
    unread = tracking.Status.NEW if no_store or (tracking_uri and not status_error) else "unknown"
    runs = []
    for spec in study.expand(preset):
        spec_id = spec.id  # a hash of the spec, made anew at each use
        n = run_numbers(spec, subset_images(spec.subset, full), head_classes)
        gpu_hours = n.exaflops * 1e18 / (mfu * peak_tflops * 1e12) / 3600 if n.exaflops is not None else None
        runs.append({"id": spec_id, "model": spec.model_name, "family": spec.family, "subset": spec.subset,
                     "subset_images": n.subset_images, "images_seen": n.images_seen, "epochs": spec.epochs,
                     "steps": n.steps, "seed": spec.seed, "replicate": spec.replicate_id, "params": n.params,
                     "forward_gmacs": n.forward_macs / 1e9, "exaflops": n.exaflops, "gpu_hours": gpu_hours,
                     "status": str(statuses.get(spec_id, unread))})
    known = [r for r in runs if r["exaflops"] is not None]
    totals = {"runs": len(runs), "exaflops": sum(r["exaflops"] for r in known),
              "gpu_hours": sum(r["gpu_hours"] for r in known),
              **{s: sum(r["status"] == s for r in runs) for s in (*tracking.STATUSES, "unknown")}}
    return {"study": study.name, "preset": preset, "dataset": p.dataset.name, "data": location, "mfu": mfu,
            "gpu_peak_tflops": peak_tflops, "runs": runs, "totals": totals, "status_error": status_error}


def format_plan(result: dict[str, Any]) -> str:
    head = ("id", "model", "family", "subset", "images", "epochs", "params", "exaFLOPs", "GPU-h", "status")
    fmt_n = lambda v, f: "-" if v is None else format(v, f if abs(v) >= 10 or v == 0 else ".3g")
    rows = [(r["id"], r["model"], r["family"], str(r["subset"]), fmt_n(r["subset_images"], ","),
             fmt_n(r["epochs"], "g") if r["epochs"] is not None else f"{r['steps']} steps",
             f"{r['params'] / 1e6:.1f}M", fmt_n(r["exaflops"], ",.1f"), fmt_n(r["gpu_hours"], ",.0f"), r["status"])
            for r in result["runs"]]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    t = result["totals"]
    return "\n".join([
        f"study {result['study']} / preset {result['preset']} on {result['dataset']}"
        + (f" ({result['data']}: its manifest's sizes)" if result.get("data") else ""),
        line(head), line(["-" * w for w in widths]), *map(line, rows), "",
        f"{t['runs']} runs: " + ", ".join(f"{t[s]} {s}" for s in (*tracking.STATUSES, "unknown") if t[s] or s != "unknown")
        + "; "
        f"{fmt_n(t['exaflops'], ',.1f')} exaFLOPs = {fmt_n(t['gpu_hours'], ',.0f')} GPU-hours at {result['mfu']:.0%} MFU of "
        f"{result['gpu_peak_tflops']:g} TFLOP/s"])
