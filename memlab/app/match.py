"""Match an image: an upload against the training set (what ``memlab match`` does)."""
from __future__ import annotations

import json

import gradio as gr
import pandas as pd

from ..limits import LIMITS
from ..service import Lab
from ..match import load_image
from ..metrics import AGREEMENT
from ..records import strict_json
from .pictures import agreement_pair
from .glossary import g
from .serve import download_path
from .views import MATCH_COLUMNS, MATCH_WIDTHS, copies, literal, score
from .wiring import page_and_api

BATCH_COLUMNS = ["image", "verdict", "score", "top-1 id", "copies in training", "top-1 caption"]
BATCH_WIDTHS = ["160px", "120px", "72px", "96px", "168px"]


def match_tab(lab: Lab, api) -> None:
    """Match an image: an upload against the training set (what `memlab match` does)."""
    with gr.Tab("Match an image", id="match"):
        gr.Markdown("Upload any image (a generation from elsewhere, a suspected copy) and see its nearest "
                    f"training images with their scores and the verdict. At most "
                    f"{LIMITS['upload_bytes'] // 2**20} MiB and {LIMITS['upload_pixels'] / 1e6:.0f} "
                    f"megapixels.")
        with gr.Row():
            m_image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                               label="image to match", elem_id="match-image", scale=2)
            with gr.Column(scale=1):
                m_k = gr.Slider(1, 20, value=5, step=1, label="k (nearest training images)")
                m_desc = gr.Dropdown(lab.descriptor_names, value=lab.descriptor.name,
                                     label="Copy descriptor")
                m_btn = gr.Button("Match", variant="primary", elem_id="match-btn")
        m_md = gr.Markdown(elem_id="match-verdict")
        m_gallery = gr.Gallery(label="nearest training images", columns=5, format="png", elem_id="match-gallery",
                               object_fit="contain")  # the upload's pair is twice as wide as high: shown whole
        m_table = gr.Dataframe(headers=MATCH_COLUMNS, column_widths=MATCH_WIDTHS, label="matches", elem_id="match-table")

        def match_upload(path, k, descriptor):
            res = lab.match_image(path, k, descriptor)
            q, d = res["queries"][0], res["descriptor"]
            verdict = {"replicated": "**replicated**", "template copy": "a **template copy**",
                       "possible copy": "a **possible copy**"}.get(q.get("verdict"), "**novel**")
            band = (f" (replicated above {q['threshold']:.3f}, a possible copy above {q['possible_threshold']:.3f})"
                    if q.get("verdict") != "replicated" and q.get("possible_threshold") is not None else "")
            md = (f"### Top-1 score {q['score']:.3f}: {verdict}{band}\n"
                  f"{literal(lab.descriptor_label(d['name']))} · "
                  f"top-1 training image #{literal(q['matches'][0]['id'])} · {copies(q['matches'][0].get('duplicates', 0))}"
                  + (f" · cosine {q['matches'][0]['cosine']:.3f}" if "cosine" in q["matches"][0] else "")
                  + (f" · normalized {q['matches'][0]['normalized']:.3f}, detail correlation "
                     f"{q['matches'][0]['detail']:.3f}" if "detail" in q["matches"][0] else "")
                  + (f", memlab-verify's probability of a copy {q['matches'][0]['network']:.3f}"
                     if "network" in q["matches"][0] else "")
                  + (f" · matched as: {q['view']}" if q.get("view", "as given") != "as given" else ""))
            gallery = [(im, f"#{m['id']} · {m['score']:.3f} · {str(m.get('caption', ''))[:50]}")
                       for m in q["matches"] if (im := lab.item_file(m["row"])) is not None]
            if (ag := q.get("agreement")) is not None:  # where the upload agrees with its top-1 (Webster)
                md += (f"\n\nWhere it agrees with #{literal(q['matches'][0]['id'])} (in their own colours, outlined in yellow, "
                       f"the rest faded; {AGREEMENT['window']}-px windows "
                       f"whose detail correlates above {AGREEMENT['cutoff']}): {ag['share']:.0%} of the image"
                       + (f", template-copy threshold {ag['threshold']:.0%}" if q.get("verdict") != "replicated" else
                          " (a whole copy: the template check is for images not replicated as a whole)"))
                gallery.insert(0, (agreement_pair(load_image(path), lab.item_file(q["matches"][0]["row"]), q),
                                   f"upload · #{q['matches'][0]['id']} · agree in {ag['share']:.0%}"))
            table = [[m["id"], score(m["score"]), score(m["cosine"]) if "cosine" in m else "",
                      m.get("duplicates", 0) + 1, m.get("caption", "")] for m in q["matches"]]
            return md, gallery, pd.DataFrame(table, columns=MATCH_COLUMNS)

        page_and_api(m_btn, match_upload, [m_image, m_k, m_desc], [m_md, m_gallery, m_table], api("match_image"),
                     message=lambda text: (text, [], None), cleared=("", [], None))
        batch_panel(lab, m_desc, api)


