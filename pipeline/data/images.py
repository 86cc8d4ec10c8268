"""Image decoding and augmentation with PIL + numpy (no torchvision).

Train: inception-style random crop (area 5%-100% of the image, aspect 3/4-4/3; the paper's
pretraining augmentation as in the authors' big_vision ``inception_crop``) + horizontal flip.
Eval: resize the shorter side to ``image_size / crop_fraction``, then a central crop.
Pixels are scaled to [-1, 1] as in the authors' code (``value_range(-1, 1)``).
"""
from __future__ import annotations

import io
import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported lazily: decode workers start faster without it
    import torch

# Decompression bombs in scraped data should fail loudly per row, not take the machine down.
Image.MAX_IMAGE_PIXELS = 16384 * 16384


class UndecodableImage(ValueError):
    pass


def decode_rgb(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Decode encoded bytes to an RGB image (grayscale, palette, alpha all become RGB).

    ``draft_size`` lets JPEG decode at a reduced scale (a large speed-up for big photos) as long as
    both sides stay at least that large.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        raise UndecodableImage(f"cannot decode image ({len(data)} bytes): {type(e).__name__}: {e}") from e
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            # Composite transparency on white rather than on arbitrary hidden colours.
            rgba = img.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.getchannel("A"))
            img = bg
        else:
            img = img.convert("RGB")
    return img


def inception_crop_box(width: int, height: int, rng: np.random.Generator,
                       area_range=(0.05, 1.0), ratio_range=(3 / 4, 4 / 3),
                       attempts: int = 10) -> tuple[int, int, int, int]:
    """A random crop box (left, top, right, bottom) covering a random area fraction and aspect."""
    area = width * height
    log_r = (math.log(ratio_range[0]), math.log(ratio_range[1]))
    for _ in range(attempts):
        target = area * rng.uniform(*area_range)
        ratio = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            x = int(rng.integers(0, width - w + 1))
            y = int(rng.integers(0, height - h + 1))
            return x, y, x + w, y + h
    # Fallback: the largest central crop within the aspect range.
    ratio = width / height
    if ratio < ratio_range[0]:
        w, h = width, int(round(width / ratio_range[0]))
    elif ratio > ratio_range[1]:
        w, h = int(round(height * ratio_range[1])), height
    else:
        w, h = width, height
    x, y = (width - w) // 2, (height - h) // 2
    return x, y, x + w, y + h


def train_transform(img: Image.Image, image_size: int, rng: np.random.Generator,
                    min_crop_area: float = 0.05) -> np.ndarray:
    box = inception_crop_box(img.width, img.height, rng, area_range=(min_crop_area, 1.0))
    out = img.resize((image_size, image_size), Image.BILINEAR, box=box)
    arr = np.asarray(out)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    return arr


def eval_transform(img: Image.Image, image_size: int, crop_fraction: float = 0.875) -> np.ndarray:
    short = min(img.width, img.height)
    resize_to = image_size / crop_fraction
    scale = resize_to / short
    # The central crop of side image_size in the resized image, mapped back to the source box.
    side = image_size / scale
    left, top = (img.width - side) / 2, (img.height - side) / 2
    out = img.resize((image_size, image_size), Image.BILINEAR,
                     box=(left, top, left + side, top + side))
    return np.asarray(out)


def to_nchw_uint8(images_hwc: list[np.ndarray]) -> "torch.Tensor":
    import torch
    return torch.from_numpy(np.stack(images_hwc)).permute(0, 3, 1, 2).contiguous()


def normalize_images(images: "torch.Tensor") -> "torch.Tensor":
    """uint8 NCHW -> float32 NCHW in [-1, 1], on whatever device the tensor is (on a GPU this is
    nearly free; on a CPU torch does it in one pass, 3x faster than numpy)."""
    import torch
    return images.to(torch.float32).mul_(2.0 / 255.0).sub_(1.0)
