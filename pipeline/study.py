"""The study front door: ``python -m pipeline.study NAME [--preset P] [--plan] [--json] [--report]
[--data URI] [--storage URI] [--tracking-uri URI] [--max-concurrent N] [--gpus-per-run G]``.

Without ``--plan`` it runs the study on Ray (``pipeline.orchestrate``): every run pretrains, then
transfers; re-running the same command skips finished runs and resumes the others. The last stage
writes the report (``pipeline.analysis``); ``--report`` writes only that.

``--plan`` launches nothing. It prints every run of the study: id, model, family, subset and its
image count, epochs, params, pretraining exaFLOPs (``pipeline.compute``), the GPU-hours those
need at a stated MFU and GPU peak, and each run's status in MLflow (done / partial / new).
``--list`` shows the studies and their presets.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from pipeline import compute, tracking
from pipeline import storage as store
from pipeline.spec import Study, list_studies, load_study, subset_images

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
              **{s: sum(r["status"] == s for r in runs) for s in ("done", "partial", "new")}}
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
        f"{t['runs']} runs: {t['done']} done, {t['partial']} partial, {t['new']} new; "
        f"{fmt_n(t['exaflops'], ',.1f')} exaFLOPs = {fmt_n(t['gpu_hours'], ',.0f')} GPU-hours at {result['mfu']:.0%} MFU of "
        f"{result['gpu_peak_tflops']:g} TFLOP/s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="study name (see --list) or a study .yaml file")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--list", action="store_true", help="list studies and presets")
    parser.add_argument("--plan", action="store_true", help="print the runs, their compute and status; launch nothing")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report", action="store_true", help="write the report of the runs so far; launch nothing")
    parser.add_argument("--data", default=None, help="pretraining dataset folder or URI (default: the preset's "
                        "built-in synthetic data, made on first use)")
    parser.add_argument("--storage", default=os.environ.get("VIT_SCALING_STORAGE", "runs"),
                        help="checkpoints, data made on first use, reports, the default MLflow store "
                        "(default $VIT_SCALING_STORAGE or ./runs)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="MLflow (default $MLFLOW_TRACKING_URI or SQLite under --storage)")
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="runs at once (default: what the cluster holds now)")
    parser.add_argument("--gpus-per-run", type=int, default=0, help="GPU workers per pretraining run (0: one CPU worker)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="assumed MFU for GPU-hours")
    parser.add_argument("--gpu-peak-tflops", type=float, default=DEFAULT_PEAK_TFLOPS)
    args = parser.parse_args(argv)
    if args.list:
        for name in list_studies():
            study = load_study(name)
            print(f"{name}: {study.title}")
            for preset, p in study.presets.items():
                print(f"  --preset {preset}: {len(study.expand(preset))} runs. {p.description}")
        return 0
    if not args.name:
        parser.error("give a study name (see --list)")
    if not 0 < args.mfu <= 1 or args.gpu_peak_tflops <= 0:
        parser.error("--mfu must be in (0, 1] and --gpu-peak-tflops positive")
    try:
        study = load_study(args.name)
        study.preset(args.preset)
    except ValueError as err:
        parser.error(str(err))
    if args.plan:
        uri = args.tracking_uri
        if uri is None and not store.is_remote(args.storage) and store.exists(store.join(args.storage, "mlflow.db")):
            uri = tracking.default_tracking_uri(args.storage)
        result = plan(study, args.preset, tracking_uri=uri, mfu=args.mfu, peak_tflops=args.gpu_peak_tflops)
        print(json.dumps(result, indent=2) if args.json else format_plan(result))
        return 0
    from pipeline import orchestrate
    try:
        storage = orchestrate.resolve_storage(args.storage)
        uri = args.tracking_uri or tracking.default_tracking_uri(storage)
        orchestrate.check_services(storage, uri)
    except (orchestrate.StudyError, tracking.TrackingError) as err:
        parser.error(str(err))
    try:
        if args.report:
            orchestrate.write_report(study, args.preset, storage=storage, tracking_uri=uri)
            print(f"report: {store.join(orchestrate.report_dir(storage, study.name, args.preset), 'report.md')}")
            return 0
        summary = orchestrate.run_study(study, args.preset, storage=storage, data=args.data, tracking_uri=uri,
                                        max_concurrent=args.max_concurrent, gpus_per_run=args.gpus_per_run)
    except orchestrate.StudyError as err:
        parser.error(str(err))
    except Exception as err:
        problem = tracking.server_problem(uri) if tracking.is_server(uri) else None
        if problem:  # the server went away mid-study
            print(f"error: the MLflow server {uri} stopped answering ({problem}; the study stopped on "
                  f"{type(err).__name__}); what finished is kept: start the server again and run the same "
                  "command to resume", file=sys.stderr)
            return 1
        raise
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return 1 if summary["failed"] or "report_error" in summary else 0

if __name__ == "__main__":
    sys.exit(main())
