"""Model shapes, parameter counts and the architectural details the paper specifies."""
import pytest
import torch
import torch.nn.functional as F

from models import PAPER_MODELS, ModelSpec, UnknownModelError, build_model, model_spec
from models.bit import PreActBottleneck
from models.hybrid import Bottleneck
from models.layers import GroupNormAct, StdConv2d, standardize_weight


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def on_meta(name, **kw):
    with torch.device("meta"):  # shapes only: no memory, no init time
        return build_model(name, **kw)


# Public implementations with a 1000-class linear head (reference file). Two of the reference's
# numbers are the models *without* a classifier (timm's in21k variants have num_classes=0):
# ViT-H/14 630.76M and R50+ViT-B/16 97.89M; with a 1000-class head they are 632.05M / 98.66M.
WITH_HEAD = {"ViT-B/16": 86.57e6, "ViT-B/32": 88.22e6, "ViT-L/16": 304.33e6, "R50x1": 25.55e6,
             "R50x3": 217.32e6, "R101x1": 44.54e6, "R152x2": 236.34e6, "R50+ViT-L/32": 328.99e6}
HEADLESS = {"ViT-H/14": 630.76e6, "R50+ViT-B/16": 97.89e6}


@pytest.mark.parametrize("name,expected", WITH_HEAD.items())
def test_param_count_matches_public_implementations(name, expected):
    assert n_params(on_meta(name, pre_logits=False)) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("name,expected", HEADLESS.items())
def test_param_count_without_classifier_matches_public_number(name, expected):
    model = on_meta(name, pre_logits=False)
    assert n_params(model) - n_params(model.head) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("size,expected", [("B/16", 86e6), ("L/16", 307e6), ("H/14", 632e6)])
def test_table1_sizes(size, expected):
    # Table 1 rounds to whole millions (and does not say which patch size or head it counts).
    assert n_params(on_meta(f"ViT-{size}", pre_logits=False)) == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("name", PAPER_MODELS + ("ViT-B/8", "R26x1"))
def test_every_registry_model_builds(name):
    model = on_meta(name)
    assert n_params(model) > 1e6
    assert model_spec(name).name == name


def test_vit_shapes_follow_table1_and_vit_b_halves_every_width():
    assert model_spec("ViT-L/16").vit.__dict__ == dict(depth=24, width=1024, mlp_dim=4096, heads=16, patch_size=16)
    assert model_spec("ViT-H/14").vit.__dict__ == dict(depth=32, width=1280, mlp_dim=5120, heads=16, patch_size=14)
    big, small = model_spec("ViT-B/32").vit, model_spec("ViT-b/32").vit
    assert (small.width, small.mlp_dim, small.width // small.heads) == (big.width // 2, big.mlp_dim // 2,
                                                                         big.width // big.heads // 2)
    assert model_spec("ViT-B/8").vit.patch_size == 8


def test_hybrid_token_grid_follows_backbone_stride():
    assert on_meta("R50+ViT-B/16").pos_embed.shape[1] == 14 * 14 + 1
    assert on_meta("R50+ViT-B/32").pos_embed.shape[1] == 7 * 7 + 1
    assert model_spec("R50+ViT-B/16").resnet.blocks == (3, 4, 9)
    assert model_spec("R50+ViT-L/32").resnet.blocks == (3, 4, 6, 3)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownModelError) as err:
        model_spec("ViT-X/16")
    assert "ViT-B/16" in str(err.value) and "R152x2" in str(err.value) and "R50+ViT-L/16" in str(err.value)
    with pytest.raises(UnknownModelError):
        model_spec("R51x1")


