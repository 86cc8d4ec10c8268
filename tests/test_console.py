"""The console's parts that need no Ray: Ray's noise kept off the driver's stdout, and the study's
ETA, fitted on what finished runs cost (the end-to-end console is checked on a real smoke study in
tests/test_orchestrate.py)."""
from __future__ import annotations

import io

import pytest

from pipeline.console import NoiseFilter
from pipeline.orchestrate import StudyProgress, run_cost
from pipeline.spec import load_study


def test_ray_noise_is_dropped_and_every_other_line_kept_whole():
    out = io.StringIO()
    stream = NoiseFilter(out)
    stream.write("[study] 1/9 runs done")
    stream.write("\n(raylet) WARNING: 8 PYTHON worker processes have been started on node: x with address: y\n")
    stream.write("[ViT-micro-S / full / 200 steps] step 10/200 loss 3.1\n[Hy")   # a line in two writes
    stream.write("brid] done\n(TrainController) Actor with class name: 'PreemptionWatcher' has constructor args\n")
    stream.close_filter()
    assert out.getvalue() == ("[study] 1/9 runs done\n[ViT-micro-S / full / 200 steps] step 10/200 loss 3.1\n"
                              "[Hybrid] done\n")


def test_run_cost_recovers_a_fixed_cost_plus_a_cost_per_exaflop():
    exaflops = {"a": 1.0, "b": 2.0, "c": 4.0}
    cost = run_cost({k: 10 + 5 * e for k, e in exaflops.items()}, exaflops)
    assert cost(8.0) == pytest.approx(50.0)
    assert run_cost({}, exaflops) is None
    one = run_cost({"a": 30.0}, exaflops)   # one compute size: half fixed, half per exaFLOP
    assert one(1.0) == pytest.approx(30.0) and one(3.0) == pytest.approx(60.0)


class Lines:
    def __init__(self) -> None:
        self.said: list[str] = []

    def line(self, text: str) -> None:
        self.said.append(text)

    def run_ended(self, run: str) -> None:
        pass


def test_eta_is_the_remaining_runs_predicted_cost_shared_by_the_runs_at_once():
    specs = load_study("scaling").expand("tiny")
    exaflops = {s.id: float(i + 1) for i, s in enumerate(specs)}   # run i costs 10 + 5 (i + 1) s
    board = Lines()
    progress = StudyProgress(specs, exaflops, set(), board, limit=3)
    assert progress.eta() is None                      # nothing finished: no estimate yet
    for spec in specs[:2]:
        progress.finished(spec, True, 10 + 5 * exaflops[spec.id])
    left = [10 + 5 * exaflops[s.id] for s in specs[2:]]
    assert progress.eta() == pytest.approx(max(sum(left) / 3, max(left)))
    progress.line(0)
    assert board.said[-1].startswith(f"[study] 2/{len(specs)} runs done, 0 running")
    for spec in specs[2:]:
        progress.finished(spec, True, 10 + 5 * exaflops[spec.id])
    assert progress.eta() == 0.0


def test_failed_runs_are_retried_only_where_a_retry_can_help():
    """Issue 33, probe 8: runs that failed on their data (or a subset larger than it) fail the same way
    on a re-run; the study's last line says to fix them first, not to run again."""
    from pipeline.orchestrate import retry_advice
    assert retry_advice({"a": "RayTaskError(DataError): shard x: checksum does not match",
                         "b": "ValueError: subset '30M' of d has 2,000 images"}).startswith("fix what each says")
    assert retry_advice({"a": "DataError: bad", "b": "RayActorError: the node died"}) == \
        "run the same command again to retry them"
