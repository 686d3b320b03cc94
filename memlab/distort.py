"""Synthetic copies of training images, for calibrating thresholds and testing retrieval.

The default chain is the one the issue measures: rescale to 75%, JPEG quality 60, 5% border crop,
brightness +10%, applied one after another.
"""
from __future__ import annotations

import io

from PIL import Image, ImageEnhance

from .preprocess import to_rgb


def rescale(img: Image.Image, factor: float = 0.75) -> Image.Image:
    w, h = img.size
    return img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.BICUBIC)


def jpeg(img: Image.Image, quality: int = 60) -> Image.Image:
    buf = io.BytesIO()
    to_rgb(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def crop_border(img: Image.Image, frac: float = 0.05) -> Image.Image:
    w, h = img.size
    dx, dy = int(round(w * frac)), int(round(h * frac))
    return img.crop((dx, dy, w - dx, h - dy))


def brightness(img: Image.Image, factor: float = 1.10) -> Image.Image:
    return ImageEnhance.Brightness(to_rgb(img)).enhance(factor)


DISTORTIONS = {"rescale": rescale, "jpeg": jpeg, "crop": crop_border, "brightness": brightness}
DEFAULT_CHAIN = ("rescale", "jpeg", "crop", "brightness")


def distort(img: Image.Image, chain=DEFAULT_CHAIN) -> Image.Image:
    """Apply the named distortions in order (see ``DISTORTIONS``)."""
    out = to_rgb(img)
    for name in chain:
        out = DISTORTIONS[name](out)
    return out
