"""Synthetic JFT-like data: procedural scenes of coloured shapes, multi-label, long-tailed.

A class is a (shape, colour, pattern) combination; there are ``len(SHAPES) * len(HUES) *
len(PATTERNS)`` of them in one global class space, numbered so that the first classes differ in
shape and colour (easy to see at 32 px) and later ones add patterns. Tasks:

- ``pretrain``: 1-3 objects per image, classes drawn from a Zipf (long-tailed) distribution over
  classes ``[0, K)``; labels are the classes present (multi-label); optional label noise.
- ``novel``: one object per image from classes ``[offset, offset + K)`` not seen in pretraining
  (uniform), single label, train/test splits: measures transfer to new concepts.
- ``count``: 1..K objects of pretraining classes; the label is the number of objects minus one.

Every image is a pure function of (seed, task, split, index), so the output does not depend on how
many shards or processes made it.
"""
from __future__ import annotations

import colorsys
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pipeline.data.format import Row, new_manifest, shard_name, write_manifest, write_shard
from pipeline.data.parallel import run_jobs

SHAPES = ("disc", "square", "triangle", "diamond", "ring", "cross", "star", "bar")
HUES = tuple(i / 12 for i in range(12))
PATTERNS = ("solid", "hollow", "hstripes", "vstripes", "checker", "dot")
NUM_GLOBAL_CLASSES = len(SHAPES) * len(HUES) * len(PATTERNS)
TASKS = ("pretrain", "novel", "count")
_TASK_CODE = {"pretrain": 0, "novel": 1, "count": 2}
_SPLIT_CODE = {"train": 0, "test": 1, "val": 2}


