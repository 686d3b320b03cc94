"""What the page shows, as pure functions of a run (``RunState``) and its ``Lab``: headlines, captions,
tables and the A/B grid's HTML. No Gradio here: each is tested on hand-made runs."""
from __future__ import annotations

import html
import re

import numpy as np

from ..local import both_ways
from ..scorenorm import is_mirrored
from ..records import RunState, SeedRecord, probe_group_name
from ..service import Lab
from .glossary import g
from .pictures import pair_image, thumb_uri

_MARKDOWN = re.compile(r"([\\`*_\[\]<&|~@])")  # what markdown and HTML read inside a line (@: an e-mail link)


def literal(text) -> str:
    """Text from a world, an index or a training set (a caption, a prompt, a world's name) as itself in markdown,
    on one line: the characters markdown and HTML read inside a line escaped, so a caption's ``![..](http://..)``
    or ``<img src=..>`` is shown as written, not fetched, and a ``|`` leaves a table as it is."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).split()))


def code(text) -> str:
    """Text shown as a markdown code span (escapes do not apply inside one): its backticks made quotes."""
    return "`" + " ".join(str(text).split()).replace("`", "'") + "`"


def copies(duplicates: int) -> str:
    """A training image's duplication as the app states it everywhere: the image and its near-duplicates."""
    n = int(duplicates) + 1
    return f"{n} {'copy' if n == 1 else 'copies'} in training"


def score(x: float) -> str:
    """A score in a table cell: 3 decimals, trailing zeros kept, as every caption and headline writes it
    (``:.3f``; the one rounding rule: scores to 0.001, percentages to 0.1%)."""
    return f"{float(x):.3f}"


# Each table's columns, named once: the empty table shows them before a run (not Gradio's "1 2 3"), and
# the filled one has them in this order. Short columns first and at a fixed width, so a header never
# breaks inside a word and the verdict and score are in view without scrolling the table sideways.
ID_COLUMNS = ["id", "copies in training", "caption"]


SEED_COLUMNS = ["seed", "verdict", "score", "match id", "copies in training", "match caption", "effective prompt"]


SEED_WIDTHS = ["64px", "104px", "80px", "96px", "168px"]


ID_WIDTHS = ["72px", "168px"]  # the caption (and a score after it) take the rest


MATCH_COLUMNS = ["id", "score", "cosine", "copies in training", "caption"]  # cosine: where the score is normalized


MATCH_WIDTHS = ["72px", "80px", "80px", "168px"]


COMPARE_COLUMNS = ["strategy", "spec", "replication %", "change vs none (pts)", "seeds fewer / more (p)",
                   "dataset similarity p95",
                   "change vs none", "detection (wen)", "alignment", "alignment vs none"]
# each column at least as wide as its header's longest word in the table's monospace font (about 10 px a character,
# and the cell's padding): "detection" and "alignment" broke mid-word ("detectio n"); the spec gets room of its own
# (210 px: with the seed-by-seed column, nine columns fit a 1400 px desktop; 260 px pushed the last out of view)
COMPARE_WIDTHS = ["210px" if h == "spec" else f"{max(72, 10 * max(map(len, h.split())) + 28)}px" for h in COMPARE_COLUMNS]


WORD = {"replicated": "REPLICATED", "template copy": "TEMPLATE COPY", "possible copy": "POSSIBLE COPY",
        "novel": "novel"}
CELL = {"replicated": "rep", "template copy": "tmpl", "possible copy": "pos", "novel": "nov"}
def level(record: dict) -> str:
    """A seed's verdict in three levels (records before them: replicated or novel)."""
    return record.get("verdict") or ("replicated" if record["replicated"] else "novel")


def caption(record: dict) -> str:
    """A pair's caption: seed, verdict, score against the threshold, the masked score where the world has a
    threshold for it (the template check, for a seed not replicated as a whole: beside a whole copy "agrees in 0%
    of windows", a blurred redraw's detail against the sharp original, read as a contradiction), the training
    image and its copies."""
    r = SeedRecord.from_dict(record)
    verdict = WORD[level(record)]
    masked = (f" · in its copied region {r.masked_score:.3f} vs {r.masked_threshold:.3f}"
              if r.masked_score is not None and r.masked_threshold is not None and level(record) != "replicated"
              else "")
    if masked and r.agreement_share is not None and r.agreement_threshold is not None:
        masked += f", agrees in {r.agreement_share:.0%} of windows vs {r.agreement_threshold:.0%}"
    return (f"seed {r.seed} · {verdict} · score {r.score:.3f} vs threshold {r.threshold:.3f}{masked} · "
            f"match #{r.top1['id']} · {copies(r.top1['duplicates'])}")


