"""The page's plotly charts, as pure functions of a run and its ``Lab``: the top-1 scores over the training
set's background, the per-seed scores, token attribution, a comparison's bars and a keyword view's sizes."""
from __future__ import annotations

import html
import textwrap

from ..records import RunState
from ..service import Lab
from .views import level, literal, short_label

WIDTH = 56  # characters a line of a chart's text: plotly wraps none, and a phone gives a chart about 350 px
LINE = 17  # pixels a line of a title takes (plotly spaces <sup> lines as the title's own)


def plain(text) -> str:
    """Text as plotly shows it literally: plotly reads ``<a href>``, ``<b>``, ``<span style>`` and the like inside
    a chart's text, so a keyword, a caption word or a descriptor's name from a world elsewhere could put a link in
    a title; its ``&lt;``, ``&gt;`` and ``&amp;`` it shows as the characters."""
    return html.escape(str(text), quote=False)


def wrap(text: str, width: int = WIDTH, size: str = "") -> str:
    """``text`` (plain text: ``plain``) in lines of at most ``width`` characters joined by ``<br>`` (long words
    broken at their hyphens), each line in ``<size>`` tags (``sup``) when given."""
    lines = [plain(ln) for ln in textwrap.wrap(text, width)] or [""]
    return "<br>".join(f"<{size}>{ln}</{size}>" if size else ln for ln in lines)


def source_text(lab: Lab, name: str | None = None) -> str:
    """A chart's source (the page's own label, with the score's definition, ran off both sides of a chart):
    descriptor, model, threshold and preset; the score's definition is the axis title's (``Lab.score_axis``)
    and the page's text."""
    info = lab.index.descriptor_info(name or lab.descriptor.name)
    thr = info["threshold"]
    return " · ".join([info["name"], str(info["model"]), f"threshold {thr['value']:.3f} ({thr['source']})",
                       f"preset {info['preset']}"] + ([f"indexed: {info['indexed']}"] if info.get("indexed") else []))


def settings_text(records) -> str:
    """The sampling settings the run's records name (`` · 30 steps, guidance 5``), or nothing."""
    st = (records[0].get("settings") if len(records) else None) or {}
    return f" · {st['steps']} steps, guidance {st['guidance']:g}" if "steps" in st and "guidance" in st else ""


def run_text(records) -> str:
    """What a run's chart was made from besides the descriptor: its seeds, mitigation and sampling settings."""
    spec = (records[0].get("mitigation") or {}).get("spec")
    return (f"{len(records)} seed{'s' * (len(records) != 1)}" + (f" · mitigation {spec}" if spec else "")
            + settings_text(records))


def _lines(text: str) -> int:
    return text.count("<br>") + 1


TITLE_Y = 42  # px from a chart's top to its title: below the page's label for the chart (about 30 px from the top
# of its box), which a phone's width puts in line with the centred title


def _title(text: str, height: int, size: int = 13) -> dict:
    """A title of several lines pinned to the figure's top (plotly centres it in the top margin otherwise, and
    a tall one runs into the plot), centred: the page's label for the chart sits on its top-left corner."""
    return dict(text=text, font=dict(size=size), yref="container", y=1 - TITLE_Y / height, yanchor="top", x=0.5,
                xanchor="center")


