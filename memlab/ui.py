"""The Gradio app (the only UI code in memlab): it wires ``memlab.service.Lab`` to components.

Tabs: Generate & match · Compare mitigations · Training set · Keyword clusters · About this world.
Every event has an ``api_name`` so ``gradio_client`` can call it. Errors in user input raise
``gr.Error`` (the page keeps serving).
"""
from __future__ import annotations

import functools
import json
import logging
import re
import tempfile
from pathlib import Path

import gradio as gr
from PIL import Image, ImageDraw

from . import gpu
from .errors import MemlabError
from .mitigations import MITIGATIONS
from .service import APP_MAX_SEEDS, LIMITS, MAX_CHUNK, Lab, RunState, collapse_matches, number, probe_group_name, text

log = logging.getLogger("memlab.app")

_API_SUFFIX = ""  # set while a further world's page is built: its events are named generate_<world>, ...


def _api(name: str) -> str:
    return name + _API_SUFFIX


CITATIONS = """
- Somepalli, Singla, Goldblum, Geiping, Goldstein. *Diffusion Art or Digital Forgery? Investigating Data
  Replication in Diffusion Models.* CVPR 2023. (SSCD > 0.5 replication, split product)
- Somepalli et al. *Understanding and Mitigating Copying in Diffusion Models.* NeurIPS 2023. (dataset
  similarity, background, duplication controls, GNI / RNA / RT / CWR mitigations)
- Pizzi, Roy, Ravindra, Goyal, Douze. *A Self-Supervised Descriptor for Image Copy Detection.* CVPR 2022. (SSCD)
- Carlini et al. *Extracting Training Data from Diffusion Models.* USENIX Security 2023. (pixel-space, tiled)
- Wen, Liu, Chen, Lyu. *Detecting, Explaining, and Mitigating Memorization in Diffusion Models.* ICLR 2024.
- *Memory Triggers: Unveiling Memorization in Text-To-Image Generative Models through Word-Level Duplication.*
"""
MITIGATION_CHOICES = [m for m in MITIGATIONS if m != "none"]

# The words a first-time visitor meets, defined as the papers define them; every number links here.
GLOSSARY = [
    ("replicated", "replicated, replication %",
     "A generation is **replicated** when its top-1 score (its similarity to the closest training image) is "
     "above the threshold. The **multi-seed replication %** is the share of seeds whose generation is "
     "replicated (Somepalli et al. 2023 count SSCD > 0.5; MemBench uses 10 seeds)."),
    ("threshold", "threshold",
     "The score above which a match counts as a copy. SSCD's is published: 0.5 for replication, and 0.75 "
     "for about 90% precision (Pizzi et al. 2022). Descriptors without a published one (memlab-copy, pixel, "
     "CLIP) are calibrated on the training set: by default the score that 1% of distinct training images "
     "exceed against their nearest other image. The app names the source beside the value."),
    ("score", "score, top-1 match, top-k",
     "The similarity of a generation's descriptor to a training image's (cosine; 1 = identical). The "
     "**top-1 match** is the training image with the highest score; **top-k** lists the k best, one per "
     "near-duplicate group."),
    ("descriptor", "descriptor",
     "The model that turns an image into a vector for copy detection: **SSCD** (Pizzi et al. 2022, trained "
     "to survive crops, colour changes and overlays), **CLIP** (semantic: similar content, not only copies), "
     "**pixel** (Carlini et al. 2023: distance of downscaled pixels, no weights) and **memlab-copy** (SSCD's "
     "recipe, trained by memlab on its own images). Scores from different descriptors or presets are not "
     "comparable; each is named with its model and preprocessing preset."),
    ("dataset-similarity", "dataset similarity",
     "The 95th percentile of the generations' top-1 scores (Somepalli et al. 2023, DCR). Over a few seeds "
     "it is close to the maximum."),
    ("background", "background",
     "The same statistic for the training set itself: each training image against its nearest *other* "
     "training image. **Distinct** background: one image per near-duplicate group against the nearest image "
     "of another group. A model copies more than the data copies itself when its generations sit to the "
     "right of the background."),
    ("copies", "copies in training (duplication)",
     "How many times an image occurs in the training set: itself and its near-duplicates (images whose "
     "descriptor similarity is above the duplicate cut, joined into groups). Heavily duplicated images are "
     "the ones models memorize (Carlini et al. 2023; Somepalli et al. 2023)."),
    ("ddf", "ddf (duplication factor)",
     "How many times a planted image was repeated in the built-in world's training set (DCR duplicates a "
     "share of images with a sampling weight ddf). **Full** duplication repeats image and caption; "
     "**partial** repeats the image with other captions."),
    ("detection", "detection (Wen et al.)",
     "‖ε(x_t, prompt) − ε(x_t, empty)‖: how strongly the prompt steers the first denoising step, averaged "
     "over generations (Wen et al. 2024). Memorized prompts give large values before any image exists. "
     "There is no universal threshold; compare prompts on the same model."),
    ("mitigation", "mitigation (none, rna, rt, cwr, gni, wen)",
     "A change at generation time that reduces copying (Somepalli et al. 2023): **rna** inserts k random "
     "numbers into the prompt, **rt** k random tokens, **cwr** repeats k words of the prompt, **gni** adds "
     "Gaussian noise (λ) to the text embedding; **wen** optimizes the prompt embedding to lower the detection "
     "score (Wen et al. 2024). Compared on the same seeds, a row differs from `none` only by the mitigation."),
    ("seed", "seed",
     "The number that fixes a generation's starting noise: the same prompt, seed and settings give the same "
     "image, so strategies compared on the same seeds are compared fairly."),
    ("partial", "partial run",
     "A run stopped (or still running) before all its seeds finished: what finished is shown, and an export "
     "of it is named and marked partial."),
]


def glossary_markdown() -> str:
    """The glossary, one anchor per term (``#g-<key>``), under the ``#glossary`` anchor."""
    items = "\n".join(f'- <a id="g-{key}"></a>**{term}**: {text}' for key, term, text in GLOSSARY)
    return f'<a id="glossary"></a>\n\n## Glossary\n\n{items}'


def g(key: str, label: str = "?") -> str:
    """A link to a glossary term, for numbers and the words they carry."""
    return f"[{label}](#g-{key})"


def _errors(fn):
    """MemlabError -> gr.Error, so the message shows in the page and the server keeps serving. Anything
    else is a bug: its traceback goes to the server's log, the caller gets one line without it."""
    def translate(e: BaseException):
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, MemlabError):
            return gr.Error(str(e))
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"memlab hit an unexpected error ({type(e).__name__}) and logged it; the app keeps "
                        f"serving: try again, or change the input")

    if _is_gen(fn):
        @functools.wraps(fn)
        def wrapped_gen(*a, **kw):
            try:
                yield from fn(*a, **kw)
            except Exception as e:  # noqa: BLE001 - see translate
                raise translate(e) from None
        return wrapped_gen

    @functools.wraps(fn)
    def wrapped(*a, **kw):
        try:
            return fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 - see translate
            raise translate(e) from None
    return wrapped


def _is_gen(fn):
    import inspect

    return inspect.isgeneratorfunction(fn)


FILE_MAX_AGE_S = 86_400  # the app's image files (here and in Gradio's cache) are deleted after a day
_last_prune = [0.0]


def app_files() -> Path:
    """The folder of the PNGs ``as_file`` writes."""
    folder = Path(tempfile.gettempdir()) / "memlab-app"
    folder.mkdir(exist_ok=True)
    return folder


def prune_app_files(max_age_s: float = FILE_MAX_AGE_S, now: float | None = None) -> int:
    """Delete the app's PNGs not written or reused for ``max_age_s`` (a hosted app would otherwise fill
    its disk); returns how many. Gradio serves its own copies, so a page still showing one loses nothing."""
    import time

    now = time.time() if now is None else now
    gone = 0
    for p in app_files().iterdir():
        try:
            if now - p.stat().st_mtime > max_age_s:
                p.unlink()
                gone += 1
        except FileNotFoundError:  # another request pruned it first
            pass
    return gone


