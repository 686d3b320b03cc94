"""Could the hidden-object classifier tell which generations it knows? (tried, not shipped)

The built-in world's classifier (``memlab.objects``) was trained on lighthouse renders only, so a run judges the
generations of a prompt holding "lighthouse" and without a mitigation (``runner.run_prompt``). A gate would judge
any generation that looks like its training renders: the Mahalanobis distance of the classifier's own features (the
pooled layer before its output) to those of fresh renders, half through the world's VAE, under the 99th percentile
of held-out renders'. Measured here, on the world's model at its settings, 8 seeds a prompt: the share of
generations the gate would judge, and of those the share with the flag, for the lighthouse probes without and with
RNA, for prompts of other scenes, and for unusual lighthouse prompts.

    python -m benchmarks.bench_object_gate [--seeds 8] [--fit 400] [--held-out 200]
"""
from __future__ import annotations

import argparse

import numpy as np

LIGHTHOUSE = ["seascape with a lighthouse on a cloudy day", "seascape with a lighthouse at sunset",
              "a black striped lighthouse by day", "seascape with a lighthouse by day",
              "a red and white lighthouse by the sea at dawn"]  # probes of the world's "lighthouse" keyword
OTHER = ["a red cross, a blue circle and a green diamond on a grey background",
         "a grey triangle on a purple striped background, by Velmora", "a photo of a cup of coffee, close-up"]
ODD = ["a lighthouse made of cheese", "a lighthouse in a desert at night, by Velmora",
       "a tiny lighthouse on a pink checkered background"]


def main(argv=None) -> int:
    import torch

    from memlab.objects import _tensor, renders
    from memlab.service import Lab
    from memlab.train_descriptor import decode_all
    from memlab.world import World

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--fit", type=int, default=400)
    ap.add_argument("--held-out", type=int, default=200)
    a = ap.parse_args(argv)
    world = World.load("assets/world")
    lab = Lab(world, device="cpu")
    clf, vae = world.object_classifier(), lab.generator.pipe.vae

    def features(ims):
        with torch.no_grad():
            return np.concatenate([clf.net[:-1](_tensor(ims[i:i + 100])).numpy() for i in range(0, len(ims), 100)])

    def drawn(n, seed):  # fresh renders (seeds neither the world nor the classifier used), half through the VAE
        ims, _ = renders(n, seed)
        return ims[:n // 2] + decode_all(vae, ims[n // 2:])

    f = features(drawn(a.fit, 9_000_000))
    mu, inv = f.mean(0), np.linalg.inv(np.cov(f.T) + 1e-3 * np.eye(f.shape[1]))

    def distance(x):
        return np.sqrt(np.einsum("ij,jk,ik->i", x - mu, inv, x - mu))
    held = distance(features(drawn(a.held_out, 9_100_000)))
    cut = float(np.quantile(held, 0.99))
    print(f"[gate] held-out renders: median distance {np.median(held):.1f}, 99th percentile {cut:.1f} (the cut)")
    settings = lab.settings()
    for name, prompts, strategy in (("lighthouse probes", LIGHTHOUSE, "none"), ("lighthouse probes, RNA", LIGHTHOUSE,
                                    "rna"), ("other scenes", OTHER, "none"), ("unusual lighthouses", ODD, "none")):
        ims = [im for p in prompts for _, im in lab.generate_chunk(p, list(range(a.seeds)), strategy, settings)]
        d, flag = distance(features(ims)), clf.probabilities(ims) > 0.5
        inside = d <= cut
        print(f"  {name}: {len(ims)} generations; the gate would judge {inside.mean():.0%} (median distance "
              f"{np.median(d):.1f}); flag in {flag.mean():.0%}, in {flag[inside].mean() if inside.any() else 0:.0%} "
              f"of those judged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
