"""Local centring against SSCD's score normalization, on the validation copies and generations (issue 30; tried,
not shipped).

SSCD's score normalization (the verdict's, ``memlab.scorenorm``) subtracts a scalar from a match's cosine: the
query's similarity to its k nearest other distinct images. Local centring, a remedy for hubs in nearest-neighbour
retrieval, subtracts vectors instead, on both sides: the query less the mean of its k nearest other distinct images
(the matched one left out), the training image less the mean of its own k nearest others, and the score is their
inner product (``dot``) or cosine (``cos``). Two distinct scenes on one background share the background's part of
their vectors, which both centres hold, so centring should remove what they share and keep what differs.

Every rule here scores the query *as given* (no mirror or brightened view, no verification on the images), so the
baseline is SSCD's normalization as given, k 2, beta 1, measured in the same run; the shipped verdict's figures
on the same copies and seeds come from ``bench_verdict_choice.py --variants 37``. Each rule re-ranks the query's 5
best images by cosine; its threshold keeps 1% of the distinct images' background (each distinct image against
the others, its own left out), and it is also read at the score that flags N unique seeds (``--matched``: rules
compared at equal false alarms on the generations). Two more: the margin over the query's next 20 images in units
of their spread (``spread``), and, with ``--ensemble DIR``, SSCD's normalization on the shipped network's vectors
and another memlab-copy's side by side (the mean of the two cosines).

    python -m benchmarks.bench_local_centring --world PREVIOUS_WORLD [--seeds 10] [--matched 6,8] [--ensemble DIR]
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RULES = [  # (name, form, k, beta): "norm" is SSCD's score normalization
    ("SSCD normalization, k 2, beta 1 (baseline)", "norm", 2, 1.0),
    ("centred, dot, k 2, beta 1", "dot", 2, 1.0),
    ("centred, dot, k 5, beta 1", "dot", 5, 1.0),
    ("centred, dot, k 5, beta 0.7", "dot", 5, 0.7),
    ("centred, cos, k 5, beta 1", "cos", 5, 1.0),
    # the margin over the query's next 20 images in units of their spread (an extreme-value score)
    ("spread, k 20: (best - mean) / std of the next 20", "spread", 20, 1.0),
]
KINDS = ("img2img@0.2", "img2img@0.3", "img2img@0.4", "img2img@0.5", "tint@0.3", "dark@0.3", "mirror@0.3", "vae")


def best_per_image(sim: np.ndarray, images: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A query's best similarity [n] to each distinct image and the row holding it (-inf, -1 for none)."""
    best, row = np.full(n, -np.inf), np.full(n, -1)
    order = np.argsort(sim, kind="stable")  # ascending: each image's last write is its best row
    best[images[order]], row[images[order]] = sim[order], order
    return best, row


def neighbour_rows(v: np.ndarray, images: np.ndarray, k: int) -> np.ndarray:
    """Each distinct image's ``k`` + 1 nearest other distinct images as (image, best row) pairs against the image's
    first row: [n_images, k + 1, 2], nearest first (one spare, for when the query's own image is among them)."""
    n = int(images.max()) + 1
    first = np.unique(images, return_index=True)[1]
    out = np.zeros((n, k + 1, 2), np.int64)
    for i, r in zip(range(n), first):
        best, row = best_per_image(v @ v[r], images, n)
        best[i] = -np.inf
        top = np.argsort(-best, kind="stable")[:k + 1]
        out[i] = np.stack([top, row[top]], 1)
    return out


def score(q: np.ndarray, v: np.ndarray, images: np.ndarray, nb: np.ndarray | None, form: str, k: int, beta: float,
          leave_out: int | None = None, m: int = 5) -> tuple[float, int]:
    """A query's best (score, distinct image) among its ``m`` best images by cosine under one rule; ``nb``: the
    images' neighbours (``neighbour_rows``; the centred rules only), whose first ``k`` other than ``leave_out`` make
    a training image's centre; ``leave_out``: an image that is neither a candidate nor in a centre (the query's own, in the
    background: a generation is nobody's neighbour either); for the ``norm`` and ``spread`` rules also an array of
    images (``bench_own_backgrounds``)."""
    best, row = best_per_image(v @ q, images, int(images.max()) + 1)
    if leave_out is not None:
        best[leave_out] = -np.inf
    order = np.argsort(-best, kind="stable")[:m + k]
    out = []
    for c in order[:m]:
        others = [o for o in order if o != c and np.isfinite(best[o])][:k]
        if form == "norm":
            out.append((best[c] - beta * best[others].mean(), int(c)))
            continue
        if form == "spread":
            out.append(((best[c] - best[others].mean()) / max(best[others].std(), 1e-6), int(c)))
            continue
        own = [r for i, r in nb[c] if i != leave_out][:k]
        a, r = q - beta * v[row[others]].mean(0), v[row[c]] - beta * v[own].mean(0)
        s = a @ r if form == "dot" else a @ r / max(np.linalg.norm(a) * np.linalg.norm(r), 1e-12)
        out.append((float(s), int(c)))
    return max(out)