def class_attributes(c: int) -> tuple[str, float, str]:
    """Global class id -> (shape, hue, pattern)."""
    if not 0 <= c < NUM_GLOBAL_CLASSES:
        raise ValueError(f"class {c} outside the synthetic class space [0, {NUM_GLOBAL_CLASSES})")
    return (SHAPES[c % len(SHAPES)], HUES[(c // len(SHAPES)) % len(HUES)],
            PATTERNS[c // (len(SHAPES) * len(HUES))])


def class_name(c: int) -> str:
    shape, hue, pattern = class_attributes(c)
    return f"{pattern}-{shape}-hue{int(round(hue * 360)):03d}"


def zipf_probs(num_classes: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, num_classes + 1) ** exponent
    return p / p.sum()


# --------------------------------------------------------------------------------------------
# Drawing

def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    if shape == "cross":
        t = r * 0.35
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t),
                (cx + r, cy + t), (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r),
                (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t)]
    if shape == "bar":
        return [(cx - r, cy - r * 0.35), (cx + r, cy - r * 0.35), (cx + r, cy + r * 0.35),
                (cx - r, cy + r * 0.35)]
    return None  # disc, ring: ellipses


def _draw_object(img: Image.Image, cls: int, cx: float, cy: float, r: float,
                 rng: np.random.Generator) -> None:
    shape, hue, pattern = class_attributes(cls)
    sat, val = rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0)
    color = tuple(int(255 * v) for v in colorsys.hsv_to_rgb(hue, sat, val))
    # Draw the object's silhouette into a mask, then paint colour (and pattern) through it.
    mask = Image.new("L", img.size, 0)
    d = ImageDraw.Draw(mask)
    poly = _polygon(shape, cx, cy, r)
    box = (cx - r, cy - r, cx + r, cy + r)
    if poly is not None:
        d.polygon(poly, fill=255)
    else:
        d.ellipse(box, fill=255)
        if shape == "ring":
            d.ellipse((cx - r * 0.5, cy - r * 0.5, cx + r * 0.5, cy + r * 0.5), fill=0)
    w = max(1, int(round(r * 0.3)))
    if pattern == "hollow":
        inner = Image.new("L", img.size, 0)
        di = ImageDraw.Draw(inner)
        ri = max(r - w, 1)
        poly_i = _polygon(shape, cx, cy, ri)
        if poly_i is not None:
            di.polygon(poly_i, fill=255)
        else:
            di.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=255)
        m, n = np.asarray(mask), np.asarray(inner)
        mask = Image.fromarray(np.where(n > 0, 0, m).astype(np.uint8))
    elif pattern in ("hstripes", "vstripes", "checker", "dot"):
        yy, xx = np.mgrid[0:img.size[1], 0:img.size[0]]
        period = max(2, 2 * w)
        if pattern == "hstripes":
            keep = (yy // (period // 2 or 1)) % 2 == 0
        elif pattern == "vstripes":
            keep = (xx // (period // 2 or 1)) % 2 == 0
        elif pattern == "checker":
            keep = ((yy // period) + (xx // period)) % 2 == 0
        else:  # a dark dot in the middle
            keep = (xx - cx) ** 2 + (yy - cy) ** 2 > (r * 0.35) ** 2
        m = np.asarray(mask)
        dark = np.where(keep, 0, m).astype(np.uint8)
        img.paste((20, 20, 20), mask=Image.fromarray(dark))
        mask = Image.fromarray(np.where(keep, m, 0).astype(np.uint8))
    img.paste(color, mask=mask)


def render_scene(classes: list[int], size: int, rng: np.random.Generator) -> Image.Image:
    """A scene: a smooth random background with the given objects at random places and sizes.
    Drawn at 2x and downsampled below 128 px, for clean edges at tiny sizes."""
    scale = 2 if size < 128 else 1
    s = size * scale
    # Background: a low-saturation gradient plus mild noise (so images are not trivially coded).
    c0, c1 = rng.uniform(60, 200, size=3), rng.uniform(60, 200, size=3)
    c0 = c0.mean() + (c0 - c0.mean()) * 0.3
    c1 = c1.mean() + (c1 - c1.mean()) * 0.3
    t = np.linspace(0, 1, s)[:, None, None]
    if rng.random() < 0.5:
        bg = c0 + (c1 - c0) * t + np.zeros((1, s, 1))
    else:
        bg = c0 + (c1 - c0) * t.transpose(1, 0, 2) + np.zeros((s, 1, 1))
    bg = bg + rng.normal(0, 6, size=(s, s, 1))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    for cls in classes:
        r = rng.uniform(0.14, 0.26) * s
        cx, cy = rng.uniform(r, s - r), rng.uniform(r, s - r)
        _draw_object(img, int(cls), cx, cy, r, rng)
    if scale != 1:
        img = img.reduce(scale)
    return img


def encode_image(img: Image.Image, encoding: str) -> bytes:
    buf = io.BytesIO()
    if encoding == "png":
        img.save(buf, format="PNG", compress_level=1)
    elif encoding == "jpeg":
        img.save(buf, format="JPEG", quality=90)
    else:
        raise ValueError(f"encoding must be png or jpeg, got {encoding!r}")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Examples

def make_example(task: str, split: str, index: int, *, seed: int, num_classes: int,
                 image_size: int, exponent: float, label_noise: float, class_offset: int,
                 max_objects: int) -> tuple[Image.Image, list[int]]:
    rng = np.random.default_rng([seed, _TASK_CODE[task], _SPLIT_CODE[split], index])
    if task == "pretrain":
        n = int(rng.choice(np.arange(1, max_objects + 1),
                           p=zipf_probs(max_objects, 1.0)))
        classes = [int(c) for c in rng.choice(num_classes, size=n, p=zipf_probs(num_classes, exponent))]
        img = render_scene(classes, image_size, rng)
        labels = sorted(set(classes))
        if label_noise > 0:
            # Web-like noise: a label is replaced by a random class, or a spurious one is added.
            labels = [int(rng.integers(num_classes)) if rng.random() < label_noise else c
                      for c in labels]
            if rng.random() < label_noise / 2:
                labels.append(int(rng.integers(num_classes)))
            labels = sorted(set(labels))
        return img, labels
    if task == "novel":
        c = int(rng.integers(num_classes))
        return render_scene([class_offset + c], image_size, rng), [c]
    if task == "count":
        n = int(rng.integers(1, num_classes + 1))
        classes = [int(c) for c in rng.integers(0, class_offset, size=n)]
        return render_scene(classes, image_size, rng), [n - 1]
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _make_shard(out: str, name: str, task: str, split: str, first: int, stop: int,
                subset_seed: int, encoding: str, params: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for i in range(first, stop):
        img, labels = make_example(task, split, i, **params)
        rows.append(Row(f"{task}{params['seed']}-{split}-{i:09d}", encode_image(img, encoding), labels))
    return write_shard(Path(out) / name, rows, subset_seed)


def generate(out: str | Path, *, images: int, classes: int, image_size: int = 32,
             shards: int | None = None, seed: int = 0, task: str = "pretrain",
             test_images: int | None = None, val_images: int | None = None,
             label_noise: float = 0.0, exponent: float = 1.0,
             class_offset: int = 100, max_objects: int = 3, encoding: str | None = None,
             executor: str = "auto", progress: bool = True) -> Path:
    """Generate a synthetic dataset at ``out`` and return its path.

    Pretraining sets have one split ("train"); downstream tasks also get a "test" split of
    ``test_images`` (default: a quarter of ``images``). ``val_images`` adds a held-out "val"
    split drawn like "train" (the pretraining validation slice of the paper's early stopping).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if images < 1 or classes < 1:
        raise ValueError("need at least one image and one class")
    if task == "novel" and class_offset + classes > NUM_GLOBAL_CLASSES:
        raise ValueError(f"novel classes [{class_offset}, {class_offset + classes}) exceed the "
                         f"synthetic class space of {NUM_GLOBAL_CLASSES}")
    if task == "pretrain" and classes > NUM_GLOBAL_CLASSES:
        raise ValueError(f"the synthetic generator has {NUM_GLOBAL_CLASSES} distinct classes; "
                         f"asked for {classes}")
    if task == "pretrain" and class_offset < classes:
        class_offset = classes  # novel classes start after the pretraining ones
    encoding = encoding or ("png" if image_size <= 64 else "jpeg")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split_sizes = {"train": images}
    if task != "pretrain":
        split_sizes["test"] = test_images if test_images is not None else max(1, images // 4)
    if val_images:
        split_sizes["val"] = val_images
    params = dict(seed=seed, num_classes=classes, image_size=image_size, exponent=exponent,
                  label_noise=label_noise, class_offset=class_offset, max_objects=max_objects)
    jobs, weights, where = [], [], []
    for split, n in split_sizes.items():
        m = shards or max(1, math.ceil(n / 2000))
        m = min(m, n)
        bounds = np.linspace(0, n, m + 1).round().astype(int)
        for k in range(m):
            jobs.append((str(out), shard_name(split, k, m), task, split, int(bounds[k]),
                         int(bounds[k + 1]), seed, encoding, params))
            weights.append(int(bounds[k + 1] - bounds[k]))
            where.append(split)
    entries = run_jobs(_make_shard, jobs, weights=weights, desc=f"synth {task} -> {out.name}",
                       unit="img", executor=executor, progress=progress)
    if task == "pretrain":
        names = [class_name(c) for c in range(classes)]
    elif task == "novel":
        names = [class_name(class_offset + c) for c in range(classes)]
    else:
        names = [f"{n + 1} objects" for n in range(classes)]
    manifest = new_manifest(
        name=out.name, num_classes=classes, multi_label=(task == "pretrain"),
        image={"encoding": encoding, "height": image_size, "width": image_size, "channels": 3},
        subset_seed=seed, class_names=names,
        source={"generator": "pipeline.data.synth", "task": task, "images": images,
                "test_images": split_sizes.get("test"), "encoding": encoding, **params})
    for split in split_sizes:
        split_entries = [e for e, w in zip(entries, where) if w == split]
        manifest["splits"][split] = {"num_rows": sum(e["num_rows"] for e in split_entries),
                                     "shards": split_entries}
    write_manifest(out, manifest)
    return out
