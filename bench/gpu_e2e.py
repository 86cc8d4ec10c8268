"""The pipeline on a GPU through the user's own commands (issue 30), from an empty storage:

1. the smoke study with ``--gpus-per-run 1``, then the same command again (it must find it done);
2. the ``gpu`` preset (a paper model of each family at 96 px on 65,536 synthetic images made on the
   machine: pretraining, few-shot and fine-tuning on CUDA), its driver SIGKILLed once the first
   checkpoint is written, then the same command again (it must resume and finish);
3. ``python -m pipeline.pretrain --compile`` on the gpu preset's data.

Then it checks MLflow (one finished run per RunSpec in both studies, both reports written) and
prints, per run, images/s, MFU, the time to the first step, the share of time spent waiting for
data and the peak memory, as the runs logged them (``throughput/*``); a JSON of everything goes to
``--out``. ``--dry``: on the CPU, steps 2 and 1 on one storage with the smoke preset in place of
``gpu`` (killed, resumed, then found done), and step 3 with a nano ViT (CI runs it:
tests/test_bench.py).

    bash bench/gpu_e2e.sh [--out FILE]     # on a GPU machine (budget: 6 minutes)
    bash bench/gpu_e2e.sh --dry            # on a CPU
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import tracking  # noqa: E402
from pipeline.spec import load_study  # noqa: E402

NANO_VIT = json.dumps({"name": "ViT-nano", "family": "vit", "depth": 1, "width": 32, "heads": 2, "mlp_dim": 64,
                       "patch_size": 8})
THROUGHPUT = ("images_per_s", "mfu", "first_step_s", "data_wait", "peak_memory_gib")


class Failed(AssertionError):
    """A step of the check did not do what it must."""


def study_command(preset: str, storage: Path, gpus: int) -> list[str]:
    return [sys.executable, "-m", "pipeline.study", "scaling", "--preset", preset, "--storage", str(storage),
            "--gpus-per-run", str(gpus)]


def run(command: list[str], log: Path, timeout: float) -> tuple[str, float]:
    """``command`` to completion, its output to ``log`` and its standard error to ``log``.err;
    (output, seconds). Fails on a non-zero exit."""
    start = time.perf_counter()
    with open(log, "w") as out, open(errors_of(log), "w") as err:
        done = subprocess.run(command, stdout=out, stderr=err, timeout=timeout, env=local_env(), cwd=log.parent)
    text, seconds = log.read_text(), time.perf_counter() - start
    if done.returncode != 0:
        raise Failed(f"{' '.join(command)} exited {done.returncode} after {seconds:.0f} s:\n{text[-3000:]}\n"
                     f"{errors_of(log).read_text()[-3000:]}")
    say(f"{' '.join(command[2:])}: exit 0 in {seconds:.1f} s")
    return text, seconds


def errors_of(log: Path) -> Path:
    return log.with_suffix(".err")


def run_and_kill(command: list[str], log: Path, storage: Path, timeout: float) -> float:
    """``command`` in its own session, SIGKILLed with every process of that session (its local
    Ray too, as a lost machine) once a pretraining checkpoint is registered; seconds until then."""
    start = time.perf_counter()
    with open(log, "w") as out, open(errors_of(log), "w") as err:
        driver = subprocess.Popen(command, stdout=out, stderr=err, env=local_env(), cwd=log.parent,
                                  start_new_session=True)
    try:
        while not list(storage.glob("pretrain-*/checkpoint_manager_snapshot.json")):
            if driver.poll() is not None:
                raise Failed(f"the study ended (exit {driver.returncode}) before a checkpoint to kill it at:\n"
                             f"{log.read_text()[-3000:]}\n{errors_of(log).read_text()[-3000:]}")
            if time.perf_counter() - start > timeout:
                raise Failed(f"no checkpoint within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
    finally:
        kill_session(driver.pid)
        driver.wait()
    seconds = time.perf_counter() - start
    say(f"{' '.join(command[2:])}: SIGKILLed at its first checkpoint, {seconds:.1f} s in")
    return seconds


def kill_session(session: int) -> None:
    """SIGKILL to every process of ``session``, until none is left."""
    for _ in range(50):
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid() and in_session(int(p), session)]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def in_session(pid: int, session: int) -> bool:
    try:
        return os.getsid(pid) == session
    except OSError:
        return False


def local_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # a local Ray a command, as on a single GPU machine
    return env


def say(text: str) -> None:
    print(f"[gpu_e2e] {text}", flush=True)


def spec_runs(storage: Path, study: str = "scaling") -> dict[str, list]:
    """RunSpec id -> its MLflow runs, all of them (the nested fine-tuning trials and the study run
    left out): a RunSpec with two runs shows as such (tests use it too)."""
    found: dict[str, list] = {}
    for record in tracking.runs_of_study(tracking.default_tracking_uri(storage), study):
        spec_id = record.data.tags.get(tracking.RUN_SPEC_TAG)
        if spec_id and tracking.NESTED_KEY_TAG not in record.data.tags:
            found.setdefault(spec_id, []).append(record)
    return found


def check_study(storage: Path, preset: str) -> list[dict]:
    """One FINISHED MLflow run per RunSpec of ``preset``, pretrained and transferred, and the report
    written; returns each run's label and last ``throughput/*`` values."""
    specs = {spec.id: spec for spec in load_study("scaling").expand(preset)}
    found = spec_runs(storage)
    if set(found) != set(specs) or any(len(v) != 1 for v in found.values()):
        raise Failed(f"{preset}: MLflow runs per RunSpec {({k: len(v) for k, v in found.items()})}, "
                     f"expected one for each of {sorted(specs)}")
    rows = []
    for spec_id, (record,) in found.items():
        tags = record.data.tags
        if record.info.status != "FINISHED" or tags.get("pretrain_status") != "done" \
                or tags.get("transfer_status") != "done":
            raise Failed(f"{preset}: {specs[spec_id].label} is {record.info.status}, pretraining "
                         f"{tags.get('pretrain_status')}, transfer {tags.get('transfer_status')}")
        metrics = record.data.metrics
        rows.append({"run": specs[spec_id].label, "preset": preset,
                     **{k: metrics.get(f"throughput/{k}") for k in THROUGHPUT}})
    report = storage / "reports" / f"scaling-{preset}" / "report.md"
    if not report.is_file():
        raise Failed(f"{preset}: no report at {report}")
    return rows