def histogram(lab: Lab, scores, title_extra: str = "", descriptor: str | None = None, records=()):
    """The generations' top-1 scores over the training set's own background; ``records`` (the run's): its
    seeds, mitigation and settings named in the title beside the score's source."""
    import plotly.graph_objects as go

    thr = lab.threshold(descriptor)["value"]
    fig = go.Figure()
    fig.add_histogram(x=lab.background(descriptor), histnorm="probability density",
                      name=wrap("background: distinct training images (each vs its nearest other distinct image)"),
                      opacity=0.55, nbinsx=40, marker_color="#888")
    if len(scores):
        fig.add_histogram(x=list(scores), histnorm="probability density", name="generations (top-1)",
                          opacity=0.75, nbinsx=20, marker_color="#d62728")
    fig.add_vline(x=thr, line_dash="dash", annotation_text=f"threshold {thr:.3f}")
    title = (wrap(f"top-1 similarity vs background{title_extra}") + "<br>"
             + (wrap(run_text(records), 64, "sup") + "<br>" if len(records) else "")
             + wrap(source_text(lab, descriptor), 64, "sup"))
    axis = wrap(lab.score_axis(descriptor), 50)
    top = TITLE_Y + 8 + LINE * _lines(title)
    bottom = 34 + 15 * _lines(axis) + 60  # tick labels, the axis title's lines (font 11), the legend (two rows on a phone)
    height = 200 + top + bottom
    fig.update_layout(barmode="overlay", height=height, margin=dict(l=40, r=10, t=top, b=bottom),
                      title=_title(title, height), yaxis_title="density",
                      xaxis_title=dict(text=axis, font=dict(size=11)),
                      legend=dict(orientation="h", yref="container", yanchor="bottom", y=0.0))
    return fig


def seed_scores_chart(lab: Lab, state: RunState, descriptor: str | None = None):
    """Each seed's top-1 score as a point, replicated ones in red, with the threshold drawn."""
    import plotly.graph_objects as go

    thr = lab.threshold(descriptor)["value"]
    recs = state.records if state else []
    fig = go.Figure()
    fig.add_scatter(x=[str(r["seed"]) for r in recs], y=[r["score"] for r in recs], mode="markers",
                    marker=dict(size=11, color=[{"replicated": "#d62728", "template copy": "#8e24aa", "possible copy": "#ef6c00"}.get(
                        level(r), "#1f77b4") for r in recs]),
                    hovertext=[plain(f"seed {r['seed']}: {r['score']:.3f} · training image #{r['matches'][0]['id']}")
                               for r in recs], hoverinfo="text", name="top-1 score")
    fig.add_hline(y=thr, line_dash="dash")  # named in the title: a label on the line would sit on the points
    lo, hi = min([thr] + [r["score"] for r in recs]), max([thr] + [r["score"] for r in recs])
    pad = max(0.02, 0.15 * (hi - lo))  # the line and every point inside the axis, however close they are
    title = ("top-1 score per seed<br>" + (wrap(run_text(recs), 64, "sup") + "<br>" if recs else "")
             + wrap(f"dashed: threshold {thr:.3f}; red: replicated, purple: template copy, orange: possible copy", 64, "sup"))
    top = TITLE_Y + 8 + LINE * _lines(title)
    fig.update_layout(height=200 + top, margin=dict(l=40, r=10, t=top, b=40), showlegend=False,
                      title=_title(title, 200 + top),
                      xaxis_title="seed", yaxis_title=lab.score_axis(descriptor).split(" (")[0],  # what is plotted
                      xaxis_type="category",
                      yaxis_range=[lo - pad, hi + pad])
    return fig


COPY_MAKERS = {"model": "the world's model", "views": "the model memlab-copy took training views from"}
MAKER_COLOURS = ("#1f77b4", "#9e9e9e", "#2ca02c", "#8c564b")  # (not the red the app gives a replicated seed)