def id_table(df, *extra: str):
    """Training items as a visitor sees them: the id (the app's one identifier for a training image), its
    copies in training, the caption, and ``extra`` score columns (3 decimals)."""
    import pandas as pd

    return pd.DataFrame({"id": df["id"], "copies in training": df["duplicates"].astype(int) + 1,
                         "caption": df["caption"], **{c: df[c].map(score) for c in extra}})


def headline(lab: Lab, state: RunState, stopped: bool = False) -> str:
    """The run's figures, each with its source; a run still streaming says how far it is, a ``stopped`` one
    says where it stopped and is marked partial."""
    s = state.summaries[-1]
    name = s["descriptor"]["name"]
    ds = s["dataset_similarity"]
    info = lab.descriptor_info(name)
    bg, bg_all = info.get("background_distinct", info["background"]), info["background"]
    best = max(state.records, key=lambda r: r["score"])
    st = best["settings"]
    source = (f"{g('mitigation', 'mitigation')} {s['mitigation']['spec']} · {st['steps']} steps, guidance "
              f"{st['guidance']:g} · {name} > {s['threshold']:.3f} ({g('threshold', 'threshold')})")
    lines = [f"### Replication: {s['replication_rate']:.1%} of {s['n_seeds']} seeds {g('replicated')}",  # one rounding rule: 0.1%
             f"*{source}*",
             f"- **multi-seed replication** {g('replicated')} {s['replication_rate']:.1%} (score > {s['threshold']:.3f})"
             + _interval(s),
             f"- **possible copies** {g('possible')} {s.get('possible_copy_rate', 0.0):.1%} (score between "
             f"{lab.possible(name)['value']:.3f}, which {lab.possible(name)['fpr']:.0%} of distinct training images "
             f"pass, and the threshold; framed orange)",
             *_template_line(s, state.records, lab),
             f"- **dataset similarity** {g('dataset-similarity')} (95th pct of top-1 over n = {ds['n']} generations; DCR's figure is over "
             f"thousands, and over a few seeds the 95th percentile is nearly the maximum) {ds['p95']:.3f} · "
             f"mean {ds['mean']:.3f} · "
             f"background {g('background')} 95th pct {bg['p95']:.3f} (distinct training images, each vs its nearest other; "
             f"{bg_all['p95']:.3f} over all training rows, planted duplicates included)",
             f"- **detection** {g('detection')} (Wen et al., text-conditional noise norm, first step) {s['detection_mean']:.3f}: "
             f"the prompt's, as typed, before any mitigation (the same for every strategy on this prompt)"
             + _other_detections(s),
             *_optimizer_lines(state.records),
             *_alignment_line(s, lab), *_hidden_object_line(s),
             f"- **caption of the best image match** (the training image with the highest score, seed "
             f"{best['seed']}): “{literal(best['matches'][0]['caption'])}” (score {best['score']:.3f}); the captions "
             f"nearest by text are listed below",
             f"- scores {g('descriptor')}: {literal(lab.descriptor_label(name))}"]
    if stopped and not state.finished:
        lines[0] = (f"### Stopped after {len(state.records)} of {state.requested} seeds · replication "
                    f"{s['replication_rate']:.1%} of those {s['n_seeds']} {g('replicated')} (partial: an export is "
                    f"labelled so)")
    elif not state.finished:
        lines.insert(1, f"*{len(state.records)} of {state.requested} seeds so far (running; an export now is "
                        f"labelled partial)*")
    lines += probe_lines(lab, state, name)
    if state.warning:
        lines.append(f"- ⚠️ {state.warning}")
    return "\n".join(lines)


