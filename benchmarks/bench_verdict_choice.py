"""Choose the verdict descriptor's settings on validation copies, never on the card's (issue 30).

The validation model is the world's previous model (``--world``: the built-in world as it was before the
rebuild of issue 30, e.g. ``git worktree add /tmp/prev d8ba51a`` then ``--world /tmp/prev/assets/world``;
its model is the one memlab-copy took its decoder views from); the card measures the rebuilt world's model.
Validation items are drawn with ``--seed`` (the card draws with the world's own seed). For each variant
of ``memlab-copy`` (input colour standardization, mirror-folded layout, blur, score normalization, the
verification stage on the images) the world's training set is indexed through build-world's code path
(``index.build_index``, keeping the images: threshold at 1% of the distinct-item background) and the script
prints:

- recall at the threshold on the previous model's copies of held-out items (image-to-image at 0.2-0.5,
  the VAE round trip) and on the strength-0.3 copies tinted, darkened and mirrored (a copy's colour
  drift and a mirror image are still copies);
- on that model's generations (seeds 0-3) of the full ddf 20 probes: replicated among the seeds whose
  top-1 is their own item; of the unique probes: replicated, and flagged among those whose top-1 is
  another item (non-copies).

``--decoded`` indexes each training image as the validation model's VAE returns it (``build-world
--decoded-index``), ``--fpr`` sets the threshold's share of the background. ``--judge`` also prints recall (top-1
their own item, above the threshold) on the copies that keep every drawn object of their original and on those
that lose one (``bench_copy_content.kept_objects``: no copy descriptor decides it). ``--show DIR`` writes each
variant's unique seeds called replicated beside their top-1 training image (DIR/<variant number>/), to look at, and
each kind's missed copies (DIR/<variant number>/missed/<kind>/: the original, the copy, its top-1), printing how
many missed with their original first and how many of those within 0.02 under the threshold.
Variant 48 adds memlab-verify's probability to the detail term, as ``build-world --verify memlab-verify`` does
(``$MEMLAB_VERIFY_WEIGHTS`` picks other weights). ``--ensemble DIR,...`` also measures the shipped rule on the mean
cosine of the shipped network and these memlab-copy weights (e.g. trained again with another seed). ``--whiten
DIMS:SHRINKAGE,...`` measures the shipped rule on PCA-whitened vectors (``bench_whitening``; issue 30's twenty-first pass).

    python -m benchmarks.bench_verdict_choice --world PREVIOUS_WORLD [--seed 1] [--items 48] [--work DIR]
        [--variants 0,2] [--weights FOLDER,...] [--ensemble FOLDER,...] [--whiten 512:0.25,...] [--matched 4,6,8,10]
        [--decoded] [--fpr 0.005] [--judge] [--show DIR]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

VARIANTS = {  # name -> (registered descriptor, overrides)
    "registered default = shipped (as 37: normalized, mirror, brightness x1.5, verified central 50%)": ("memlab-copy", {}),
    "plain cosine (no score normalization)": ("memlab-copy", {"score_norm": None}),
    "score normalization, no other view": ("memlab-copy", {"score_norm": {"k": 2, "beta": 1.0, "mirror": False}}),
    "score normalization, mirror only": ("memlab-copy", {"score_norm": {"k": 2, "beta": 1.0, "mirror": True}}),
    "+ colour standardized": ("memlab-copy", {"colour_norm": "standardize", "score_norm": None}),
    "+ mirrored layout": ("memlab-copy", {"mirror": True, "score_norm": None}),
    "+ brightness + mirrored layout": ("memlab-copy", {"colour_norm": "brightness", "mirror": True, "score_norm": None}),
    "+ grey-world": ("memlab-copy", {"colour_norm": "grey-world", "score_norm": None}),
    "+ brightness": ("memlab-copy", {"colour_norm": "brightness", "score_norm": None}),
    "global, grey-world": ("memlab-copy-global", {"colour_norm": "grey-world", "score_norm": None}),
    "global": ("memlab-copy-global", {"score_norm": None}),
    "+ mirror-folded layout": ("memlab-copy", {"fold": True, "score_norm": None}),
    "+ brightness + mirror-folded layout": ("memlab-copy", {"colour_norm": "brightness", "fold": True, "score_norm": None}),
    # score normalization's settings around the shipped ones (k, beta, gains), and with the input colour normalized
    "normalized, k 1": ("memlab-copy", {"score_norm": {"k": 1, "gains": [1.5]}}),
    "normalized, k 3": ("memlab-copy", {"score_norm": {"k": 3, "gains": [1.5]}}),
    "normalized, k 5": ("memlab-copy", {"score_norm": {"k": 5, "gains": [1.5]}}),
    "normalized, beta 0.75": ("memlab-copy", {"score_norm": {"beta": 0.75, "gains": [1.5]}}),
    "normalized, beta 1.25": ("memlab-copy", {"score_norm": {"beta": 1.25, "gains": [1.5]}}),
    "normalized, gains 1.3 and 1.7": ("memlab-copy", {"score_norm": {"gains": [1.3, 1.7]}}),
    "normalized, mirror only, brightness input": ("memlab-copy", {"colour_norm": "brightness",
                                                                  "score_norm": {"mirror": True}}),
    "normalized, mirror only, grey-world input": ("memlab-copy", {"colour_norm": "grey-world",
                                                                  "score_norm": {"mirror": True}}),
    "normalized, mirror only, standardized input": ("memlab-copy", {"colour_norm": "standardize",
                                                                    "score_norm": {"mirror": True}}),
    # a share of the cosine given to mean-centred 16 x 16 pixels (the colour layout; ``pixel``) beside the network's
    "normalized, pixels 0.25 of the cosine": ("memlab-copy", {"pixels": 0.25}),
    "normalized, pixels 0.4 of the cosine": ("memlab-copy", {"pixels": 0.4}),
    "plain cosine, pixels 0.25 of the cosine": ("memlab-copy", {"pixels": 0.25, "score_norm": None}),
    # more of the query's views: darkened (a brightened copy), contrast raised (a washed-out copy)
    "normalized, gains 1.5 and 0.67": ("memlab-copy", {"score_norm": {"gains": [1.5, 0.67]}}),
    "normalized, gain 1.5, contrast 1.5": ("memlab-copy", {"score_norm": {"gains": [1.5], "contrast": [1.5]}}),
    "normalized, gain 1.5, contrast 2": ("memlab-copy", {"score_norm": {"gains": [1.5], "contrast": [2.0]}}),
    # a verification stage on the images (``memlab.verify``): the best 5 candidates re-scored with a share of the
    # correlation of the two images' detail (gain and offset per channel left out, the better of the mirror image)
    "normalized (shipped before verification)": ("memlab-copy", {"score_norm": {"gains": [1.5], "verify": None}}),
    "verified, detail 2 px, weight 0.2": ("memlab-copy", {"score_norm": {"gains": [1.5], "verify": {"weight": 0.2}}}),
    "verified, detail 2 px, weight 0.3": ("memlab-copy", {"score_norm": {"gains": [1.5], "verify": {"weight": 0.3}}}),
    "verified, detail 2 px, weight 0.5": ("memlab-copy", {"score_norm": {"gains": [1.5], "verify": {"weight": 0.5}}}),
    "verified, detail 1 px, weight 0.3": ("memlab-copy", {"score_norm": {"gains": [1.5],
                                                                       "verify": {"weight": 0.3, "sigma": 1.0}}}),
    "verified, detail 3 px, weight 0.2": ("memlab-copy", {"score_norm": {"gains": [1.5],
                                                                       "verify": {"weight": 0.2, "sigma": 3.0}}}),
    "verified, detail 2 px, weight 0.15": ("memlab-copy", {"score_norm": {"gains": [1.5], "verify": {"weight": 0.15}}}),
    "verified, detail 2 px, weight 0.2, top-1 only": ("memlab-copy", {"score_norm": {
        "gains": [1.5], "verify": {"weight": 0.2, "candidates": 1}}}),
    # the detail compared inside the central part of each side only (a frame or band many pictures share left out)
    "verified, detail 3 px, weight 0.2, central 75%": ("memlab-copy", {"score_norm": {
        "gains": [1.5], "verify": {"weight": 0.2, "sigma": 3.0, "region": 0.75}}}),
    "verified, detail 3 px, weight 0.2, central 50%": ("memlab-copy", {"score_norm": {
        "gains": [1.5], "verify": {"weight": 0.2, "sigma": 3.0, "region": 0.5}}}),
    # two-sided (CSLS): a share of the normalizer from the matched image's own nearest other images (tried, not shipped)
    "verified, two-sided 0.5": ("memlab-copy", {"score_norm": {
        "gains": [1.5], "verify": {"weight": 0.2, "sigma": 3.0, "region": 0.5}, "train_side": 0.5}}),
    "verified, two-sided 0.25": ("memlab-copy", {"score_norm": {
        "gains": [1.5], "verify": {"weight": 0.2, "sigma": 3.0, "region": 0.5}, "train_side": 0.25}}),
    "verified, two-sided 0.75": ("memlab-copy", {"score_norm": {
        "gains": [1.5], "verify": {"weight": 0.2, "sigma": 3.0, "region": 0.5}, "train_side": 0.75}}),
    "normalized, two-sided 0.5, no verification": ("memlab-copy", {"score_norm": {"gains": [1.5], "train_side": 0.5}}),
    # the detail correlation normalized as the cosine is: less the mean of its k highest with the query's other best
    # matches (a shared striped or checkered background matches several images' detail alike)
    "verified, detail normalized k 2": ("memlab-copy", {"score_norm": {"gains": [1.5], "verify": {
        "weight": 0.2, "sigma": 3.0, "region": 0.5, "detail_k": 2}}}),
    "verified, detail normalized k 2, weight 0.4": ("memlab-copy", {"score_norm": {"gains": [1.5], "verify": {
        "weight": 0.4, "sigma": 3.0, "region": 0.5, "detail_k": 2}}}),
    "verified, detail normalized k 1, weight 0.4": ("memlab-copy", {"score_norm": {"gains": [1.5], "verify": {
        "weight": 0.4, "sigma": 3.0, "region": 0.5, "detail_k": 1}}}),
    "verified, detail normalized k 2, weight 0.4, whole image": ("memlab-copy", {"score_norm": {"gains": [1.5], "verify": {
        "weight": 0.4, "sigma": 3.0, "region": 1.0, "detail_k": 2}}}),
    # the colour layout's share again, each channel centred and scaled on its own (a tint or darkening leaves it)
    "normalized, per-channel pixels 0.25 of the cosine": ("memlab-copy", {"pixels": 0.25, "per_channel": True}),
    "normalized, per-channel pixels 0.15 of the cosine": ("memlab-copy", {"pixels": 0.15, "per_channel": True}),
    # the shipped detail term and memlab-verify's probability beside it (``scorenorm.NETWORK_VERIFY``; the weights:
    # $MEMLAB_VERIFY_WEIGHTS, else assets/memlab-verify), as ``build-world --verify memlab-verify`` indexes
    "verified + memlab-verify 0.2": ("memlab-copy", {"score_norm": {"gains": [1.5], "verify": {
        "weight": 0.2, "sigma": 3.0, "region": 0.5, "network": "memlab-verify", "network_weight": 0.2}}}),
}


def with_pixels(d, share: float, size: int = 16, per_channel: bool = False):
    """``d`` (a memlab-copy) whose rows also hold the image's mean-centred pixels (``pixel``), weighted so that
    ``share`` of the cosine is theirs and the rest the network's. ``per_channel``: each colour channel centred and
    scaled to unit norm on its own (a channel without structure left at zero), so a gain and offset per channel (a
    tint, a darkening) leave them unchanged."""
    import numpy as np

    from memlab.descriptors import PixelDescriptor

    pix, inner = PixelDescriptor(size=size), d.embed

    def channels(images):
        out = []
        for im in images:
            x = pix._one(im).reshape(size * size, 3)  # the pixel descriptor's blurred, resized image, mean-centred
            x = x - x.mean(0)
            n = np.linalg.norm(x, axis=0)
            x = np.where(n > 1e-3, x / np.maximum(n, 1e-12), 0.0)
            out.append(x.reshape(-1) / np.sqrt(3))
        return np.asarray(out, np.float32)
    part = channels if per_channel else pix.embed

    def embed(images):
        return np.concatenate([inner(images) * np.sqrt(1 - share), part(images) * np.sqrt(share)], 1)
    d.embed, d.dim = embed, d.dim + pix.dim
    d.preset += f"+pixels-{size}x{size}-share-{share:g}" + ("-per-channel" if per_channel else "")
    d.secondary_scores = lambda q, items: {}
    return d


def side_by_side(*rows):
    """n networks' unit rows of the same images side by side, scaled by 1/sqrt(n): the inner product of two such
    rows is the mean of the n networks' cosines."""
    import numpy as np

    return np.concatenate(rows, 1) * np.float32(1.0 / np.sqrt(len(rows)))


