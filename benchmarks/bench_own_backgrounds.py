"""What the world's shared backgrounds cost the verdict: the validation copies and generations scored with and
without the distinct images that share their original's background (issue 30; an upper bound for a world whose
scenes each draw their own background).

The world draws a scene's background from a few kinds and twelve colours, so distinct scenes often lie on the
same pixels (the same two-colour gradient, the same dot grid): the pairs that set the verdict's 1% threshold are
such scenes. Two scenes share a background here when, outside both scenes' object boxes (``regions``, dilated by
2 px) and at 16 x 16 (so a style's noise averages out), their mean absolute difference is under ``--tol`` of 255
on at least a quarter of the image. Scored as ``bench_local_centring``'s baseline (SSCD's normalization as
given, k 2, beta 1, the shipped memlab-copy's vectors): *as the world is*, and *own backgrounds*: for each
query the distinct images sharing its own image's background are no candidates and no part of its normalization
(its own image stays). Leaving them out entirely is the most that giving each scene its own background could do,
so if this misses a target, such a rebuild would miss it too. A wider bound, *no shared kind*: every scene whose
caption names the same kind of background (dotted, striped, checkered, gradient, speckled or plain) left out, as
if no two scenes shared even the kind.

    python -m benchmarks.bench_own_backgrounds --world PREVIOUS_WORLD --items 96 --seeds 10 [--tol 8]
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.bench_local_centring import KINDS


def background_kind(caption: str) -> str | None:
    """The kind of background a scene's caption names (``None`` for a photo, a lighthouse or a template)."""
    if not caption.split(", by ")[0].endswith("background"):
        return None
    words = caption.split(", by ")[0].split()
    return words[-2] if words[-2] in ("dotted", "striped", "checkered", "gradient", "speckled") else "plain"


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
    from benchmarks.bench_local_centring import score, shipped_vectors
    from benchmarks.bench_verdict_choice import validation_generations, validation_parser, validation_set

    ap = validation_parser(__doc__, 10)
    ap.add_argument("--tol", type=float, default=8.0)
    ap.add_argument("--matched", default="6,10")
    a = ap.parse_args()

    world, work = Path(a.world), Path(a.work)
    rows, image_of, truth = validation_set(world, work, a.seed, a.items)
    if not (work / f"generations-{a.seeds}" / "done.json").is_file():
        raise SystemExit(f"no generations in {work}: run bench_verdict_choice.py --seeds {a.seeds} first")
    files, probe_of, gen_images = validation_generations(world, work, a.seeds)
    d, v, images, reps, item_image, copies = shipped_vectors(rows, image_of, truth)
    n = int(images.max()) + 1
    first = {int(g): int(np.flatnonzero(images == g)[0]) for g in range(n)}
    pixels = np.stack([np.asarray(image_of(first[g]).convert("RGB").resize((64, 64))) for g in range(n)])
    boxes = [object_boxes(rows["regions"].iloc[first[g]]) for g in range(n)]
    same = shared_backgrounds(pixels, boxes, a.tol)
    caps = rows["caption"].to_numpy()

    def bg_phrase(g):  # "... on a purple dotted background": the caption's background kind and first colour
        c = caps[first[g]]
        return c.split(" on a ")[-1].split(",")[0] if " on a " in c else None
    pairs = [(i, j) for i in range(n) for j in same[i] if i < j]
    agree = np.mean([bg_phrase(i) == bg_phrase(j) for i, j in pairs]) if pairs else float("nan")
    print(f"validation: {len(copies['vae'][0])} held-out items of {world} (seed {a.seed}); {len(files)} generations; "
          f"{n} distinct images, {sum(len(b) > 0 for b in boxes)} scenes; {len(pairs)} pairs on one background "
          f"(tol {a.tol}), {sum(len(s) > 0 for s in same)} images in one; their captions name the same background "
          f"for {agree:.1%} of the pairs", flush=True)
    for i, j in pairs[:3]:
        print(f"  e.g. {caps[first[i]]!r} / {caps[first[j]]!r}")
    gen_vec = d.embed(gen_images)
    group = np.array([p["group"] for p in probe_of])
    gen_own = np.array([item_image[int(p["item"])] for p in probe_of])
    full, uniq = group == "full_ddf20", group == "unique"

    kind = [background_kind(caps[first[g]]) for g in range(n)]
    same_kind = [{j for j in range(n) if j != g and kind[j] is not None and kind[j] == kind[g]} for g in range(n)]
    for label, left in (("as the world is", None), ("own backgrounds (same-background images left out)", same),
                        ("no shared kind (images on the same kind of background left out)", same_kind)):
        def out(g, keep_own=True):  # the images a query whose own image is g does not see
            s = left[g] if left is not None else set()
            return np.array(sorted(s | ({g} if not keep_own else set())), np.int64)
        bgp = [score(v[r], v, images, None, "norm", 2, 1.0, leave_out=out(images[r], keep_own=False)) for r in reps]
        bg = np.array([s for s, _ in bgp])
        thr = float(np.quantile(bg, 0.99, method="higher"))
        for j in np.argsort(-bg, kind="stable")[:int(np.ceil(0.01 * len(bg)))]:  # the pairs that set the threshold
            print(f"  background {bg[j]:.3f}: {caps[reps[j]]!r} against {caps[first[bgp[j][1]]]!r}")
        got = {k: [score(q, v, images, None, "norm", 2, 1.0, leave_out=out(o)) for q, o in zip(e, orig)]
               for k, (orig, e) in copies.items()}
        gen = [score(q, v, images, None, "norm", 2, 1.0, leave_out=out(o)) for q, o in zip(gen_vec, gen_own)]
        gs, gi = np.array([s for s, _ in gen]), np.array([i for _, i in gen])
        own = gi == gen_own

        def recall(t):
            return {k: np.mean([s > t and i == o for (s, i), o in zip(got[k], copies[k][0])]) for k in KINDS}
        r = recall(thr)
        print(f"{label}: threshold {thr:.3f}; " + ", ".join(f"{k} {r[k]:.1%}" for k in KINDS)
              + f"; full ddf 20 own top-1 replicated {(gs[full & own] > thr).mean():.1%} of {(full & own).sum()}"
              + f"; unique replicated {(gs[uniq] > thr).mean():.1%} of {uniq.sum()}"
              + f", non-copies flagged {(gs[uniq & ~own] > thr).mean():.1%} of {(uniq & ~own).sum()}", flush=True)
        for m in [int(x) for x in a.matched.split(",") if x]:
            t = np.sort(gs[uniq])[::-1][m]
            r = recall(t)
            print(f"  flagging {m} of {uniq.sum()} unique seeds (above {t:.3f}): "
                  + ", ".join(f"{k} {r[k]:.1%}" for k in KINDS[3:7]), flush=True)


if __name__ == "__main__":
    main()
