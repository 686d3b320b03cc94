"""Local memorization (issue 32): template copies and where in the image a copy is.

- Chen et al. (ICLR 2025, "Exploring Local Memorization in Diffusion Models via Bright Ending Attention"): the
  end token's cross-attention at the last step lights the memorized region (``memlab.attention``); memlab
  records it per seed, weighs Wen's first-step noise difference by it (localized detection) and measures the
  similarity to the top-1 training image inside it (``metrics.masked_similarity``).
- Webster (2023) and NeMo's list call the copies of a layout with other content inside "template verbatims";
  the built-in world plants them (``worldgen``: the ``template`` group) and calls them ``template copy`` where
  the masked score passes its own calibrated threshold and the global one does not.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics
from .attention import BRIGHT_ENDING_LAYERS
from .errors import MemlabError
from .generate import Settings
from .preprocess import open_rgb
from .runner import run_prompt


# what a template threshold was calibrated on: the score memlab computes now (the images' detail at DETAIL_SIGMA,
# inside the bright-ending map read from BRIGHT_ENDING_LAYERS) over seeds not replicated. A world's threshold made on
# another (raw pixels, every seed, a map of every layer) is not used until it is calibrated again
# (``build-world --refresh``, ``world create``)
MASKED_SCORE = {"detail_sigma": metrics.DETAIL_SIGMA, "on": "not replicated", "map": BRIGHT_ENDING_LAYERS}


def current_threshold(thr: dict | None) -> dict | None:
    """A world's template threshold if it was calibrated on the masked score memlab computes now
    (``MASKED_SCORE``), else None (no ``template copy`` verdict rather than one on another scale)."""
    return metrics.calibrated_as(thr, MASKED_SCORE)


def templates_of(index) -> dict:
    """item -> its template's number (worlds with planted templates; empty otherwise)."""
    items = index.items
    if "template" not in items:
        return {}
    t = items.drop_duplicates("item")
    return {int(i): int(k) for i, k in zip(t["item"], t["template"]) if k >= 0}


def calibrate_template_threshold(gen, index, descriptor, prompts, seeds, settings: Settings,
                                 fpr: float = 0.01, progress=None) -> tuple[dict, dict]:
    """The "template copy" thresholds, calibrated as the global one is, at ``fpr`` false positives, on
    generations of items seen once in training, over prompts that are not probes (so the card's figures are
    measured on other generations than the thresholds'), against each generation's top-1 training match:

    - the masked similarity inside each generation's bright-ending map (Chen et al.; the run verdict's: the
      images' detail, ``metrics.masked_similarity``) of the generations the global verdict does not call
      replicated (the partial verdict only speaks for those; on raw pixels, whole copies once set it at 0.861
      where 0.791 was the 1% of these, bench_template_mask.py);
    - the agreement share (``metrics.agreement_mask``, Webster's masked matching) of the generations the global
      verdict does not call replicated (the partial verdict only speaks for those): the index's ``agreement``
      for matched images (uploads), which are more often generations than training images.

    Returns (template threshold, agreement calibration)."""

    from .agreement import agreement_of, agreement_words

    scores, shares = [], []
    for p in (progress(list(prompts), desc="template threshold") if progress else prompts):
        got = []
        recs = run_prompt(gen, index, descriptor, p, seeds, ["none"], settings, out_dir=None, k=1,
                          on_seed=lambda r, im: got.append((r, im)))
        scores += [r["masked_score"] for r in recs if r["type"] == "seed" and r.get("masked_score") is not None
                   and r["verdict"] != "replicated"]
        for r, im in got:
            path = index.image_path(int(r["matches"][0]["row"]))
            if r["verdict"] != "replicated" and path is not None and path.is_file():
                shares.append(agreement_of(im, open_rgb(path))["share"])
    if not scores or not shares:
        raise MemlabError("no masked scores to calibrate the template threshold on: the index keeps no training "
                          "images, or the model records no bright-ending map")
    value = float(np.quantile(scores, 1.0 - fpr, method="higher"))
    how = (f"{len(prompts)} prompts of items seen once in training, not probes, x {len(seeds)} seeds, to their "
           f"top-1 training match; {settings.steps} steps, guidance {settings.guidance}")
    plan = {"prompts": len(prompts), "seeds": len(seeds)}  # a builder redoes the stage when its plan changes
    return ({"value": value, "fpr": fpr, "n": len(scores), **plan, **MASKED_SCORE,
             "source": f"{1 - fpr:.0%} quantile of the masked similarity (the images' detail at "
                       f"{metrics.DETAIL_SIGMA:g} px, inside each generation's bright-ending map from "
                       f"{BRIGHT_ENDING_LAYERS}) of the "
                       f"{len(scores)} generations not replicated as a whole of {how}"},
            {"threshold": float(np.quantile(shares, 1.0 - fpr, method="higher")), "fpr": fpr, "n": len(shares),
             **metrics.AGREEMENT, "on": "generations", **plan,
             "source": f"{1 - fpr:.0%} quantile of the agreement share ({agreement_words()}) of the {len(shares)} "
                       f"generations not replicated as a whole of {how}"})


