"""How an index calibrates each descriptor when it is built (``index.build_index``): the threshold (a published
one, or ``fpr`` of the background of distinct images), both backgrounds, the score normalization's and the
verification's scores (``memlab.scorenorm``, ``memlab.verify``), and recall on the calibration copies and on each
ground truth. Pure computation on vectors and images; the index writes what it returns."""
from __future__ import annotations

import numpy as np

from . import metrics, scorenorm, verify
from .descriptors import Descriptor
from .distort import distort
from .errors import MemlabError


def calibration_rows(distinct, reps, ground_truth, calib_n: int, seed: int) -> np.ndarray:
    """Up to ``calib_n`` distinct items to copy for calibration, none of those held out as ground truth."""
    held = np.unique(distinct[np.concatenate([np.asarray(r, np.int64) for r, _ in (ground_truth or {}).values()]
                                             or [np.zeros(0, np.int64)])])
    pool = reps[~np.isin(distinct[reps], held)]
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(calib_n, len(pool)), replace=False))


def embed_copies(calib_rows, load_image, descriptors, batch_size: int, bar, images=None) -> dict[str, np.ndarray]:
    """Each calibration row distorted once (``memlab.distort``; ``images``: those copies, already made), embedded
    by every descriptor."""
    names = ", ".join(d.name for d in descriptors)
    cchunks: dict[str, list] = {d.name: [] for d in descriptors}
    for s in bar(range(0, len(calib_rows), batch_size), desc=f"copies {names}",
                 total=-(-len(calib_rows) // batch_size)):
        ims = (images[s:s + batch_size] if images is not None
               else [distort(load_image(int(i))) for i in calib_rows[s:s + batch_size]])
        for d in descriptors:
            cchunks[d.name].append(d.embed(ims))
    return {k: np.concatenate(v) for k, v in cchunks.items()}


def descriptor_entry(d: Descriptor, v, reps, group, distinct, copies, calib_rows, truth, fpr, origin,
                      factory, sides=None, spec=None, images=None, indexed=None) -> dict:
    """One descriptor's manifest entry: its identity, threshold (with recall on the calibration copies and
    on each ground truth set), both backgrounds and its files; the backgrounds ride along as ``_arrays``.
    With the descriptor's ``score_norm`` (``memlab.scorenorm``; ``spec``: as the index keeps it) every score here is
    the normalized one, and with its ``verify`` the verified one (``memlab.verify``; ``images``: (load_image,
    each ground truth's images, the calibration copies, a distinct image as a query)); ``indexed``: the words."""
    # the background of distinct images: each group's representative against the nearest row of *another* group
    # (any of its rows, not only the other representatives)
    truth_scores, nb = {}, None
    if spec:
        if d.verdict != "cosine":
            raise MemlabError(f"{d.name}: score normalization works on the cosine verdict, not {d.verdict!r}")
        nb = scorenorm.neighbours(v, distinct, reps, spec["k"]) if spec.get("train_side") else None
        bg = scorenorm.background(v, distinct, np.arange(len(v)), spec, nb=nb)  # as given: every row, no other view
        bg_distinct = scorenorm.background(v, distinct, reps, spec, sides["reps"], nb=nb)
        copy_scores = scorenorm.against(v, distinct, copies, calib_rows, spec, sides["copies"], nb=nb)
        truth_scores = {g: scorenorm.against(v, distinct, emb[d.name], rows, spec, sides["truth"].get(g, []), nb=nb)
                        for g, (rows, emb) in truth.items()}
        if spec.get("verify"):
            load, truth_images, copy_images, as_query = images
            got = verify.calibrate(v, distinct, reps, spec, sides, load, calib_rows, copy_images, copy_scores,
                                   truth_images, {g: rows for g, (rows, _) in truth.items()}, truth_scores, nb,
                                   query_image=as_query, copy_vectors=copies,
                                   truth_vectors={g: emb[d.name] for g, (_, emb) in truth.items()})
            bg, bg_distinct, copy_scores, truth_scores = (got["background"], got["background_distinct"],
                                                          got["copies"], got["truth"])
    elif d.verdict == "cosine":
        bg, bg_distinct = metrics.background(v), metrics.background(v, groups=distinct)[reps]
        copy_scores = np.einsum("nd,nd->n", copies, v[calib_rows])
    else:  # the verdict's own score (e.g. the worst tile) on cosine candidates
        bg, bg_distinct = verdict_background(d, v), verdict_background(d, v, rows=reps, groups=distinct)
        copy_scores = np.array([d.verdict_scores(c, v[r][None])[0] for c, r in zip(copies, calib_rows)])
    finite = bg_distinct[np.isfinite(bg_distinct)]
    thr = metrics.threshold_rule(
        finite, copy_scores, fpr, published=d.published_threshold, published_high=d.published_high,
        citation=d.threshold_source if d.published_threshold is not None else (
            f"calibrated at build: {fpr:.1%} false positives on the background of distinct items (one row per "
            f"near-duplicate group); recall on synthetic copies of distinct items (rescale 75%, JPEG 60, 5% "
            f"crop, brightness +10%)"),
        carried_over=d.threshold_carried_over)
    thr["calibration_rows"] = "one per near-duplicate group" + (
        f", rows sharing a non-empty {origin!r} (one source image) counted once" if origin else "")
    thr["n_groups"] = int(len(reps))
    # a copy's top-1 is right when it is its original or a near duplicate of it
    thr["copy_top1"] = metrics.top1_in_group(copies, v, group, calib_rows)
    for gname, (rows, emb) in truth.items():
        sc = (truth_scores[gname] if spec else
              np.array([d.verdict_scores(e, v[r][None])[0] for e, r in zip(emb[d.name], rows)]))
        thr.setdefault("ground_truth", {})[gname] = {
            "n": int(len(rows)), "recall": float((sc > thr["value"]).mean()),
            "copy_top1": metrics.top1_in_group(emb[d.name], v, group, rows), **metrics.percentiles(sc)}
    return {
        **d.info(), "factory": factory, "threshold": thr,
        **({"score_norm": {**spec, "words": scorenorm.words(spec)}} if spec else {}),
        **({"indexed": indexed} if indexed else {}),
        "background": {**metrics.dataset_similarity(bg[np.isfinite(bg)], thr["value"]),
                       **metrics.percentiles(bg[np.isfinite(bg)]),
                       "over": ("every training row vs its nearest row of another distinct image" if spec else
                                "every training row vs its nearest other row (duplicates included)")},
        "background_distinct": {**metrics.dataset_similarity(finite, thr["value"]),
                                **metrics.percentiles(finite),
                                "over": "distinct training images: one row per near-duplicate group "
                                        + (f"(rows of one {origin!r} counted once) " if origin else "")
                                        + "vs the nearest distinct image"},
        "files": {"index": f"{d.name}.faiss" if factory != "Flat" else None, "vectors": f"{d.name}.npy",
                  "background": f"{d.name}.background.npy",
                  "background_distinct": f"{d.name}.background_distinct.npy",
                  **({f: f"{d.name}.{f}.npy" for f in ("neighbours", "neighbour_ids")} if nb else {})},
        "_arrays": (bg, bg_distinct, *(nb or ()))}


def verdict_background(d: Descriptor, v: np.ndarray, candidates: int = 64, rows=None, groups=None) -> np.ndarray:
    """The background under a descriptor's verdict score: each item's (``rows``: those items') best verdict
    score against the ``candidates`` nearest other items by cosine; with ``groups``, items of its own group
    are not candidates (NaN where every other item is of its group)."""
    n = len(v)
    rows = np.arange(n) if rows is None else np.asarray(rows)
    if n < 2:
        return np.zeros(0, np.float32)
    k = min(candidates + 1, n)
    g = None if groups is None else np.asarray(groups)
    out = np.empty(len(rows), np.float32)
    for i in range(0, len(rows), 1024):
        q = rows[i:i + 1024]
        sim = v[q] @ v.T
        for j, row in enumerate(sim):
            row[q[j]] = -np.inf
            if g is not None:
                row[g == g[q[j]]] = -np.inf
            cand = np.argpartition(-row, k - 2)[:k - 1]
            cand = cand[np.isfinite(row[cand])]
            out[i + j] = d.verdict_scores(v[q[j]], v[cand]).max() if len(cand) else np.nan
    return out
