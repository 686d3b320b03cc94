"""Score normalization (Pizzi et al. 2022, SSCD, "score normalization"; the DISC 2021 descriptor track): a
match's similarity minus beta times the query's similarity to a background set, so that a query resembling
many images alike (a shared background, a common texture) scores low and a copy, which resembles one image
far more than any other, stands out.

Here the background set is the training set itself without the matched image: the normalizer is the mean
cosine of the query's ``k`` nearest *other distinct images* (rows of the matched image's near-duplicate group,
and of one source image where the index merges them, are left out), so the score of a match is

    s(q, r) - beta * mean_k max_{t in distinct image j != image(r)} s(q, t)

With ``train_side`` t > 0 the normalizer also takes the matched image's own neighbourhood, as CSLS does
(Conneau et al. 2018, cross-domain similarity local scaling, against hubness): a share t of it is the mean
cosine of the matched image x to its ``k`` nearest other distinct images (computed once, at build:
``neighbours``), so a training image that resembles many others (a common texture, a shared background: a
"hub") needs a closer match, and one unlike the rest a less close one:

    s(q, r) - beta * ((1 - t) * mean_k[q's other images] + t * mean_k[x's other images])

(t = 0.5: half of CSLS's 2 s(q, r) - r(q) - r(x)). In the background of distinct images, x's neighbours
leave out the query's own image, as a generation is not among them. Measured and not shipped (t = 0: the
verdict is one-sided; docs/descriptor-research.md, "Two-sided normalization").

The query is also scored in other views and the best is kept (``view`` in each result): with ``mirror`` its
mirror image (a mirrored copy is a copy), with ``gains`` its brightness raised by each gain (a darkened copy is
a copy; each also mirrored), with ``contrast`` its contrast raised by each factor (a washed-out copy is a copy;
each also mirrored). The training side stays as it is, so the index keeps one row per image.

The threshold is calibrated on the same score over the background of distinct images (``index.build_index``):
each distinct image's normalized score against its nearest other distinct image, 1% above it. The index
records the rule (``score_norm`` in its descriptor entry) and every score names it (``words``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

VERIFY_SIDE = 64  # the verification compares the images at 64 x 64 pixels, as the masked similarity does
VERIFY = {"weight": 0.2, "sigma": 3.0, "candidates": 5, "region": 0.5}  # chosen on validation copies: docs/methods.md


# the learned verification (``memlab.pairnet``): memlab-verify's probability of a copy added beside the detail
# correlation, its weight chosen on a third world's copies (``benchmarks/bench_learned_verify.py``); an index
# records the weights' ``model`` string when it calibrates. Tried for issue 30 (``build-world --verify
# memlab-verify``): the built-in world keeps ``VERIFY`` (docs/verdict-research.md)
NETWORK_VERIFY = {**VERIFY, "network": "memlab-verify", "network_weight": 0.2}
VERIFY_RULES = {"detail": VERIFY, "memlab-verify": NETWORK_VERIFY}  # by name (``build-world --verify``)


def check_verify(spec: dict | None) -> dict | None:
    """The verification stage's rule (``memlab.verify``) as plain data ({"weight", "sigma", "candidates",
    "region"}, or {"network", "model", "weight", "candidates"}), validated; None stays None. A rule written before
    ``region`` compares the whole image (1.0)."""
    if spec is None:
        return None
    from .errors import MemlabError

    if isinstance(spec, dict) and "network" in spec:
        rest = {k: v for k, v in spec.items() if k not in ("network", "network_weight", "model")}
        return {**check_verify(rest), **_check_network(spec)}
    out = {**VERIFY, "region": 1.0, **dict(spec)}
    dk = out.pop("detail_k", 0)
    w, s, c, r = out["weight"], out["sigma"], out["candidates"], out["region"]

    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)
    if (set(out) != set(VERIFY) or not (number(w) and number(s) and number(r)) or isinstance(c, bool)
            or not isinstance(c, int) or not (0 < w <= 2 and 0 < s <= 8 and 1 <= c <= 64 and 0.25 <= r <= 1)):
        raise MemlabError(f"verify takes weight in (0, 2], sigma in (0, 8] px, a whole number of candidates in "
                          f"[1, 64] and a central region in [0.25, 1]; got {dict(spec)!r:.120}")
    if isinstance(dk, bool) or not isinstance(dk, int) or not 0 <= dk < c:
        raise MemlabError(f"verify's detail_k is a whole number below its candidates; got {dk!r:.40}")
    return {"weight": float(w), "sigma": float(s), "candidates": int(c), "region": float(r),
            **({"detail_k": dk} if dk else {})}


def _check_network(spec: dict) -> dict:
    import re

    from .errors import MemlabError

    w, model = spec.get("network_weight"), spec.get("model")
    if (spec["network"] != "memlab-verify" or not isinstance(w, (int, float)) or isinstance(w, bool)
            or not np.isfinite(w) or not 0 < w <= 2
            or (model is not None and not (isinstance(model, str) and re.fullmatch(r"memlab-pairnet-[0-9a-f]{12}", model)))):
        raise MemlabError(f"a learned verification takes network 'memlab-verify' (its weights: assets/memlab-verify or "
                          f"$MEMLAB_VERIFY_WEIGHTS), network_weight in (0, 2] and the weights' model string; got "
                          f"{dict(spec)!r:.160}")
    return {"network": "memlab-verify", "network_weight": float(w), **({"model": model} if model else {})}


def verify_words(spec: dict) -> str:
    """The verification rule in words, appended to the score normalization's."""
    region = spec.get("region", 1.0)
    return (f"plus {spec['weight']:g} x the correlation of the two images' detail ({spec['sigma']:g} px at "
            f"{VERIFY_SIDE} x {VERIFY_SIDE}, "
            + (f"inside the central {region:.0%} of each side, " if region < 1 else "")
            + "per colour channel, the better of the query and its mirror image"
            + (f", less the mean of its {spec['detail_k']} highest with the query's other best matches"
               if spec.get("detail_k") else "")
            + ")"
            + (f", plus {spec['network_weight']:g} x the verification network memlab-verify's probability that the "
               f"query copies the match ({spec.get('model', 'not yet calibrated')}: the two images at {VERIFY_SIDE} x "
               f"{VERIFY_SIDE} and their difference, the better of the query and its mirror image)"
               if spec.get("network") else "")
            + f", over the query's {spec['candidates']} best matches")


