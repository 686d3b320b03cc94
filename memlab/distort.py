"""Synthetic copies of training images, for calibrating thresholds and testing retrieval.

The default chain (calibration) is: rescale to 75%, JPEG quality 60, 5% border crop, brightness +10%,
applied one after another. ``ROBUSTNESS`` names the single transformations a copy detector is
measured under (``benchmarks/bench_copy_robustness.py``): a text banner over the bottom fifth, a
horizontal flip, a 10% border crop on each side, Gaussian blur of radius 2, grayscale, JPEG quality
20 and a rotation by 5 degrees.
"""
from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

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


def banner(img: Image.Image, frac: float = 0.2, text: str = "memlab copy (c) 2026 - all rights reserved",
           colour=(255, 255, 255), ink=(0, 0, 0)) -> Image.Image:
    """A solid banner over the bottom ``frac`` of the image, with a line of text on it."""
    out = to_rgb(img).copy()
    w, h = out.size
    top = h - max(1, int(round(h * frac)))
    d = ImageDraw.Draw(out)
    d.rectangle((0, top, w, h), fill=colour)
    d.text((max(1, w // 40), top + max(1, (h - top) // 3)), text, fill=ink)
    return out


def flip(img: Image.Image) -> Image.Image:
    return ImageOps.mirror(to_rgb(img))


def blur(img: Image.Image, radius: float = 2.0) -> Image.Image:
    return to_rgb(img).filter(ImageFilter.GaussianBlur(radius))


def grayscale(img: Image.Image) -> Image.Image:
    return to_rgb(img).convert("L").convert("RGB")


def rotate(img: Image.Image, degrees: float = 5.0) -> Image.Image:
    return to_rgb(img).rotate(degrees, resample=Image.BILINEAR)


DISTORTIONS = {"rescale": rescale, "jpeg": jpeg, "crop": crop_border, "brightness": brightness,
               "banner": banner, "flip": flip, "blur": blur, "grayscale": grayscale, "rotate": rotate}

# single transformations a copy detector must survive (issue: "a verdict that agrees with the eye")
ROBUSTNESS = {
    "banner 1/5": banner,
    "flip": flip,
    "crop 10%/side": lambda im: crop_border(im, 0.10),
    "blur r2": blur,
    "grayscale": grayscale,
    "jpeg 20": lambda im: jpeg(im, 20),
    "rotate 5": rotate,
}
DEFAULT_CHAIN = ("rescale", "jpeg", "crop", "brightness")


def distort(img: Image.Image, chain=DEFAULT_CHAIN) -> Image.Image:
    """Apply the named distortions in order (see ``DISTORTIONS``)."""
    out = to_rgb(img)
    for name in chain:
        out = DISTORTIONS[name](out)
    return out