def probe_lines(lab: Lab, state: RunState, descriptor: str) -> list[str]:
    """For a probe of the world: its group, where its training image is, and the list's published
    figures beside the ones measured in this run."""
    import numpy as np

    p = lab.probe(state.prompt)
    if not p:
        return []
    lines = [f"- **a probe of this world**: {literal(probe_group_name(str(p.get('group'))))}"
             + (f" (from {literal(p['list'])})" if p.get("list") else "")]
    status, tid = p.get("training_image"), p.get("training_id")
    own = []
    if status and status != "indexed":
        lines.append(f"- ⚠️ **its training image could not be fetched** ({literal(str(status).removeprefix('not fetched: '))}"
                     f": {literal(p.get('url'))}): the matches are against the rest of the training set")
    elif tid:
        top1 = sum(str(r["matches"][0]["id"]) == str(tid) for r in state.records)
        own = [next((m["score"] for m in r["matches"] if str(m["id"]) == str(tid)), None) for r in state.records]
        lines.append(f"- its training image (#{literal(tid)}) is the top-1 match in {top1} of {len(state.records)} seeds")
    both = both_ways(state.records)
    if both and str(p.get("label")) in ("template", "verbatim"):  # a listed probe, scored both ways (issue 32)
        lines.append(f"- **scored both ways**: the global verdict calls {both['replicated']} of {both['seeds']} seeds "
                     f"whole copies; the masked score (inside the bright-ending map) passes the template threshold "
                     f"{both['threshold']:.3f}, with the agreement share past its own, in {both['masked_above']} "
                     f"({both['template_copy']} of them called template copies {g('template')})")
    pub_mean, pub_max = p.get("published_mean_sscd"), p.get("published_max_sscd")
    if pub_mean is not None or pub_max is not None:
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        line = f"- **published** ({literal(p.get('list'))}, SSCD to the training image): mean {fmt(pub_mean)} · max {fmt(pub_max)}"
        if own:
            found = np.array([v for v in own if v is not None], float)
            what = f"{descriptor} to its training image" + ("" if descriptor == "sscd" else
                                                           ", another descriptor than the list's SSCD")
            line += (f" — **measured here** ({what}, {len(found)} of {len(own)} seeds with it among the top "
                     f"{len(state.records[0]['matches'])}): mean {found.mean():.3f} · max {found.max():.3f}"
                     if len(found) else " — **measured here**: its training image is not among any seed's matches")
        lines.append(line)
    return lines


def seed_table(state: RunState):
    """One row per seed (``SEED_COLUMNS``): its verdict, top-1 score and training image."""
    import pandas as pd

    recs = [SeedRecord.from_dict(r) for r in state.records]
    return pd.DataFrame([{"seed": r.seed, "verdict": level(r.to_dict()),
                          "score": score(r.score), "match id": r.top1["id"],
                          "copies in training": r.top1["duplicates"] + 1,
                          "match caption": r.top1["caption"], "effective prompt": r.effective_prompt}
                         for r in recs], columns=SEED_COLUMNS)


def short_label(mitigation: dict) -> str:
    """A strategy as a chart or grid names it: each step's name and its main parameter (the full spec is
    shown on hover and in the table)."""
    main = {"rna": "k", "rt": "k", "cwr": "k", "gni": "lam", "ren": "c1", "jain": "mode"}
    parts = []
    for st in mitigation.get("steps") or [{"name": mitigation["name"], "params": {}}]:
        key = main.get(st["name"])
        val = st.get("params", {}).get(key)
        shown = val if isinstance(val, str) else f"{val:g}" if val is not None else None
        parts.append(st["name"] + (f" {'λ' if key == 'lam' else key}={shown}" if shown is not None else ""))
    return " + ".join(parts)