def shipped_vectors(rows, image_of, truth: dict):
    """The shipped memlab-copy (its score normalization left to the rules) on the validation set (``validation_set``):
    (descriptor, each training row's vector, each row's distinct image, the representative rows, {item: distinct
    image}, {kind: (the originals' distinct images, the copies' vectors)})."""
    from benchmarks.bench_verdict_choice import VARIANTS
    from memlab.descriptors import create_descriptor
    from memlab.index import TrainingIndex, build_index

    name, _ = next(iter(VARIANTS.values()))
    d = create_descriptor(name, score_norm=None)
    with tempfile.TemporaryDirectory() as tmp:
        build_index(Path(tmp) / "idx", rows, image_of, [d], origin="origin")
        idx = TrainingIndex.load(Path(tmp) / "idx")
        v = np.asarray(idx.vectors(d.name), np.float64)
        images = idx.distinct_of(np.arange(len(v)))
        reps = np.flatnonzero(idx.items["representative"].to_numpy())
        item_image = dict(zip(idx.items["item"], images))
        copies = {k: (idx.distinct_of(truth["model:" + k][0]), d.embed(truth["model:" + k][1])) for k in KINDS}
        idx.close()
    return d, v, images, reps, item_image, copies


@dataclass
class Validation:
    """The validation set as the rules here score it (``load_validation``): the shipped memlab-copy ``d`` and its
    vectors ``v`` of the training rows, each row's distinct image, the representative rows, the copies by kind
    (originals' images, vectors), the generations of the full ddf 20 and unique probes and each one's own image."""
    rows: object
    image_of: object
    truth: dict
    d: object
    v: np.ndarray
    images: np.ndarray
    reps: np.ndarray
    copies: dict
    gen_images: list
    gen_vec: np.ndarray
    gen_own: np.ndarray
    full: np.ndarray
    uniq: np.ndarray


def load_validation(a) -> Validation:
    """The validation set ``validation_parser``'s options name (copies and generations cached by
    ``bench_verdict_choice``), printing a line on it."""
    from benchmarks.bench_verdict_choice import validation_generations, validation_set

    world, work = Path(a.world), Path(a.work)
    rows, image_of, truth = validation_set(world, work, a.seed, a.items)
    gens = work / f"generations-{a.seeds}"
    if not (gens / "done.json").is_file():
        raise SystemExit(f"no generations in {gens}: run bench_verdict_choice.py --seeds {a.seeds} first")
    files, probe_of, gen_images = validation_generations(world, work, a.seeds)
    d, v, images, reps, item_image, copies = shipped_vectors(rows, image_of, truth)
    group = np.array([p["group"] for p in probe_of])
    print(f"validation: {len(copies['vae'][0])} held-out items of {world} (seed {a.seed}); {len(files)} generations "
          f"of its full_ddf20 and unique probes (seeds 0-{a.seeds - 1}); {len(reps)} distinct images; every rule "
          f"scores the query as given", flush=True)
    return Validation(rows, image_of, truth, d, v, images, reps, copies, gen_images, d.embed(gen_images),
                      np.array([item_image[int(p["item"])] for p in probe_of]), group == "full_ddf20",
                      group == "unique")