def copy_recall_chart(lab: Lab, descriptor: str | None = None):
    """The threshold's recall on copies of held-out training images (the index's ground truth), kind by kind,
    each with its Wilson interval over the items, the world's own model beside the one the descriptor took its
    training views from (issue 30's held-out check), the 90% the card checks drawn; None without copies."""
    import plotly.graph_objects as go

    from ..metrics import recall_interval

    thr = lab.threshold(descriptor)
    by: dict[str, dict] = {}
    for key, v in (thr.get("ground_truth") or {}).items():
        maker, _, kind = key.rpartition(":")
        if kind != "all" and not kind.startswith("all-") and v.get("n"):  # the pooled rows are no kind of copy
            by.setdefault(maker, {})[kind] = v
    if not by:
        return None
    kinds = sorted({k for got in by.values() for k in got},
                   key=lambda k: (not k.startswith("img2img"), k != "vae", k))  # the model's own, then edited ones
    fig = go.Figure()
    makers = [m for m in COPY_MAKERS if m in by] + sorted(m for m in by if m not in COPY_MAKERS)
    for maker, colour in zip(makers, MAKER_COLOURS * len(makers)):
        got = by[maker]
        ivs = {k: recall_interval(v["recall"], v["n"]) for k, v in got.items()}
        shown = [k for k in kinds if k in got]
        fig.add_bar(x=shown, y=[got[k]["recall"] for k in shown],
                    name=wrap(COPY_MAKERS.get(maker) or maker or "held-out copies", 48), marker_color=colour,
                    error_y=dict(type="data", symmetric=False, array=[ivs[k]["high"] - got[k]["recall"] for k in shown],
                                 arrayminus=[got[k]["recall"] - ivs[k]["low"] for k in shown]),
                    hovertext=[plain(f"{k}: {got[k]['recall']:.1%} of {got[k]['n']} (95% interval "
                                     f"{ivs[k]['low']:.1%}-{ivs[k]['high']:.1%})") for k in shown], hoverinfo="text")
    fig.add_hline(y=0.9, line_dash="dash")
    title = (wrap("recall at the threshold on copies of held-out training images, by kind") + "<br>"
             + wrap("whiskers: 95% Wilson intervals over the items; dashed: 90%, the recall the built-in world's card "
                    "asks of every kind", 64, "sup")
             + "<br>" + wrap(source_text(lab, descriptor), 64, "sup"))
    top = TITLE_Y + 8 + LINE * _lines(title)
    height = 240 + top + 90
    fig.update_layout(barmode="group", height=height, margin=dict(l=40, r=10, t=top, b=90), title=_title(title, height),
                      yaxis=dict(title="recall", range=[0, 1.05], tickformat=".0%"), xaxis_title="kind of copy",
                      legend=dict(orientation="h", yref="container", yanchor="bottom", y=0.0))
    return fig


def attribution_control(card: dict | None) -> str | None:
    """What the world's card measured of token attribution against its control (``measured``'s
    ``token_attribution``: distinctive words above template words on the memorized probes, and on the unique
    probes, which are not copied): a caveat where the control shows the same, else None."""
    t = ((card or {}).get("measured") or {}).get("token_attribution") or {}
    n, k = t.get("control_unique_probes"), t.get("control_distinctive_above_template")
    if not n or k is None or t.get("probes") is None:
        return None
    mem = t["distinctive_above_template"] / t["probes"]
    if k / n < mem:
        return None
    return (f"on this world the distinctive words lead for {t['distinctive_above_template']} of {t['probes']} "
            f"memorized prompts and {k} of {n} prompts seen once (its card): they steer the model, copied or not")


def attribution_chart(tokens: list[dict], card: dict | None = None):
    """A bar per prompt token (start and end tokens left out): Wen et al.'s token attribution; with the world's
    ``card``, what its control says of it (``attribution_control``)."""
    import plotly.graph_objects as go

    toks = tokens[1:-1] or tokens
    fig = go.Figure(go.Bar(x=[plain(f"{t['token'].strip()}·{t['position']}") for t in toks],
                           y=[t["attribution"] for t in toks], marker_color="#9467bd",
                           hovertext=[plain(t["token"]) for t in toks]))
    caveat = attribution_control(card)
    title = (wrap("which words drive the memorization signal (the prompt as typed, no mitigation)") + "<br>"
             + wrap("gradient of ‖ε(x_t,c) − ε(x_t,∅)‖ w.r.t. each token's input embedding, first step, mean over "
                    "the first 4 seeds (Wen et al. 2024)", 64, "sup")
             + (f"<br>{wrap(caveat, 64, 'sup')}" if caveat else ""))
    top = TITLE_Y + 8 + LINE * _lines(title)
    fig.update_layout(height=200 + top, margin=dict(l=40, r=10, t=top, b=60), title=_title(title, 200 + top),
                      yaxis_title="attribution")
    return fig