def compare_grid(lab: Lab, state: RunState, seeds, n_rows: int, masks: bool = False) -> str:
    """The A/B grid as HTML: a header row of seeds, then one row per strategy whose cells are the
    generation beside its top-1 training image, the verdict and score, and the image's id and copies.
    Every row is on the page (no inner scroll box); on a narrow screen each row wraps to two cells a line.
    ``masks``: each pair with its seed's bright-ending map marked on both images (the copied region)."""

    n = len(seeds)
    out = [GRID_CSS, f'<div class="ab" style="--n:{n}">',
           '<div class="ab-row ab-head"><div class="ab-label">strategy</div><div class="ab-cells">'
           + "".join(f'<div class="ab-seed">seed {s}</div>' for s in seeds) + "</div></div>"]
    by_row: dict[str, list] = {}
    for r, im in zip(state.records, state.images):
        by_row.setdefault(r["mitigation"]["spec"], []).append((r, im))
    for summ in state.summaries:
        mit = summ["mitigation"]
        cells = []
        for r, im in by_row.get(mit["spec"], []):
            m = r["matches"][0]
            verdict = WORD[level(r)]
            cells.append(
                f'<figure class="ab-cell {CELL[level(r)]}">'
                f'<img src="{thumb_uri(pair_image(im, lab.item_image(m["row"]), level(r), 2, mask=r.get("bright_ending") if masks else None, mirrored=is_mirrored(r.get("view"))))}" '
                f'alt="seed {r["seed"]}, {html.escape(short_label(mit))}: generation | training image #{html.escape(str(m["id"]))}">'
                f'<figcaption><b class="v">{verdict} {r["score"]:.3f}</b><br>'
                f'<span class="ab-seedtag">seed {r["seed"]} · </span>#{html.escape(str(m["id"]))} · {copies(m["duplicates"])}'
                f'</figcaption></figure>')
        rate = summ["replication_rate"]
        out.append(f'<div class="ab-row"><div class="ab-label" title="{html.escape(mit["spec"])}">'
                   f'<b>{html.escape(short_label(mit))}</b><br><small>replication {rate:.1%} '
                   f'({round(rate * summ["n_seeds"])}/{summ["n_seeds"]}) · p95 {summ["dataset_similarity"]["p95"]:.3f}'
                   f'</small></div><div class="ab-cells">{"".join(cells)}</div></div>')
    for _ in range(n_rows - len(state.summaries)):
        out.append('<div class="ab-row ab-pending"><div class="ab-label">…</div>'
                   '<div class="ab-cells"><div class="ab-wait">running</div></div></div>')
    out.append("</div>")
    return "".join(out)


GRID_CSS = """<style>
.ab{display:flex;flex-direction:column;gap:10px}
.ab-row{display:grid;grid-template-columns:9em 1fr;gap:8px;align-items:start}
.ab-cells{display:grid;grid-template-columns:repeat(var(--n),minmax(0,1fr));gap:6px}
.ab-cell{margin:0;text-align:center;font-size:.78em;line-height:1.25}
.ab-cell img{width:100%;height:auto;image-rendering:pixelated;display:block}
.ab-cell.rep .v{color:#c62828}.ab-cell.tmpl .v{color:#8e24aa}.ab-cell.pos .v{color:#e65100}.ab-cell.nov .v{color:#1565c0}
.ab-head .ab-seed{text-align:center;font-weight:600;font-size:.85em}
.ab-seedtag{display:none}
.ab-label{font-size:.9em;overflow-wrap:anywhere}
.ab-wait{color:#888;font-style:italic}
@media (max-width:700px){
 .ab-row{grid-template-columns:1fr}
 .ab-cells{grid-template-columns:repeat(2,minmax(0,1fr))}
 .ab-head{display:none}.ab-seedtag{display:inline}
 .ab-cell{font-size:.9em}
}
</style>"""


def compare_headline(lab: Lab, state: RunState, seeds, n_rows: int) -> str:
    """What the comparison is of: prompt, seeds, settings, descriptor and threshold; rows done so far."""
    st = state.records[0]["settings"]
    s0 = state.summaries[0]
    seeds_txt = ", ".join(map(str, seeds)) if len(seeds) <= 12 else f"{seeds[0]} … {seeds[-1]} ({len(seeds)} seeds)"
    lines = [f"### {len(state.summaries)} of {n_rows} strategies on the same {len(seeds)} seeds",
             f"*seeds {seeds_txt} · {st['steps']} steps, guidance {st['guidance']:g} · "
             f"{s0['descriptor']['name']} > {s0['threshold']:.3f} ([replicated](#glossary)) · "
             f"{literal(lab.descriptor_label(s0['descriptor']['name']))}*"]
    a = lab.alignment_info() or {}
    lines.append("*detection (wen): Wen et al. 2024, the text-conditional noise norm at the first step, mean over "
                 "seeds" + (f" · alignment: {a.get('measures', '')}; {a.get('method', '')}, {a.get('model', '')}"
                            if a else "") + "*")
    if not state.finished:
        lines.append(f"*{len(state.records)} of {state.requested} images so far (running, or stopped: an export "
                     f"now is labelled partial)*")
    if state.warning:
        lines.append(f"- ⚠️ {state.warning}")
    return "\n\n".join(lines)  # a paragraph each (markdown runs single lines together)


