"""Keyword clusters (Memory Triggers): prebuilt or new keyword views; a cluster's caption can be sent to
Generate & match."""
from __future__ import annotations

import gradio as gr

from ..keywords import ranked_cluster
from ..limits import number, text
from ..service import Lab
from .charts import keyword_outputs
from .wiring import errors, page_and_api


def keyword_tab(lab: Lab, tabs: gr.Tabs, prompt: gr.Textbox, api) -> None:
    """Keyword clusters (Memory Triggers): prebuilt or new keyword views; a cluster's caption can be sent
    to Generate & match (``tabs`` and ``prompt``)."""
    with gr.Tab("Keyword clusters", id="clusters"):
        gr.Markdown("Which training images stand behind a word (Memory Triggers paper): the items whose "
                    "caption holds the keyword (captions over 77 CLIP tokens dropped), their clusters of "
                    "nearly identical images, each cluster's frequent caption words, and objects that "
                    "come along unnamed.")
        names = lab.keyword_names  # the world's planted keyword first
        with gr.Row():
            kw_pick = gr.Dropdown(names, value=(names or [None])[0],
                                  label="Prebuilt keyword (or type a new one)", allow_custom_value=True,
                                  scale=3, elem_id="kw-pick")
            kw_objects = gr.Textbox(label="Objects to check (comma-separated)", scale=2,
                                    value=", ".join(sorted({o for v in lab.views.values() for o in v.get("objects", {})})))
            kw_btn = gr.Button("Show clusters", variant="primary", scale=1, elem_id="kw-btn")
        first = keyword_outputs(lab, lab.views[names[0]]) if names else (None,) * 4
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

        def show_keyword(keyword, objects, progress=gr.Progress()):
            progress(0, desc="filtering captions and clustering")
            objs = [o.strip() for o in text(objects, "the objects", 2_000, False).split(",") if o.strip()]
            prebuilt = lab.views.get(keyword)
            reuse = prebuilt is not None and set(objs) <= set(prebuilt.get("objects", {}))
            v = prebuilt if reuse else lab.keyword_view(keyword, objects=objs)
            return keyword_outputs(lab, v)

        page_and_api(kw_btn, show_keyword, [kw_pick, kw_objects], [kw_md, kw_plot, kw_table, kw_gallery],
                     api("keyword_clusters"), message=lambda text: (text, None, None, []),
                     cleared=(gr.skip(), gr.skip(), gr.skip(), gr.skip()))

        @errors
        def cluster_prompt(keyword, rank):
            v = lab.keyword_view(keyword)
            rank = 1 if rank is None else number(rank, "the cluster rank", 0, 10**6, integer=True)
            c = ranked_cluster(v, rank)
            return gr.Tabs(selected="generate"), lab.item_caption(c["representatives"][0])

        kw_gen.click(cluster_prompt, [kw_pick, kw_rank], [tabs, prompt], api_name=api("cluster_prompt"))