def compare_figure(lab: Lab, state: RunState):
    """Replication % and dataset similarity per strategy, short labels (full spec on hover); the
    similarity axis spans the values shown (and the threshold when near), so differences are visible."""
    from plotly.subplots import make_subplots

    summ = state.summaries
    names = [short_label(s["mitigation"]) for s in summ]
    specs = [s["mitigation"]["spec"] for s in summ]
    name = summ[0]["descriptor"]["name"]
    thr = lab.threshold(name)["value"]
    rates = [100 * s["replication_rate"] for s in summ]
    p95 = [s["dataset_similarity"]["p95"] for s in summ]
    # short titles: side by side they share a phone's 350 px
    ivs = [s.get("replication_interval") for s in summ]  # each rate's 95% interval over its seeds (Wilson's)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("replication %", "dataset similarity p95"))
    tops = [100 * iv["high"] for iv in ivs] if all(ivs) else rates
    fig.add_bar(x=names, y=rates, row=1, col=1, marker_color="#d62728", hovertext=specs,
                error_y=dict(type="data", symmetric=False, color="#444", thickness=1.5, width=6,
                             array=[t - r for t, r in zip(tops, rates)],
                             arrayminus=[r - 100 * iv["low"] for iv, r in zip(ivs, rates)]) if all(ivs) else None)
    fig.add_scatter(x=names, y=tops, row=1, col=1, mode="text", text=[f"{r:.1f}%" for r in rates],
                    textposition="top center", hoverinfo="skip")  # each rate above its interval's whisker
    fig.add_scatter(x=names, y=p95, row=1, col=2, mode="markers+text", marker=dict(size=14, color="#1f77b4"),
                    hovertext=specs, text=[f"{v:.3f}" for v in p95], textposition="top center")
    lo, hi = min(p95), max(p95)
    pad = max(0.02, 0.25 * (hi - lo))
    lo, hi = lo - pad, hi + pad
    if lo - 0.1 <= thr <= hi + 0.1:  # the threshold, when it is near enough to read against
        lo, hi = min(lo, thr - 0.01), max(hi, thr + 0.01)
        fig.add_hline(y=thr, line_dash="dash", row=1, col=2, annotation_text=f"threshold {thr:.3f}")
    fig.update_yaxes(range=[0, max(105, max(tops) + 14)], row=1, col=1)
    fig.update_yaxes(range=[lo, hi], row=1, col=2)
    run = (f"the same {summ[0].get('n_seeds', len(summ[0].get('seeds', [])))} seeds for every strategy"
           + settings_text(state.records) + (" · whiskers: each rate's 95% interval (Wilson)" if all(ivs) else ""))
    title = wrap(run, 64, "sup") + "<br>" + wrap(source_text(lab, name), 64, "sup")
    top = TITLE_Y + 8 + LINE * _lines(title) + 30  # the run's and the source's lines above the subplots' titles
    fig.update_layout(height=270 + top, showlegend=False, margin=dict(l=40, r=10, t=top, b=40),
                      title=_title(title, 270 + top, 12))
    return fig


