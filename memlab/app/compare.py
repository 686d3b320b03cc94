"""Compare mitigations: an A/B grid whose rows are strategies (none first) on the same seeds, streamed row by
row, with its charts, table and export."""
from __future__ import annotations

import gradio as gr

from ..errors import MemlabError
from ..limits import LIMITS
from ..service import Lab
from .charts import compare_figure
from .views import COMPARE_COLUMNS, COMPARE_WIDTHS, compare_grid, compare_headline, compare_table
from .generate import examples_block
from .serve import download_path
from .wiring import MITIGATION_CHOICES, errors, page_and_api, scroll_first


def compare_tab(lab: Lab, api, examples=(), prompt: gr.Textbox | None = None) -> None:
    """Compare mitigations as an A/B grid: rows are strategies (none first), columns the same seeds;
    rows stream in as each strategy finishes; charts, table and export of the whole comparison. Generate's
    examples and seed default; its ``prompt`` carried over (a prompt typed there is here too)."""
    defaults, limit = lab.defaults, LIMITS["compare_seeds"]
    with gr.Tab("Compare mitigations", id="compare"):
        with gr.Row():
            with gr.Column(scale=2):
                c_prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a prompt to compare mitigations on",
                                      elem_id="compare-prompt")
                gr.Markdown("Each strategy runs on **the same seeds** as `none`, so a row differs from the first "
                            "only by the mitigation. Rows appear as each strategy finishes. "
                            "Words in the results: [glossary](#glossary).")
                examples_block(c_prompt, list(examples), "compare-more-examples")
            with gr.Column(scale=1):
                # Generate's default count; a lower limit, since every strategy runs every seed
                c_seeds = gr.Number(value=8, label=f"Number of seeds, the same for every strategy (1 to {limit}: "
                                                   f"each strategy runs them all)", elem_id="compare-n")
                c_mits = gr.CheckboxGroup(MITIGATION_CHOICES, value=["rna", "gni"], label="Strategies besides none")
                with gr.Row():
                    c_k = gr.Slider(1, 10, value=4, step=1, label="k (rna, rt, cwr)")
                    c_lam = gr.Slider(0.0, 1.0, value=0.1, step=0.01, label="λ (gni)")
                c_list = gr.Textbox("", label=f"…or explicit seeds (at most {limit})", placeholder="e.g. 0-7 or 3,17,42",
                                    elem_id="compare-seeds")
                with gr.Accordion("Sampling", open=False):
                    c_steps = gr.Slider(1, LIMITS["steps"], value=int(defaults["steps"]), step=1, label="Steps",
                                        elem_id="compare-steps")
                    c_guidance = gr.Slider(0.0, LIMITS["guidance"], value=float(defaults["guidance"]), step=0.5,
                                           label="Guidance scale")
                with gr.Row():
                    c_btn = gr.Button("Compare", variant="primary", elem_id="compare-btn", scale=3)
                    c_stop = gr.Button("Stop", variant="stop", elem_id="compare-stop", scale=1)
        c_head = gr.Markdown(elem_id="compare-headline")
        c_grid = gr.HTML(elem_id="grid")
        c_plot = gr.Plot(label="replication and dataset similarity per strategy", elem_id="bars")
        c_table = gr.Dataframe(headers=COMPARE_COLUMNS, column_widths=COMPARE_WIDTHS, label="per strategy (full specs)",
                               elem_id="compare-table", wrap=True)
        with gr.Row():
            c_export_btn = gr.Button("Export comparison (JSONL + images)", elem_id="compare-export")
            c_export_file = gr.File(label="comparison.zip", elem_id="compare-export-file", visible=False)
        c_state = gr.State(None)
        if prompt is not None:  # the prompt typed on Generate is here when the visitor comes to compare
            prompt.change(lambda p: p, prompt, c_prompt, queue=False, api_name=False, show_progress="hidden")

        def compare(prompt, n, mits, k, lam, seed_list="", steps=None, guidance=None, progress=gr.Progress(),
                    stop=None):
            seeds = lab.seeds(n, seed_list, limit=limit)
            specs = [lab.strategy_spec([m], k, lam) for m in (mits or [])]
            settings = lab.settings(steps, guidance)
            prompt, _ = lab.check_prompt(prompt)
            n_rows = 1 + len(dict.fromkeys(x for x in specs if x != "none"))
            progress(0, desc="none")
            for state in lab.stream_compare(prompt, seeds, specs, settings,
                                            lambda d, t: progress((d, t), desc="images"), stop=stop):
                yield (state, compare_headline(lab, state, seeds, n_rows), compare_grid(lab, state, seeds, n_rows),
                       compare_figure(lab, state), compare_table(state))

        event = page_and_api(c_btn, compare, [c_prompt, c_seeds, c_mits, c_k, c_lam, c_list, c_steps, c_guidance],
                             [c_state, c_head, c_grid, c_plot, c_table], api("compare"),
                             message=lambda text: (None, text, "", None, None), cleared=(None, "", "", None, None),
                             js=scroll_first("#compare-headline"))
        c_stop.click(None, None, None, cancels=[event], api_name=False)

        @errors
        def export_comparison(state):
            if state is None:
                raise MemlabError("nothing to export yet: compare first")
            name = "comparison.zip" if state.finished else "comparison-partial.zip"
            return str(lab.export(state, download_path(name)))

        exported = c_export_btn.click(export_comparison, [c_state], [c_export_file],
                                      api_name=api("export_comparison"))
        exported.success(lambda: gr.update(visible=True), None, [c_export_file], api_name=False,
                         show_progress="hidden")