def test_custom_shapes_from_plain_data():
    vit = model_spec({"name": "m", "family": "vit", "depth": 2, "width": 32, "heads": 2, "mlp_dim": 64,
                      "patch_size": 8})
    assert ModelSpec.from_dict(vit.to_dict()) == vit
    model = build_model(vit, num_classes=5, image_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    bit = build_model({"family": "resnet", "blocks": [1, 1], "width_factor": 0.25, "groups": 8}, num_classes=3)
    assert bit(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(UnknownModelError, match="missing field 'heads'"):
        model_spec({"family": "vit", "depth": 2, "width": 32, "mlp_dim": 64, "patch_size": 8})
    with pytest.raises(UnknownModelError, match="unknown field"):
        model_spec({"family": "resnet", "blocks": [1], "depth": 3})
    with pytest.raises(UnknownModelError, match="GroupNorm groups"):
        model_spec({"family": "resnet", "blocks": [1], "width_factor": 0.1})
    with pytest.raises(UnknownModelError, match="'family' must be one of"):
        model_spec({"family": "mlp"})


@pytest.mark.parametrize("name", ["ViT-B/16", "R50x1", "R50+ViT-B/16"])
def test_forward_and_backward_at_224(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10)
    # The classifier starts at zero (authors' init), which would stop every gradient below it.
    torch.nn.init.normal_(model.head.fc.weight, std=0.02)
    x = torch.randn(2, 3, 224, 224)
    logits = model(x)
    assert logits.shape == (2, 10)
    F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} received no gradient"


def test_weight_standardization():
    torch.manual_seed(0)
    conv = StdConv2d(8, 16, 3)
    w = standardize_weight(conv.weight)
    assert torch.allclose(w.mean(dim=(1, 2, 3)), torch.zeros(16), atol=1e-6)
    assert torch.allclose(w.var(dim=(1, 2, 3), unbiased=False), torch.ones(16), atol=1e-4)
    x = torch.randn(2, 8, 10, 10)
    y = conv(x)
    assert torch.allclose(y, F.conv2d(x, w, padding=1), atol=1e-5)
    # Standardization makes the layer blind to a per-output-channel scale and shift of its weights.
    with torch.no_grad():
        conv.weight.mul_(torch.rand(16, 1, 1, 1) * 5 + 0.1).add_(torch.randn(16, 1, 1, 1))
    assert torch.allclose(conv(x), y, atol=1e-4)


def test_bit_uses_groupnorm_32_and_standardized_convs_everywhere():
    model = on_meta("R50x1")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert norms and all(m.num_groups == 32 for m in norms)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert len(convs) == 1 + 16 * 3 + 4 and all(isinstance(m, StdConv2d) for m in convs)


def test_bit_block_is_pre_activation():
    """Pre-activation: each conv reads GN-ReLU of its input, and the identity path is untouched,
    so a block whose last conv is zero is exactly the identity."""
    torch.manual_seed(0)
    block = PreActBottleneck(64, 64, 16, stride=1, groups=8)
    order = []
    for name in ("norm1", "conv1", "norm2", "conv2", "norm3", "conv3"):
        getattr(block, name).register_forward_hook(lambda m, i, o, n=name: order.append(n))
    x = torch.randn(2, 64, 8, 8)
    block(x)
    assert order == ["norm1", "conv1", "norm2", "conv2", "norm3", "conv3"]
    with torch.no_grad():
        block.conv3.weight.zero_()
    # (a zero kernel standardizes to zero: 0 / sqrt(0 + eps))
    assert torch.equal(block(x), x)
    # A projection shortcut reads the pre-activated input.
    proj = PreActBottleneck(32, 64, 16, stride=2, groups=8)
    with torch.no_grad():
        proj.conv3.weight.zero_()
    xin = torch.randn(2, 32, 8, 8)
    assert torch.allclose(proj(xin), proj.downsample(proj.norm1(xin)))
    # BiT ends with a final GN-ReLU before pooling.
    final = on_meta("R50x1").norm
    assert isinstance(final, GroupNormAct) and final.act


def test_hybrid_block_is_post_activation():
    torch.manual_seed(0)
    block = Bottleneck(64, 64, 16, stride=1, groups=8)
    with torch.no_grad():
        block.norm3.weight.zero_()
        block.norm3.bias.zero_()
    x = torch.randn(2, 64, 8, 8)
    assert torch.equal(block(x), F.relu(x))  # GN after the last conv, ReLU after the addition


def test_position_embedding_interpolation():
    torch.manual_seed(0)
    model = build_model("ViT-B/16", num_classes=4).eval()
    x = torch.randn(1, 3, 224, 224)
    before, out = model.pos_embed.detach().clone(), model(x)
    model.set_image_size(224)
    assert torch.equal(model.pos_embed, before) and torch.equal(model(x), out)

    model.set_image_size(384)
    assert model.pos_embed.shape == (1, 1 + 24 * 24, 768)
    assert torch.equal(model.pos_embed[:, 0], before[:, 0])  # class-token embedding kept
    assert model(torch.randn(1, 3, 384, 384)).shape == (1, 4)
    with pytest.raises(ValueError, match="set_image_size"):
        model(x)

    # Interpolation acts on the 2-D grid: a field that is constant along rows stays so.
    grid = torch.linspace(-1, 1, 14).repeat_interleave(14).reshape(1, 196, 1).expand(1, 196, 768)
    model2 = build_model("ViT-B/16", num_classes=4)
    with torch.no_grad():
        model2.pos_embed[:, 1:] = grid
    model2.set_image_size(384)
    new = model2.pos_embed[0, 1:, 0].reshape(24, 24)
    assert torch.allclose(new, new[:, :1].expand(24, 24), atol=1e-6)
    assert torch.all(new[1:, 0] >= new[:-1, 0])  # still increasing down the rows


def test_hybrid_changes_resolution():
    model = build_model({"family": "hybrid", "blocks": [1, 1], "width_factor": 0.5, "depth": 1, "width": 32,
                         "heads": 2, "mlp_dim": 64}, num_classes=3, image_size=32)
    assert model.pos_embed.shape[1] == 4 * 4 + 1  # stride 8
    model.set_image_size(64)
    assert model.pos_embed.shape[1] == 8 * 8 + 1
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_reset_head_is_one_zero_initialized_linear_layer(name):
    spec = ({"family": "vit", "depth": 1, "width": 32, "heads": 2, "mlp_dim": 64, "patch_size": 8} if name == "vit"
            else {"family": "resnet", "blocks": [1], "width_factor": 0.5})
    model = build_model(spec, num_classes=100, image_size=32, pre_logits=True)
    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    model.reset_head(7)
    head_params = list(model.head.parameters())
    assert len(head_params) == 2 and all(torch.count_nonzero(p) == 0 for p in head_params)
    assert isinstance(model.head.pre_logits, torch.nn.Identity)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(model(x), torch.zeros(3, 7))
    assert model.features(x).shape == (3, model.pooled_features)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in trunk.items())


