"""Defect sets whose defect pixels are known, for per-pixel anomaly maps (in the spirit of MVTec AD).

Three kinds of defect, each drawn from a seeded generator:
- "scratch": a thin straight or slightly curved stroke (1-2 px at 28-32 px) far from the local intensity;
- "blob": a filled ellipse or irregular blob, brighter or darker than what it covers (a stain: the texture stays);
- "patch": a rectangle replaced by content from another image (or by noise when none is given).

The mask is exactly the pixels that changed, and each of them changed by at least `VISIBLE` in some channel:
pixels the defect would move by less are left as they were, so nothing outside the ground truth differs.
A defect covers between `MIN_AREA` and `MAX_AREA` of the image; a draw outside that is drawn again.

Two sets: Fashion-MNIST test images (`fashion_defects`) and crops of scikit-image's bundled textures
(`texture_defects`: brick, grass, gravel, no download). Texture crops for fitting come from the top 70%
of the texture's rows, test crops from the bottom 30%, so the two never share a pixel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("scratch", "blob", "patch")
TEXTURES = ("brick", "grass", "gravel")
VISIBLE = 0.1  # a pixel counts as defective when some channel moved by at least this much
MIN_AREA, MAX_AREA = 0.01, 0.10  # the defect's share of the image
TRAIN_ROWS = 0.7  # the top share of a texture's rows that train crops come from; test crops take the rest
ON_OBJECT = 0.8  # the share of Fashion-MNIST defects centred on the object (pixels > OBJECT_LEVEL)
OBJECT_LEVEL = 0.1
MAX_TRIES = 200


def add_defect(
    image: np.ndarray,
    rng: np.random.Generator,
    kind: str,
    *,
    source: np.ndarray | None = None,
    support: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One defect of `kind` on `image` (C, H, W) float32 in [0, 1]: the defective image and its mask (H, W) bool.

    `source` (C, H', W'), for a "patch": the image whose content fills the patch (noise when None).
    `support` (H, W) bool: where the defect's centre may fall (anywhere when None or empty).
    Draws again until the changed area lies in [MIN_AREA, MAX_AREA]; raises ValueError if it never does.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown defect kind {kind!r}: use one of {', '.join(KINDS)}")
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    image = image.astype(np.float32, copy=False)
    pixels = image.shape[1] * image.shape[2]
    for _ in range(MAX_TRIES):
        candidate = DRAW[kind](image, rng, centre(image.shape[1:], rng, support), source)  # (C, H, W)
        mask = np.abs(candidate - image).max(axis=0) >= VISIBLE  # (H, W)
        if MIN_AREA <= mask.sum() / pixels <= MAX_AREA:
            return np.where(mask, candidate, image).astype(np.float32), mask
    raise ValueError(f"no visible {kind} of {MIN_AREA:.0%}-{MAX_AREA:.0%} of the image in {MAX_TRIES} draws")


def centre(shape: tuple[int, ...], rng: np.random.Generator, support: np.ndarray | None) -> tuple[float, float]:
    """A defect's centre (row, column): a random pixel of `support`, or anywhere when it is None or empty."""
    if support is not None and support.any():
        rows, cols = np.nonzero(support)
        pick = rng.integers(len(rows))
        return float(rows[pick]), float(cols[pick])
    return float(rng.uniform(0, shape[0] - 1)), float(rng.uniform(0, shape[1] - 1))