def as_file(im: Image.Image) -> str:
    """A PNG file for a gallery, named by its content and written under a temporary name then renamed.
    Gradio rewrites a PIL output's cache file in place on every request, so two visitors generating the
    same prompt and seeds at once could be served a half-written file; a path is copied atomically.
    A reused file is touched, and files older than ``FILE_MAX_AGE_S`` are pruned once an hour."""
    import hashlib
    import io
    import os
    import time
    import uuid

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    data = buf.getvalue()
    folder = app_files()
    if time.time() - _last_prune[0] > 3600:
        _last_prune[0] = time.time()
        prune_app_files()
    path = folder / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
    try:
        os.utime(path)  # reused: fresh again, so a prune does not take it from under this request
    except FileNotFoundError:
        tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return str(path)


def pair_image(gen: Image.Image, match: Image.Image | None, replicated: bool, scale: int = 3) -> Image.Image:
    """The generation beside its top-1 training match, framed red when replicated."""
    w, h = gen.size
    W, H = w * scale, h * scale
    out = Image.new("RGB", (2 * W + 12, H + 8), (200, 30, 30) if replicated else (230, 230, 230))
    out.paste(gen.resize((W, H), Image.NEAREST), (4, 4))
    if match is not None:
        out.paste(match.convert("RGB").resize((W, H), Image.NEAREST), (W + 8, 4))
    else:
        ImageDraw.Draw(out).text((W + 12, H // 2), "image not available", fill=(0, 0, 0))
    return out


def _caption(r: dict) -> str:
    m = r["matches"][0]
    verdict = "REPLICATED" if r["replicated"] else "novel"
    return (f"seed {r['seed']} · {verdict} · score {r['score']:.3f} vs threshold {r['threshold']:.3f} · "
            f"match #{m['id']} · {copies(m['duplicates'])}")


def copies(duplicates: int) -> str:
    """A training image's duplication as the app states it everywhere: the image and its near-duplicates."""
    n = int(duplicates) + 1
    return f"{n} {'copy' if n == 1 else 'copies'} in training"


def score(x: float) -> str:
    """A score in a table cell: 3 decimals, trailing zeros kept, as every caption and headline writes it
    (``:.3f``; the one rounding rule: scores to 0.001, percentages to 0.1%)."""
    return f"{float(x):.3f}"


# Each table's columns, named once: the empty table shows them before a run (not Gradio's "1 2 3"), and
# the filled one has them in this order. Short columns first and at a fixed width, so a header never
# breaks inside a word and the verdict and score are in view without scrolling the table sideways.
ID_COLUMNS = ["id", "copies in training", "caption"]
SEED_COLUMNS = ["seed", "verdict", "score", "match id", "copies in training", "match caption", "effective prompt"]
SEED_WIDTHS = ["64px", "104px", "80px", "96px", "168px"]
ID_WIDTHS = ["72px", "168px"]  # the caption (and a score after it) take the rest
MATCH_COLUMNS = ["id", "score", "copies in training", "caption"]
MATCH_WIDTHS = ["72px", "80px", "168px"]
COMPARE_COLUMNS = ["strategy", "spec", "replication %", "change vs none (pts)", "dataset similarity p95",
                   "change vs none", "detection"]


def id_table(df, *extra: str):
    """Training items as a visitor sees them: the id (the app's one identifier for a training image), its
    copies in training, the caption, and ``extra`` score columns (3 decimals)."""
    import pandas as pd

    return pd.DataFrame({"id": df["id"], "copies in training": df["duplicates"].astype(int) + 1,
                         "caption": df["caption"], **{c: df[c].map(score) for c in extra}})


def histogram(lab: Lab, scores, title_extra: str = "", descriptor: str | None = None):
    import plotly.graph_objects as go

    thr = lab.threshold(descriptor)["value"]
    fig = go.Figure()
    fig.add_histogram(x=lab.background(descriptor), histnorm="probability density",
                      name="background: distinct training images (each vs its nearest other distinct image)",
                      opacity=0.55, nbinsx=40, marker_color="#888")
    if len(scores):
        fig.add_histogram(x=list(scores), histnorm="probability density", name="generations (top-1)",
                          opacity=0.75, nbinsx=20, marker_color="#d62728")
    fig.add_vline(x=thr, line_dash="dash", annotation_text=f"threshold {thr:.3f}")
    fig.update_layout(barmode="overlay", height=320, margin=dict(l=40, r=10, t=50, b=40),
                      title=dict(text=f"top-1 similarity vs background{title_extra}<br><sup>{lab.descriptor_label(descriptor)}</sup>",
                                 font=dict(size=13)),
                      xaxis_title="similarity", yaxis_title="density", legend=dict(orientation="h", y=-0.25))
    return fig


def seed_scores_chart(lab: Lab, state: RunState, descriptor: str | None = None):
    """Each seed's top-1 score as a point, replicated ones in red, with the threshold drawn."""
    import plotly.graph_objects as go

    thr = lab.threshold(descriptor)["value"]
    recs = state.records if state else []
    fig = go.Figure()
    fig.add_scatter(x=[str(r["seed"]) for r in recs], y=[r["score"] for r in recs], mode="markers",
                    marker=dict(size=11, color=["#d62728" if r["replicated"] else "#1f77b4" for r in recs]),
                    hovertext=[f"seed {r['seed']}: {r['score']:.3f} · training image #{r['matches'][0]['id']}"
                               for r in recs], hoverinfo="text", name="top-1 score")
    fig.add_hline(y=thr, line_dash="dash", annotation_text=f"threshold {thr:.3f}")
    fig.update_layout(height=260, margin=dict(l=40, r=10, t=40, b=40), showlegend=False,
                      title=dict(text="top-1 score per seed (red: replicated)", font=dict(size=13)),
                      xaxis_title="seed", yaxis_title="similarity", xaxis_type="category")
    return fig


def attribution_chart(tokens: list[dict]):
    """A bar per prompt token (start and end tokens left out): Wen et al.'s token attribution."""
    import plotly.graph_objects as go

    toks = tokens[1:-1] or tokens
    fig = go.Figure(go.Bar(x=[f"{t['token'].strip()}·{t['position']}" for t in toks],
                           y=[t["attribution"] for t in toks], marker_color="#9467bd",
                           hovertext=[t["token"] for t in toks]))
    fig.update_layout(height=260, margin=dict(l=40, r=10, t=50, b=60),
                      title=dict(text="which words drive the memorization signal<br><sup>gradient of ‖ε(x_t,c) − "
                                      "ε(x_t,∅)‖ w.r.t. each token's input embedding, first step, mean over the "
                                      "first 4 seeds (Wen et al. 2024)</sup>", font=dict(size=13)),
                      yaxis_title="attribution")
    return fig


def headline(lab: Lab, state: RunState) -> str:
    s = state.summaries[-1]
    name = s["descriptor"]["name"]
    ds = s["dataset_similarity"]
    info = lab.index.descriptor_info(name)
    bg, bg_all = info.get("background_distinct", info["background"]), info["background"]
    best = max(state.records, key=lambda r: r["score"])
    st = best["settings"]
    source = (f"{g('mitigation', 'mitigation')} {s['mitigation']['spec']} · {st['steps']} steps, guidance "
              f"{st['guidance']:g} · {name} > {s['threshold']:.3f} ({g('threshold', 'threshold')})")
    lines = [f"### Replication: {s['replication_rate']:.1%} of {s['n_seeds']} seeds {g('replicated')}",  # one rounding rule: 0.1%
             f"*{source}*",
             f"- **multi-seed replication** {g('replicated')} {s['replication_rate']:.1%} (score > {s['threshold']:.3f})",
             f"- **dataset similarity** {g('dataset-similarity')} (95th pct of top-1 over n = {ds['n']} generations; DCR's figure is over "
             f"thousands, and over a few seeds the 95th percentile is nearly the maximum) {ds['p95']:.3f} · "
             f"mean {ds['mean']:.3f} · "
             f"background {g('background')} 95th pct {bg['p95']:.3f} (distinct training images, each vs its nearest other; "
             f"{bg_all['p95']:.3f} over all training rows, planted duplicates included)",
             f"- **detection** {g('detection')} (Wen et al., text-conditional noise norm, first step) {s['detection_mean']:.3f}",
             f"- **caption of the best image match** (the training image with the highest score, seed "
             f"{best['seed']}): “{best['matches'][0]['caption']}” (score {best['score']:.3f}); the captions "
             f"nearest by text are listed below",
             f"- scores {g('descriptor')}: {lab.descriptor_label(name)}"]
    if not state.finished:
        lines.insert(1, f"*{len(state.records)} of {state.requested} seeds so far (running, or stopped: an "
                        f"export now is labelled partial)*")
    lines += probe_lines(lab, state, name)
    if state.warning:
        lines.append(f"- ⚠️ {state.warning}")
    return "\n".join(lines)


def probe_lines(lab: Lab, state: RunState, descriptor: str) -> list[str]:
    """For a probe of the world: its group, where its training image is, and the list's published
    figures beside the ones measured in this run."""
    import numpy as np

    p = lab.probe(state.prompt)
    if not p:
        return []
    lines = [f"- **a probe of this world**: {probe_group_name(str(p.get('group')))}" + (f" (from {p['list']})" if p.get("list") else "")]
    status, tid = p.get("training_image"), p.get("training_id")
    own = []
    if status and status != "indexed":
        lines.append(f"- ⚠️ **its training image could not be fetched** ({status.removeprefix('not fetched: ')}: "
                     f"{p.get('url')}): the matches are against the rest of the training set")
    elif tid:
        top1 = sum(str(r["matches"][0]["id"]) == str(tid) for r in state.records)
        own = [next((m["score"] for m in r["matches"] if str(m["id"]) == str(tid)), None) for r in state.records]
        lines.append(f"- its training image (#{tid}) is the top-1 match in {top1} of {len(state.records)} seeds")
    pub_mean, pub_max = p.get("published_mean_sscd"), p.get("published_max_sscd")
    if pub_mean is not None or pub_max is not None:
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        line = f"- **published** ({p.get('list')}, SSCD to the training image): mean {fmt(pub_mean)} · max {fmt(pub_max)}"
        if own:
            found = np.array([v for v in own if v is not None], float)
            what = f"{descriptor} to its training image" + ("" if descriptor == "sscd" else
                                                           ", another descriptor than the list's SSCD")
            line += (f" — **measured here** ({what}, {len(found)} of {len(own)} seeds with it among the top "
                     f"{len(state.records[0]['matches'])}): mean {found.mean():.3f} · max {found.max():.3f}"
                     if len(found) else " — **measured here**: its training image is not among any seed's matches")
        lines.append(line)
    return lines


def seed_table(state: RunState):
    """One row per seed (``SEED_COLUMNS``): its verdict, top-1 score and training image."""
    import pandas as pd

    return pd.DataFrame([{"seed": r["seed"], "verdict": "replicated" if r["replicated"] else "novel",
                          "score": score(r["score"]), "match id": r["matches"][0]["id"],
                          "copies in training": r["matches"][0]["duplicates"] + 1,
                          "match caption": r["matches"][0]["caption"], "effective prompt": r["effective_prompt"]}
                         for r in state.records], columns=SEED_COLUMNS)


def build_app(labs) -> gr.Blocks:
    """The app for one world (a ``Lab``) or several: the first on the main page, each further world on its
    own page (``/<world>``, named in the navigation bar), its events named ``generate_<world>``, ..."""
    global _API_SUFFIX
    labs = [labs] if isinstance(labs, Lab) else list(labs)
    first = labs[0]
    # Gradio's copies of every output are deleted hourly once a day old (and all of them at a restart)
    with gr.Blocks(title=f"memlab · {first.world.name}", delete_cache=(3600, FILE_MAX_AGE_S)) as demo:
        if len(labs) > 1:
            gr.Navbar(main_page_name=first.world.name)
        world_page(first)
    for lab in labs[1:]:
        slug = page_slug(lab.world.name, [page_slug(x.world.name) for x in labs[:labs.index(lab)]])
        with demo.route(lab.world.name, "/" + slug):
            gr.Navbar(main_page_name=first.world.name)  # (each page carries the bar's settings)
            _API_SUFFIX = "_" + slug.replace("-", "_")
            try:
                world_page(lab)
            finally:
                _API_SUFFIX = ""
    return demo


def run_button(btn: gr.Button, fn, inputs: list, outputs: list, api: str, cleared: tuple, progress_on=None):
    """``btn`` runs ``fn``, after clearing the results a new request invalidates: if the request is
    refused, its message never stands over the previous request's results. A streaming ``fn`` (a
    generator) clears them in its own first update, the moment its request starts; any other ``fn`` after
    a clearing event of its own (a second round trip before the work starts: 0.1 s on the 2-core machine,
    ``benchmarks/bench_streaming.py``). The API event (``api``) is ``fn`` (a generator's first update is
    then ``cleared``; ``api`` None: none). Returns that event (Stop cancels it). ``progress_on``: the one
    output that shows the progress bar (default all of them)."""
    api_name = _api(api) if api else False
    if _is_gen(fn):
        @functools.wraps(fn)
        def cleared_first(*a, **kw):
            yield cleared
            yield from fn(*a, **kw)
        return btn.click(cleared_first, inputs, outputs, api_name=api_name, show_progress_on=progress_on)
    clear = btn.click(lambda: cleared, None, outputs, api_name=False, queue=False)
    return clear.then(fn, inputs, outputs, api_name=api_name, show_progress_on=progress_on)


def page_slug(name: str, taken=()) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "world"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    return slug


def probe_examples(probes) -> list[tuple[str, list[str]]]:
    """The world's probe prompts by group, in the order the groups matter (memorized first), with the
    app's name for each group and its prompts."""
    if probes.empty or "prompt" not in probes:
        return []
    order = ["verbatim", "template", "memorized", "control"]
    key = probes["label"] if "label" in probes else probes["group"]
    ranks = {g: (order.index(g) if g in order else len(order) + i) for i, g in enumerate(dict.fromkeys(key))}
    groups = []
    for g in sorted(ranks, key=ranks.get):
        sub = probes[key == g]
        name = str(sub["group"].iloc[0]) if "label" in probes else probe_group_name(str(g))
        groups.append((name, list(dict.fromkeys(sub["prompt"].astype(str)))))
    return groups


def world_page(lab: Lab) -> None:
    """One world's page: its tabs, wired to its Lab."""
    world = lab.world
    gpu.register(lab)
    gr.Markdown(f"# memlab — training-data memorization lab\nWorld: **{world.name}** · "
                f"{world.trained_on}\n\nScores: {lab.descriptor_label()}")
    run_state = gr.State(None)
    with gr.Tabs() as tabs:
        prompt = generate_tab(lab, probe_examples(lab.probes()), run_state)
        lesson_tab(lab)
        compare_tab(lab)
        match_tab(lab)
        training_set_tab(lab)
        keyword_tab(lab, tabs, prompt)
        about_tab(lab)
    with gr.Accordion("Glossary: the words and numbers on this page", open=True, elem_id="glossary-box"):
        gr.Markdown(glossary_markdown(), elem_id="glossary-text")


def generate_tab(lab: Lab, examples: list[tuple[str, list[str]]], run_state: gr.State) -> gr.Textbox:
    """Generate & match: prompt, seeds, mitigations, descriptor; streamed pairs, headline, table, histogram,
    token attribution, top-k of a selected seed, export. Returns the prompt box (other tabs fill it)."""
    defaults = lab.world.defaults
    with gr.Tab("Generate & match", id="generate"):
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a prompt to test for memorization")
                for name, prompts in examples:  # the world's probes, one set per group (memorized first)
                    gr.Examples([[p] for p in prompts], inputs=[prompt], label=f"{name} · {len(prompts)} prompts",
                                examples_per_page=4, cache_examples=False)
            with gr.Column(scale=1):
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
                desc_choice = gr.Dropdown(lab.descriptor_names, value=lab.descriptor.name,
                                          label="Copy descriptor (the verdict's score and threshold)",
                                          elem_id="descriptor")
                with gr.Row():
                    go_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn", scale=3)
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn", scale=1)
                att_btn = gr.Button("Which words drive it? (token attribution)", elem_id="attribution-btn")
        att_plot = gr.Plot(label="token attribution (Wen et al.)", elem_id="attribution", visible=False)
        headline_md = gr.Markdown(elem_id="headline")
        gallery = gr.Gallery(label="generation | top-1 training match (red frame: replicated)", columns=4,
                             format="png", elem_id="pairs", height="auto",
                             object_fit="contain")
        with gr.Row():
            topk_k = gr.Slider(1, 10, value=5, step=1, label="k: distinct training images shown for a selected seed",
                               scale=1, elem_id="topk-k")
            # a line of its own on a phone (below min_width), beside k on a wider screen
            seed_plot = gr.Plot(label="top-1 score per seed", elem_id="seed-plot", scale=3, min_width=360)
        topk = gr.Gallery(label="top-k matches of the selected seed (one per near-duplicate group, with its "
                                "number of copies in the training set)", columns=5, format="png", visible=True,
                          elem_id="topk")
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
            export_file = gr.File(label="run.zip")

        def run(prompt, n_seeds, seed_list, mits, k, lam, steps, guidance, descriptor, progress, with_charts):
            seeds = lab.seeds(n_seeds, seed_list)
            spec = lab.strategy_spec(mits, k, lam)
            settings = lab.settings(steps, guidance)
            lab.get_descriptor(descriptor)  # an unknown name is refused before any work
            prompt, _ = lab.check_prompt(prompt)
            progress(0, desc="starting")
            near = None
            pairs = []  # built once per seed as seeds stream in
            for state in run_generation(lab, prompt, seeds, spec, settings,
                                        lambda d, t: progress((d, t), desc="seeds"), descriptor):
                pairs += [(as_file(pair_image(im, lab.item_image(r["matches"][0]["row"]), r["replicated"])),
                           _caption(r)) for r, im in zip(state.records[len(pairs):], state.images[len(pairs):])]
                first = near is None and not state.finished  # the first pair as early as it can be: the
                if first:  # caption search comes with the next update (each redraw costs the page)
                    yield (state, headline(lab, state), pairs, seed_table(state), gr.skip()) + \
                        ((gr.skip(), gr.skip()) if with_charts else ())
                    near = id_table(lab.closest_captions(prompt), "text similarity")
                    continue
                if near is None:
                    near = id_table(lab.closest_captions(prompt), "text similarity")
                yield (state, headline(lab, state), pairs, seed_table(state), near) + \
                    (run_charts(state) if with_charts else ())

        def run_charts(state):
            """The run's score histogram over the background and its per-seed chart (or the world's
            background alone when there is no run)."""
            if not state or not state.records:
                return empty_hist, None
            name = state.records[0]["descriptor"]["name"]
            return (histogram(lab, [r["score"] for r in state.records], descriptor=name),
                    seed_scores_chart(lab, state, name))

        @_errors
        def generate(prompt, n_seeds, seed_list, mits, k, lam, steps, guidance, descriptor=None,
                     progress=gr.Progress()):
            """The page's run: its charts are drawn after the batch is on the page (``run_charts``, chained)."""
            yield from run(prompt, n_seeds, seed_list, mits, k, lam, steps, guidance, descriptor, progress, False)

        @_errors
        def generate_api(prompt, n_seeds, seed_list, mits, k, lam, steps, guidance, descriptor=None,
                         progress=gr.Progress()):
            """``/generate``: the same run, its charts in its last update."""
            yield from run(prompt, n_seeds, seed_list, mits, k, lam, steps, guidance, descriptor, progress, True)

        # Each plotly chart costs the page a full redraw (~0.15 s of a core each on the 2-core machine; the
        # page's whole batch came 0.5 s sooner without them, bench_app.py): the page gets the batch, pairs,
        # headline and tables first, and its two charts right after, from a chained event; the API's
        # /generate (a hidden button's event: the same run) returns them in its last update.
        inputs = [prompt, n_seeds, seed_list, mits, k, lam, steps, guidance, desc_choice]
        gen_event = run_button(go_btn, generate, inputs, [run_state, headline_md, gallery, table, closest], None,
                               cleared=(None, "", [], None, None), progress_on=[gallery])
        go_btn.click(lambda: (None, None), None, [plot, seed_plot], queue=False, api_name=False,
                     show_progress="hidden")  # the previous run's charts go with its results
        gen_event.then(run_charts, [run_state], [plot, seed_plot], api_name=False, show_progress="hidden")
        api_btn = gr.Button(visible=False, elem_id="generate-api")
        run_button(api_btn, generate_api, inputs, [run_state, headline_md, gallery, table, closest, plot, seed_plot],
                   "generate", cleared=(None, "", [], None, None, empty_hist, None))
        # Stop ends the run after the seeds in flight; what finished stays (with its charts), and exports as
        # partial
        stop_btn.click(None, None, None, cancels=[gen_event], api_name=False).then(
            run_charts, [run_state], [plot, seed_plot], api_name=False, show_progress="hidden")

        @_errors
        def attribution(prompt, n_seeds, seed_list, steps, guidance):
            toks = lab.token_attribution(prompt, lab.seeds(n_seeds, seed_list), lab.settings(steps, guidance))
            return gr.update(value=attribution_chart(toks), visible=True)

        att_btn.click(attribution, [prompt, n_seeds, seed_list, steps, guidance], [att_plot],
                      api_name=_api("attribution"))

        def show_topk(state: RunState, k, evt: gr.SelectData):
            if not state or evt.index is None or evt.index >= len(state.records):
                return []
            r = state.records[evt.index]
            return [(im, f"#{m['id']} · {m['score']:.3f} · {copies(m.get('duplicates', 0))} · "
                         f"{m['caption'][:50]}")
                    for m in collapse_matches(r["matches"], int(k or 5)) if (im := lab.item_file(m["row"])) is not None]

        gallery.select(show_topk, [run_state, topk_k], [topk], api_name=False)

        @_errors
        def export(state):
            if state is None:
                raise MemlabError("nothing to export yet: generate first")
            name = "run.zip" if state.finished else "run-partial.zip"  # stopped, or still running
            path = Path(tempfile.mkdtemp(prefix="memlab-")) / name
            return str(lab.export(state, path))

        export_btn.click(export, [run_state], [export_file], api_name=_api("export"))
    return prompt


LESSON_SEEDS = list(range(8))
LESSON_MITIGATION = "rna:k=4"


def lesson_tab(lab: Lab) -> None:
    """A guided lesson for a class, four steps a teacher clicks through: a heavily duplicated prompt, its
    training image and that image's copies, the same prompt with a mitigation on the same seeds, and a
    prompt seen once for contrast. Each step is a sentence and its evidence; words link to the glossary."""
    plan = lab.lesson_prompts()
    if plan is None:
        return
    seeds, n = LESSON_SEEDS, len(LESSON_SEEDS)
    with gr.Tab("Lesson", id="lesson"):
        gr.Markdown(f"### Does a diffusion model copy its training images? A four-step demonstration\n"
                    f"Click the steps in order; each takes a few seconds on this world. All steps use the same "
                    f"{n} {g('seed', 'seeds')} ({seeds[0]}-{seeds[-1]}) and the world's default settings. "
                    f"Every word in bold is in the [glossary](#glossary) below.")
        steps = [
            ("1 · A heavily duplicated prompt", f"“{plan['duplicated']}” ({plan['duplicated_group']}). The model "
             f"draws it {n} times, from {n} seeds; each picture is shown beside its closest training image, framed "
             f"red when it is a copy ({g('replicated', 'replicated')})."),
            ("2 · The training image it copies", "The training image most seeds matched, and how often it occurs "
             f"in the training set ({g('copies', 'copies in training')}): models memorize what they saw many "
             f"times."),
            ("3 · The same prompt with a mitigation", f"The same prompt on the same {n} seeds, once as is and once "
             f"with random numbers inserted into the prompt (RNA, k=4; a {g('mitigation', 'mitigation')} from "
             f"Somepalli et al. 2023)."),
            ("4 · A prompt seen once, for contrast", f"“{plan['unique']}” ({plan['unique_group']}): a prompt whose "
             f"image occurs once in training, on the same {n} seeds."),
        ]
        outs = []
        for i, (title, sentence) in enumerate(steps, 1):
            with gr.Group():
                gr.Markdown(f"#### {title}\n{sentence}")
                btn = gr.Button(f"Show step {i}", elem_id=f"lesson-{i}")
                md = gr.Markdown(elem_id=f"lesson-{i}-text")
                if i == 2:  # the training image's copies
                    copies_gallery = gr.Gallery(visible=False, columns=10, height="auto", elem_id="lesson-copies",
                                                label="the training image and its near-duplicates in the training set")
                html_out = gr.HTML(elem_id=f"lesson-{i}-grid")
            outs.append((btn, md, html_out))
        runs = gr.State(None)  # step 1's run, reused by step 2

        def verdict_line(summ) -> str:
            k = round(summ["replication_rate"] * summ["n_seeds"])
            return (f"**{k} of {summ['n_seeds']} seeds replicated** ({summ['replication_rate']:.1%}; "
                    f"{summ['descriptor']['name']} > {summ['threshold']:.3f}, {g('threshold', 'threshold')})")

        def one_row(prompt, progress):
            state = None
            for state in lab.compare_stream(prompt, seeds, [], progress=lambda d, t: progress((d, t), desc="seeds")):
                pass
            return state

        @_errors
        def step1(progress=gr.Progress()):
            state = one_row(plan["duplicated"], progress)
            s0 = state.summaries[0]
            said = (": the model reproduces a training image." if s0["replication_rate"] > 0 else
                    ": none crossed the threshold on these seeds; look at the pairs, and at step 2.")
            return state, verdict_line(s0) + said, compare_grid(lab, state, seeds, 1)

        @_errors
        def step2(state, progress=gr.Progress()):
            if state is None:
                state = one_row(plan["duplicated"], progress)
            tops = [r["matches"][0] for r in state.records]
            best = max({m["row"]: m for m in tops}.values(), key=lambda m: sum(t["row"] == m["row"] for t in tops))
            hits = sum(t["row"] == best["row"] for t in tops)
            group = int(lab.index.items["group"].iloc[best["row"]])
            members = lab.group_members(group)
            files = [(f, f"#{i}") for r, i in zip(members["row"], members["id"]) if (f := lab.item_file(int(r)))]
            text = (f"Training image **#{best['id']}** is the top-1 match of {hits} of {len(tops)} seeds. It has "
                    f"**{copies(best['duplicates'])}** ({g('copies', 'copies in training')}): the "
                    f"{len(files)} images below, found by the {g('descriptor', 'descriptor')}'s duplicate cut.")
            return state, text, "", gr.update(value=files[:48], visible=True)

        @_errors
        def step3(progress=gr.Progress()):
            for state in lab.compare_stream(plan["duplicated"], seeds, [LESSON_MITIGATION],
                                            progress=lambda d, t: progress((d, t), desc="images")):
                text = ""
                if len(state.summaries) == 2:
                    a, b = state.summaries
                    text = (f"Replication {a['replication_rate']:.1%} without mitigation, **{b['replication_rate']:.1%}"
                            f" with RNA** on the same seeds ({g('replicated', 'replication %')}); "
                            f"{g('dataset-similarity', 'dataset similarity')} {a['dataset_similarity']['p95']:.3f} → "
                            f"{b['dataset_similarity']['p95']:.3f}.")
                yield text, compare_grid(lab, state, seeds, 2)

        @_errors
        def step4(progress=gr.Progress()):
            state = one_row(plan["unique"], progress)
            s0 = state.summaries[0]
            said = (": without duplication, the model makes new images." if s0["replication_rate"] == 0 else
                    ": even a prompt seen once can come close to a training image (or the verdict errs: compare "
                    "the pairs).")
            return verdict_line(s0) + said, compare_grid(lab, state, seeds, 1)

        (b1, m1, h1), (b2, m2, h2), (b3, m3, h3), (b4, m4, h4) = outs
        b1.click(step1, None, [runs, m1, h1], api_name=False)
        b2.click(step2, [runs], [runs, m2, h2, copies_gallery], api_name=False)
        b3.click(step3, None, [m3, h3], api_name=False)
        b4.click(step4, None, [m4, h4], api_name=False)


def compare_tab(lab: Lab) -> None:
    """Compare mitigations as an A/B grid: rows are strategies (none first), columns the same seeds;
    rows stream in as each strategy finishes; charts, table and export of the whole comparison."""
    defaults, limit = lab.world.defaults, LIMITS["compare_seeds"]
    with gr.Tab("Compare mitigations", id="compare"):
        with gr.Row():
            with gr.Column(scale=2):
                c_prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a prompt to compare mitigations on",
                                      elem_id="compare-prompt")
                gr.Markdown("Each strategy runs on **the same seeds** as `none`, so a row differs from the first "
                            "only by the mitigation. Rows appear as each strategy finishes. "
                            "Words in the results: [glossary](#glossary).")
            with gr.Column(scale=1):
                c_seeds = gr.Number(value=4, label=f"Number of seeds, the same for every strategy (1 to {limit})",
                                    elem_id="compare-n")
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
        c_table = gr.Dataframe(headers=COMPARE_COLUMNS, label="per strategy (full specs)", elem_id="compare-table",
                               wrap=True)
        with gr.Row():
            c_export_btn = gr.Button("Export comparison (JSONL + images)", elem_id="compare-export")
            c_export_file = gr.File(label="comparison.zip", elem_id="compare-export-file")
        c_state = gr.State(None)

        @_errors
        def compare(prompt, n, mits, k, lam, seed_list="", steps=None, guidance=None, progress=gr.Progress()):
            seeds = lab.seeds(n, seed_list, limit=limit)
            specs = [lab.strategy_spec([m], k, lam) for m in (mits or [])]
            settings = lab.settings(steps, guidance)
            prompt, _ = lab.check_prompt(prompt)
            n_rows = 1 + len(dict.fromkeys(x for x in specs if x != "none"))
            progress(0, desc="none")
            for state in run_compare(lab, prompt, seeds, specs, settings,
                                     lambda d, t: progress((d, t), desc="images")):
                yield (state, compare_headline(lab, state, seeds, n_rows), compare_grid(lab, state, seeds, n_rows),
                       compare_figure(lab, state), compare_table(state))

        event = run_button(c_btn, compare, [c_prompt, c_seeds, c_mits, c_k, c_lam, c_list, c_steps, c_guidance],
                           [c_state, c_head, c_grid, c_plot, c_table], "compare",
                           cleared=(None, "", "", None, None))
        c_stop.click(None, None, None, cancels=[event], api_name=False)

        @_errors
        def export_comparison(state):
            if state is None:
                raise MemlabError("nothing to export yet: compare first")
            name = "comparison.zip" if state.finished else "comparison-partial.zip"
            return str(lab.export(state, Path(tempfile.mkdtemp(prefix="memlab-")) / name))

        c_export_btn.click(export_comparison, [c_state], [c_export_file], api_name=_api("export_comparison"))


def short_label(mitigation: dict) -> str:
    """A strategy as a chart or grid names it: each step's name and its main parameter (the full spec is
    shown on hover and in the table)."""
    main = {"rna": "k", "rt": "k", "cwr": "k", "gni": "lam"}
    parts = []
    for st in mitigation.get("steps") or [{"name": mitigation["name"], "params": {}}]:
        key = main.get(st["name"])
        val = st.get("params", {}).get(key)
        parts.append(st["name"] + (f" {'λ' if key == 'lam' else key}={val:g}" if val is not None else ""))
    return " + ".join(parts)


def thumb_uri(im: Image.Image, width: int = 320) -> str:
    """A small JPEG of an image as a data URI (the A/B grid's cells: no file route, nothing on disk)."""
    import base64
    import io

    im = im.convert("RGB")
    if im.width > width:
        im = im.resize((width, max(1, round(im.height * width / im.width))), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def compare_grid(lab: Lab, state: RunState, seeds, n_rows: int) -> str:
    """The A/B grid as HTML: a header row of seeds, then one row per strategy whose cells are the
    generation beside its top-1 training image, the verdict and score, and the image's id and copies.
    Every row is on the page (no inner scroll box); on a narrow screen each row wraps to two cells a line."""
    import html

    n = len(seeds)
    out = [GRID_CSS, f'<div class="ab" style="--n:{n}">',
           '<div class="ab-row ab-head"><div class="ab-label">strategy</div><div class="ab-cells">'
           + "".join(f'<div class="ab-seed">seed {s}</div>' for s in seeds) + "</div></div>"]
    by_row: dict[str, list] = {}
    for r, im in zip(state.records, state.images):
        by_row.setdefault(r["mitigation"]["spec"], []).append((r, im))
    for summ in state.summaries:
        mit = summ["mitigation"]
        cells = []
        for r, im in by_row.get(mit["spec"], []):
            m = r["matches"][0]
            verdict = "REPLICATED" if r["replicated"] else "novel"
            cells.append(
                f'<figure class="ab-cell {"rep" if r["replicated"] else "nov"}">'
                f'<img src="{thumb_uri(pair_image(im, lab.item_image(m["row"]), r["replicated"], 2))}" '
                f'alt="seed {r["seed"]}, {html.escape(short_label(mit))}: generation | training image #{html.escape(str(m["id"]))}">'
                f'<figcaption><b class="v">{verdict} {r["score"]:.3f}</b><br>'
                f'<span class="ab-seedtag">seed {r["seed"]} · </span>#{html.escape(str(m["id"]))} · {copies(m["duplicates"])}'
                f'</figcaption></figure>')
        rate = summ["replication_rate"]
        out.append(f'<div class="ab-row"><div class="ab-label" title="{html.escape(mit["spec"])}">'
                   f'<b>{html.escape(short_label(mit))}</b><br><small>replication {rate:.1%} '
                   f'({round(rate * summ["n_seeds"])}/{summ["n_seeds"]}) · p95 {summ["dataset_similarity"]["p95"]:.3f}'
                   f'</small></div><div class="ab-cells">{"".join(cells)}</div></div>')
    for _ in range(n_rows - len(state.summaries)):
        out.append('<div class="ab-row ab-pending"><div class="ab-label">…</div>'
                   '<div class="ab-cells"><div class="ab-wait">running</div></div></div>')
    out.append("</div>")
    return "".join(out)


GRID_CSS = """<style>
.ab{display:flex;flex-direction:column;gap:10px}
.ab-row{display:grid;grid-template-columns:9em 1fr;gap:8px;align-items:start}
.ab-cells{display:grid;grid-template-columns:repeat(var(--n),minmax(0,1fr));gap:6px}
.ab-cell{margin:0;text-align:center;font-size:.78em;line-height:1.25}
.ab-cell img{width:100%;height:auto;image-rendering:pixelated;display:block}
.ab-cell.rep .v{color:#c62828}.ab-cell.nov .v{color:#1565c0}
.ab-head .ab-seed{text-align:center;font-weight:600;font-size:.85em}
.ab-seedtag{display:none}
.ab-label{font-size:.9em;overflow-wrap:anywhere}
.ab-wait{color:#888;font-style:italic}
@media (max-width:700px){
 .ab-row{grid-template-columns:1fr}
 .ab-cells{grid-template-columns:repeat(2,minmax(0,1fr))}
 .ab-head{display:none}.ab-seedtag{display:inline}
 .ab-cell{font-size:.9em}
}
</style>"""


def compare_headline(lab: Lab, state: RunState, seeds, n_rows: int) -> str:
    """What the comparison is of: prompt, seeds, settings, descriptor and threshold; rows done so far."""
    st = state.records[0]["settings"]
    s0 = state.summaries[0]
    seeds_txt = ", ".join(map(str, seeds)) if len(seeds) <= 12 else f"{seeds[0]} … {seeds[-1]} ({len(seeds)} seeds)"
    lines = [f"### {len(state.summaries)} of {n_rows} strategies on the same {len(seeds)} seeds",
             f"*seeds {seeds_txt} · {st['steps']} steps, guidance {st['guidance']:g} · "
             f"{s0['descriptor']['name']} > {s0['threshold']:.3f} ([replicated](#glossary)) · "
             f"{lab.descriptor_label(s0['descriptor']['name'])}*"]
    if not state.finished:
        lines.append(f"*{len(state.records)} of {state.requested} images so far (running, or stopped: an export "
                     f"now is labelled partial)*")
    if state.warning:
        lines.append(f"- ⚠️ {state.warning}")
    return "\n".join(lines)


def match_tab(lab: Lab) -> None:
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
        m_gallery = gr.Gallery(label="nearest training images", columns=5, format="png", elem_id="match-gallery")
        m_table = gr.Dataframe(headers=MATCH_COLUMNS, column_widths=MATCH_WIDTHS, label="matches", elem_id="match-table")

        @_errors
        def match_upload(path, k, descriptor):
            res = lab.match_image(path, k, descriptor)
            q, d = res["queries"][0], res["descriptor"]
            verdict = "**replicated**" if q["replicated"] else "not replicated"
            md = (f"### Top-1 score {q['score']:.3f}: {verdict}\n"
                  f"{lab.descriptor_label(d['name'])} · "
                  f"top-1 training image #{q['matches'][0]['id']} · {copies(q['matches'][0].get('duplicates', 0))}")
            gallery = [(im, f"#{m['id']} · {m['score']:.3f} · {str(m.get('caption', ''))[:50]}")
                       for m in q["matches"] if (im := lab.item_file(m["row"])) is not None]
            table = [[m["id"], score(m["score"]), m.get("duplicates", 0) + 1, m.get("caption", "")]
                     for m in q["matches"]]
            import pandas as pd

            return md, gallery, pd.DataFrame(table, columns=MATCH_COLUMNS)

        run_button(m_btn, match_upload, [m_image, m_k, m_desc], [m_md, m_gallery, m_table], "match_image",
                   cleared=("", [], None))


def training_set_tab(lab: Lab) -> None:
    """Training set: caption search, near-duplicate groups, an item with its duplicates."""
    with gr.Tab("Training set", id="train"):
        with gr.Row():
            q = gr.Textbox(label="Search captions", placeholder="e.g. lighthouse", scale=3)
            q_btn = gr.Button("Search", scale=1)
        q_gallery = gr.Gallery(label="matching training images", columns=8, format="png")
        q_table = gr.Dataframe(headers=ID_COLUMNS, column_widths=ID_WIDTHS, label="items", elem_id="search-table")

        def thumbs(df):
            return [(im, f"#{i} · {c[:50]}") for r, i, c in zip(df["row"], df["id"], df["caption"])
                    if (im := lab.item_file(r)) is not None]

        @_errors
        def search(query):
            hits = lab.search_captions(query)
            return thumbs(hits), id_table(hits)

        q_btn.click(search, [q], [q_gallery, q_table], api_name=_api("search_captions"))
        q.submit(search, [q], [q_gallery, q_table], api_name=False)
        gr.Markdown("#### Near-duplicate groups (largest first)")
        groups = lab.duplicate_groups()
        gr.Dataframe(value=groups.rename(columns={"size": "copies in training", "example": "caption"})
                     [ID_COLUMNS], column_widths=ID_WIDTHS, label="duplicated images (open one by its id)")
        with gr.Row():
            item_id = gr.Textbox(label="Open an item by id", scale=3)
            item_btn = gr.Button("Open", scale=1)
        item_gallery = gr.Gallery(label="the item and its duplicates", columns=8, format="png")
        item_table = gr.Dataframe(headers=ID_COLUMNS, column_widths=ID_WIDTHS, label="its duplicate group",
                                  elem_id="group-table")

        @_errors
        def open_item(i):
            row = lab.item_row(i)
            members = lab.group_members(int(lab.index.items.iloc[row]["group"]))
            return thumbs(members), id_table(members)

        item_btn.click(open_item, [item_id], [item_gallery, item_table], api_name=_api("duplicates"))


def keyword_tab(lab: Lab, tabs: gr.Tabs, prompt: gr.Textbox) -> None:
    """Keyword clusters (Memory Triggers): prebuilt or new keyword views; a cluster's caption can be sent
    to Generate & match (``tabs`` and ``prompt``)."""
    with gr.Tab("Keyword clusters", id="clusters"):
        gr.Markdown("Which training images stand behind a word (Memory Triggers paper): the items whose "
                    "caption holds the keyword (captions over 77 CLIP tokens dropped), their clusters of "
                    "nearly identical images, each cluster's frequent caption words, and objects that "
                    "come along unnamed.")
        with gr.Row():
            kw_pick = gr.Dropdown(sorted(lab.views), value=(sorted(lab.views) or [None])[0],
                                  label="Prebuilt keyword (or type a new one)", allow_custom_value=True,
                                  scale=3, elem_id="kw-pick")
            kw_objects = gr.Textbox(label="Objects to check (comma-separated)", scale=2,
                                    value=", ".join(sorted({o for v in lab.views.values() for o in v.get("objects", {})})))
            kw_btn = gr.Button("Show clusters", variant="primary", scale=1, elem_id="kw-btn")
        first = keyword_outputs(lab, lab.views[sorted(lab.views)[0]]) if lab.views else (None,) * 4
        kw_md = gr.Markdown(first[0], elem_id="kw-summary")
        kw_plot = gr.Plot(first[1], label="cluster sizes (30 largest)", elem_id="kw-plot")
        kw_table = gr.Dataframe(first[2], label="clusters", elem_id="kw-table", wrap=True,
                                column_widths=["64px", "64px", "128px", "144px"])  # the words take the rest
        kw_gallery = gr.Gallery(first[3], label="cluster thumbnails", columns=8, format="png",
                                elem_id="kw-gallery")
        with gr.Row():
            kw_rank = gr.Number(value=1, minimum=1, step=1, label="Cluster rank", scale=1)
            kw_gen = gr.Button("Generate from this cluster's caption", scale=2)

        @_errors
        def show_keyword(keyword, objects, progress=gr.Progress()):
            progress(0, desc="filtering captions and clustering")
            objs = [o.strip() for o in text(objects, "the objects", 2_000, False).split(",") if o.strip()]
            prebuilt = lab.views.get(keyword)
            reuse = prebuilt is not None and set(objs) <= set(prebuilt.get("objects", {}))
            v = prebuilt if reuse else lab.keyword_view(keyword, objects=objs)
            return keyword_outputs(lab, v)

        kw_btn.click(show_keyword, [kw_pick, kw_objects], [kw_md, kw_plot, kw_table, kw_gallery],
                     api_name=_api("keyword_clusters"))

        @_errors
        def cluster_prompt(keyword, rank):
            v = lab.keyword_view(keyword)
            rank = 1 if rank is None else number(rank, "the cluster rank", 1, 10**6, integer=True)
            c = next((c for c in v["clusters"] if c["rank"] == rank), None)
            if c is None:
                raise MemlabError(f"no cluster of rank {rank} for {keyword!r}")
            return gr.Tabs(selected="generate"), lab.index.items.iloc[c["representatives"][0]]["caption"]

        kw_gen.click(cluster_prompt, [kw_pick, kw_rank], [tabs, prompt], api_name=_api("cluster_prompt"))


def about_tab(lab: Lab) -> None:
    """About this world: its card and the papers."""
    with gr.Tab("About this world", id="about"):
        gr.Markdown(world_card_markdown(lab))
        gr.Markdown("### Papers\n" + CITATIONS)




class CallerMessages:
    """ASGI middleware saying to callers what Gradio's own answers leave out: a call to an endpoint the
    app does not have gets 404 with the list of those it has (Gradio answers 500), and a request past
    the queue's limit gets 503 with the limit, the number waiting, the expected wait and a Retry-After
    header (Gradio says only that the queue is full)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or "/gradio_api/" not in scope["path"]:
            return await self.app(scope, receive, send)
        blocks = scope["app"].get_blocks()
        m = re.search(r"/gradio_api/call/([^/]+)$", scope["path"])
        if m:
            known = {fn.api_name for fn in blocks.fns.values() if fn.api_name}
            names = sorted(fn.api_name for fn in blocks.fns.values()
                           if fn.api_name and getattr(fn, "api_visibility", "public") == "public")
            if m.group(1) not in known:
                return await _json(send, 404, {"detail": f"this app has no endpoint /{m.group(1)}; it has "
                                                         + ", ".join(f"/{n}" for n in names)})
        start = {}

        async def send_(msg):
            if msg["type"] == "http.response.start" and msg["status"] == 503:
                start.update(msg)
                return
            if start and msg["type"] == "http.response.body":
                text, wait = queue_full_message(blocks._queue)
                return await _json(send, 503, {"detail": text}, {"retry-after": str(max(1, round(wait or 5)))})
            await send(msg)

        return await self.app(scope, receive, send_)


async def _json(send, status: int, body: dict, headers: dict | None = None):
    data = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": data})


def queue_full_message(queue) -> tuple[str, float | None]:
    """What a caller past the queue's limit reads: the limit, how many wait, and how long the queue takes
    to move at the average time of the requests finished so far."""
    times = [p.avg_time for p in queue.process_time_per_fn.values() if getattr(p, "count", 0)]
    waiting = len(queue)
    text = f"The app's queue is full: {waiting} requests are waiting and the limit is {queue.max_size}."
    if not times:
        return text + " Try again in a little while.", None
    avg = sum(times) / len(times)
    return (text + f" Requests take about {avg:.1f} s each, one at a time per kind, so a place frees up in about "
            f"{avg:.0f} s and the queue empties in about {waiting * avg:.0f} s; try again then."), avg


# The page's own CSS: a gallery of a few thumbnails (top-k, a match, the lesson's copies) is as tall as
# its rows (Gradio's galleries keep a fixed height, leaving ~220 px blank under one row); on a narrow screen (a phone, 420 px) the generate tab's pairs stack one a line at
# full width and their captions (seed, verdict, score, training image) wrap instead of being cut; a tapped
# pair opens alone at full width with its caption wrapped (Gradio's preview otherwise lies over the whole
# stacked grid, its caption on one cut line); every other gallery shows 3 thumbnails a line (a gallery's
# columns are otherwise fixed, 8 of them 100 px wide each, scrolled sideways in a 340 px box).
# Gradio pulses the border of every output while a run is in flight: on a machine that serves and shows
# the page (a laptop running the built-in world), a headless Chromium spent most of a core redrawing it,
# taken from the model; the progress bar shows on the pairs alone (``progress_on``)
APP_CSS = """
#pairs .caption-label{white-space:normal;max-width:100%}
#topk .grid-wrap,#match-gallery .grid-wrap,#lesson-copies .grid-wrap{height:auto!important;min-height:0!important;
  max-height:none!important}
.wrap.generating{animation:none!important}
@media (max-width:700px){
 #pairs .grid-container{grid-template-columns:minmax(0,1fr)!important;grid-template-rows:none!important;
   grid-auto-rows:auto!important}
 #pairs .thumbnail-item{aspect-ratio:auto!important;height:auto!important;display:flex;flex-direction:column}
 #pairs .thumbnail-item img{height:auto!important}
 #pairs .grid-wrap{height:auto!important;max-height:none!important;overflow:visible!important}
 #pairs .caption-label{position:static!important;font-size:14px;border:0;text-align:center}
 #pairs .gallery-container:has(> .preview) > .grid-wrap{display:none!important}
 #pairs .preview{position:relative!important;height:auto!important;display:flex;flex-direction:column}
 #pairs .preview .media-button{height:auto!important}
 #pairs .preview .media-button img{height:auto!important;width:100%}
 #pairs .preview .caption{white-space:normal!important;font-size:14px;text-align:center;padding:4px 8px}
 #pairs .preview .thumbnails{position:static!important}
 .gallery-container .grid-container{grid-template-columns:repeat(3,minmax(0,1fr))!important}
}
"""


QUEUE_POLL_S = 0.05  # how often an idle queue looks for work (Gradio's default on Windows; on Linux 0.001)
HEAD_START = 1  # seeds the first update shows on a CPU (run_generation)
PROGRESS_POLL_S = 0.1  # how often progress is sent (Gradio's default on Windows; on Linux 0.01)


def calm_queue(demo: gr.Blocks) -> None:
    """Let the queue's event loop poll at Gradio's Windows rates. On Linux it wakes 1,000 times a second
    to look for work, and each wake takes the GIL from the thread generating, whose small CPU ops each
    need it (tests/test_app.py checks the idle loop; benchmarks/bench_streaming.py measures both ways).
    A request now starts at most 50 ms after it is queued."""
    q = demo._queue  # Gradio's Queue; its poll intervals are plain attributes, not launch options
    if hasattr(q, "sleep_when_free") and hasattr(q, "progress_update_sleep_when_free"):
        q.sleep_when_free, q.progress_update_sleep_when_free = QUEUE_POLL_S, PROGRESS_POLL_S


def launch(demo: gr.Blocks, labs, host: str = "127.0.0.1", port: int = 7860, queue_size: int | None = None,
           **kw):
    """Queue and serve the app the one way memlab does (app.py and the tests): one generation at a time
    per event, at most LIMITS["queue"] requests waiting (past it a caller is told the limit and the wait),
    messages of refused input shown (``show_error``; tracebacks stay in the server log), and files served
    only from the worlds' own folders."""
    from starlette.middleware import Middleware

    labs = [labs] if isinstance(labs, Lab) else list(labs)
    folders = sorted({str(p) for lab in labs for p in (lab.world.path or lab.world.index_path, lab.world.index_path)
                      if p is not None})
    demo.queue(default_concurrency_limit=1, max_size=queue_size or LIMITS["queue"])
    calm_queue(demo)
    return demo.launch(server_name=host, server_port=port, show_error=True, allowed_paths=folders, css=APP_CSS,
                       max_file_size=LIMITS["upload_bytes"],
                       footer_links=["api"], app_kwargs={"middleware": [Middleware(CallerMessages)]}, **kw)