def test_features_are_the_tanh_pre_logits():
    model = build_model({"family": "vit", "depth": 1, "width": 32, "heads": 2, "mlp_dim": 64, "patch_size": 8},
                        num_classes=5, image_size=32)
    f = model.features(torch.randn(4, 3, 32, 32))
    assert f.shape == (4, 32) and f.abs().max() <= 1.0
    assert model.num_features == 32


def test_global_average_pooling_option():
    model = build_model({"family": "vit", "depth": 1, "width": 32, "heads": 2, "mlp_dim": 64, "patch_size": 8},
                        num_classes=5, image_size=32, pool="gap")
    assert model.cls_token is None and model.pos_embed.shape[1] == 16
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match="pool must be"):
        build_model("ViT-B/16", pool="max")


def test_dropout_is_placed_as_in_the_paper():
    model = build_model({"family": "vit", "depth": 1, "width": 32, "heads": 2, "mlp_dim": 64, "patch_size": 8},
                        num_classes=5, image_size=32, dropout=0.1)
    drops = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and m.p == 0.1}
    # After adding position embeddings, after the attention output projection and after both MLP
    # dense layers (one module used twice) -- never after qkv.
    assert drops == {"pos_drop", "blocks.0.attn.proj_drop", "blocks.0.mlp.drop"}
    model.train()
    x = torch.randn(2, 3, 32, 32)
    torch.nn.init.normal_(model.head.fc.weight)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
