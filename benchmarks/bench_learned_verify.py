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

    python -m benchmarks.bench_learned_verify --world PREVIOUS_WORLD [--work DIR] [--items 48]
        [--train-items 160] [--epochs 20] [--card-world assets/world]
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
    out = pairs_of(rows, image_of, truth, "model", gens=[f"gen:{g}" for g in GEN_GROUPS])
    views = pairs_of(rows, image_of, truth, "views", copies_only=True)
    out = {k: np.concatenate([out[k], views[k]]) if k != "n_items" else out[k] for k in out}
    np.savez(cache, **out)
    return out


def pairs_of(rows, image_of, truth: dict, prefix: str, copies_only: bool = False, gens=()) -> dict:
    """A world's pairs: the query and candidate images ([n, 64, 64, 3] uint8), the normalized score, the shipped
    detail correlation, the kind (``background`` or a copy kind, after ``prefix:``; the views model's copies as
    ``views:<kind>``), the query's number and whether the candidate is the copy's own image."""
    from benchmarks.bench_verify_features import compare, features, indexed
    from memlab import verify
    from memlab.scorenorm import view_vectors

    d, spec, v, distinct, reps = indexed(rows, image_of)
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


def network():
    """A small pair network: the query and the candidate stacked (6 channels, 64 x 64) and their difference, four
    strided convolutions, pooled, one logit."""
    import torch.nn as nn

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                             nn.Conv2d(o, o, 3, 1, 1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))
    return nn.Sequential(block(9, 32), block(32, 64), block(64, 96), block(96, 128), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, 1))


def stack(q, t):
    """[n, 9, 64, 64] float inputs from uint8 images [n, 64, 64, 3]: query, candidate, their difference."""
    import torch

    q = torch.as_tensor(q).permute(0, 3, 1, 2).float() / 127.5 - 1
    t = torch.as_tensor(t).permute(0, 3, 1, 2).float() / 127.5 - 1
    return torch.cat([q, t, q - t], 1)


def train_network(p: dict, epochs: int, seed: int = 0):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = network()
    y = p["own"].astype(np.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    n, bs = len(y), 128
    steps = epochs * ((n + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    pos_weight = torch.tensor((1 - y.mean()) / max(y.mean(), 1e-6))
    for ep in range(epochs):
        t0, tot = time.time(), 0.0
        for b in np.array_split(rng.permutation(n), (n + bs - 1) // bs):
            q, t = p["q"][b].copy(), p["t"][b].copy()
            flip = rng.random(len(b)) < 0.5  # the pair mirrored together; the query alone (a mirrored copy is a copy)
            q[flip], t[flip] = q[flip][:, :, ::-1], t[flip][:, :, ::-1]
            alone = rng.random(len(b)) < 0.25
            q[alone] = q[alone][:, :, ::-1]
            x = stack(q, t)
            gain = torch.as_tensor(rng.uniform(0.7, 1.3, (len(b), 3, 1, 1)), dtype=torch.float32)  # colour drift
            x[:, :3] = ((x[:, :3] + 1) * gain - 1).clamp(-1, 1)
            x[:, 6:] = x[:, :3] - x[:, 3:6]
            loss = F.binary_cross_entropy_with_logits(net(x)[:, 0], torch.as_tensor(y[b]), pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(b)
        print(f"  epoch {ep + 1}/{epochs}: loss {tot / n:.4f} ({time.time() - t0:.0f} s)", flush=True)
    return net.eval()


def probability(net, p: dict) -> np.ndarray:
    """The network's probability that each pair is a copy, the better of the query and its mirror image."""
    import torch

    out = []
    with torch.no_grad():
        for s in range(0, len(p["q"]), 512):
            q, t = p["q"][s:s + 512], p["t"][s:s + 512]
            a = torch.sigmoid(net(stack(q, t))[:, 0])
            b = torch.sigmoid(net(stack(np.ascontiguousarray(q[:, :, ::-1]), t))[:, 0])
            out.append(torch.maximum(a, b).numpy())
    return np.concatenate(out)


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
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    seeds = [int(x) for x in str(a.train_world_seed).split(",")]
    each = [pairs(Path(a.world), work, s, a.train_items, world_seed=s) for s in seeds]
    tr = {k: np.concatenate([p[k] for p in each]) for k in ("q", "t", "own")}
    tu = pairs(Path(a.world), work, a.tune_world_seed, a.items, world_seed=a.tune_world_seed)
    va = pairs(Path(a.world), work, a.seed, a.items)
    print(f"pairs: training {len(tr['own'])} ({int(tr['own'].sum())} copies), tuning {len(tu['own'])}, validation "
          f"{len(va['own'])} ({time.time() - t0:.0f} s)", flush=True)
    t0 = time.time()
    saved = work / f"network-{'+'.join(map(str, seeds))}-{a.train_items}-{a.epochs}.safetensors"
    if saved.is_file():  # a rerun (with --card-world) reads the network this run's options trained
        from safetensors.torch import load_file

        net = network()
        net.load_state_dict(load_file(saved))
        net.eval()
        print(f"network read from {saved}", flush=True)
    else:
        from safetensors.torch import save_file

        net = train_network(tr, a.epochs)
        save_file(net.state_dict(), saved)
        print(f"trained in {time.time() - t0:.0f} s", flush=True)
    p_tu, p_va = probability(net, tu), probability(net, va)

    def worst(r):
        return (min(r.values()), float(np.mean(list(r.values()))))
    w = max(WEIGHTS, key=lambda x: worst(recall(tu, tu["n"] + x * p_tu)[1]))
    w_oracle = max(WEIGHTS, key=lambda x: worst(recall(va, va["n"] + x * p_va)[1]))
    print(f"validation (seed {a.seed}): recall at 1% of the background, by kind")
    print(f"{'rule':<52} {'thr':>6} " + " ".join(f"{k:>11}" for k in KINDS))
    for label, score in (("normalized alone", va["n"]), ("shipped: + 0.2 x detail3 c50", va["n"] + 0.2 * va["detail"]),
                         (f"+ {w:g} x network (weight chosen on world {a.tune_world_seed})", va["n"] + w * p_va),
                         (f"+ {w_oracle:g} x network (weight chosen here: upper bound)", va["n"] + w_oracle * p_va)):
        thr, r = recall(va, score)
        print(f"{label:<52} {thr:6.3f} " + " ".join(f"{r[k]:11.1%}" for k in KINDS), flush=True)
    for label, score in (("tuning set: normalized alone", tu["n"]), ("tuning set: shipped", tu["n"] + 0.2 * tu["detail"]),
                         (f"tuning set: + {w:g} x network", tu["n"] + w * p_tu)):
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
    w2 = max(WEIGHTS, key=lambda x: worst(recall(tu, tu["n"] + 0.2 * tu["detail"] + x * p_tu)[1]))
    for label, score in (("normalized alone", cp["n"]), ("shipped: + 0.2 x detail3 c50", cp["n"] + 0.2 * cp["detail"]),
                         (f"+ {w:g} x network (weight chosen on world {a.tune_world_seed})", cp["n"] + w * p_cp),
                         (f"shipped + {w2:g} x network (chosen on world {a.tune_world_seed})",
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
