"""Match images against a training index: top-k items, verdicts, dataset-level numbers.

Every verdict names the descriptor, model, preset and threshold it used.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import metrics, scorenorm, verify
from .descriptors import Descriptor, create_descriptor
from .errors import MemlabError
from .index import TrainingIndex
from .records import software
from .preprocess import as_viewed, open_rgb


def descriptor_for_index(index: TrainingIndex, name: str | None = None, **overrides) -> Descriptor:
    """Build the query descriptor with exactly the config the index was built with."""
    info = index.descriptor_info(name)
    d = create_descriptor(info["name"], **{**info.get("config", {}), **overrides})
    index.check_descriptor(d)
    return d


# Caps on an image memlab is handed (an upload in the app, a query or training image on the command line):
# past them it is refused with a message before it is decoded, so a decompression bomb (a small file that
# declares a huge canvas) never reaches memory.
MAX_IMAGE_BYTES = 20 * 2**20
MAX_IMAGE_PIXELS = 40_000_000  # e.g. 8000 x 5000


def check_image_file(path: str | Path, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS):
    """Refuse (MemlabError) a file over the byte cap or an image whose header declares more pixels than
    the pixel cap; reads only the header."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise MemlabError(f"image {path.name} is {size / 2**20:.1f} MiB; at most {max_bytes / 2**20:.0f} MiB")
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        w = h = None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise MemlabError(f"cannot read image {path}: {' '.join(str(e).split())}") from None
    if w is None or w * h > max_pixels:
        dims = f"{w} x {h} = {w * h:,} pixels" if w is not None else "more pixels than PIL allows"
        raise MemlabError(f"image {path.name} declares {dims}; at most {max_pixels:,} (a decompression bomb "
                          f"is refused before it is decoded)")


