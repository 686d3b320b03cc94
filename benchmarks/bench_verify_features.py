"""How far a verification on the images can take the model's strongest copies (issue 30): an upper bound.

On the validation set of ``bench_verdict_choice`` (the previous world's model, its copies of 48 held-out items),
the training set is indexed with the shipped ``memlab-copy`` (``index.build_index``). Each copy's 5 best
candidates by normalized score, and each distinct training image's 5 best other distinct images (the background;
the image as given, no other view), are compared on the images by correlations that a gain and an offset per
colour channel leave unchanged (per channel, averaged over the channels with structure in both, the better of
the mirror image):

- ``detail3 c50``: the image at 64 x 64 less its 3-px blur, central 50% of each side (the shipped verification);
- ``detail3``: the same over the whole image; ``detail1.5 @32 c50``: at 32 x 32 less its 1.5-px blur;
- ``band2-8`` (and ``c50``): the 2-px blur less the 8-px blur (a coarser scale than the detail);
- ``layout16``: the image at 16 x 16 (its colour layout); ``layout32 c50``: at 32 x 32, central 50%.

Two more compare a pair through the matched image's own objects (``--foreground``): what sets a training image
apart from its nearest distinct look-alikes, which share its background (``the issue: weigh the objects over the
background``). Its look-alikes' mean at 32 x 32 (its 2 nearest other distinct images by cosine, never the query's
own), ``m``, is taken from both images:

- ``res32``: the correlation of the query less ``m`` with the training image less ``m``;
- ``fg32``: the correlation of the two images weighted by where the training image departs from ``m``.

Two compare the pair through the descriptor itself, region by region (``--tiles F,...``, issue 30's seventeenth
pass): the shipped memlab-copy's vectors of the four corner crops of each image, each ``F`` of a side (they
overlap where F > 0.5), compared crop by crop: ``tilesF min``, the worst crop's cosine (Carlini et al.'s tiled
distance, on a learned descriptor; two distinct images on one background agree in the crops that hold only it and
differ where their objects are, while a copy agrees everywhere), and ``tilesF mean``; the better of the query
and its mirror image (whose crops are the mirror image's).

Two compare what the two images show rather than how (``--objects DIR``, issue 30's eighteenth pass): a scene
classifier's (a world's ``alignment/``, ``memlab.alignment.SceneAlignment``, trained on the world's own renders)
probabilities of each shape and object colour in each image: ``objects``, their correlation, and ``objects l1``,
1 less their mean absolute difference. A copy that smears its objects keeps which objects they are; two scenes on
one background differ in them.

Four compare the descriptor's own feature maps finer than the 4 x 4 layout it scores (``--dense``, issue 30's
nineteenth pass): the shipped memlab-copy's stage maps at 8 x 8 (128 channels) and 16 x 16 (64), its input
prepared as it embeds (the 1-px low-pass): ``dense8`` and ``dense16``, the mean over positions of each position's
cosine (a local feature match at each place), and ``map8`` and ``map16``, the cosine of the whole flattened maps;
the better of the query and its mirror image (whose maps are the mirror image's).

Two more forgive a redraw's small moves: ``detail3 c50 shiftS`` (``--shifts S,...``: the shipped detail at the best
of the query's central window moved up to S px each way) and gradient orientation histograms (``--hog``: ``hog8``,
``hog8 c50``, ``hog4 c50``; ``skimage.feature.hog``, 9 orientations, 2 x 2 blocks; a gain leaves them).

A pair's score is its normalized score plus the weighted features; the threshold keeps 1% of the background
(``metrics.calibrate_threshold``, as an index calibrates, on each image's best candidate); a copy is recalled
when its score against its own original passes it. Every feature alone and every pair of features is tried
over a grid of weights, and the weights that recall the most image-to-image copies at strength 0.5 are kept:
chosen on the same copies they are scored on, each line is an upper bound for its features (an oracle), not a
rule to ship.

    python -m benchmarks.bench_verify_features --world PREVIOUS_WORLD [--work DIR] [--seed 1] [--items 48]
        [--foreground] [--shifts 1,2,3] [--hog] [--tiles 0.6] [--objects WORLD/alignment] [--dense]
        [--weights 0.1,0.2]
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np

KINDS = ("img2img@0.2", "img2img@0.3", "img2img@0.4", "img2img@0.5")
WEIGHTS = (0.1, 0.2, 0.3, 0.5, 1.0)
PAIR_WEIGHTS = (0.1, 0.2, 0.4)


def features(image, hog: bool = False) -> dict[str, np.ndarray]:
    """The compared views of an image ([h, w, 3] arrays), by name; with ``hog``, its gradient orientation
    histograms too (and its mirror image's)."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    def at(side):
        return np.asarray(image.convert("RGB").resize((side, side), Image.LANCZOS), np.float64)

    def blur(x, s):
        return gaussian_filter(x, (s, s, 0), mode="reflect")
    x64, x32 = at(64), at(32)
    c64, c32 = slice(16, 48), slice(8, 24)
    band = blur(x64, 2) - blur(x64, 8)
    out = {}
    if hog:  # gradient orientation histograms (Dalal and Triggs): a gain, an offset and a pixel's shift leave them
        from skimage.feature import hog as histograms

        for m, x in (("", x64), (" mirrored", x64[:, ::-1])):
            for cell, sl, tag in ((8, slice(None), "hog8"), (8, c64, "hog8 c50"), (4, c64, "hog4 c50")):
                out[tag + m] = histograms(np.ascontiguousarray(x[sl, sl]), orientations=9, pixels_per_cell=(cell, cell),
                                   cells_per_block=(2, 2), channel_axis=-1)
    return out | {"detail3 c50": (x64 - blur(x64, 3))[c64, c64], "detail3": x64 - blur(x64, 3),
            "detail1.5 @32 c50": (x32 - blur(x32, 1.5))[c32, c32], "band2-8": band, "band2-8 c50": band[c64, c64],
            "layout16": at(16), "layout32 c50": x32[c32, c32], "x32": blur(x32, 0.5)}


def shifted(dq: np.ndarray, dt: np.ndarray, s: int) -> float:
    """``detail3 c50`` with the query's central window moved by up to ``s`` px each way (a redraw that moves an
    object's edges a pixel or two): the best correlation over the shifts, the better of the mirror image."""
    c = slice(16, 48)
    best = -1.0
    for q in (dq, dq[:, ::-1]):
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                best = max(best, correlation(q[16 + dy:48 + dy, 16 + dx:48 + dx], dt[c, c]))
    return best


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Per colour channel correlation of two [h, w, 3] arrays, averaged over the channels with structure in both."""
    a, b = a.reshape(-1, 3).T, b.reshape(-1, 3).T
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    na, nb = np.sqrt((a * a).sum(1)), np.sqrt((b * b).sum(1))
    ok = (na > 1e-3) & (nb > 1e-3)
    return float(np.mean((a * b).sum(1)[ok] / (na * nb)[ok])) if ok.any() else 0.0


def vector_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """The correlation of two feature vectors."""
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-12))


def compare(fq: dict, ft: dict, shifts=()) -> dict[str, float]:
    """Every feature's correlation, the better of the query and its mirror image (``shifts``: also the detail at
    the best of the query's window moved up to each S px)."""
    out = {k: max(correlation(fq[k], ft[k]), correlation(fq[k][:, ::-1], ft[k]))
           for k in fq if k in ft and k != "x32" and not k.startswith("hog")}
    for k in [k for k in fq if k.startswith("hog") and not k.endswith("mirrored")]:
        out[k] = max(vector_correlation(fq[k], ft[k]), vector_correlation(fq[k + " mirrored"], ft[k]))
    for s in shifts:
        out[f"detail3 c50 shift{s}"] = shifted(fq["detail3"], ft["detail3"], s)
    return out


def weighted_correlation(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    """``correlation`` with each pixel weighted by ``w`` ([h, w]): weighted means, covariance and variances."""
    w = (w / max(w.sum(), 1e-12)).reshape(-1, 1)
    a, b = a.reshape(-1, 3), b.reshape(-1, 3)
    a, b = a - (w * a).sum(0), b - (w * b).sum(0)
    va, vb, cov = (w * a * a).sum(0), (w * b * b).sum(0), (w * a * b).sum(0)
    ok = (va > 1e-6) & (vb > 1e-6)
    return float(np.mean(cov[ok] / np.sqrt(va * vb)[ok])) if ok.any() else 0.0


def foreground(q32: np.ndarray, t32: np.ndarray, m32: np.ndarray) -> dict[str, float]:
    """The pair compared through the training image's own objects: ``m32`` is its look-alikes' mean (all three
    [32, 32, 3]); the better of the query and its mirror image."""
    w = np.linalg.norm(t32 - m32, axis=2)

    def both(f):
        return max(f(q32), f(q32[:, ::-1]))
    return {"res32": both(lambda q: correlation(q - m32, t32 - m32)),
            "fg32": both(lambda q: weighted_correlation(q, t32, w))}


def corner_crops(image, fraction: float) -> list:
    """The four corner crops of an image, each ``fraction`` of a side (``--tiles``)."""
    w, h = image.size
    cw, ch = int(round(w * fraction)), int(round(h * fraction))
    return [image.crop((x, y, x + cw, y + ch)) for y in (0, h - ch) for x in (0, w - cw)]


def tile_vectors(d, images, fraction: float, batch: int = 64) -> np.ndarray:
    """The descriptor's unit vectors of each image's corner crops: [n, 4, dim]."""
    out = [np.zeros((0, 4, d.dim), np.float32)]
    for s in range(0, len(images), batch):
        part = images[s:s + batch]
        out.append(d.embed([c for im in part for c in corner_crops(im, fraction)]).reshape(len(part), 4, -1))
    return np.concatenate(out)


def tile_terms(query: np.ndarray, train: np.ndarray, fraction: float) -> dict[str, float]:
    """``tilesF min`` and ``tilesF mean`` of a query's crops ([2, 4, dim]: as given, mirrored) against a training
    image's ([4, dim]), the better of the two orientations."""
    cos = np.einsum("mtd,td->mt", query, train)
    return {f"tiles{fraction:g} min": float(cos.min(1).max()), f"tiles{fraction:g} mean": float(cos.mean(1).max())}


def object_vectors(scene, images, batch: int = 128) -> np.ndarray:
    """A scene classifier's (``memlab.alignment.SceneAlignment``) probabilities of each shape and each object
    colour in each image: [n, shapes + colours]."""
    rows = []
    for s in range(0, len(images), batch):
        rows += [list(p["shapes"].values()) + list(p["colours"].values())
                 for p in scene.probabilities(images[s:s + batch])]
    return np.array(rows, np.float64)


def object_terms(q: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """``objects``: the correlation of the shapes and colours a classifier sees in the two images;
    ``objects l1``: 1 less their mean absolute difference."""
    return {"objects": vector_correlation(q, t), "objects l1": float(1 - np.abs(q - t).mean())}


DENSE_STAGES = {"8": 2, "16": 1}  # the descriptor's stage maps compared by ``--dense``: side -> stage


def dense_maps(d, images, batch: int = 64) -> dict[str, np.ndarray]:
    """The shipped memlab-copy's stage maps of each image and of its mirror image, as it embeds them (its input
    size and low-pass): side -> [n, 2, side * side, channels]."""
    import torch

    from memlab.copynet import low_pass, to_input

    net, out = d.net, {k: [] for k in DENSE_STAGES}
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = to_input(list(images[i:i + batch]), net.config.input_size)
            x = low_pass(x, d.blur) if d.blur else x
            both = [net.feature_maps(x), net.feature_maps(torch.flip(x, dims=[3]))]
            for side, stage in DENSE_STAGES.items():
                m = torch.stack([f[stage].float() for f in both], 1).flatten(3).transpose(2, 3)  # [b, 2, hw, c]
                out[side].append(m.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def dense_terms(query: dict, train: dict) -> dict[str, float]:
    """``denseS`` and ``mapS`` of a query's maps (side -> [2, hw, c]: as given, mirrored) against a training
    image's (side -> [hw, c]), the better of the two orientations."""
    def unit(x, axis):
        return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)
    out = {}
    for side in query:
        q, t = query[side], train[side]
        local = np.einsum("mpc,pc->mp", unit(q, -1), unit(t, -1))  # each position's cosine
        flat = unit(q.reshape(2, -1), -1) @ unit(t.reshape(-1), -1)  # the whole map's
        out[f"dense{side}"], out[f"map{side}"] = float(local.mean(1).max()), float(flat.max())
    return out


def indexed(rows, image_of):
    """The training set indexed with the shipped ``memlab-copy`` through build-world's code path, its images not
    kept (normalized scores only): (descriptor, score normalization rule, vectors, each row's distinct image, the
    distinct images' representative rows)."""
    from memlab.descriptors import create_descriptor
    from memlab.index import TrainingIndex, build_index

    d = create_descriptor("memlab-copy")
    with tempfile.TemporaryDirectory() as tmp:
        build_index(Path(tmp) / "idx", rows, image_of, [d], origin="origin")
        idx = TrainingIndex.load(Path(tmp) / "idx")
        spec = idx.descriptor_info(d.name)["score_norm"]
        v = np.asarray(idx.vectors(d.name), np.float32)
        distinct = idx.items["distinct"].to_numpy().astype(np.int64)
        reps = np.flatnonzero(idx.items["representative"].to_numpy())
        idx.close()
    return d, spec, v, distinct, reps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True, help="the previous built-in world (bench_verdict_choice)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "memlab-verdict-choice"))
    ap.add_argument("--foreground", action="store_true", help="also res32 and fg32 (the training image's objects)")
    ap.add_argument("--shifts", default="", help="comma-separated s: also detail3 c50 at the best of the query's "
                                                  "window moved up to s px each way")
    ap.add_argument("--hog", action="store_true", help="also gradient orientation histograms (hog8, hog8 c50, "
                                                       "hog4 c50)")
    ap.add_argument("--objects", default="", help="a scene classifier's folder (a world's alignment/): also the "
                                                  "agreement of the objects it sees in the two images")
    ap.add_argument("--dense", action="store_true", help="also the descriptor's 8 x 8 and 16 x 16 stage maps "
                                                         "(dense8, dense16, map8, map16)")
    ap.add_argument("--weights", default=",".join(f"{w:g}" for w in WEIGHTS),
                    help="comma-separated: the weights tried for each comparison alone")
    ap.add_argument("--tiles", default="", help="comma-separated F: also the descriptor's corner crops of F of a "
                                                "side, compared crop by crop (tilesF min, tilesF mean)")
    a = ap.parse_args()
    fractions = [float(x) for x in a.tiles.split(",") if x]
    weights = [float(x) for x in a.weights.split(",") if x]
    shifts = tuple(int(x) for x in a.shifts.split(",") if x)
    import pandas as pd

    from benchmarks.bench_verdict_choice import validation_set
    from memlab import metrics, verify

    rows, image_of, truth = validation_set(Path(a.world), Path(a.work), a.seed, a.items)
    d, spec, v, distinct, reps = indexed(rows, image_of)
    cache: dict = {}
    rep_of = {int(distinct[r]): int(r) for r in reps}
    sims = v[reps] @ v[reps].T
    np.fill_diagonal(sims, -np.inf)
    look_alikes = {int(r): [int(reps[j]) for j in np.argsort(-sims[i])[:3]] for i, r in enumerate(reps)}

    def train(r):
        if r not in cache:
            cache[r] = features(image_of(r), a.hog)
        return cache[r]

    from PIL import ImageOps

    def mirrored_too(images, given=None):  # [n, 2, 4, dim] per fraction: each image as given and its mirror image
        return {f: np.stack([tile_vectors(d, images, f) if given is None else given[f],
                             tile_vectors(d, [ImageOps.mirror(im) for im in images], f)], 1) for f in fractions}
    train_tiles = {f: tile_vectors(d, [image_of(int(r)) for r in range(len(v))], f) for f in fractions}
    rep_tiles = mirrored_too([image_of(int(r)) for r in reps], {f: t[reps] for f, t in train_tiles.items()})
    row_of_rep = {int(r): i for i, r in enumerate(reps)}

    scene = None
    if a.objects:
        from memlab.alignment import SceneAlignment
        scene = SceneAlignment.load(a.objects)
        train_objects = object_vectors(scene, [image_of(int(r)) for r in range(len(v))])

    if a.dense:
        train_dense = dense_maps(d, [image_of(int(r)) for r in range(len(v))])

    def pair(fq, t, own_group, qt=None, qo=None, qd=None):
        out = compare(fq, train(int(t)), shifts)
        if a.dense:
            out.update(dense_terms(qd, {k: m[int(t), 0] for k, m in train_dense.items()}))
        if scene is not None:
            out.update(object_terms(qo, train_objects[int(t)]))
        for f in fractions:
            out.update(tile_terms(qt[f], train_tiles[f][int(t)], f))
        if a.foreground:  # the matched image's 2 nearest other distinct images, never the query's own
            t = rep_of[int(distinct[t])]
            others = [o for o in look_alikes[t] if distinct[o] != own_group][:2]
            m32 = np.mean([train(o)["x32"] for o in others], 0)
            out.update(foreground(fq["x32"], train(t)["x32"], m32))
        return out
    recs = []
    for r in reps:  # the background: each distinct image against its 5 best other distinct images
        got = verify.candidates((v[r:r + 1] @ v.T)[0], distinct, distinct[r], spec, 5)
        qt = {f: x[row_of_rep[int(r)]] for f, x in rep_tiles.items()}
        qo = train_objects[int(r)] if scene is not None else None
        qd = {k: m[int(r)] for k, m in train_dense.items()} if a.dense else None
        recs += [dict(kind="background", q=int(r), own=False, n=float(n),
                      **pair(train(int(r)), t, distinct[r], qt, qo, qd)) for t, n in zip(*got)]
    for kind in KINDS:
        src, ims = truth[f"model:{kind}"]
        vecs, tiles = d.embed(ims), mirrored_too(ims)
        objs = object_vectors(scene, ims) if scene is not None else [None] * len(ims)
        dense = dense_maps(d, ims) if a.dense else None
        for j, (s, im) in enumerate(zip(src, ims)):
            got = verify.candidates((vecs[j:j + 1] @ v.T)[0], distinct, -1, spec, 5)
            fq, qt = features(im, a.hog), {f: x[j] for f, x in tiles.items()}
            recs += [dict(kind=kind, q=j, own=bool(distinct[t] == distinct[s]), n=float(n), **pair(fq, t, -1, qt, objs[j], {k: m[j] for k, m in dense.items()} if dense else None))
                     for t, n in zip(*got)]
    df = pd.DataFrame(recs)
    names = [k for k in df.columns if k not in ("kind", "q", "own", "n")]
    bg, cp = df[df.kind == "background"], df[df.kind != "background"]
    own = cp[cp.own]

    def evaluate(w: dict) -> tuple[float, list[float]]:
        def score(t):
            return t.n.to_numpy() + sum(x * t[k].to_numpy() for k, x in w.items())
        best_bg = pd.Series(score(bg)).groupby(bg.q.to_numpy()).max().to_numpy()
        thr = metrics.calibrate_threshold(best_bg, [], 0.01)["value"]
        best = pd.Series(score(own), index=pd.MultiIndex.from_arrays([own.kind, own.q])).groupby(level=[0, 1]).max()
        n = {k: len(truth[f"model:{k}"][0]) for k in KINDS}
        return thr, [float((best.loc[k] > thr).sum() / n[k]) if k in best.index.get_level_values(0) else 0.0
                     for k in KINDS]

    print(f"validation: {len(reps)} distinct training images (background, as given), {a.items} held-out items' "
          f"copies by {a.world}'s model; recall at 1% of the background; weights chosen on these copies (upper "
          "bounds)")
    print(f"{'comparison':<44} {'weights':>12} {'thr':>6} " + " ".join(f"{k:>12}" for k in KINDS))

    def line(label, w):
        thr, rec = evaluate(w)
        print(f"{label:<44} {'/'.join(f'{x:g}' for x in w.values()) or '-':>12} {thr:6.3f} "
              + " ".join(f"{r:12.1%}" for r in rec), flush=True)
        return rec
    line("normalized alone", {})
    line("shipped: + 0.2 x detail3 c50", {"detail3 c50": 0.2})
    tried = []
    for k in names:
        best = max(((evaluate({k: w})[1], w) for w in weights), key=lambda t: (t[0][3], sum(t[0])))
        line(f"+ {k} (best weight)", {k: best[1]})
    for x, y in itertools.combinations(names, 2):
        for wx, wy in itertools.product(PAIR_WEIGHTS, PAIR_WEIGHTS):
            tried.append((evaluate({x: wx, y: wy})[1], f"+ {x} + {y}", {x: wx, y: wy}))
    tried.sort(key=lambda t: (-t[0][3], -sum(t[0])))
    print(f"the 5 best of {len(tried)} pairs of features and weights:")
    for _, label, w in tried[:5]:
        line(label, w)


if __name__ == "__main__":
    main()
