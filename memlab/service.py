"""What the app asks of the library, without any UI code: a ``Lab`` over one world that generates and
matches in streamed batches, compares mitigations on the same seeds, searches the training set and
exports runs in the ``memlab run`` format. Thread-safe: model calls run one at a time on one thread
(``memlab.compute``).
"""
from __future__ import annotations

import io
import json
import math
import os
import queue
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from . import compute
from .compute import on_compute_thread
from .errors import MemlabError
from .generate import MAX_PROMPT_CHARS, Settings, check_prompt, parse_seeds
from .match import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, descriptor_for_index, load_image, match_images
from .mitigations import parse_strategy
from .runner import run_prompt, summarize_records
from .world import World

def probe_group_name(group: str) -> str:
    """How the app names a group of the built-in world's probes (``memlab.worldgen``)."""
    m = re.fullmatch(r"(full|partial)_ddf(\d+)", group)
    if m:
        how = "the same image and caption" if m[1] == "full" else "the same image, paraphrased captions"
        return f"planted: {m[1]} duplication x{m[2]} ({how})"
    return {"unique": "seen once in training", "keyword": "keyword images (a hidden object)"}.get(group, group)


APP_MAX_SEEDS = 64  # a web request; the CLI allows up to 1,000
MAX_CHUNK = 8  # seeds per streamed chunk at most (Stop waits for the chunk in flight; on ZeroGPU, one call each)

# What one web request may ask for (README: "Limits"). Past each, the caller gets a message, never a
# silently changed value.
LIMITS = {
    "seeds": APP_MAX_SEEDS,           # seeds per request (generate, attribution)
    "compare_seeds": 16,              # seeds per request in Compare (each runs once per strategy)
    "steps": 200,                     # denoising steps per image
    "guidance": 20.0,
    "prompt_chars": MAX_PROMPT_CHARS,  # refused past it; past 77 CLIP tokens a prompt is truncated (warned)
    "query_chars": 200,               # caption search, keyword, item id
    "k": 10, "lam": 1.0,              # mitigation parameters in the page
    "upload_bytes": MAX_IMAGE_BYTES,  # an uploaded image (Match an image); Gradio refuses larger files
    "upload_pixels": MAX_IMAGE_PIXELS,  # declared in the image's header: refused before decoding
    "queue": 64,                      # requests waiting in the app's queue; past it: "Queue is full"
}