def _opened(path: str | Path, use):
    """``use(image)`` on the file opened within the caps; a missing or unreadable file is one clear error."""
    if not Path(path).is_file():
        raise MemlabError(f"image {path} does not exist")
    check_image_file(path)
    try:
        with Image.open(path) as im:
            return use(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise MemlabError(f"cannot read image {path}: {' '.join(str(e).split())}") from None


def load_image(path: str | Path) -> Image.Image:
    """Open an image fully (so corrupt files fail here, with a clear message), within the caps, turned as its
    EXIF orientation says (as a viewer shows it: a phone's photo is matched upright)."""
    def decoded(im):
        im.load()
        return as_viewed(im)
    return _opened(path, decoded)


def descriptor_summary(index: TrainingIndex, name: str) -> dict:
    info = index.descriptor_info(name)
    thr = info["threshold"]
    return {"name": info["name"], "kind": info["kind"], "model": info["model"], "preset": info["preset"],
            "dim": info["dim"], "threshold": thr["value"], "high_threshold": thr.get("high"),
            "threshold_source": thr["source"], "threshold_citation": thr.get("citation"),
            **({"score": scorenorm.words(info["score_norm"])} if info.get("score_norm") else {}),  # (from the rule)
            **({"indexed": info["indexed"]} if info.get("indexed") else {}),
            "index": index.identity}  # the training set the scores were measured against


MAX_CANDIDATES = 1024  # rows searched to find k distinct near-duplicate groups


def query_vectors(index: TrainingIndex, descriptor: Descriptor, images) -> tuple[np.ndarray, list[np.ndarray]]:
    """The query images' vectors, and those of their other views where the index's normalized verdict scores
    them too (its ``score_norm``: the mirror image, brightened; ``scorenorm.view_vectors``; else none)."""
    vecs = descriptor.embed(list(images))
    spec = index.descriptor_info(descriptor.name).get("score_norm")
    return vecs, (scorenorm.view_vectors(descriptor, list(images), spec) if spec else [])


def _normalized(index: TrainingIndex, name: str, vectors, views, k: int, spec: dict):
    """Per query: its k best near-duplicate groups by normalized score (``memlab.scorenorm``), in its best
    view: (scores, rows, cosines, view names, the kept view's vectors)."""
    n = int(index.manifest["item_count"])
    per_group = int(index.manifest.get("duplicates", {}).get("largest", 0) or 0) or 20
    kk = min(n, MAX_CANDIDATES, (k + spec["k"] + 1) * per_group)  # enough images to normalize the k kept
    sides = list(zip(["as given", *scorenorm.view_names(spec)], [vectors, *(views or [])]))
    t = spec.get("train_side", 0.0)
    nb = index.neighbours(name) if t else None
    if t and nb is None:
        raise MemlabError(f"{name}: the index's two-sided score normalization has no neighbours file; build it again")
    best = [None] * len(vectors)
    for side, vecs in sides:
        cos, rows = index.search(vecs, k=kk, name=name)
        for qi in range(len(vecs)):
            f = rows[qi] >= 0  # FAISS's -1 ("no result") is never a match
            c, r = cos[qi][f], rows[qi][f]
            g = index.distinct_of(r)
            s = scorenorm.normalize_candidates(c, g, spec["k"], spec["beta"],
                                               scorenorm.train_term(nb, g, None, spec["k"]) if t else None, t)
            order = np.argsort(-s, kind="stable")
            keep = order[_first_per_group(index, r[order], k)]
            if len(keep) and (best[qi] is None or s[keep[0]] > best[qi][0][0]):
                best[qi] = (s[keep], r[keep], c[keep], side, vecs[qi])
    empty = (np.zeros(0), np.zeros(0, np.int64), np.zeros(0), "as given", None)
    best = [b or empty for b in best]
    return tuple([b[i] for b in best] for i in range(5))


def match_vectors(index: TrainingIndex, descriptor: Descriptor, vectors: np.ndarray, k: int = 5,
                  one_per_group: bool = True, views: list[np.ndarray] | None = None,
                  images: Sequence[Image.Image] | None = None) -> list[dict]:
    """Per query vector: its top-k matches, verdict and threshold (JSON-ready dicts). ``one_per_group``: the
    matches are the k best near-duplicate groups, each its best row (``duplicates`` says how many copies of
    it the training set holds), not k rows of one duplicated image. Where the index normalizes the verdict's
    score (``score_norm``), ``score`` is the normalized score and ``cosine`` the plain one; ``views``: the
    queries' other views' vectors (``query_vectors``), the best kept (``view`` in each result). Where the rule
    also verifies (``score_norm.verify``, ``memlab.verify``), the query ``images`` are needed: the best
    candidates are re-scored on the images, ``score`` is the verified score and each match keeps its
    ``normalized`` score and the rule's terms: the images' ``detail`` correlation and, with a learned verification,
    memlab-verify's ``network`` probability."""
    thr = index.threshold(descriptor.name)
    possible = index.possible(descriptor.name)["value"]
    spec = index.descriptor_info(descriptor.name).get("score_norm")
    if spec:
        ver = verify.check(spec.get("verify"))  # a rule written before a setting had one takes its old value
        kk = max(k, ver["candidates"]) if ver else k
        scores, rows, cosines, sides, chosen = _normalized(index, descriptor.name, vectors, views, kk, spec)
        more = None
        if ver:
            if images is None or len(images) != len(vectors):
                raise MemlabError("this index verifies each match on the images: pass the query images")
            scores, rows, cosines, more = _verified(index, images, scores, rows, cosines, ver, k)
        return _results(index, descriptor, chosen, scores, rows, thr, possible, cosines, sides, more)
    cosine = descriptor.verdict == "cosine"
    n = int(index.manifest["item_count"])
    per_group = int(index.manifest.get("duplicates", {}).get("largest", 0) or 0) or 20
    kk = min(n, MAX_CANDIDATES, k * per_group) if one_per_group else k
    # another verdict score: candidates by cosine, re-ranked by the verdict score (e.g. the worst tile)
    scores, rows = index.search(vectors, k=max(k, kk) if cosine else max(kk, 64), name=descriptor.name)
    found = [rows[qi] >= 0 for qi in range(len(vectors))]  # FAISS's -1 ("no result") is never a match
    scores, rows = [scores[qi][f] for qi, f in enumerate(found)], [rows[qi][f] for qi, f in enumerate(found)]
    exact = index.vectors(descriptor.name)
    if one_per_group:  # each group's best row by cosine: as many groups as the verdict re-ranks (or k)
        kept = [_first_per_group(index, r, k if cosine else max(k, 64)) for r in rows]
        scores, rows = [s[i] for s, i in zip(scores, kept)], [r[i] for r, i in zip(rows, kept)]
    if not cosine:
        rescored = [descriptor.verdict_scores(vectors[qi], np.asarray(exact[rows[qi]])) for qi in range(len(vectors))]
        order = [np.argsort(-r, kind="stable") for r in rescored]
        scores = [r[o] for r, o in zip(rescored, order)]
        rows = [rw[o] for rw, o in zip(rows, order)]
    scores, rows = [s[:k] for s in scores], [r[:k] for r in rows]
    return _results(index, descriptor, vectors, scores, rows, thr, possible)


def _verified(index: TrainingIndex, images, scores, rows, cosines, ver: dict, k: int):
    """Each query's candidates re-scored on the images (``verify.rescore``); its best ``candidates`` re-ranked (the
    top-1 is the best of them, as calibrated), any further ones after them; the first k kept: (scores, rows,
    cosines, per query {"normalized": [...], "detail": [...], with a network "network": [...]})."""
    def train_of(row):
        path = index.image_path(row)
        if path is None or not Path(path).is_file():
            raise MemlabError(f"training image of row {row} is missing; the index's verification needs it")
        return verify.train_detail(path, ver)
    out = ([], [], [], [])
    for qi, im in enumerate(images):
        got, parts = verify.rescore(scores[qi], rows[qi], verify.term(ver).query(im), train_of, ver)
        m = ver["candidates"]
        order = np.r_[np.argsort(-got[:m], kind="stable"), m + np.argsort(-got[m:], kind="stable")][:k]
        for lst, val in zip(out, (got[order], np.asarray(rows[qi])[order], np.asarray(cosines[qi])[order],
                                  {"normalized": np.asarray(scores[qi])[order], **{k: v[order] for k, v in parts.items()}})):
            lst.append(val)
    return out


def _results(index, descriptor, vectors, scores, rows, thr, possible, cosines=None, sides=None, more=None) -> list[dict]:
    """The JSON-ready result of each query from its ranked matches (scores, rows; with score normalization
    also the plain cosines and the view kept; with verification each match's normalized score and the
    rule's terms)."""
    exact = index.vectors(descriptor.name)
    out = []
    for qi in range(len(vectors)):
        if not len(rows[qi]):
            raise MemlabError("the index found no item for a query (an approximate index with too few lists "
                              "probed); rebuild it with more items or an exact factory")
        extra = descriptor.secondary_scores(vectors[qi], np.asarray(exact[rows[qi]]))
        matches = []
        for j, (s, r) in enumerate(zip(scores[qi], rows[qi])):
            m = {**index.item(r), "row": int(r), "score": float(s)}
            if cosines is not None:
                m["cosine"] = float(cosines[qi][j])
            for key, arr in (more[qi] if more is not None else {}).items():
                m[key] = float(arr[j])
            for key, arr in extra.items():
                m[key] = float(arr[j])
            matches.append(m)
        top = float(scores[qi][0])
        out.append({"matches": matches, "score": top, "replicated": bool(top > thr["value"]),
                    "high_confidence": bool(thr.get("high") is not None and top > thr["high"]),
                    "threshold": float(thr["value"]),
                    "verdict": metrics.verdict(top, thr["value"], possible), "possible_threshold": possible,
                    **({"view": sides[qi]} if sides is not None else {})})
    return out


def masked_score(index: TrainingIndex, row: int, image: Image.Image, mask, mirrored: bool = False) -> float | None:
    """The generation's similarity to training row ``row`` inside its mask (``metrics.masked_similarity``, both
    images at 64 x 64): None where the index keeps no image for the row or there is no mask. ``mirrored``: the
    row matched the generation's mirror image, so the generation and its mask are compared mirrored."""
    path = index.image_path(int(row)) if mask is not None else None
    if path is None or not Path(path).is_file():
        return None
    side = metrics.MASK_SIDE
    train = np.asarray(open_rgb(path).resize((side, side), Image.LANCZOS), np.float64)
    gen = np.asarray(image.convert("RGB").resize((side, side), Image.LANCZOS), np.float64)
    m = metrics.mask_to_image(mask, side)
    if mirrored:
        gen, m = gen[:, ::-1], m[:, ::-1]
    return metrics.masked_similarity(gen, train, m)


def partial_copy(index: TrainingIndex, result: dict, image: Image.Image) -> dict:
    """Where a matched image agrees with its top-1 training image (``result["agreement"]``: the mask of 8-px
    windows, its share, and the index's calibrated threshold, Webster's masked matching): a result that is not
    replicated as a whole but whose share passes that threshold becomes a ``template copy``. Left as it is
    where the index keeps no image for the row or calibrated no threshold on the agreement measured now (indices
    built before it: ``calibrate_agreement`` calibrates one again)."""
    got = agreement(index, int(result["matches"][0]["row"]), image, scorenorm.is_mirrored(result.get("view")))
    if got is None:
        return result
    result["agreement"] = got
    if result["verdict"] != "replicated" and got["share"] > got["threshold"]:
        result["verdict"] = "template copy"
    return result


def agreement(index: TrainingIndex, row: int, image: Image.Image, mirrored: bool = False) -> dict | None:
    """Where ``image`` agrees with training row ``row`` (``agreement.agreement_of``: the mask of 8-px windows and
    its share) with the index's calibrated threshold and its source; None where the index keeps no image for the
    row or calibrated no threshold on the agreement measured now. ``mirrored``: the row matched the image's
    mirror image, so that is compared."""
    cal = metrics.agreement_current(index.manifest.get("agreement"))
    path = index.image_path(int(row)) if cal else None
    if path is None or not Path(path).is_file():
        return None
    from .agreement import agreement_of

    if mirrored:
        image = ImageOps.mirror(image.convert("RGB"))
    got = agreement_of(image, open_rgb(path))
    return {**got, "threshold": cal["threshold"], "source": cal["source"]}


def _first_per_group(index: TrainingIndex, rows, k: int) -> np.ndarray:
    """Positions of the first row of each near-duplicate group among ranked rows, at most k."""
    groups = index.groups_of(rows)
    seen, keep = set(), []
    for i, g in enumerate(groups):
        if g not in seen:
            seen.add(g)
            keep.append(i)
            if len(keep) == k:
                break
    return np.asarray(keep, np.int64)


def summarize(index: TrainingIndex, name: str, top1_scores: Sequence[float]) -> dict:
    """Dataset-level numbers for a set of queries, beside the index's background figures."""
    info = index.descriptor_info(name)
    thr = info["threshold"]
    s = np.asarray(top1_scores, np.float64)
    flags, high = metrics.replication_flags(s, thr["value"], thr.get("high"))
    return {
        "n_queries": int(s.size),
        "replication_rate": metrics.replication_rate(flags),
        "high_confidence_rate": metrics.replication_rate(high),
        "dataset_similarity": metrics.dataset_similarity(s, thr["value"]),
        "replication_interval": metrics.rate_interval(flags),
        "query_percentiles": metrics.percentiles(s),
        "background": info["background"],
        "calibration": {"source": thr["source"], "fpr": thr.get("fpr"), "recall": thr.get("recall"),
                        "copy_top1": thr.get("copy_top1"),
                        "copy_percentiles": thr.get("copy_percentiles"),
                        "background_percentiles": thr.get("background_percentiles")},
    }


def _match_chunk(index: TrainingIndex, descriptor: Descriptor, images, k: int) -> tuple[list, float, float]:
    """Match a list of images: (their results, seconds embedding, seconds searching and verifying)."""
    t0 = time.perf_counter()
    vecs, views = query_vectors(index, descriptor, images)
    t1 = time.perf_counter()
    results = match_vectors(index, descriptor, vecs, k, views=views, images=images)
    for r, im in zip(results, images):
        partial_copy(index, r, im)
    return results, t1 - t0, time.perf_counter() - t1


def _result(index: TrainingIndex, name: str, queries: list, embed_s: float, search_s: float) -> dict:
    summary = summarize(index, name, [q["score"] for q in queries])
    summary["timing"] = {"embed_s": embed_s, "search_s": search_s}
    summary["software"] = dict(software())  # the versions the scores depend on
    return {"descriptor": descriptor_summary(index, name), "queries": queries, "summary": summary}


def match_images(index: TrainingIndex, descriptor: Descriptor, images: Sequence[Image.Image],
                 names: Sequence[str] | None = None, k: int = 5) -> dict:
    """The ``memlab match`` result: {"descriptor", "queries", "summary"} (see README)."""
    results, embed_s, search_s = _match_chunk(index, descriptor, list(images), k)
    names = list(names) if names is not None else [str(i) for i in range(len(images))]
    return _result(index, descriptor.name, [{"image": n, **r} for n, r in zip(names, results)], embed_s, search_s)


MATCH_CHUNK = 256  # query images decoded and matched at a time (a folder of any size holds this many in memory)


def match_paths(index: TrainingIndex, descriptor: Descriptor, paths: Sequence[str | Path], k: int = 5,
                chunk: int = MATCH_CHUNK, progress=None, skip_unreadable: bool = False) -> dict:
    """``match_images`` over image files, the same result: every file is first checked (it exists, its header
    reads and is within the caps, its data is whole where the format can tell: ``Image.verify``), so a bad file
    is refused before any work; then they are decoded and matched ``chunk`` at a time. With ``skip_unreadable``
    a file the check refuses is left out instead, named with its reason in the result's ``skipped``."""
    kept, skipped = [], []
    for p in paths:
        try:
            _opened(p, lambda im: im.verify())
            kept.append(p)
        except MemlabError as e:
            if not skip_unreadable:
                raise
            skipped.append({"image": str(p), "error": str(e)})
    if paths and not kept:  # (every file refused: with skip_unreadable, else the first raised)
        raise MemlabError(f"none of the {len(paths)} images could be read (the first: {skipped[0]['error']})")
    paths = kept
    queries, embed_s, search_s, decode_s = [], 0.0, 0.0, 0.0
    starts = range(0, len(paths), chunk)
    for s in progress(starts, total=len(starts)) if progress else starts:
        part = list(paths[s:s + chunk])
        t = time.perf_counter()
        images = [load_image(p) for p in part]
        decode_s += time.perf_counter() - t
        results, e, f = _match_chunk(index, descriptor, images, k)
        queries += [{"image": str(n), **r} for n, r in zip(part, results)]
        embed_s, search_s = embed_s + e, search_s + f
    out = _result(index, descriptor.name, queries, embed_s, search_s)
    out["summary"]["timing"]["decode_s"] = decode_s
    if skip_unreadable:
        out["skipped"] = skipped
    return out
