"""The pretraining recipe's pieces (no Ray): schedule, weight-decay groups, loss, accumulation,
run specs."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from models import build_model
from pipeline.planning import run_numbers
from pipeline.pretrain.loop import PretrainPlan, Trainer
from pipeline.pretrain.recipe import lr_factor, param_groups, precision_at_1, sigmoid_xent
from pipeline.pretrain.session import LocalSession
from pipeline.spec import Recipe, RunSpec

MICRO_VIT = {"name": "vit-micro", "family": "vit", "depth": 1, "width": 32, "heads": 2, "mlp_dim": 64,
             "patch_size": 8}


def test_warmup_then_linear_decay_to_zero():
    factors = [lr_factor(s, warmup=10, total=110) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(factors[:9], factors[1:10]))          # rising during warmup
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.5)
    assert all(b < a for a, b in zip(factors[10:], factors[11:]))          # then falling
    assert lr_factor(110, warmup=10, total=110) == 0.0
    assert lr_factor(60, warmup=10, total=110, decay="cosine") == pytest.approx(0.5)


def test_weight_decay_only_on_kernels():
    model = build_model(MICRO_VIT, num_classes=5, image_size=32)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "blocks.0.attn.qkv.weight" in decayed and "patch_embed.proj.weight" in decayed
    assert not any(n.endswith(("bias", "pos_embed", "cls_token")) or "norm" in n for n in decayed)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_sigmoid_cross_entropy_sums_classes_and_averages_examples():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.2, 0.5, -3.0], [0.0, -1.0, 3.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    per_entry = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert sigmoid_xent(logits, targets) == pytest.approx(per_entry.sum() / 3)
    # top-1 is a true label in rows 0 (class 0) and 1 (class 1), not in row 2 (class 2)
    assert precision_at_1(logits, targets).item() == 2


def micro_trainer(tmp_path, micro_batch: int, accum_steps: int) -> Trainer:
    """The worker's real Trainer on a micro ViT, without Ray or data (LocalSession, no checkpoint)."""
    spec = RunSpec(study="t", model=MICRO_VIT, dataset="d", steps=10,
                   recipe=Recipe(batch_size=8, base_lr=1e-3, warmup_steps=0, image_size=32, dropout=0.0))
    plan = PretrainPlan(spec=spec, data_path="(unused)", numbers=run_numbers(spec, 80, head_classes=5),
                        micro_batch=micro_batch, accum_steps=accum_steps, base_lr=1e-3, base_lr_source="recipe",
                        val_split=None)
    trainer = Trainer(plan, LocalSession(tmp_path / f"run-{accum_steps}"))
    torch.manual_seed(1)
    torch.nn.init.normal_(trainer.model.head.fc.weight, std=0.1)  # the zero head would stop every gradient
    return trainer


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    x, y = torch.randn(8, 3, 32, 32), (torch.rand(8, 5) > 0.5).float()
    whole, parts = micro_trainer(tmp_path, 8, 1), micro_trainer(tmp_path, 2, 4)
    assert whole.backward(x, y).item() == pytest.approx(parts.backward(x, y).item(), rel=1e-6)
    grads = [(name, p.grad, q.grad) for (name, p), q in zip(whole.model.named_parameters(), parts.params)]
    assert all(a is not None and a.abs().sum() > 0 for _, a, _ in grads)
    for name, a, b in grads:
        assert torch.allclose(a, b, atol=1e-6), name
    batch = SimpleNamespace(images=x, labels=y)
    (loss_a, _), (loss_b, _) = whole.train_step(batch), parts.train_step(batch)
    assert whole.step == parts.step == 1 and all(p.grad is None for p in whole.params)
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-6)


def test_run_spec_id_is_stable_and_sensitive():
    a = RunSpec(study="s1", model="ViT-B/16", dataset="jft", subset="30M", epochs=7)
    assert a.id == RunSpec(study="s2", model="ViT-B/16", dataset="jft", subset="30M", epochs=7).id
    assert a.id == RunSpec.model_validate(a.model_dump(mode="json")).id
    for change in [dict(subset="90M"), dict(epochs=14), dict(seed=1), dict(model="ViT-B/32"),
                   dict(recipe=Recipe(base_lr=1e-3))]:
        assert RunSpec(**{**a.model_dump(), **change}).id != a.id
    # the runs that differ only by their seed (replicates) share the id at seed 0
    assert a.replicate_id == a.id == RunSpec(**{**a.model_dump(), "seed": 3}).replicate_id
    assert RunSpec(**{**a.model_dump(), "seed": 3, "subset": "90M"}).replicate_id != a.id


def test_run_spec_learning_rates_and_lengths():
    assert RunSpec(model="ViT-H/14", dataset="d", epochs=14).base_lr() == (3e-4, "table3")
    assert RunSpec(model="R50+ViT-L/32", dataset="d", epochs=7).base_lr() == (2e-4, "table3")
    assert RunSpec(model="R200x3", dataset="d", epochs=14).base_lr() == (6e-4, "choice")
    with pytest.raises(ValueError, match="set recipe.base_lr"):
        RunSpec(model=MICRO_VIT, dataset="d", epochs=1).base_lr()
    spec = RunSpec(model="ViT-B/32", dataset="d", subset=0.1, epochs=2, recipe=Recipe(batch_size=100))
    assert spec.subset_selector() == {"fraction": 0.1} and spec.total_steps(1050) == 21
    assert spec.subset_selector(1050) == {"count": 105}  # the rows the plan counts, exactly
    assert RunSpec(model="ViT-B/32", dataset="d", subset="9M", steps=5).subset_selector() == {"count": 9_000_000}


@pytest.mark.parametrize("bad,field", [(dict(epochs=None), "exactly one"), (dict(subset="lots"), "count"),
                                       (dict(subset=1.5), "fraction"), (dict(model="ViT-Z/1"), "Valid names"),
                                       (dict(recipe={"batch_size": 0}), "batch_size"),
                                       (dict(recipe={"optimizer": "sgd"}), "optimizer")])
def test_run_spec_errors_name_the_field(bad, field):
    with pytest.raises(ValidationError, match=field):
        RunSpec(**{"model": "ViT-B/16", "dataset": "d", "epochs": 1, **bad})