def masked_passes(masked: float | None, threshold: float, share: float | None = None,
                  share_threshold: float | None = None) -> bool:
    """The masked verdict's test (``metrics.verdict``'s, whole copies included): the masked score above its
    threshold and, where the seed records one, the agreement share above its own."""
    return (masked is not None and masked > threshold
            and (share is None or share_threshold is None or share > share_threshold))


def template_figures(base: pd.DataFrame, masked_threshold: float | None) -> dict | None:
    """Issue 32's figures on the unmitigated probes: for the template group, among seeds whose top-1 is a
    picture of their own template, the share the masked verdict calls a copy (masked score above its
    threshold, and the agreement share above its own where the index calibrated one: ``metrics.verdict``) and
    the share the global verdict does; unique probes' masked false positives; full duplication's share still
    called ``replicated``. The masked score alone is reported beside (``..._masked_alone``)."""
    if masked_threshold is None or "template" not in set(base["group"]):
        return None

    def seeds(group):
        g = base[base["group"] == group]
        agree = g["agreement"] if "agreement" in g else [[(None, None)] * len(v) for v in g["verdicts"]]
        return [(m, rep, own, v, a) for ms, reps, owns, vs, ags in zip(g["masked"], g["replicated"], g["own_top1"],
                                                                      g["verdicts"], agree)
                for m, rep, own, v, a in zip(ms, reps, owns, vs, ags)]

    def masked(s):
        return masked_passes(s[0], masked_threshold, *s[4])

    def alone(s):
        return s[0] is not None and s[0] > masked_threshold
    tm = [s for s in seeds("template") if s[2]]
    uq = [s for s in seeds("unique") if s[0] is not None]
    full = sorted((g for g in set(base["group"]) if g.startswith("full_ddf")), key=lambda g: int(g[8:]))
    hi = seeds(full[-1]) if full else []

    def share(group, test):
        return float(np.mean([test(s) for s in group])) if group else None
    return {"masked_threshold": masked_threshold,
            "agreement_threshold": next((s[4][1] for s in tm + uq if s[4][1] is not None), None),
            "template_seeds_own_template": len(tm),
            "template_seeds": int(sum(len(v) for v in base[base["group"] == "template"]["verdicts"])),
            "masked_calls_copy": share(tm, masked), "masked_alone_calls_copy": share(tm, alone),
            "global_calls_copy": share(tm, lambda s: s[1]),
            "verdict_template_copy": share(tm, lambda s: s[3] == "template copy"),
            "unique_masked_false_positives": share(uq, masked), "unique_masked_alone_false_positives": share(uq, alone),
            "unique_seeds": len(uq),
            "full_high_still_replicated": share(hi, lambda s: s[3] == "replicated")}


PROBE_LABELS = ("verbatim", "template")  # a list's probes scored both ways (NeMo's MV and TV; issue 32)


def both_ways(records) -> dict | None:
    """A run's seed records counted by the global verdict and by the masked verdict (issue 32): seeds, the
    template threshold, ``replicated``, ``masked_above`` (the masked score above it and the agreement share
    above its own where recorded: ``masked_passes``, whole copies included) and ``template_copy``; None without
    that threshold."""
    thr = next((r.get("masked_threshold") for r in records if r.get("masked_threshold") is not None), None)
    if thr is None:
        return None
    return {"seeds": len(records), "threshold": float(thr),
            "replicated": sum(r["verdict"] == "replicated" for r in records),
            "masked_above": sum(masked_passes(r.get("masked_score"), thr, r.get("agreement_share"),
                                              r.get("agreement_threshold")) for r in records),
            "template_copy": sum(r["verdict"] == "template copy" for r in records)}


def probe_table(gen, index, descriptor, probes: pd.DataFrame, seeds, settings: Settings,
                labels=PROBE_LABELS, progress=None) -> pd.DataFrame:
    """A listed world's probes scored both ways (issue 32): each probe of ``labels`` generated on ``seeds``
    and matched, with per probe the seeds the global verdict calls ``replicated`` (whole-image copies), the
    seeds that pass the masked verdict's test (``masked_passes``: the masked score inside the bright-ending map
    above the world's template threshold, and the agreement share above its own), the seeds called ``template
    copy`` (masked, and not whole), the seeds whose top-1 is the prompt's own training image,
    and the mean global and masked scores."""
    todo = probes[probes["label"].isin(labels)]
    own_ids = todo["training_id"].astype(str).where(todo["training_id"].notna(), "") if "training_id" in todo \
        else pd.Series([""] * len(todo), index=todo.index)
    rows = []
    pairs = list(zip(todo["prompt"].astype(str), todo["label"].astype(str), own_ids))
    for prompt, label, own in (progress(pairs, desc="probes, both ways") if progress else pairs):
        recs = [r for r in run_prompt(gen, index, descriptor, prompt, seeds, ["none"], settings, out_dir=None, k=1)
                if r["type"] == "seed"]
        masked = [r.get("masked_score") for r in recs]
        counts = both_ways(recs) or {"replicated": sum(r["verdict"] == "replicated" for r in recs),
                                     "masked_above": 0, "template_copy": 0}
        rows.append({"prompt": prompt, "label": label, "seeds": len(recs), "replicated": counts["replicated"],
                     "masked_above": counts["masked_above"], "template_copy": counts["template_copy"],
                     "own_top1": sum(own != "" and str(r["matches"][0]["id"]) == own for r in recs),
                     "mean_score": float(np.mean([r["score"] for r in recs])) if recs else None,
                     "mean_masked_score": (float(np.mean([m for m in masked if m is not None]))
                                           if any(m is not None for m in masked) else None)})
    return pd.DataFrame(rows, columns=["prompt", "label", "seeds", "replicated", "masked_above", "template_copy",
                                       "own_top1", "mean_score", "mean_masked_score"])


