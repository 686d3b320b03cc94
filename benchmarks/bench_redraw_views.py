"""Would the model's own redraw of each training image, kept in the index beside it, recall the model's strongest
copies (issue 30)? A measurement, not a shipped rule.

On the validation set of ``bench_verdict_choice`` (the previous world's model and its copies of 48 held-out
items), each distinct training image is also redrawn by that model (image-to-image from the image and its
caption at ``--strengths``, another seed than the copies'), and embedded with the shipped ``memlab-copy``. A
query's score against a distinct image is then the best of its cosine with the image and with its redraws;
score normalization as shipped (minus the mean of the query's 2 next best other distinct images, on the same
best-of scores). The threshold keeps 1% of the background of distinct images (each against the other distinct
images and their redraws; ``metrics.calibrate_threshold``, as an index calibrates). Each way in one run, the
query as given (no other view), so the lines compare with each other and not with the card; then the same with
the shipped verification on the images (``memlab.verify``: each image's 5 best other images by normalized score
plus 0.2 x the detail correlation with the image, the copies against their original):

- recall of the copies at the threshold per kind (image-to-image 0.2-0.5, VAE), and the background's 1% point.

    python -m benchmarks.bench_redraw_views --world PREVIOUS_WORLD [--work DIR] [--strengths 0.5] [--seed 1]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

KINDS = ("img2img@0.2", "img2img@0.3", "img2img@0.4", "img2img@0.5", "vae")
REDRAW_SEED = 7  # the copies are drawn with --seed; the redraws with another


def best_of(sim_rows: np.ndarray, groups: np.ndarray, n_groups: int, extra: list[np.ndarray]) -> np.ndarray:
    """[n_queries, n_groups]: each distinct image's best cosine over its rows and its redraws (``extra``: [n_queries,
    n_groups] each)."""
    out = np.full((len(sim_rows), n_groups), -np.inf)
    for g in range(n_groups):
        cols = groups == g
        if cols.any():
            out[:, g] = sim_rows[:, cols].max(1)
    for e in extra:
        out = np.maximum(out, e)
    return out


def normalized_own(best: np.ndarray, own: np.ndarray, k: int = 2) -> np.ndarray:
    """The score against ``own`` image minus the mean of the k best other images (SSCD's score normalization)."""
    b = best.copy()
    mine = b[np.arange(len(b)), own]
    b[np.arange(len(b)), own] = -np.inf
    others = -np.sort(-b, axis=1)[:, :k]
    return mine - others.mean(1)


def normalized_best_other(best: np.ndarray, own: np.ndarray, k: int = 2) -> np.ndarray:
    """The background: the best other image's score minus the mean of the k next ones (its own image left out)."""
    b = best.copy()
    b[np.arange(len(b)), own] = -np.inf
    top = -np.sort(-b, axis=1)[:, :k + 1]
    return top[:, 0] - top[:, 1:].mean(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True, help="the previous built-in world (bench_verdict_choice)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--strengths", default="0.5", help="comma-separated redraw strengths kept per image")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "memlab-verdict-choice"))
    ap.add_argument("--redraw-model", default=None, help="the pipeline that redraws the training images (default: "
                                                         "--world's model, the one that made the copies)")
    a = ap.parse_args()
    from benchmarks.bench_verdict_choice import validation_set
    from memlab import metrics, scorenorm, verify
    from memlab.buildworld import WORLD_DEFAULTS, _model_id
    from memlab.descriptors import create_descriptor
    from memlab.generate import Generator
    from memlab.index import TrainingIndex, build_index
    from memlab.match import load_image
    from memlab.modelcopies import model_copies

    world, work = Path(a.world), Path(a.work)
    rows, image_of, truth = validation_set(world, work, a.seed, a.items)
    d = create_descriptor("memlab-copy")
    with tempfile.TemporaryDirectory() as tmp:
        build_index(Path(tmp) / "idx", rows, image_of, [d], origin="origin")
        idx = TrainingIndex.load(Path(tmp) / "idx")
        v = np.asarray(idx.vectors(d.name), np.float32)
        distinct = idx.items["distinct"].to_numpy().astype(np.int64)
        reps = np.flatnonzero(idx.items["representative"].to_numpy())
        idx.close()
    _, groups = np.unique(distinct, return_inverse=True)  # 0..n_groups-1
    n_groups = int(groups.max()) + 1
    rep_of = np.zeros(n_groups, np.int64)
    rep_of[groups[reps]] = reps
    redraws = {}
    for s in [float(x) for x in a.strengths.split(",") if x]:
        folder = work / (f"redraws-{s:g}-seed{REDRAW_SEED}"
                         + (f"-{_model_id(a.redraw_model)}" if a.redraw_model else ""))
        if not (folder / "done.json").is_file():
            t0 = time.perf_counter()
            gen = Generator.from_pretrained(a.redraw_model or world / "model", device="cpu",
                                            scheduler=WORLD_DEFAULTS["scheduler"])
            made = model_copies(gen.pipe, [image_of(int(r)) for r in rep_of],
                                [rows["caption"].iloc[int(r)] for r in rep_of], strengths=(s,), vae=False,
                                steps=WORLD_DEFAULTS["steps"], guidance=WORLD_DEFAULTS["guidance"], seed=REDRAW_SEED)
            folder.mkdir(parents=True, exist_ok=True)
            for j, _, im in made:
                im.save(folder / f"{j:04d}.png")
            (folder / "done.json").write_text("{}")
            print(f"redrew {n_groups} distinct images at {s:g} in {time.perf_counter() - t0:.0f}s", flush=True)
        redraws[s] = d.embed([load_image(folder / f"{g:04d}.png") for g in range(n_groups)])

    ver = scorenorm.VERIFY
    details: dict = {}

    def detail_of(g):  # a distinct image's detail vectors (its representative's image), as the verification keeps
        if g not in details:
            details[g] = verify.detail_vectors(image_of(int(rep_of[g])), ver["sigma"], ver["region"])
        return details[g]

    def verified_best_other(best, own):
        """The background verified: each image's ``candidates`` best other images by normalized score, each plus
        weight x the detail correlation (``memlab.verify``), the best kept."""
        out = np.empty(len(best))
        for i, (b, g0) in enumerate(zip(best, own)):
            b = b.copy()
            b[g0] = -np.inf
            top = np.argsort(-b)[:ver["candidates"] + 3]
            norm = np.array([b[g] - np.mean([b[h] for h in top if h != g][:2]) for g in top])
            pick = top[np.argsort(-norm)[:ver["candidates"]]]
            sides = [detail_of(g0), verify.detail_mirror(detail_of(g0))]
            out[i] = max(n + ver["weight"] * verify.best_correlation(sides, detail_of(g))
                         for g, n in zip(top, norm) if g in pick)
        return out

    def measure(label, extra_of, verified=False):
        """extra_of(q): [n, n_groups] redraw cosines for query vectors q (empty list: none); ``verified``: plus the
        shipped verification on the images (``scorenorm.VERIFY``)."""
        best = best_of(v[reps] @ v.T, groups, n_groups, extra_of(v[reps]))
        bg = verified_best_other(best, groups[reps]) if verified else normalized_best_other(best, groups[reps])
        thr = metrics.calibrate_threshold(bg, [], 0.01)["value"]
        rec = []
        for kind in KINDS:
            src, ims = truth[f"model:{kind}"]
            q = d.embed(ims)
            sc = normalized_own(best_of(q @ v.T, groups, n_groups, extra_of(q)), groups[src])
            if verified:
                sc = sc + ver["weight"] * np.array([
                    verify.best_correlation(verify.query_details(im, ver["sigma"], ver["region"]), detail_of(g))
                    for im, g in zip(ims, groups[src])])
            rec.append(float((sc > thr).mean()))
        print(f"{label:<52} {thr:6.3f} " + " ".join(f"{r:12.1%}" for r in rec), flush=True)

    print(f"validation: {n_groups} distinct training images of {world}'s spec, {a.items} held-out items' copies by "
          f"its model; redraws by {a.redraw_model or 'the same model'}; the query as given; threshold at 1% of the "
          f"background")
    print(f"{'index holds':<52} {'thr':>6} " + " ".join(f"{k:>12}" for k in KINDS))
    for verified in (False, True):
        tag = ", verified on the images" if verified else ""
        measure(f"the training images{tag}", lambda q: [], verified)
        for s, r in redraws.items():
            measure(f"+ each image's redraw at {s:g}{tag}", lambda q, r=r: [q @ r.T], verified)
        if len(redraws) > 1:
            measure(f"+ every redraw{tag}", lambda q: [q @ r.T for r in redraws.values()], verified)


if __name__ == "__main__":
    main()