def compare_table(state: RunState):
    import pandas as pd

    rows = []
    for s in state.summaries:
        ch = s.get("change_vs_none") or {}
        n = s["n_seeds"]
        rows.append({"strategy": short_label(s["mitigation"]), "spec": s["mitigation"]["spec"],
                     "replication %": f"{s['replication_rate']:.1%} ({round(s['replication_rate'] * n)}/{n})",
                     "change vs none (pts)": round(100 * ch.get("replication_rate", 0.0), 1),
                     "seeds fewer / more (p)": _paired_cell(ch.get("paired")),
                     "dataset similarity p95": score(s["dataset_similarity"]["p95"]),
                     "change vs none": f"{ch.get('dataset_similarity', 0.0):+.3f}",
                     "detection (wen)": score(s["detection_mean"]),
                     "alignment": "-" if s.get("alignment_mean") is None else score(s["alignment_mean"]),
                     "alignment vs none": _ratio(s, state.summaries[0])})
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def _interval(s: dict) -> str:
    """The rate's 95% interval over its seeds (Wilson's; ``metrics.rate_interval``), linked to the glossary."""
    iv = s.get("replication_interval")
    return "" if not iv else (f" · {g('interval', '95% interval')} {iv['low']:.1%}-{iv['high']:.1%} over "
                              f"{iv['n']} seeds")


def _paired_cell(pc: dict | None) -> str:
    """Seed by seed against none: stopped / made copying, and the exact McNemar p (``metrics.paired_change``)."""
    return "-" if not pc else f"{pc['fewer']} / {pc['more']} (p = {pc['p_value']:.3g})"


def _other_detections(s: dict) -> str:
    """The newer detectors' means beside Wen's (``memlab.compare.DETECTORS``), if the run recorded them."""
    d = s.get("detections_mean") or {}
    parts = [f"Ren et al.'s attention entropy {d['ren']:.3f}" if "ren" in d else "",
             f"Asthana and Belagiannis's anisotropy score {d['asthana']:.3f}" if "asthana" in d else "",
             f"Chen et al.'s localized score {d['bright_ending']:.3f}" if "bright_ending" in d else "",
             f"Jeon et al.'s sharpness {d['jeon']:.3f}" if "jeon" in d else "",
             (f"Carlini et al.'s clique of near-identical generations {s['generation_clique']['largest']} of "
              f"{s['generation_clique']['seeds']} seeds" if "carlini" in d and s.get("generation_clique") else "")]
    parts = [p for p in parts if p]
    return f"; {' · '.join(parts)} (higher = more likely memorized, as each paper scores it)" if parts else ""


def bright_ending_note(card: dict | None) -> str:
    """What the yellow outline is, and whether it marks the copied region on this world: the bright-ending map
    (Chen et al., ICLR 2025), with the world's own measure of it where its card has one (``measured``'s
    ``bright_ending_coverage``: the map's median brightness on the drawn objects of its most duplicated
    prompts' copies over elsewhere)."""
    text = ("Outlined in yellow, the rest faded: the bright-ending map, where the generation attends to the prompt's "
            "end at the last step; in Stable Diffusion it lights the copied region (Chen et al. 2025)")
    cov = ((card or {}).get("measured") or {}).get("bright_ending_coverage") or {}
    ratio = cov.get("median_inside_over_outside")
    if ratio is None:
        return text + "."
    name = probe_group_name(cov.get("group") or "most duplicated", short=True)  # in words, not full_ddf20
    said = f"{ratio:.2f}x as bright on the copied objects as elsewhere, the median over its {name} probes' seeds"
    if ratio <= 1:
        return (f"{text}. On this world's small model it does not single the copied part out ({said}, its card), "
                "so a template copy is also checked where the two images' detail agrees.")
    return f"{text}; on this world it does ({said}, its card)."


