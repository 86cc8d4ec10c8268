"""BiT ResNet (Kolesnikov et al., 2020): ResNet-v2 with pre-activation bottlenecks, GroupNorm(32)
and weight-standardized convolutions, any depth and width factor.

    stem : std-conv 7x7/2 (64w) -> pad 1 -> max-pool 3x3/2          (no norm: blocks pre-activate)
    block: GN-ReLU-conv1x1 -> GN-ReLU-conv3x3 (stride) -> GN-ReLU-conv1x1, + shortcut
           (projection shortcut: std-conv 1x1 on the pre-activated input, first block of a stage)
    end  : GN-ReLU, global average pool, head
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from models.layers import ClassifierHead, ClassifierMixin, GroupNormAct, StdConv2d

STAGE_WIDTHS = (64, 128, 256, 512)  # bottleneck mid-widths at width factor 1; outputs are 4x
BLOCKS = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}


@dataclass(frozen=True)
class ResNetShape:
    blocks: tuple[int, ...]     # bottlenecks per stage, e.g. (3, 4, 6, 3) for R50
    width_factor: float = 1     # "x2" in R152x2; fractional values make micro models
    groups: int = 32            # GroupNorm groups (32 in BiT; fewer for micro widths)

    def __post_init__(self):
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if not self.blocks or any(b < 1 for b in self.blocks) or len(self.blocks) > 4:
            raise ValueError(f"ResNet shape: blocks must be 1-4 positive stage depths, got {self.blocks!r}")
        if self.width_factor <= 0:
            raise ValueError(f"ResNet shape: width_factor must be > 0, got {self.width_factor!r}")
        for ch in (self.stem_width, *self.mid_widths):
            if ch % self.groups:
                raise ValueError(
                    f"ResNet shape: width factor {self.width_factor} gives {ch} channels, not divisible by "
                    f"{self.groups} GroupNorm groups; pick another width_factor or set groups")

    @property
    def stem_width(self) -> int:
        return round(64 * self.width_factor)

    @property
    def mid_widths(self) -> tuple[int, ...]:
        return tuple(round(w * self.width_factor) for w in STAGE_WIDTHS[:len(self.blocks)])

    @property
    def out_widths(self) -> tuple[int, ...]:
        return tuple(4 * w for w in self.mid_widths)


class PreActBottleneck(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, mid_ch: int, stride: int, groups: int):
        super().__init__()
        self.norm1 = GroupNormAct(in_ch, groups)
        self.conv1 = StdConv2d(in_ch, mid_ch, 1)
        self.norm2 = GroupNormAct(mid_ch, groups)
        self.conv2 = StdConv2d(mid_ch, mid_ch, 3, stride=stride)
        self.norm3 = GroupNormAct(mid_ch, groups)
        self.conv3 = StdConv2d(mid_ch, out_ch, 1)
        self.downsample = (Projection(in_ch, out_ch, stride)
                           if stride != 1 or in_ch != out_ch else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_preact = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        x = self.conv1(x_preact)
        x = self.conv2(self.norm2(x))
        x = self.conv3(self.norm3(x))
        return x + shortcut


class Projection(nn.Module):
    """1x1 standardized-conv projection shortcut (``downsample.conv`` in public checkpoints)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: nn.Module | None = None, **conv_kw):
        super().__init__()
        self.conv = StdConv2d(in_ch, out_ch, 1, stride=stride, **conv_kw)
        self.norm = norm or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Stage(nn.Module):
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def init_resnet_(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNetV2(ClassifierMixin, nn.Module):
    def __init__(self, shape: ResNetShape, num_classes: int = 1000, image_size: int = 224,
                 representation_size: int | None = None, in_chans: int = 3):
        super().__init__()
        self.shape, self.image_size = shape, image_size
        g = shape.groups
        self.stem = nn.Sequential(OrderedDict(
            conv=StdConv2d(in_chans, shape.stem_width, 7, stride=2, padding=3),
            pad=nn.ConstantPad2d(1, 0.0),   # BiT pads with zeros before the 3x3/2 max-pool
            pool=nn.MaxPool2d(3, stride=2),
        ))
        stages, in_ch = [], shape.stem_width
        for i, (depth, mid, out) in enumerate(zip(shape.blocks, shape.mid_widths, shape.out_widths)):
            stride = 1 if i == 0 else 2
            stages.append(Stage([PreActBottleneck(in_ch if j == 0 else out, out, mid,
                                                  stride if j == 0 else 1, g) for j in range(depth)]))
            in_ch = out
        self.stages = nn.Sequential(*stages)
        self.norm = GroupNormAct(in_ch, g)  # final pre-activation
        self.pooled_features = in_ch
        init_resnet_(self)
        self.head = ClassifierHead(in_ch, num_classes, representation_size)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(self.stem(x))).mean(dim=(2, 3))
