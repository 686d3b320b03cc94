"""Copy detection under single transformations, on the shared public-domain paintings (held out: no
descriptor was trained on them): for each transformation of ``memlab.distort.ROBUSTNESS``, the share of
copies whose top-1 among all paintings is their original, for ``pixel``, ``memlab-copy`` and a
perceptual hash (``imagehash.phash``, 64 bits, Hamming distance) as the reference a reader knows, and an
ablation: ``memlab-copy`` without its centre-crop view.
Then **at the threshold** (issue 30): half of the paintings are indexed (``index.build_index``, threshold
at 1% of their distinct background, as a world calibrates); the other half, paintings the threshold never
saw, give the false-positive rate (their top-1 score above it), and each transformation of the indexed
half gives the recall at the threshold; each also at the conformal rank of the same background
(``metrics.conformal_threshold``, tried, not shipped); each with the verification memlab-copy ships (the detail
correlation), memlab-verify's learned one beside it (tried for the built-in world), two-sided, the normalized
score alone and the plain cosine. With ``--splits N`` the held-out false positives of each
score are measured over N random halves (one half's rate rests on one or two paintings).
Ties count as the expected accuracy under random tie-breaking (1 / number of tied items).

    python -m benchmarks.bench_copy_robustness [--data ../shared/data/aic-public-domain/images]
        [--weights assets/memlab-copy] [--json out.json] [--splits 10]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent

from memlab import metrics, scorenorm  # noqa: E402
from memlab.descriptors import create_descriptor  # noqa: E402
from memlab.distort import ROBUSTNESS  # noqa: E402
from memlab.match import load_image  # noqa: E402


def top1_accuracy(dist: np.ndarray) -> float:
    """dist [n_copies, n_items], lower is closer; copy i's original is item i."""
    best = dist.min(axis=1, keepdims=True)
    tied = dist == best
    hit = tied[np.arange(len(dist)), np.arange(len(dist))]
    return float(np.mean(hit / tied.sum(axis=1)))


def phash_matrix(images) -> np.ndarray:
    import imagehash

    return np.stack([imagehash.phash(im).hash.reshape(-1) for im in images]).astype(np.uint8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "aic-public-domain" / "images"))
    p.add_argument("--weights", default=None, help="memlab-copy weights folder (default: the shipped ones)")
    p.add_argument("--json", default=None, help="also write the table as JSON")
    p.add_argument("--splits", type=int, default=1, help="also the held-out false positives of each score over "
                                                         "this many random halves (the first is the one above)")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / "captions.csv").is_file():
        print(f"skip: no paintings at {data} (../shared/data is absent)")
        return 0
    files = pd.read_csv(data / "captions.csv")["file"].tolist()
    originals = [load_image(data / f) for f in files]
    print(f"{len(originals)} paintings from {data}; top-1 among all of them")

    descs = {"pixel": create_descriptor("pixel"), "memlab-copy": create_descriptor("memlab-copy", weights=args.weights)}
    # ablation: the same weights without the centre-crop view (mirror averaging kept)
    no_crop = create_descriptor("memlab-copy", weights=args.weights)
    no_crop.net.config.crop_average = [1.0]
    descs["no crop avg"] = no_crop
    t0 = time.perf_counter()
    base = {n: d.embed(originals) for n, d in descs.items()}
    base_ph = phash_matrix(originals)
    timing = {"embed_originals_s": time.perf_counter() - t0}
    table = {}
    for tname, tf in ROBUSTNESS.items():
        copies = [tf(im) for im in originals]
        row = {}
        for n, d in descs.items():
            row[n] = top1_accuracy(-(d.embed(copies) @ base[n].T))
        ph = phash_matrix(copies)
        row["phash"] = top1_accuracy((ph[:, None, :] != base_ph[None, :, :]).sum(axis=2))
        table[tname] = row
    print(f"{'transformation':<16}{'pixel':>9}{'memlab-copy':>13}{'pHash':>9}{'copy - pHash':>14}"
          f"{'no crop avg':>13}")
    worst_gap = 0.0
    for tname, r in table.items():
        gap = r["memlab-copy"] - r["phash"]
        worst_gap = min(worst_gap, gap)
        print(f"{tname:<16}{r['pixel']:>9.1%}{r['memlab-copy']:>13.1%}{r['phash']:>9.1%}{gap:>+14.1%}"
              f"{r['no crop avg']:>13.1%}")
    lowest = min(r["memlab-copy"] for r in table.values())
    print(f"memlab-copy: lowest top-1 {lowest:.1%} (target >= 95%), worst gap to pHash {worst_gap:+.1%} "
          f"(target >= -2 points); model {descs['memlab-copy'].model}")
    print(f"embedding {len(originals)} originals with the three descriptors: {timing['embed_originals_s']:.2f}s")
    at = at_threshold(files, originals, create_descriptor("memlab-copy", weights=args.weights), data)
    print("the same verified by memlab-verify beside the detail (the learned verification tried for the built-in "
          "world; it never saw a painting):")
    learned = at_threshold(files, originals, create_descriptor(
        "memlab-copy", weights=args.weights, score_norm={**scorenorm.DEFAULT, "verify": scorenorm.NETWORK_VERIFY}), data)
    print("the same two-sided (CSLS: half the normalizer from the matched painting's own neighbours; not shipped):")
    two_sided = at_threshold(files, originals, create_descriptor(
        "memlab-copy", weights=args.weights, score_norm={**scorenorm.DEFAULT, "train_side": 0.5}), data)
    print("the same without the verification stage (the normalized score alone):")
    unverified = at_threshold(files, originals, create_descriptor(
        "memlab-copy", weights=args.weights, score_norm={**scorenorm.DEFAULT, "verify": None}), data)
    print("the same without score normalization (plain cosine, the verdict before issue 30's normalization):")
    plain = at_threshold(files, originals, create_descriptor("memlab-copy", weights=args.weights, score_norm=None),
                         data)
    if args.splits > 1:  # one split's 1% rests on one or two paintings: the rate over many halves
        variants = {"verified": ({}, at),
                    "memlab-verify": ({"score_norm": {**scorenorm.DEFAULT, "verify": scorenorm.NETWORK_VERIFY}},
                                      learned),
                    "verified, two-sided": ({"score_norm": {**scorenorm.DEFAULT, "train_side": 0.5}}, two_sided),
                    "normalized alone": ({"score_norm": {**scorenorm.DEFAULT, "verify": None}}, unverified),
                    "plain cosine": ({"score_norm": None}, plain)}
        held = len(files) - len(files) // 2
        for label, (over, first) in variants.items():
            fp = [(first["false_positives"], first["conformal"]["false_positives"])]
            for seed in range(1, args.splits):
                o = at_threshold(files, originals, create_descriptor("memlab-copy", weights=args.weights, **over),
                                 data, seed, distortions=False)
                fp.append((o["false_positives"], o["conformal"]["false_positives"]))
            for j, name in enumerate(("the shipped threshold", "the conformal rank")):
                counts = [round(f[j] * held) for f in fp]
                print(f"held-out false positives over {len(fp)} random halves, {label}, {name}: mean "
                      f"{np.mean([f[j] for f in fp]):.2%} of {held} (per half: {', '.join(map(str, counts))})",
                      flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"table": table, "lowest": lowest, "worst_gap": worst_gap,
                                               "model": descs["memlab-copy"].model, "at_threshold": at,
                                               "at_threshold_unverified": unverified,
                                               "at_threshold_memlab_verify": learned, "at_threshold_two_sided": two_sided,
                                               "at_threshold_plain_cosine": plain}, indent=2))
    return 0