DEFAULT = {"k": 2, "beta": 1.0, "mirror": True, "gains": [1.5], "contrast": [], "verify": VERIFY, "train_side": 0.0}


def check(spec: dict | None) -> dict | None:
    """A score-normalization rule as plain data ({"k", "beta", "mirror", "gains", "contrast", "verify"}), validated
    (a rule read from an index's manifest too, its ``words`` aside); None stays None. ``verify``: the
    verification stage's rule (``memlab.verify``) or None (a rule written without it has none)."""
    if spec is None:
        return None
    from .errors import MemlabError

    out = {**DEFAULT, "gains": [], "contrast": [], "verify": None, "train_side": 0.0,
           **{key: v for key, v in dict(spec).items() if key != "words"}}
    if set(out) != set(DEFAULT):  # a rule written without gains (or contrast, or verify) has none
        raise MemlabError(f"score_norm takes {', '.join(DEFAULT)}; got {', '.join(sorted(spec))}")

    def number(x, kind):
        return isinstance(x, kind) and not isinstance(x, bool) and np.isfinite(x)
    k, beta, t = out["k"], out["beta"], out["train_side"]
    if not (number(k, int) and k >= 1 and number(beta, (int, float)) and 0 <= beta <= 2
            and number(t, (int, float)) and 0 <= t <= 1 and isinstance(out["mirror"], bool)
            and all(isinstance(out[key], (list, tuple)) and all(number(g, (int, float)) and 0 < g <= 4 for g in out[key])
                    for key in ("gains", "contrast"))):
        raise MemlabError(f"score_norm needs a whole k >= 1, 0 <= beta <= 2, 0 <= train_side <= 1, mirror true or "
                          f"false, and gains and contrast factors in (0, 4]; got {dict(spec)!r:.120}")
    return {"k": int(k), "beta": float(beta), "mirror": out["mirror"], "gains": [float(g) for g in out["gains"]],
            "contrast": [float(c) for c in out["contrast"]], "verify": check_verify(out["verify"]),
            "train_side": float(t)}