def measure(val: Validation, label: str, form: str, k: int, beta: float, matched: list[int], v=None, copies=None,
            gen_vec=None, nb=None, hide: list | None = None) -> None:
    """One rule's threshold at 1% of the distinct images' background, its recall of each kind of copy and what it
    flags among the generations, printed; then the same at the scores that flag ``matched`` unique seeds. ``v``,
    ``copies``, ``gen_vec``: other vectors than the validation's; ``hide``: for each distinct image, the images a
    query whose own image it is does not see (``norm`` and ``spread`` rules only; ``bench_own_backgrounds``)."""
    v = val.v if v is None else v
    copies = val.copies if copies is None else copies
    gen_vec = val.gen_vec if gen_vec is None else gen_vec
    images, full, uniq = val.images, val.full, val.uniq

    def unseen(g, own_too=False):  # the images a query whose own image is g does not see
        s = set(hide[g]) if hide is not None else set()
        s = s | {g} if own_too else s
        return np.array(sorted(s), np.int64) if hide is not None else (g if own_too else None)
    bgp = [score(v[r], v, images, nb, form, k, beta, leave_out=unseen(images[r], own_too=True)) for r in val.reps]
    bg = np.array([s for s, _ in bgp])
    thr = float(np.quantile(bg, 0.99, method="higher"))
    if form == "norm":  # the pairs that set the threshold: each distinct image and the one it scores best
        first_row = {int(g): int(np.flatnonzero(images == g)[0]) for g in {i for _, i in bgp}}
        for j in np.argsort(-bg, kind="stable")[:int(np.ceil(0.01 * len(bg)))]:
            print(f"  background {bg[j]:.3f}: {val.rows['caption'].iloc[val.reps[j]]!r} against "
                  f"{val.rows['caption'].iloc[first_row[bgp[j][1]]]!r}", flush=True)
    got = {kind: [score(q, v, images, nb, form, k, beta, leave_out=unseen(o)) for q, o in zip(e, orig)]
           for kind, (orig, e) in copies.items()}
    gen = [score(q, v, images, nb, form, k, beta, leave_out=unseen(o)) for q, o in zip(gen_vec, val.gen_own)]
    gs, gi = np.array([s for s, _ in gen]), np.array([i for _, i in gen])

    def recall(t):  # the original scored first and above ``t``, as the verdict calls a copy
        return {kind: np.mean([s > t and i == o for (s, i), o in zip(got[kind], copies[kind][0])]) for kind in KINDS}
    own = gi == val.gen_own
    r = recall(thr)
    print(f"{label}: threshold {thr:.3f}; " + ", ".join(f"{kind} {r[kind]:.1%}" for kind in KINDS)
          + f"; full ddf 20 own top-1 replicated {(gs[full & own] > thr).mean():.1%} of {(full & own).sum()}"
          + f"; unique replicated {(gs[uniq] > thr).mean():.1%} of {uniq.sum()}"
          + f", non-copies flagged {(gs[uniq & ~own] > thr).mean():.1%} of {(uniq & ~own).sum()}", flush=True)
    first = recall(-np.inf)  # the original scored first, at any threshold
    print("  the original scored first: " + ", ".join(f"{kind} {first[kind]:.1%}" for kind in KINDS[3:7]), flush=True)
    for n in matched:
        t = np.sort(gs[uniq])[::-1][n]  # above the (n+1)-th unique seed's score: the most that flags n
        r = recall(t)
        print(f"  flagging {n} of {uniq.sum()} unique seeds (above {t:.3f}; {(bg > t).mean():.1%} of the "
              "background): " + ", ".join(f"{kind} {r[kind]:.1%}" for kind in KINDS[3:7])
              + f"; full ddf 20 own top-1 {(gs[full & own] > t).mean():.1%}", flush=True)


def main():
    from benchmarks.bench_verdict_choice import validation_parser

    ap = validation_parser(__doc__, 10)
    ap.add_argument("--matched", default="6,8")
    ap.add_argument("--ensemble", default=None, help="another memlab-copy weights folder: SSCD's normalization also on "
                                                     "both networks' vectors side by side (the mean of two cosines)")
    a = ap.parse_args()
    from memlab.descriptors import create_descriptor

    val = load_validation(a)
    matched = [int(x) for x in a.matched.split(",") if x]
    nb_of = {}
    for label, form, k, beta in RULES:
        if form in ("dot", "cos") and k not in nb_of:  # only the centred rules read the training images' neighbours
            nb_of[k] = neighbour_rows(val.v, val.images, k)
        measure(val, label, form, k, beta, matched, nb=nb_of.get(k))
    if a.ensemble:  # both networks' unit vectors side by side, scaled so the inner product is the mean cosine
        from benchmarks.bench_verdict_choice import side_by_side

        e = create_descriptor(val.d.name, score_norm=None, weights=a.ensemble)
        v2 = side_by_side(val.v, e.embed([val.image_of(i) for i in range(len(val.v))]))
        copies2 = {k: (o, side_by_side(c, e.embed(val.truth["model:" + k][1]))) for k, (o, c) in val.copies.items()}
        label, form, k, beta = RULES[0]
        measure(val, f"{label}, with {a.ensemble} beside it", form, k, beta, matched, v=v2, copies=copies2,
                gen_vec=side_by_side(val.gen_vec, e.embed(val.gen_images)))


if __name__ == "__main__":
    main()
