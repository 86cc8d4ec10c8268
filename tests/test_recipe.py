"""The pretraining recipe's pieces (no Ray): schedule, weight-decay groups, loss, accumulation,
run specs."""
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from models import build_model
from pipeline.pretrain import lr_factor, param_groups, precision_at_1, sigmoid_xent
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


def test_gradient_accumulation_matches_one_big_batch():
    torch.manual_seed(0)
    model = build_model(MICRO_VIT, num_classes=5, image_size=32)
    torch.nn.init.normal_(model.head.fc.weight, std=0.1)
    x, y = torch.randn(8, 3, 32, 32), (torch.rand(8, 5) > 0.5).float()
    sigmoid_xent(model(x), y).backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for i in range(4):  # what the worker loop does with micro_batch = batch / 4
        (sigmoid_xent(model(x[2 * i:2 * i + 2]), y[2 * i:2 * i + 2]) / 4).backward()
    for a, b in zip(full, (p.grad for p in model.parameters())):
        assert torch.allclose(a, b, atol=1e-6)


def test_run_spec_id_is_stable_and_sensitive():
    a = RunSpec(study="s1", model="ViT-B/16", dataset="jft", subset="30M", epochs=7)
    assert a.id == RunSpec(study="s2", model="ViT-B/16", dataset="jft", subset="30M", epochs=7).id
    assert a.id == RunSpec.model_validate(a.model_dump(mode="json")).id
    for change in [dict(subset="90M"), dict(epochs=14), dict(seed=1), dict(model="ViT-B/32"),
                   dict(recipe=Recipe(base_lr=1e-3))]:
        assert RunSpec(**{**a.model_dump(), **change}).id != a.id


def test_run_spec_learning_rates_and_lengths():
    assert RunSpec(model="ViT-H/14", dataset="d", epochs=14).base_lr() == (3e-4, "table3")
    assert RunSpec(model="R50+ViT-L/32", dataset="d", epochs=7).base_lr() == (2e-4, "table3")
    assert RunSpec(model="R200x3", dataset="d", epochs=14).base_lr() == (6e-4, "choice")
    with pytest.raises(ValueError, match="set recipe.base_lr"):
        RunSpec(model=MICRO_VIT, dataset="d", epochs=1).base_lr()
    spec = RunSpec(model="ViT-B/32", dataset="d", subset=0.1, epochs=2, recipe=Recipe(batch_size=100))
    assert spec.subset_selector() == {"fraction": 0.1} and spec.total_steps(1050) == 21
    assert RunSpec(model="ViT-B/32", dataset="d", subset="9M", steps=5).subset_selector() == {"count": 9_000_000}


@pytest.mark.parametrize("bad,field", [(dict(epochs=None), "exactly one"), (dict(subset="lots"), "count"),
                                       (dict(subset=1.5), "fraction"), (dict(model="ViT-Z/1"), "Valid names"),
                                       (dict(recipe={"batch_size": 0}), "batch_size"),
                                       (dict(recipe={"optimizer": "sgd"}), "optimizer")])
def test_run_spec_errors_name_the_field(bad, field):
    with pytest.raises(ValidationError, match=field):
        RunSpec(**{"model": "ViT-B/16", "dataset": "d", "epochs": 1, **bad})
