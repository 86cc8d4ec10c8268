"""Hybrid R50+ViT (paper Sec. 3.1 "Hybrid Architecture", Appendix B.1): ResNet feature maps replace
the image patches; each feature-map position is one token (patch size 1), linearly projected.

The backbone is the authors' variant (google-research/vision_transformer ``ResNetStage``): a plain
post-activation ResNet with GroupNorm, weight-standardized convolutions and TF 'SAME' padding.
The trailing number of the name is the backbone's total downsampling:
  R50+ViT-x/32: stages (3, 4, 6, 3), stride 32;  R50+ViT-x/16: stages (3, 4, 9), stride 16
(stage 4 removed and its blocks moved into stage 3).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from models.bit import Projection, ResNetShape, Stage, init_resnet_
from models.layers import GroupNormAct, MaxPoolSame, StdConv2d
from models.vit import ViTShape, VisionTransformer


class Bottleneck(nn.Module):
    """Post-activation bottleneck: conv1x1-GN-ReLU, conv3x3(stride)-GN-ReLU, conv1x1-GN, add, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = StdConv2d(in_ch, mid_ch, 1, padding="same")
        self.norm1 = GroupNormAct(mid_ch, groups)
        self.conv2 = StdConv2d(mid_ch, mid_ch, 3, stride=stride, padding="same")
        self.norm2 = GroupNormAct(mid_ch, groups)
        self.conv3 = StdConv2d(mid_ch, out_ch, 1, padding="same")
        self.norm3 = GroupNormAct(out_ch, groups, act=False)
        self.downsample = (Projection(in_ch, out_ch, stride, norm=GroupNormAct(out_ch, groups, act=False),
                                      padding="same")
                           if stride != 1 or in_ch != out_ch else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut)


class ResNetBackbone(nn.Module):
    """Feature extractor of the hybrid: stem (std-conv 7x7/2, GN, ReLU, max-pool 3x3/2) + stages."""

    def __init__(self, shape: ResNetShape, in_chans: int = 3):
        super().__init__()
        g = shape.groups
        self.stem = nn.Sequential(OrderedDict(
            conv=StdConv2d(in_chans, shape.stem_width, 7, stride=2, padding="same"),
            norm=GroupNormAct(shape.stem_width, g),
            pool=MaxPoolSame(3, 2),
        ))
        stages, in_ch = [], shape.stem_width
        for i, (depth, mid, out) in enumerate(zip(shape.blocks, shape.mid_widths, shape.out_widths)):
            stride = 1 if i == 0 else 2
            stages.append(Stage([Bottleneck(in_ch if j == 0 else out, out, mid, stride if j == 0 else 1, g)
                                 for j in range(depth)]))
            in_ch = out
        self.stages = nn.Sequential(*stages)
        self.out_channels = in_ch
        self.stride = 4 * 2 ** (len(shape.blocks) - 1)
        init_resnet_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class HybridEmbed(nn.Module):
    """ResNet feature map -> tokens: a linear projection of each p x p group of feature-map
    positions (p = 1 in the paper)."""

    def __init__(self, backbone: ResNetBackbone, width: int, patch_size: int = 1):
        super().__init__()
        self.backbone = backbone
        self.patch_size = patch_size
        self.proj = nn.Conv2d(backbone.out_channels, width, kernel_size=patch_size, stride=patch_size)

    def grid_size(self, image_size: int) -> int:
        step = self.backbone.stride * self.patch_size
        if image_size % step:
            raise ValueError(f"image size {image_size} is not a multiple of the hybrid's total stride {step}")
        return image_size // step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(x)).flatten(2).transpose(1, 2)


def build_hybrid(resnet: ResNetShape, vit: ViTShape, in_chans: int = 3, **vit_kwargs) -> VisionTransformer:
    backbone = ResNetBackbone(resnet, in_chans)
    return VisionTransformer(vit, patch_embed=HybridEmbed(backbone, vit.width, vit.patch_size), **vit_kwargs)
