"""Verification of a match by the two images themselves (issue 30; the verification stage of copy detection
systems, e.g. the DISC 2021 entries that re-score a descriptor's candidates on the images): a candidate's
normalized score (``memlab.scorenorm``) plus ``weight`` x the correlation of the two images' *detail*

    verified(q, r) = normalized(q, r) + weight * corr(detail(q), detail(r))

where detail is an image at 64 x 64 minus its Gaussian blur of ``sigma`` px (``metrics.detail``), kept inside
the image's central ``region`` of each side, and corr is the correlation of the two details in each colour
channel, averaged over the channels with structure in both, the better of the query and its mirror image. Any
gain and offset per channel (a tint, a darkening, a washed-out copy) leaves the correlation unchanged, and a
mirrored copy is compared mirrored, so it adds to the score of a copy that a diffusion model's colour drift has
pushed down, and adds little to two distinct images on the same background, whose edges lie elsewhere. The
central region leaves out the frame, badge and band that many pictures share (a template copy, whose content
inside differs, is for the masked verdict to call). The rule as plain data (``DEFAULT``, ``check``, ``words``)
lives with score normalization's (``scorenorm.VERIFY``).

The query's ``candidates`` best matches by normalized score are re-scored and re-ranked. The threshold is
calibrated on the same score (``index.build_index``): each distinct training image against its ``candidates``
nearest other distinct images, 1% above the best. Only an index that keeps its training images verifies; its
manifest records the rule (``score_norm.verify``) and every score names it.

A rule with ``network`` (``memlab-verify``, ``memlab.pairnet``; tried for issue 30, not the built-in world's)
also adds ``network_weight`` x a learned network's probability that the query copies the candidate, the better
of the query and its mirror image (``Terms``: both terms as functions of each image's sides).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from .scorenorm import VERIFY as DEFAULT, VERIFY_SIDE as SIDE, check_verify as check, normalize_candidates  # noqa: F401
from .scorenorm import verify_words as words  # noqa: F401
from .preprocess import open_rgb
from .scorenorm import train_term


def central(side: int, region: float) -> slice:
    """The central ``region`` of a side of ``side`` pixels (a frame or border around it is left out)."""
    margin = (side - int(round(side * region))) // 2  # the same on both sides, so a mirror image keeps the region
    return slice(margin, side - margin)


def detail_vectors(image: Image.Image, sigma: float, region: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """An image's detail at ``SIDE`` x ``SIDE`` (``metrics.detail``) inside its central ``region`` of each side,
    each colour channel centred and scaled to unit norm: ([3, n * n] float32, [3] whether the channel has
    structure)."""
    from .metrics import detail

    x = np.asarray(image.convert("RGB").resize((SIDE, SIDE), Image.LANCZOS), np.float64)
    c = central(SIDE, region)
    d = detail(x, sigma)[c, c].reshape(-1, 3).T
    d = d - d.mean(1, keepdims=True)
    norm = np.sqrt((d * d).sum(1))
    ok = norm > 1e-6 * np.sqrt(d.shape[1])
    return (d / np.where(ok, norm, 1.0)[:, None]).astype(np.float32), ok


def correlation(query: Image.Image, train: Image.Image, sigma: float, region: float = 1.0) -> float:
    """corr(detail(q), detail(r)) of the module's rule: per channel, averaged over the channels with structure in
    both, the better of ``query`` and its mirror image (1.0 for an image against itself or its mirror image;
    0.0 where no channel has structure in both), inside the central ``region``."""
    return best_correlation(query_details(query, sigma, region), detail_vectors(train.convert("RGB"), sigma, region))


def _corr(a, b) -> float:
    (x, okx), (y, oky) = a, b
    ok = okx & oky
    return float(np.mean((x * y).sum(1)[ok])) if ok.any() else 0.0


@lru_cache(maxsize=4096)
def _train_detail(path: str, mtime: float, sigma: float, region: float):
    return detail_vectors(open_rgb(path), sigma, region)


def train_detail(path, spec: dict):
    """A training image's sides under a rule (``Terms.train``), cached by file (and its modification time)."""
    from pathlib import Path

    p = Path(path)
    d = _train_detail(str(p), p.stat().st_mtime, float(spec["sigma"]), float(spec.get("region", 1.0)))
    return (d, _train_pixels(str(p), p.stat().st_mtime) if spec.get("network") else None)


@lru_cache(maxsize=4096)
def _train_pixels(path: str, mtime: float):
    from .pairnet import pixels

    return pixels(open_rgb(path))


def query_details(image: Image.Image, sigma: float, region: float = 1.0) -> list:
    """The query's and its mirror image's detail vectors (``correlation``'s two orientations; the central region
    is symmetric, so the mirror image's is the region's mirror)."""
    own = detail_vectors(image.convert("RGB"), sigma, region)
    return [own, detail_mirror(own)]