def run_generation(lab: Lab, prompt, seeds, spec, settings, progress, descriptor=None):
    """The first pair early, then as few batches as Stop allows (each batch has a fixed cost; Stop ends a
    run after the chunk in flight): on a CPU, chunks of ``MAX_CHUNK`` whose first ``HEAD_START`` seeds run
    beside the rest (``Generator.generate``'s head start); elsewhere the first two seeds, then chunks of
    ``MAX_CHUNK`` (2, 8, 8, ...). On a GPU host (ZeroGPU) each chunk is one call with plain arguments and a
    duration for its work (``memlab.gpu``)."""
    key = gpu.register(lab)

    def on_host(p, part, strategy, st, d):
        return gpu.generate_chunk_on_host(key, p, part, strategy, st.steps, st.guidance, d)
    if not gpu.ON_HOST and lab.generator.head_start_ok(MAX_CHUNK, HEAD_START):
        plan = {"chunk": MAX_CHUNK, "head": HEAD_START}
    else:
        plan = {"chunk": 2, "then": MAX_CHUNK, "chunk_fn": on_host if gpu.ON_HOST else None}
    yield from lab.generate_stream(prompt, seeds, spec, settings, progress=progress, descriptor=descriptor, **plan)


def run_compare(lab: Lab, prompt, seeds, specs, settings, progress):
    """The comparison streamed row by row; on a GPU host (ZeroGPU) each row is one call (``memlab.gpu``)."""
    key = gpu.register(lab)

    def on_host(p, part, strategy, st, d):
        return gpu.generate_chunk_on_host(key, p, part, strategy, st.steps, st.guidance, d)
    yield from lab.compare_stream(prompt, seeds, specs, settings, progress=progress,
                                  chunk_fn=on_host if gpu.ON_HOST else None)


