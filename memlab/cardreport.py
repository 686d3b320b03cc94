"""The built-in world's card (``evaluate.evaluate_world``'s ``measured``) as the report the About tab, ``build-world``
and docs/builtin-world.md show, with each figure's 95% interval computed from the card's own rows
(docs/methods.md, "How sure a rate is")."""
from __future__ import annotations

import json

from . import metrics
from .cardchecks import card_checks
from .local import format_local

INTERVAL_MAX_PROBES = 5_000  # a card's per-probe rows the report resamples for its intervals (the built-in world's: 72;
# a card from elsewhere with more is shown without them: the About tab is built at the app's start)


def _probe_rows(m: dict) -> list[dict]:
    """The card's per-probe rows the intervals resample: none past ``INTERVAL_MAX_PROBES`` (or not a list)."""
    rows = m.get("per_probe")
    return rows if isinstance(rows, list) and len(rows) <= INTERVAL_MAX_PROBES else []


def _held_out_text(h) -> str:
    """The scene classifier's held-out accuracy as a line reads it (per split: each label's accuracy, AUC for
    the multi-label ones); anything else as JSON."""
    def split(d):
        def part(name, key):
            x = d[key]
            return f"{name} {x['per_label']:.1%} (AUC {x['mean_auc']:.3f})" if isinstance(x, dict) else f"{name} {x:.1%}"
        return ", ".join(part(n, k) for n, k in (("shapes", "shapes"), ("object colours", "colours"),
                                                  ("background colour", "bg_colour"), ("background kind", "bg_kind")))
    try:
        return "; ".join(f"{name.replace('_', ' ')} (n={d['n']}): {split(d)}" for name, d in h.items())
    except (AttributeError, KeyError, TypeError):
        return json.dumps(h)


def _wilson_words(v: dict) -> str:
    """" (55.7-74.4%, n=96)": a recall's Wilson interval over its ``n`` items (one copy each), where n is known."""
    if not v.get("n"):
        return ""
    iv = metrics.recall_interval(v["recall"], v["n"])
    return f" ({iv['low']:.1%}-{iv['high']:.1%}, n={v['n']})"


def _outcome_probes(m: dict, *names: str) -> list[dict]:
    """The card's unmitigated probes that count for the AUC by outcome (replicating at least half their seeds, or
    never) and carry every detector ``names``."""
    return [r for r in _probe_rows(m) if r.get("strategy", "none") == "none"
            and (r["replication_rate"] >= 0.5 or r["replication_rate"] == 0)
            and all(n in (r.get("detections") or {}) for n in names)]


def _auc_words(m: dict, name: str) -> str:
    """" (95% interval 0.69-0.91)": a detector's AUC by outcome with its stratified bootstrap interval
    (``metrics.auc_interval``), from the card's per-probe rows, where they give the card's AUC again; beside
    Wen's, the paired difference from it (``metrics.auc_difference``)."""
    figures = m["detectors"]["figures"]
    pp = _outcome_probes(m, name)
    iv = metrics.auc_interval([r["detections"][name] for r in pp if r["replication_rate"] >= 0.5],
                              [r["detections"][name] for r in pp if r["replication_rate"] == 0])
    if iv is None or abs(iv["auc"] - figures[name]["auc_by_outcome"]) > 1e-9:
        return ""
    words = f" (95% interval {iv['low']:.2f}-{iv['high']:.2f}"
    if name != "wen" and (figures.get("wen") or {}).get("auc_by_outcome") is not None:
        both = _outcome_probes(m, name, "wen")
        d = metrics.auc_difference([r["detections"][name] for r in both], [r["detections"]["wen"] for r in both],
                                   [r["replication_rate"] >= 0.5 for r in both])
        if d is not None and abs(d["difference"] - (iv["auc"] - figures["wen"]["auc_by_outcome"])) < 1e-9:
            words += f"; minus Wen's {d['difference']:+.3f}, paired 95% interval {d['low']:+.2f} to {d['high']:+.2f}"
    return words + ")"


