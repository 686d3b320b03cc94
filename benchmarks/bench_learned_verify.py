"""A learned verification stage for the model's strongest copies (issue 30, item 1: "another architecture, a
verification stage"): does a small network that compares the two images beat the shipped detail correlation?

Three sets, each a training set with the previous world's model's copies of some of its items (image-to-image at
0.2-0.5, the VAE round trip, and the strength-0.3 copies tinted, darkened, mirrored; ``bench_verdict_choice``'s
``validation_set``); the card's world and model are never read:

- training (``--train-world-seed`` 2; several, comma-separated, pool their pairs): another world drawn from the previous world's spec (its scenes, crops and
  captions, images the previous model never trained on), ``--train-items`` of its items copied. The network is
  trained on its pairs: each copy against its 5 best candidates by normalized ``memlab-copy`` score (its own
  image: a copy; the others: not), and each distinct training image against its 5 best other distinct images
  (not copies: the background a threshold is set on);
- tuning (``--tune-world-seed`` 3): a third world the same way; the weight of the network's output in the score
  is chosen there (the most copies of the weakest kind recalled at 1% of that world's background);
- validation: the previous world's own training set and 48 of its items copied (``--seed`` 1: the validation
  set of ``bench_verdict_choice`` and ``bench_verify_features``), reported.

The worlds share the scikit-image photos their crops are cut from (as memlab-copy's pool does), nothing else.
Candidates are found as the shipped rule finds them: the best of the query's views (as given, mirrored,
brightened x1.5 and mirrored: ``scorenorm.view_names``), the view whose best candidate scores highest. A pair's
score is its normalized score plus ``w`` x the network's probability (the better of the query and its mirror
image); ``metrics.calibrate_threshold`` keeps 1% of the background (each distinct image's best candidate), as an
index calibrates; a copy is recalled when its score against its own original passes. The same run prints the
normalized score alone and the shipped verification (0.2 x the detail correlation inside the central 50%,
``bench_verify_features``) on the same pairs, and the validation set's best weight for the network (chosen on
the copies it is scored on: an upper bound, not a rule).

With ``--card-world assets/world`` the network is then measured as ``build-world`` measures the card (the world's
training set regenerated, its model's and the views model's copies of the card's 96 items, its unique and full
ddf 20 probes generated on seeds 0-9), at 1% of that world's background, beside the shipped rule on the same pairs.

The network is memlab's (``memlab.pairnet``), trained by memlab's trainer (``memlab.train_verifier``) on the
training worlds' pairs, or read with ``--network`` (the shipped weights: ``assets/memlab-verify``, trained by
``python -m memlab train-verifier --pairs WORK/pairs-world2-seed2-160.npz WORK/pairs-world4-seed4-160.npz`` on the
pairs ``--pairs-only`` makes). The built-in world's rule is the detail correlation plus the network with the
weight this script chooses for it on the tuning world ("detail + w x network"; ``scorenorm.NETWORK_VERIFY``).

    python -m benchmarks.bench_learned_verify --world PREVIOUS_WORLD [--work DIR] [--items 48]
        [--train-items 160] [--epochs 20] [--card-world assets/world] [--network assets/memlab-verify]
"""
from __future__ import annotations

import argparse
import ast
import tempfile
import time
from pathlib import Path

import numpy as np

SIDE = 64
KINDS = ("img2img@0.2", "img2img@0.3", "img2img@0.4", "img2img@0.5", "vae", "tint@0.3", "dark@0.3", "mirror@0.3")
GEN_GROUPS = ("unique", "full_ddf20")  # the card world's probes generated (seeds 0-9, the card's settings)
GEN_SEEDS = 10
WEIGHTS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6)


def pairs(world: Path, work: Path, seed: int, items: int, world_seed: int | None = None) -> dict:
    """A world's pairs (``pairs_of``) from the previous world's model's copies (``validation_set``), cached."""
    from benchmarks.bench_verdict_choice import validation_set

    name = f"world{world_seed}-" if world_seed is not None else ""
    cache = work / f"pairs-{name}seed{seed}-{items}.npz"
    if not cache.is_file():
        rows, image_of, truth = validation_set(world, work / f"{name}seed{seed}", seed, items, spec_seed=world_seed)
        np.savez(cache, **pairs_of(rows, image_of, truth, "model"))
    return dict(np.load(cache))


