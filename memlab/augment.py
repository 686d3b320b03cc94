"""Strong random augmentations for training a copy detector (SSCD's recipe, Pizzi et al. 2022).

Each view of an image gets a random chain: resized crop, flip, rotation, colour jitter, grayscale,
blur, JPEG, text / banner / emoji-like overlays, and the blur + colour drift of a diffusion model's
decoder (a downscale-upscale round trip, a colour cast and a little noise). Everything is drawn from
the ``random.Random`` passed in, so a training step is a pure function of its seed (a killed training
resumes to the same weights). A real decoder's round trip (``vae_round_trip``) can replace the emulated
drift for a share of the views (``train-descriptor --decoder``).
"""
from __future__ import annotations

import io
import random
import string

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from .preprocess import to_rgb


def _rand_colour(rng: random.Random):
    return tuple(rng.randrange(256) for _ in range(3))


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits + "  ") for _ in range(n))


def resized_crop(im: Image.Image, rng: random.Random, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)) -> Image.Image:
    w, h = im.size
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        r = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = int(round(np.sqrt(area * r))), int(round(np.sqrt(area / r)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return im.crop((x, y, x + cw, y + ch))
    return im


def colour_jitter(im: Image.Image, rng: random.Random, s: float = 0.4) -> Image.Image:
    for enh in rng.sample([ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color], 3):
        im = enh(im).enhance(rng.uniform(1 - s, 1 + s))
    if rng.random() < 0.5:  # hue shift
        hsv = np.asarray(im.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + rng.randint(-20, 20)) % 256
        im = Image.fromarray(hsv, "HSV").convert("RGB")
    return im


def colour_cast(im: Image.Image, rng: random.Random) -> Image.Image:
    """A diffusion model's colour drift at its strongest: a gain per channel (0.65-1.35, a tint) and an
    overall brightness (0.4-1.15, darkening), as the copies issue 30 found missed (tinted, darkened)."""
    a = np.asarray(im, np.float32) * np.array([rng.uniform(0.65, 1.35) for _ in range(3)], np.float32)
    return Image.fromarray(np.clip(a * rng.uniform(0.4, 1.15), 0, 255).astype(np.uint8))


def aligned_pair(im: Image.Image, other: Image.Image, rng: random.Random, size: int, cast: float = 0.7) -> tuple:
    """Two views that keep the same geometry (one crop box and one mirror for both; ``other`` is ``im`` or
    a model's version of it) and differ only where a diffusion model's copy differs from its training image:
    colour casts and darkening, jitter, its decoder's blur, noise, JPEG. What the layout of a copy should be
    invariant to (``train-descriptor --layout-weight``); ``cast``: each view's chance of a strong colour cast."""
    im, other = to_rgb(im), to_rgb(other).resize(im.size, Image.BILINEAR)
    if rng.random() < 0.5:
        w, h = im.size
        f = rng.uniform(0.7, 1.0)
        x, y = rng.uniform(0, w * (1 - f)), rng.uniform(0, h * (1 - f))
        box = (int(x), int(y), int(x + w * f), int(y + h * f))
        im, other = im.crop(box), other.crop(box)
    if rng.random() < 0.5:
        im, other = ImageOps.mirror(im), ImageOps.mirror(other)
    work = max(size * 2, 96)

    def photometric(v):
        v = v.resize((work, work), Image.BILINEAR)
        if rng.random() < cast:
            v = colour_cast(v, rng)
        if rng.random() < 0.5:
            v = colour_jitter(v, rng, 0.3)
        if rng.random() < 0.05:
            v = v.convert("L").convert("RGB")
        if rng.random() < 0.3:
            v = decoder_drift(v, rng)
        if rng.random() < 0.3:
            v = v.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
        if rng.random() < 0.3:
            v = jpeg(v, rng)
        return v.resize((size, size), Image.BILINEAR)
    return photometric(im), photometric(other)


def overlay(im: Image.Image, rng: random.Random) -> Image.Image:
    """A banner with text (top or bottom, up to a quarter of the image), loose text, or shapes."""
    im = im.copy()
    w, h = im.size
    d = ImageDraw.Draw(im)
    kind = rng.random()
    if kind < 0.5:
        bh = int(h * rng.uniform(0.08, 0.25))
        y0 = h - bh if rng.random() < 0.7 else 0
        d.rectangle((0, y0, w, y0 + bh), fill=_rand_colour(rng) if rng.random() < 0.5 else (255, 255, 255))
        d.text((rng.randint(0, max(1, w // 4)), y0 + bh // 4), _text(rng, rng.randint(5, 40)),
               fill=_rand_colour(rng))
    elif kind < 0.8:
        for _ in range(rng.randint(1, 4)):
            d.text((rng.randint(0, w - 1), rng.randint(0, h - 1)), _text(rng, rng.randint(3, 20)),
                   fill=_rand_colour(rng))
    else:  # emoji-like stickers
        for _ in range(rng.randint(1, 3)):
            r = rng.uniform(0.05, 0.15) * min(w, h)
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_rand_colour(rng), outline=(0, 0, 0))
    return im


def jpeg(im: Image.Image, rng: random.Random) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=rng.randint(8, 90))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def decoder_drift(im: Image.Image, rng: random.Random) -> Image.Image:
    """A diffusion decoder's look: detail lost (down- and up-sampling), a colour cast, low-frequency colour
    blotches, grain."""
    w, h = im.size
    f = rng.uniform(0.15, 0.6)
    im = im.resize((max(4, int(w * f)), max(4, int(h * f))), Image.BILINEAR).resize((w, h), Image.BICUBIC)
    a = np.asarray(im, np.float32)
    nrng = np.random.default_rng(rng.randrange(2**31))
    blotch = np.asarray(Image.fromarray(nrng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC),
                        np.float32) - 128
    a = (a * nrng.uniform(0.8, 1.2, 3) + nrng.uniform(-25, 25, 3) + blotch * rng.uniform(0, 0.3)
         + nrng.normal(0, rng.uniform(0, 8), a.shape))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def augment(im: Image.Image, rng: random.Random, size: int, grayscale: float = 0.2) -> Image.Image:
    """One strongly augmented view of ``im``, ``size`` x ``size``; ``grayscale``: the chance of a grey view (SSCD's
    0.2)."""
    im = to_rgb(im)
    if rng.random() < 0.85:
        im = resized_crop(im, rng)
    if rng.random() < 0.5:
        im = ImageOps.mirror(im)
    work = max(size * 2, 96)
    im = im.resize((work, work), Image.BILINEAR)
    if rng.random() < 0.3:
        fill = (0, 0, 0) if rng.random() < 0.5 else _rand_colour(rng)
        im = im.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR, fillcolor=fill)
    if rng.random() < 0.8:
        im = colour_jitter(im, rng)
    if rng.random() < grayscale:
        im = im.convert("L").convert("RGB")
    if rng.random() < 0.3:
        im = overlay(im, rng)
    if rng.random() < 0.25:
        im = decoder_drift(im, rng)
    if rng.random() < 0.35:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 3.0)))
    if rng.random() < 0.35:
        im = jpeg(im, rng)
    return im.resize((size, size), Image.BILINEAR)


def vae_round_trip(vae, images: list, size: int) -> list:
    """Encode and decode with a diffusers ``AutoencoderKL`` (latent mean, deterministic) at ``size`` px:
    the blur, colour drift and lost detail of a real diffusion decoder."""
    import torch

    x = torch.from_numpy(np.stack([np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), np.float32)
                                   for im in images])).permute(0, 3, 1, 2) / 127.5 - 1.0
    with torch.no_grad():
        rec = vae.decode(vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean).sample.float().cpu()
    arr = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a).resize(im.size, Image.BICUBIC) for a, im in zip(arr, images)]