def study_twice(storage: Path, gpus: int, seconds: dict, first: bool = True) -> list[dict]:
    """The smoke study (``first``), then the same command again, which must find both runs done."""
    command = study_command("smoke", storage, gpus)
    if first:
        _, seconds["smoke"] = run(command, storage.parent / "smoke-1.log", 600)
    again, seconds["smoke again"] = run(command, storage.parent / "smoke-again.log", 300)
    if not re.search(r"\b2 done, 0 to run\b", again):
        raise Failed(f"the smoke study run again did not find its 2 runs done:\n{again[-3000:]}")
    return check_study(storage, "smoke")


def killed_and_resumed(preset: str, storage: Path, gpus: int, result: dict) -> list[dict]:
    """``preset``'s study SIGKILLed at its first checkpoint, then the same command: it must resume.
    ``result["interrupted"]``: each RunSpec's MLflow run statuses as the kill left them."""
    command, work, seconds = study_command(preset, storage, gpus), storage.parent, result["seconds"]
    seconds[f"{preset} until killed"] = run_and_kill(command, work / f"{preset}-killed.log", storage, 600)
    result["interrupted"] = {spec_id: [r.info.status for r in runs] for spec_id, runs in spec_runs(storage).items()}
    resumed, seconds[f"{preset} resumed"] = run(command, work / f"{preset}-resumed.log", 600)
    if not re.search(r"\(([1-9]\d*) to resume\)", resumed) or "resumed from the checkpoint at step" not in resumed:
        raise Failed(f"the {preset} study run again did not resume the killed run from its checkpoint:\n"
                     f"{resumed[-3000:]}")
    return check_study(storage, preset)


def table(rows: list[dict]) -> str:
    def cell(value, spec):
        return "n/a" if value is None else format(value, spec)
    lines = ["| run | img/s | MFU | first step s | waiting for data | peak GiB |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} ({r['preset']}) | {cell(r['images_per_s'], ',.0f')} | {cell(r['mfu'], '.1%')} | "
              f"{cell(r['first_step_s'], '.1f')} | {cell(r['data_wait'], '.0%')} | {cell(r['peak_memory_gib'], '.2f')} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="CPU, the smoke preset twice, a nano ViT")
    parser.add_argument("--out", type=Path, help="a JSON of the results")
    parser.add_argument("--work", type=Path, help="folder for the storages and logs (default: a new temp folder)")
    args = parser.parse_args(argv)
    gpus, preset = (0, "smoke") if args.dry else (1, "gpu")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"{'dry run on the CPU' if args.dry else 'on the GPU'}; storages and logs in {work}")
    result: dict = {"dry": args.dry, "work": str(work), "seconds": {}}
    main_storage = work / f"{preset}-killed"
    rows = [] if args.dry else study_twice(work / "smoke", gpus, result["seconds"])
    rows += killed_and_resumed(preset, main_storage, gpus, result)
    if args.dry:  # the smoke study's second command, on the storage the kill left finished
        rows = study_twice(main_storage, gpus, result["seconds"], first=False)

    data = main_storage / "data" / load_study("scaling").preset(preset).dataset.name
    model, size, batch = (NANO_VIT, 16, 32) if args.dry else ("ViT-S/16", 96, 256)
    pretrain = [sys.executable, "-m", "pipeline.pretrain", "--model", model, "--data", str(data), "--steps", "60",
                "--batch-size", str(batch), "--image-size", str(size), "--base-lr", "0.001", "--warmup-steps", "5",
                "--log-every", "20", "--checkpoint-every", "60", "--val-every", "60", "--compile",
                "--storage", str(work / "pretrain"), *(["--gpu"] if gpus else [])]
    output, result["seconds"]["pretrain --compile"] = run(pretrain, work / "pretrain.log", 600)
    summary = json.loads(output[output.rindex("\n{") + 1:])
    throughput = summary.get("throughput") or {}
    if summary.get("done") is not True or throughput.get("compiled") is not True:
        raise Failed(f"pipeline.pretrain --compile did not finish compiled: {summary}")
    rows.append({"run": f"{'ViT-nano' if args.dry else 'ViT-S/16'} / 60 steps, compiled", "preset": "pretrain",
                 **{k: throughput.get(k) for k in THROUGHPUT}})

    result["runs"] = rows
    print(table(rows))
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items()))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    say("passed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as err:
        say(f"FAILED: {err}")
        sys.exit(1)