def template_sentence(records, template_of) -> str:
    """The lesson's template step, from its records: how many seeds copy a picture of the prompt's template
    (``template_of``: row -> template number, None elsewhere) and how the verdict calls them."""
    n = len(records)
    tops = [template_of(r["matches"][0]["row"]) for r in records]
    mine = [r for r, t in zip(records, tops) if t is not None]
    whole = sum(r.get("verdict") == "replicated" for r in mine)
    tmpl = sum(r.get("verdict") == "template copy" for r in mine)
    scores = [r["masked_score"] for r in mine if r.get("masked_score") is not None]
    text = (f"{len(mine)} of {n} seed{'s' if n != 1 else ''} have a picture of this template as their closest "
            f"training image: the frame and label repeat while the picture inside changes. Of those, {tmpl} "
            f"{'are' if tmpl != 1 else 'is'} called a **template copy** (framed purple) and {whole} replicated as a "
            f"whole")
    if scores:
        text += f"; inside the bright-ending map (outlined in yellow) they score {min(scores):.3f}-{max(scores):.3f}"
    others = sum(r.get("verdict") == "template copy" for r, t in zip(records, tops) if t is None)
    if others:  # framed purple too: the pair shows which picture they matched
        text += (f". {others} more {'are' if others != 1 else 'is'} called a template copy with a picture of "
                 f"another template as the closest training image")
    return text + "."


def _template_line(s: dict, records, lab) -> list[str]:
    """Template copies, where the world calibrates the masked score's threshold (issue 32); where its threshold
    is out of date, why no seed is called one."""
    thr = next((r["masked_threshold"] for r in records if r.get("masked_threshold") is not None), None)
    if thr is None:
        note = lab.template_threshold_note()
        return [f"- **template copies**: none called: {note}"] if note else []
    agree = next((r["agreement_threshold"] for r in records if r.get("agreement_threshold") is not None), None)
    both = f", and agreeing with it in more than {agree:.0%} of its windows" if agree is not None else ""
    return [f"- **template copies** {g('template')} {s.get('template_copy_rate', 0.0):.1%} (not replicated as a "
            f"whole, but scoring above {thr:.3f} against the same training image inside the copied region{both}; "
            f"framed purple)"]


def _optimizer_lines(records) -> list[str]:
    """An optimizing mitigation as it ran (Wen et al.'s on the prompt embedding, Jeon et al.'s SAIL on the
    starting noise): the score after its optimization beside the target, per seed (``mitigation_state``), so a
    seed that was left untouched reads as such."""
    out = []
    for key, name, what in (("wen", "Wen's mitigation", "detection"), ("sail", "SAIL (Jeon et al.)", "sharpness loss")):
        st = [r["mitigation_state"] for r in records
              if (r.get("mitigation_state") or {}).get(f"{key}_target") is not None]
        if not st:
            continue
        final = [x[f"{key}_final_norm" if key == "wen" else "sail_final_loss"] for x in st]
        reached = sum(bool(x[f"{key}_reached"]) for x in st)
        out.append(f"- **{name}**: {what} after its optimization {np.mean(final):.3f} (max {max(final):.3f}) "
                   f"against its target {st[0][f'{key}_target']:.3f}; reached on {reached} of {len(st)} seeds (a "
                   f"{'prompt' if key == 'wen' else 'seed'} already below the target is left as it was)")
    return out


def _alignment_line(s: dict, lab) -> list[str]:
    """The prompt alignment of the seeds, named by how the world measures it (``memlab.alignment``)."""
    if s.get("alignment_mean") is None:
        return []
    a = lab.alignment_info() or {}
    return [f"- **alignment** {g('alignment')} {s['alignment_mean']:.3f}: {a.get('measures', '')}; "
            f"{a.get('method', '')}, {a.get('model', '')}"]


def _hidden_object_line(s: dict) -> list[str]:
    """Memory Triggers' object-level replication: the seeds featuring the world's hidden object (``memlab.objects``)."""
    h = s.get("hidden_object_share")
    if not h:
        return []
    acc = (((h.get("by") or {}).get("held_out") or {}).get("renders") or {}).get("accuracy")
    return [f"- **hidden object** {g('hidden-object')} (Memory Triggers): the {literal(h['object'])} in {h['k']} "
            f"of {h['n']} generations ({h['confidence']:.0%} interval {h['low']:.1%}-{h['high']:.1%})"
            + (f", by {literal(h['by']['method'])}" if h.get("by") else "")
            + (f", held-out accuracy {acc:.1%}" if acc is not None else "")]


def _ratio(s: dict, base: dict) -> str:
    """A strategy's alignment as a share of ``none``'s (the price of a mitigation), or '-'."""
    a, b = s.get("alignment_mean"), base.get("alignment_mean")
    return "-" if a is None or not b or s is base else f"x{a / b:.2f}"


