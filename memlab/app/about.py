"""About this world: its card and the papers."""
from __future__ import annotations

import gradio as gr

from ..service import Lab
from .glossary import CITATIONS
from .views import world_card_markdown


def about_tab(lab: Lab) -> None:
    """About this world: its card and the papers."""
    with gr.Tab("About this world", id="about"):
        gr.Markdown(world_card_markdown(lab), elem_id="about-card")
        gr.Markdown("### Papers\n" + CITATIONS)
