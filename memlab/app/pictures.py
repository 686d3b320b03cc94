"""The page's pictures, as pure functions: a generation (or an upload) beside its training match, framed by
the verdict, with the copied region marked; small data-URI thumbnails. No Gradio here."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from ..preprocess import open_rgb
from ..scorenorm import is_mirrored

FRAME = {"replicated": (200, 30, 30), "template copy": (150, 50, 190), "possible copy": (240, 140, 0),
         "novel": (230, 230, 230)}
MASK_LINE = (255, 210, 0)  # the copied region's outline (yellow: visible on the frames' red and purple)
FADED = (245, 245, 245)  # what the rest of the image fades toward, so the copied region keeps its own colours


def pair_image(gen: Image.Image, match: Image.Image | None, verdict: str | bool, scale: int = 3,
               mask=None, mirrored: bool = False) -> Image.Image:
    """The generation beside its top-1 training match, framed red when replicated, purple when a template
    copy, orange when a possible copy; with ``mask`` (the seed's bright-ending map) the region it marks as
    copied is marked on both images (``overlay``; mirrored on the match where it matched the generation's
    mirror image)."""
    w, h = gen.size
    W, H = w * scale, h * scale
    verdict = verdict if isinstance(verdict, str) else ("replicated" if verdict else "novel")
    out = Image.new("RGB", (2 * W + 12, H + 8), FRAME[verdict])
    out.paste(overlay(gen.resize((W, H), Image.NEAREST), mask), (4, 4))
    if match is not None:
        flip = mask is not None and mirrored
        out.paste(overlay(match.convert("RGB").resize((W, H), Image.NEAREST),
                          np.asarray(mask)[:, ::-1] if flip else mask), (W + 8, 4))
    else:
        ImageDraw.Draw(out).text((W + 12, H // 2), "image not available", fill=(0, 0, 0))
    return out


def agreement_pair(upload: Image.Image, top_file, result: dict, side: int = 64) -> Image.Image:
    """An upload beside its top-1 training image (``top_file``) with the windows where they agree
    (``result["agreement"]["mask"]``, ``match.partial_copy``) marked on both, framed by the verdict."""
    mask = np.asarray(result["agreement"]["mask"], np.float32)
    mask = np.kron(mask, np.ones((side // mask.shape[0], side // mask.shape[1]), np.float32))  # hard-edged windows
    up = upload.convert("RGB")  # as it was compared: mirrored where its mirror image matched
    up = ImageOps.mirror(up) if is_mirrored(result.get("view")) else up
    return pair_image(up.resize((side, side)), open_rgb(top_file).resize((side, side)), result["verdict"], 3,
                      mask=mask)


def overlay(im: Image.Image, mask, fade: float = 0.7) -> Image.Image:
    """``im`` with the region ``mask`` marks as copied ([h, w] in [0, 1], any size: resized) in its own colours
    (a colour cast is part of what the eye judges) and the rest faded toward ``FADED`` (by ``fade`` where the
    mask is 0), the region's edge (mask >= 0.5) outlined in ``MASK_LINE``; unchanged without a mask."""
    if mask is None:
        return im.convert("RGB")
    m = np.nan_to_num(np.asarray(mask, np.float32))  # a map with holes (NaN) marks nothing there
    m = np.asarray(Image.fromarray(m, mode="F").resize(im.size, Image.BILINEAR), np.float32).clip(0, 1)
    a = np.asarray(im.convert("RGB"), np.float32)
    f = fade * (1 - m[..., None])
    out = a * (1 - f) + np.array(FADED, np.float32) * f
    inside = m >= 0.5
    out[inside & ~_eroded(inside, max(1, min(im.size) // 64))] = MASK_LINE
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def _eroded(region: np.ndarray, width: int) -> np.ndarray:
    """``region`` less the ``width`` pixels along its edge with the rest of the image (the image's own border is
    not an edge)."""
    out = region.copy()
    for _ in range(width):
        p = np.pad(out, 1, constant_values=True)
        out = out & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return out


def thumb_uri(im: Image.Image, width: int = 320) -> str:
    """A small JPEG of an image as a data URI (the A/B grid's cells: no file route, nothing on disk)."""
    import base64
    import io

    im = im.convert("RGB")
    if im.width > width:
        im = im.resize((width, max(1, round(im.height * width / im.width))), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