def number(value, name: str, lo: float, hi: float, integer: bool = False):
    """A finite number in [lo, hi] from whatever a caller sent (str, float, None...), or a MemlabError
    that names the field and the range. Never clamps: an out-of-range value is refused."""
    if value is None or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        raise MemlabError(f"{name}: a number is needed (got {value!r})")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise MemlabError(f"{name}: {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(x):
        raise MemlabError(f"{name}: {x} is not a finite number")
    fmt = (lambda v: f"{int(v):,}" if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}")
    if integer and not x.is_integer():
        raise MemlabError(f"{name}: a whole number is needed (got {x:g})")
    if not lo <= x <= hi:
        raise MemlabError(f"{name} must be between {fmt(lo)} and {fmt(hi)} (got {fmt(x)})")
    return int(x) if integer else x


def text(value, name: str, max_chars: int, required: bool = True) -> str:
    """A caller's text field: a string of at most ``max_chars`` characters (numbers are read as text)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise MemlabError(f"{name} is empty")
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise MemlabError(f"{name}: text is needed (got {type(value).__name__})")
    value = str(value)
    if len(value) > max_chars:
        raise MemlabError(f"{name} is {len(value):,} characters long; at most {max_chars:,}")
    return value.strip()


APP_MATCHES = 50  # matches kept per generation in the app: room for k distinct groups after collapsing


def collapse_matches(matches: Sequence[dict], k: int) -> list[dict]:
    """The top ``k`` near-duplicate groups among ranked matches: each group's best match, with
    ``copies`` = how many of the matches belong to that group (the rest are its duplicates)."""
    out: dict = {}
    for m in matches:
        g = m.get("group", m.get("row"))
        if g in out:
            out[g]["copies"] += 1
        else:
            out[g] = {**m, "copies": 1}
    return list(out.values())[:k]


@dataclass
class RunState:
    """One finished (or streaming) run: its records and images, ready to show or export."""

    prompt: str
    records: list = field(default_factory=list)
    images: list = field(default_factory=list)  # PIL images, aligned with the seed records
    summaries: list = field(default_factory=list)
    warning: str | None = None
    requested: int = 0  # seed records the run was asked for (0: not tracked)

    @property
    def finished(self) -> bool:
        return len(self.records) >= self.requested


class Lab:
    """The app's service over one world. Every method that runs a model (loading included) runs on one
    thread (``memlab.compute``): a server's many threads would each start their own OpenMP team."""

    @on_compute_thread
    def __init__(self, world: World, device: str | None = None):
        self.world = world
        self.index = world.index()
        self.descriptor = descriptor_for_index(self.index)  # the world's verdict (index default)
        self._descriptors = {self.descriptor.name: self.descriptor}
        self.device = device
        self._gen = None
        self._caption_vecs = None
        self._background: dict = {}
        self.views = self._load_views()

    # ------------------------------------------------------------------------------ basics
    @property
    @on_compute_thread
    def generator(self):
        if self._gen is None:
            self._gen = self.world.generator(device=self.device)
        return self._gen

    @property
    def descriptor_names(self) -> list[str]:
        """The descriptors the world's index holds; the first is the world's default verdict."""
        names = self.index.descriptor_names
        return [self.descriptor.name] + [n for n in names if n != self.descriptor.name]

    @on_compute_thread
    def get_descriptor(self, name: str | None = None):
        """A descriptor of the index (built once, with the config the index was built with)."""
        name = name or self.descriptor.name
        if name not in self.index.descriptor_names:
            raise MemlabError(f"unknown descriptor {name!r}; this world has {', '.join(self.descriptor_names)}")
        if name not in self._descriptors:
            self._descriptors[name] = descriptor_for_index(self.index, name)
        return self._descriptors[name]

    def threshold(self, name: str | None = None) -> dict:
        return self.index.threshold(name or self.descriptor.name)

    def descriptor_label(self, name: str | None = None) -> str:
        info = self.index.descriptor_info(name or self.descriptor.name)
        thr = info["threshold"]
        return (f"{info['name']} · {info['model']} · preset {info['preset']} · threshold "
                f"{thr['value']:.3f} ({thr['source']})")

    def background(self, name: str | None = None) -> np.ndarray:
        """The background of distinct training images (one row per near-duplicate group against the
        nearest row of another group; read once per descriptor, every histogram draws it)."""
        name = name or self.descriptor.name
        if name not in self._background:
            bg = self.index.background(name, distinct=True)
            self._background[name] = bg[np.isfinite(bg)]
        return self._background[name]

    def probes(self) -> pd.DataFrame:
        """The world's probe prompts (read once): prompt, group (how the app names the set), and for a
        world made by ``memlab world create`` label, url, training_image, training_id, published figures."""
        if getattr(self, "_probes", None) is None:
            f = self.world.file("probes")
            self._probes = (pd.read_csv(f, dtype={"training_id": str}) if f
                            else pd.DataFrame(columns=["prompt", "group"]))
        return self._probes

    def settings(self, steps=None, guidance=None) -> Settings:
        """Sampling settings of a request; None means the world's default."""
        d = self.world.defaults
        steps = d["steps"] if steps is None else number(steps, "steps", 1, LIMITS["steps"], integer=True)
        guidance = d["guidance"] if guidance is None else number(guidance, "guidance", 0, LIMITS["guidance"])
        return Settings(steps=int(steps), guidance=float(guidance)).validate()

    def seeds(self, n_seeds=None, seed_list: str | None = None, limit: int = APP_MAX_SEEDS) -> list[int]:
        """An explicit list ("0-3,9") wins over a count; at most ``limit`` per request."""
        seed_list = text(seed_list, "the seed list", 2_000, required=False)
        if seed_list:
            seeds = parse_seeds(seed_list)
        else:
            n = number(n_seeds, "the number of seeds", 1, limit, integer=True)
            seeds = range(n)
        if len(seeds) > limit:
            raise MemlabError(f"{len(seeds)} seeds is too many for the app (at most {limit}); "
                              f"use `python -m memlab run` for larger batches")
        return list(seeds)

    @staticmethod
    def strategy_spec(mitigations: Sequence[str], k: int = 4, lam: float = 0.1) -> str:
        """Checked mitigations with their parameters -> one composed strategy spec."""
        if isinstance(mitigations, str):  # one name, or "rna,gni"
            mitigations = [m for m in re.split(r"[,+\s]+", mitigations) if m]
        parts = []
        for m in mitigations or []:
            if not isinstance(m, str):
                raise MemlabError(f"a mitigation is named by text (got {m!r})")
            if m in ("rna", "rt", "cwr"):
                parts.append(f"{m}:k={number(k, 'k', 1, LIMITS['k'], integer=True)}")
            elif m == "gni":
                parts.append(f"gni:lam={number(lam, 'λ (gni)', 0, LIMITS['lam'])}")
            else:
                parts.append(m)
        spec = "+".join(parts) or "none"
        parse_strategy(spec)  # validates names and ranges
        return spec

    # ---------------------------------------------------------------------------- generate
    def check_prompt(self, prompt) -> tuple[str, str | None]:
        """The prompt as the pipeline will read it, and a warning if it is truncated (or a MemlabError)."""
        return check_prompt(prompt, self.generator.tokenizer)

    def generate_stream(self, prompt: str, seeds: Sequence[int], strategy: str = "none",
                        settings: Settings | None = None, chunk: int = 2, progress=None,
                        descriptor: str | None = None, chunk_fn=None, then: int | None = None,
                        head: int = 0) -> Iterator[RunState]:
        """Generate and match the seeds in chunks, yielding the growing run after each: the first ``chunk``
        seeds, then chunks of ``then`` (default ``chunk``). ``head``: the first chunk's first ``head`` seeds
        get a head start (``Generator.generate``) and are yielded as soon as they are matched, before the
        rest of that chunk (the app on a CPU: the first pair early at no cost to the whole batch).
        ``chunk_fn(prompt, seeds, strategy, settings, descriptor)`` does one chunk (default
        ``generate_chunk``; the app passes the GPU host's, ``memlab.gpu``, whose chunks have no head)."""
        gen = self.generator
        prompt, warning = check_prompt(prompt, gen.tokenizer)
        settings = settings or self.settings()
        state = RunState(prompt=prompt, warning=warning, requested=len(seeds))
        desc = self.get_descriptor(descriptor)
        thr = self.threshold(desc.name)
        total = len(seeds)
        run_chunk = chunk_fn or (lambda p, part, st, se, d: self.generate_chunk(p, part, st, se, d))
        i, size = 0, chunk
        while i < total:
            part = list(seeds[i:i + size])
            if i == 0 and head and chunk_fn is None:
                pieces = self._head_first(prompt, part, strategy, settings, desc.name, head)
            else:
                pieces = iter([run_chunk(prompt, part, strategy, settings, desc.name)])
            i, size = i + len(part), then or chunk
            for piece in pieces:
                for r, im in piece:
                    state.records.append(r)
                    state.images.append(im)
                last = state.records[-1]
                summary = summarize_records(state.records, thr)
                summary.update({"type": "summary", "prompt": prompt, "mitigation": last["mitigation"],
                                "descriptor": last["descriptor"], "seeds": [r["seed"] for r in state.records]})
                state.summaries = [summary]
                if progress:
                    progress(len(state.records), total)
                yield state

    @on_compute_thread
    def generate_chunk(self, prompt: str, seeds: Sequence[int], strategy: str, settings: Settings,
                       descriptor: str | None = None) -> list:
        """Generate and match ``seeds``: [(seed record, PIL image)] in seed order."""
        return self._chunk(prompt, seeds, strategy, settings, descriptor)

    def _chunk(self, prompt, seeds, strategy, settings, descriptor=None, on_seed=None, head: int = 0) -> list:
        pairs = []

        def keep(r, im):
            pairs.append((r, im))
            if on_seed:
                on_seed(r, im)
        run_prompt(self.generator, self.index, self.get_descriptor(descriptor), prompt, list(seeds), [strategy],
                   settings, out_dir=None, k=APP_MATCHES, on_seed=keep, head=head)
        return pairs

    def _head_first(self, prompt, seeds, strategy, settings, descriptor, head: int) -> Iterator[list]:
        """One chunk on the compute thread with a head start: yields the first ``head`` [(seed record, PIL
        image)] as soon as they are matched, then the rest (the chunk's error is raised here)."""
        got: queue.SimpleQueue = queue.SimpleQueue()
        pairs: list = []

        def on_seed(r, im):
            pairs.append((r, im))
            if len(pairs) == head:
                got.put(list(pairs))
        fut = compute.submit(self._chunk, prompt, seeds, strategy, settings, descriptor, on_seed, head)
        fut.add_done_callback(lambda f: got.put(None))
        first = got.get() or []
        if first:
            yield first
        fut.result()
        yield pairs[len(first):]

    def lesson_prompts(self) -> dict | None:
        """The guided lesson's two prompts, from the world's probes: a heavily duplicated one (a verbatim
        memorized prompt whose training image was fetched, or the built-in world's full duplication at its
        highest ddf) and one seen once in training (a control, or the built-in world's unique set); None
        when the world has no such probes."""
        p = self.probes()
        if p.empty or "prompt" not in p:
            return None
        if "training_image" in p:  # a created world: prefer prompts whose training image is in the index
            p = p.sort_values("training_image", key=lambda c: c.astype(str) != "indexed", kind="stable")
        key = (p["label"] if "label" in p else p["group"]).astype(str)
        full = sorted((g for g in key.unique() if re.fullmatch(r"full_ddf\d+", g)), key=lambda g: -int(g[8:]))
        dup = next((g for g in ["verbatim", "memorized", "template", *full] if (key == g).any()), None)
        uni = next((g for g in ["control", "unique"] if (key == g).any()), None)
        if dup is None or uni is None:
            return None
        name = lambda g: str(p[key == g]["group"].iloc[0]) if "label" in p else probe_group_name(g)  # noqa: E731
        return {"duplicated": str(p[key == dup]["prompt"].iloc[0]), "duplicated_group": name(dup),
                "unique": str(p[key == uni]["prompt"].iloc[0]), "unique_group": name(uni)}

    def probe(self, prompt: str) -> dict | None:
        """The world's probe row for ``prompt`` (its label, training image, published figures), if any."""
        p = self.probes()
        if "prompt" not in p or p.empty:
            return None
        hit = p[p["prompt"].astype(str).str.strip() == str(prompt).strip()]
        return None if hit.empty else {k: (None if pd.isna(v) else v) for k, v in hit.iloc[0].to_dict().items()}

    def compare(self, prompt: str, seeds: Sequence[int], strategies: Sequence[str],
                settings: Settings | None = None, progress=None, descriptor: str | None = None) -> RunState:
        """``none`` and each strategy on the same seeds (the finished ``compare_stream``)."""
        state = None
        for state in self.compare_stream(prompt, seeds, strategies, settings, progress, descriptor):
            pass
        return state

    def compare_stream(self, prompt: str, seeds: Sequence[int], strategies: Sequence[str],
                       settings: Settings | None = None, progress=None, descriptor: str | None = None,
                       chunk_fn=None) -> Iterator[RunState]:
        """``none`` and each strategy on the same seeds, one strategy (a row of the A/B grid) at a time;
        yields the growing comparison after each row. Each strategy's summary is ``run_prompt``'s, with
        its change vs none. ``chunk_fn`` as in ``generate_stream`` (the GPU host's, one call a row)."""
        from .runner import change_vs_none

        gen = self.generator
        prompt, warning = check_prompt(prompt, gen.tokenizer)
        strategies = ["none"] + list(dict.fromkeys(s for s in strategies if s != "none"))
        settings = settings or self.settings()
        desc = self.get_descriptor(descriptor)
        thr = self.threshold(desc.name)
        state = RunState(prompt=prompt, warning=warning, requested=len(seeds) * len(strategies))
        run_row = chunk_fn or (lambda p, part, st, se, d: self.generate_chunk(p, part, st, se, d))
        for j, strategy in enumerate(strategies):
            rows = run_row(prompt, list(seeds), strategy, settings, desc.name)
            recs = [r for r, _ in rows]
            state.records += recs
            state.images += [im for _, im in rows]
            summary = summarize_records(recs, thr)
            summary.update({"type": "summary", "prompt": prompt, "mitigation": recs[0]["mitigation"],
                            "descriptor": recs[0]["descriptor"], "seeds": list(seeds)})
            if state.summaries:
                summary["change_vs_none"] = change_vs_none(summary, state.summaries[0])
            state.summaries.append(summary)
            if progress:
                progress((j + 1) * len(seeds), len(strategies) * len(seeds))
            yield state

    @on_compute_thread
    def token_attribution(self, prompt: str, seeds: Sequence[int], settings: Settings | None = None) -> list[dict]:
        """Wen et al.'s per-token attribution of the prompt (first step, the first 4 seeds)."""
        gen = self.generator
        prompt, _ = check_prompt(prompt, gen.tokenizer)
        return gen.token_attribution(prompt, seeds=list(seeds)[:4], settings=settings or self.settings())

    @on_compute_thread
    def match_image(self, path, k: int = 5, descriptor: str | None = None) -> dict:
        """An uploaded image against the training set (the ``memlab match`` result for one image); the
        file is checked against the byte and pixel caps before it is decoded."""
        if not path or not isinstance(path, (str, os.PathLike)):
            raise MemlabError("upload an image first")
        k = number(k, "k", 1, 20, integer=True)
        desc = self.get_descriptor(descriptor)
        return match_images(self.index, desc, [load_image(path)], names=[Path(path).name], k=k)

    # ----------------------------------------------------------------------------- training set
    def item_file(self, row: int) -> str | None:
        """A training image's file, for galleries: handing Gradio a path (copied into its cache under a
        temporary name, then renamed) rather than a PIL image (re-encoded and rewritten in place on every
        request) keeps concurrent requests for the same image from reading a half-written file."""
        p = self.index.image_path(row)
        return str(p) if p is not None and p.is_file() else None

    def item_image(self, row: int) -> Image.Image | None:
        p = self.index.image_path(row)
        if p is None or not p.is_file():
            return None
        with Image.open(p) as im:
            return im.convert("RGB")

    def search_captions(self, query: str, limit: int = 48) -> pd.DataFrame:
        """Training items whose caption contains every word of the query (case-insensitive)."""
        words = [w for w in re.findall(r"\w+", text(query, "the search", LIMITS["query_chars"], False).lower())]
        if not words:
            raise MemlabError("type a word to search the captions for")
        items = self.index.items
        caps = items["caption"].str.lower()
        mask = np.ones(len(items), bool)
        for w in words:
            mask &= caps.str.contains(rf"\b{re.escape(w)}\b", regex=True).to_numpy()
        hits = items[mask].drop_duplicates(subset=["group", "caption"]).head(limit)
        return hits.assign(row=hits.index)[["row", "id", "caption", "duplicates", "group"]].reset_index(drop=True)

    def duplicate_groups(self, limit: int = 50) -> pd.DataFrame:
        items = self.index.items
        g = items[items["duplicates"] > 0].groupby("group").agg(
            id=("id", "first"), size=("id", "size"), example=("caption", "first"))
        return g.sort_values("size", ascending=False).head(limit).reset_index()

    def group_members(self, group: int) -> pd.DataFrame:
        items = self.index.items
        m = items[items["group"] == int(group)]
        return m.assign(row=m.index)[["row", "id", "caption", "duplicates", "group"]].reset_index(drop=True)

    def item_row(self, item_id) -> int:
        item_id = text(item_id, "the item id", LIMITS["query_chars"])
        items = self.index.items
        hits = np.nonzero(items["id"].astype(str).to_numpy() == str(item_id).strip())[0]
        if not len(hits):
            raise MemlabError(f"no training item with id {item_id!r}")
        return int(hits[0])

    # ---------------------------------------------------------------------------- text side
    def _text_embedder(self):
        """CLIP text similarity is the cosine of *projected* text embeddings: the index's CLIP
        descriptor when it has one, else the pipeline's text encoder (projected when it has a
        projection; SD v1's CLIPTextModel has none, so then its pooled output, and the label says so)."""
        clip = next((n for n in self.index.descriptor_names if self.index.descriptor_info(n)["kind"] == "clip"), None)
        if clip is not None:
            d = self.get_descriptor(clip)
            return d.embed_text, f"CLIP text embedding of {d.model}, projected, cosine"
        gen = self.generator
        projected = hasattr(gen.pipe.text_encoder, "text_projection")
        return gen.text_embed, ("text encoder of the world's pipeline, " +
                                ("projected" if projected else "pooled output: it has no projection layer") + ", cosine")

    def text_source(self) -> str:
        return self._text_embedder()[1]

    @on_compute_thread
    def closest_captions(self, prompt: str, k: int = 5) -> pd.DataFrame:
        """The training captions nearest to a prompt by text embedding, with their similarity."""
        items = self.index.items
        embed, _ = self._text_embedder()
        if self._caption_vecs is None:
            caps = items["caption"].fillna("").astype(str)
            uniq = caps.drop_duplicates()
            self._caption_vecs = (uniq.index.to_numpy(), uniq.tolist(), np.asarray(embed(uniq.tolist())))
        rows, caps, vecs = self._caption_vecs
        q = np.asarray(embed([prompt]))[0]
        sims = vecs @ q
        top = np.argsort(-sims)[:k]
        return pd.DataFrame({"caption": [caps[i] for i in top], "text similarity": np.round(sims[top], 4),
                             "row": rows[top], "id": items["id"].to_numpy()[rows[top]],
                             "duplicates": items["duplicates"].to_numpy()[rows[top]]})

    # ------------------------------------------------------------------------------ keywords
    def _view_folders(self) -> list[Path]:
        return [p for p in ([self.world.path / "keywords"] if self.world.path else []) +
                [self.index.path / "keywords"] if p.is_dir()]

    def _load_views(self) -> dict:
        from .keywords import load_views

        views = {}
        for folder in self._view_folders():
            views.update(load_views(folder))
        return views

    @on_compute_thread
    def keyword_view(self, keyword: str, threshold: float | None = None, objects: Sequence[str] = ()) -> dict:
        """A prebuilt view, or computed now (and kept in memory) for a new keyword."""
        from .keywords import keyword_view

        keyword = text(keyword, "the keyword", LIMITS["query_chars"], required=False)
        if not keyword:
            raise MemlabError("type or pick a keyword")
        if keyword in self.views and threshold is None and not objects:
            return self.views[keyword]
        v = keyword_view(self.index, keyword, threshold=threshold, objects=objects,
                         tokenizer=self.generator.tokenizer if self._gen is not None else None)
        if v["n_after"] == 0:
            raise MemlabError(f"no training caption contains {keyword!r}")
        self.views[keyword] = v
        return v

    # ------------------------------------------------------------------------------ export
    @staticmethod
    def export(state: RunState, path: Path) -> Path:
        """A zip holding results.jsonl (the ``memlab run`` format) and images/ beside it; written to a
        temporary name and renamed, so a failed or killed export leaves no half-written zip."""
        if not state or not state.records:
            raise MemlabError("nothing to export yet: generate first")
        path = Path(path)
        part = path.with_name(path.name + ".part")
        try:
            Lab._write_zip(state, part)
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
        return path

    @staticmethod
    def _write_zip(state: RunState, path: Path) -> None:
        buf = io.StringIO()
        partial = {} if state.finished else {"partial": True, "seeds_requested": state.requested,
                                               "seeds_done": len(state.records)}
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for r, im in zip(state.records, state.images):
                name = f"images/{r['mitigation']['name']}-s{r['seed']}.png"
                b = io.BytesIO()
                im.save(b, format="PNG")
                z.writestr(name, b.getvalue())
                buf.write(json.dumps({**r, "image": name}) + "\n")
            for s in state.summaries:
                buf.write(json.dumps({**s, **partial}) + "\n")
            z.writestr("results.jsonl", buf.getvalue())
