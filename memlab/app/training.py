"""Training set: caption search, near-duplicate groups, an item with its duplicates."""
from __future__ import annotations

import gradio as gr

from ..errors import MemlabError
from ..service import Lab
from .views import ID_COLUMNS, ID_WIDTHS, id_table
from .wiring import errors


def training_set_tab(lab: Lab, api) -> None:
    """Training set: caption search, near-duplicate groups, an item with its duplicates."""
    with gr.Tab("Training set", id="train"):
        with gr.Row():
            q = gr.Textbox(label="Search captions", placeholder="e.g. lighthouse", scale=3)
            q_btn = gr.Button("Search", scale=1)
        q_note = gr.Markdown(elem_id="search-note")
        q_gallery = gr.Gallery(label="matching training images", columns=8, format="png")
        q_table = gr.Dataframe(headers=ID_COLUMNS, column_widths=ID_WIDTHS, label="items", elem_id="search-table")

        def thumbs(df):
            return [(im, f"#{i} · {c[:50]}") for r, i, c in zip(df["row"], df["id"], df["caption"])
                    if (im := lab.item_file(r)) is not None]

        @errors
        def search(query):
            hits = lab.search_captions(query)
            return thumbs(hits), id_table(hits)

        def note(query):  # (a second event, so the API's answer stays the gallery and the table)
            try:
                hits = lab.search_captions(query)
            except MemlabError:
                return ""
            n = hits.attrs.get("captions", len(hits))
            return f"**{n:,}** training captions hold every word" + (
                f"; the first {len(hits)} in row order are shown, one per near-duplicate group and caption" if n else "")

        for event, name in ((q_btn.click, api("search_captions")), (q.submit, False)):
            event(search, [q], [q_gallery, q_table], api_name=name).then(note, [q], [q_note], api_name=False)
        gr.Markdown("#### Near-duplicate groups (largest first)\nOne caption on every copy is *full duplication*: "
                    "the image and its caption repeated, which a model memorizes far more than the same image under "
                    "varied captions, *partial duplication* (Somepalli et al. 2023).")
        groups = lab.duplicate_groups()
        columns = ID_COLUMNS[:2] + ["distinct captions"] + ID_COLUMNS[2:]
        gr.Dataframe(value=groups.rename(columns={"size": "copies in training", "captions": "distinct captions",
                                                  "example": "caption"})[columns],
                     column_widths=ID_WIDTHS[:2] + ["152px"], label="duplicated images (open one by its id)",
                     elem_id="groups-table", wrap=True)
        with gr.Row():
            item_id = gr.Textbox(label="Open an item by id", scale=3)
            item_btn = gr.Button("Open", scale=1)
        item_gallery = gr.Gallery(label="the item and its duplicates", columns=8, format="png")
        item_table = gr.Dataframe(headers=ID_COLUMNS, column_widths=ID_WIDTHS, label="its duplicate group",
                                  elem_id="group-table")

        @errors
        def open_item(i):
            row = lab.item_row(i)
            members = lab.group_members(lab.item_group(row))
            return thumbs(members), id_table(members)

        item_btn.click(open_item, [item_id], [item_gallery, item_table], api_name=api("duplicates"))