def view_names(spec: dict) -> list[str]:
    """The query's views besides itself ("as given"), in order: mirrored, brightened by each gain, its contrast
    raised by each factor (each also mirrored)."""
    out = ["mirrored"] if spec["mirror"] else []
    for what, key in (("brightness", "gains"), ("contrast", "contrast")):
        for g in spec.get(key, []):
            out += [f"{what} x{g:g}"] + ([f"{what} x{g:g}, mirrored"] if spec["mirror"] else [])
    return out


def words(spec: dict) -> str:
    """The rule in words, for every place a normalized score is shown (made from the rule each time: an index's
    manifest keeps the words of its build too)."""
    extra = view_names(spec)
    t = spec.get("train_side", 0.0)
    near = (f"the mean cosine of the query's {spec['k']} nearest other distinct training images" if not t else
            f"({1 - t:g} x the mean cosine of the query's {spec['k']} nearest other distinct training images + {t:g} x "
            f"the matched image's to its {spec['k']} nearest others)")
    return (f"cosine minus {spec['beta']:g} x {near} (SSCD's score normalization"
            + (", two-sided as CSLS" if t else "") + ")"
            + (f"; the best of the query's views ({' / '.join(['as given'] + extra)})" if extra else "")
            + (f"; {verify_words(spec['verify'])}" if spec.get("verify") else ""))


def is_mirrored(view: str | None) -> bool:
    """Whether a result's ``view`` compared the query's mirror image (local comparisons then mirror it too)."""
    return bool(view) and view.endswith("mirrored")


def normalizer(group_best: np.ndarray, exclude, k: int) -> float:
    """The mean of the ``k`` highest per-image scores ``group_best`` [n_images] other than those of the images
    in ``exclude``; over as many as there are when fewer (0.0 when there are none)."""
    g = np.array(group_best, np.float64)
    g[np.asarray(list(exclude), np.int64)] = -np.inf
    top = np.sort(g[np.isfinite(g)])[::-1][:k]
    return float(top.mean()) if top.size else 0.0