def card_pairs(card_world: Path, views_model: Path, work: Path, items: int) -> dict:
    """The card's own measurement (``build-world``'s): the world's training set regenerated from its card's spec,
    its model's and the views model's copies of the same ``items`` items drawn with the world's seed, cached."""
    import json

    import pandas as pd

    from benchmarks.bench_verdict_choice import training_set
    from memlab.buildworld import model_copy_truth
    from memlab.worldgen import WorldSpec

    cache = work / f"pairs-card-{items}.npz"
    if cache.is_file():
        return dict(np.load(cache))
    spec = WorldSpec(**json.loads((card_world / "card.json").read_text())["spec"])
    rows, image_of = training_set(spec, work / "card" / "data")
    truth, _ = model_copy_truth(rows, image_of, card_world / "model", items, spec.seed, cache=work / "card" / "model")
    truth.update(model_copy_truth(rows, image_of, views_model, items, spec.seed, prefix="views",
                                  cache=work / "card" / "views")[0])
    from memlab.buildworld import WORLD_DEFAULTS
    from memlab.generate import Generator, Settings

    probes = pd.read_csv(card_world / "probes.csv")
    probes = probes[probes["group"].isin(GEN_GROUPS)].reset_index(drop=True)
    gen = Generator.from_pretrained(card_world / "model", device="cpu", scheduler=WORLD_DEFAULTS["scheduler"])
    settings = Settings(steps=WORLD_DEFAULTS["steps"], guidance=WORLD_DEFAULTS["guidance"])
    for g in GEN_GROUPS:
        sel = probes[probes["group"] == g]
        made = [gen.generate(p, range(GEN_SEEDS), settings=settings) for p in sel["prompt"]]
        first_row = pd.Series(rows.index, index=rows["item"]).groupby(level=0).first()  # item -> its first row
        truth[f"gen:{g}"] = (np.repeat(first_row.loc[sel["item"].to_numpy()].to_numpy(), GEN_SEEDS),
                             [x.image for m in made for x in m])
    from benchmarks.bench_verify_features import indexed

    built = indexed(rows, image_of)
    out = pairs_of(rows, image_of, truth, "model", gens=[f"gen:{g}" for g in GEN_GROUPS], built=built)
    views = pairs_of(rows, image_of, truth, "views", copies_only=True, built=built)
    out = {k: np.concatenate([out[k], views[k]]) if k != "n_items" else out[k] for k in out}
    np.savez(cache, **out)
    return out


def pairs_of(rows, image_of, truth: dict, prefix: str, copies_only: bool = False, gens=(), built=None) -> dict:
    """A world's pairs: the query and candidate images ([n, 64, 64, 3] uint8), the normalized score, the shipped
    detail correlation, the kind (``background`` or a copy kind, after ``prefix:``; the views model's copies as
    ``views:<kind>``), the query's number and whether the candidate is the copy's own image."""
    from benchmarks.bench_verify_features import compare, features, indexed
    from memlab import verify
    from memlab.scorenorm import view_vectors

    d, spec, v, distinct, reps = built or indexed(rows, image_of)  # (the training set indexed once per world)
    arr, feats = {}, {}

    def train(r):
        if r not in arr:
            im = image_of(int(r)).convert("RGB")
            arr[r], feats[r] = np.asarray(im.resize((SIDE, SIDE)), np.uint8), features(im)
        return arr[r], feats[r]
    out = {k: [] for k in ("q", "t", "n", "detail", "kind", "query", "own")}

    def add(q_arr, fq, kind, j, t, n, own):
        t_arr, ft = train(int(t))
        out["q"].append(q_arr)
        out["t"].append(t_arr)
        out["n"].append(n)
        out["detail"].append(compare(fq, ft)["detail3 c50"])
        out["kind"].append(kind)
        out["query"].append(j)
        out["own"].append(own)
    def best_view(views, j, own):
        """The candidates of the query's view whose best candidate scores highest."""
        got = [verify.candidates((x[j:j + 1] @ v.T)[0], distinct, own, spec, 5) for x in views]
        return max(got, key=lambda g: g[1][0])
    rep_views = [] if copies_only else [v[reps]] + view_vectors(d, [image_of(int(r)) for r in reps], spec)
    for i, r in enumerate(reps if rep_views else []):
        got = best_view(rep_views, i, distinct[r])
        qa, fq = train(int(r))
        for t, n in zip(*got):
            add(qa, fq, "background", int(r), t, float(n), False)
    for kind in list(KINDS) + list(gens):
        src, ims = truth[f"{prefix}:{kind}" if kind in KINDS else kind]
        label = kind if prefix == "model" or kind not in KINDS else f"{prefix}:{kind}"
        views = [d.embed(ims)] + view_vectors(d, ims, spec)
        for j, (s, im) in enumerate(zip(src, ims)):
            got = best_view(views, j, -1)
            qa, fq = np.asarray(im.convert("RGB").resize((SIDE, SIDE)), np.uint8), features(im)
            for t, n in zip(*got):
                add(qa, fq, label, j, t, float(n), bool(distinct[t] == distinct[s]))
    res = {k: np.asarray(x) for k, x in out.items()}
    res["n_items"] = np.asarray(repr({k: len(truth[f"model:{k}"][0]) for k in KINDS}))
    return res