def with_ensemble(d, others):
    """``d`` (a memlab-copy) whose rows also hold the rows of ``others`` (memlab-copy trained again, e.g. with
    another seed), ``side_by_side``: the cosine, and so the normalized score and the verdict, is the mean of the
    n networks' cosines (an ensemble of independently trained descriptors)."""
    nets, inner = list(others), d.embed

    def embed(images):
        return side_by_side(inner(images), *[o.embed(images) for o in nets])
    d.embed, d.dim = embed, d.dim + sum(o.dim for o in nets)
    d.preset += "+ensemble-" + "-".join(o.model for o in nets)
    d.secondary_scores = lambda q, items: {}
    return d


def with_whitening(d, fit_images, dims: int, shrinkage: float, eps: float = 0.01):
    """``d`` (a memlab-copy) whose rows are PCA-whitened (``bench_whitening.learn_whitening``: its ``dims``
    strongest directions, each scaled by its eigenvalue to the power ``-shrinkage / 2``) as learned on
    ``fit_images`` (the training set's distinct images), so the index, its background, the query's every view and
    the score normalization all see whitened vectors."""
    from benchmarks.bench_whitening import learn_whitening, whiten

    inner = d.embed
    m, p = learn_whitening(inner(fit_images).astype("float64"), shrinkage, eps, dims)

    def embed(images):
        return whiten(inner(images).astype("float64"), m, p).astype("float32")
    d.embed, d.dim = embed, p.shape[1]
    d.preset += f"+whitened-{dims}-shrinkage-{shrinkage:g}"
    d.secondary_scores = lambda q, items: {}
    return d


