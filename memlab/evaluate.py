"""Measure a world's memorization on its probes (the figures of the world card and its benchmark).

Per probe group (unique, full / partial duplication at each ddf, keyword): over ``n_seeds`` seeds, no
mitigation, the calibrated verdict: multi-seed replication rate, the share of seeds whose top-1 match
is the probe's own training image ("recall of the original", Memory Triggers), dataset similarity and
the mean detection score; recall on copies made by the world's own model (from the index manifest) and
the share of non-copies flagged. Then every mitigation at its default strength on the full-duplication probes
at the higher ddf, same seeds; Wen et al.'s detection ROC AUC (full duplication vs unique probes); the
time to generate and match 8 seeds; and for the planted keyword, the share of generations whose top-1
match carries the hidden object, beside the share in the keyword's training images.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from . import metrics
from .cardchecks import checks_dict
from .compare import DETECTORS
from .generate import Settings
from .match import descriptor_for_index
from .mitigations import parse_strategy
from .local import bright_ending_coverage, template_figures, templates_of
from .runner import run_prompt

# DCR's four, Wen's, and the newer ones (issue 31): Ren's, NeMo's, Jain's static and dynamic transition
MITIGATIONS = ("rna", "rt", "cwr", "gni", "wen", "ren", "nemo", "jain", "jain:mode=dynamic", "sail")


def _probe_runs(gen, index, descriptor, probes: pd.DataFrame, seeds, strategies, settings, progress=None,
                aligner=None, summaries: list | None = None, judge=None):
    """Per probe and strategy (by its label, ``Strategy.label``): replication rate, original recall, detection
    (Wen's, and every method's), alignment, seconds per image, top-1 scores. ``summaries`` collects the
    run's summary records (for ``memlab.compare``); ``judge`` (images -> bools: does each generation feature
    the keyword's hidden object) is asked of every keyword probe's generations."""
    out = []
    it = probes.itertuples(index=False)
    labels = {parse_strategy(s).spec(): parse_strategy(s).label() for s in strategies}
    template_of = templates_of(index)
    for p in (progress(list(it), desc="probes") if progress else it):
        shown: dict = {}
        on_seed = (lambda rec, im: shown.__setitem__((rec["mitigation"]["spec"], rec["seed"]), im)) \
            if judge is not None and p.group == "keyword" else None
        recs = run_prompt(gen, index, descriptor, p.prompt, seeds, strategies, settings, out_dir=None, k=1,
                          aligner=aligner, on_seed=on_seed)
        if summaries is not None:
            summaries += [r for r in recs if r["type"] == "summary"]
        for spec, strat in labels.items():
            seed_recs = [r for r in recs if r["type"] == "seed" and r["mitigation"]["spec"] == spec]
            summ = next(r for r in recs if r["type"] == "summary" and r["mitigation"]["spec"] == spec)
            top_items = [int(index.items.iloc[r["matches"][0]["row"]]["item"]) for r in seed_recs]
            tmpl = int(getattr(p, "template", -1)) if pd.notna(getattr(p, "template", -1)) else -1
            # a template probe's own image is any picture of its template (the template is what repeats)
            own = [template_of.get(t, -1) == tmpl if tmpl >= 0 else t == int(p.item) for t in top_items]
            out.append({"prompt": p.prompt, "group": p.group, "item": int(p.item), "strategy": strat,
                        "replicated": [bool(r["replicated"]) for r in seed_recs], "own_top1": own,
                        "replication_rate": summ["replication_rate"],
                        "original_recall": float(np.mean(own)),
                        "detection": summ["detection_mean"], "detections": summ.get("detections_mean") or {},
                        "alignment": summ.get("alignment_mean"),
                        "seconds_per_image": summ["timing"]["generate_s"] / max(1, summ["n_seeds"]),
                        "scores": [r["score"] for r in seed_recs], "top_items": top_items,
                        "states": [r.get("mitigation_state") or {} for r in seed_recs],
                        "verdicts": [r.get("verdict") for r in seed_recs],
                        "masked": [r.get("masked_score") for r in seed_recs],
                        "agreement": [(r.get("agreement_share"), r.get("agreement_threshold")) for r in seed_recs],
                        "maps": [r.get("bright_ending") for r in seed_recs],
                        "hidden": [bool(h) for h in judge([shown[(spec, r["seed"])] for r in seed_recs])]
                        if shown else None})
    return pd.DataFrame(out)


REACH = {"wen": ("wen_reached", "wen_final_norm", "wen_target"),  # the records' mitigation_state keys
         "sail": ("sail_reached", "sail_final_loss", "sail_target")}


def optimizer_reach(runs: pd.DataFrame, label: str = "wen") -> dict | None:
    """An optimizing mitigation (Wen et al.'s, on the prompt embedding; Jeon et al.'s SAIL, on the starting
    noise), per seed: whether its score reached the target, and the score after the optimization (from the
    records' ``mitigation_state``)."""
    reached, final, target = REACH[label.split(":")[0]]
    st = [s for states in runs[runs["strategy"] == label]["states"] for s in states if reached in s]
    if not st:
        return None
    return {"seeds": len(st), "reached_share": float(np.mean([s[reached] for s in st])),
            "final_norm_mean": float(np.mean([s[final] for s in st])),
            "final_norm_max": float(np.max([s[final] for s in st])),
            "target": float(np.mean([s[target] for s in st]))}


def detector_figures(base: pd.DataFrame, high: str) -> dict:
    """Per detection method, on the unmitigated probes: ROC AUC by outcome (probes replicating at least half
    their seeds vs never; each probe's mean score) and of every group against the unique probes."""
    methods = sorted({m for d in base["detections"] for m in d if m in DETECTORS})  # (not a score's parts)
    pos = base[base["replication_rate"] >= 0.5]
    neg = base[base["replication_rate"] == 0]
    uq = base[base["group"] == "unique"]
    out = {}
    for m in methods:
        def scores(df):
            return np.array([d[m] for d in df["detections"] if m in d])
        has = base[[m in d for d in base["detections"]]]
        out[m] = {"auc_by_outcome": metrics.roc_auc(scores(pos), scores(neg)) if len(pos) and len(neg) else None,
                  "outcome_probes": [int(len(pos)), int(len(neg))],
                  "spearman_vs_replication": metrics.spearman(scores(has), has["replication_rate"]) if len(has) > 2
                  else None,
                  "auc_vs_unique": {g: metrics.roc_auc(scores(df), scores(uq)) for g, df in base.groupby("group")
                                    if g != "unique" and len(df) and len(uq)}}
    return out


def detector_seconds(gen, prompt: str, seeds, settings: Settings, repeats: int = 3) -> dict:
    """Seconds each detector costs on one batch of ``seeds`` (median of ``repeats``), computed alone: Wen's
    norm (one batched first-step pass), Ren's entropy (the same pass with its attention kept), Asthana's
    anisotropy (that pass and one more at a low-noise timestep), Chen et al.'s localized score (the first-step
    pass and one at the last timestep with the end token's maps kept), Jeon et al.'s sharpness (three passes),
    Carlini et al.'s clique (on vectors of the matching's size: no UNet pass)."""
    import torch

    from .attention import (AttentionContext, AttentionHub, bright_ending as end_map, local_detection,
                            prompt_lengths)
    from .sail import sharpness

    hub = AttentionHub.of(gen.pipe.unet)
    sched = gen.pipe.scheduler
    sched.set_timesteps(settings.steps, device=gen.device)
    size = gen.default_size()
    lat = gen.initial_latents(seeds, size, size) * sched.init_noise_sigma
    cond, uncond = gen.encode([prompt] * len(seeds))
    t0 = sched.timesteps[0]

    def wen():
        gen.clean_detection(lat, t0, cond, uncond)

    def ren():
        with hub.context(AttentionContext(record=True)):
            gen.clean_detection(lat, t0, cond, uncond)

    def asthana():
        gen.clean_detection(lat, t0, cond, uncond)
        gen.anisotropy(lat, cond, uncond)

    lengths = prompt_lengths(gen.tokenizer, [prompt] * len(seeds))

    def bright_ending():
        _, diff = gen.clean_detection(lat, t0, cond, uncond, spatial=True)
        ctx = AttentionContext(end_map=True, lengths=lengths, latent_hw=tuple(lat.shape[-2:]))
        with hub.context(ctx):
            gen.clean_detection(lat, sched.timesteps[-1], cond, uncond)
        local_detection(diff.numpy(), end_map(ctx.end_maps))

    def jeon():
        sharpness(gen, lat, t0, cond, uncond)

    vecs = np.random.default_rng(0).standard_normal((len(seeds), 128)).astype(np.float32)

    def carlini():  # the clique alone: the generations' vectors are the matching's own
        metrics.largest_clique(vecs @ vecs.T, 0.95)

    out = {}
    with torch.no_grad():
        for name, fn in (("wen", wen), ("ren", ren), ("asthana", asthana), ("bright_ending", bright_ending),
                         ("jeon", jeon), ("carlini", carlini)):
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            out[name] = float(np.median(times))
    return out


def first_step_detection(gen, prompts, seeds, settings: Settings) -> np.ndarray:
    """Wen et al.'s score at the first step, clean branches, per (prompt, seed): [n_prompts, n_seeds]."""
    h = w = gen.default_size()
    out = np.zeros((len(prompts), len(seeds)), np.float64)
    gen.pipe.scheduler.set_timesteps(settings.steps, device=gen.device)
    t0 = gen.pipe.scheduler.timesteps[0]
    lat = gen.initial_latents(seeds, h, w) * gen.pipe.scheduler.init_noise_sigma
    for i, p in enumerate(prompts):
        cond, uncond = gen.encode([p] * len(seeds))
        out[i] = gen.clean_detection(lat, t0, cond, uncond).cpu().numpy()
    return out


def calibrate_wen_target(gen, prompts, seeds, settings: Settings, fpr: float = 0.01) -> dict:
    """An absolute target for Wen et al.'s mitigation, calibrated per model as their detection threshold
    is: the value that keeps ``fpr`` of the first-step scores of non-memorized prompts above it."""
    scores = first_step_detection(gen, prompts, seeds, settings).ravel()
    value = float(np.quantile(scores, 1.0 - fpr, method="higher"))
    return {"wen_target": value,
            "wen_target_source": (f"{1 - fpr:.0%} quantile of the first-step detection score (clean branches) of "
                                  f"{len(prompts)} unique probes x {len(seeds)} seeds at {settings.steps} steps, "
                                  f"guidance {settings.guidance}: prompts below it are left untouched")}


def _group_table(df: pd.DataFrame, threshold: float, planted_of: dict | None = None) -> dict:
    """Per probe group and strategy. The replication rate splits into seeds whose replicated top-1 is the
    probe's own item (``replicated_own``) and another training item (``replicated_other``: the model
    copied a different image, or a false positive); ``replicated_other_by_group`` counts those seeds by
    the other item's planted group (``planted_of``: item -> group)."""
    table = {}
    for (group, strat), g in df.groupby(["group", "strategy"]):
        scores = np.concatenate(g["scores"].to_list())
        rep, own = np.concatenate(g["replicated"].to_list()), np.concatenate(g["own_top1"].to_list())
        other = [planted_of.get(t, "?") if planted_of else "?" for reps, owns, tops in
                 zip(g["replicated"], g["own_top1"], g["top_items"]) for r, o, t in zip(reps, owns, tops) if r and not o]
        table.setdefault(group, {})[strat] = {
            "probes": int(len(g)), "replication_rate": float(g["replication_rate"].mean()),
            "replicated_own": float(np.mean(rep & own)), "replicated_other": float(np.mean(rep & ~own)),
            "replicated_given_own_top1": float(np.mean(rep[own])) if own.any() else None,
            "replicated_other_by_group": {k: other.count(k) for k in sorted(set(other))},
            "original_recall": float(g["original_recall"].mean()),
            "dataset_similarity": metrics.dataset_similarity(scores, threshold)["p95"],
            "detection_mean": float(g["detection"].mean()),
            **_method_columns(g)}
    return table


def paired_by_probe(runs: pd.DataFrame, strategy: str, base: str = "none") -> dict:
    """A mitigation against ``base`` on the same probes and seeds (``_probe_runs`` rows): ``paired``, the seeds
    it stopped and made copying summed over the probes (``metrics.paired_change`` per probe), and
    ``change_interval``, the change in replication rate with a 95% interval that resamples probes
    (``metrics.bootstrap_mean``)."""
    b = runs[runs["strategy"] == base].set_index("prompt")
    m = runs[runs["strategy"] == strategy].set_index("prompt")
    common = [p for p in m.index if p in b.index]
    pcs = [metrics.paired_change(dict(enumerate(b.at[p, "replicated"])), dict(enumerate(m.at[p, "replicated"])))
           for p in common]
    change = metrics.bootstrap_mean([m.at[p, "replication_rate"] - b.at[p, "replication_rate"] for p in common],
                                    unit="probes")
    return {"paired": {"fewer": sum(pc["fewer"] for pc in pcs), "more": sum(pc["more"] for pc in pcs),
                       "probes": len(common)},
            "change_interval": change}


def _method_columns(g: pd.DataFrame) -> dict:
    """The newer methods' columns of a group's runs (runs recorded before them have none)."""
    out = {}
    if "detections" in g:
        out["detections_mean"] = {m: float(np.mean([d[m] for d in g["detections"] if m in d]))
                                  for m in sorted({m for d in g["detections"] for m in d})}
    if "alignment" in g:
        a = pd.to_numeric(g["alignment"], errors="coerce")
        out.update(alignment=float(a.dropna().mean()) if a.notna().any() else None,
                   alignment_probes=int(a.notna().sum()))
    if "seconds_per_image" in g:
        out["seconds_per_image"] = float(g["seconds_per_image"].mean())
    return out


def evaluate_world(world, n_seeds: int = 10, keyword_probes: int = 12, progress=None,
                   log=lambda m: print(m, file=sys.stderr)) -> dict:
    """The built-in world's measured memorization (the card's ``measured``): every probe group over
    ``n_seeds`` seeds, the mitigations on the highest full duplication, detection, model copies, non-copies,
    token attribution and the hidden object, with the card's checks."""
    gen = world.generator()
    index = world.index()
    descriptor = descriptor_for_index(index)
    thr = index.threshold(descriptor.name)
    settings = Settings(steps=int(world.defaults["steps"]), guidance=float(world.defaults["guidance"]))
    probes = pd.read_csv(world.file("probes"))
    seeds = list(range(n_seeds))
    groups = sorted(set(probes["group"]))
    full = sorted((g for g in groups if g.startswith("full_ddf")), key=lambda g: int(g[8:]))
    high = full[-1]
    kw = probes[probes["group"] == "keyword"].head(keyword_probes)
    base_probes = pd.concat([probes[probes["group"] != "keyword"], kw])

    aligner = world.aligner()
    log(f"[evaluate] baseline: {len(base_probes)} probes x {n_seeds} seeds")
    judge = world.object_classifier()
    base = _probe_runs(gen, index, descriptor, base_probes, seeds, ["none"], settings, progress, aligner,
                       judge=judge.features if judge is not None else None)
    log(f"[evaluate] mitigations {', '.join(MITIGATIONS)} on {high}")
    summaries: list = []
    mit = _probe_runs(gen, index, descriptor, probes[probes["group"] == high], seeds, ["none", *MITIGATIONS],
                      settings, progress, aligner, summaries)
    labels = [parse_strategy(m).label() for m in MITIGATIONS]
    items = index.items.drop_duplicates("item")
    planted_of = dict(zip(items["item"].astype(int), items["planted"].astype(str))) if "planted" in items else None
    table = _group_table(pd.concat([base, mit[mit["strategy"] != "none"]]), thr["value"], planted_of)
    none_on_high = _group_table(mit[mit["strategy"] == "none"], thr["value"], planted_of)[high]["none"]

    det_pos = base[base["group"] == high]["detection"].to_numpy()
    det_neg = base[base["group"] == "unique"]["detection"].to_numpy()
    hi_rate = table[high]["none"]["replication_rate"]
    hi_align = table[high]["none"]["alignment"]
    mitig = {m: {**table[high][m], "change_vs_none": table[high][m]["replication_rate"] - hi_rate,
                 "relative_cut": (1 - table[high][m]["replication_rate"] / hi_rate) if hi_rate else None,
                 "alignment_ratio": (table[high][m]["alignment"] / hi_align)
                 if table[high][m]["alignment"] is not None and hi_align else None,
                 "added_seconds_per_image": table[high][m]["seconds_per_image"] - none_on_high["seconds_per_image"]}
             for m in labels}
    for m in labels:  # how sure each cut is: seed by seed on the same probes and seeds, and over probes
        mitig[m].update(paired_by_probe(mit, m))

    obj = _hidden_object(world, items, base, judge, index)
    # non-copies: generations of unique probes whose top-1 is not their own item (flagged = false positive)
    uq = base[base["group"] == "unique"]
    non = [rep for reps, owns in zip(uq["replicated"], uq["own_top1"]) for rep, own in zip(reps, owns) if not own]
    hi_orig = table[high]["none"]["original_recall"]
    first = base[base["group"] == high].iloc[0]  # the lesson's first probe (``Lab.lesson_prompts``), seeds 0-7
    lesson = {"prompt": first["prompt"], "seeds": min(8, len(first["replicated"])),
              "replicated": int(sum(first["replicated"][:8]))}
    truth = {k: {kk: v[kk] for kk in ("n", "recall", "copy_top1")}
             for k, v in thr.get("ground_truth", {}).items()}
    att, template_words = _attribution_check(gen, probes[probes["group"] == high]["prompt"], settings)
    att_unique, _ = _attribution_check(gen, probes[probes["group"] == "unique"]["prompt"], settings)  # the control

    tmpl = template_figures(base, (gen.template_threshold or {}).get("value"))  # issue 32
    coverage = bright_ending_coverage(base, index, high)
    t0 = time.perf_counter()
    run_prompt(gen, index, descriptor, probes[probes["group"] == high]["prompt"].iloc[0], list(range(8)),
               ["none"], settings, out_dir=None)
    t8 = time.perf_counter() - t0
    result = {
        "seeds_per_probe": n_seeds, "settings": settings.to_dict(),
        "descriptor": {"name": descriptor.name, "model": descriptor.model, "preset": descriptor.preset,
                       "threshold": thr["value"], "threshold_source": thr["source"],
                       "score": (index.descriptor_info(descriptor.name).get("score_norm") or {}).get("words"),
                       "indexed": index.descriptor_info(descriptor.name).get("indexed")},
        "groups": {g: table[g]["none"] for g in table},
        "mitigations_on": high, "mitigations": mitig,
        "detection_auc": metrics.roc_auc(det_pos, det_neg) if len(det_pos) and len(det_neg) else None,
        "detection_auc_pair": [high, "unique"],
        "detectors": {"figures": detector_figures(base, high), "definitions": DETECTORS,
                      "seconds_per_batch_of_8": detector_seconds(gen, probes[probes["group"] == high]["prompt"].iloc[0],
                                                                 list(range(8)), settings)},
        "mitigation_seconds_none_on_high": none_on_high["seconds_per_image"],
        "wen_reach": optimizer_reach(mit), "sail_reach": optimizer_reach(mit, "sail"),
        "alignment": {**(aligner.info() if aligner is not None else {}),
                      "none_on_high": hi_align},
        "seconds_8_seeds": t8,
        "model_copies": truth,
        "non_copies": {"what": "generations of unique probes whose top-1 is not their own item",
                       "n": len(non), "flagged": float(np.mean(non)) if non else None,
                       "nominal_fpr": thr.get("fpr_target", thr.get("fpr")),
                       "background_fpr": thr.get("fpr"),
                       "nominal_what": "the threshold's false-positive rate on the background of distinct training "
                                       "images (training vs training)"},
        "replicated_over_original": (hi_rate / hi_orig) if hi_orig else None,
        "lesson_first_probe": lesson,
        "token_attribution": {"probes": len(att), "distinctive_above_template": int(sum(att)),
                              "control_unique_probes": len(att_unique),
                              "control_distinctive_above_template": int(sum(att_unique)),
                              "definition": "mean attribution (input-embedding gradient, first step, seeds 0-3) of "
                                            "the caption's distinctive words above that of its template words "
                                            f"({', '.join(sorted(template_words))})"},
        "wen_target": getattr(gen, "wen_target", None),
        "checks": None,  # (below: from the figures above, as any card's checks are recomputed)
        "hidden_object": obj,
        "template": tmpl, "template_threshold": gen.template_threshold, "bright_ending_coverage": coverage,
        "per_probe": base.drop(columns=["scores", "replicated", "own_top1", "states", "verdicts", "masked",
                                        "agreement", "maps", "hidden"]).to_dict(orient="records"),
    }
    result["checks"] = checks_dict(result)
    return result


def _hidden_object(world, items, base, judge=None, index=None) -> dict:
    """The planted keyword's hidden object: the share of its training items that carry it; the share of the
    keyword's *generations* that feature it (Memory Triggers' measure), told by ``judge`` (a classifier trained
    on the world's renders, ``memlab.objects``: its held-out accuracy and its share on the keyword's training
    images stated beside); and the share whose top-1 match carries it (empty when the world plants none)."""
    kw_name = next(iter(world.manifest.get("keywords", {"": {}})))
    hidden = world.manifest.get("keywords", {}).get(kw_name, {}).get("hidden_object")
    if not hidden:
        return {}
    kw_items = items[items["keyword"] == kw_name]
    has = kw_items["objects"].str.split(",").apply(lambda o: hidden in o)
    kw_runs = base[base["group"] == "keyword"]
    item_has = dict(zip(items["item"], items["objects"].str.split(",").apply(lambda o: hidden in o)))
    gen_has = [item_has[t] for tops in kw_runs["top_items"] for t in tops]
    return {"keyword": kw_name, "object": hidden, "training_share": float(has.mean()),
            "training_items": int(len(kw_items)),
            "planted_share": world.manifest["keywords"][kw_name].get("planted_share"),
            "generation_share_top1": float(np.mean(gen_has)) if gen_has else None,
            "generations": len(gen_has), "whole_set_share": float(
                items["objects"].str.split(",").apply(lambda o: hidden in o).mean()),
            **_judged(judge, kw_runs, kw_items, index)}


def _judged(judge, kw_runs, kw_items, index) -> dict:
    """The classifier's figures: its share on the keyword's generations and on its training images."""
    if judge is None or "hidden" not in kw_runs or kw_runs["hidden"].isna().all():
        return {}
    from .preprocess import open_rgb

    seen = [h for hs in kw_runs["hidden"] if hs is not None for h in hs]
    train = [open_rgb(p) for r in kw_items.index if (p := index.image_path(int(r))) is not None]
    return {"generation_share": float(np.mean(seen)), "generation_share_by": judge.info(),
            "training_share_by_classifier": float(np.mean(judge.features(train))) if train else None}


def _attribution_check(gen, prompts, settings) -> tuple[list[bool], set]:
    """Wen et al.'s token attribution on the full-duplication probes: per probe, whether the words that make
    its caption distinctive outrank the caption template's words (mean attribution of each set)."""
    from .worldgen import TEMPLATE_WORDS

    att = []
    for p in prompts:
        toks = gen.token_attribution(p, seeds=range(4), settings=settings)[1:-1]
        dist = [t["attribution"] for t in toks if t["token"].strip() not in TEMPLATE_WORDS]
        tmpl = [t["attribution"] for t in toks if t["token"].strip() in TEMPLATE_WORDS]
        att.append(bool(dist and tmpl and np.mean(dist) > np.mean(tmpl)))
    return att, TEMPLATE_WORDS
