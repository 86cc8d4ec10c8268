"""Synthetic JFT-like data: procedural scenes, multi-label, long-tailed, in two styles.

``style="shapes"`` (the default): a class is a (shape, colour, pattern) combination; there are
``len(SHAPES) * len(HUES) * len(PATTERNS)`` of them in one global class space, numbered so that the
first classes differ in shape and colour (easy to see at 32 px) and later ones add patterns.

``style="glyphs"``: a class is a fixed random stroke figure (``glyph_prototype``): 1-4 strokes
(straight lines, circular arcs, cubic Bezier curves), mostly joined, in a class space of
``NUM_GLYPH_CLASSES`` that is the same for every dataset seed. Each sample of a class is the
prototype under a smooth random warp and a random affine map (rotation, anisotropic scale,
shear), drawn with a random pen width (``GLYPH_STROKE_WIDTH``) as light ink on a dark surface or
dark ink on a light one, in grey levels with a faint tint, gradient and noise; half the images
are captured at a lower resolution and scaled back up (``GLYPH_LOWRES_FRACTION``). Nothing in it
comes from a downstream set: the figures are random strokes, like an alphabet nobody writes.
Pretraining on it gives features that transfer to handwriting-like images (digits), where the
filled coloured shapes do not (bench/RESULTS.md, issue 5).

Tasks (either style):

- ``pretrain``: 1-3 objects per image (``max_objects``), classes drawn from a Zipf (long-tailed)
  distribution over classes ``[0, K)``; labels are the classes present (multi-label); optional
  label noise. ``max_objects=1`` gives one object per image (still Zipf over classes).
- ``novel``: one object per image from classes ``[offset, offset + K)`` not seen in pretraining
  (uniform), single label, train/test splits: measures transfer to new concepts.
- ``count``: 1..K objects of pretraining classes; the label is the number of objects minus one.

Every image is a pure function of (seed, style, task, split, index), so the output does not depend
on how many shards or processes made it.
"""
from __future__ import annotations

import colorsys
import functools
import io
import math
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline import storage
from pipeline.data.format import Row, new_manifest, shard_name, write_manifest, write_shard
from pipeline.data.parallel import run_jobs

SHAPES = ("disc", "square", "triangle", "diamond", "ring", "cross", "star", "bar")
HUES = tuple(i / 12 for i in range(12))
PATTERNS = ("solid", "hollow", "hstripes", "vstripes", "checker", "dot")
NUM_GLOBAL_CLASSES = len(SHAPES) * len(HUES) * len(PATTERNS)
Task = Literal["pretrain", "novel", "count"]
Style = Literal["shapes", "glyphs"]
TASKS: tuple[str, ...] = get_args(Task)
STYLES: tuple[str, ...] = get_args(Style)
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


def glyph_name(c: int) -> str:
    return f"glyph{c:04d}"


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


# --------------------------------------------------------------------------------------------
# Glyphs: procedural stroke figures (style="glyphs")

NUM_GLYPH_CLASSES = 10_000
_GLYPH_SPACE_SEED = 0x6C79_7068   # fixes the glyph class space; independent of a dataset's seed
_POINTS_PER_STROKE = 24
# Rendering ranges of the glyph style (fractions of the frame or of a glyph's half-size).
GLYPH_LOWRES_FRACTION = 0.5          # images captured at a lower resolution, then scaled up
GLYPH_SINGLE_SIZE = (0.3, 0.42)      # half-size of a lone glyph, fraction of the frame
GLYPH_MULTI_SIZE = (0.14, 0.26)      # half-size of each glyph in a scene of several
GLYPH_STROKE_WIDTH = (0.2, 0.5)      # stroke width, fraction of the glyph's half-size


