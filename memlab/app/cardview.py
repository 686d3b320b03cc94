"""About this world's card as the page shows it: the world's model, index, descriptor and threshold, the recall on
held-out copies, its checks and measured figures. A pure function of the ``Lab`` (no Gradio here)."""
from __future__ import annotations

from ..service import Lab
from .glossary import g
from .views import code, literal


def _said_once(source: str, citation: str) -> str:
    """A threshold's source and citation, the source said once ("calibrated: calibrated at build ..." read twice)."""
    return citation if citation.startswith(source) else f"{source}: {citation}"


def world_card_markdown(lab: Lab) -> str:
    """About this world, as prose and a table: its model, training set and index, the descriptor that scores
    each generation and how its threshold was set, then the card's measured figures."""
    info = lab.descriptor_info()
    built = lab.index_summary()
    thr = info["threshold"]
    lines = [f"## {literal(lab.name)}",
             f"This world pairs a text-to-image model ({lab.model_description()}) with the index of the images it "
             f"was trained on ({literal(lab.trained_on) or 'its training set is not described'}). Each picture it "
             f"generates is compared with every training image by the copy {g('descriptor', 'descriptor')} "
             f"**{literal(info['name'])}**; a score above the {g('threshold', 'threshold')} {thr['value']:.3f} calls the "
             f"picture a copy.",
             "| | this world |\n|---|---|\n"
             f"| model | {lab.model_description()} |\n"
             f"| training images indexed | {built['items']} (index built {literal(built['created'])}) |\n"
             f"| descriptor | {literal(info['name'])}: model {code(info['model'])}, preset {code(info['preset'])}, "
             f"{info['dim']} dimensions |\n"
             f"| threshold | {thr['value']:.3f}, {literal(_said_once(thr['source'], thr.get('citation', '')))} |\n"
             f"| measured on this training set | {thr.get('n_groups', '?')} distinct images (one per near-duplicate "
             f"group): synthetic-copy recall {thr.get('recall') or 0:.1%}, background false positives "
             f"{thr.get('fpr') or 0:.1%} |",
             f"Scores: {literal(lab.descriptor_label())}"]
    gt = thr.get("ground_truth", {})
    whose = {"model": "**Recall on copies made by the world's own model** (held-out training images, not used for "
                      "calibration): ",
             "views": "**... and by the model memlab's descriptor took its training views from** (the same "
                      "images; issue 30's held-out check): "}
    groups: dict[str, dict] = {}
    for k, v in gt.items():  # each model's copies on a line of their own (their kinds share names)
        prefix, _, kind = k.rpartition(":")
        groups.setdefault(prefix, {})[kind] = v
    for prefix in [p for p in whose if p in groups] + sorted(p for p in groups if p not in whose):
        said = whose.get(prefix, f"**Recall on held-out copies{f' ({literal(prefix)})' if prefix else ''}**: ")
        lines.append(said + ", ".join(f"{code(k)} {v['recall']:.1%} (n={v['n']})"  # (in code: markdown would link
                                      for k, v in sorted(groups[prefix].items())))  # img2img@0.2 as an e-mail address)
    c = lab.card()
    if c:
        lines.append(f"**Built with** {code(c.get('built_with') or '')} in {(c.get('build_seconds_total') or 0) / 60:.0f} min")
        if "measured" in c:
            from ..errors import one_line
            from ..cardchecks import card_checks
            from ..cardreport import format_report

            try:
                report, checks = format_report(c["measured"], checks=False), card_checks(c["measured"])
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # a card memlab did not write
                report, checks = (f"(this card's measured figures are not in the form this memlab writes, so they are "
                                  f"not shown: {type(e).__name__} {one_line(e, 120)})"), []
            if checks:  # each check beside the figure it is decided on (recomputed from the card's figures)
                lines.append("### Checks\nThe bounds this world is held to, each met or not on the one measured figure "
                             "beside it (recomputed from the card's figures).\n\n"
                             "| met | check | measured | bound |\n|---|---|---|---|\n" + "\n".join(
                    f"| {'yes' if k.met else '**NO**'} | {code(k.key)} | {literal(k.figure)} | {literal(k.bound)} |"
                    for k in checks))
            lines.append("### Measured memorization\n```\n" + report + "\n```")
    return "\n\n".join(lines)
