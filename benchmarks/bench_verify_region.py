"""How much of the image the verification stage compares (``memlab.verify``'s ``region``; issue 30 and 32), on
the built-in world's template, unique and full ddf 20 probes, seeds 10-19 (the card reports seeds 0-9).

Each seed is generated and matched as ``memlab run`` does (the world's index must verify: its records keep each
match's ``normalized`` score). Its 5 best matches are then verified again with the detail compared over the whole
image and over its central 75% and 50% of each side; each way is calibrated as the index calibrates it (each
distinct training image against its nearest other distinct images, 1% above the best). Printed per way: the
threshold, and for each group the share of its seeds whose top-1 is their own image (for a template probe: a
picture of its own template) that the global verdict calls replicated. A template copy repeats a frame, badge
and band around other content; the global verdict should leave most of those to the masked verdict (issue 32),
and call the full ddf 20 seeds.

    python -m benchmarks.bench_verify_region [--world assets/world] [--regions 1,0.75,0.5]
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=str(ROOT / "assets" / "world"))
    ap.add_argument("--regions", default="1,0.75,0.5")
    a = ap.parse_args()
    import numpy as np
    import pandas as pd
    from PIL import Image

    from memlab import scorenorm, verify
    from memlab.generate import Settings
    from memlab.local import templates_of
    from memlab.match import descriptor_for_index
    from memlab.runner import run_prompt
    from memlab.world import World

    world = World.load(a.world)
    gen, index = world.generator(), world.index()
    d = descriptor_for_index(index)
    spec = index.descriptor_info(d.name).get("score_norm") or {}
    if not spec.get("verify"):
        print(f"skip: {a.world}'s index does not verify its matches")
        return 0
    st = Settings(steps=int(world.defaults["steps"]), guidance=float(world.defaults["guidance"]))
    probes = pd.read_csv(world.file("probes"))
    template_of = templates_of(index)
    seeds = []
    for p in probes[probes["group"].isin(["template", "unique", "full_ddf20"])].itertuples():
        tmpl = int(p.template) if p.group == "template" else -1
        run_prompt(gen, index, d, p.prompt, list(range(10, 20)), ["none"], st, k=5,
                   on_seed=lambda r, im, g=p.group, item=int(p.item), t=tmpl: seeds.append((g, item, t, r, im.copy())))
    v = np.asarray(index.vectors(d.name), np.float32)
    distinct = index.items["distinct"].to_numpy()
    reps = np.flatnonzero(index.items["representative"].to_numpy())

    def image(row):
        with Image.open(index.image_path(int(row))) as t:
            return t.convert("RGB")
    rep_views = scorenorm.view_vectors(d, [image(r) for r in reps], spec)
    print(f"built-in world {a.world}: seeds 10-19 of {len(probes)} probes; shipped rule: "
          f"{verify.words(spec['verify'])}")
    for region in (float(x) for x in a.regions.split(",")):
        ver = {**spec["verify"], "region": region}
        cache: dict = {}

        def train_of(row, ver=ver, cache=cache):
            if row not in cache:
                cache[row] = verify.detail_vectors(image(row), ver["sigma"], ver["region"])
            return cache[row]
        bg = verify.background(v, distinct, reps, {**spec, "verify": ver}, rep_views, train_of)
        thr = float(np.quantile(bg[np.isfinite(bg)], 1 - 0.01, method="higher"))
        called: dict = {}
        for g, item, tmpl, r, im in seeds:
            ms = r["matches"][:ver["candidates"]]
            got, _ = verify.rescore([m["normalized"] for m in ms], [m["row"] for m in ms],
                                    verify.query_details(im, ver["sigma"], region), train_of, ver)
            j = int(np.argmax(got))
            top = int(index.items.iloc[int(ms[j]["row"])]["item"])
            own = template_of.get(top, -1) == tmpl if tmpl >= 0 else top == item
            called.setdefault(g, []).append((own, got[j] > thr))
        line = f"central {region:.0%}: threshold {thr:.3f}"
        for g in ("template", "full_ddf20", "unique"):
            x = np.array(called.get(g, []), bool).reshape(-1, 2)
            line += (f" | {g}: own top-1 {x[:, 0].sum()}, replicated {x[x[:, 0], 1].mean():.1%}" if g != "unique"
                     else f" | unique replicated {x[:, 1].mean():.1%} of {len(x)}")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