def _bezier(ctrl: np.ndarray, n: int) -> np.ndarray:
    """n points along the cubic Bezier curve with control points ``ctrl`` (4, 2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return ((1 - t) ** 3 * ctrl[0] + 3 * (1 - t) ** 2 * t * ctrl[1] + 3 * (1 - t) * t ** 2 * ctrl[2]
            + t ** 3 * ctrl[3])


@functools.lru_cache(maxsize=None)
def glyph_prototype(c: int) -> tuple[np.ndarray, ...]:
    """The prototype of glyph class ``c``: 1-4 strokes, each a polyline (P, 2) in [-1, 1]^2.

    A pure function of ``c`` (the glyph class space is the same for every dataset seed). Strokes
    are straight lines, circular arcs or cubic Bezier curves; after the first, a stroke starts on
    an earlier stroke with probability 0.6, so glyphs are mostly connected figures, as handwriting
    and printed characters are. The figure is centred and scaled so its longer side spans [-1, 1].
    Made once per class and process (12% of a glyph image's making): the arrays are read-only.
    """
    if not 0 <= c < NUM_GLYPH_CLASSES:
        raise ValueError(f"class {c} outside the glyph class space [0, {NUM_GLYPH_CLASSES})")
    rng = np.random.default_rng([_GLYPH_SPACE_SEED, c])
    n_strokes = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.35, 0.3, 0.15]))
    strokes: list[np.ndarray] = []
    for _ in range(n_strokes):
        if strokes and rng.random() < 0.6:
            prev = strokes[int(rng.integers(len(strokes)))]
            start = prev[int(rng.integers(len(prev)))]
        else:
            start = rng.uniform(-0.8, 0.8, size=2)
        kind = rng.choice(["line", "arc", "curve"], p=[0.35, 0.3, 0.35])
        if kind == "line":
            angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.6, 1.6)
            end = start + length * np.array([math.cos(angle), math.sin(angle)])
            pts = start + np.linspace(0, 1, _POINTS_PER_STROKE)[:, None] * (end - start)
        elif kind == "arc":
            radius = rng.uniform(0.3, 0.8)
            a0 = rng.uniform(0, 2 * math.pi)
            sweep = rng.uniform(math.pi / 2, 1.9 * math.pi) * rng.choice([-1, 1])
            centre = start - radius * np.array([math.cos(a0), math.sin(a0)])
            a = a0 + np.linspace(0, sweep, _POINTS_PER_STROKE)
            pts = centre + radius * np.stack([np.cos(a), np.sin(a)], axis=1)
        else:
            ctrl = np.vstack([start, rng.uniform(-1, 1, size=(3, 2))])
            pts = _bezier(ctrl, _POINTS_PER_STROKE)
        strokes.append(pts)
    allpts = np.concatenate(strokes)
    lo, hi = allpts.min(0), allpts.max(0)
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-3)
    out = tuple((s - centre) / half for s in strokes)
    for stroke in out:
        stroke.flags.writeable = False
    return out


def _jitter_glyph(strokes: tuple[np.ndarray, ...], rng: np.random.Generator) -> list[np.ndarray]:
    """One sample of a glyph: a smooth random warp (elastic-ish), then a random affine map
    (rotation, anisotropic scale, shear). Output still roughly in [-1, 1]^2."""
    # Warp: a displacement field of two random low-frequency sinusoids per axis.
    freq = rng.uniform(0.5, 1.5, size=(2, 2, 2)) * math.pi / 2
    phase = rng.uniform(0, 2 * math.pi, size=(2, 2))
    amp = rng.uniform(0.0, 0.08, size=(2, 2))
    angle = rng.normal(0, 0.2)
    shear = rng.normal(0, 0.2)
    scale = np.exp(rng.normal(0, 0.1, size=2))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    affine = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(scale)
    out = []
    for s in strokes:
        d = np.zeros_like(s)
        for axis in range(2):
            for k in range(2):
                d[:, axis] += amp[axis, k] * np.sin(s @ freq[axis, k] + phase[axis, k])
        out.append((s + d) @ affine.T)
    return out


def _draw_glyph(draw: ImageDraw.ImageDraw, strokes: list[np.ndarray], cx: float, cy: float,
                r: float, width: float, ink: int) -> None:
    """Strokes as round-capped, round-jointed lines of ``width`` px on a grey-level canvas."""
    rad = width / 2
    for s in strokes:
        pts = [(cx + r * x, cy + r * y) for x, y in s]
        draw.line(pts, fill=ink, width=max(1, round(width)), joint="curve")
        for x, y in (pts[0], pts[-1]):
            draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=ink)


def render_glyph_scene(classes: list[int], size: int, rng: np.random.Generator) -> Image.Image:
    """Glyphs as ink strokes on a plain surface, in grey levels.

    Light ink on a dark surface or dark ink on a light one (even odds), each with a random grey
    level, a faint colour tint, a soft gradient and sensor noise. One glyph fills most of the
    frame; several share it at smaller sizes. Each glyph is jittered (``_jitter_glyph``) and drawn
    with a random stroke width. Half of the images are then captured at a lower resolution
    (drawn at 8..size px and scaled back up), as web images come at every resolution.
    """
    low = rng.random() < GLYPH_LOWRES_FRACTION
    draw_size = int(rng.integers(8, size + 1)) if low else size
    scale = 4 if draw_size < 64 else 2 if draw_size < 128 else 1
    s = draw_size * scale
    dark_ground = rng.random() < 0.5
    ground = rng.uniform(0, 90) if dark_ground else rng.uniform(165, 255)
    ink = rng.uniform(170, 255) if dark_ground else rng.uniform(0, 90)
    canvas = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(canvas)
    single = len(classes) == 1
    for cls in classes:
        r = rng.uniform(*GLYPH_SINGLE_SIZE) * s if single else rng.uniform(*GLYPH_MULTI_SIZE) * s
        margin = r * 0.9
        if single:
            cx, cy = s / 2 + rng.normal(0, 0.04 * s), s / 2 + rng.normal(0, 0.04 * s)
        else:
            cx, cy = rng.uniform(margin, s - margin), rng.uniform(margin, s - margin)
        width = rng.uniform(*GLYPH_STROKE_WIDTH) * r
        _draw_glyph(draw, _jitter_glyph(glyph_prototype(int(cls)), rng), cx, cy, r, width, 255)
    if scale != 1:
        canvas = canvas.reduce(scale)
    alpha = np.asarray(canvas, dtype=np.float64)[:, :, None] / 255.0
    if draw_size != size:
        alpha = np.asarray(Image.fromarray((alpha[:, :, 0] * 255).astype(np.uint8)).resize(
            (size, size), Image.BILINEAR), dtype=np.float64)[:, :, None] / 255.0
    tint = rng.normal(0, 8, size=3)
    t = np.linspace(-0.5, 0.5, size)
    gradient = rng.normal(0, 15) * (t[:, None] if rng.random() < 0.5 else t[None, :])
    surface = ground + gradient[:, :, None] + tint
    img = surface * (1 - alpha) + (ink + tint) * alpha + rng.normal(0, 4, size=(size, size, 1))
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8))


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

class SynthSpec(BaseModel):
    """What a synthetic dataset is; :func:`generate` writes the same bytes for the same spec. Also
    the ``synth:`` block of a study preset, so an unknown key there is an error naming it."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    images: int = Field(ge=1, description="images of the train split")
    classes: int = Field(ge=1)
    image_size: int = 32
    shards: int | None = Field(None, description="shards per split (None: 2000 images each)")
    seed: int = 0
    task: Task = "pretrain"
    test_images: int | None = Field(None, description="test split of a task (None: images // 4)")
    val_images: int | None = Field(None, description="held-out val split drawn like train")
    label_noise: float = 0.0
    exponent: float = Field(1.0, description="Zipf exponent of the class frequencies")
    class_offset: int = Field(100, description="novel: first class of the task in the class space")
    max_objects: int = 3
    style: Style = "shapes"
    encoding: Literal["png", "jpeg"] | None = Field(None, description="None: png up to 64 px, else jpeg")
    max_short_side: int | None = Field(None, ge=1, description="store images rendered larger than this "
                                       "resized to it (Lanczos); None: at image_size")

    @model_validator(mode="after")
    def _fits_class_space(self):
        space = NUM_GLOBAL_CLASSES if self.style == "shapes" else NUM_GLYPH_CLASSES
        if self.task == "novel" and self.class_offset + self.classes > space:
            raise ValueError(f"novel classes [{self.class_offset}, {self.class_offset + self.classes}) "
                             f"exceed the {self.style} class space of {space}")
        if self.task == "pretrain" and self.classes > space:
            raise ValueError(f"the synthetic generator has {space} distinct {self.style} classes; "
                             f"asked for {self.classes}")
        return self

    def resolved(self) -> SynthSpec:
        """The spec as generated: the encoding chosen, and a pretraining set's ``class_offset``
        (where novel classes would start) past its own classes."""
        offset = max(self.class_offset, self.classes) if self.task == "pretrain" else self.class_offset
        encoding = self.encoding or ("png" if self.stored_size <= 64 else "jpeg")
        return self.model_copy(update={"class_offset": offset, "encoding": encoding})

    @property
    def stored_size(self) -> int:
        """Pixels per side of the stored images: ``image_size``, at most ``max_short_side``."""
        return min(self.image_size, self.max_short_side or self.image_size)

    def split_sizes(self) -> dict[str, int]:
        """Rows per split: "train", a task's "test", and "val" when asked for."""
        sizes = {"train": self.images}
        if self.task != "pretrain":
            sizes["test"] = self.test_images if self.test_images is not None else max(1, self.images // 4)
        if self.val_images:
            sizes["val"] = self.val_images
        return sizes


def make_example(spec: SynthSpec, split: str, index: int) -> tuple[Image.Image, list[int]]:
    """Example ``index`` of ``split`` (a pure function of the spec's seed, style and task, the split
    and the index); ``spec`` as :meth:`SynthSpec.resolved` gives it."""
    rng = np.random.default_rng([spec.seed, _TASK_CODE[spec.task], _SPLIT_CODE[split], index])
    render = render_scene if spec.style == "shapes" else render_glyph_scene
    num_classes = spec.classes
    if spec.task == "pretrain":
        n = int(rng.choice(np.arange(1, spec.max_objects + 1),
                           p=zipf_probs(spec.max_objects, 1.0)))
        classes = [int(c) for c in rng.choice(num_classes, size=n, p=zipf_probs(num_classes, spec.exponent))]
        img = render(classes, spec.image_size, rng)
        labels = sorted(set(classes))
        if spec.label_noise > 0:
            # Web-like noise: a label is replaced by a random class, or a spurious one is added.
            labels = [int(rng.integers(num_classes)) if rng.random() < spec.label_noise else c
                      for c in labels]
            if rng.random() < spec.label_noise / 2:
                labels.append(int(rng.integers(num_classes)))
            labels = sorted(set(labels))
        return img, labels
    if spec.task == "novel":
        c = int(rng.integers(num_classes))
        return render([spec.class_offset + c], spec.image_size, rng), [c]
    n = int(rng.integers(1, num_classes + 1))   # count
    classes = [int(c) for c in rng.integers(0, spec.class_offset, size=n)]
    return render(classes, spec.image_size, rng), [n - 1]


def _make_shard(out: str, name: str, spec: SynthSpec, split: str, first: int,
                stop: int) -> dict[str, Any]:
    prefix = "" if spec.style == "shapes" else f"{spec.style}-"
    rows = []
    for i in range(first, stop):
        img, labels = make_example(spec, split, i)
        if spec.stored_size != spec.image_size:
            img = img.resize((spec.stored_size, spec.stored_size), Image.LANCZOS)
        rows.append(Row(f"{prefix}{spec.task}{spec.seed}-{split}-{i:09d}", encode_image(img, spec.encoding),
                        labels))
    return write_shard(storage.join(out, name), rows, spec.seed)


def _class_names(spec: SynthSpec) -> list[str]:
    name_of = class_name if spec.style == "shapes" else glyph_name
    if spec.task == "pretrain":
        return [name_of(c) for c in range(spec.classes)]
    if spec.task == "novel":
        return [name_of(spec.class_offset + c) for c in range(spec.classes)]
    return [f"{n + 1} objects" for n in range(spec.classes)]


def _source(spec: SynthSpec) -> dict[str, Any]:
    """The manifest's record of how the data was made (its keys, in this order, are on disk)."""
    return {"generator": "pipeline.data.synth", "task": spec.task, "images": spec.images,
            "test_images": spec.split_sizes().get("test"), "encoding": spec.encoding,
            "seed": spec.seed, "num_classes": spec.classes, "image_size": spec.image_size,
            "exponent": spec.exponent, "label_noise": spec.label_noise,
            "class_offset": spec.class_offset, "max_objects": spec.max_objects, "style": spec.style,
            **({"max_short_side": spec.max_short_side} if spec.max_short_side is not None else {})}


def generate(out: str | Path, spec: SynthSpec, *, executor: str = "auto", progress: bool = True) -> str:
    """Generate the synthetic dataset ``spec`` at ``out`` (a folder or a URI); return its path.

    Pretraining sets have one split ("train"); downstream tasks also get a "test" split of
    ``test_images`` (default: a quarter of ``images``). ``val_images`` adds a held-out "val"
    split drawn like "train" (the pretraining validation slice of the paper's early stopping).
    ``style`` picks what the objects are: "shapes" (coloured filled shapes, ``NUM_GLOBAL_CLASSES``
    classes) or "glyphs" (grey stroke figures, ``NUM_GLYPH_CLASSES`` classes); see the module
    docstring. Shards are made on ``executor`` (see :func:`~pipeline.data.parallel.run_jobs`).
    """
    spec = spec.resolved()
    out = storage.resolve(out)  # shards first, the manifest last
    storage.makedirs(out)
    jobs, weights, where = [], [], []
    for split, n in spec.split_sizes().items():
        m = min(spec.shards or max(1, math.ceil(n / 2000)), n)
        bounds = np.linspace(0, n, m + 1).round().astype(int)
        for k in range(m):
            jobs.append((str(out), shard_name(split, k, m), spec, split, int(bounds[k]), int(bounds[k + 1])))
            weights.append(int(bounds[k + 1] - bounds[k]))
            where.append(split)
    entries = run_jobs(_make_shard, jobs, weights=weights, desc=f"synth {spec.task} -> {storage.name(out)}",
                       unit="img", executor=executor, progress=progress)
    manifest = new_manifest(
        name=storage.name(out), num_classes=spec.classes, multi_label=(spec.task == "pretrain"),
        image={"encoding": spec.encoding, "height": spec.stored_size, "width": spec.stored_size,
               "channels": 3,   # max_short_side only when set (absent: stored as rendered)
               **({"max_short_side": spec.max_short_side} if spec.max_short_side is not None else {})},
        subset_seed=spec.seed, class_names=_class_names(spec), source=_source(spec))
    for split in spec.split_sizes():
        split_entries = [e for e, w in zip(entries, where) if w == split]
        manifest["splits"][split] = {"num_rows": sum(e["num_rows"] for e in split_entries),
                                     "shards": split_entries}
    write_manifest(out, manifest)
    return out