def batch_panel(lab: Lab, m_desc, api) -> None:
    """Match a batch: several images from elsewhere at once, their replication % with its interval and their
    dataset similarity against the training set's own background (what ``memlab match`` on a folder gives)."""
    n = LIMITS["match_batch"]
    with gr.Accordion(f"Match a batch (up to {n} images): its replication %", open=False, elem_id="batch"):
        gr.Markdown(f"Upload up to {n} images at once (generations from elsewhere, on the same prompt or not; "
                    f"{LIMITS['upload_bytes'] // 2**20} MiB together) for the share the verdict calls copies, "
                    "with its 95% interval, and each image's top-1 training image (and the whole result as JSON, "
                    "as `memlab match --json` writes it). A file that does not read as an image is left out and "
                    "named.")
        b_files = gr.File(file_count="multiple", file_types=["image"], type="filepath", label="images to match",
                          elem_id="batch-files")
        b_btn = gr.Button("Match the batch", variant="primary", elem_id="batch-btn")
        b_md = gr.Markdown(elem_id="batch-summary")
        b_table = gr.Dataframe(headers=BATCH_COLUMNS, column_widths=BATCH_WIDTHS, label="each image's top-1 match",
                               elem_id="batch-table")
        b_file = gr.File(label="batch.json (memlab match --json)", visible=False, elem_id="batch-file")

        def match_batch(paths, descriptor):
            res = lab.match_batch(paths, 1, descriptor)
            path = download_path("batch.json")  # the whole result, as `memlab match --json` writes it
            path.write_text(json.dumps(strict_json(res), indent=2, allow_nan=False))
            return batch_summary(res, lab.descriptor_label(res["descriptor"]["name"])), batch_table(res), str(path)

        shown = page_and_api(b_btn, match_batch, [b_files, m_desc], [b_md, b_table, b_file], api("match_batch"),
                             message=lambda text: (text, None, None),
                             cleared=("", None, gr.update(value=None, visible=False)))
        shown.then(lambda f: gr.update(visible=bool(f)), [b_file], [b_file], api_name=False, show_progress="hidden")


def batch_summary(res: dict, label: str) -> str:
    """A batch's figures (``Lab.match_batch``), each with its source: how many images each verdict took, the
    replicated share with Wilson's 95% interval, the dataset similarity beside the training set's background."""
    s, qs = res["summary"], res["queries"]
    iv, ds, bg = s["replication_interval"], s["dataset_similarity"], s["background"]
    said = {v: sum(q.get("verdict") == v for q in qs) for v in ("replicated", "template copy", "possible copy")}
    lines = [f"### {said['replicated']} of {len(qs)} images {g('replicated', 'replicated')}: "
             f"{s['replication_rate']:.1%} ({g('interval', '95% interval')} {iv['low']:.1%}-{iv['high']:.1%})",
             f"*{literal(res['descriptor']['name'])} > {ds['threshold']:.3f} ({g('threshold', 'threshold')}) · "
             f"scores: {literal(label)}*",
             f"- {said['possible copy']} {g('possible', 'possible copies')} and {said['template copy']} "
             f"{g('template', 'template copies')} besides; {len(qs) - sum(said.values())} novel",
             f"- **dataset similarity** {g('dataset-similarity')} (95th pct of the top-1 scores over these {ds['n']} "
             f"images) {ds['p95']:.3f} · mean {ds['mean']:.3f} · the training set's own "
             f"background {g('background')} 95th pct {bg['p95']:.3f}"]
    if res.get("skipped"):
        lines.append("- **left out**, not read as images: " + "; ".join(
            f"{literal(x['image'])} ({literal(x['error'])})" for x in res["skipped"]))
    return "\n".join(lines)


def batch_table(res: dict) -> pd.DataFrame:
    """One row per image of a batch: its verdict, score and top-1 training image."""
    return pd.DataFrame([[q["image"], q.get("verdict", ""), score(q["score"]), q["matches"][0]["id"],
                          q["matches"][0].get("duplicates", 0) + 1, q["matches"][0].get("caption", "")]
                         for q in res["queries"]], columns=BATCH_COLUMNS)
