"""Image decoding and augmentation with PIL + numpy (no torchvision).

Train: inception-style random crop (area 5%-100% of the image, aspect 3/4-4/3; the paper's
pretraining augmentation as in the authors' big_vision ``inception_crop``) + horizontal flip.
:func:`decode_train` does it from the encoded bytes: the crop box is drawn on the header's size,
a large JPEG decodes reduced in the DCT domain when the box stays at least the output size, and
the box is resized with torch's uint8 kernel (bilinear, antialiased like PIL's, 2-4x faster).
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


def open_image(data: bytes) -> Image.Image:
    """The image's header (size, format, mode), its pixels not yet decoded: ``load()`` decodes
    them. Raises :class:`UndecodableImage`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        raise UndecodableImage(f"cannot decode image ({len(data)} bytes): {type(e).__name__}: {e}") from e


# Grayscale modes of more than 8 bits, scaled from 0..65535 to 0..255 (a 16-bit PNG opens as I;16 or I)
DEEP_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _load_rgb(img: Image.Image, nbytes: int) -> Image.Image:
    """Decode an opened image to RGB (grayscale, palette, alpha all become RGB)."""
    try:
        img.load()
    except Exception as e:
        raise UndecodableImage(f"cannot decode image ({nbytes} bytes): {type(e).__name__}: {e}") from e
    if img.mode in DEEP_GRAY:   # 16-bit grayscale (PNG, TIFF): PIL's convert would clip it at 255
        img = Image.fromarray(np.round(np.asarray(img, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
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


def decode_rgb(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Decode encoded bytes to an RGB image (grayscale, palette, alpha all become RGB).

    ``draft_size`` lets JPEG decode at a reduced scale (a large speed-up for big photos) as long as
    both sides stay at least that large.
    """
    img = open_image(data)
    if draft_size and img.format == "JPEG":
        img.draft("RGB", (draft_size, draft_size))
    return _load_rgb(img, len(data))


def inception_crop_box(width: int, height: int, rng: np.random.Generator,
                       area_range=(0.05, 1.0), ratio_range=(3 / 4, 4 / 3),
                       attempts: int = 10) -> tuple[int, int, int, int]:
    """A random crop box (left, top, right, bottom) covering a random area fraction and aspect."""
    area = width * height
    log_r = (math.log(ratio_range[0]), math.log(ratio_range[1]))
    # lo + (hi - lo) * rng.random() is numpy's uniform(lo, hi) draw for draw, at half its cost
    area_lo, area_span = area_range[0], area_range[1] - area_range[0]
    for _ in range(attempts):
        target = area * (area_lo + area_span * rng.random())
        ratio = math.exp(log_r[0] + (log_r[1] - log_r[0]) * rng.random())
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
    """Inception crop + flip of a decoded image (:func:`decode_train` does the same from bytes,
    faster for large JPEGs)."""
    box = inception_crop_box(img.width, img.height, rng, area_range=(min_crop_area, 1.0))
    return _crop_resize_flip(img, box, image_size, rng)


def crop_resize(img: Image.Image, box: tuple[int, int, int, int], image_size: int) -> np.ndarray:
    """The pixels of ``box`` (integer edges) resized to ``image_size`` x ``image_size``, HWC uint8:
    bilinear, antialiased when shrinking, as PIL's ``resize(box=...)`` (within 1 grey level inside
    the box; at its edges PIL's filter also reads pixels outside it), but 2-4x faster: torch's
    vectorised uint8 kernel (bench/RESULTS.md, issue 17)."""
    return resize_region(np.array(img.crop(box)), image_size)   # a writable copy of the box only


def resize_region(region_hwc: np.ndarray, image_size: int) -> np.ndarray:
    """An HWC uint8 region resized to ``image_size`` square (see :func:`crop_resize`)."""
    if region_hwc.shape[:2] == (image_size, image_size):
        return region_hwc    # the kernel at scale 1 returns its input, pixel for pixel
    import torch
    region = torch.from_numpy(np.ascontiguousarray(region_hwc))
    out = torch.nn.functional.interpolate(region.permute(2, 0, 1).unsqueeze(0), size=(image_size, image_size),
                                          mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def _crop_resize_flip(img: Image.Image, box, image_size: int, rng: np.random.Generator) -> np.ndarray:
    return _flip(crop_resize(img, box, image_size), rng)


def _flip(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The train augmentation's horizontal flip, with probability 1/2 (the draw after the box)."""
    return arr[:, ::-1] if rng.random() < 0.5 else arr


DRAFT_SCALES = (8, 4, 2)   # the reductions libjpeg decodes to in the DCT domain


def draft_scale(box: tuple[float, float, float, float], image_size: int) -> int:
    """The largest JPEG reduction (1/8, 1/4, 1/2; else 1) that leaves the crop ``box`` at least
    ``image_size`` pixels on both sides: the crop is then still downscaled (never upscaled) to
    ``image_size``, so no detail the output could show is lost."""
    side = min(box[2] - box[0], box[3] - box[1])
    return next((s for s in DRAFT_SCALES if side >= s * image_size), 1)


def decode_train(data: bytes, image_size: int, rng: np.random.Generator,
                 min_crop_area: float = 0.05, cache: "DecodedCache | None" = None) -> np.ndarray:
    """Decode + inception crop + flip, as ``train_transform(decode_rgb(data), ...)`` does, with
    the same random draws (the same box and flip), but faster for large JPEGs: the crop box is
    chosen on the header's size, then the JPEG is decoded at the largest DCT-domain reduction
    that keeps the box at least ``image_size`` on both sides (:func:`draft_scale`), and the box
    is mapped into the reduced image. Other formats and smaller crops decode in full; with a
    ``cache``, an image decoded in full is kept there and not decoded again."""
    key = (data,)
    pixels = cache.get(key) if cache is not None else None
    if pixels is not None:   # decoded before, in full: the same draws, the same box
        box = inception_crop_box(pixels.shape[1], pixels.shape[0], rng, area_range=(min_crop_area, 1.0))
        return _box_resized_flipped(pixels, box, image_size, rng, cache, data)
    img = open_image(data)
    width, height = img.size
    box = inception_crop_box(width, height, rng, area_range=(min_crop_area, 1.0))
    scale = draft_scale(box, image_size) if img.format == "JPEG" else 1
    pixels = _turbo_rgb(data) if scale == 1 and img.format == "JPEG" and img.mode in ("RGB", "L") else None
    if pixels is None and scale == 1:
        pixels = np.array(_load_rgb(img, len(data)))
    if pixels is not None:   # decoded in full
        if cache is not None:
            cache.put(key, pixels)
        return _box_resized_flipped(pixels, box, image_size, rng, cache, data)
    drafted = img.draft("RGB", (width // scale, height // scale))
    img = _load_rgb(img, len(data))
    # drafted[1] is the whole image's extent in reduced pixels (size / scale): the reduced pixel i
    # covers the original's [i * scale, (i + 1) * scale), so the box maps to box / scale, a
    # fractional box PIL resamples exactly (rounding it to whole pixels, as the torch kernel
    # needs, would shift the crop by up to half a reduced pixel).
    fx, fy = drafted[1][2] / width, drafted[1][3] / height
    reduced = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
    return _flip(np.asarray(img.resize((image_size, image_size), Image.BILINEAR, box=reduced)), rng)


def _box_resized_flipped(pixels: np.ndarray, box: tuple[int, int, int, int], image_size: int,
                         rng: np.random.Generator, cache: "DecodedCache | None" = None, data: bytes = b"") -> np.ndarray:
    """The train crop of a fully decoded HWC image: its box resized (:func:`resize_region`), then the
    flip. With a ``cache``, a box that is the whole image keeps its resize there (key: the bytes and
    the size): a small set trained at another size than it is stored at (digits 8 -> 32 px, fine-tuned
    with ``min_crop_area`` 1, whose boxes are whole images) resizes each image once per process."""
    height, width = pixels.shape[:2]
    whole = cache is not None and box == (0, 0, width, height) and (height, width) != (image_size, image_size)
    resized = cache.get((data, image_size)) if whole else None
    if resized is None:
        resized = resize_region(pixels[box[1]:box[3], box[0]:box[2]], image_size)
        if whole:
            cache.put((data, image_size), resized)
    return _flip(resized, rng)


def _turbo_rgb(data: bytes) -> np.ndarray | None:
    """A JPEG decoded by simplejpeg (libjpeg-turbo's TurboJPEG API straight into numpy: the same
    pixels as Pillow's libjpeg-turbo decode, 1.4x faster on photos; bench/RESULTS.md, issue 17), or
    None when simplejpeg is missing or refuses the file (Pillow decodes it then)."""
    try:
        import simplejpeg
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False)
    except (ImportError, ValueError):
        return None


def decode_eval(data: bytes, image_size: int, crop_fraction: float = 0.875,
                cache: "DecodedCache | None" = None) -> np.ndarray:
    """Decode + resize + central crop (:func:`eval_transform`), JPEGs decoded reduced to the resize's
    size; with a ``cache``, the result is kept there and an image is not decoded twice."""
    key = (data, image_size, crop_fraction)
    arr = cache.get(key) if cache is not None else None
    if arr is None:
        arr = eval_transform(decode_rgb(data, draft_size=int(image_size / crop_fraction)), image_size, crop_fraction)
        if cache is not None:
            cache.put(key, arr)
    return arr


class DecodedCache:
    """Decoded pixels of one process, by the encoded bytes they came from (so never stale), up to
    ``budget`` bytes; when it is full nothing more is kept. A small dataset (the tiny and smoke
    presets' glyphs, the digits) is then decoded once per process, not once per epoch, validation,
    learning-curve probe and fine-tuning trial: on 32-px glyphs decoding was a quarter of a tiny
    run's step time (bench/RESULTS.md, issue 31)."""

    def __init__(self, budget: int):
        self.budget, self.used, self.items = budget, 0, {}

    def get(self, key: tuple) -> np.ndarray | None:
        return self.items.get(key)

    def put(self, key: tuple, pixels: np.ndarray) -> None:
        """``key``: (encoded bytes, what else the pixels depend on...); the bytes count too (kept alive)."""
        size = pixels.nbytes + len(key[0])
        if self.used + size <= self.budget and key not in self.items:
            self.items[key] = pixels
            self.used += size


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
    # copy=True: a float32 input is not scaled in place (its owner keeps it); uint8 is copied anyway
    return images.to(torch.float32, copy=True).mul_(2.0 / 255.0).sub_(1.0)


STORED_JPEG_QUALITY = 90   # what resized JPEG sources are re-encoded with (max_short_side)


def normalize_image(data: bytes, max_short_side: int | None = None) -> tuple[bytes, str, tuple[int, int]]:
    """(bytes to store, "jpeg"|"png", (width, height)). Raises UndecodableImage.

    With ``max_short_side``, an image whose shorter side is longer is resized (Lanczos) to have
    exactly that shorter side: JPEG sources are re-encoded as JPEG (quality 90), others as PNG."""
    img = decode_rgb(data)  # full decode: validates the file
    original = Image.open(io.BytesIO(data))
    if max_short_side is not None and min(img.size) > max_short_side:
        img = img.resize(shorter_side_size(img.size, max_short_side), Image.LANCZOS)
        buf = io.BytesIO()
        if original.format == "JPEG":
            img.save(buf, format="JPEG", quality=STORED_JPEG_QUALITY)
            return buf.getvalue(), "jpeg", img.size
        img.save(buf, format="PNG", compress_level=6)
        return buf.getvalue(), "png", img.size
    if original.format in ("JPEG", "PNG") and original.mode == "RGB":
        return data, original.format.lower(), img.size
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue(), "png", img.size


def shorter_side_size(size: tuple[int, int], short: int) -> tuple[int, int]:
    """(width, height) scaled so that the shorter side is ``short`` (the aspect ratio kept)."""
    w, h = size
    if w <= h:
        return short, max(short, round(h * short / w))
    return max(short, round(w * short / h)), short
