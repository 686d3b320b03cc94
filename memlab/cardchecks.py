"""The card's checks (the bounds of issues 30 and 32), each decided on one measured figure, none pooled.

``card_checks`` reads a card's ``measured`` figures and nothing else, so the checks of any card, stored or just
measured, are recomputed from the figures they stand on and shown beside them (``evaluate`` writes the card's
``checks`` with it; ``cardreport`` and the app show each with its figure and bound)."""
from __future__ import annotations

from typing import NamedTuple


class Check(NamedTuple):
    key: str     # its name in the card's ``checks``
    figure: str  # the measured figure it is decided on, in words
    bound: str   # what the figure must meet
    met: bool


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def card_checks(m: dict) -> list[Check]:
    """The checks of a card's ``measured`` figures, in the card's order: full duplication replicated, the seeds
    with their own image at top-1, the lesson's first probe, unique probes, non-copies, the held-out model's
    copies, model copies pooled, partial against full duplication, the worst kind of the model's own copies and
    of its edited ones, token attribution (and against its unique control), each mitigation's cut, then issue
    32's template and bright-ending checks where the world has them."""
    groups, high = m["groups"], m["mitigations_on"]
    hi = groups[high]
    hi_rate = hi["replication_rate"]
    out = [Check("full_high_at_least_50pct", f"{high} replicated {_pct(hi_rate)} of its seeds", "≥ 50%",
                 hi_rate >= 0.5)]
    own = hi.get("replicated_given_own_top1")
    out.append(Check("replicated_at_least_95pct_of_own_top1_seeds",
                     f"{high}: {_pct(own)} of the seeds whose top-1 is their own image replicated", "≥ 95%",
                     own is not None and own >= 0.95))
    lesson = m.get("lesson_first_probe")
    if lesson:
        out.append(Check("lesson_first_probe_at_least_7_of_8",
                         f"{lesson['replicated']} of {lesson['seeds']} seeds replicated", "≥ 7 of 8",
                         lesson["replicated"] >= 7))
    unique = groups["unique"]["replication_rate"]
    out.append(Check("unique_at_most_3pct", f"unique probes replicated {_pct(unique)}", "≤ 3%", unique <= 0.03))
    nc = m.get("non_copies") or {}
    if nc.get("n"):
        nominal = nc.get("nominal_fpr")
        out.append(Check("non_copies_flagged_at_most_2pct", f"{_pct(nc['flagged'])} of {nc['n']} flagged"
                         + (f" (nominal {_pct(nominal)})" if nominal is not None else ""), "≤ 2%",
                         nc["flagged"] <= 0.02))
    truth = m.get("model_copies") or {}
    views = truth.get("views:all", {}).get("recall")
    if views is not None and "model:all" in truth:
        mine = truth["model:all"]["recall"]
        out.append(Check("held_out_model_within_5_points_of_views_model",
                         f"the world's model's copies {_pct(mine)}, the views model's {_pct(views)} "
                         f"({100 * abs(mine - views):.1f} points apart)", "within 5 points",
                         abs(mine - views) <= 0.05))
    pooled = truth.get("model:all", {}).get("recall", 0)
    out.append(Check("model_copy_recall_at_least_90pct", f"the world's model's copies, all kinds: {_pct(pooled)}",
                     "≥ 90%", bool(truth) and pooled >= 0.9))
    partial = "partial" + high[4:]
    p_rate = groups.get(partial, {}).get("replication_rate", 1.0)
    out.append(Check("partial_at_most_half_full", f"{partial} {_pct(p_rate)} against {high} {_pct(hi_rate)}",
                     "≤ half of full", p_rate <= hi_rate / 2))
    made = {k: v for k, v in truth.items() if k.startswith("model:") and k != "model:all"
            and not k.startswith("model:all-")}
    kinds = {k: v for k, v in made.items() if k.startswith(("model:img2img", "model:vae"))}  # the model's own
    edited = {k: v for k, v in made.items() if k not in kinds}  # its copies tinted, darkened, mirrored
    for name, which in (("model_copy_recall_worst_kind_at_least_90pct", kinds),
                        ("tinted_darkened_mirrored_copies_at_least_90pct", edited)):
        if which:
            worst = min(which, key=lambda k: which[k]["recall"])
            out.append(Check(f"{name} ({worst})", f"{worst[6:]} {_pct(which[worst]['recall'])} of "
                             f"{which[worst].get('n', '?')} (the worst kind)", "≥ 90%",
                             which[worst]["recall"] >= 0.9))
    ta = m.get("token_attribution") or {}
    n_att, above = ta.get("probes", 0), ta.get("distinctive_above_template", 0)
    out.append(Check("attribution_distinctive_above_template_7_of_8", f"{above} of {n_att} probes",
                     f"≥ {min(7, n_att)} of {n_att}", above >= min(7, n_att)))
    if ta.get("control_unique_probes"):
        c_n, c_above = ta["control_unique_probes"], ta["control_distinctive_above_template"]
        out.append(Check("attribution_above_its_unique_control", f"{above} of {n_att} probes against {c_above} of "
                         f"{c_n} unique probes", "a larger share than the control",
                         bool(n_att) and above / n_att > c_above / c_n))
    mitig = m.get("mitigations") or {}
    for name, r in mitig.items():
        cut = r["relative_cut"] or 0
        out.append(Check(f"{name.replace(':', '_').replace('=', '_')}_cuts_a_third",
                         f"{name} cut {high}'s replication by {cut:.0%}", "≥ a third", cut >= 1 / 3))
    pick = {n: r for n, r in mitig.items() if n.split(":")[0] in ("ren", "nemo", "jain")}
    out.append(Check("ren_nemo_or_jain_cuts_a_third_keeping_90pct_alignment", "; ".join(
        f"{n} cut {(r['relative_cut'] or 0):.0%}, alignment x{(r.get('alignment_ratio') or 0):.3f}"
        for n, r in pick.items()) or "none measured", "one cuts ≥ a third at alignment ≥ x0.90", any(
        (r["relative_cut"] or 0) >= 1 / 3 and (r.get("alignment_ratio") or 0) >= 0.9 for r in pick.values())))
    return out + _local_checks(m.get("template"), m.get("bright_ending_coverage"))


