"""An independent reference for timm's ViT, BiT ResNet-v2 and R50 hybrid forward passes.

timm cannot be installed here (it needs torchvision), so the import tests compare our models with
this functional transcription of timm's computation, run directly on state dicts laid out with
timm's key names and shapes. It deliberately shares no code with ``models/``: attention is the
explicit softmax(QK^T/sqrt(d))V, weight standardization is timm's batch-norm trick, and SAME
padding is computed here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- state dicts in timm's layout


def _randn(*shape, scale=None):
    scale = scale if scale is not None else 1.0 / math.sqrt(max(1, math.prod(shape[1:])))
    return torch.randn(*shape) * scale


def _norm(prefix, ch, sd):
    sd[f"{prefix}.weight"] = 1 + 0.1 * torch.randn(ch)
    sd[f"{prefix}.bias"] = 0.1 * torch.randn(ch)


def vit_state_dict(depth, width, mlp, patch, grid, num_classes=1000, in_chans=3, representation=None,
                   trunk_prefix="", patch_embed=True):
    sd = {}
    if patch_embed:
        sd["patch_embed.proj.weight"] = _randn(width, in_chans, patch, patch)
        sd["patch_embed.proj.bias"] = 0.02 * torch.randn(width)
    sd["cls_token"] = 0.02 * torch.randn(1, 1, width)
    sd["pos_embed"] = 0.02 * torch.randn(1, grid * grid + 1, width)
    for i in range(depth):
        b = f"blocks.{i}"
        _norm(f"{b}.norm1", width, sd)
        sd[f"{b}.attn.qkv.weight"] = _randn(3 * width, width)
        sd[f"{b}.attn.qkv.bias"] = 0.02 * torch.randn(3 * width)
        sd[f"{b}.attn.proj.weight"] = _randn(width, width)
        sd[f"{b}.attn.proj.bias"] = 0.02 * torch.randn(width)
        _norm(f"{b}.norm2", width, sd)
        sd[f"{b}.mlp.fc1.weight"] = _randn(mlp, width)
        sd[f"{b}.mlp.fc1.bias"] = 0.02 * torch.randn(mlp)
        sd[f"{b}.mlp.fc2.weight"] = _randn(width, mlp)
        sd[f"{b}.mlp.fc2.bias"] = 0.02 * torch.randn(width)
    _norm("norm", width, sd)
    if representation:
        sd["pre_logits.fc.weight"] = _randn(representation, width)
        sd["pre_logits.fc.bias"] = 0.02 * torch.randn(representation)
    if num_classes:
        sd["head.weight"] = _randn(num_classes, representation or width)
        sd["head.bias"] = 0.02 * torch.randn(num_classes)
    return sd


def resnetv2_state_dict(layers, wf=1, num_classes=1000, preact=True, prefix=""):
    """timm ResNetV2: preact=True is BiT (resnetv2_50x1_bit), False the hybrid backbone."""
    sd = {}
    stem = 64 * wf
    sd[f"{prefix}stem.conv.weight"] = _randn(stem, 3, 7, 7)
    if not preact:
        _norm(f"{prefix}stem.norm", stem, sd)
    prev = stem
    for s, depth in enumerate(layers):
        out = (256, 512, 1024, 2048)[s] * wf
        mid = out // 4
        for j in range(depth):
            b = f"{prefix}stages.{s}.blocks.{j}"
            if j == 0:
                sd[f"{b}.downsample.conv.weight"] = _randn(out, prev, 1, 1)
                if not preact:
                    _norm(f"{b}.downsample.norm", out, sd)
            cin = prev if j == 0 else out
            if preact:
                _norm(f"{b}.norm1", cin, sd)
                _norm(f"{b}.norm2", mid, sd)
                _norm(f"{b}.norm3", mid, sd)
            else:
                _norm(f"{b}.norm1", mid, sd)
                _norm(f"{b}.norm2", mid, sd)
                _norm(f"{b}.norm3", out, sd)
            sd[f"{b}.conv1.weight"] = _randn(mid, cin, 1, 1)
            sd[f"{b}.conv2.weight"] = _randn(mid, mid, 3, 3)
            sd[f"{b}.conv3.weight"] = _randn(out, mid, 1, 1)
        prev = out
    if preact:
        _norm(f"{prefix}norm", prev, sd)
        if num_classes:
            sd[f"{prefix}head.fc.weight"] = _randn(num_classes, prev, 1, 1)
            sd[f"{prefix}head.fc.bias"] = 0.02 * torch.randn(num_classes)
    return sd, prev


def hybrid_state_dict(layers, depth, width, mlp, grid, num_classes=1000):
    sd, feat = resnetv2_state_dict(layers, 1, 0, preact=False, prefix="patch_embed.backbone.")
    sd["patch_embed.proj.weight"] = _randn(width, feat, 1, 1)
    sd["patch_embed.proj.bias"] = 0.02 * torch.randn(width)
    sd.update(vit_state_dict(depth, width, mlp, 1, grid, num_classes, patch_embed=False))
    return sd


# ---------------------------------------------------------------- functional forward passes


def _ln(x, sd, p, eps=1e-6):
    return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], eps)


def _gn(x, sd, p, act=True, groups=32, eps=1e-5):
    x = F.group_norm(x, groups, sd[f"{p}.weight"], sd[f"{p}.bias"], eps)
    return F.relu(x) if act else x


def _std_w(w, eps=1e-8):
    # timm StdConv2d: batch_norm over the flattened kernel of each output channel.
    return F.batch_norm(w.reshape(1, w.shape[0], -1), None, None, training=True, momentum=0.0,
                        eps=eps).reshape_as(w)


def _tf_same_pad(x, k, s, value=0.0):
    def amount(n):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        return total // 2, total - total // 2
    (t, b), (l, r) = amount(x.shape[-2]), amount(x.shape[-1])
    return F.pad(x, (l, r, t, b), value=value)


def _std_conv(x, w, stride=1, padding=0, same=False):
    if same:
        x, padding = _tf_same_pad(x, w.shape[-1], stride), 0
    return F.conv2d(x, _std_w(w), None, stride, padding)


def vit_tokens_forward(tokens, sd, heads):
    b, n, d = tokens.shape
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), tokens], 1) + sd["pos_embed"]
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        p = f"blocks.{i}"
        h = _ln(x, sd, f"{p}.norm1")
        qkv = F.linear(h, sd[f"{p}.attn.qkv.weight"], sd[f"{p}.attn.qkv.bias"])
        q, k, v = qkv.reshape(b, x.shape[1], 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        attn = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        o = (attn @ v).transpose(1, 2).reshape(b, x.shape[1], d)
        x = x + F.linear(o, sd[f"{p}.attn.proj.weight"], sd[f"{p}.attn.proj.bias"])
        h = _ln(x, sd, f"{p}.norm2")
        h = F.gelu(F.linear(h, sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"]))
        x = x + F.linear(h, sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])
        i += 1
    x = _ln(x, sd, "norm")[:, 0]
    if "pre_logits.fc.weight" in sd:
        x = torch.tanh(F.linear(x, sd["pre_logits.fc.weight"], sd["pre_logits.fc.bias"]))
    return F.linear(x, sd["head.weight"], sd["head.bias"])


def vit_forward(img, sd, heads):
    w = sd["patch_embed.proj.weight"]
    x = F.conv2d(img, w, sd["patch_embed.proj.bias"], stride=w.shape[-1])
    return vit_tokens_forward(x.flatten(2).transpose(1, 2), sd, heads)


def _resnet_blocks(sd, prefix=""):
    """(key prefix, stride, is first block of its stage) for each block in the state dict."""
    s = 0
    while f"{prefix}stages.{s}.blocks.0.conv1.weight" in sd:
        j = 0
        while f"{prefix}stages.{s}.blocks.{j}.conv1.weight" in sd:
            yield f"{prefix}stages.{s}.blocks.{j}", 2 if (j == 0 and s > 0) else 1, j == 0
            j += 1
        s += 1


def bit_forward(img, sd):
    x = _std_conv(img, sd["stem.conv.weight"], 2, 3)
    x = F.max_pool2d(F.pad(x, (1, 1, 1, 1), value=0.0), 3, 2)
    for p, stride, first in _resnet_blocks(sd):
        xp = _gn(x, sd, f"{p}.norm1")
        short = _std_conv(xp, sd[f"{p}.downsample.conv.weight"], stride) if first else x
        h = _std_conv(xp, sd[f"{p}.conv1.weight"])
        h = _std_conv(_gn(h, sd, f"{p}.norm2"), sd[f"{p}.conv2.weight"], stride, 1)
        h = _std_conv(_gn(h, sd, f"{p}.norm3"), sd[f"{p}.conv3.weight"])
        x = h + short
    x = _gn(x, sd, "norm").mean((2, 3), keepdim=True)
    return F.conv2d(x, sd["head.fc.weight"], sd["head.fc.bias"]).flatten(1)


def hybrid_forward(img, sd, heads):
    p0 = "patch_embed.backbone."
    x = _std_conv(img, sd[p0 + "stem.conv.weight"], 2, same=True)
    x = _gn(x, sd, p0 + "stem.norm")
    x = F.max_pool2d(_tf_same_pad(x, 3, 2, value=float("-inf")), 3, 2)
    for p, stride, first in _resnet_blocks(sd, p0):
        short = x
        if first:
            short = _gn(_std_conv(x, sd[f"{p}.downsample.conv.weight"], stride, same=True), sd,
                        f"{p}.downsample.norm", act=False)
        h = _gn(_std_conv(x, sd[f"{p}.conv1.weight"], same=True), sd, f"{p}.norm1")
        h = _gn(_std_conv(h, sd[f"{p}.conv2.weight"], stride, same=True), sd, f"{p}.norm2")
        h = _gn(_std_conv(h, sd[f"{p}.conv3.weight"], same=True), sd, f"{p}.norm3", act=False)
        x = F.relu(h + short)
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"])
    return vit_tokens_forward(x.flatten(2).transpose(1, 2), sd, heads)