def format_report(m: dict, checks: bool = True) -> str:
    """The card's figures as a readable table; with ``checks``, then each check with its figure and bound
    (``cardchecks``; recomputed from the figures above, as the card's own were)."""
    d = m["descriptor"]
    lines = [f"descriptor {d['name']} ({d['model']}, {d['preset']}), threshold {d['threshold']:.3f} "
             f"({d['threshold_source']}{'; score: ' + d['score'] if d.get('score') else ''}"
             f"{'; indexed: ' + d['indexed'] if d.get('indexed') else ''}); "
             f"{m['seeds_per_probe']} seeds per probe; "
             f"{m['settings']['steps']} steps, guidance {m['settings']['guidance']}",
             f"{'group':<16}{'probes':>7}{'replicated':>12}{'= own':>8}{'+ other':>9}{'original@1':>12}"
             f"{'data sim p95':>14}{'detection':>11}  replicated: 95% interval over probes"]
    if isinstance(m.get("per_probe"), list) and len(m["per_probe"]) > INTERVAL_MAX_PROBES:
        lines.insert(1, f"(no intervals over probes: the card holds {len(m['per_probe'])} per-probe rows, past "
                        f"{INTERVAL_MAX_PROBES:,})")
    per = {}  # each group's probes' own rates (the card's per_probe rows): the interval resamples probes
    for row in _probe_rows(m):
        if row.get("strategy", "none") == "none":
            per.setdefault(row["group"], []).append(row["replication_rate"])
    for g, r in sorted(m["groups"].items()):
        split = (f"{r['replicated_own']:>8.1%}{r['replicated_other']:>9.1%}" if "replicated_own" in r
                 else f"{'':>8}{'':>9}")  # cards before the split
        iv = metrics.bootstrap_mean(per.get(g, []), unit="probes")
        lines.append(f"{g:<16}{r['probes']:>7}{r['replication_rate']:>12.1%}{split}{r['original_recall']:>12.1%}"
                     f"{r['dataset_similarity']:>14.3f}{r['detection_mean']:>11.3f}"
                     + (f"  {iv['low']:.1%}-{iv['high']:.1%}" if iv else ""))
    others = {g: r["replicated_other_by_group"] for g, r in sorted(m["groups"].items())
              if r.get("replicated_other_by_group")}
    if others:
        lines.append("replicated with another item at top-1, seeds by that item's group: " + "; ".join(
            f"{g}: " + ", ".join(f"{k} {v}" for k, v in o.items()) for g, o in others.items()))
    lines.append(f"mitigations on {m['mitigations_on']} (same seeds):")
    base = m["groups"][m["mitigations_on"]]
    al = base.get("alignment")
    mw = max([20] + [len(n) for n in m["mitigations"]])  # the names' column, as wide as the longest name
    lines.append(f"  {'none':<{mw}} replicated {base['replication_rate']:.1%}  data sim {base['dataset_similarity']:.3f}"
                 + (f"  alignment {al:.3f}" if al is not None else "")
                 + (f"  {m['mitigation_seconds_none_on_high']:.3f} s/image" if "mitigation_seconds_none_on_high" in m
                    else ""))
    for name, r in m["mitigations"].items():
        cut = r["relative_cut"]
        extra = ""
        if r.get("alignment") is not None:
            extra += f"  alignment {r['alignment']:.3f} (x{r['alignment_ratio']:.2f})"
        if r.get("added_seconds_per_image") is not None:
            extra += f"  {r['added_seconds_per_image']:+.3f} s/image"
        ci = r.get("change_interval")  # (cards since the intervals)
        pc = r.get("paired")
        sure = ((f"; 95% interval over probes {100 * ci['low']:+.1f} to {100 * ci['high']:+.1f} pts" if ci else "")
                + (f"; seeds {pc['fewer']} fewer, {pc['more']} more" if pc else ""))
        lines.append(f"  {name:<{mw}} replicated {r['replication_rate']:.1%} ({r['change_vs_none']:+.1%}"
                     f"{'' if cut is None else f', cut {cut:.0%}'}{sure})  data sim {r['dataset_similarity']:.3f}{extra}")
    for name in ("wen", "sail"):
        if m.get(f"{name}_reach"):
            w = m[f"{name}_reach"]
            lines.append(f"{name} on {m['mitigations_on']}: {w['reached_share']:.1%} of {w['seeds']} seeds reached the "
                         f"target {w['target']:.3f}; score after the optimization mean {w['final_norm_mean']:.3f}, "
                         f"max {w['final_norm_max']:.3f}")
    if m.get("alignment", {}).get("method"):
        a = m["alignment"]
        lines.append(f"alignment: {a['method']} ({a['model']}): {a['measures']}; held out: "
                     + _held_out_text(a.get("held_out")))
    lines.append(f"detection ROC AUC {m['detection_auc_pair'][0]} vs {m['detection_auc_pair'][1]}: "
                 f"{m['detection_auc']:.3f}")
    det = m.get("detectors")
    if det:
        secs = det.get("seconds_per_batch_of_8", {})
        dw = max([8] + [len(n) for n in det["figures"]])
        for name, f in det["figures"].items():
            vs = ", ".join(f"{g} {v:.2f}" for g, v in sorted(f["auc_vs_unique"].items()))
            auc = "-" if f["auc_by_outcome"] is None else f"{f['auc_by_outcome']:.3f}" + _auc_words(m, name)
            rho = f.get("spearman_vs_replication")
            lines.append(f"detector {name:<{dw}} AUC by outcome {auc} ({f['outcome_probes'][0]} replicating >= half "
                         f"vs {f['outcome_probes'][1]} never); Spearman vs replication "
                         f"{'-' if rho is None else f'{rho:.2f}'}; vs unique: {vs}; cost "
                         f"{det['definitions'].get(name, {}).get('unet_passes', '?')} UNet passes, "
                         f"{secs.get(name, float('nan')):.3f} s per 8 seeds")
    o = m.get("hidden_object") or {}
    if o:
        lines.append(f"keyword '{o['keyword']}': '{o['object']}' in {o['training_share']:.1%} of its "
                     f"{o['training_items']} training images (planted {o['planted_share']:.0%}; whole set "
                     f"{o['whole_set_share']:.1%}); top-1 match of its generations carries it: "
                     f"{o['generation_share_top1']:.1%} of {o['generations']}"
                     + (f"; the generations feature it: {o['generation_share']:.1%} (classifier on the world's "
                        f"renders, held-out accuracy {o['generation_share_by']['held_out']['renders']['accuracy']:.1%}"
                        f"; it finds the object in {o['training_share_by_classifier']:.1%} of the keyword's training "
                        f"images)" if "generation_share" in o else ""))
    for who, what in (("model", "the world's model (held-out items)"),
                      ("views", "the model the descriptor took training views from (the same items)")):
        got = {k.split(":", 1)[1]: v for k, v in (m.get("model_copies") or {}).items() if k.startswith(who + ":")}
        if got:
            lines.append(f"recall at the threshold on copies made by {what} (95% Wilson interval over the n items): "
                         + ", ".join(f"{k} {v['recall']:.1%}" + ("" if k.startswith("all") else _wilson_words(v))
                                    for k, v in sorted(got.items())))  # (the "all" rows pool one item's kinds)
    if m.get("non_copies", {}).get("n"):
        nc = m["non_copies"]
        lines.append(f"non-copies ({nc['what']}): {nc['flagged']:.1%} of {nc['n']} flagged"
                     + (f" (nominal: {nc['nominal_fpr']:.1%} of training-vs-training pairs)"
                        if nc.get("nominal_fpr") is not None else ""))
    if m.get("replicated_over_original") is not None:
        lines.append(f"{m['mitigations_on']}: replicated / own item at top-1 = {m['replicated_over_original']:.1%}"
                     + (f"; replicated among the seeds whose top-1 is their own item "
                        f"{m['groups'][m['mitigations_on']]['replicated_given_own_top1']:.1%}"
                        if m["groups"][m["mitigations_on"]].get("replicated_given_own_top1") is not None else ""))
    if m.get("lesson_first_probe"):
        ls = m["lesson_first_probe"]
        lines.append(f"the lesson's first probe ({ls['prompt']!r}): {ls['replicated']} of {ls['seeds']} seeds replicated")
    ta = m.get("token_attribution")
    if ta:
        lines.append(f"token attribution on {m['mitigations_on']}: distinctive words above template words for "
                     f"{ta['distinctive_above_template']} of {ta['probes']} probes"
                     + (f"; on unique probes (the control) {ta['control_distinctive_above_template']} of "
                        f"{ta['control_unique_probes']}" if "control_unique_probes" in ta else ""))
    lines += format_local(m)
    lines.append(f"generate + match 8 seeds: {m['seconds_8_seeds']:.2f}s")
    return "\n".join(lines + (check_lines(m) if checks else []))


def check_lines(m: dict) -> list[str]:
    """The card's checks, one a line, each with its figure and bound (``cardchecks``), under a heading that counts
    those met."""
    found = card_checks(m)
    return ([f"checks, each on its own figure [its bound] ({sum(c.met for c in found)} of {len(found)} met):"]
            + [f"  {'yes' if c.met else 'NO ':<3}  {c.key}: {c.figure} [{c.bound}]" for c in found])