def probe_table_summary(table: pd.DataFrame) -> dict:
    """Per label, how many probes each verdict calls copies: a probe counts when at least half its seeds are
    called (as the card's detectors count a probe that replicates), by the global verdict (``replicated``)
    and by the masked one (``masked_passes``, whole copies included)."""
    out = {}
    for label, g in table.groupby("label", sort=False):
        half = g["seeds"] / 2
        out[str(label)] = {"probes": len(g), "seeds": int(g["seeds"].sum()),
                           "global_calls_copy": int((g["replicated"] >= half).sum()),
                           "masked_calls_copy": int((g["masked_above"] >= half).sum()),
                           "seeds_replicated": int(g["replicated"].sum()),
                           "seeds_masked_above": int(g["masked_above"].sum()),
                           "seeds_template_copy": int(g["template_copy"].sum()),
                           "seeds_own_top1": int(g["own_top1"].sum())}
    return out


def object_region(regions: str) -> np.ndarray | None:
    """The drawn objects' boxes of an item (its ``regions``: ``obj:x0,y0,x1,y1`` entries, ``;``-separated) as a
    mask at ``metrics.MASK_SIDE``; None when it names no object."""
    boxes = [b for b in str(regions).split(";") if b.startswith("obj:")]
    if not boxes:
        return None
    region = np.zeros((metrics.MASK_SIDE, metrics.MASK_SIDE), bool)
    for b in boxes:
        x0, y0, x1, y1 = (int(v) for v in b[4:].split(","))
        region[max(0, y0):y1, max(0, x0):x1] = True
    return region


def bright_ending_coverage(base: pd.DataFrame, index, group: str) -> dict | None:
    """How much more the bright-ending map of a full-duplication generation lights its copied objects than the
    rest (``metrics.mask_coverage`` against the objects' boxes the world drew, ``regions``), over the seeds
    whose top-1 is the probe's own image; per seed, then the median and the share above 1."""
    items = index.items.drop_duplicates("item")
    if "regions" not in items:
        return None
    regions = dict(zip(items["item"].astype(int), items["regions"].astype(str)))
    g = base[base["group"] == group]
    ratios = []
    for item, maps, owns in zip(g["item"], g["maps"], g["own_top1"]):
        region = object_region(regions.get(int(item), ""))
        if region is None:
            continue
        ratios += [metrics.mask_coverage(metrics.mask_to_image(m), region) for m, own in zip(maps, owns)
                   if own and m is not None]
    if not ratios:
        return None
    return {"group": group, "seeds": len(ratios), "median_inside_over_outside": float(np.median(ratios)),
            "share_above_1": float(np.mean(np.asarray(ratios) > 1)),
            "definition": "mean of the bright-ending map (64 x 64) over the drawn objects' boxes / its mean elsewhere"}


def format_local(m: dict) -> list[str]:
    """The card's lines for template copies and the bright-ending map."""
    def pct(x):
        return "-" if x is None else f"{x:.1%}"

    lines = []
    t = m.get("template")
    if t:
        agree = t.get("agreement_threshold")
        both = f" and agreement share above {agree:.3f}" if agree is not None else ""
        lines.append(f"template copies (masked threshold {t['masked_threshold']:.3f}{both}): of {t['template_seeds']} "
                     f"template seeds, {t['template_seeds_own_template']} have a picture of their own template at "
                     f"top-1; the masked verdict calls {pct(t['masked_calls_copy'])} of those, the global one "
                     f"{pct(t['global_calls_copy'])}; unique probes' masked false positives "
                     f"{pct(t['unique_masked_false_positives'])} of {t['unique_seeds']}; full duplication still "
                     f"replicated {pct(t['full_high_still_replicated'])}")
        if agree is not None and t.get("masked_alone_calls_copy") is not None:
            lines.append(f"  the masked score alone (no agreement check): {pct(t['masked_alone_calls_copy'])} of the "
                         f"template seeds, unique probes' false positives {pct(t['unique_masked_alone_false_positives'])}")
    c = m.get("bright_ending_coverage")
    if c:
        lines.append(f"bright-ending map on {c['group']} (own image at top-1, {c['seeds']} seeds): median "
                     f"{c['median_inside_over_outside']:.2f}x brighter on the drawn objects than elsewhere; above 1 "
                     f"for {c['share_above_1']:.1%}")
    return lines