def probability(net, p: dict) -> np.ndarray:
    """The network's probability that each pair is a copy, the better of the query and its mirror image
    (``memlab.pairnet.probability``)."""
    from memlab.pairnet import probability as prob

    return prob(net, p["q"], p["t"])


def recall(p: dict, score: np.ndarray, kinds=KINDS) -> tuple[float, dict]:
    """The threshold at 1% of the background (each distinct image's best candidate) and each kind's recall."""
    from memlab import metrics

    bg = p["kind"] == "background"
    best_bg = {}
    for q, s in zip(p["query"][bg], score[bg]):
        best_bg[q] = max(best_bg.get(q, -np.inf), s)
    thr = metrics.calibrate_threshold(np.asarray(list(best_bg.values())), [], 0.01)["value"]
    n_items = ast.literal_eval(str(p["n_items"]))
    out = {}
    for k in kinds:
        sel = (p["kind"] == k) & p["own"]
        best = {}
        for q, s in zip(p["query"][sel], score[sel]):
            best[q] = max(best.get(q, -np.inf), s)
        out[k] = sum(s > thr for s in best.values()) / n_items[k.rpartition(":")[2]]
    return thr, out


def generations(p: dict, score: np.ndarray, thr: float, group: str) -> tuple[float, float, int, int]:
    """A probe group's generations as the card counts them: (replicated, replicated among those whose top-1 is
    their own item, flagged among the others (non-copies), those with their own item at top-1, the others)."""
    sel = np.flatnonzero(p["kind"] == f"gen:{group}")
    top: dict = {}
    for i in sel:
        q = int(p["query"][i])
        if q not in top or score[i] > top[q][0]:
            top[q] = (score[i], bool(p["own"][i]))
    hit = np.array([s > thr for s, _ in top.values()])
    own = np.array([o for _, o in top.values()])
    return (float(hit.mean()), float(hit[own].mean()) if own.any() else float("nan"),
            float(hit[~own].mean()) if (~own).any() else float("nan"), int(own.sum()), int((~own).sum()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True, help="the previous built-in world (bench_verdict_choice)")
    ap.add_argument("--seed", type=int, default=1, help="the validation set's seed (reported)")
    ap.add_argument("--train-world-seed", default="2", help="the training worlds' seeds, e.g. 2 or 2,4")
    ap.add_argument("--tune-world-seed", type=int, default=3)
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--train-items", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "memlab-learned-verify"))
    ap.add_argument("--card-world", default=None, help="also measure the card's way on this world (assets/world)")
    ap.add_argument("--views-model", default=None, help="the views model (default: the previous world's model)")
    ap.add_argument("--card-items", type=int, default=96)
    ap.add_argument("--network", default=None,
                    help="measure these weights (a memlab-verify folder, e.g. assets/memlab-verify) instead of "
                         "training one on the training worlds' pairs")
    ap.add_argument("--pairs-only", action="store_true",
                    help="make (or find) the pairs, train and measure nothing: the pairs files are "
                         "memlab train-verifier's input (--work/pairs-world<seed>-seed<seed>-<items>.npz)")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    seeds = [int(x) for x in str(a.train_world_seed).split(",")]
    each = [pairs(Path(a.world), work, s, a.train_items, world_seed=s) for s in seeds]
    tr = {"own": np.concatenate([p["own"] for p in each])}
    tu = pairs(Path(a.world), work, a.tune_world_seed, a.items, world_seed=a.tune_world_seed)
    va = pairs(Path(a.world), work, a.seed, a.items)
    print(f"pairs: training {len(tr['own'])} ({int(tr['own'].sum())} copies), tuning {len(tu['own'])}, validation "
          f"{len(va['own'])} ({time.time() - t0:.0f} s)", flush=True)
    if a.pairs_only:
        return
    t0 = time.time()
    if a.network:  # the weights given (the shipped ones: assets/memlab-verify)
        from memlab.pairnet import load

        net, model = load(a.network)
        print(f"network {model} read from {a.network}", flush=True)
    else:  # trained here by memlab's trainer on the training worlds' pairs (resumable, kept in --work)
        from memlab.train_verifier import VerifierTrainConfig, train_verifier
        from memlab.pairnet import load

        files = [str(work / f"pairs-world{s}-seed{s}-{a.train_items}.npz") for s in seeds]
        out = work / f"network-{'+'.join(map(str, seeds))}-{a.train_items}-{a.epochs}"
        if not (out / "model.safetensors").is_file():
            train_verifier(VerifierTrainConfig(pairs=files, out=str(out), epochs=a.epochs).validate())
        net, model = load(str(out))
        print(f"network {model} ({out}; {time.time() - t0:.0f} s)", flush=True)
    p_tu, p_va = probability(net, tu), probability(net, va)

    def worst(r):
        return (min(r.values()), float(np.mean(list(r.values()))))
    w = max(WEIGHTS, key=lambda x: worst(recall(tu, tu["n"] + x * p_tu)[1]))
    w_oracle = max(WEIGHTS, key=lambda x: worst(recall(va, va["n"] + x * p_va)[1]))
    w2 = max(WEIGHTS, key=lambda x: worst(recall(tu, tu["n"] + 0.2 * tu["detail"] + x * p_tu)[1]))
    print(f"validation (seed {a.seed}): recall at 1% of the background, by kind")
    print(f"{'rule':<52} {'thr':>6} " + " ".join(f"{k:>11}" for k in KINDS))
    for label, score in (("normalized alone", va["n"]), ("detail (memlab-copy's default): + 0.2 x detail3 c50", va["n"] + 0.2 * va["detail"]),
                         (f"+ {w:g} x network (weight chosen on world {a.tune_world_seed})", va["n"] + w * p_va),
                         (f"+ {w_oracle:g} x network (weight chosen here: upper bound)", va["n"] + w_oracle * p_va),
                         (f"detail + {w2:g} x network (chosen on world {a.tune_world_seed})",
                          va["n"] + 0.2 * va["detail"] + w2 * p_va)):
        thr, r = recall(va, score)
        print(f"{label:<52} {thr:6.3f} " + " ".join(f"{r[k]:11.1%}" for k in KINDS), flush=True)
    for label, score in (("tuning set: normalized alone", tu["n"]), ("tuning set: detail", tu["n"] + 0.2 * tu["detail"]),
                         (f"tuning set: + {w:g} x network", tu["n"] + w * p_tu),
                         (f"tuning set: detail + {w2:g} x network", tu["n"] + 0.2 * tu["detail"] + w2 * p_tu)):
        thr, r = recall(tu, score)
        print(f"{label:<52} {thr:6.3f} " + " ".join(f"{r[k]:11.1%}" for k in KINDS), flush=True)
    if not a.card_world:
        return
    t0 = time.time()
    cp = card_pairs(Path(a.card_world), Path(a.views_model or Path(a.world) / "model"), work, a.card_items)
    p_cp = probability(net, cp)
    print(f"the card's world ({a.card_world}; {a.card_items} items copied by its model and by the views model; "
          f"probes {', '.join(GEN_GROUPS)} x seeds 0-{GEN_SEEDS - 1}; {time.time() - t0:.0f} s)")
    print(f"{'rule':<52} {'thr':>6} " + " ".join(f"{k:>11}" for k in KINDS))
    for label, score in (("normalized alone", cp["n"]), ("detail (memlab-copy's default): + 0.2 x detail3 c50", cp["n"] + 0.2 * cp["detail"]),
                         (f"+ {w:g} x network (weight chosen on world {a.tune_world_seed})", cp["n"] + w * p_cp),
                         (f"detail + {w2:g} x network (chosen on world {a.tune_world_seed})",
                          cp["n"] + 0.2 * cp["detail"] + w2 * p_cp)):
        thr, r = recall(cp, score, KINDS + tuple(f"views:{k}" for k in KINDS))
        print(f"{label:<52} {thr:6.3f} " + " ".join(f"{r[k]:11.1%}" for k in KINDS), flush=True)
        print(f"{'  the views model':<52} {'':>6} " + " ".join(f"{r['views:' + k]:11.1%}" for k in KINDS))
        made = KINDS[:5]  # the copies the models made (image-to-image, VAE), pooled as the card pools them
        world, views = np.mean([r[k] for k in made]), np.mean([r['views:' + k] for k in made])
        print(f"  the five copy kinds pooled: the world's model {world:.1%}, the views model {views:.1%} "
              f"({100 * (world - views):.1f} points)")
        for g in GEN_GROUPS:
            rep, own, other, n_own, n_other = generations(cp, score, thr, g)
            print(f"  {g}: replicated {rep:.1%}; among the {n_own} seeds whose top-1 is their own item {own:.1%}; "
                  f"flagged among the {n_other} others (non-copies) {other:.1%}", flush=True)


if __name__ == "__main__":
    main()