def scratch(
    image: np.ndarray, rng: np.random.Generator, at: tuple[float, float], source: np.ndarray | None
) -> np.ndarray:
    """A thin stroke through `at`: a quadratic Bézier, bent by up to 15% of its length, of one grey level far
    from the mean of the pixels it crosses (bright on dark, dark on bright). 1-2 px wide per 30 px of image."""
    height, width = image.shape[1:]
    length = rng.uniform(0.3, 0.8) * min(height, width)
    angle = rng.uniform(0, np.pi)
    along = np.array([np.sin(angle), np.cos(angle)])  # (row, col)
    across = np.array([along[1], -along[0]])
    start, end = np.array(at) - along * length / 2, np.array(at) + along * length / 2
    bend = np.array(at) + across * rng.uniform(-0.15, 0.15) * length
    steps = np.linspace(0, 1, 16)[:, None]
    points = (1 - steps) ** 2 * start + 2 * (1 - steps) * steps * bend + steps**2 * end  # (16, 2) row, col
    stroke_width = max(1, round(int(rng.integers(1, 3)) * min(height, width) / 30))
    stroke = draw_mask(
        (height, width), lambda pen: pen.line([(c, r) for r, c in points], fill=1, width=stroke_width, joint="curve")
    )
    covered = float(image[:, stroke].mean()) if stroke.any() else 0.0
    level = rng.uniform(0.85, 1.0) if covered < 0.5 else rng.uniform(0.0, 0.15)
    return np.where(stroke, np.float32(level), image)


def blob(image: np.ndarray, rng: np.random.Generator, at: tuple[float, float], source: np.ndarray | None) -> np.ndarray:
    """A filled ellipse (half the time) or irregular blob of 2-7% of the image centred on `at`, that adds
    0.35-0.7 to what it covers, or takes it away: the direction with more room above the covered mean."""
    height, width = image.shape[1:]
    radius = np.sqrt(rng.uniform(0.02, 0.07) * height * width / np.pi)
    ratio = rng.uniform(0.5, 1.0)
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    wobble = np.ones_like(theta)
    if rng.random() < 0.5:  # irregular: three random harmonics on the radius
        for harmonic in (2, 3, 5):
            wobble += rng.uniform(0, 0.5 / harmonic) * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    tilt = rng.uniform(0, np.pi)
    x, y = radius * wobble * np.cos(theta) / np.sqrt(ratio), radius * wobble * np.sin(theta) * np.sqrt(ratio)
    cols = at[1] + x * np.cos(tilt) - y * np.sin(tilt)
    rows = at[0] + x * np.sin(tilt) + y * np.cos(tilt)
    shape = draw_mask((height, width), lambda pen: pen.polygon(list(zip(cols, rows, strict=True)), fill=1))
    covered = float(image[:, shape].mean()) if shape.any() else 0.0
    shift = rng.uniform(0.35, 0.7) * (1 if covered < 0.5 else -1)
    return np.where(shape, np.clip(image + shift, 0, 1), image)


def patch(
    image: np.ndarray, rng: np.random.Generator, at: tuple[float, float], source: np.ndarray | None
) -> np.ndarray:
    """A rectangle of 3-9% of the image (aspect 0.6-1.6) centred on `at`, filled with a random crop of
    `source` (resized to the image when smaller) or, without one, with uniform noise."""
    channels, height, width = image.shape
    area = rng.uniform(0.03, 0.09) * height * width
    aspect = rng.uniform(0.6, 1.6)
    rows = min(height, max(2, round(np.sqrt(area * aspect))))
    cols = min(width, max(2, round(np.sqrt(area / aspect))))
    top = int(np.clip(round(at[0] - rows / 2), 0, height - rows))
    left = int(np.clip(round(at[1] - cols / 2), 0, width - cols))
    if source is None:
        content = rng.uniform(0, 1, (channels, rows, cols)).astype(np.float32)
    else:
        if source.shape[1] < rows or source.shape[2] < cols:
            raise ValueError(f"source {source.shape} is smaller than the patch ({rows}, {cols})")
        r, c = rng.integers(0, source.shape[1] - rows + 1), rng.integers(0, source.shape[2] - cols + 1)
        content = np.broadcast_to(source[:, r : r + rows, c : c + cols], (channels, rows, cols))
    defective = image.copy()
    defective[:, top : top + rows, left : left + cols] = content
    return defective


Drawer = Callable[[np.ndarray, np.random.Generator, tuple[float, float], np.ndarray | None], np.ndarray]
DRAW: dict[str, Drawer] = {"scratch": scratch, "blob": blob, "patch": patch}


