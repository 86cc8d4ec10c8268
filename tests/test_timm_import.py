"""timm-format checkpoints load into our models and give the same logits as timm's computation."""
import pytest
import torch

import timm_reference as ref
from models import build_model
from models.timm_import import convert_state_dict, load_timm, paper_name


def assert_same_logits(model, forward, image_size=224, batch=2):
    torch.manual_seed(1)
    x = torch.randn(batch, 3, image_size, image_size)
    model.eval()
    with torch.no_grad():
        ours, theirs = model(x), forward(x)
    assert ours.shape == theirs.shape
    # float32 rounding: the two differ only in summation order.
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())


def test_vit_base_patch16_224():
    torch.manual_seed(0)
    sd = ref.vit_state_dict(depth=12, width=768, mlp=3072, patch=16, grid=14)
    model = load_timm("vit_base_patch16_224.augreg_in21k_ft_in1k", sd)
    assert model.shape.width == 768 and model.head.fc.out_features == 1000
    assert_same_logits(model, lambda x: ref.vit_forward(x, sd, heads=12))


def test_resnetv2_50x1_bit():
    torch.manual_seed(0)
    sd, _ = ref.resnetv2_state_dict([3, 4, 6, 3], wf=1)
    assert_same_logits(load_timm("resnetv2_50x1_bit.goog_in21k_ft_in1k", sd), lambda x: ref.bit_forward(x, sd))


def test_vit_base_r50_s16_224():
    torch.manual_seed(0)
    sd = ref.hybrid_state_dict([3, 4, 9], depth=12, width=768, mlp=3072, grid=14)
    assert_same_logits(load_timm("vit_base_r50_s16_224", sd), lambda x: ref.hybrid_forward(x, sd, heads=12))


def test_wider_bit_and_stride32_hybrid():
    torch.manual_seed(0)
    sd, _ = ref.resnetv2_state_dict([3, 4, 6, 3], wf=2, num_classes=10)
    assert_same_logits(load_timm("R50x2", sd, image_size=64), lambda x: ref.bit_forward(x, sd), image_size=64)
    sd = ref.hybrid_state_dict([3, 4, 6, 3], depth=1, width=64, mlp=128, grid=2, num_classes=10)
    # A depth-1 checkpoint is not ViT-L: load it into the matching custom shape.
    model = build_model({"family": "hybrid", "blocks": [3, 4, 6, 3], "depth": 1, "width": 64, "heads": 4,
                         "mlp_dim": 128}, num_classes=10, image_size=64, pre_logits=False)
    model.load_state_dict(convert_state_dict(sd))
    assert_same_logits(model, lambda x: ref.hybrid_forward(x, sd, heads=4), image_size=64)


def test_in21k_style_checkpoint_with_pre_logits():
    torch.manual_seed(0)
    sd = ref.vit_state_dict(depth=12, width=384, mlp=1536, patch=16, grid=4, num_classes=21, representation=384)
    model = load_timm("vit_small_patch16_224_in21k", sd)
    assert model.image_size == 64  # read from the checkpoint's position embeddings
    assert_same_logits(model, lambda x: ref.vit_forward(x, sd, heads=6), image_size=64)


def test_load_at_a_higher_resolution():
    torch.manual_seed(0)
    sd = ref.vit_state_dict(depth=12, width=192, mlp=768, patch=16, grid=14, num_classes=10)
    model = load_timm("vit_tiny_patch16_224", sd, image_size=384)
    assert model.pos_embed.shape[1] == 24 * 24 + 1
    assert torch.equal(model.pos_embed[:, 0], sd["pos_embed"][:, 0])
    assert model(torch.randn(1, 3, 384, 384)).shape == (1, 10)


def test_mismatched_checkpoint_is_a_clear_error():
    sd = ref.vit_state_dict(depth=2, width=192, mlp=768, patch=16, grid=14, num_classes=10)
    with pytest.raises(ValueError, match="missing keys .*blocks.2"):
        load_timm("vit_tiny_patch16_224", sd)
    with pytest.raises(ValueError, match="no known mapping"):
        load_timm("convnext_tiny", sd)


@pytest.mark.parametrize("timm_name,ours", [
    ("vit_base_patch16_224", "ViT-B/16"), ("vit_large_patch32_384.orig_in21k_ft_in1k", "ViT-L/32"),
    ("vit_huge_patch14_224_in21k", "ViT-H/14"), ("resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k", "R152x2"),
    ("resnetv2_50x1_bitm", "R50x1"), ("vit_base_r50_s16_384", "R50+ViT-B/16"),
    ("vit_large_r50_s32_224", "R50+ViT-L/32")])
def test_paper_names(timm_name, ours):
    assert paper_name(timm_name)[0] == ours