def best_correlation(query_sides: list, train) -> float:
    """``correlation`` from precomputed detail vectors (``query_details``, ``detail_vectors``)."""
    return max(_corr(q, train) for q in query_sides)


class Terms:
    """The rule's terms on the two images, as functions of each image's *sides*: the detail correlation
    (``detail``: an image's detail vectors; a query's, its own and its mirror image's) and, with ``network``,
    memlab-verify's probability of a copy (``network``: an image's pixels at 64 x 64; ``pairnet.probability``
    compares the query as given and mirrored; the network loaded once per weights file). ``train`` an image's
    sides, ``query`` a query's, ``as_query`` a training image's sides as a query's, ``parts`` the query against
    several training images ({"detail": [m], "network": [m]})."""

    def __init__(self, ver: dict):
        self.sigma, self.region = float(ver["sigma"]), float(ver.get("region", 1.0))
        self.net = self.model = None
        if ver.get("network"):
            from . import pairnet

            self.pairnet = pairnet
            self.net, self.model = pairnet.load(ver["network"], ver.get("model"))

    def train(self, image):
        d = detail_vectors(image.convert("RGB"), self.sigma, self.region)
        return (d, self.pairnet.pixels(image)) if self.net is not None else (d, None)

    def query(self, image):
        return (query_details(image, self.sigma, self.region),
                self.pairnet.pixels(image) if self.net is not None else None)

    def as_query(self, sides):
        return ([sides[0], detail_mirror(sides[0])], sides[1])

    def parts(self, query_sides, trains: list) -> dict:
        out = {"detail": np.array([best_correlation(query_sides[0], t[0]) for t in trains], np.float64)}
        if self.net is not None:
            out["network"] = (self.pairnet.probability(self.net, np.repeat(query_sides[1][None], len(trains), 0),
                                                       np.stack([t[1] for t in trains]))
                              if len(trains) else np.zeros(0))
        return out


def term(ver: dict) -> Terms:
    """The rule's terms (``Terms``)."""
    return Terms(ver)


def verify_resolved(ver: dict | None) -> dict | None:
    """A rule as an index records it: a learned one names its weights (``model``: their checksum), so the index
    refuses other weights later."""
    if not ver or not ver.get("network"):
        return ver
    return {**ver, "model": term({k: v for k, v in ver.items() if k != "model"}).model}


def combined(parts: dict, spec: dict, first=None) -> np.ndarray:
    """What verification adds to the normalized scores: weight x the detail correlation (less its own
    normalization with ``detail_k``, over the ``first`` correlations: by default the best ``candidates``'), plus
    ``network_weight`` x the network's probability."""
    corr = parts["detail"]
    first = corr[:spec["candidates"]] if first is None else first
    out = spec["weight"] * (corr - detail_normalizer(first, len(corr), spec.get("detail_k", 0)))
    if "network" in parts:
        out = out + spec["network_weight"] * parts["network"]
    return out


def rescore(normalized, rows, query_sides, train_of, spec: dict) -> tuple[np.ndarray, dict]:
    """Verified scores of one query's candidates: ``normalized`` [m] plus the rule's terms (``combined``) with
    each candidate row's image (``train_of(row)``: its sides); returns (verified scores, the terms by name)."""
    parts = term(spec).parts(query_sides, [train_of(int(r)) for r in rows])
    return np.asarray(normalized, np.float64) + combined(parts, spec), parts


def detail_normalizer(first, n: int, k: int) -> np.ndarray:
    """The detail correlation's own score normalization (``detail_k`` = k > 0; 0 leaves it out): for each of n
    candidates, the mean of the k highest correlations of the query with the *other* candidates among the
    ``first`` (the best ``candidates``), so a query whose detail matches several images alike (a shared striped
    or checkered background) gains little from it."""
    out = np.zeros(n)
    first = np.asarray(first, np.float64)
    if not k or len(first) < 2:
        return out
    for i in range(n):
        out[i] = top_mean(np.delete(first, i) if i < len(first) else first, k)
    return out


def top_mean(values, k: int) -> float:
    """The mean of the k highest of ``values`` (0.0 for none)."""
    return float(np.sort(np.asarray(values, np.float64))[::-1][:k].mean()) if len(values) else 0.0