def at_threshold(files, originals, d, root, seed: int = 0, distortions: bool = True) -> dict:
    """Half the paintings indexed (threshold at 1% of their distinct background), the other half held out (the
    halves drawn with ``seed``): false positives among the held-out paintings, recall at the threshold per
    transformation (``distortions``). The index keeps the paintings' files (under ``root``), so a verifying rule
    (``memlab.verify``) verifies."""
    import tempfile

    from memlab.index import TrainingIndex, build_index
    from memlab.match import match_vectors, query_vectors

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    inside, outside = order[: len(files) // 2], order[len(files) // 2:]
    items = pd.DataFrame({"id": np.arange(len(inside)), "caption": [""] * len(inside),
                          "file": [files[i] for i in inside]})
    with tempfile.TemporaryDirectory() as tmp:
        build_index(Path(tmp) / "idx", items, lambda i: originals[inside[i]], [d], image_root=str(Path(root).resolve()))
        idx = TrainingIndex.load(Path(tmp) / "idx")
        thr = idx.threshold(d.name)["value"]
        source = (f"1% of the background of {len(inside)} indexed paintings"
                  if idx.threshold(d.name)["source"] == "calibrated" else idx.threshold(d.name)["source"])

        def top1(images):  # the verdict's score (normalized where the index says so), as `memlab match` gives it
            vecs, views = query_vectors(idx, d, images)
            found = match_vectors(idx, d, vecs, k=1, views=views, images=images)
            return np.array([r["score"] for r in found]), np.array([r["matches"][0]["row"] for r in found])
        fp_scores, fp_rows = top1([originals[i] for i in outside])
        flagged = [(float(fp_scores[j]), files[outside[j]], files[inside[fp_rows[j]]])
                   for j in np.argsort(-fp_scores) if fp_scores[j] > thr]
        out = {"threshold": float(thr), "source": source, "indexed": len(inside), "held_out": len(outside),
               "false_positives": float((fp_scores > thr).mean()), "flagged": flagged, "recall": {}, "top1": {}}
        scores = {}
        for tname, tf in (ROBUSTNESS.items() if distortions else []):
            scores[tname], r = top1([tf(originals[i]) for i in inside])
            out["recall"][tname] = float((scores[tname] > thr).mean())
            out["top1"][tname] = float((r == np.arange(len(inside))).mean())
        # the same background read at the conformal rank (tried, not shipped: docs/methods.md)
        conf = metrics.conformal_threshold(idx.background(d.name, distinct=True), 0.01)
        out["conformal"] = {"threshold": conf, "false_positives": float((fp_scores > conf).mean()),
                            "recall": {t: float((sc > conf).mean()) for t, sc in scores.items()}}
        idx.close()
    if not distortions:
        return out
    print(f"at the threshold ({d.name} {thr:.3f}, {out['source']}): "
          f"false positives among {len(outside)} held-out paintings {out['false_positives']:.1%} "
          f"({metrics.interval_text(metrics.rate_interval(fp_scores > thr), '.1%')}, Wilson; target <= 1%)")
    for score, held, matched in out["flagged"]:
        print(f"  flagged: {held} ~ {matched} (indexed), {score:.4f} against {thr:.4f}")
    for tname in ROBUSTNESS:
        print(f"  {tname:<16} recall {out['recall'][tname]:6.1%}  top-1 {out['top1'][tname]:6.1%}")
    print(f"  lowest recall {min(out['recall'].values()):.1%} (target >= 95% per transformation)")
    c = out["conformal"]
    print(f"  at the conformal rank of the same background ({c['threshold']:.3f}): false positives "
          f"{c['false_positives']:.1%}, lowest recall {min(c['recall'].values()):.1%}")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