def neighbours(v: np.ndarray, groups, reps, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct image's ``k`` + 1 nearest other distinct images (its representative row ``reps`` as given
    against every row of the others): (their best cosines [n_images, k + 1], highest first, and their ids,
    -1 where fewer), indexed by distinct image."""
    groups, reps = np.asarray(groups, np.int64), np.asarray(reps, np.int64)
    n_groups = int(groups.max()) + 1
    cos, ids = np.full((n_groups, k + 1), -np.inf, np.float32), np.full((n_groups, k + 1), -1, np.int64)
    for s in range(0, len(reps), block):
        r = reps[s:s + block]
        best = _group_best(np.asarray(v[r], np.float32) @ v.T, groups, n_groups)
        best[np.arange(len(r)), groups[r]] = -np.inf
        n = min(k + 1, n_groups)
        top = np.argsort(-best, axis=1, kind="stable")[:, :n]
        c = np.take_along_axis(best, top, axis=1)
        cos[groups[r], :n], ids[groups[r], :n] = c, np.where(np.isfinite(c), top, -1)
    return cos, ids


def load_neighbours(path, info: dict, distinct) -> tuple[np.ndarray, np.ndarray]:
    """An index's stored neighbours (its descriptor entry ``info``'s files under ``path``), checked against its
    distinct images (``distinct``: each row's) and its rule's k."""
    from .indexfiles import load_array

    nb = [load_array(Path(path) / info["files"][f]) for f in ("neighbours", "neighbour_ids")]
    return check_neighbours(nb, int(np.max(distinct, initial=-1)) + 1, info["score_norm"]["k"])


def check_neighbours(nb: tuple, n_images: int, k: int) -> tuple:
    """An index's stored neighbours (``neighbours``' (cos, ids)) checked against its distinct images: the same
    shape [n_images, k + 1] for both, ids in [-1, n_images), finite cosines where an id is given."""
    from .errors import MemlabError

    cos, ids = (np.asarray(a) for a in nb)
    if (cos.shape != (n_images, k + 1) or ids.shape != cos.shape or ids.dtype.kind not in "iu"
            or cos.dtype.kind != "f" or ids.min(initial=-1) < -1 or ids.max(initial=-1) >= n_images
            or not np.isfinite(cos[ids >= 0]).all()):
        raise MemlabError(f"the index's neighbours files do not fit its {n_images} distinct images and k = {k}")
    return cos, ids


def train_term(nb: tuple, images, exclude=None, k: int = 2) -> np.ndarray:
    """The matched images' own neighbourhood (``neighbours``' (cos, ids)): for each of ``images``, the mean cosine
    of its ``k`` nearest other distinct images other than ``exclude`` (one image id per entry, or None), over as
    many as there are (0.0 when none)."""
    images = np.asarray(images, np.int64)
    cos, ids = nb[0][images].astype(np.float64), nb[1][images]
    ok = ids >= 0
    if exclude is not None:
        ok &= ids != np.asarray(exclude, np.int64).reshape(-1, 1)
    ok &= np.cumsum(ok, axis=1) <= k
    return np.where(ok, cos, 0.0).sum(1) / np.maximum(ok.sum(1), 1)


def _two_sided(query_side, train, t: float):
    """The normalizer: the query's side, or with ``train_side`` t, (1 - t) x it + t x the matched image's own."""
    return query_side if not t else (1 - t) * query_side + t * np.asarray(train, np.float64)


def normalize_candidates(scores, groups, k: int, beta: float, train=None, train_side: float = 0.0) -> np.ndarray:
    """Each candidate's normalized score from one query's candidate list (``scores`` [m], the distinct image of
    each candidate ``groups`` [m]): its score minus ``beta`` x the mean of the ``k`` best other images' best
    scores in the list; with ``train_side`` t, minus beta x ((1 - t) x that + t x ``train`` [m], each
    candidate's own neighbourhood: ``train_term``)."""
    s = np.asarray(scores, np.float64)
    g = np.asarray(groups, np.int64)
    if not s.size:
        return s
    ids, inv = np.unique(g, return_inverse=True)
    best = np.full(len(ids), -np.inf)
    np.maximum.at(best, inv, s)
    order = np.argsort(-best, kind="stable")[:k + 1]  # an image's k others are among the k + 1 best images
    per_image = np.array([normalizer(best[order], np.flatnonzero(order == i), k) for i in range(len(ids))])
    return s - beta * _two_sided(per_image[inv], train, train_side)


def _group_best(sim: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """[n_queries, n_rows] similarities -> each query's best row per distinct image [n_queries, n_groups]."""
    out = np.full((len(sim), n_groups), -np.inf)
    order = np.argsort(groups, kind="stable")
    gs = groups[order]
    starts = np.r_[0, np.flatnonzero(np.diff(gs)) + 1]
    out[:, gs[starts]] = np.maximum.reduceat(np.asarray(sim)[:, order], starts, axis=1)
    return out


def _best_others(best: np.ndarray, n: int) -> np.ndarray:
    """Each row's ``n`` highest values (-inf where fewer images remain), highest first: [rows, n]."""
    n = min(n, best.shape[1])
    return -np.sort(-np.partition(best, best.shape[1] - n, axis=1)[:, -n:], axis=1)


def _mean_finite(x: np.ndarray) -> np.ndarray:
    """Each row's mean over its finite values (``normalizer``'s: over as many as there are; 0.0 for none)."""
    ok = np.isfinite(x)
    return np.where(ok, x, 0.0).sum(1) / np.maximum(ok.sum(1), 1)


def _side(spec: dict, nb) -> float:
    t = spec.get("train_side", 0.0)
    if t and nb is None:
        raise ValueError("a two-sided rule (train_side > 0) needs the images' neighbours (scorenorm.neighbours)")
    return t


def background(v: np.ndarray, groups, rows, spec: dict, views=(), block: int = 1024, nb=None) -> np.ndarray:
    """The normalized background of distinct images: each of ``rows`` (one per distinct image) against its
    nearest row of another distinct image, normalized by the next ``k`` other images (and, two-sided, by that
    image's ``nb`` other than the row's own image); the best of the row and its other ``views``
    (``view_vectors`` of the rows' images), as a query is scored. NaN where no other image is left."""
    t = _side(spec, nb)
    groups = np.asarray(groups, np.int64)
    rows = np.asarray(rows, np.int64)
    n_groups = int(groups.max()) + 1
    out = np.full(len(rows), -np.inf)
    for q in [v[rows], *views]:
        for s in range(0, len(rows), block):
            best = _group_best(np.asarray(q[s:s + block], np.float32) @ v.T, groups, n_groups)
            r = rows[s:s + block]
            best[np.arange(len(r)), groups[r]] = -np.inf  # its own image is not a match
            top = _best_others(best, spec["k"] + 1)
            own = train_term(nb, best.argmax(1), groups[r], spec["k"]) if t else None
            score = top[:, 0] - spec["beta"] * _two_sided(_mean_finite(top[:, 1:]), own, t)
            out[s:s + block] = np.maximum(out[s:s + block], np.where(np.isfinite(top[:, 0]), score, -np.inf))
    return np.where(np.isfinite(out), out, np.nan).astype(np.float32)


def against(v: np.ndarray, groups, queries: np.ndarray, targets, spec: dict, views=(), block: int = 1024,
            nb=None) -> np.ndarray:
    """Normalized scores of ``queries`` [n, d] against their ``targets`` (training rows, [n]): a copy's score
    against its original, normalized by the query's ``k`` nearest other distinct images (two-sided: and by the
    original's ``nb``); the best of the query and its other ``views`` ([n, d] each)."""
    groups = np.asarray(groups, np.int64)
    targets = np.asarray(targets, np.int64)
    n_groups = int(groups.max()) + 1
    t = _side(spec, nb)
    own_side = train_term(nb, groups[targets], None, spec["k"]) if t else np.zeros(len(targets))
    out = np.full(len(targets), -np.inf)
    for q in [queries, *views]:
        for s in range(0, len(targets), block):
            qq, tg = np.asarray(q[s:s + block], np.float32), targets[s:s + block]
            best = _group_best(qq @ v.T, groups, n_groups)
            best[np.arange(len(tg)), groups[tg]] = -np.inf  # the original's image is the match, not a neighbour
            own = np.einsum("nd,nd->n", qq, v[tg])
            near = _two_sided(_mean_finite(_best_others(best, spec["k"])), own_side[s:s + block], t)
            out[s:s + block] = np.maximum(out[s:s + block], own - spec["beta"] * near)
    return out.astype(np.float32)


def view_vectors(d, images, spec: dict) -> list[np.ndarray]:
    """The descriptor's vectors of the images' other views (``view_names``' order)."""
    from PIL import ImageEnhance, ImageOps

    rgb = [im.convert("RGB") for im in images]
    out = []
    if spec["mirror"]:
        out.append(d.embed([ImageOps.mirror(im) for im in rgb]))
    for enhance, key in ((ImageEnhance.Brightness, "gains"), (ImageEnhance.Contrast, "contrast")):
        for g in spec.get(key, []):
            changed = [enhance(im).enhance(g) for im in rgb]
            out.append(d.embed(changed))
            if spec["mirror"]:
                out.append(d.embed([ImageOps.mirror(im) for im in changed]))
    return out


def calibration_sides(d, spec: dict, reps, load_image, copy_images, truth_images: dict) -> dict:
    """What a normalized calibration needs beside the rows' vectors: the other views' vectors of the distinct
    images' representatives (``load_image(row)``), of the calibration copies (``copy_images``) and of each ground
    truth's copies."""
    return {"reps": view_vectors(d, [load_image(int(r)) for r in reps], spec),
            "copies": view_vectors(d, list(copy_images), spec),
            "truth": {g: view_vectors(d, list(ims), spec) for g, ims in truth_images.items()}}