def draw_mask(shape: tuple[int, int], paint: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    """The (H, W) bool mask of what `paint` draws (with fill 1) on a blank canvas of `shape`."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    paint(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def kinds_for(count: int, rng: np.random.Generator) -> list[str]:
    """`count` defect kinds, as even a share of each as the count allows, in random order."""
    return [KINDS[i] for i in rng.permutation(np.arange(count) % len(KINDS))]


def fashion_defects(images: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Defects on the first `n` of `images` (N, C, H, W) in [0, 1], e.g. Fashion-MNIST's test images: the i-th
    defective image is `images[i]` with one defect, so `images[n:]` stay unseen for a good set.

    Returns defective (n, C, H, W) float32, masks (n, H, W) bool and the kinds (a third of each).
    `ON_OBJECT` of the defects are centred on the garment (pixels > OBJECT_LEVEL), the rest anywhere;
    a patch takes its content from another of the `images` at random.
    """
    if not 0 < n <= len(images):
        raise ValueError(f"n must be between 1 and the number of images ({len(images)}), got {n}")
    rng = np.random.default_rng(seed)
    kinds = kinds_for(n, rng)
    defective = np.empty((n, *images.shape[1:]), dtype=np.float32)
    masks = np.empty((n, *images.shape[2:]), dtype=bool)
    for i, kind in enumerate(kinds):
        image = images[i].astype(np.float32)
        support = image.max(axis=0) > OBJECT_LEVEL if rng.random() < ON_OBJECT else None
        other = (i + 1 + int(rng.integers(len(images) - 1))) % len(images) if len(images) > 1 else i
        defective[i], masks[i] = add_defect(image, rng, kind, source=images[other], support=support)
    return defective, masks, kinds


def texture(name: str) -> np.ndarray:
    """scikit-image's bundled texture `name` (one of TEXTURES), grey, halved with a box filter: (256, 256) in [0, 1]."""
    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}: use one of {', '.join(TEXTURES)}")
    import skimage.data

    grey = Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("L")
    halved = grey.resize((grey.width // 2, grey.height // 2), Image.Resampling.BOX)
    return np.asarray(halved, dtype=np.float32) / 255


def region_rows(height: int, region: str) -> tuple[int, int]:
    """The rows [start, stop) of a texture of `height` rows that `region` ("train" or "test") crops come from."""
    split = int(height * TRAIN_ROWS)
    if region == "train":
        return 0, split
    if region == "test":
        return split, height
    raise ValueError(f"region must be 'train' or 'test', got {region!r}")


def texture_crops(name: str, size: int, count: int, region: str, seed: int) -> np.ndarray:
    """`count` square crops (count, 1, size, size) float32 at random places of `texture(name)`, all inside
    the rows of `region` ("train": the top 70%, "test": the bottom 30%), so train and test never overlap."""
    grey = texture(name)
    start, stop = region_rows(grey.shape[0], region)
    if not 0 < size <= min(stop - start, grey.shape[1]):
        raise ValueError(f"size must be 1 to {min(stop - start, grey.shape[1])} for the {region} rows, got {size}")
    rng = np.random.default_rng(seed)
    rows = rng.integers(start, stop - size + 1, count)
    cols = rng.integers(0, grey.shape[1] - size + 1, count)
    return np.stack([grey[r : r + size, c : c + size] for r, c in zip(rows, cols, strict=True)])[:, None]


def texture_defects(
    name: str, size: int, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A test set on texture `name`: `count` good test crops and `count` other test crops with one defect each.

    Returns good (count, 1, size, size), defective (count, 1, size, size), masks (count, size, size) bool and
    the kinds (a third of each). A patch holds a crop of the next texture in TEXTURES (brick -> grass ...).
    """
    crops = texture_crops(name, size, 2 * count, "test", seed)
    foreign = texture_crops(TEXTURES[(TEXTURES.index(name) + 1) % len(TEXTURES)], size, count, "test", seed + 1)
    rng = np.random.default_rng(seed)
    kinds = kinds_for(count, rng)
    defective = np.empty((count, 1, size, size), dtype=np.float32)
    masks = np.empty((count, size, size), dtype=bool)
    for i, kind in enumerate(kinds):
        defective[i], masks[i] = add_defect(crops[count + i], rng, kind, source=foreign[i])
    return crops[:count], defective, masks, kinds
