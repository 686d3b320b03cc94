"""Keyword clusters (Memory Triggers): prebuilt or new keyword views; a cluster's caption can be sent to
Generate & match, and its prompt variants run on the same seeds (``memlab.variants``)."""
from __future__ import annotations

from collections import OrderedDict

import gradio as gr

from ..errors import MemlabError
from ..export import write_keyword_zip, write_variants_zip
from ..keywords import ranked_cluster, slug
from ..limits import KEPT_VIEWS, LIMITS, number, text
from ..service import Lab
from ..variants import VARIANTS, cluster_caption, default_variants, stream_variants, study_record
from .charts import keyword_outputs, variant_outputs
from .serve import download_path
from .views import literal
from .wiring import errors, page_and_api


def keyword_tab(lab: Lab, tabs: gr.Tabs, prompt: gr.Textbox, api, jump: gr.Radio | None = None) -> None:
    """Keyword clusters (Memory Triggers): prebuilt or new keyword views; a cluster's caption can be sent
    to Generate & match (``tabs`` and ``prompt``; ``jump``, the phone's "Go to" row, follows)."""
    with gr.Tab("Keyword clusters", id="clusters"):
        gr.Markdown("Which training images stand behind a word (Memory Triggers paper): the items whose "
                    "caption holds the keyword (captions over 77 CLIP tokens dropped), their clusters of "
                    "nearly identical images, each cluster's frequent caption words, and objects that "
                    "come along unnamed.")
        names = lab.keyword_names  # the world's planted keyword first
        with gr.Row():
            kw_pick = gr.Dropdown(names, value=(names or [None])[0],
                                  label="Prebuilt keyword (or type a new one; 'almond + blossoming': both, in any order)", allow_custom_value=True,
                                  scale=3, elem_id="kw-pick")
            kw_objects = gr.Textbox(label="Objects to check (comma-separated)", scale=2,
                                    value=", ".join(sorted({o for v in lab.views.values() for o in v.get("objects", {})})))
            kw_related = gr.Textbox("", label="Whose works? A related keyword, e.g. an artist (optional)", scale=2,
                                    elem_id="kw-related")
            kw_btn = gr.Button("Show clusters", variant="primary", scale=1, elem_id="kw-btn")
        first = keyword_outputs(lab, lab.views[names[0]], lab.views[names[0]].get("related")) if names else (None,) * 4
        kw_md = gr.Markdown(first[0], elem_id="kw-summary")
        kw_plot = gr.Plot(first[1], label="cluster sizes (30 largest)", elem_id="kw-plot")
        kw_table = gr.Dataframe(first[2], label="clusters", elem_id="kw-table", wrap=True,
                                column_widths=["64px", "64px", "128px", "144px"])  # the words take the rest
        kw_gallery = gr.Gallery(first[3], label="cluster thumbnails", columns=8, format="png",
                                elem_id="kw-gallery")
        with gr.Row():
            clustered = bool(names) and any(not c["miscellaneous"] for c in lab.views[names[0]]["clusters"])
            kw_rank = gr.Number(value=1 if clustered or not names else 0, minimum=0, step=1, scale=1,
                                label="Cluster rank (0: the miscellaneous images)", elem_id="kw-rank")
            kw_gen = gr.Button("Generate from this cluster's caption", scale=2, elem_id="kw-gen")

        clustered_by_keyword = OrderedDict()  # keyword -> whether its view has a cluster, for the latest shown (a
        # hosted app's visitors may type any number of words; the objects asked change no cluster)

        def shown(keyword, objects, related):
            """The view and whose works the page shows for these boxes (a prebuilt or kept view that checked these
            objects: no recount; a prebuilt view's own whose works when the box is empty)."""
            objs = [o.strip() for o in text(objects, "the objects", 2_000, False).split(",") if o.strip()]
            related = text(related, "the related keyword", LIMITS["query_chars"], required=False)
            v = lab.keyword_view(keyword, objects=objs)
            return v, lab.related_share(v, related) if related.strip() else v.get("related")

        def show_keyword(keyword, objects, related="", progress=gr.Progress()):
            progress(0, desc="filtering captions and clustering")
            v, rel = shown(keyword, objects, related)
            clustered_by_keyword[keyword] = any(not c["miscellaneous"] for c in v["clusters"])
            clustered_by_keyword.move_to_end(keyword)
            while len(clustered_by_keyword) > KEPT_VIEWS:
                clustered_by_keyword.popitem(last=False)
            return keyword_outputs(lab, v, rel)

        def first_rank(keyword):  # the rank box follows the keyword shown: its largest cluster, or its misc images
            clustered = clustered_by_keyword.get(keyword)
            return gr.skip() if clustered is None else int(clustered)

        page_and_api(kw_btn, show_keyword, [kw_pick, kw_objects, kw_related], [kw_md, kw_plot, kw_table, kw_gallery],
                     api("keyword_clusters"), message=lambda text: (text, None, None, []),
                     cleared=(gr.skip(), gr.skip(), gr.skip(), gr.skip())).then(
                         first_rank, [kw_pick], [kw_rank], api_name=False)

        @errors
        def cluster_prompt(keyword, rank):
            v = lab.keyword_view(keyword)
            rank = _rank(rank)
            c = ranked_cluster(v, rank)
            return gr.Tabs(selected="generate"), lab.item_caption(c["representatives"][0])

        sent = kw_gen.click(cluster_prompt, [kw_pick, kw_rank], [tabs, prompt], api_name=api("cluster_prompt"))
        if jump is not None:
            sent.success(lambda: "generate", None, jump, api_name=False, queue=False, show_progress="hidden")
        with gr.Row():
            kw_export = gr.Button("Export this view (JSON, CSV and images)", elem_id="kw-export")
            kw_file = gr.File(label="keyword.zip", visible=False, elem_id="kw-file")

        @errors
        def export_view(keyword, objects, related):  # the view the page shows for these boxes
            v, rel = shown(keyword, objects, related)
            return str(write_keyword_zip(lab, v, rel, download_path(f"{slug(keyword)}.zip")))

        exported = kw_export.click(export_view, [kw_pick, kw_objects, kw_related], [kw_file],
                                   api_name=api("export_keyword"))
        exported.success(lambda: gr.update(visible=True), None, [kw_file], api_name=False, show_progress="hidden")
        variants_panel(lab, kw_pick, kw_rank, api)


