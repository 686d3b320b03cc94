"""Where is the copy: the masked verdict's region from the bright-ending map (Chen et al., what memlab ships)
against the region where a generation and its training match agree (Webster's masked matching), on the
built-in world (issue 32).

Each seed of the template probes, the unique probes and the full ddf 20 probes (seeds 0-9), and of the
template threshold's calibration prompts (build-world's ``TEMPLATE_CALIBRATION``: captions of items seen
once, not probes, seeds 0-3), is generated and matched as ``memlab run`` does. For each seed and its top-1
training image (both at 64 x 64):

- the masked score: the per-channel correlation of the images' detail (each minus its Gaussian blur
  of ``metrics.DETAIL_SIGMA`` px) inside the seed's bright-ending map (``metrics.masked_similarity``),
  against the world's template threshold (alone: the verdict before the agreement check);
- the same, less the mean of the same score against the seed's next 1-3 other distinct training images (score
  normalization, ``memlab.scorenorm``, applied to the masked score; tried, not chosen);
- the same inside the same map on raw pixels (what memlab shipped before) and at other detail scales (the
  scales tried), each at the 99% quantile of its own scores over the calibration seeds not replicated;
- the agreement share: the image cut into windows (8 or 16 px); a window agrees when the per-channel
  correlation of its values passes a cutoff (0.5 to 0.8), over the channels with structure in both: the
  images' detail (``metrics.detail`` at 1 px; a standard deviation above 1), and raw pixels as memlab measured
  it before (above 4); the share of windows that agree. Its threshold: the 99% quantile over the calibration
  seeds that the global verdict does not call ``replicated`` (the masked verdict only speaks for those).

- the shipped agreement share (``metrics.AGREEMENT``) against the index's own threshold (what ``memlab match``
  uses for uploads: on the built-in world, 1% of the same calibration generations, build-world's stage 5c).

- either region: a seed called where the bright-ending masked score or the agreement share passes its own
  threshold; at the shipped pair, and with both raised to one quantile of the calibration seeds;
- both regions (the run verdict since issue 32's second pass, ``metrics.verdict``): the masked score and the
  agreement share each pass their own threshold; at the shipped pair, and with both lowered to one quantile.

``--validate``: the probes' seeds 10-19 in place of the card's 0-9 (the seeds the detail scale was chosen on).

Printed: for each, the template seeds whose top-1 is their own template called (issue 32's target: 80%),
the unique probes' seeds called (target at most 3%), and the full ddf 20 seeds. ``--compare M,A``: other
thresholds for the shipped scores (another calibration's masked and agreement thresholds) against the same
generations: the share of the calibration generations not replicated above each (what a 1% threshold should
leave) and the seeds they call.

    python -m benchmarks.bench_template_mask [--world assets/world] [--compare 0.756,0.375] [--validate]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# agreement variants: (window, cutoff, detail sigma, min std); sigma 0 with min std 4: raw pixels (before)
AGREEMENTS = ((8, 0.5, 1.0, 1.0), (8, 0.6, 1.0, 1.0), (8, 0.8, 1.0, 1.0), (16, 0.6, 1.0, 1.0),
              (8, 0.6, 0.0, 4.0), (8, 0.8, 0.0, 4.0), (16, 0.6, 0.0, 4.0), (16, 0.8, 0.0, 4.0))


def agreement_share(a, b, window: int, cutoff: float, sigma: float, min_std: float) -> float:
    """The share of ``window`` x ``window`` windows where the two images' detail at ``sigma`` (0: pixels)
    correlates above ``cutoff`` (``metrics.agreement_mask``)."""
    from memlab.metrics import agreement_mask

    return float(agreement_mask(a, b, window, cutoff, min_std, sigma).mean())


def seeds_of(world, probe_seeds=range(10)) -> list[dict]:
    """Every seed the comparison needs: group, whether its top-1 is its own image (or template), the global
    verdict, the shipped masked score, the bright-ending map, and both images at 64 x 64."""
    import pandas as pd
    from PIL import Image

    from memlab import buildworld
    from memlab.generate import Settings
    from memlab.local import templates_of
    from memlab.match import descriptor_for_index
    from memlab.runner import run_prompt
    from memlab.scorenorm import is_mirrored

    gen, index = world.generator(), world.index()
    desc = descriptor_for_index(index)
    st = Settings(steps=int(world.defaults["steps"]), guidance=float(world.defaults["guidance"]))
    probes = pd.read_csv(world.file("probes"))
    items = index.items.drop_duplicates("item")
    pool = items[(items["planted"] == "unique") & ~items["item"].isin(set(probes["item"]))]
    n, n_seeds = buildworld.TEMPLATE_CALIBRATION
    jobs = [("calibration", p, -1, -1, range(n_seeds))
            for p in pool.sample(n=min(n, len(pool)), random_state=1)["caption"]]
    for g in ("template", "unique", "full_ddf20"):
        jobs += [(g, p.prompt, int(p.item), int(p.template) if g == "template" else -1, probe_seeds)
                 for p in probes[probes["group"] == g].itertuples()]
    template_of, side, out = templates_of(index), 64, []

    def load(row):
        with Image.open(index.image_path(row)) as t:
            return np.asarray(t.convert("RGB").resize((side, side), Image.LANCZOS))
    for g, prompt, item, tmpl, seeds in jobs:
        got = []
        run_prompt(gen, index, desc, prompt, list(seeds), ["none"], st, k=K_OTHERS * 4 + 4,
                   on_seed=lambda r, im: got.append((r, im)))
        for r, im in got:
            row = r["matches"][0]["row"]
            top = int(index.items.iloc[row]["item"])
            out.append({"group": g, "own": (template_of.get(top, -1) == tmpl) if tmpl >= 0 else top == item,
                        "verdict": r["verdict"], "masked": r.get("masked_score"), "map": r.get("bright_ending"),
                        "gen": np.asarray(im.convert("RGB").resize((side, side), Image.LANCZOS)), "train": load(row),
                        "mirrored": is_mirrored(r.get("view")),
                        "others": [load(o) for o in other_images(index, r["matches"], K_OTHERS)]})
    return out


K_OTHERS = 3  # the masked score normalized by the next k other distinct images' (k = 1 .. K_OTHERS)


def other_images(index, matches, k: int) -> list[int]:
    """The rows of the first ``k`` matches after the top-1 that show other distinct images than it and than
    each other (score normalization's background set, ``memlab.scorenorm``), in the matches' order."""
    distinct = index.items["distinct"].to_numpy() if "distinct" in index.items else index.items["item"].to_numpy()
    seen, rows = {int(distinct[matches[0]["row"]])}, []
    for m in matches[1:]:
        d = int(distinct[m["row"]])
        if d not in seen and len(rows) < k:
            seen.add(d)
            rows.append(int(m["row"]))
    return rows


def normalized_masked(s: dict, k: int, sigma: float) -> float | None:
    """The seed's masked score less the mean masked score against its next ``k`` other distinct images
    (score normalization applied to the masked similarity: a shared texture's detail matches them alike)."""
    from memlab.metrics import mask_to_image, masked_similarity

    if s["map"] is None or len(s["others"]) < k:
        return None
    gen, m = s["gen"].astype(np.float64), mask_to_image(s["map"])
    if s["mirrored"]:
        gen, m = gen[:, ::-1], m[:, ::-1]
    own = masked_similarity(gen, s["train"], m, sigma=sigma)
    return own - float(np.mean([masked_similarity(gen, o, m, sigma=sigma) for o in s["others"][:k]]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=str(ROOT / "assets" / "world"))
    ap.add_argument("--compare", default=None, help="MASKED,AGREEMENT thresholds to measure on the same generations")
    ap.add_argument("--validate", action="store_true", help="the probes' seeds 10-19 (not the card's 0-9)")
    a = ap.parse_args()
    try:
        compare = tuple(float(x) for x in a.compare.split(",")) if a.compare else None
    except ValueError:
        compare = ()
    if compare is not None and len(compare) != 2:
        ap.error(f"--compare takes two numbers, MASKED,AGREEMENT (got {a.compare!r})")
    from memlab.metrics import AGREEMENT, DETAIL_SIGMA, mask_to_image, masked_similarity
    from memlab.world import World

    world = World.load(a.world)
    masked_thr = (world.manifest.get("template_threshold") or {}).get("value")
    if masked_thr is None:
        print(f"skip: {a.world} calibrates no template threshold")
        return 0
    seeds = seeds_of(world, range(10, 20) if a.validate else range(10))
    tm = [s for s in seeds if s["group"] == "template" and s["own"]]
    uq = [s for s in seeds if s["group"] == "unique"]
    full = [s for s in seeds if s["group"] == "full_ddf20"]
    calib = [s for s in seeds if s["group"] == "calibration" and s["verdict"] != "replicated"]
    print(f"built-in world {a.world}: {len(tm)} template seeds with their own template at top-1, {len(uq)} unique "
          f"seeds, {len(full)} full ddf 20 seeds; {len(calib)} calibration seeds not replicated")
    n_cal = sum(s["group"] == "calibration" for s in seeds)
    world_cal = world.manifest["template_threshold"]
    print(f"the world's masked threshold {masked_thr:.3f} was calibrated on {world_cal['n']} generations; "
          f"{n_cal} calibration generations here")
    print(f"{'region':<44}{'threshold':>10}{'template':>10}{'unique':>9}{'full20':>9}")

    def share(group, fn, thr):
        return np.mean([fn(s) is not None and fn(s) > thr for s in group])
    masked = lambda s: s["masked"]  # noqa: E731
    print(f"{f'bright-ending map, detail at {DETAIL_SIGMA:g} px, alone':<44}{masked_thr:>10.3f}{share(tm, masked, masked_thr):>10.1%}"
          f"{share(uq, masked, masked_thr):>9.1%}{share(full, masked, masked_thr):>9.1%}")
    above = [s for s in uq if s["masked"] is not None and s["masked"] > masked_thr]
    print(f"  the unique seeds above it: {len(above)} of {len(uq)}, {sum(s['verdict'] == 'replicated' for s in above)} "
          f"of them replicated as a whole (the global verdict first), {sum(s['verdict'] == 'template copy' for s in above)} "
          f"called template copy ({np.mean([s['verdict'] == 'template copy' for s in uq]):.1%} of the unique seeds); "
          f"{sum(s['own'] for s in above)} with their own once-seen image at top-1")
    for sigma in sorted({0.0, 1.0, 2.0, 4.0} - {DETAIL_SIGMA}):  # raw pixels (before) and the other scales tried
        for s in seeds:
            s[sigma] = (None if s["map"] is None else
                        masked_similarity(s["gen"], s["train"], mask_to_image(s["map"]), sigma=sigma))
        get = lambda s, k=sigma: s[k]  # noqa: E731
        thr = float(np.quantile([get(s) for s in calib if get(s) is not None], 0.99, method="higher"))
        name = "raw pixels (before)" if sigma == 0 else f"detail at {sigma:g} px"
        print(f"{f'bright-ending map, {name}':<44}{thr:>10.3f}{share(tm, get, thr):>10.1%}"
              f"{share(uq, get, thr):>9.1%}{share(full, get, thr):>9.1%}")
    for k in range(1, K_OTHERS + 1):  # the masked score normalized as the global one is (memlab.scorenorm)
        get = lambda s, k=k: s.setdefault(("norm", k), normalized_masked(s, k, DETAIL_SIGMA))  # noqa: E731
        thr = float(np.quantile([get(s) for s in calib if get(s) is not None], 0.99, method="higher"))
        print(f"{f'... less the mean of the next {k} other images':<44}{thr:>10.3f}{share(tm, get, thr):>10.1%}"
              f"{share(uq, get, thr):>9.1%}{share(full, get, thr):>9.1%}")
    cal = world.index().manifest.get("agreement")
    shipped = (AGREEMENT["window"], AGREEMENT["cutoff"], AGREEMENT["detail_sigma"], AGREEMENT["min_std"])
    for key in set(AGREEMENTS) | {shipped}:
        for s in seeds:  # each seed's agreement share, once per variant
            s[key] = agreement_share(s["gen"], s["train"], *key)
    if cal:  # what ``memlab match`` uses for uploads: the index's own threshold
        get = lambda s: s[shipped]  # noqa: E731
        print(f"{'agreement, the index threshold (uploads)':<44}{cal['threshold']:>10.3f}{share(tm, get, cal['threshold']):>10.1%}"
              f"{share(uq, get, cal['threshold']):>9.1%}{share(full, get, cal['threshold']):>9.1%}")
    for key in AGREEMENTS:
        get = lambda s, k=key: s[k]  # noqa: E731
        thr = float(np.quantile([get(s) for s in calib], 0.99, method="higher"))
        what = f"detail at {key[2]:g} px" if key[2] else "raw pixels"
        print(f"{f'agreement, {what}, {key[0]}-px, > {key[1]}':<44}{thr:>10.3f}"
              f"{share(tm, get, thr):>10.1%}{share(uq, get, thr):>9.1%}{share(full, get, thr):>9.1%}")
    if not cal:
        return 0
    if compare:  # other thresholds on these generations: above a 1% threshold, about 1% of them should pass
        m_thr, a_thr = compare
        print(f"compared: masked {m_thr:.3f} is passed by {share(calib, masked, m_thr):.1%} of the {len(calib)} "
              f"calibration generations not replicated (template {share(tm, masked, m_thr):.1%}, unique {share(uq, masked, m_thr):.1%}); "
              f"agreement {a_thr:.3f} by {share(calib, lambda s: s[shipped], a_thr):.1%} of the {len(calib)} not "
              f"replicated (template {share(tm, lambda s: s[shipped], a_thr):.1%}, unique "
              f"{share(uq, lambda s: s[shipped], a_thr):.1%})")
    # either region: the masked score inside the bright-ending map or the agreement share (the index's window
    # and cutoff) passes its own threshold; at the two shipped thresholds (each 1%, so up to 2% together),
    # and with both at one quantile q of the calibration seeds not replicated

    def union(group, tm_thr, ag_thr):
        return np.mean([(s["masked"] is not None and s["masked"] > tm_thr) or s[shipped] > ag_thr for s in group])
    print(f"{'either: bright-ending or agreement (shipped)':<44}{'both':>10}{union(tm, masked_thr, cal['threshold']):>10.1%}"
          f"{union(uq, masked_thr, cal['threshold']):>9.1%}{union(full, masked_thr, cal['threshold']):>9.1%}"
          f"   calibration seeds called {union(calib, masked_thr, cal['threshold']):.1%}")
    def both(group, tm_thr, ag_thr):  # a verification: the two regions agree that a copy is there
        return np.mean([s["masked"] is not None and s["masked"] > tm_thr and s[shipped] > ag_thr for s in group])
    print(f"{'both: bright-ending and agreement (the verdict)':<44}{'both':>10}{both(tm, masked_thr, cal['threshold']):>10.1%}"
          f"{both(uq, masked_thr, cal['threshold']):>9.1%}{both(full, masked_thr, cal['threshold']):>9.1%}"
          f"   calibration seeds called {both(calib, masked_thr, cal['threshold']):.1%}")
    m_cal = [s["masked"] for s in calib if s["masked"] is not None]
    a_cal = [s[shipped] for s in calib]
    for q in (0.99, 0.995):
        tm_thr, ag_thr = (float(np.quantile(v, q, method="higher")) for v in (m_cal, a_cal))
        print(f"{f'either, both at the {q:.1%} quantile':<44}{f'{tm_thr:.3f}/{ag_thr:.3f}':>10}"
              f"{union(tm, tm_thr, ag_thr):>10.1%}{union(uq, tm_thr, ag_thr):>9.1%}{union(full, tm_thr, ag_thr):>9.1%}"
              f"   calibration seeds called {union(calib, tm_thr, ag_thr):.1%}")
    for q in (0.98, 0.95):  # both regions, each looser: how much of the calibration the pair leaves
        tm_thr, ag_thr = (float(np.quantile(v, q, method="higher")) for v in (m_cal, a_cal))
        print(f"{f'both regions, each at the {q:.0%} quantile':<44}{f'{tm_thr:.3f}/{ag_thr:.3f}':>10}"
              f"{both(tm, tm_thr, ag_thr):>10.1%}{both(uq, tm_thr, ag_thr):>9.1%}{both(full, tm_thr, ag_thr):>9.1%}"
              f"   calibration seeds called {both(calib, tm_thr, ag_thr):.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