def probe_examples(probes) -> list[tuple[str, list[str]]]:
    """The world's probe prompts by group, in the order the groups matter, the lesson's first group first
    (``Lab.lesson_prompts``: verbatim or memorized, else the built-in world's highest full duplication), then
    template copies, the controls, then the rest as listed, with the app's name for each group and its prompts."""
    if probes.empty or "prompt" not in probes:
        return []
    key = (probes["label"] if "label" in probes else probes["group"]).astype(str)

    def rank(k: str, i: int) -> tuple:
        if k in ("verbatim", "memorized"):
            return (0, ("verbatim", "memorized").index(k))
        if re.fullmatch(r"full_ddf\d+", k):
            return (1, -int(k[8:]))
        if k == "template":
            return (2, 0)
        return (3, 0) if k == "control" else (4, i)

    ranks = {k: rank(k, i) for i, k in enumerate(dict.fromkeys(key))}
    groups = []
    for k in sorted(ranks, key=ranks.get):
        sub = probes[key == k]
        name = str(sub["group"].iloc[0]) if "label" in probes else probe_group_name(str(k))
        groups.append((name, list(dict.fromkeys(sub["prompt"].astype(str)))))
    return groups


def page_slug(name: str, taken=()) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "world"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    return slug


def own_or_other(records, own_group: int | None, group_of) -> dict:
    """Each seed's verdict split by its top-1 match: the prompt's own training image (any row of its
    near-duplicate group) or another training image; (seed, match id) lists under replicated_own,
    replicated_other, novel_own, novel_other, and n."""
    out: dict = {"n": len(records), "replicated_own": [], "replicated_other": [], "novel_own": [], "novel_other": []}
    for r in records:
        m = r["matches"][0]
        own = own_group is not None and group_of(m["row"]) == own_group
        out[("replicated" if r["replicated"] else "novel") + ("_own" if own else "_other")].append((r["seed"], m["id"]))
        if level(r) == "possible copy":
            out.setdefault("possible", []).append((r["seed"], m["id"]))
    return out


def _ids(pairs) -> str:
    return ", ".join(f"#{literal(i)}" for i in dict.fromkeys(str(m) for _, m in pairs))


def lesson_run_sentence(split: dict, own_id) -> str:
    """What a lesson step's pictures show, from its records (``own_or_other``): how many seeds replicated,
    whose image they copy, and the seeds called novel whose closest match is still the prompt's own image."""
    ro, rx, no = split["replicated_own"], split["replicated_other"], split["novel_own"]
    text = f"**{len(ro) + len(rx)} of {split['n']} seeds replicated**"
    if own_id is None:
        return text + (f" (their closest training images: {_ids(ro + rx)})" if ro or rx else "")
    def via(pairs) -> str:  # the duplicates of the own image that the pairs show in its place
        shown = [m for m in dict.fromkeys(str(m) for _, m in pairs) if m != str(own_id)]
        return f" (shown as its duplicate{'s' if len(shown) > 1 else ''} {_ids((0, m) for m in shown)})" if shown else ""
    said = [f"{len(ro)} copy the prompt's own training image #{literal(own_id)}{via(ro)}"] if ro or not rx else []
    if rx:
        said.append(f"{len(rx)} copy another training image ({_ids(rx)})")
    text += ": " + ", ".join(said) if (ro or rx) else ""
    if no:
        text += (f"; {len(no)} called novel still {'has' if len(no) == 1 else 'have'} #{literal(own_id)}{via(no)} as the closest "
                 f"training image (look at those pairs: a copy with a colour cast can score under the threshold)")
    if split.get("possible"):
        n = len(split["possible"])
        text += f"; {n} of the novel ones {'is a possible copy' if n == 1 else 'are possible copies'} (framed orange)"
    return text + "."


def own_image_html(lab, row: int | None, label: str) -> str:
    """The prompt's own training image as a small figure, to check the pairs against by eye."""
    if row is None:
        return ""
    im, item = lab.item_image(row), lab.item(row)
    if im is None:
        return ""
    return (f'<figure class="own"><img src="{thumb_uri(im, 160)}" alt="{html.escape(label)}" '
            f'style="width:128px;image-rendering:pixelated"><figcaption>{html.escape(label)} #'
            f'{html.escape(str(item.get("id", row)))} · {copies(item.get("duplicates", 0))}</figcaption></figure>')
