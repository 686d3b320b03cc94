"""memlab-copy weights on the built-in world's own model copies, through build-world's code path: the
ground truth (`buildworld.model_copy_truth`: 96 held-out items, image-to-image at 0.2-0.5 and the VAE
round trip) is made once, then for each weights folder and each descriptor (``memlab-copy``: the
layout verdict; ``memlab-copy-global``: the global cosine alone) the world's index is built with it
(`index.build_index`: threshold at 1% of the distinct-item background) and the manifest's recall per
kind is printed, with the share of copies whose own item is the top-1 match.

``--seed`` draws other items (and img2img seeds) than the card's (``spec.seed``): a validation set for
choosing a descriptor's settings, e.g. memlab-copy's input blur (``--blurs 0,0.5,1,1.4``), apart from the
items whose recall the card reports.

    python -m benchmarks.bench_model_copies assets/memlab-copy [OTHER_WEIGHTS ...]
        [--descriptors memlab-copy,memlab-copy-global] [--seed N] [--blurs 0,1]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="+", help="memlab-copy weights folders (config.json + model.safetensors)")
    ap.add_argument("--world", default=str(ROOT / "assets" / "world"))
    ap.add_argument("--items", type=int, default=96)
    ap.add_argument("--descriptors", default="memlab-copy,memlab-copy-global")
    ap.add_argument("--seed", type=int, default=None, help="draw the items with this seed (default: the card's)")
    ap.add_argument("--blurs", default=None, help="comma-separated input blurs (px) to try on each descriptor "
                                                   "(default: each descriptor's own)")
    a = ap.parse_args()
    import pandas as pd

    from memlab.buildworld import calibration_origin, model_copy_truth
    from memlab.descriptors import create_descriptor
    from memlab.index import TrainingIndex, build_index
    from memlab.match import load_image

    world = Path(a.world)
    data = world / "build" / "data"
    rows = pd.read_parquet(data / "train.parquet")
    card = json.loads((world / "card.json").read_text())
    seed = card["spec"]["seed"] if a.seed is None else a.seed

    def image_of(i):
        return load_image(data / "images" / Path(rows["file"].iloc[i]).name)

    truth, n = model_copy_truth(rows, image_of, world / "model", a.items, seed)
    rows["origin"] = calibration_origin(rows)
    print(f"{n} held-out items of {world} drawn with seed {seed} (the card's: {card['spec']['seed']}), "
          f"{len(truth['model:all'][1])} model copies; threshold: 1% of the distinct-item background")
    kinds = sorted(k for k in truth if k != "model:all")
    print(f"{'weights / descriptor':<40} {'thr':>6} {'all':>6} " + " ".join(f"{k[6:]:>12}" for k in kinds) + "  top-1 own item")
    for w in a.weights:
        for name, blur in [(n, b) for n in a.descriptors.split(",")
                           for b in ([None] if a.blurs is None else [float(x) for x in a.blurs.split(",")])]:
            d = create_descriptor(name, weights=w, **({} if blur is None else {"blur": blur}))
            with tempfile.TemporaryDirectory() as tmp:
                build_index(Path(tmp) / "idx", rows, image_of, [d], ground_truth=truth, origin="origin")
                idx = TrainingIndex.load(Path(tmp) / "idx")
                thr = idx.threshold(d.name)
                gt = thr["ground_truth"]
            label = f"{Path(w).name} / {name}" + ("" if blur is None else f" blur {blur:g}")
            print(f"{label:<40} {thr['value']:6.3f} {gt['model:all']['recall']:6.1%} "
                  + " ".join(f"{gt[k]['recall']:12.1%}" for k in kinds) + f"  {gt['model:all']['copy_top1']:.1%}",
                  flush=True)


if __name__ == "__main__":
    main()