def candidates(sim, groups, own, spec: dict, m: int, nb=None):
    """A training image's ``m`` best other distinct images by normalized score, from its similarities ``sim``
    [n_rows] (one view) and the rows' distinct images ``groups``; ``own``: its own image (left out, also from
    the candidates' neighbours ``nb`` of a two-sided rule): (rows [m], normalized scores [m]), each image's
    best row."""
    g = np.asarray(groups, np.int64)
    keep = g != own
    idx = np.flatnonzero(keep)
    s = np.asarray(sim, np.float64)[idx]
    order = np.argsort(-s, kind="stable")
    idx, s = idx[order], s[order]
    _, first = np.unique(g[idx], return_index=True)
    first = np.sort(first)[:m + spec["k"] + 1]  # each image's best row, the best images first
    top_rows, top = idx[first], s[first]
    t = spec.get("train_side", 0.0)
    train = train_term(nb, g[top_rows], np.full(len(top_rows), own), spec["k"]) if t else None
    norm = normalize_candidates(top, g[top_rows], spec["k"], spec["beta"], train, t)
    pick = np.argsort(-norm, kind="stable")[:m]
    return top_rows[pick], norm[pick]


def background(v: np.ndarray, groups, rows, spec: dict, views, train_of, nb=None, query_of=None) -> np.ndarray:
    """The verified background of distinct images (``scorenorm.background``'s, re-scored): each of ``rows`` in
    its best view (the view whose best other image scores highest, as a query keeps one view), its
    ``candidates`` best other distinct images re-scored; returns the best verified score per row (NaN where no
    other image is left). ``train_of(row)``: a row's detail vectors; ``query_of(row)``: those of the row as a query
    (default the same; an index of another rendering of its images, ``index.build_index``'s ``indexed``)."""
    ver = spec["verify"]
    groups = np.asarray(groups, np.int64)
    out = np.full(len(rows), np.nan, np.float32)
    for i, r in enumerate(np.asarray(rows, np.int64)):
        best = None
        for q in [v[r:r + 1], *[w[i:i + 1] for w in views]]:
            got = candidates((q @ v.T)[0], groups, groups[r], spec, ver["candidates"], nb)
            if len(got[1]) and (best is None or got[1][0] > best[1][0]):
                best = got
        if best is None:
            continue
        own = (query_of or train_of)(int(r))
        verified, _ = rescore(best[1], best[0], term(ver).as_query(own), train_of, ver)
        out[i] = verified.max()
    return out


def detail_mirror(sides):
    """Detail vectors of the mirror image from an image's own (the blur is symmetric, so mirroring commutes)."""
    x, ok = sides
    n = int(round(np.sqrt(x.shape[1])))
    return x.reshape(3, n, n)[:, :, ::-1].reshape(3, -1).copy(), ok


def calibrate(v, groups, reps, spec: dict, sides: dict, load_image, calib_rows, copy_images, copy_scores,
              truth_images: dict, truth_rows: dict, truth_scores: dict, nb=None, query_image=None,
              copy_vectors=None, truth_vectors=None) -> dict:
    """What ``index.build_index`` calibrates on, verified (``background``, ``rescore``): the background of every
    row (as given) and of the distinct images (``sides["reps"]``: their other views), the calibration copies'
    and each ground truth's scores against their originals (their normalized scores plus weight x the
    correlation with the original). ``load_image(row)``: a training row's image; ``query_image(row)``: the image a
    distinct image is a query as in the background (default the same). With ``detail_k``, ``copy_vectors`` and
    ``truth_vectors`` (each group's) find each copy's other best matches, whose correlations normalize its own."""
    ver = spec["verify"]
    t = term(ver)
    cache: dict = {}

    def train_of(row):
        if row not in cache:
            cache[row] = t.train(load_image(int(row)))
        return cache[row]

    queries: dict = {}

    def query_of(row):
        if query_image is None:
            return train_of(row)
        if row not in queries:
            queries[row] = t.train(query_image(int(row)))
        return queries[row]

    g = np.asarray(groups, np.int64)

    def against(images, rows, scores, vectors=None):
        out = []
        for i, (im, r) in enumerate(zip(images, rows)):
            sides_q = t.query(im)
            parts = t.parts(sides_q, [train_of(int(r))])
            first = parts["detail"]
            if ver.get("detail_k") and vectors is not None:  # the copy's other best matches, its own image left out
                others, _ = candidates((vectors[i:i + 1] @ v.T)[0], g, g[int(r)], spec, ver["candidates"] - 1, nb)
                first = np.r_[first, t.parts(sides_q, [train_of(int(o)) for o in others])["detail"]]
            out.append(float(combined(parts, ver, first)[0]))
        return (np.asarray(scores, np.float64) + np.asarray(out)).astype(np.float32)

    return {"background": background(v, groups, np.arange(len(v)), spec, [], train_of, nb, query_of),
            "background_distinct": background(v, groups, reps, spec, sides["reps"], train_of, nb, query_of),
            "copies": against(copy_images, calib_rows, copy_scores, copy_vectors),
            "truth": {k: against(truth_images[k], truth_rows[k], truth_scores[k], (truth_vectors or {}).get(k))
                      for k in truth_scores}}
