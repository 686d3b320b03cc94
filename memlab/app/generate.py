"""Generate & match: a prompt over seeds, streamed pairs of generation and training match, the headline,
tables and charts, token attribution, a seed's top-k and the export."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..errors import MemlabError
from ..limits import APP_MAX_SEEDS
from ..records import RunState, collapse_matches
from ..scorenorm import is_mirrored
from ..service import Lab
from .charts import attribution_chart, histogram, seed_scores_chart
from .pictures import pair_image
from .serve import as_file, download_path
from .views import (ID_COLUMNS, ID_WIDTHS, SEED_COLUMNS, SEED_WIDTHS, bright_ending_note, caption, copies, headline,
                    id_table, level, seed_table)
from .wiring import MITIGATION_CHOICES, errors, run_button, scroll_first


def generate_tab(lab: Lab, examples: list[tuple[str, list[str]]], run_state: gr.State, api) -> gr.Textbox:
    """Generate & match: prompt, seeds, mitigations, descriptor; streamed pairs, headline, table, histogram,
    token attribution, top-k of a selected seed, export. Returns the prompt box (other tabs fill it)."""
    with gr.Tab("Generate & match", id="generate"):
        c = _controls(lab, examples)
        o = _results(lab)
        _wire_generation(lab, c, o, run_state, api)  # (its hidden API button sits in this tab)
        _wire_details(lab, c, o, run_state, api)
    return c.prompt


def _controls(lab: Lab, examples) -> SimpleNamespace:
    """The prompt with the world's probes as examples, and the run's settings and buttons."""
    defaults = lab.defaults
    with gr.Row():
        with gr.Column(scale=2, elem_id="controls-main"):
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a prompt to test for memorization",
                                elem_id="prompt")
            with gr.Row():  # under the prompt: on a phone both are on the first screen
                go_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn", scale=3)
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn", scale=1)
            examples_block(prompt, examples)
            # under the examples (beside the settings, which once left this column a tall empty block)
            desc_choice = gr.Dropdown(lab.descriptor_names, value=lab.descriptor.name,
                                      label="Copy descriptor (the verdict's score and threshold)",
                                      elem_id="descriptor")
            att_btn = gr.Button("Which words drive it? (token attribution)", elem_id="attribution-btn")
            # next to its button (it once appeared far from it, between the examples and the results)
            att_plot = gr.Plot(label="token attribution (Wen et al.)", elem_id="attribution", visible=False)
        with gr.Column(scale=1, elem_id="controls-settings"):
            # a number box, not a slider: a slider's box silently clamps 0 to 1 and 100000 to the
            # maximum in the browser; here the server answers an out-of-range count with a message
            n_seeds = gr.Number(value=8, label=f"Number of seeds (1 to {APP_MAX_SEEDS} per run)",
                                elem_id="n-seeds")
            seed_list = gr.Textbox(label=f"…or explicit seeds (at most {APP_MAX_SEEDS})",
                                   placeholder="e.g. 0-3,10")
            mits = gr.CheckboxGroup(MITIGATION_CHOICES, label="Mitigations (applied together)")
            with gr.Row():
                k = gr.Slider(1, 10, value=4, step=1, label="k (rna, rt, cwr)")
                lam = gr.Slider(0.0, 1.0, value=0.1, step=0.01, label="λ (gni)")
            with gr.Accordion("Sampling", open=False):
                steps = gr.Slider(1, 200, value=int(defaults["steps"]), step=1, label="Steps")
                guidance = gr.Slider(0.0, 20.0, value=float(defaults["guidance"]), step=0.5,
                                     label="Guidance scale")
    return SimpleNamespace(prompt=prompt, n_seeds=n_seeds, seed_list=seed_list, mits=mits, k=k, lam=lam, steps=steps,
                           guidance=guidance, desc_choice=desc_choice, go_btn=go_btn, stop_btn=stop_btn,
                           att_btn=att_btn, att_plot=att_plot)


FIRST_EXAMPLES = 4  # example prompts in view; the rest folded under "More examples"


def examples_block(prompt: gr.Textbox, examples: list[tuple[str, list[str]]], elem_id: str = "more-examples") -> None:
    """The world's probe prompts as examples, memorized first: the first few in view, every group under a
    folded "More examples" (24 buttons once pushed the results a screen down)."""
    if not examples:
        return
    name, prompts = examples[0]
    gr.Examples([[p] for p in prompts[:FIRST_EXAMPLES]], inputs=[prompt], label=f"examples · {name}",
                examples_per_page=FIRST_EXAMPLES, cache_examples=False)
    total = sum(len(p) for _, p in examples)
    with gr.Accordion(f"More examples: {total} probe prompts in {len(examples)} groups", open=False,
                      elem_id=elem_id):
        for name, prompts in examples:  # one set per group (memorized first)
            gr.Examples([[p] for p in prompts], inputs=[prompt], label=f"{name} · {len(prompts)} prompts",
                        examples_per_page=4, cache_examples=False)


def _results(lab: Lab) -> SimpleNamespace:
    """Where a run shows: attribution, headline, pairs, top-k, per-seed chart and table, captions, the
    histogram (the world's background from the start) and the export."""
    headline_md = gr.Markdown(elem_id="headline")
    show_mask = gr.Checkbox(False, label="Show the copied region on both images",  # the note says what it is
                            info=bright_ending_note(lab.card()), elem_id="show-mask")
    gallery = gr.Gallery(label="generation | top-1 training match (red frame: replicated)", columns=4,
                         format="png", elem_id="pairs", height="auto",
                         object_fit="contain")
    with gr.Row():
        topk_k = gr.Slider(1, 10, value=5, step=1, label="k: distinct training images shown for a selected seed",
                           scale=1, elem_id="topk-k")
        # a line of its own on a phone (below min_width), beside k on a wider screen
        seed_plot = gr.Plot(label="top-1 score per seed", elem_id="seed-plot", scale=3, min_width=360)
    # shown once a seed is selected (an empty gallery's placeholder box once sat in the middle of the results)
    # a label a phone holds on one line (on two it covered the first row's tops); each caption gives the copies
    topk = gr.Gallery(label="top-k of the selected seed, one per near-duplicate group", columns=5, format="png",
                      visible=False, elem_id="topk")
    table = gr.Dataframe(headers=SEED_COLUMNS, column_widths=SEED_WIDTHS, label="per seed",
                         elem_id="seed-table", wrap=True)
    closest = gr.Dataframe(headers=ID_COLUMNS + ["text similarity"], column_widths=ID_WIDTHS,
                           label=f"closest training captions to the prompt by text ({lab.text_source()})",
                           elem_id="closest", wrap=True)
    # shown from the start: the world's background (and plotly's library, which a page loads
    # once, ~1.3 s, before any plot can render: loaded now, later plots render at once)
    empty_hist = histogram(lab, [], " (no generation yet)")
    plot = gr.Plot(value=empty_hist, label="top-1 scores over the background", elem_id="hist")
    with gr.Row():
        export_btn = gr.Button("Export run (JSONL + images)")
        export_file = gr.File(label="run.zip", visible=False)  # shown with its file, not empty before a run

    return SimpleNamespace(headline_md=headline_md, show_mask=show_mask, gallery=gallery, topk_k=topk_k,
                           seed_plot=seed_plot, topk=topk, table=table, closest=closest, empty_hist=empty_hist,
                           plot=plot, export_btn=export_btn, export_file=export_file)


def _run(lab: Lab, prompt, n_seeds, seed_list, mits, k, lam, steps, guidance, descriptor, progress, charts=None,
         stop=None):
    """A run streamed to the page: (state, headline, pairs, table, closest captions) after each chunk, and
    with ``charts`` (the API's) its two charts; ``stop``: Stop's (``wiring.stoppable``)."""
    seeds = lab.seeds(n_seeds, seed_list)
    spec = lab.strategy_spec(mits, k, lam)
    settings = lab.settings(steps, guidance)
    lab.get_descriptor(descriptor)  # an unknown name is refused before any work
    prompt, _ = lab.check_prompt(prompt)
    progress(0, desc="starting")
    near = None
    pairs = []  # built once per seed as seeds stream in
    for state in lab.stream_generation(prompt, seeds, spec, settings, lambda d, t: progress((d, t), desc="seeds"),
                                       descriptor, stop=stop):
        pairs += [pair_of(lab, r, im) for r, im in zip(state.records[len(pairs):], state.images[len(pairs):])]
        first = near is None and not state.finished  # the first pair as early as it can be: the
        if first:  # caption search comes with the next update (each redraw costs the page)
            yield (state, headline(lab, state), pairs, seed_table(state), gr.skip()) + \
                ((gr.skip(), gr.skip()) if charts else ())
            near = id_table(lab.closest_captions(prompt), "text similarity")
            continue
        if near is None:
            near = id_table(lab.closest_captions(prompt), "text similarity")
        yield (state, headline(lab, state), pairs, seed_table(state), near) + \
            (charts(state) if charts else ())


def pairs_of(lab: Lab, state: RunState, show_mask: bool) -> list:
    """The run's pairs (generation | top-1 match) with their captions; ``show_mask``: each seed's bright-ending
    map marked on both images."""
    if not state or not state.records:
        return []
    return [pair_of(lab, r, im, show_mask) for r, im in zip(state.records, state.images)]


def pair_of(lab: Lab, record: dict, image, show_mask: bool = False):
    """One seed's gallery entry: its pair image (framed by the verdict; ``show_mask``: the map marked) and
    caption."""
    return (as_file(pair_image(image, lab.item_image(record["matches"][0]["row"]), level(record),
                               mask=record.get("bright_ending") if show_mask else None,
                               mirrored=is_mirrored(record.get("view")))), caption(record))


def _charts(lab: Lab, empty_hist):
    """The run's score histogram over the background and its per-seed chart (or the world's background
    alone when there is no run)."""
    def run_charts(state):
        if not state or not state.records:
            return empty_hist, None
        name = state.records[0]["descriptor"]["name"]
        return (histogram(lab, [r["score"] for r in state.records], descriptor=name, records=state.records),
                seed_scores_chart(lab, state, name))
    return run_charts


def _wire_generation(lab: Lab, c: SimpleNamespace, o: SimpleNamespace, run_state: gr.State, api) -> None:
    """Generate, Stop and the ``/generate`` API event."""
    run_charts = _charts(lab, o.empty_hist)
    prompt, n_seeds, seed_list, mits, k, lam, steps, guidance, desc_choice = (
        c.prompt, c.n_seeds, c.seed_list, c.mits, c.k, c.lam, c.steps, c.guidance, c.desc_choice)
    go_btn, stop_btn = c.go_btn, c.stop_btn
    headline_md, gallery, table, closest, plot, seed_plot, empty_hist = (
        o.headline_md, o.gallery, o.table, o.closest, o.plot, o.seed_plot, o.empty_hist)

    @errors
    def generate(prompt, n_seeds, seed_list, mits, k, lam, steps, guidance, descriptor=None,
                 progress=gr.Progress(), stop=None):
        """The page's run: its charts are drawn after the batch is on the page (``run_charts``, chained). Bad
        input is answered by a message where the results go (``/generate`` raises it, for callers)."""
        try:
            yield from _run(lab, prompt, n_seeds, seed_list, mits, k, lam, steps, guidance, descriptor, progress,
                            stop=stop)
        except MemlabError as e:
            yield None, f"⚠️ **{e}**", [], None, None

    @errors
    def generate_api(prompt, n_seeds, seed_list, mits, k, lam, steps, guidance, descriptor=None,
                     progress=gr.Progress(), stop=None):
        """``/generate``: the same run, its charts in its last update."""
        yield from _run(lab, prompt, n_seeds, seed_list, mits, k, lam, steps, guidance, descriptor, progress,
                        run_charts, stop)

    # Each plotly chart costs the page a full redraw (~0.15 s of a core each on the 2-core machine; the
    # page's whole batch came 0.5 s sooner without them, bench_app.py): the page gets the batch, pairs,
    # headline and tables first, and its two charts right after, from a chained event; the API's
    # /generate (a hidden button's event: the same run) returns them in its last update.
    inputs = [prompt, n_seeds, seed_list, mits, k, lam, steps, guidance, desc_choice]
    gen_event = run_button(go_btn, generate, inputs, [run_state, headline_md, gallery, table, closest], None,
                           cleared=(None, "", [], None, None), progress_on=[gallery], js=scroll_first("#headline"))
    go_btn.click(lambda: (None, None, gr.update(value=[], visible=False)), None, [plot, seed_plot, o.topk],
                 queue=False, api_name=False, show_progress="hidden")  # the previous run's charts and top-k go
    # with its results
    gen_event.then(run_charts, [run_state], [plot, seed_plot], api_name=False, show_progress="hidden")
    # the copied region: the pairs drawn again with (or without) each seed's map; after a run, if ticked
    o.show_mask.change(lambda st, on: pairs_of(lab, st, on), [run_state, o.show_mask], [gallery], api_name=False,
                       show_progress="hidden")
    gen_event.then(lambda st, on: pairs_of(lab, st, True) if on else gr.skip(), [run_state, o.show_mask], [gallery],
                   api_name=False, show_progress="hidden")
    api_btn = gr.Button(visible=False, elem_id="generate-api")
    run_button(api_btn, generate_api, inputs, [run_state, headline_md, gallery, table, closest, plot, seed_plot],
               api("generate"), cleared=(None, "", [], None, None, empty_hist, None))
    # Stop ends the run within a denoising step (``wiring.stoppable``); what finished stays (with its charts),
    # and exports as partial
    stop_btn.click(None, None, None, cancels=[gen_event], api_name=False).then(
        run_charts, [run_state], [plot, seed_plot], api_name=False, show_progress="hidden").then(
        lambda st: headline(lab, st, stopped=True) if st and st.records else gr.skip(), [run_state],
        [headline_md], api_name=False, show_progress="hidden")


def _wire_details(lab: Lab, c: SimpleNamespace, o: SimpleNamespace, run_state: gr.State, api) -> None:
    """Token attribution, a selected seed's top-k, and the export."""
    prompt, n_seeds, seed_list, steps, guidance = c.prompt, c.n_seeds, c.seed_list, c.steps, c.guidance
    att_btn, att_plot, gallery, topk_k, topk = c.att_btn, c.att_plot, o.gallery, o.topk_k, o.topk
    export_btn, export_file = o.export_btn, o.export_file

    @errors
    def attribution(prompt, n_seeds, seed_list, steps, guidance):
        toks = lab.token_attribution(prompt, lab.seeds(n_seeds, seed_list), lab.settings(steps, guidance))
        return gr.update(value=attribution_chart(toks, lab.card()), visible=True)

    att_btn.click(attribution, [prompt, n_seeds, seed_list, steps, guidance], [att_plot],
                  api_name=api("attribution"))

    def show_topk(state: RunState, k, evt: gr.SelectData):
        if not state or evt.index is None or evt.index >= len(state.records):
            return gr.update(value=[], visible=False)
        r = state.records[evt.index]
        return gr.update(value=[(im, f"#{m['id']} · {m['score']:.3f} · {copies(m.get('duplicates', 0))} · "
                                     f"{m['caption'][:50]}")
                                for m in collapse_matches(r["matches"], int(k or 5))
                                if (im := lab.item_file(m["row"])) is not None], visible=True)

    gallery.select(show_topk, [run_state, topk_k], [topk], api_name=False)

    @errors
    def export(state):
        if state is None:
            raise MemlabError("nothing to export yet: generate first")
        name = "run.zip" if state.finished else "run-partial.zip"  # stopped, or still running
        path = download_path(name)
        return str(lab.export(state, path))

    # /export returns the zip's path; the page then shows the file box (hidden until there is a file)
    export_btn.click(export, [run_state], [export_file], api_name=api("export")).success(
        lambda: gr.update(visible=True), None, [export_file], api_name=False, show_progress="hidden")
