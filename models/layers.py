"""Layers shared by the model families: weight-standardized convolution, GroupNorm(+ReLU),
TensorFlow-style "SAME" padding, and the classification head.

Module and parameter names follow the public timm layout (``norm1``, ``conv1``, ``head.fc`` ...)
so that checkpoints map onto these models with almost no renaming (see ``timm_import``).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

# timm's BiT and hybrid models standardize with eps=1e-8 (the BiT paper's code used 1e-10;
# the difference is far below float32 rounding of any real weight).
WS_EPS = 1e-8


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's 'SAME' mode for one spatial dimension.

    It depends on the input size and is asymmetric (one more after) when the total is odd, which is
    why a fixed symmetric ``padding=k//2`` gives different outputs for stride 2.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


def standardize_weight(weight: torch.Tensor, eps: float = WS_EPS) -> torch.Tensor:
    """Weight standardization: w <- (w - mean) / sqrt(var + eps), per output channel over
    (in, kh, kw), biased variance (as BiT and timm). Computed as timm does, by ``batch_norm`` over
    the kernel flattened to (1, out, in*kh*kw): one kernel forward and one backward on CUDA. On a CPU
    thread, forward plus backward, it is 1.9x as fast as a two-pass mean / centred mean square for a
    512x512x3x3 kernel and equal to it within 1e-6; R50x1 steps 1.27x (bench/bench_ws.py, issue
    30). pipeline.compute counts no FLOPs for it, as the paper counts no weight op."""
    flat = weight.reshape(1, weight.shape[0], -1)
    return F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=eps).reshape(weight.shape)


class StdConv2d(nn.Conv2d):
    """Weight-standardized convolution (BiT). ``padding="same"`` gives TF 'SAME' padding computed
    from the input size (the authors' hybrid models); an int gives ordinary symmetric padding."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1,
                 padding: int | str | None = None, bias: bool = False, eps: float = WS_EPS):
        self.same = padding == "same"
        if padding is None or self.same:
            static = 0 if self.same else kernel_size // 2
        else:
            static = int(padding)
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=static, bias=bias)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, standardize_weight(self.weight, self.eps), self.bias, self.stride,
                        self.padding, self.dilation, self.groups)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm (32 groups in BiT) optionally followed by ReLU, as one module so that parameter
    names match the public layout (``norm1.weight``)."""

    def __init__(self, channels: int, groups: int = 32, act: bool = True, eps: float = 1e-5):
        if channels % groups:
            raise ValueError(f"GroupNorm: {channels} channels cannot be split into {groups} groups; "
                             "choose a width factor or a group count that divides the channel counts")
        super().__init__(groups, channels, eps=eps)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return F.relu(x) if self.act else x


class MaxPoolSame(nn.Module):
    """3x3 stride-2 max-pool with TF 'SAME' padding (pads with -inf, so padding never wins)."""

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class ClassifierHead(nn.Module):
    """Pooled representation -> [pre-logits: Linear + tanh] -> classifier.

    The paper pretrains ViTs with one hidden "pre-logits" layer (tanh) and fine-tunes with the
    whole head replaced by one zero-initialized linear layer (``reset``).
    """

    def __init__(self, in_features: int, num_classes: int, representation_size: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        if representation_size:
            self.pre_logits = nn.Sequential(OrderedDict(
                fc=nn.Linear(in_features, representation_size), act=nn.Tanh()))
            self.num_features = representation_size
        else:
            self.pre_logits = nn.Identity()
            self.num_features = in_features
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:  # the authors zero-initialize the classifier
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def features(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.pre_logits(pooled)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(pooled)))


class ClassifierMixin:
    """The interface every family offers: ``pool`` (subclass), ``features``, ``forward``,
    ``reset_head`` and ``set_image_size``."""

    head: ClassifierHead

    def pool(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logits representation (what linear probes and few-shot evaluation use)."""
        return self.head.features(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x))

    @property
    def num_features(self) -> int:
        return self.head.num_features

    def reset_head(self, num_classes: int) -> None:
        """Fine-tuning head: drop the whole head (pre-logits too) and attach one zero-initialized
        linear layer with ``num_classes`` outputs."""
        ref = next(self.parameters())
        self.head = ClassifierHead(self.pooled_features, num_classes).to(ref.device, ref.dtype)

    def set_image_size(self, image_size: int) -> None:
        """Convolutional models take any resolution; ViTs override this."""
        self.image_size = image_size