def training_set(spec, data: Path):
    """A world's training set drawn from ``spec`` (``worldgen.make_training_set``), written under ``data`` once and
    read back: (rows with their calibration origin, image_of(row))."""
    import pandas as pd

    from memlab.buildworld import calibration_origin
    from memlab.match import load_image
    from memlab.worldgen import make_training_set

    if not (data / "train.parquet").is_file():
        rows, images = make_training_set(spec)
        (data / "images").mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            im.save(data / "images" / f"{i:04d}.png")
        rows.to_parquet(data / "train.parquet", index=False)
    rows = pd.read_parquet(data / "train.parquet")
    rows["origin"] = calibration_origin(rows)

    def image_of(i):
        return load_image(data / "images" / Path(rows["file"].iloc[i]).name)
    return rows, image_of


def validation_set(world: Path, work: Path, seed: int, items: int, spec_seed: int | None = None):
    """The validation training set (the previous world's, cached under ``work``) and its held-out items' copies
    by the previous model, the items drawn with ``seed`` (cached): (rows, image_of, {kind: (rows, images)}).
    ``spec_seed``: another world drawn from the previous world's spec with this seed instead (images the
    previous model never saw; ``bench_learned_verify`` trains on one)."""
    import numpy as np

    from memlab.buildworld import model_copy_truth
    from memlab.match import load_image
    from memlab.modelcopies import photometric
    from memlab.worldgen import WorldSpec

    card = json.loads((world / "card.json").read_text())
    spec = WorldSpec(**{"n_templates": 0, **card["spec"],  # the previous world had no templates
                        **({"seed": spec_seed} if spec_seed is not None else {})})
    if spec_seed is None and spec.seed == seed:
        raise SystemExit("--seed must differ from the card's seed (validation items are not the card's)")
    rows, image_of = training_set(spec, work / "data")
    cache = work / f"copies-seed{seed}-{items}"
    if not (cache / "done.json").is_file():
        truth, _ = model_copy_truth(rows, image_of, world / "model", items, seed)
        for kind, (orig, ims) in truth.items():
            if kind == "model:all":
                continue
            (cache / kind[6:]).mkdir(parents=True, exist_ok=True)
            for j, (r, im) in enumerate(zip(orig, ims)):
                im.save(cache / kind[6:] / f"{j:03d}_{int(r)}.png")
        (cache / "done.json").write_text("{}")
    truth = {}
    for d in sorted(p for p in cache.iterdir() if p.is_dir()):
        files = sorted(d.glob("*.png"))
        truth["model:" + d.name] = (np.array([int(f.stem.split("_")[1]) for f in files]),
                                    [load_image(f) for f in files])
    base = truth["model:img2img@0.3"]
    for kind, ims in photometric(base[1], seed).items():
        truth[f"model:{kind}@0.3"] = (base[0], ims)
    return rows, image_of, truth