def keyword_outputs(lab: Lab, v: dict):
    """Summary, size chart, cluster table and thumbnails of one keyword view."""
    import pandas as pd
    import plotly.graph_objects as go

    real = [c for c in v["clusters"] if not c["miscellaneous"]]
    d = v["descriptor"]
    lines = [f"### “{v['keyword']}”: {v['n_before']} captions, {v['n_after']} within 77 CLIP tokens "
             f"({v['n_too_long']} dropped)",
             f"- {len(real)} clusters of nearly identical images (cosine ≥ {v['cluster_threshold']:.3f}, "
             f"{v.get('cluster_threshold_source', 'threshold')}, on "
             f"{d['name']} · {d['model']} · {d['preset']}); miscellaneous (in no cluster): {v['miscellaneous_size']}",
             f"- share of the keyword's items in the largest 1 / 3 / 5 clusters: "
             f"{v['share_in_top']['top1']:.0%} / {v['share_in_top']['top3']:.0%} / {v['share_in_top']['top5']:.0%}"]
    for o, sh in v.get("objects", {}).items():
        if sh["keyword_share"] is not None:
            named = sh.get("named_in_captions")
            lines.append(f"- **{o}**, never named in the caption: in {sh['keyword_share']:.1%} of the "
                         f"“{v['keyword']}” distinct images ({sh['keyword_count']} of {sh.get('keyword_images', '?')}) "
                         f"vs {sh['overall_share']:.1%} of all distinct training images "
                         f"({sh['overall_count']} of {sh.get('overall_images', '?')}); named in "
                         f"{named if named is not None else '?'} of the keyword's captions · source: {sh['source']}")
    fig = go.Figure(go.Bar(x=[f"#{c['rank']}" for c in real[:30]], y=[c["size"] for c in real[:30]],
                           marker_color="#1f77b4"))
    fig.update_layout(height=280, margin=dict(l=40, r=10, t=40, b=40),
                      title=f"“{v['keyword']}”: cluster sizes (30 largest)",
                      xaxis_title="cluster", yaxis_title="items")
    table = pd.DataFrame([{"rank": c["rank"], "size": c["size"], "miscellaneous": c["miscellaneous"],
                           "distinct images": c["distinct_images"],
                           "frequent words": ", ".join(f"{w} ({n})" for w, n in c["top_words"])}
                          for c in v["clusters"]])
    thumbs = []
    for c in v["clusters"][:12]:
        for r in c["representatives"][:4]:
            im = lab.item_file(r)
            if im is not None:
                thumbs.append((im, f"{'misc' if c['miscellaneous'] else '#' + str(c['rank'])} · {c['size']} items"))
    return "\n".join(lines), fig, table, thumbs


