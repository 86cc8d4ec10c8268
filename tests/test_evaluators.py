"""Transfer protocols are pluggable: a new one is a class and a registry entry, turned on from the
study file's ``transfer.protocols``; the study's downstream sets, the report's expected metrics
and the evaluation loop (logging, skipping what a run already holds) then include it."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipeline import tracking
from pipeline.data import subset_size
from pipeline.data.synth import SynthSpec, generate
from pipeline.spec import TransferPlan
from pipeline.transfer import Evaluator, FewShot, FineTune, Target, registry


@dataclass(frozen=True)
class TestRows(Evaluator):
    """A toy protocol: the test split's row count of each dataset (and how often it ran)."""
    __test__ = False  # not a pytest test class
    name = "rows"
    datasets: tuple[str, ...] = ()
    calls: list = None

    def metric_keys(self, dataset: str) -> list[str]:
        return [f"rows/{dataset}/test"]

    def run(self, target: Target, dataset: str, path: str) -> dict[str, float]:
        self.calls.append(dataset)
        return {f"rows/{dataset}/test": float(subset_size(path, split="test"))}


@pytest.fixture()
def rows_registered(monkeypatch):
    monkeypatch.setitem(registry.EVALUATORS, "rows", TestRows)


def test_study_file_turns_on_builtin_and_registered_protocols(rows_registered):
    plan = TransferPlan(fewshot=["digits"], shots=[1, 5], finetune=["pets"], finetune_steps=7,
                        protocols={"rows": {"datasets": ["digits", "synth"], "calls": []}})
    fewshot, finetune, rows = registry.evaluators_for(plan)
    assert isinstance(fewshot, FewShot) and fewshot.datasets == ("digits",) and fewshot.settings.shots == (1, 5)
    assert isinstance(finetune, FineTune) and finetune.settings["pets"].steps == 7  # Table 4's row, overridden
    assert finetune.settings["pets"].lrs == (0.001, 0.003, 0.01, 0.03)
    assert isinstance(rows, TestRows) and rows.datasets == ["digits", "synth"]
    assert registry.datasets_of([fewshot, finetune, rows]) == ["digits", "pets", "synth"]
    assert registry.expected_metrics(plan) == ["fewshot/digits/1shot", "fewshot/digits/5shot", "finetune/pets/acc",
                                               "rows/digits/test", "rows/synth/test"]


def test_an_unknown_protocol_is_named_with_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown protocol\(s\) \['knn'\]; registered: \['fewshot', 'finetune'\]"):
        registry.evaluators_for(TransferPlan(protocols={"knn": {"datasets": ["digits"]}}))


def test_evaluate_logs_each_result_and_skips_what_the_run_holds(rows_registered, tmp_path):
    data = generate(tmp_path / "small", SynthSpec(images=40, classes=4, image_size=16, task="novel", test_images=12),
                    executor="inline", progress=False)
    uri = tracking.default_tracking_uri(tmp_path)
    tracking.init_store(uri)
    run_id = tracking.start_run(uri, "test-evaluators", "spec0", tags={}, params={})
    calls: list = []
    plan = TransferPlan(protocols={"rows": {"datasets": ["small"], "calls": calls}})
    target = Target("(no checkpoint)", str(tmp_path), tracking_uri=uri, run_id=run_id)
    first = registry.evaluate(target, registry.evaluators_for(plan), {"small": data}, skip_recorded=True)
    assert first == {"rows/small/test": 12.0} and calls == ["small"]
    assert tracking.recorded_metrics(uri, run_id) == first
    again = registry.evaluate(target, registry.evaluators_for(plan), {"small": data}, skip_recorded=True)
    assert again == first and calls == ["small"]  # recorded: not run again