def validation_generations(world: Path, work: Path, seeds: int):
    """The previous model's generations of its full ddf 20 and unique probes on seeds 0..``seeds``-1, made once
    (the world's sampling) and cached under ``work``: (files, each file's probe row, images)."""
    import pandas as pd

    from memlab.buildworld import WORLD_DEFAULTS
    from memlab.generate import Generator, Settings
    from memlab.match import load_image

    probes = pd.read_csv(world / "probes.csv")
    probes = probes[probes["group"].isin(["full_ddf20", "unique"])]
    gens = work / f"generations-{seeds}"
    if not (gens / "done.json").is_file():
        gen = Generator.from_pretrained(world / "model", device="cpu", scheduler=WORLD_DEFAULTS["scheduler"])
        st = Settings(steps=WORLD_DEFAULTS["steps"], guidance=WORLD_DEFAULTS["guidance"])
        gens.mkdir(parents=True, exist_ok=True)
        for p, r in enumerate(probes.itertuples()):
            for s in gen.generate(r.prompt, list(range(seeds)), settings=st):
                s.image.save(gens / f"{p:03d}_{s.seed}.png")
        (gens / "done.json").write_text("{}")
    files = sorted(gens.glob("*.png"))
    return files, [probes.iloc[int(f.stem.split("_")[0])] for f in files], [load_image(f) for f in files]


