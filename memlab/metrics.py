"""Replication metrics as pure functions on arrays (docs/methods.md, "Dataset-level numbers").

Names follow the papers: top-1 similarity s(g), dataset similarity (DCR, Somepalli et al. 2023),
background (train vs nearest other train), multi-seed replication rate (MemBench), duplicate count.
"""
from __future__ import annotations

import numpy as np

PERCENTILES = (5, 50, 95)


def top1(sim: np.ndarray) -> np.ndarray:
    """s(g) = max over training items t of sim(g, t); ``sim`` is [n_queries, n_items]."""
    sim = np.asarray(sim, np.float64)
    if sim.ndim != 2 or sim.shape[1] == 0:
        raise ValueError("top1 needs a [n_queries, n_items] matrix with at least one item")
    return sim.max(axis=1)


def replication_flags(scores, threshold: float, high: float | None = None):
    """Replication verdicts: score > threshold (Somepalli et al.: SSCD > 0.5); with ``high``,
    also the high-confidence band score > high (SSCD authors: > 0.75). Returns (flags, high_flags)."""
    s = np.asarray(scores, np.float64)
    return s > threshold, (s > high if high is not None else np.zeros_like(s, bool))


POSSIBLE_FPR = 0.05  # the "possible copy" band's false-positive rate on the background of distinct images


def conformal_threshold(scores, fpr: float) -> float:
    """The threshold that a new score, exchangeable with the ``n`` given ones, exceeds with probability at most
    ``fpr``: the k-th largest score, k = floor(fpr (n + 1)), the split-conformal rank (Vovk et al. 2005;
    Angelopoulos & Bates 2021, "A Gentle Introduction to Conformal Prediction"); the largest where n + 1 < 1 / fpr.
    memlab's calibrated thresholds keep the plain (1 - fpr) quantile (``calibrate_threshold``: at most ``fpr`` of
    the scores it is read from), which a new score exceeds a little more often (the 2nd largest of 133 at 1%:
    2/134); this one is what the benchmarks print beside it (docs/methods.md, "Thresholds belong to the
    descriptor")."""
    s = np.sort(np.asarray(scores, np.float64))
    s = s[np.isfinite(s)]
    if not s.size:
        raise ValueError("conformal_threshold needs at least one finite score")
    k = int(np.floor(fpr * (s.size + 1) + 1e-9))
    return float(s[s.size - min(max(k, 1), s.size)])


def possible_threshold(background_distinct, threshold: float, fpr: float = POSSIBLE_FPR) -> float:
    """The lower edge of the "possible copy" band: the score that ``fpr`` of distinct training images exceed
    against their nearest other distinct image (a 5% false-positive rate where the verdict's threshold allows
    about 1%), never above the verdict's threshold (then there is no band)."""
    bg = np.asarray(background_distinct, np.float64)
    bg = bg[np.isfinite(bg)]
    if not bg.size:
        return float(threshold)
    return float(min(threshold, np.quantile(bg, 1.0 - fpr, method="higher")))


def verdict(score: float, threshold: float, possible: float, masked: float | None = None,
            masked_threshold: float | None = None, agreement: float | None = None,
            agreement_threshold: float | None = None) -> str:
    """Three levels: ``replicated`` above the threshold, ``possible copy`` above the band's lower edge (at
    most the threshold), ``novel`` below it. With a masked score and its calibrated threshold, a seed that is
    not a whole copy but copies the region its mask marks is a ``template copy`` (a partial copy: Webster's
    template verbatims; Chen et al.'s local memorization). With an agreement share and its threshold too
    (Webster's masked matching), both must pass: the two regions verify each other."""
    if score > threshold:
        return "replicated"
    if (masked is not None and masked_threshold is not None and masked > masked_threshold
            and (agreement is None or agreement_threshold is None or agreement > agreement_threshold)):
        return "template copy"
    return "possible copy" if score > possible else "novel"


MASK_SIDE = 64  # masked similarity is measured at 64 x 64 pixels
# the masked similarity compares the images' detail at this scale (px at MASK_SIDE): each image minus its Gaussian
# blur. Chosen on validation seeds (bench_template_mask.py --validate: template probes' seeds 10-19, the card
# reports seeds 0-9): on raw pixels, smooth colour fields of unrelated images correlate as much as a copied frame
DETAIL_SIGMA = 1.0