def _local_checks(t: dict | None, coverage: dict | None) -> list[Check]:
    """Issue 32's checks, where the world has templates: the masked verdict calls at least 80% of the seeds
    whose top-1 is their own template, the global one fewer; unique probes' masked false positives at most 3%;
    the bright-ending map lights the copied objects more than the rest (median ratio above 1)."""
    if not t:
        return []
    masked, glob, fp = (t[k] or 0 for k in ("masked_calls_copy", "global_calls_copy", "unique_masked_false_positives"))
    out = [Check("template_masked_calls_at_least_80pct", f"{masked:.1%} of {t['template_seeds_own_template']} seeds "
                 "with their own template at top-1", "≥ 80%", masked >= 0.8),
           Check("template_global_calls_fewer", f"the global verdict {glob:.1%}, the masked {masked:.1%}",
                 "fewer than the masked", glob < masked),
           Check("unique_masked_false_positives_at_most_3pct", f"{fp:.1%} of {t['unique_seeds']} unique seeds",
                 "≤ 3%", fp <= 0.03)]
    if coverage:
        x = coverage["median_inside_over_outside"]
        out.append(Check("bright_ending_lights_the_copied_objects", f"median {x:.2f}x as bright on the drawn "
                         f"objects as elsewhere ({coverage['seeds']} seeds)", "above 1x", x > 1))
    return out


def checks_dict(m: dict) -> dict[str, bool]:
    """The card's ``checks``: each check's name and whether it is met."""
    return {c.key: c.met for c in card_checks(m)}