def _rank(rank) -> int:
    """A cluster rank as a caller sent it (none: 1, the largest; 0: the miscellaneous images)."""
    return 1 if rank is None else number(rank, "the cluster rank", 0, 10**6, integer=True)


def _variant_prompts(lab: Lab, keyword, rank) -> list[str]:
    v = lab.keyword_view(keyword)
    rank = _rank(rank)
    d = default_variants(v["keyword"], cluster_caption(v, rank, lab.item_caption))
    return [d[k] for k in VARIANTS]


def variants_panel(lab: Lab, kw_pick: gr.Dropdown, kw_rank: gr.Number, api) -> None:
    """Memory Triggers' prompt variants of the chosen cluster (``memlab.variants``): the cluster's caption and the
    paper's five kinds of caption, filled from templates and editable, each run on the same seeds."""
    names = lab.keyword_names
    clustered = [k for k in names if any(not c["miscellaneous"] for c in lab.views[k]["clusters"])]
    try:
        first = _variant_prompts(lab, names[0], 1) if names else [""] * len(VARIANTS)
    except MemlabError:  # the first keyword has no cluster
        first = [""] * len(VARIANTS)
    with gr.Accordion("Prompt variants of this cluster (Memory Triggers)", open=False, elem_id="kw-variants"):
        gr.Markdown("Does the copying follow the caption or its keywords? The paper writes five captions around a "
                    "cluster's keywords (kinds below), generates each on many seeds and counts the generations "
                    "similar to the cluster's images. Here they are filled from templates around the keyword and "
                    "the cluster's most frequent caption (run first, for reference); edit any, empty one to skip it."
                    + ("" if any(first) or not clustered else
                       f" “{literal(names[0])}” has no cluster: pick one that has (“{literal(clustered[0])}”), "
                       f"then Fill."))
        boxes = [gr.Textbox(value=p, label=f"{k}: {VARIANTS[k]}", elem_id=f"kw-var-{k}", max_lines=3)
                 for k, p in zip(VARIANTS, first)]
        with gr.Row():
            v_fill = gr.Button("Fill from the keyword and rank above", scale=2, elem_id="kw-var-fill")
            v_seeds = gr.Number(value=8, minimum=1, maximum=LIMITS["variant_seeds"], step=1, scale=1,
                                label=f"Seeds (0 to n-1, at most {LIMITS['variant_seeds']})", elem_id="kw-var-seeds")
            v_run = gr.Button("Run the variants", variant="primary", scale=2, elem_id="kw-var-run")
            v_stop = gr.Button("Stop", variant="stop", scale=1, elem_id="kw-var-stop")
        v_md = gr.Markdown(elem_id="kw-var-summary")
        v_plot = gr.Plot(label="share of seeds per variant", elem_id="kw-var-plot")
        v_table = gr.Dataframe(label="variants", elem_id="kw-var-table", wrap=True,
                               column_widths=["88px", "280px", "80px", "80px", "80px", "84px", "84px", "240px"])
        v_gallery = gr.Gallery(label="generations (variant · seed · verdict · top-1 match)", columns=8, format="png",
                               elem_id="kw-var-gallery")
        v_state = gr.State(None)
        with gr.Row():
            v_export = gr.Button("Export the variants (JSON + images)", elem_id="kw-var-export")
            v_file = gr.File(label="variants.zip", visible=False, elem_id="kw-var-file")

    v_fill.click(errors(lambda kw, rank: _variant_prompts(lab, kw, rank)), [kw_pick, kw_rank], boxes,
                 api_name=api("variant_prompts"))

    def run_variants(keyword, rank, n_seeds, caption, keywords, short, long, irrelevant, without,
                     progress=gr.Progress(), stop=None):
        view = lab.keyword_view(keyword)
        rank = _rank(rank)
        seeds = lab.seeds(n_seeds, limit=LIMITS["variant_seeds"])
        given = (caption, keywords, short, long, irrelevant, without)
        prompts = {k: text(p, f"the {k} variant", LIMITS["prompt_chars"], required=False) for k, p in zip(VARIANTS, given)}
        settings = lab.settings()
        ranked_cluster(view, rank)
        results, asked = [], sum(bool(p.strip()) for p in prompts.values())

        def study():
            thr = lab.threshold()
            return {"record": study_record(view, rank, results, thr, lab.descriptor_label(), seeds, settings,
                                           asked=asked), "results": results}
        for results in stream_variants(lab, view, rank, prompts, seeds, settings, stop=stop,
                                       progress=lambda i, n, kind, d: progress((i * len(seeds) + d, n * len(seeds)),
                                                                               desc=f"variant: {kind}", unit="images")):
            yield study(), *variant_outputs(lab, view, rank, results, seeds, settings)
        if len(results) < asked:
            md, fig, table, gallery = variant_outputs(lab, view, rank, results, seeds, settings) if results else \
                ("", None, None, [])
            yield (study() if results else None,
                   f"**Partial: stopped after {len(results)} of {asked} variants.**\n\n" + md, fig, table, gallery)

    event = page_and_api(v_run, run_variants, [kw_pick, kw_rank, v_seeds, *boxes],
                         [v_state, v_md, v_plot, v_table, v_gallery], api("prompt_variants"),
                         message=lambda t: (None, t, None, None, []), cleared=(None, "", None, None, []),
                         progress_on=[v_md])
    v_stop.click(None, None, None, cancels=[event], api_name=False)

    @errors
    def export_variants(state):
        if not state:
            raise MemlabError("nothing to export yet: run the variants first")
        name = "variants-partial.zip" if state["record"].get("partial") else "variants.zip"
        return str(write_variants_zip(download_path(name), state["record"],
                                      state["results"]))

    exported = v_export.click(export_variants, [v_state], [v_file], api_name=api("export_variants"))
    exported.success(lambda: gr.update(visible=True), None, [v_file], api_name=False, show_progress="hidden")