def mask_to_image(mask, side: int = MASK_SIDE) -> np.ndarray:
    """A coarse map [h, w] in [0, 1] resized (bilinear) to ``side`` x ``side``."""
    from PIL import Image

    m = np.asarray(mask, np.float32)
    return np.asarray(Image.fromarray(m, mode="F").resize((side, side), Image.BILINEAR), np.float64).clip(0, 1)


def detail(image, sigma: float = DETAIL_SIGMA) -> np.ndarray:
    """An image's detail: the image ([H, W, C]) minus its Gaussian blur of ``sigma`` pixels in each channel
    (edges, marks, texture; what is left of a smooth colour field is near 0). ``sigma`` 0: the image itself."""
    x = np.asarray(image, np.float64)
    if not sigma:
        return x
    from scipy.ndimage import gaussian_filter

    return x - gaussian_filter(x, (sigma, sigma, 0), mode="reflect")


def masked_similarity(a, b, mask, sigma: float = DETAIL_SIGMA) -> float:
    """The similarity of two images inside a region (Chen et al.'s localized similarity, as memlab measures it):
    the mask-weighted correlation of their detail (``detail``: each image minus its blur of ``sigma`` px) in
    each colour channel, averaged over the channels (a flat channel is left out). A colour cast or a change of
    brightness (any gain and offset per channel) leaves it unchanged, and so does a smooth shading; outside the
    mask (and its ``sigma``-wide rim) nothing counts; an image against itself scores 1. ``a``, ``b``: [H, W, 3]
    arrays (same size); ``mask``: [H, W] weights >= 0."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    w = np.asarray(mask, np.float64)[..., None]
    if x.shape != y.shape or w.shape[:2] != x.shape[:2]:
        raise ValueError(f"images {x.shape} and {y.shape} and mask {w.shape[:2]} must share a size")
    total = w.sum()
    if total <= 0:
        return float("nan")
    x, y = detail(x, sigma), detail(y, sigma)
    x = x - (w * x).sum((0, 1)) / total
    y = y - (w * y).sum((0, 1)) / total
    den = np.sqrt((w * x * x).sum((0, 1)) * (w * y * y).sum((0, 1)))  # per channel
    ok = den > 1e-9 * total
    return float(np.mean((w * x * y).sum((0, 1))[ok] / den[ok])) if ok.any() else 0.0


# Webster's masked matching as memlab measures it: windows (px at MASK_SIDE) whose detail (at DETAIL_SIGMA)
# correlates above the cutoff. Chosen on validation seeds (bench_template_mask.py --validate), as DETAIL_SIGMA:
# raw pixels in 16-px windows above 0.8 shipped before
AGREEMENT_WINDOW, AGREEMENT_CUTOFF, AGREEMENT_MIN_STD = 8, 0.6, 1.0


def agreement_mask(a, b, window: int = AGREEMENT_WINDOW, cutoff: float = AGREEMENT_CUTOFF,
                   min_std: float = AGREEMENT_MIN_STD, sigma: float = DETAIL_SIGMA) -> np.ndarray:
    """Where two images agree (Webster's masked matching, as memlab measures it): the images' detail
    (``detail``, ``sigma`` px; 0: raw pixels), both [H, W, 3] of one size, 0-255, cut into ``window`` x
    ``window`` windows; a window agrees when the correlation of its values, averaged over the colour channels
    with structure in both (standard deviation above ``min_std``), passes ``cutoff``. A colour cast leaves it
    unchanged; a window without detail in either image never agrees. Returns [H // window, W // window]
    booleans; its mean is the agreement share."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape or x.ndim != 3:
        raise ValueError(f"images {x.shape} and {y.shape} must be [H, W, 3] of one size")
    x, y = detail(x, sigma), detail(y, sigma)
    n, m = x.shape[0] // window, x.shape[1] // window

    def cells(v):  # [n, m, window * window, 3]
        v = v[:n * window, :m * window].reshape(n, window, m, window, -1).transpose(0, 2, 1, 3, 4)
        return v.reshape(n, m, window * window, -1)
    x, y = cells(x), cells(y)
    x, y = x - x.mean(2, keepdims=True), y - y.mean(2, keepdims=True)
    sx, sy = np.sqrt((x * x).mean(2)), np.sqrt((y * y).mean(2))
    ok = (sx > min_std) & (sy > min_std)
    corr = np.where(ok, (x * y).mean(2) / np.where(ok, sx * sy, 1.0), 0.0)
    mean = corr.sum(-1) / np.maximum(ok.sum(-1), 1)
    return ok.any(-1) & (mean > cutoff)


AGREEMENT = {"window": AGREEMENT_WINDOW, "cutoff": AGREEMENT_CUTOFF, "min_std": AGREEMENT_MIN_STD,
             "detail_sigma": DETAIL_SIGMA, "side": MASK_SIDE}  # what an agreement threshold was calibrated on


def calibrated_as(cal: dict | None, how: dict) -> dict | None:
    """A calibration (a threshold's record) if it was made on the score as ``how`` describes it (each key equal),
    else None: a verdict from a threshold on another scale is worse than none."""
    return cal if cal and all(cal.get(k) == v for k, v in how.items()) else None


def agreement_current(cal: dict | None) -> dict | None:
    """An index's agreement calibration if it was made on the agreement memlab computes now (``AGREEMENT``),
    else None (no partial-copy verdict for uploads rather than one on another scale)."""
    return calibrated_as(cal, AGREEMENT)


def mask_coverage(mask, region) -> float:
    """How much more a mask lights a known region than the rest of the image: the mean of the mask inside
    ``region`` (boolean, same shape) over its mean outside (1: no preference; above 1: the region)."""
    m = np.asarray(mask, np.float64)
    r = np.asarray(region, bool)
    inside, outside = m[r].mean() if r.any() else np.nan, m[~r].mean() if (~r).any() else np.nan
    return float(inside / outside) if outside > 0 else float("inf")


def replication_rate(flags) -> float:
    """Multi-seed replication %: the share of seeds whose top-1 similarity exceeds the threshold
    (MemBench: 10 seeds, > 0.5). Returned as a fraction in [0, 1]."""
    f = np.asarray(flags, bool)
    return float(f.mean()) if f.size else 0.0


CONFIDENCE = 0.95  # the intervals' level and the paired test's two sides (docs/methods.md, "How sure a rate is")


def rate_interval(flags, confidence: float = CONFIDENCE) -> dict:
    """The multi-seed replication rate with its Wilson score interval (Wilson 1927; the interval Brown, Cai and
    DasGupta 2001 recommend for small n, where the normal one collapses to [0, 0] at 0 of n): the range of true
    rates that the seeds' count of replicated images is consistent with. 6 of 8 seeds: 0.409-0.929."""
    from scipy.stats import binomtest

    f = np.asarray(flags, bool)
    if not f.size:
        return {"low": 0.0, "high": 1.0, "k": 0, "n": 0, "confidence": confidence, "method": "Wilson score"}
    ci = binomtest(int(f.sum()), int(f.size)).proportion_ci(confidence_level=confidence, method="wilson")
    return {"low": float(ci.low), "high": float(ci.high), "k": int(f.sum()), "n": int(f.size),
            "confidence": confidence, "method": "Wilson score"}


def recall_interval(recall: float, n: int, confidence: float = CONFIDENCE) -> dict:
    """``rate_interval`` of a recall stored as a share of ``n`` items (one copy each): round(recall x n) of n."""
    k = round(recall * n)
    return rate_interval([True] * k + [False] * (n - k), confidence)


def paired_change(base_flags: dict, flags: dict) -> dict:
    """A mitigation against no mitigation on the same seeds (``{seed: replicated}`` each): the seeds it stopped
    copying (``fewer``), the seeds it made copy (``more``) and the exact McNemar test's two-sided p-value (McNemar
    1947; the exact binomial test on the discordant seeds, which is p = 0.5 each way when the mitigation changes
    nothing). 4 fewer and 0 more: p = 0.125, so halving 8 seeds is not yet evidence. Seeds only one side has are
    left out (``paired``: those both have)."""
    from scipy.stats import binomtest

    both = sorted(set(base_flags) & set(flags))
    fewer = sum(bool(base_flags[s]) and not bool(flags[s]) for s in both)
    more = sum(bool(flags[s]) and not bool(base_flags[s]) for s in both)
    p = binomtest(fewer, fewer + more, 0.5).pvalue if fewer + more else 1.0
    return {"fewer": int(fewer), "more": int(more), "paired": len(both), "p_value": float(min(1.0, p)),
            "test": "exact McNemar, two-sided"}


def expanded_level(n: int, confidence: float = CONFIDENCE) -> float:
    """The level at which to read a percentile bootstrap of a mean over ``n`` values so that it covers as a t
    interval does (Hesterberg 2015, "What Teachers Should Know About the Bootstrap", the expanded percentile
    interval): z = sqrt(n / (n - 1)) x t(n - 1) at the nominal level. The plain percentile interval is too narrow
    for small n (about 85% coverage at a nominal 95% with 5 values); 95% reads as 98.9% at n = 8, 96.3% at
    n = 30, and tends to 95%."""
    from scipy.stats import norm, t

    z = np.sqrt(n / (n - 1)) * t.ppf(0.5 + confidence / 2, n - 1)
    return float(min(2 * norm.cdf(z) - 1, 1 - 1e-12))


def bootstrap_mean(values, confidence: float = CONFIDENCE, resamples: int = 9999, seed: int = 0,
                   unit: str = "prompts") -> dict | None:
    """The mean of one value per prompt (a replication rate, or a mitigation's change in it on the prompt's
    seeds) with a percentile bootstrap interval over prompts (Efron and Tibshirani 1993), expanded for small
    samples (``expanded_level``): prompts, not seeds, are resampled, since one prompt's seeds copy or not together.
    None under 2 prompts; a bootstrap never reaches past the values' range, so with 2 or 3 prompts it is that
    range."""
    from scipy.stats import bootstrap

    v = np.asarray(values, np.float64)
    if v.size < 2:
        return None
    ci = bootstrap((v,), lambda x, axis: x.mean(axis), vectorized=True, method="percentile",
                   n_resamples=resamples, batch=_batch(v.size), confidence_level=expanded_level(v.size, confidence),
                   rng=np.random.default_rng(seed)).confidence_interval
    return {"mean": float(v.mean()), "low": float(ci.low), "high": float(ci.high), unit: int(v.size),
            "confidence": confidence, "method": f"expanded percentile bootstrap over {unit} (Hesterberg 2015)",
            "resamples": resamples}


def prompt_bootstrap(base_rates, rates, **kw) -> dict | None:
    """A mitigation's change in mean replication over prompts (``rates`` minus ``base_rates``, one pair per prompt
    on the same seeds) with ``bootstrap_mean``'s interval: each prompt's pair is resampled together."""
    a, b = np.asarray(base_rates, np.float64), np.asarray(rates, np.float64)
    if a.shape != b.shape:
        return None
    out = bootstrap_mean(b - a, **kw)
    return None if out is None else {"change": out.pop("mean"), **out}


def _ranked_auc(x, y):
    """``roc_auc`` along the last axis of stacked samples (``x`` positives, ``y`` negatives), by ranks: the
    Mann-Whitney U over p n, ties sharing their ranks (so counting one half, as ``roc_auc`` does). A resample costs
    O((p + n) log(p + n)) and p + n numbers, where comparing every pair cost p x n booleans (0.45 GB and 2.9 s for
    4,999 resamples of 300 against 200 prompts)."""
    from scipy.stats import rankdata

    p, n = x.shape[-1], y.shape[-1]
    r = rankdata(np.concatenate([x, y], axis=-1), axis=-1)
    return (r[..., :p].sum(axis=-1) - p * (p + 1) / 2) / (p * n)


def _batch(n: int) -> int:
    """Resamples per batch so a batch holds about 2 million numbers, whatever the sample's size."""
    return max(1, 2_000_000 // max(n, 1))


def auc_interval(positive_scores, negative_scores, confidence: float = CONFIDENCE, resamples: int = 4999,
                 seed: int = 0) -> dict | None:
    """``roc_auc`` with a stratified percentile bootstrap interval: positives and negatives resampled apart, each
    keeping its count (Efron and Tibshirani 1993; the bootstrap interval pROC offers beside DeLong's). None under
    two positives or two negatives (nothing to resample)."""
    from scipy.stats import bootstrap

    p, n = np.asarray(positive_scores, np.float64), np.asarray(negative_scores, np.float64)
    if p.size < 2 or n.size < 2:
        return None
    ci = bootstrap((p, n), lambda x, y, axis=-1: _ranked_auc(x, y), vectorized=True, method="percentile",
                   n_resamples=resamples, batch=_batch(p.size + n.size), confidence_level=confidence,
                   rng=np.random.default_rng(seed)).confidence_interval
    return {"auc": roc_auc(p, n), "low": float(ci.low), "high": float(ci.high), "positives": int(p.size),
            "negatives": int(n.size), "confidence": confidence, "method": "stratified percentile bootstrap",
            "resamples": resamples}


def auc_difference(scores_a, scores_b, positive, confidence: float = CONFIDENCE, resamples: int = 4999,
                   seed: int = 0) -> dict | None:
    """Two detectors' ROC AUCs on the same probes (``positive``: each probe's outcome), a's minus b's, with a
    stratified paired bootstrap interval: each resample draws positives and negatives apart and scores both
    detectors on the same draw, so what the two share (the probes) cancels (the paired comparison DeLong et al. 1988
    make with a variance formula). None under two positives or two negatives."""
    from scipy.stats import bootstrap

    a, b, pos = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64), np.asarray(positive, bool)
    if a.shape != b.shape or a.shape != pos.shape or pos.sum() < 2 or (~pos).sum() < 2:
        return None

    def diff(x, y, axis=-1):  # x, y: [2, ..., n]: a's and b's scores of the same drawn probes
        return _ranked_auc(x[0], y[0]) - _ranked_auc(x[1], y[1])

    ci = bootstrap((np.stack([a[pos], b[pos]]), np.stack([a[~pos], b[~pos]])), diff, vectorized=True, axis=-1,
                   method="percentile", n_resamples=resamples, batch=_batch(2 * a.size), confidence_level=confidence,
                   rng=np.random.default_rng(seed)).confidence_interval
    return {"difference": roc_auc(a[pos], a[~pos]) - roc_auc(b[pos], b[~pos]), "low": float(ci.low),
            "high": float(ci.high), "positives": int(pos.sum()), "negatives": int((~pos).sum()),
            "confidence": confidence, "method": "stratified paired percentile bootstrap", "resamples": resamples}


def interval_text(iv: dict | None, fmt: str = ".0%") -> str:
    """``rate_interval``'s result in words: "95% CI 41-93%" (empty for none)."""
    if not iv:
        return ""
    lo, hi = format(iv["low"], fmt), format(iv["high"], fmt)
    return f"{iv['confidence']:.0%} CI {lo.rstrip('%')}-{hi}"


def paired_text(pc: dict | None) -> str:
    """``paired_change``'s result in words: "4 seeds fewer, 0 more, exact McNemar p = 0.125" (empty for none)."""
    if not pc:
        return ""
    return (f"{pc['fewer']} seed{'' if pc['fewer'] == 1 else 's'} fewer, {pc['more']} more, exact McNemar "
            f"p = {pc['p_value']:.3g}")


def dataset_similarity(top1_scores, threshold: float) -> dict:
    """DCR's dataset-level statistics of s(g): the 95th percentile ("dataset similarity"), with
    mean, std, 75th and 90th percentiles and the fraction above the threshold."""
    s = np.asarray(top1_scores, np.float64)
    if s.size == 0:
        return {"p95": None, "mean": None, "std": None, "p75": None, "p90": None,
                "frac_above": None, "n": 0, "threshold": float(threshold)}
    return {"p95": float(np.percentile(s, 95)), "mean": float(s.mean()), "std": float(s.std()),
            "p75": float(np.percentile(s, 75)), "p90": float(np.percentile(s, 90)),
            "frac_above": float((s > threshold).mean()), "n": int(s.size), "threshold": float(threshold)}


def percentiles(scores, qs=PERCENTILES) -> dict:
    s = np.asarray(scores, np.float64)
    return {f"p{q}": (float(np.percentile(s, q)) if s.size else None) for q in qs}


def background(vectors: np.ndarray, groups=None, block: int = 4096) -> np.ndarray:
    """The background (DCR): each training item's similarity to its nearest *other* training item
    (top-2 of train x train, keep the second). With ``groups``, items of the item's own
    near-duplicate group are skipped too (the background of distinct images, used for calibration).
    """
    v = np.asarray(vectors, np.float32)
    n = len(v)
    if n < 2:
        return np.zeros(0, np.float32)
    g = None if groups is None else np.asarray(groups)
    out = np.empty(n, np.float32)
    for i in range(0, n, block):
        sim = v[i:i + block] @ v.T
        rows = np.arange(i, min(i + block, n))
        sim[rows - i, rows] = -np.inf
        if g is not None:
            sim[g[rows][:, None] == g[None, :]] = -np.inf
        out[i:i + block] = sim.max(axis=1)
    out[~np.isfinite(out)] = np.nan  # an item whose every other item is its duplicate
    return out


def nearest_distinct(vectors: np.ndarray, groups, rows, block: int = 4096) -> np.ndarray:
    """For each of ``rows``, the row of its most similar item (cosine) in *another* group: the pair the
    background of distinct images scores (``background(..., groups=...)``); -1 where there is none."""
    v, g, rows = np.asarray(vectors, np.float32), np.asarray(groups), np.asarray(rows, np.int64)
    out = np.full(len(rows), -1, np.int64)
    for i in range(0, len(rows), block):
        r = rows[i:i + block]
        sim = v[r] @ v.T
        sim[g[r][:, None] == g[None, :]] = -np.inf
        best = sim.argmax(axis=1)
        out[i:i + block] = np.where(np.isfinite(sim[np.arange(len(r)), best]), best, -1)
    return out


def near_duplicate_groups(vectors: np.ndarray, threshold: float, block: int = 4096, same=None):
    """Near-duplicate groups: connected components of the graph with an edge where cosine >=
    ``threshold`` (clip-retrieval's dedup, kept as a signal: Somepalli et al. 2022 compare the
    duplicate count of matched vs typical images). ``same`` (optional labels, e.g. the file) joins
    rows with equal labels whatever their score. Returns (group_id [n], duplicates [n]) where
    ``duplicates`` counts the *other* members of the item's group."""
    v = np.asarray(vectors, np.float32)
    n = len(v)
    parent = np.arange(n)
    if same is not None:
        _, first = np.unique(np.asarray(same), return_inverse=True)
        lead = np.full(first.max() + 1, -1)
        for i, lab in enumerate(first):
            if lead[lab] < 0:
                lead[lab] = i
        parent = lead[first].copy()

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i in range(0, n, block):
        sim = v[i:i + block] @ v.T
        rr, cc = np.nonzero(sim >= threshold)
        for r, c in zip(rr + i, cc):
            if r < c:
                a, b = find(r), find(c)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    roots = np.array([find(x) for x in range(n)], dtype=np.int64)
    _, group, counts = np.unique(roots, return_inverse=True, return_counts=True)
    return group.astype(np.int64), (counts[group] - 1).astype(np.int64)


def merge_groups(group, origin) -> np.ndarray:
    """Groups joined wherever rows share a non-empty ``origin`` label (e.g. crops of one photograph: not
    near-duplicates of each other, but overlapping parts of one image, so not distinct images either).
    Returns new group ids (0..k-1, in order of first row)."""
    g = np.asarray(group)
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first = {}
    for gi, o in zip(g.tolist(), list(origin)):
        if o is None or (isinstance(o, float) and np.isnan(o)) or str(o) == "":
            continue
        if o in first:
            a, b = find(first[o]), find(gi)
            if a != b:
                parent[max(a, b)] = min(a, b)
        else:
            first[o] = gi
    roots = np.array([find(x) for x in g.tolist()])
    _, out = np.unique(roots, return_inverse=True)
    return out.astype(np.int64)


def group_representatives(group) -> np.ndarray:
    """The first row of each near-duplicate group (sorted rows): the training set's distinct items."""
    _, first = np.unique(np.asarray(group), return_index=True)
    return np.sort(first)


def calibrate_threshold(background_scores, copy_scores, fpr: float = 0.01) -> dict:
    """Threshold for a descriptor with no published one: the smallest value that flags at most
    ``fpr`` of the background (distinct training pairs), with the recall it achieves on synthetic
    copies of training items scored against their originals."""
    bg = np.asarray(background_scores, np.float64)
    bg = bg[np.isfinite(bg)]
    cp = np.asarray(copy_scores, np.float64)
    if bg.size == 0:
        from .errors import MemlabError

        raise MemlabError("cannot calibrate a threshold: the training set has fewer than two distinct "
                          "items (every item is a near-duplicate of the others)")
    t = float(np.quantile(bg, 1.0 - fpr, method="higher"))
    return {"value": t, "fpr_target": float(fpr), "fpr": float((bg > t).mean()),
            "recall": float((cp > t).mean()) if cp.size else None,
            "n_background": int(bg.size), "n_copies": int(cp.size),
            "background_percentiles": percentiles(bg), "copy_percentiles": percentiles(cp)}


def roc_auc(positive_scores, negative_scores) -> float:
    """ROC AUC as the Mann-Whitney probability that a positive scores above a negative (ties count
    one half); Wen et al. report it for detection scores of memorized vs non-memorized prompts."""
    p = np.asarray(positive_scores, np.float64)[:, None]
    n = np.asarray(negative_scores, np.float64)[None, :]
    if p.size == 0 or n.size == 0:
        raise ValueError("roc_auc needs at least one positive and one negative score")
    return float((p > n).mean() + 0.5 * (p == n).mean())


def threshold_rule(background_distinct, copy_scores=None, fpr: float = 0.01, *, published: float | None = None,
                   published_high: float | None = None, citation: str | None = None, carried_over: bool = False,
                   given: float | None = None) -> dict:
    """The verdict's threshold, the one rule every index builder uses: a ``given`` value, else the
    descriptor's ``published`` one (SSCD's 0.5, Pizzi et al. 2022), else calibrated to flag ``fpr`` of the
    background of distinct training images (``calibrate_threshold``). With ``copy_scores`` (synthetic
    copies scored against their originals) the recall at the threshold is recorded; without (a build from
    embeddings: no images to copy) it is None. ``fpr`` is the share of the background above the value."""
    bg = np.asarray(background_distinct, np.float64)
    bg = bg[np.isfinite(bg)]
    cp = None if copy_scores is None else np.asarray(copy_scores, np.float64)
    def fp(v):
        return float((bg > v).mean()) if bg.size else None

    def recall(v):
        return float((cp > v).mean()) if cp is not None and cp.size else None
    if given is not None:
        return {"value": float(given), "high": None, "source": "given", "citation": "--threshold",
                "fpr": fp(given), "recall": recall(given), "background_percentiles": percentiles(bg)}
    if published is not None:
        thr = {"value": float(published), "high": published_high,
               "source": "carried-over" if carried_over else "published", "citation": citation,
               "fpr": fp(published), "recall": recall(published), "background_percentiles": percentiles(bg)}
        if cp is not None:
            thr["copy_percentiles"] = percentiles(cp)
        return thr
    cal = calibrate_threshold(bg, cp if cp is not None else np.zeros(0), fpr)
    return {**cal, "high": None, "source": "calibrated", "citation": citation or (
        f"the {1 - fpr:.1%} quantile of the background of distinct items (built from embeddings: no images to "
        f"copy, so no recall was measured)")}


def spearman(x, y) -> float:
    """Spearman's rank correlation (Pearson's on average ranks, ties shared); NaN when either side is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(np.asarray(x, np.float64)), rankdata(np.asarray(y, np.float64))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def largest_clique(sim, cut: float) -> int:
    """The size of the largest set of items whose pairwise similarity all reach ``cut`` (``sim``: [n, n], symmetric;
    the diagonal ignored): Carlini et al.'s membership inference on a prompt's generations (USENIX Security 2023:
    generate many images per prompt, join the near-identical ones, flag a prompt whose graph holds a large clique).
    0 for no item, 1 where no pair reaches ``cut``."""
    import networkx as nx

    sim = np.asarray(sim, np.float64)
    n = len(sim)
    if n == 0:
        return 0
    g = nx.Graph()
    g.add_nodes_from(range(n))
    i, j = np.nonzero(np.triu(sim >= cut, k=1))
    g.add_edges_from(zip(i.tolist(), j.tolist()))
    return max(len(c) for c in nx.find_cliques(g))


def top1_in_group(queries: np.ndarray, v: np.ndarray, group: np.ndarray, rows: np.ndarray) -> float:
    """Share of queries (vectors) whose top-1 row of ``v`` (cosine) is in the near-duplicate group of their
    original row (``rows``); NaN with no query."""
    if len(rows) == 0:
        return float("nan")
    return float((group[np.argmax(queries @ v.T, axis=1)] == group[rows]).mean())