def compare_table(state: RunState):
    import pandas as pd

    rows = []
    for s in state.summaries:
        ch = s.get("change_vs_none") or {}
        n = s["n_seeds"]
        rows.append({"strategy": short_label(s["mitigation"]), "spec": s["mitigation"]["spec"],
                     "replication %": f"{s['replication_rate']:.1%} ({round(s['replication_rate'] * n)}/{n})",
                     "change vs none (pts)": round(100 * ch.get("replication_rate", 0.0), 1),
                     "dataset similarity p95": score(s["dataset_similarity"]["p95"]),
                     "change vs none": f"{ch.get('dataset_similarity', 0.0):+.3f}",
                     "detection": score(s["detection_mean"])})
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


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
    fig = make_subplots(rows=1, cols=2, subplot_titles=("replication %", "dataset similarity p95"))
    fig.add_bar(x=names, y=rates, row=1, col=1, marker_color="#d62728", hovertext=specs,
                text=[f"{r:.1f}%" for r in rates], textposition="outside")
    fig.add_scatter(x=names, y=p95, row=1, col=2, mode="markers+text", marker=dict(size=14, color="#1f77b4"),
                    hovertext=specs, text=[f"{v:.3f}" for v in p95], textposition="top center")
    lo, hi = min(p95), max(p95)
    pad = max(0.02, 0.25 * (hi - lo))
    lo, hi = lo - pad, hi + pad
    if lo - 0.1 <= thr <= hi + 0.1:  # the threshold, when it is near enough to read against
        lo, hi = min(lo, thr - 0.01), max(hi, thr + 0.01)
        fig.add_hline(y=thr, line_dash="dash", row=1, col=2, annotation_text=f"threshold {thr:.3f}")
    fig.update_yaxes(range=[0, max(105, max(rates) + 10)], row=1, col=1)
    fig.update_yaxes(range=[lo, hi], row=1, col=2)
    fig.update_layout(height=340, showlegend=False, margin=dict(l=40, r=10, t=70, b=40),
                      title=dict(text=f"<sup>{lab.descriptor_label(name)}</sup>", font=dict(size=12)))
    return fig


