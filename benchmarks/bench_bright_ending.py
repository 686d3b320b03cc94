"""Does the end token's last-step attention light the copied objects, layer by layer (issue 32)?

The built-in world's card measures Chen et al.'s bright-ending map (the end token's cross-attention at the last
denoising step, mean over heads and over the layers their code reads: ``attention.bright_ending``) against the
drawn objects' boxes of full-duplication generations, and finds it no brighter on them than elsewhere. This
script splits the end token's map by layer, on other seeds than the card's (default 10-13), for every seed of the
group's probes. It prints, as the median over seeds of the map's mean on the objects' boxes over its mean
elsewhere (``metrics.mask_coverage``) and the share of seeds above 1:
- each layer (named by its UNet block, in the order the UNet calls them);
- the mean of the layers at one map size (Prompt-to-Prompt's aggregation, which Chen et al.'s code builds on,
  averages one resolution);
- the mean of every layer (what memlab recorded before);
- the mean of the layers Chen et al.'s code reads (the down path's finest cross-attention,
  ``attention.end_token_layers``: what memlab records now).
With each, the end token's mean attention against a uniform share over the 77 positions (a bright ending is well
above it).

``--region shapes`` measures it on the objects' own pixels (each shape redrawn in its box as the world drew it)
instead of their boxes, which also hold background (a ring's hole, a star's or a triangle's corners).

``--region outlines`` measures it on a band 3 px either side of each shape's outline (``drawn_pixels``' shapes,
dilated less eroded) against the rest: the map of a full-duplication generation is brightest around a shape's edge and
darkest inside it, which a box or a shape's pixels average away. Run it on ``--group unique`` too (the control): an
outline lit as much on generations that copy nothing locates edges, not a copy.

``--region template`` measures the map on the part of a template copy that is copied instead: outside the
template's window (``regions``' ``window:`` box, where each picture of a template draws its own content) over inside
it. For a group without windows (a control: ``--group unique``) the world's template window is used, so the same
border is compared on generations that copy no template.

``--model DIR`` measures another model trained on the same world (its probes and the objects' boxes are the
world's): the ``world-attn16`` config (``memlab.pipelines``), which reads the prompt at the latents' resolution as
SD v1's down block 0 does, trained as the world's model was (``docs/builtin-world.md``).

``--objects-last`` rewords each prompt so its objects come last (``objects_last``), for a model trained on
captions reworded so (``bench_frozen_text.py --objects-last``).

    python -m benchmarks.bench_bright_ending [--world assets/world] [--group full_ddf20] [--seeds 10-13]
        [--region objects|shapes|outlines|template] [--model DIR] [--objects-last]
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


_SCENE = re.compile(r"^(?P<things>.+?) (?:on|over) (?P<bg>an? [^,]+ (?:background|backdrop))(?:, (?P<rest>.+))?$")


def objects_last(caption: str) -> str:
    """A scene's caption with its objects last: 'a red ring on a blue background, by X' -> 'by X, a blue background
    with a red ring' (the world's scene captions and their paraphrases name the background last); other captions
    as they are."""
    m = _SCENE.match(caption)
    if not m:
        return caption
    return (f"{m['rest']}, " if m["rest"] else "") + f"{m['bg']} with {m['things']}"


def map_side(name: str, latent: int, n_down: int) -> int:
    """A cross-attention layer's map side from its block: down block i at latent / 2^i, the mid block at the
    lowest resolution, up block i at latent / 2^(n_down - 1 - i) (diffusers' UNet2DConditionModel)."""
    part, _, rest = name.partition(".")
    if part == "mid_block":
        return latent // 2 ** (n_down - 1)
    i = int(rest.split(".")[0])
    return latent // 2 ** (i if part == "down_blocks" else n_down - 1 - i)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=str(ROOT / "assets" / "world"))
    ap.add_argument("--group", default="full_ddf20")
    ap.add_argument("--seeds", default="10-13")
    ap.add_argument("--region", choices=("objects", "shapes", "outlines", "template"), default="objects",
                    help="the drawn objects' boxes, their own pixels, a band around their outlines, or the template "
                         "outside its window (above)")
    ap.add_argument("--model", default=None, help="another pipeline folder trained on the world's training set")
    ap.add_argument("--objects-last", action="store_true", help="reword each prompt with its objects last (above)")
    a = ap.parse_args(argv)
    import pandas as pd

    import memlab.attention as attention
    from memlab import metrics
    from memlab.generate import Settings
    from memlab.local import object_region
    from memlab.runner import parse_seeds
    from memlab.world import World

    world = World.load(a.world, verify=False)
    if a.model:
        world.model = a.model
    gen, index = world.generator(device="cpu"), world.index()
    items = index.items.drop_duplicates("item")
    regions = dict(zip(items["item"].astype(int), items["regions"].astype(str)))
    objects = dict(zip(items["item"].astype(int), items["objects"].astype(str)))
    windows = sorted({w for r in regions.values() for w in r.split(";") if w.startswith("window:")})
    if a.region == "template" and not windows:
        raise SystemExit(f"{a.world} has no template windows")
    probes = pd.read_csv(Path(a.world) / "probes.csv")
    probes = probes[probes["group"] == a.group]
    defaults = world.manifest.get("defaults", {})
    settings = Settings(steps=int(defaults.get("steps", 30)), guidance=float(defaults.get("guidance", 5.0)))
    seeds = parse_seeds(a.seeds)

    hub = attention.AttentionHub.of(gen.pipe.unet)
    chen = [hub.cross_layers[i] for i in attention.end_token_layers(hub.cross_layers)]  # what memlab records
    hub.end_layers = frozenset(range(len(hub.cross_layers)))  # here every layer's map is kept, to split them
    modules = dict(gen.pipe.unet.named_modules())
    calls: list[str] = []  # the cross-attention layers in the order the UNet calls them
    for name in hub.cross_layers:
        modules[name].register_forward_pre_hook(lambda m, args, name=name: calls.append(name))
    captured = []
    shipped = attention.bright_ending

    def spy(end_maps):  # the last step's per-layer maps, as the generator hands them to bright_ending
        captured.append([np.asarray(m, np.float64) for m in end_maps])
        return shipped(end_maps)
    attention.bright_ending = spy

    ratios, share = {}, {}
    try:
        for r in probes.itertuples():
            region = (object_region(regions.get(int(r.item), "")) if a.region == "objects"
                      else drawn_pixels(regions.get(int(r.item), ""), objects.get(int(r.item), "")) if a.region == "shapes"
                      else outlines(regions.get(int(r.item), ""), objects.get(int(r.item), "")) if a.region == "outlines"
                      else outside_window(regions.get(int(r.item), ""), windows[0]))
            if region is None:
                continue
            calls.clear()
            captured.clear()
            list(gen.generate(objects_last(r.prompt) if a.objects_last else r.prompt, seeds, settings=settings))
            layers = captured[-1]
            names = calls[:len(layers)]  # the first UNet pass calls every layer once, in order
            sizes = {}
            for n, m in zip(names, layers):
                sizes.setdefault(map_side(n, m.shape[-1], len(gen.pipe.unet.down_blocks)), []).append(m)
            maps = {**{n: m for n, m in zip(names, layers)},
                    **{f"mean of the {w} x {w} layers ({len(v)})": np.mean(v, 0) for w, v in sorted(sizes.items())},
                    "mean of every layer (what memlab recorded before)": np.mean(layers, 0),
                    f"Chen et al.'s layers ({len(chen)}; what memlab records)":
                        np.mean([m for n, m in zip(names, layers) if n in chen], 0)}
            for key, m in maps.items():
                for s in range(len(m)):
                    top = max(float(m[s].max()), 1e-12)
                    ratios.setdefault(key, []).append(metrics.mask_coverage(metrics.mask_to_image(m[s] / top), region))
                    share.setdefault(key, []).append(float(m[s].mean()))
    finally:
        attention.bright_ending = shipped
    where = ("drawn objects; the end token's last-step map on the objects' boxes over elsewhere" if a.region == "objects"
             else "drawn objects; the map on the objects' own pixels over the rest" if a.region == "shapes"
             else "drawn objects; the map on a band 3 px either side of their outlines over the rest"
             if a.region == "outlines" else f"a template window (its own, else {windows[0]}); the end token's last-step map outside it over inside")
    print(f"{a.group}: {len(probes)} probes x seeds {a.seeds}, {len(next(iter(ratios.values())))} seeds with {where} "
          f"(median over seeds, share above 1) and its mean attention (uniform over 77 positions: {1 / 77:.4f})")
    for key, v in ratios.items():
        v = np.asarray(v, np.float64)
        print(f"  {key:<52} {np.nanmedian(v):6.3f}x  above 1: {np.nanmean(v > 1):6.1%}  "
              f"attention {np.mean(share[key]):.4f}")
    return 0


def drawn_pixels(regions: str, objects: str):
    """The pixels the world drew its objects on (each shape redrawn in its box, ``bench_copy_content.object_masks``;
    a shape's outline and the parts a later shape covers included) as a mask at 64 x 64, or None."""
    from benchmarks.bench_copy_content import object_masks

    masks = object_masks(regions, objects)
    if not masks:
        return None
    inside = np.any([m for m, _ in masks], axis=0)
    return inside if inside.any() else None


def outlines(regions: str, objects: str, width: int = 3):
    """A band ``width`` px either side of each drawn shape's outline (its pixels dilated less its pixels eroded, at
    64 x 64), or None."""
    from scipy import ndimage

    from benchmarks.bench_copy_content import object_masks

    masks = object_masks(regions, objects)
    band = np.zeros((64, 64), bool)
    for m, _ in masks:
        m = np.asarray(m, bool)
        band |= ndimage.binary_dilation(m, iterations=width) & ~ndimage.binary_erosion(m, iterations=width)
    return band if band.any() else None


def outside_window(regions: str, default: str):
    """The part of an image outside its template window (``regions``' ``window:x0,y0,x1,y1``, else ``default``'s) as
    a mask at ``metrics.MASK_SIDE``: what the pictures of a template share."""
    from memlab import metrics

    box = next((w for w in str(regions).split(";") if w.startswith("window:")), default)
    x0, y0, x1, y1 = (int(v) for v in box[len("window:"):].split(","))
    region = np.ones((metrics.MASK_SIDE, metrics.MASK_SIDE), bool)
    region[max(0, y0):y1, max(0, x0):x1] = False
    return region


if __name__ == "__main__":
    raise SystemExit(main())