def keyword_outputs(lab: Lab, v: dict, related: dict | None = None):
    """Summary, size chart, cluster table and thumbnails of one keyword view; with ``related``
    (``memlab.keywords.related_share``), the related keyword's clusters marked in each."""
    import pandas as pd
    import plotly.graph_objects as go

    real = [c for c in v["clusters"] if not c["miscellaneous"]]
    d = v["descriptor"]
    lines = [f"### “{literal(v['keyword'])}”: {v['n_before']} captions, {v['n_after']} within 77 CLIP tokens "
             f"({v['n_too_long']} dropped)",
             f"- {len(real)} clusters of nearly identical images (cosine ≥ {v['cluster_threshold']:.3f}, "
             f"{literal(v.get('cluster_threshold_source', 'threshold'))}, on "
             f"{literal(d.get('name'))} · {literal(d.get('model'))} · {literal(d.get('preset'))}"
             + (f": {literal(d['why'])}" if d.get("why") else "") + f"); miscellaneous (in no cluster): "
             f"{v['miscellaneous_size']}" + (f", not ranked: {literal(v['omitted_rule'])}" if v.get("omitted_rule") else ""),
             f"- share of the keyword's items in the largest 1 / 3 / 5 clusters: "
             f"{v['share_in_top']['top1']:.0%} / {v['share_in_top']['top3']:.0%} / {v['share_in_top']['top5']:.0%}"]
    for o, sh in v.get("objects", {}).items():
        if sh["keyword_share"] is not None:
            named = sh.get("named_in_captions")
            lines.append(f"- **{literal(o)}**, never named in the caption: in {sh['keyword_share']:.1%} of the "
                         f"“{literal(v['keyword'])}” distinct images ({sh['keyword_count']} of {sh.get('keyword_images', '?')}) "
                         f"vs {sh['overall_share']:.1%} of all distinct training images "
                         f"({sh['overall_count']} of {sh.get('overall_images', '?')}); named in "
                         f"{named if named is not None else '?'} of the keyword's captions · source: {literal(sh['source'])}")
    related = related if related and related.get("share") is not None else None  # (a view of no item: none)
    ranks = set(related["related_ranks"]) if related else set()
    if related:
        r, k, ranks_shown = literal(related["keyword"]), literal(v["keyword"]), related["related_ranks"]
        lines.append(f"- **whose works**: {related['share']:.0%} of the “{k}” items ({related['items']} of "
                     f"{v['n_after']}) lie in the clusters of “{r}”'s works (" + (", ".join(
                         f"#{x}" for x in ranks_shown[:10]) or "none") + (f" and {len(ranks_shown) - 10} more" if len(
                         ranks_shown) > 10 else "") + f"; {literal(related['rule'])}); "
                     f"{related['captions_share']:.0%} of the “{k}” captions name “{r}” themselves")
    fig = go.Figure(go.Bar(x=[f"#{c['rank']}" for c in real[:30]], y=[c["size"] for c in real[:30]],
                           marker_color=["#ff7f0e" if c["rank"] in ranks else "#1f77b4" for c in real[:30]]))
    title = f"“{v['keyword']}”: cluster sizes (30 largest)"
    title = wrap(title + f" · orange: “{related['keyword']}”'s works", 40) if related else plain(title)  # a phone's width
    fig.update_layout(height=280 + 18 * (_lines(title) - 1), margin=dict(l=40, r=10, t=40 + 18 * (_lines(title) - 1),
                                                                           b=40),
                      title=title, xaxis_title="cluster", yaxis_title="items")
    if not real:  # an empty frame with axes from -1 to 6 said nothing: say why there are no bars
        fig.add_annotation(text=wrap(f"no clusters: none of the {v['n_after']} images is nearly identical to another "
                                     f"(all {v['miscellaneous_size']} are miscellaneous)", 36),  # a phone's width
                           xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False, font=dict(size=14))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    table = pd.DataFrame([{"rank": 0 if c["miscellaneous"] else c["rank"], "size": c["size"],  # never ranked
                           "miscellaneous": c["miscellaneous"],
                           "distinct images": c["distinct_images"],
                           "frequent words": ", ".join(f"{w} ({n})" for w, n in c["top_words"])}
                          for c in v["clusters"]])
    if related:  # each cluster's captions anywhere in the training set that name the related keyword
        table.insert(4, f"name “{related['keyword']}”", [f"{c['naming']} of {c['captions']}" + (" ✓" if c["related"]
                                                                                              else "")
                                                       for c in related["clusters"]])
    thumbs = []
    for c in v["clusters"][:12]:
        for r in c["representatives"][:4]:
            im = lab.item_file(r)
            if im is not None:
                thumbs.append((im, f"{'misc' if c['miscellaneous'] else '#' + str(c['rank'])} · {c['size']} items"))
    return "\n".join(lines), fig, table, thumbs


