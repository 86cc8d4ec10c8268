"""Running a study on Ray: every RunSpec of a preset chains pretraining then transfer, at most
``max_concurrent`` at once, with progress (runs done/total, ETA), one study-level MLflow run that
groups the runs and holds the report, and idempotent re-runs.

A study can be killed at any point and submitted again with the same command. Three stable names
make that safe:

- MLflow: a RunSpec's run is found again by its id (``run_spec_id`` tag), never created twice, and
  marked FINISHED only when pretraining and every transfer stage are done. Re-running skips it then.
- Ray Train: the pretraining run folder is named after the RunSpec id, so an interrupted run resumes
  from its last registered checkpoint; a finished pretraining (tag ``pretrain_status=done``) is not
  started again.
- Transfer: metrics the run already holds are not recomputed, and finished fine-tuning trials
  (nested runs) are reused rather than trained again.

Each run chain is a Ray task that holds no CPU itself (so chains never starve the work they launch):
it starts a TorchTrainer (``gpus_per_run`` GPU workers, or one CPU worker, whose rank 0 also runs the
final few-shot protocol) and the Ray Tune grid. On an autoscaling cluster the queued GPU work is what
scales GPU nodes up.

The data of presets with a ``synth`` dataset (``tiny``, ``smoke``) is generated on first use under
``<storage>/data/<name>``, while the study starts up, and reused; built-in downstream sets (``digits``) likewise.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from pipeline import analysis, console, hardware, trace, tracking
from pipeline import storage as store
from pipeline.analysis.descriptions import experiment_description
from pipeline.chain import ChainContext, run_chain
from pipeline.exits import Interrupted, check_interrupt
from pipeline.planning import plan as study_plan
from pipeline.preflight import (StudyError, check_services, prepare_data, prepare_downstream, resolve_storage,
                                synth_started)
from pipeline.raycluster import unplaceable
from pipeline.spec import Preset, RunSpec, Study
from pipeline.transfer import expected_metrics


def default_concurrency(gpus_per_run: int) -> int:
    """Runs that fit the cluster as it is now (at least 1): ``gpus_per_run`` GPUs each, or one CPU
    worker each plus one run ahead. The run ahead starts its Train controller, MLflow run and
    processes (which hold no CPU) while the others compute, and Ray holds its worker, Tune trials
    and probes until a CPU is free: the tiny study on 2 cores took 9 min 22 s with 3 runs at once,
    10 min 18 s and 11 min 24 s with 2 (bench/RESULTS.md). On an autoscaling cluster give
    --max-concurrent."""
    import ray
    resources = ray.cluster_resources()
    if gpus_per_run:
        return max(1, int(resources.get("GPU", 0) // gpus_per_run))
    return max(1, int(resources.get("CPU", 1))) + 1



# ----------------------------------------------------------------------------- the study

def run_cost(seconds: dict[str, float], exaflops: dict[str, float]) -> Callable[[float], float] | None:
    """A run's seconds as a function of its exaFLOPs, from the runs finished so far: a fixed cost
    plus a cost per exaFLOP, fitted by non-negative least squares once two runs of different
    compute have finished (tiny runs are mostly start-up time, paper-scale runs mostly compute);
    with one compute size only, half of each. None before any run has finished."""
    import numpy as np
    from scipy.optimize import nnls
    if not seconds:
        return None
    x = np.array([exaflops[k] for k in seconds])
    y = np.array(list(seconds.values()))
    if np.ptp(x) > 0:
        (fixed, per_exaflop), _ = nnls(np.stack([np.ones_like(x), x], axis=1), y)
    else:
        fixed = y.mean() / 2 if x[0] > 0 else y.mean()
        per_exaflop = y.mean() / 2 / x[0] if x[0] > 0 else 0.0
    return lambda e: fixed + per_exaflop * e


class StudyProgress:
    """Runs done/total and an ETA. The ETA is the predicted seconds of the runs left (:func:`run_cost`
    fitted on this session's finished runs, less what running ones have already spent), shared by
    ``limit`` runs at once, and never less than the longest of them."""

    def __init__(self, specs: list[RunSpec], exaflops: dict[str, float], done: set[str], board, limit: int):
        self.exaflops, self.board, self.limit = exaflops, board, limit
        self.total, self.start = len(specs), time.perf_counter()
        self.done, self.failed = set(done), set()
        self.left = {s.id for s in specs} - self.done
        self.seconds: dict[str, float] = {}
        self.started: dict[str, float] = {}

    def eta(self) -> float | None:
        cost = run_cost(self.seconds, self.exaflops)
        if cost is None or not self.left:
            return None if self.left else 0.0
        now = time.perf_counter()
        remaining = [max(cost(self.exaflops[k]) - (now - self.started.get(k, now)), 0.0) for k in self.left]
        return max(sum(remaining) / self.limit, max(remaining))

    def line(self, running: int, note: str = "") -> None:
        eta = self.eta()
        failed = f", {len(self.failed)} failed" if self.failed else ""
        self.board.line(f"[study] {len(self.done)}/{self.total} runs done{failed}, {running} running, elapsed "
                        f"{console.clock(time.perf_counter() - self.start)}, ETA {'-' if eta is None else console.clock(eta)}{note}")

    def launched(self, spec: RunSpec) -> None:
        self.started[spec.id] = time.perf_counter()

    def finished(self, spec: RunSpec, ok: bool, seconds: float | None = None) -> None:
        (self.done if ok else self.failed).add(spec.id)
        self.left.discard(spec.id)
        if ok and seconds is not None:
            self.seconds[spec.id] = seconds
        self.board.run_ended(spec.label)


@dataclass(frozen=True)
class StudyOptions:
    """How a study runs: runs at once (None: what the cluster holds now), GPU workers per run (0:
    one CPU worker), whether to write the report, seconds between progress lines while waiting."""
    max_concurrent: int | None = None
    gpus_per_run: int = 0
    report: bool = True
    heartbeat_s: float = 60.0
    on_bad_row: str = "raise"   # pretraining rows that cannot be read: "raise" | "skip" (counted)
    quiet: bool = False         # the study's own lines only (no steps, no transfer results)
    bars: bool | None = None    # a progress bar per run (None: when stdout is a terminal)
    system_metrics: bool = True  # CPU, memory (and GPU) of pretraining workers in MLflow
    forecast: tuple[str, ...] = ()  # configurations the report forecasts beside the preset's (MODEL@LENGTH)
    compile: str = "auto"       # torch.compile of pretraining: auto (on a GPU when it repays) | on | off
    cpus_per_gpu: int | None = None  # CPUs a GPU worker asks for (None: from the cluster's GPU nodes)

    def check(self) -> None:
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise StudyError(f"--max-concurrent must be at least 1, got {self.max_concurrent}")
        if self.gpus_per_run < 0:
            raise StudyError(f"--gpus-per-run must be 0 (CPU) or more, got {self.gpus_per_run}")
        if self.cpus_per_gpu is not None and self.cpus_per_gpu < 1:
            raise StudyError(f"--cpus-per-gpu must be at least 1, got {self.cpus_per_gpu}")


POLL_S = 1.0  # seconds between looks at the chains (and at Ctrl-C) while they run

RUN_COLUMNS = ("model", "subset", "length", "steps", "epochs", "gflops")  # the runs table's view in MLflow


def run_study(study: Study, preset: str, *, storage: str, data: str | None = None, tracking_uri: str | None = None,
              options: StudyOptions = StudyOptions()) -> dict[str, Any]:
    """Run (or finish) every run of ``study``/``preset``. Returns a summary; runs that failed are
    listed there, in the report and on their MLflow runs. The console shows the study's lines and
    what its runs say (``pipeline.console``)."""
    options.check()
    trace.mark("study started")
    p = study.preset(preset)
    storage = resolve_storage(storage)
    uri = tracking_uri or tracking.default_tracking_uri(storage)
    check_services(storage, uri)
    if data is not None:
        data = prepare_data(p, data, storage)  # checked before MLflow is touched
    # else the preset's data is built in (or it says to give --data): made on first use while the study starts
    with contextlib.nullcontext() if data is not None else synth_started(p, storage):
        return start_study(study, preset, p, storage, data, uri, options)


def start_study(study: Study, preset: str, p: Preset, storage: str, data: str | None, uri: str,
                options: StudyOptions) -> dict[str, Any]:
    """``run_study`` from MLflow on: the study run, Ray, the data, then the chains (``drive_study``)."""
    tracking.init_store(uri)
    trace.mark("study: MLflow store ready")
    planned = study_plan(study, preset, tracking_uri=None)  # compute only: the runs are read once below
    trace.mark("study: compute counted")
    study_run = tracking.start_study_run(
        uri, study.name, preset, artifact_root=store.join(storage, "artifacts"),
        params={"study": study.name, "preset": preset, "runs": len(planned["runs"]), "dataset": p.dataset.name,
                "planned_exaflops": planned["totals"]["exaflops"]})
    # One driver per study: a second one started while this one lives is refused with its name
    # (after a kill, the next one takes over at once: a dead holder's lease is taken).
    bars = sys.stderr.isatty() and not options.quiet  # data made on first use: a bar in a terminal only
    with tracking.lease(uri, study_run, what=f"study {study.name}/{preset}"), interrupts_said(uri, study.name, study_run):
        view = record_study(study, preset, uri, study_run)
        downstream = prepare_downstream(p.transfer, storage, bars)  # a missing set is said before Ray starts
        previous = tracking.spec_runs(uri, study.name)
        specs = study.expand(preset)
        on_ray = len(done_ids(specs, previous)) < len(specs)   # a study found done starts no Ray (seconds a re-run)
        trace.mark("study: recorded in MLflow")
        with console.Board(quiet=options.quiet, bars=options.bars, on_ray=on_ray) as board:
            trace.mark("study: Ray up")
            if on_ray:
                board.line(f"[study] {ray_where()}")
            missing = unplaceable({"GPU": options.gpus_per_run}) if options.gpus_per_run and on_ray else None
            if missing is not None:   # every run would wait for it forever, saying nothing
                tracking.finish_run(uri, study_run, "FAILED")
                raise StudyError(f"each run needs {missing}: none can ever start here; give --gpus-per-run 0 "
                                 "(CPU workers), or run on a cluster that has them (RAY_ADDRESS)")
            board.line(f"[study] MLflow {uri}; in its UI, the runs with the columns that matter: {view}")
            ctx = ChainContext(data_path=data or prepare_data(p, None, storage, bars, emit=board.line),
                               storage=storage, tracking_uri=uri, downstream=downstream, transfer=p.transfer,
                               gpus=options.gpus_per_run, study_run_id=study_run, on_bad_row=options.on_bad_row,
                               system_metrics=options.system_metrics, compile=options.compile,
                               cpus_per_gpu=hardware.gpu_worker_cpus(options.gpus_per_run if on_ray else 0,
                                                                        options.cpus_per_gpu, board.line))
            trace.mark("study: data ready")
            return drive_study(study, preset, ctx, planned, previous, options, board)


def record_study(study: Study, preset: str, uri: str, study_run: str) -> str:
    """What the study runs, in MLflow: on its study run, the study file as it was (``study/<file>``)
    and the preset's runs as resolved RunSpecs with their ids (``study/runs.json``); on its
    experiment, the runs-table view with the columns that matter and a description that links it.
    Returns the view's address in MLflow's UI."""
    if study.file is not None:
        tracking.log_files(uri, study_run, [study.file], "study")
    tracking.log_json(uri, study_run, {"study": study.name, "preset": preset,
                                       "runs": [{"id": s.id, "label": s.label, **s.model_dump(mode="json")}
                                                for s in study.expand(preset)]}, "study/runs.json")
    metrics = ["compute/gflops", "pretrain/val_prec1_best", *expected_metrics(study.preset(preset).transfer)]
    view = tracking.set_runs_view(uri, study.name, preset, params=RUN_COLUMNS, metrics=metrics,
                                  order_by="compute/gflops")
    tracking.describe_experiment(uri, study.name, experiment_description(study.name, study.title) +
                                 f" These columns, sorted by compute: [the {preset} preset's view]({view}).")
    return view


def ray_where() -> str:
    """Which Ray the study runs on, and where what its workers print goes."""
    import ray
    address = os.environ.get("RAY_ADDRESS")
    where = f"the Ray cluster at {address}" if address and address not in ("auto", "local") else "Ray"
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    return (f"on {where} ({nodes} node(s), {int(ray.cluster_resources().get('CPU', 0))} CPUs); the workers' own "
            "output and Ray's notes are in Ray's logs (/tmp/ray/session_latest/logs on each node)")


def done_ids(specs: list[RunSpec], previous: dict[str, tracking.RunRecord]) -> set[str]:
    """The RunSpecs that MLflow (``previous``: tracking.spec_runs) holds done: pretrained and transferred."""
    return {s.id for s in specs if s.id in previous and previous[s.id].status == tracking.Status.DONE}


def drive_study(study: Study, preset: str, ctx: ChainContext, planned: dict[str, Any],
                previous: dict[str, tracking.RunRecord], options: StudyOptions, board: console.Board) -> dict[str, Any]:
    """The study's runs on Ray (those not done yet in ``previous``, the study's runs in MLflow), then its report."""
    uri, study_run, gpus, specs = ctx.tracking_uri, ctx.study_run_id, ctx.gpus, study.expand(preset)
    done = done_ids(specs, previous)
    elsewhere = checkpoints_elsewhere([previous[s.id] for s in specs if s.id in previous], ctx.storage)
    if elsewhere:
        board.line(f"[study] {len(elsewhere)} of these runs are in MLflow with their checkpoints outside --storage "
                   f"{ctx.storage} (e.g. {elsewhere[0]}): a study's runs are found by RunSpec in its MLflow "
                   "experiment, whatever storage; done ones are not trained again, the others resume from those "
                   "checkpoints. To train anew, use another MLflow store (--tracking-uri) or study name")
    exaflops = {r["id"]: r["exaflops"] or 0.0 for r in planned["runs"]}
    # the most compute first (longest-processing-time order): the study does not end with its
    # longest run alone on the cluster while the rest of it idles
    todo = sorted((s for s in specs if s.id not in done), key=lambda s: -exaflops.get(s.id, 0.0))
    limit = (options.max_concurrent or default_concurrency(gpus)) if todo else 0
    progress = StudyProgress(specs, exaflops, done, board, limit)
    try:  # from the line that says what will run to the end of the report, Ctrl-C is answered by `stopped`
        how = (f"at most {limit} at once, {f'{gpus} GPU(s)' if gpus else 'one CPU worker'} per run" if todo else
               "nothing to train, Ray not started")
        board.line(f"[study] {study.name}/{preset}: {len(specs)} runs, {len(done)} done, {len(todo)} to run "
                   f"({sum(s.id in previous for s in todo)} to resume); {how}; MLflow {uri}")
        results, failures = run_chains(todo, ctx, previous, limit, progress, options.heartbeat_s) if todo else ({}, {})
        check_interrupt()
        summary = {"study": study.name, "preset": preset, "runs": len(specs), "done": sorted(progress.done),
                   "failed": failures, "skipped": sorted(done), "study_run_id": study_run, "tracking_uri": uri,
                   "storage": ctx.storage, "results": results}
        return finish_study(study, preset, summary, report=options.report, emit=board.line,
                            forecast=options.forecast)
    except KeyboardInterrupt:
        stopped(uri, study.name, {s.id for s in todo}, study_run, board.line)
        raise Interrupted from None


def checkpoints_elsewhere(records: list[tracking.RunRecord], storage: str) -> list[str]:
    """The checkpoints of ``records`` that lie outside ``storage`` (another study's storage sharing this
    MLflow store): the study uses them, which a new ``--storage`` alone does not change."""
    root = store.resolve(storage).rstrip("/") + "/"
    return [r.checkpoint_uri for r in records if r.checkpoint_uri and not r.checkpoint_uri.startswith(root)]


@contextlib.contextmanager
def interrupts_said(uri: str, study: str, study_run: str):
    """Ctrl-C before the runs are launched (data, Ray's start): the study run marked KILLED and one
    line; later ones are answered by :func:`drive_study`, which knows the runs it stopped."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        stopped(uri, study, set(), study_run, print)
        raise Interrupted from None


def stopped(uri: str, study: str, spec_ids: set[str], study_run: str, emit: Callable[[str], None]) -> None:
    """After Ctrl-C: the runs it stopped marked KILLED (best effort: a second Ctrl-C or an MLflow
    error skips it), then the one line that says how to resume."""
    try:
        count = tracking.mark_killed(uri, study, spec_ids, study_run)
        killed = f" ({count} run(s) marked KILLED in MLflow)" if count else ""
    except (Exception, KeyboardInterrupt):
        killed = ""
    emit(f"[study] interrupted{killed}: run the same command again to resume (finished runs are kept)")


def run_chains(todo: list[RunSpec], ctx: ChainContext, previous: dict[str, tracking.RunRecord], limit: int,
               progress: StudyProgress, heartbeat_s: float) -> tuple[dict[str, Any], dict[str, str]]:
    """Every run of ``todo`` as a chain task, at most ``limit`` at once; a progress line after each
    and every ``heartbeat_s`` while waiting. Returns ({id: result}, {id: failure})."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    # Chains hold no CPU and live on the driver's node (the head on a cluster), with the Train
    # controllers they start (Ray Train places those next to their caller): a preempted worker
    # node ends only workers, whose runs resume from their last checkpoint on another node.
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    chain = ray.remote(num_cpus=0, max_retries=0, scheduling_strategy=here)(run_chain)
    pending: dict[Any, RunSpec] = {}
    queue, failures, results = list(todo), {}, {}

    def launch() -> None:
        while queue and len(pending) < limit:
            spec = queue.pop(0)
            pending[chain.remote(spec, ctx, previous.get(spec.id))] = spec
            progress.launched(spec)

    launch()
    said = time.monotonic()
    while pending:
        # short waits: a Ctrl-C that Ray's wait swallowed is seen within a second (exits.check_interrupt)
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=min(POLL_S, heartbeat_s))
        check_interrupt()
        if not ready and time.monotonic() - said >= heartbeat_s:
            progress.line(len(pending))
            said = time.monotonic()
        for ref in ready:
            spec = pending.pop(ref)
            try:
                results[spec.id] = ray.get(ref)
                progress.finished(spec, True, results[spec.id]["seconds"])
                note = f" ({spec.label} finished in {console.clock(results[spec.id]['seconds'])})"
            except Exception as err:  # one failed run does not stop the study
                failures[spec.id] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"
                progress.finished(spec, False)
                note = f" ({spec.label} [{spec.id}] FAILED: {failures[spec.id]})"
            launch()
            progress.line(len(pending), note)
            said = time.monotonic()
    return results, failures


def finish_study(study: Study, preset: str, summary: dict[str, Any], *, report: bool,
                 emit: Callable[[str], None], forecast: tuple[str, ...] = ()) -> dict[str, Any]:
    """Log the study's counts, write its report, mark the study run FINISHED (FAILED if a run or
    the report failed) and say how it went."""
    uri, study_run, storage = summary["tracking_uri"], summary["study_run_id"], summary["storage"]
    done, failures = summary["done"], summary["failed"]
    complete = not failures and len(done) == summary["runs"]
    attempt = tracking.last_step(uri, study_run, "runs_done") + 1   # one point per run of the command
    tracking.MetricLogger(uri, study_run).log_now(attempt, {"runs_done": len(done), "runs_failed": len(failures)})
    if report:
        emit("[study] writing the report")
        try:
            summary["report"] = write_study_report(study, preset, storage=storage, tracking_uri=uri, study_run_id=study_run,
                                             forecast=forecast)
            emit(f"[study] report: {store.join(report_dir(storage, study.name, preset), 'report.md')} (and in the MLflow run "
                 f"'study {study.name} / {preset}')")
        except Exception as err:  # the runs are safe in MLflow; only the report is missing
            summary["report_error"] = f"{type(err).__name__}: {err}"
            complete = False
            emit(f"[study] the report failed ({summary['report_error']}); the runs are recorded: fix the cause and "
                 f"run `python -m pipeline.study {study.name} --preset {preset} --report`")
    tracking.finish_run(uri, study_run, "FINISHED" if complete else "FAILED")
    emit(f"[study] {study.name}/{preset}: {len(done)}/{summary['runs']} runs done"
         + (f", {len(failures)} failed: {retry_advice(failures)}" if failures else ""))
    return summary


# Errors that come back the same on every try: the data, the study file or a checkpoint must change first
PERMANENT_ERRORS = ("DataError", "ConversionError", "CheckpointError", "ValueError", "StudyError")


def retry_advice(failures: dict[str, str]) -> str:
    """What to do about failed runs: run again (a lost node, an outage), or first fix what they say."""
    kinds = [reason.split(":", 1)[0] for reason in failures.values()]
    if all(any(name in kind for name in PERMANENT_ERRORS) for kind in kinds):
        return "fix what each says above (running again alone fails the same way), then run the same command"
    return "run the same command again to retry them"


def report_dir(storage: str, study: str, preset: str) -> str:
    return store.join(storage, "reports", f"{study}-{preset}")


def write_study_report(study: Study, preset: str, *, storage: str, tracking_uri: str,
                 study_run_id: str | None = None, forecast: tuple[str, ...] = ()) -> dict[str, str]:
    """The study's report (pipeline.analysis) in ``<storage>/reports/<study>-<preset>``, also logged
    to the study-level MLflow run; ``forecast``: configurations it forecasts beside the preset's
    (``MODEL@LENGTH``). Returns {file name: location}."""
    if study_run_id is None:
        study_run_id = tracking.find_study_run(tracking_uri, study.name, preset)
    target = report_dir(storage, study.name, preset)
    with store.folder_to_write(target) as folder:
        paths = analysis.write_report(study, preset, tracking_uri=tracking_uri, out_dir=folder,
                                      study_run_id=study_run_id, options=analysis.ReportOptions(forecast=forecast))
    return {name: store.join(target, path.name) for name, path in paths.items()}

