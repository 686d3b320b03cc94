"""memlab's web app (the only UI code in memlab): one page per world, its tabs wired to a ``Lab``
(``memlab.service``), which is the whole boundary between the page and the library.

Modules: one per tab (``generate``, ``lesson``, ``compare``, ``match``, ``training``, ``keywords``,
``about``); ``views`` and ``charts`` (what the page shows, pure functions of a run); ``glossary`` (terms and
papers, as data); ``wiring`` (errors as messages, clearing, API names); ``serve`` (launch, files, queue).
Every event has an ``api_name`` so ``gradio_client`` can call it; errors in user input raise ``gr.Error``
(the page keeps serving).
"""
from __future__ import annotations

from typing import Callable

import gradio as gr

from ..service import Lab
from .about import about_tab
from .compare import compare_tab
from .generate import generate_tab
from .glossary import glossary_markdown
from .keywords import keyword_tab
from .lesson import lesson_tab
from .match import match_tab
from .serve import FILE_MAX_AGE_S, launch
from .training import training_set_tab
from .views import literal, page_slug, probe_examples
from .wiring import stop_session

__all__ = ["build_app", "launch", "world_page"]


def build_app(labs) -> gr.Blocks:
    """The app for one world (a ``Lab``) or several: the first on the main page, each further world on its
    own page (``/<world>``, named in the navigation bar), its events named ``generate_<world>``, ..."""
    labs = [labs] if isinstance(labs, Lab) else list(labs)
    first = labs[0]
    # Gradio's copies of every output are deleted hourly once a day old (and all of them at a restart)
    with gr.Blocks(title=f"memlab · {first.name}", delete_cache=(3600, FILE_MAX_AGE_S)) as demo:
        if len(labs) > 1:
            gr.Navbar(main_page_name=first.name)
        world_page(first)
        demo.unload(stop_session)  # a closed page's runs stop at their next denoising step
    for i, lab in enumerate(labs[1:], 1):
        slug = page_slug(lab.name, [page_slug(x.name) for x in labs[:i]])
        with demo.route(lab.name, "/" + slug):
            gr.Navbar(main_page_name=first.name)  # (each page carries the bar's settings)
            world_page(lab, api_suffix="_" + slug.replace("-", "_"))
    return demo


PHONE_TABS = [("Generate", "generate"), ("Lesson", "lesson"), ("Compare", "compare"), ("Match", "match"),
              ("Training set", "train"), ("Keywords", "clusters"), ("About", "about")]


def follow_tab(built: list[str]) -> Callable:
    """The "Go to" row's event for a tab opened from the tab bar: the opened tab's id, read from the ids of
    the tabs the page built (``built``, in their order; a world without a lesson has no Lesson tab)."""
    def follow(evt: gr.SelectData) -> str:
        return built[evt.index]
    return follow


def world_page(lab: Lab, api_suffix: str = "") -> None:
    """One world's page: its tabs, wired to its Lab; each event's API name ends with ``api_suffix``."""
    api: Callable[[str], str] = lambda name: name + api_suffix  # noqa: E731
    lab.register_gpu()
    start = ("**New here? Start with the Lesson tab**, or pick" if lab.lesson_prompts() is not None
             else "Pick")  # (a world whose probes give no lesson has no Lesson tab)
    gr.Markdown(f"# memlab — does a diffusion model copy its training images?\n"
                f"Generate images from a prompt and see each one beside the closest image the model was "
                f"trained on. {start} an example prompt and press "
                f"Generate. World: **{literal(lab.name)}** (details in *About this world*).", elem_id="intro")
    run_state = gr.State(None)
    # on a phone Gradio folds most tabs into its "…" menu: every tab is also one tap away here (shown on
    # narrow screens only, APP_CSS)
    jump = gr.Radio(PHONE_TABS, value="generate", label="Go to", elem_id="phone-tabs", container=False)
    with gr.Tabs() as tabs:
        examples = probe_examples(lab.probes())
        prompt = generate_tab(lab, examples, run_state, api)
        lesson_tab(lab)
        compare_tab(lab, api, examples, prompt)
        match_tab(lab, api)
        training_set_tab(lab, api)
        keyword_tab(lab, tabs, prompt, api, jump)
        about_tab(lab)
    built = [t.id for t in tabs.children if isinstance(t, gr.Tab)]
    jump.choices = [(name, tab) for name, tab in PHONE_TABS if tab in built]  # only the tabs this page has
    # the row follows the tab bar both ways: a tapped row opens its tab, an opened tab marks its row (a tab
    # opened from the bar once left the row on the tab shown before); ``input``: the row's own taps only
    jump.input(lambda t: gr.Tabs(selected=t), jump, tabs, api_name=False, queue=False, show_progress="hidden")
    tabs.select(follow_tab(built), None, jump, api_name=False, queue=False, show_progress="hidden")
    with gr.Accordion("Glossary: the words and numbers on this page", open=True, elem_id="glossary-box"):
        gr.Markdown(glossary_markdown(), elem_id="glossary-text")
