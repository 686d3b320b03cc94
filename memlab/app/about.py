"""About this world: its card and the papers."""
from __future__ import annotations

import gradio as gr

from ..service import Lab
from .charts import copy_recall_chart
from .glossary import CITATIONS
from .cardview import world_card_markdown


def about_tab(lab: Lab) -> None:
    """About this world: its card and the papers."""
    with gr.Tab("About this world", id="about"):
        gr.Markdown(world_card_markdown(lab), elem_id="about-card")
        recall = copy_recall_chart(lab)
        if recall is not None:  # (a world measured on no copies has none)
            gr.Plot(recall, label="recall on held-out copies, by kind", elem_id="about-recall")
        gr.Markdown("### Papers\n" + CITATIONS)