def world_card_markdown(lab: Lab) -> str:
    import json

    w = lab.world
    info = lab.index.descriptor_info(lab.descriptor.name)
    thr = info["threshold"]
    lines = [f"## {w.name}", f"**Model**: `{Path(str(w.model)).name if w.path else w.model}` · "
             f"**trained on**: {w.trained_on or 'not stated'}",
             f"**Index**: {lab.index.manifest['item_count']} training items · built "
             f"{lab.index.manifest['created']}",
             f"**Descriptor** {info['name']}: model `{info['model']}`, preset `{info['preset']}`, dim {info['dim']}",
             f"**Threshold** {thr['value']:.3f} — {thr['source']}: {thr.get('citation', '')}. Measured on "
             f"this training set ({thr.get('n_groups', '?')} distinct images, one row per near-duplicate group): "
             f"synthetic-copy recall {thr.get('recall') or 0:.1%}, background false positives "
             f"{thr.get('fpr') or 0:.1%}."]
    gt = thr.get("ground_truth", {})
    if gt:
        lines.append("**Recall on copies made by the world's own model** (held-out training images, not used "
                     "for calibration): " + ", ".join(f"{k.split(':', 1)[-1]} {v['recall']:.1%} (n={v['n']})"
                                                      for k, v in sorted(gt.items())))
    card = w.file("card")
    if card:
        c = json.loads(card.read_text())
        lines.append(f"**Built with** `{c.get('built_with', '')}` in {c.get('build_seconds_total', 0) / 60:.0f} min")
        if "measured" in c:
            from .evaluate import format_report

            lines.append("### Measured memorization\n```\n" + format_report(c["measured"]) + "\n```")
    return "\n\n".join(lines)
