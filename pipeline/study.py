"""Run a scaling study, or show its plan, report or the next runs to make.

Without --plan it runs the study on Ray: every run pretrains, then transfers (few-shot probes,
fine-tuning); the same command again skips finished runs and resumes the others. The last stage
writes the report; --report writes only that. The console shows one line per event, each named by
its run (a progress bar per run in a terminal); Ray's own output stays in Ray's logs.

--plan launches nothing. It prints every run of the study: id, model, family, subset and its image
count, epochs, params, pretraining exaFLOPs, the GPU-hours those need at a stated MFU and GPU peak,
and each run's status in MLflow (done / partial / failed / new). With --data it counts that
dataset's rows and classes (from its manifest alone, as pretraining does) rather than the preset's.
--list shows the studies and their presets.

--forecast MODEL@LENGTH (repeatable) adds a configuration to the report's forecasts, beside the
preset's runs not yet finished and its `forecast:` entries: a registry model (ViT-H/14) or one of
the preset's own models, at a length in epochs (14ep) or steps (800steps).

--suggest K launches nothing either. From the runs so far and the preset's candidates grid, it
prints the K runs that most narrow the interval of the compute multiplier (or of each family's
predicted accuracy, where no multiplier is available), with their exaFLOPs and GPU-hours.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from pipeline import console, exits, hardware, preflight, tracking
from pipeline import storage as store
from pipeline.data import DataError
from pipeline.planning import DEFAULT_MFU, DEFAULT_PEAK_TFLOPS, format_plan, plan
from pipeline.spec import list_studies, load_study, named_entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="study name (see --list) or a study .yaml file")
    parser.add_argument("--preset", default="tiny", help="which of the study's presets (see --list; default tiny)")
    parser.add_argument("--list", action="store_true", help="list studies and presets")
    parser.add_argument("--plan", action="store_true", help="print the runs, their compute and status; launch nothing")
    parser.add_argument("--json", action="store_true", help="print --plan, --suggest or the run's summary as JSON")
    parser.add_argument("--report", action="store_true", help="write the report of the runs so far; launch nothing")
    parser.add_argument("--suggest", type=int, metavar="K", help="print the K candidate runs that most narrow "
                        "the compute multiplier's interval; launch nothing")
    parser.add_argument("--forecast", action="append", default=[], metavar="MODEL@LENGTH",
                        help="forecast this configuration's accuracy in the report (repeatable), e.g. "
                        "'ViT-H/14@14ep' or 'ViT-micro-M@800steps'")
    parser.add_argument("--data", default=None, help="pretraining dataset folder or URI (default: the preset's "
                        "built-in synthetic data, made on first use); with --plan, the plan counts its rows and classes")
    parser.add_argument("--storage", default=os.environ.get("VIT_SCALING_STORAGE", "runs"),
                        help="checkpoints, data made on first use, reports, the default MLflow store "
                        "(default $VIT_SCALING_STORAGE or ./runs)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="MLflow (default $MLFLOW_TRACKING_URI or SQLite under --storage)")
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="runs at once (default: the cluster's GPUs / --gpus-per-run, or its CPUs + 1 for CPU runs)")
    parser.add_argument("--gpus-per-run", type=int, default=0, help="GPU workers per pretraining run (0: one CPU worker)")
    parser.add_argument("--cpus-per-gpu", type=int, help="CPUs each GPU worker asks for, most of them decoding images "
                        "(default: what the cluster's GPU nodes hold per GPU, less one; give it on an autoscaling "
                        "cluster whose GPU nodes are not up yet)")
    parser.add_argument("--compile", nargs="?", const="on", default="auto", choices=hardware.COMPILE_MODES,
                        help="torch.compile pretraining: auto (default: on a GPU when a run is long enough to repay "
                        "the compile time), on (--compile alone) or off")
    parser.add_argument("--on-bad-row", choices=("raise", "skip"), default="raise",
                        help="a pretraining row that cannot be decoded or labelled: fail the run at once (raise), or "
                        "drop it and count it (skip)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="assumed MFU for GPU-hours")
    parser.add_argument("--gpu-peak-tflops", type=float, default=DEFAULT_PEAK_TFLOPS,
                        help=f"GPU peak for GPU-hours (default {DEFAULT_PEAK_TFLOPS:g}, an H100's dense bf16)")
    parser.add_argument("--quiet", action="store_true", help="show the study's own lines only (runs started, "
                        "finished, failed; the report), not every step and transfer result")
    parser.add_argument("--no-system-metrics", dest="system_metrics", action="store_false",
                        help="do not log the pretraining workers' CPU, memory and GPU use to MLflow (every 10 s)")
    exits.add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console.quiet_libraries()
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
        for text in args.forecast:   # a typo is said now, not after the study ran
            named_entry(text, study.preset(args.preset))
        study.preset(args.preset)
    except ValueError as err:
        parser.error(str(err))
    if args.suggest is not None:
        return suggest_command(parser, args, study)
    if args.plan:
        uri = args.tracking_uri or tracking.existing_default_uri(args.storage)
        try:
            result = plan(study, args.preset, tracking_uri=uri, mfu=args.mfu, peak_tflops=args.gpu_peak_tflops,
                          data=args.data, no_store=uri is None and not store.is_remote(args.storage))
        except (DataError, ValueError, OSError) as err:
            if args.data is None:
                raise
            parser.error(str(err) if str(err).startswith("--data") else f"--data {args.data}: {err}")
        print(json.dumps(result, indent=2) if args.json else format_plan(result))
        return 1 if result["status_error"] else 0  # the statuses asked for could not be read
    from pipeline import orchestrate   # inside: +0.9 s of imports (pretraining, transfer, analysis) --plan skips
    try:
        storage = preflight.resolve_storage(args.storage)
        uri = args.tracking_uri or tracking.default_tracking_uri(storage)
        if args.report:   # a study checks its services itself (run_study), once
            preflight.check_services(storage, uri)
    except (preflight.StudyError, tracking.TrackingError) as err:
        parser.error(str(err))
    try:
        if args.report:
            orchestrate.write_study_report(study, args.preset, storage=storage, tracking_uri=uri,
                                           forecast=tuple(args.forecast))
            print(f"report: {store.join(orchestrate.report_dir(storage, study.name, args.preset), 'report.md')}")
            return 0
        options = orchestrate.StudyOptions(max_concurrent=args.max_concurrent, gpus_per_run=args.gpus_per_run,
                                           on_bad_row=args.on_bad_row, quiet=args.quiet,
                                           system_metrics=args.system_metrics, forecast=tuple(args.forecast),
                                           compile=args.compile, cpus_per_gpu=args.cpus_per_gpu)
        summary = orchestrate.run_study(study, args.preset, storage=storage, data=args.data, tracking_uri=uri,
                                        options=options)
    except preflight.StudyError as err:
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

def suggest_command(parser: argparse.ArgumentParser, args: argparse.Namespace, study) -> int:
    """``--suggest K``: the advice on the runs so far (read from MLflow, like ``--plan``)."""
    from dataclasses import asdict
    from pipeline.analysis import suggest as advice   # inside: +0.8 s of imports (pandas, SciPy) --plan skips
    if args.suggest < 1:
        parser.error("--suggest takes the number of runs to suggest, 1 or more")
    uri = args.tracking_uri or tracking.existing_default_uri(args.storage)
    try:
        result = advice.study_advice(study, args.preset, args.suggest, tracking_uri=uri, mfu=args.mfu,
                                     peak_tflops=args.gpu_peak_tflops)
    except advice.SuggestError as err:
        parser.error(str(err))
    print(json.dumps(asdict(result), indent=2, default=str) if args.json else advice.format_advice(result))
    return 0


if __name__ == "__main__":
    exits.end(exits.run(main))
