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

    # the redraws ride along as extra rows of their distinct image, so the shipped scoring runs on them unchanged
    spec = {**scorenorm.DEFAULT, "verify": scorenorm.VERIFY}  # k and beta as shipped; the query as given
    ver = spec["verify"]
    cache: dict = {}

    def train_of(row):  # a row's training image's detail vectors (a redraw row: its original's)
        g = int(groups[row]) if row < len(v) else int((row - len(v)) % n_groups)
        if g not in cache:
            cache[g] = verify.detail_vectors(image_of(int(rep_of[g])), ver["sigma"], ver["region"])
        return cache[g]

    def measure(label, extra: list, verified=False):
        """``extra``: redraw vectors ([n_groups, d] each) kept beside the rows; ``verified``: plus the shipped
        verification on the images (``memlab.verify``)."""
        big = np.concatenate([v, *extra]) if extra else v
        g_big = np.concatenate([groups, *[np.arange(n_groups)] * len(extra)])
        bg = (verify.background(big, g_big, reps, spec, [], train_of) if verified
              else scorenorm.background(big, g_big, reps, spec))
        thr = metrics.calibrate_threshold(bg, [], 0.01)["value"]
        rec = []
        for kind in KINDS:
            src, ims = truth[f"model:{kind}"]
            q = d.embed(ims)
            own = [src] + [len(v) + j * n_groups + groups[src] for j in range(len(extra))]  # each of its rows
            sc = np.max([scorenorm.against(big, g_big, q, t, spec) for t in own], axis=0)
            if verified:
                sc = sc + ver["weight"] * np.array([verify.best_correlation(
                    verify.query_details(im, ver["sigma"], ver["region"]), train_of(int(r))) for im, r in zip(ims, src)])
            rec.append(float((sc > thr).mean()))
        print(f"{label:<52} {thr:6.3f} " + " ".join(f"{r:12.1%}" for r in rec), flush=True)

    print(f"validation: {n_groups} distinct training images of {world}'s spec, {a.items} held-out items' copies by "
          f"its model; redraws by {a.redraw_model or 'the same model'}; the query as given; threshold at 1% of the "
          f"background")
    print(f"{'index holds':<52} {'thr':>6} " + " ".join(f"{k:>12}" for k in KINDS))
    for verified in (False, True):
        tag = ", verified on the images" if verified else ""
        measure(f"the training images{tag}", [], verified)
        for st, r in redraws.items():
            measure(f"+ each image's redraw at {st:g}{tag}", [r], verified)
        if len(redraws) > 1:
            measure(f"+ every redraw{tag}", list(redraws.values()), verified)

if __name__ == "__main__":
    main()