def variant_outputs(lab: Lab, view: dict, rank: int, results: list, seeds, settings, descriptor: str | None = None):
    """A prompt-variant study (``memlab.variants``) as the page shows it: a summary, a chart of each variant's
    four shares with their 95% Wilson intervals, a table, and the generations (each captioned with its top-1
    match and whether that is one of the cluster's images)."""
    import pandas as pd
    import plotly.graph_objects as go

    from ..variants import cluster_groups

    groups = cluster_groups(view, rank, lab.index.groups_of)
    thr = lab.threshold(descriptor)
    src = source_text(lab, descriptor)
    lines = [f"### Prompt variants of cluster #{rank} of “{literal(view['keyword'])}” on seeds "
             f"{literal(_seed_words(seeds))}",
             f"- **in cluster**: seeds whose top-1 training match is one of the cluster's images; **copies**: those "
             f"also replicated at the threshold {thr['value']:.3f} ({literal(thr['source'])}); **replicated**: from "
             f"any training image; **keyword's images**: the top-1 match is any image whose caption holds the "
             f"keyword (the copying may follow the word to another cluster). Each with its 95% interval over the "
             f"seeds (Wilson).",
             f"- scores: {literal(src)}; {settings.steps} steps, guidance {settings.guidance:g}; text similarity: "
             f"{literal(lab.text_source())}",
             "- The paper's captions were written by ChatGPT and its thresholds set by hand per cluster; these are "
             "memlab's templates (edit any of them) and the world's calibrated threshold."]
    lines += [f"- ⚠️ {r['kind']}: {literal(r['warning'])}" for r in results if r.get("warning")]
    kinds = [r["kind"] for r in results]
    fig = go.Figure()
    for key, name, colour in (("in_cluster", "top-1 in the cluster", "#1f77b4"), ("copies", "copies of the cluster",
                                                                                   "#d62728"),
                              ("replicated", "replicated (any image)", "#7f7f7f"),
                              ("in_keyword", "top-1 one of the keyword's images", "#9467bd")):
        iv = [r["figures"][key] for r in results]
        rate = [100 * i["k"] / max(1, i["n"]) for i in iv]
        fig.add_trace(go.Bar(x=kinds, y=rate, name=name, marker_color=colour,
                             error_y=dict(type="data", symmetric=False,
                                          array=[100 * i["high"] - r for i, r in zip(iv, rate)],
                                          arrayminus=[r - 100 * i["low"] for i, r in zip(iv, rate)])))
    title = (wrap(f"“{view['keyword']}” cluster #{rank}: % of {len(seeds)} seeds per variant (whiskers: 95% "
                  f"interval, Wilson)") + "<br>" + wrap(f"{settings.steps} steps, guidance {settings.guidance:g} · {src}",
                                                        64, "sup"))
    top = TITLE_Y + 8 + LINE * _lines(title)
    fig.update_layout(barmode="group", height=260 + top, margin=dict(l=40, r=10, t=top, b=40),
                      title=_title(title, 260 + top), yaxis=dict(range=[0, 105], title="% of seeds"),
                      legend=dict(orientation="h", y=-0.2))
    table = pd.DataFrame([{"variant": r["kind"], "prompt": r["prompt"],
                           **{k.replace("_", " "): f"{r['figures'][k]['k']} of {r['figures'][k]['n']}"
                              for k in ("in_cluster", "copies", "replicated")},
                           "keyword's images": f"{r['figures']['in_keyword']['k']} of {r['figures']['in_keyword']['n']}",
                           "text similarity": round(r["closest_caption"]["text_similarity"], 3)
                           if r["closest_caption"] else None,
                           "closest training caption": r["closest_caption"]["caption"] if r["closest_caption"] else ""}
                          for r in results],
                         columns=["variant", "prompt", "in cluster", "copies", "replicated", "keyword's images",
                                  "text similarity",
                                  "closest training caption"])
    gallery = []
    for r in results:
        for rec, im in zip(r["records"], r["images"]):
            top = rec["matches"][0]
            where = "the cluster's" if int(top["group"]) in groups else "another"
            gallery.append((im, f"{r['kind']} · seed {rec['seed']} · {rec['verdict']} · top-1 #{top['row']} "
                                f"({where}) {top['score']:.3f}"))
    return "\n".join(lines), fig, table, gallery


def _seed_words(seeds) -> str:
    s = list(seeds)
    return f"{s[0]}-{s[-1]}" if s == list(range(s[0], s[-1] + 1)) and len(s) > 1 else ",".join(map(str, s))
