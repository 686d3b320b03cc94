"""What the world's shared backgrounds cost the verdict: the validation copies and generations scored with and
without the distinct images that share their original's background (issue 30; an upper bound for a world whose
scenes each draw their own background).

The world draws a scene's background from a few kinds and twelve colours, so distinct scenes often lie on the
same pixels (the same two-colour gradient, the same dot grid), and the closest distinct pair is such a pair. Two scenes share a background here when, outside both scenes' object boxes (``regions``, dilated by
2 px) and at 16 x 16 (so a style's noise averages out), their mean absolute difference is under ``--tol`` of 255
on at least a quarter of the image. Scored as ``bench_local_centring``'s baseline (SSCD's normalization as
given, k 2, beta 1, the shipped memlab-copy's vectors; ``bench_local_centring.measure``): *as the world is*, and *own backgrounds*: for each
query the distinct images sharing its own image's background are no candidates and no part of its normalization
(its own image stays). Leaving them out entirely is the most that giving each scene its own background could do,
so if this misses a target, such a rebuild would miss it too. A wider bound, *no shared kind*: every scene whose
caption names the same kind of background (dotted, striped, checkered, gradient, speckled or plain) left out, as
if no two scenes shared even the kind.

    python -m benchmarks.bench_own_backgrounds --world PREVIOUS_WORLD --items 96 --seeds 10 [--tol 8]
"""
from __future__ import annotations


import numpy as np


def background_phrase(caption: str) -> str | None:
    """The background a scene's caption names ("purple dotted background"; ``None`` for a photo, a lighthouse or a
    template)."""
    c = caption.split(", by ")[0]
    return c.split(" on a ")[-1].split(" on an ")[-1] if c.endswith("background") else None


def background_kind(caption: str) -> str | None:
    """The kind of background a scene's caption names: dotted, striped, checkered, gradient, speckled or plain."""
    phrase = background_phrase(caption)
    if phrase is None:
        return None
    words = phrase.split()
    return words[-2] if len(words) > 1 and words[-2] in ("dotted", "striped", "checkered", "gradient", "speckled") \
        else "plain"


def object_boxes(regions: str) -> list[tuple[int, int, int, int]]:
    """A row's ``obj:x0,y0,x1,y1`` boxes (64 x 64 pixels); none for a photo or a template."""
    return [tuple(int(float(v)) for v in r[4:].split(",")) for r in str(regions).split(";") if r.startswith("obj:")]


def shared_backgrounds(pixels: np.ndarray, boxes: list[list], tol: float, pad: int = 2) -> list[set[int]]:
    """For each image [n, 64, 64, 3] (uint8), the other images on the same background: both have object boxes, and
    outside both images' boxes (each dilated by ``pad``) at least a quarter of the 16 x 16 cells are left, whose
    mean absolute difference (0-255) is under ``tol``."""
    n, s = len(pixels), pixels.shape[1]
    free = np.ones((n, s, s), bool)
    for i, bx in enumerate(boxes):
        for x0, y0, x1, y1 in bx:
            free[i, max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad] = False
    c = s // 16  # 16 x 16 cells; a cell is free when every pixel of it is
    small = pixels.reshape(n, 16, c, 16, c, 3).astype(np.float32).mean((2, 4))
    cell_free = free.reshape(n, 16, c, 16, c).all((2, 4))
    scene = np.array([len(b) > 0 for b in boxes])
    out = [set() for _ in range(n)]
    for i in np.flatnonzero(scene):
        both = cell_free[i][None] & cell_free  # [n, 16, 16]
        diff = np.abs(small - small[i][None]).mean(-1)
        count = both.sum((1, 2))
        mad = (diff * both).sum((1, 2)) / np.maximum(count, 1)
        same = scene & (count >= 64) & (mad < tol)
        same[i] = False
        out[i] = set(np.flatnonzero(same).tolist())
    return out


def main():
    from benchmarks.bench_local_centring import load_validation, measure
    from benchmarks.bench_verdict_choice import validation_parser

    ap = validation_parser(__doc__, 10)
    ap.add_argument("--tol", type=float, default=8.0)
    ap.add_argument("--matched", default="6,10")
    a = ap.parse_args()

    val = load_validation(a)
    n = int(val.images.max()) + 1
    first = [int(np.flatnonzero(val.images == g)[0]) for g in range(n)]
    pixels = np.stack([np.asarray(val.image_of(r).convert("RGB").resize((64, 64))) for r in first])
    boxes = [object_boxes(val.rows["regions"].iloc[r]) for r in first]
    caps = [val.rows["caption"].iloc[r] for r in first]
    same = shared_backgrounds(pixels, boxes, a.tol)
    pairs = [(i, j) for i in range(n) for j in same[i] if i < j]
    agree = np.mean([background_phrase(caps[i]) == background_phrase(caps[j]) for i, j in pairs]) if pairs \
        else float("nan")
    print(f"{n} distinct images, {sum(len(b) > 0 for b in boxes)} scenes; {len(pairs)} pairs on one background "
          f"(tol {a.tol}), {sum(len(s) > 0 for s in same)} images in one; their captions name the same background "
          f"for {agree:.1%} of the pairs", flush=True)
    for i, j in pairs[:3]:
        print(f"  e.g. {caps[i]!r} / {caps[j]!r}")
    kind = [background_kind(c) for c in caps]
    same_kind = [{j for j in range(n) if j != g and kind[j] is not None and kind[j] == kind[g]} for g in range(n)]
    matched = [int(x) for x in a.matched.split(",") if x]
    for label, hide in (("as the world is", None), ("own backgrounds (same-background images left out)", same),
                        ("no shared kind (images on the same kind of background left out)", same_kind)):
        measure(val, label, "norm", 2, 1.0, matched, hide=hide)


if __name__ == "__main__":
    main()
