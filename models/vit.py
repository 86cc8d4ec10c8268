"""Vision Transformer (Dosovitskiy et al., 2021, Sec. 3.1, Eq. 1-4).

    z0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}
    z_l  = MLP(LN(z'_l)) + z'_l
    y    = LN(z_L^0)                      (class token; or mean of patch tokens with pool="gap")

Attention goes through ``F.scaled_dot_product_attention`` (fused kernels on CUDA). Dropout, when
used, follows the paper: after every dense layer except the qkv projection, and after adding the
position embeddings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import ClassifierHead, ClassifierMixin

LN_EPS = 1e-6  # the authors' (Flax) LayerNorm epsilon, also timm's for ViT


@dataclass(frozen=True)
class ViTShape:
    """Transformer shape in the paper's Table 1 terms."""
    depth: int        # layers
    width: int        # hidden size D
    mlp_dim: int      # MLP size
    heads: int
    patch_size: int   # patch side in pixels (1 for hybrids: a patch is one feature-map position)

    def __post_init__(self):
        for field in ("depth", "width", "mlp_dim", "heads", "patch_size"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"ViT shape: {field} must be a positive integer, got {getattr(self, field)!r}")
        if self.width % self.heads:
            raise ValueError(f"ViT shape: width {self.width} is not divisible by heads {self.heads}")


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float = 0.0, attention_dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(dropout)
        self.attention_dropout = attention_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # (B, N, 3, H, D/H) -> 3 x (B, H, N, D/H): the layout of public ViT checkpoints.
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attention_dropout if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, d)))


class Mlp(nn.Module):
    def __init__(self, width: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-LN encoder block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_dim: int, dropout: float = 0.0,
                 attention_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = Attention(width, heads, dropout, attention_dropout)
        self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches, linearly projected (a stride-p convolution)."""

    def __init__(self, patch_size: int, width: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=patch_size)

    def grid_size(self, image_size: int) -> int:
        if image_size % self.patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {self.patch_size}")
        return image_size // self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class VisionTransformer(ClassifierMixin, nn.Module):
    def __init__(self, shape: ViTShape, num_classes: int = 1000, image_size: int = 224,
                 representation_size: int | None = None, pool: str = "token", dropout: float = 0.0,
                 attention_dropout: float = 0.0, in_chans: int = 3, patch_embed: nn.Module | None = None):
        super().__init__()
        if pool not in ("token", "gap"):
            raise ValueError(f"pool must be 'token' (class token) or 'gap' (global average pooling), got {pool!r}")
        self.shape, self.pool_type, self.image_size = shape, pool, image_size
        self.patch_embed = patch_embed or PatchEmbed(shape.patch_size, shape.width, in_chans)
        self.num_prefix_tokens = 1 if pool == "token" else 0
        num_patches = self.patch_embed.grid_size(image_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, shape.width)) if pool == "token" else None
        self.pos_embed = nn.Parameter(torch.empty(1, self.num_prefix_tokens + num_patches, shape.width))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[
            Block(shape.width, shape.heads, shape.mlp_dim, dropout, attention_dropout)
            for _ in range(shape.depth)])
        self.norm = nn.LayerNorm(shape.width, eps=LN_EPS)
        self.pooled_features = shape.width
        self.head = ClassifierHead(shape.width, num_classes, representation_size)
        self._init_weights()

    def _init_weights(self) -> None:
        # The authors' initialization: position embeddings N(0, 0.02), Xavier-uniform dense kernels
        # with near-zero biases, LeCun-normal patch projection, zero class token and classifier.
        nn.init.normal_(self.pos_embed, std=0.02)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.startswith("head.fc"):
                nn.init.xavier_uniform_(module.weight)
                nn.init.normal_(module.bias, std=1e-6)
        if isinstance(self.patch_embed, PatchEmbed):
            proj = self.patch_embed.proj
            fan_in = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]
            nn.init.trunc_normal_(proj.weight, std=math.sqrt(1.0 / fan_in))
            nn.init.zeros_(proj.bias)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if x.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(
                f"input gives {x.shape[1]} tokens but the position embedding has {self.pos_embed.shape[1]} "
                f"(built for {self.image_size}px); call set_image_size(new_size) first")
        x = self.blocks(self.pos_drop(x + self.pos_embed))
        x = self.norm(x)
        return x[:, 0] if self.pool_type == "token" else x.mean(dim=1)

    def set_image_size(self, image_size: int, mode: str = "bilinear") -> None:
        """Change the input resolution: the class-token embedding is kept, the patch position
        embeddings are reshaped to their 2-D grid and interpolated to the new grid (Sec. 3.2).
        ``mode="bilinear"`` as in the authors' code; ``"bicubic"`` as in timm."""
        new_grid = self.patch_embed.grid_size(image_size)
        with torch.no_grad():
            self.pos_embed = nn.Parameter(resize_pos_embed(
                self.pos_embed.data, new_grid, self.num_prefix_tokens, mode))
        self.image_size = image_size


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: int, num_prefix_tokens: int = 1,
                     mode: str = "bilinear") -> torch.Tensor:
    """(1, prefix + g*g, D) -> (1, prefix + new_grid^2, D) by 2-D interpolation of the grid part."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old_grid = math.isqrt(grid.shape[1])
    if old_grid * old_grid != grid.shape[1]:
        raise ValueError(f"position embedding has {grid.shape[1]} patch positions, not a square grid")
    if old_grid == new_grid:
        return pos_embed.clone()
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
