"""A study's plan: every run with its image count, params, forward MACs, pretraining exaFLOPs
(``pipeline.compute``), the GPU-hours those need at a stated MFU and GPU peak, and its status in
MLflow. Used by ``python -m pipeline.study --plan``, the orchestrator (progress weights) and the
report (planned compute); it sits below all three, so none of them imports the CLI.
"""
from __future__ import annotations

import sys
from typing import Any

from pipeline import compute, tracking
from pipeline.spec import Study, subset_images

DEFAULT_MFU = 0.4           # a typical model-FLOPs utilization for large ViT/ResNet training
DEFAULT_PEAK_TFLOPS = 989.0  # H100 SXM dense bf16


def plan(study: Study, preset: str, *, tracking_uri: str | None, mfu: float = DEFAULT_MFU,
         peak_tflops: float = DEFAULT_PEAK_TFLOPS) -> dict[str, Any]:
    p = study.preset(preset)
    full = compute.parse_count(p.dataset.images) if p.dataset.images is not None else None
    statuses = {}
    if tracking_uri:
        try:
            statuses = {spec_id: tracking.run_status(run)
                        for spec_id, run in tracking.spec_runs(tracking_uri, study.name).items()}
        except Exception as err:  # an unreachable server must not stop a plan
            print(f"warning: could not read run status from {tracking_uri}: {err}", file=sys.stderr)
    runs = []
    for spec in study.expand(preset):
        rows = subset_images(spec.subset, full)
        if spec.epochs is not None:
            images_seen = round(spec.epochs * rows) if rows is not None else None
        else:
            images_seen = spec.steps * spec.recipe.batch_size
        counts = compute.model_counts(spec.model, spec.recipe.image_size, p.dataset.head_classes, progress=True)
        exaflops = compute.pretrain_exaflops(counts["forward_macs"], images_seen) if images_seen else None
        gpu_hours = exaflops * 1e18 / (mfu * peak_tflops * 1e12) / 3600 if exaflops is not None else None
        runs.append({"id": spec.id, "model": spec.model_name, "family": spec.family, "subset": spec.subset,
                     "subset_images": rows, "images_seen": images_seen, "epochs": spec.epochs, "steps": spec.steps,
                     "seed": spec.seed, "params": counts["params"], "forward_gmacs": counts["forward_macs"] / 1e9,
                     "exaflops": exaflops, "gpu_hours": gpu_hours,
                     "status": statuses.get(spec.id, "new" if tracking_uri else "unknown")})
    known = [r for r in runs if r["exaflops"] is not None]
    totals = {"runs": len(runs), "exaflops": sum(r["exaflops"] for r in known),
              "gpu_hours": sum(r["gpu_hours"] for r in known),
              **{s: sum(r["status"] == s for r in runs) for s in tracking.STATUSES}}
    return {"study": study.name, "preset": preset, "dataset": p.dataset.name, "mfu": mfu,
            "gpu_peak_tflops": peak_tflops, "runs": runs, "totals": totals}


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
        f"study {result['study']} / preset {result['preset']} on {result['dataset']}",
        line(head), line(["-" * w for w in widths]), *map(line, rows), "",
        f"{t['runs']} runs: " + ", ".join(f"{t[s]} {s}" for s in tracking.STATUSES) + "; "
        f"{fmt_n(t['exaflops'], ',.1f')} exaFLOPs = {fmt_n(t['gpu_hours'], ',.0f')} GPU-hours at {result['mfu']:.0%} MFU of "
        f"{result['gpu_peak_tflops']:g} TFLOP/s"])