def validation_parser(doc: str, seeds: int) -> argparse.ArgumentParser:
    """The options that name the validation set (the previous world, its items' seed and count, the generations'
    seeds per probe, the cache folder), shared with the other benchmarks that read it."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True, help="the previous built-in world (bench_verdict_choice.py)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--seeds", type=int, default=seeds, help="generation seeds per probe")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "memlab-verdict-choice"))
    return ap


def main():
    ap = validation_parser(__doc__, 4)
    ap.add_argument("--variants", default=None, help="comma-separated variant numbers (default: all)")
    ap.add_argument("--matched", default=None, help="comma-separated counts N: also recall with each variant's "
                                                    "threshold set to flag N unique seeds (rules compared at equal "
                                                    "false alarms on the generations)")
    ap.add_argument("--weights", default=None, help="comma-separated memlab-copy weights folders to try as well "
                                                    "(e.g. a fine-tuned one; each as memlab-copy, and with mirror)")
    ap.add_argument("--ensemble", default=None, help="comma-separated memlab-copy weights folders: also the shipped "
                                                     "rule with the mean cosine of the shipped network and these")
    ap.add_argument("--decoded", action="store_true", help="index each training image as the validation model's VAE "
                                                           "returns it (as build-world indexes a world with a model)")
    ap.add_argument("--fpr", type=float, default=0.01, help="the threshold's share of the distinct-item background")
    ap.add_argument("--show", default=None, help="a folder: each variant's unique seeds called replicated written "
                                                 "there, the generation beside its top-1 training image, to look at; "
                                                 "and each kind's missed copies (missed/KIND/: original, copy, "
                                                 "top-1), with a line on where the misses lie")
    ap.add_argument("--whiten", default=None, help="comma-separated DIMS:SHRINKAGE: also the shipped rule on "
                    "memlab-copy's vectors PCA-whitened, learned on the training set's distinct images (bench_whitening)")
    ap.add_argument("--judge", action="store_true", help="also recall on the copies that keep every drawn object, "
                    "and on those that lose one (bench_copy_content.kept_objects), read as with --matched")
    a = ap.parse_args()
    import numpy as np

    from memlab.buildworld import decoded_rows
    from memlab.descriptors import create_descriptor
    from memlab.index import TrainingIndex, build_index

    world, work = Path(a.world), Path(a.work)
    rows, image_of, truth = validation_set(world, work, a.seed, a.items)
    data = work / "data"
    indexed = decoded_rows(world / "model", rows, image_of, work / "decoded") if a.decoded else None
    base = truth["model:img2img@0.3"]
    truth["model:all"] = (np.concatenate([t[0] for t in truth.values()]),
                          [im for t in truth.values() for im in t[1]])

    gen_files, gen_probe, gen_images = validation_generations(world, work, a.seeds)

    kinds = [k for k in truth if k != "model:all"]
    kept = {}
    if a.judge:  # the same judge for every variant: which copies still show their original's drawn objects
        from benchmarks.bench_copy_content import kept_objects

        for k in kinds:
            r, ims = truth[k]
            scene, keep, _, _ = kept_objects(ims, [image_of(int(i)) for i in r], rows.iloc[np.asarray(r, np.int64)],
                                             k.split(":")[1].startswith("mirror"))
            kept[k] = (keep, scene & ~keep)
    card_seed = json.loads((world / "card.json").read_text())["spec"]["seed"]
    print(f"validation: {len(base[0])} held-out items of {world} drawn with seed {a.seed} (the card's: "
          f"{card_seed}), made by that world's model; {len(gen_files)} generations of its full_ddf20 and unique "
          f"probes (seeds 0-{a.seeds - 1}); threshold: {a.fpr:.1%} of the distinct-item background"
          + (f"; indexed: {indexed[1]}" if indexed else ""), flush=True)
    print(f"{'variant':<32} {'thr':>6} " + " ".join(f"{k[6:]:>10}" for k in kinds)
          + "  full20 own-top1 repl  unique repl  non-copies flagged", flush=True)
    chosen = list(VARIANTS.items())
    if a.variants is not None:
        chosen = [chosen[int(i)] for i in a.variants.split(",") if i]
    for w in (a.weights or "").split(","):
        if w:
            chosen += [(f"{Path(w).name}", ("memlab-copy", {"weights": w})),
                       (f"{Path(w).name}, plain cosine", ("memlab-copy", {"weights": w, "score_norm": None})),
                       (f"{Path(w).name} + mirror", ("memlab-copy", {"weights": w, "mirror": True, "score_norm": None}))]
    if a.ensemble:
        folders = [w for w in a.ensemble.split(",") if w]
        chosen += [(f"ensemble of {1 + len(folders)}", ("memlab-copy", {"ensemble": folders}))]
    for w in (a.whiten or "").split(","):
        if w:
            dims, shrink = w.split(":")
            chosen += [(f"whitened {dims}, shrinkage {shrink}", ("memlab-copy", {"whiten": (int(dims), float(shrink))}))]
    for label, (name, over) in chosen:
        over = dict(over)
        share, per_channel = over.pop("pixels", 0.0), over.pop("per_channel", False)
        folders, whitened = over.pop("ensemble", []), over.pop("whiten", None)
        d = create_descriptor(name, **over)
        if whitened:
            first = np.unique(rows["file"].to_numpy(), return_index=True)[1]
            d = with_whitening(d, [image_of(int(i)) for i in sorted(first)], *whitened)
        if share:
            d = with_pixels(d, share, per_channel=per_channel)
        if folders:
            d = with_ensemble(d, [create_descriptor(name, **over, weights=w) for w in folders])
        with tempfile.TemporaryDirectory() as tmp:
            build_index(Path(tmp) / "idx", rows, image_of, [d], ground_truth=truth, origin="origin",
                        image_root=str(data.resolve()), indexed=indexed, fpr=a.fpr)
            idx = TrainingIndex.load(Path(tmp) / "idx")
            thr = idx.threshold(d.name)
            gt = thr["ground_truth"]
            top, top_rows = top1(idx, d, gen_images)
            scores, items = top[:, None], idx.items["item"].to_numpy()[top_rows]
            copy_top = {k: top1(idx, d, truth[k][1]) for k in kinds} if a.matched or a.judge or a.show else {}
            copy_scores = {k: np.where(idx.distinct_of(rows_) == idx.distinct_of(truth[k][0]), sc_, -np.inf)
                           for k, (sc_, rows_) in copy_top.items()}  # the score where the original is top-1
            bg = idx.background(d.name, distinct=True)
            idx.close()
        hit = scores[:, 0] > thr["value"]  # the verdict: above the threshold (metrics.replication_flags)
        group = np.array([p["group"] for p in gen_probe])
        own = items == np.array([int(p["item"]) for p in gen_probe])
        full, uniq = group == "full_ddf20", group == "unique"
        line = (f"{label:<32} {thr['value']:6.3f} " + " ".join(f"{gt[k]['recall']:10.1%}" for k in kinds)
                + f"  {hit[full & own].mean():10.1%} ({(full & own).sum()})"
                + f"  {hit[uniq].mean():8.1%} ({uniq.sum()})"
                + f"  {hit[uniq & ~own].mean():8.1%} ({(uniq & ~own).sum()})")
        print(line, flush=True)
        if a.show:
            show(Path(a.show) / str(list(VARIANTS).index(label) if label in VARIANTS else label),
                 [(gen_files[i], gen_images[i], image_of(int(top_rows[i])), scores[i, 0])
                  for i in np.flatnonzero(uniq & hit)])
        if a.show:  # where the misses lie: the original ranked first but under the threshold, or another image
            folder = Path(a.show) / str(list(VARIANTS).index(label) if label in VARIANTS else label)
            for k in kinds:
                sc, first = copy_top[k][0], np.isfinite(copy_scores[k])
                miss = np.flatnonzero(~(copy_scores[k] > thr["value"]))
                show(folder / "missed" / k[6:], [(Path(f"{j:03d}_{int(truth[k][0][j])}"), truth[k][1][j],
                                                  image_of(int(copy_top[k][1][j])), sc[j]) for j in miss],
                     [image_of(int(truth[k][0][j])) for j in miss])
                near = (first & (sc <= thr["value"]) & (sc > thr["value"] - 0.02)).sum()
                print(f"  {k[6:]}: original at top-1 {first.mean():.1%}, missed {len(miss)} ({(~first).sum()} with "
                      f"another image first; {near} of the rest within 0.02 under the threshold)", flush=True)
        if kept:
            print("  top-1 own and above the threshold, copies keeping every object / losing one: " + " ".join(
                f"{k[6:]} {(copy_scores[k][kp] > thr['value']).mean():.1%} ({kp.sum()}) / "
                f"{(copy_scores[k][ls] > thr['value']).mean():.1%} ({ls.sum()})"
                for k, (kp, ls) in kept.items() if kp.any() and ls.any()), flush=True)
        for n in [int(x) for x in (a.matched or "").split(",") if x]:
            t = np.sort(scores[uniq, 0])[::-1][n]  # above the (n+1)-th unique seed's score: the most that flags n
            print(f"  flagging {n} of {uniq.sum()} unique seeds (scores above {t:.3f}; "
                  f"{(bg > t).mean():.2%} of the distinct background): "
                  + " ".join(f"{k[6:]} {(copy_scores[k] > t).mean():.1%}" for k in kinds)
                  + f"; full20 own-top1 {(scores[full & own, 0] > t).mean():.1%}", flush=True)


def show(folder: Path, pairs, originals=None) -> None:
    """Each (file, generation, its top-1 training image, score) side by side as ``<file>_<score>.png``; with
    ``originals`` (a copy's original, one per pair), the original first."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    side = 128
    for i, (f, im, train, score) in enumerate(pairs):
        row = ([originals[i]] if originals is not None else []) + [im, train]
        pair = Image.new("RGB", (len(row) * (side + 4) - 4, side), "white")
        for j, x in enumerate(row):
            pair.paste(x.convert("RGB").resize((side, side)), (j * (side + 4), 0))
        pair.save(folder / f"{f.stem}_{score:.3f}.png")


def top1(idx, d, images):
    """Each image's top-1 match as ``memlab match`` gives it: (verdict scores, rows)."""
    import numpy as np

    from memlab.match import match_vectors, query_vectors

    vecs, views = query_vectors(idx, d, images)
    found = match_vectors(idx, d, vecs, k=1, views=views, images=images)
    return np.array([r["score"] for r in found]), np.array([r["matches"][0]["row"] for r in found])


if __name__ == "__main__":
    main()
