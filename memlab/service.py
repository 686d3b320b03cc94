"""What the app asks of the library, without any UI code: a ``Lab`` over one world that generates and
matches in streamed batches, compares mitigations on the same seeds, searches the training set and
exports runs in the ``memlab run`` format. Thread-safe: model calls run one at a time on one thread
(``memlab.compute``).
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .compute import on_compute_thread
from .gpu import host_work
from .errors import MemlabError
from .jsonfiles import read_json
from .tables import read_table
from .validate import check_card, check_probes
from .generate import Settings, check_prompt, parse_seeds
from .headstart import HEAD_START
from .limits import (APP_MAX_SEEDS, CAPTION_SEARCH_MAX, KEPT_VIEWS, KEYWORD_MAX_ITEMS, LIMITS, MAX_CHUNK, number,
                     text)
from .match import descriptor_for_index, load_image, match_images
from .mitigations import parse_strategy
from .scorenorm import words as score_words
from .preprocess import open_rgb
from .records import APP_MATCHES, RunState, collapse_matches, probe_group_name
from .streams import Streams
from .world import World

__all__ = ["Lab", "RunState", "LIMITS", "APP_MAX_SEEDS", "MAX_CHUNK", "APP_MATCHES", "collapse_matches",
           "number", "text", "probe_group_name", "HEAD_START"]


class Lab(Streams):
    """The app's service over one world (its streams: ``memlab.streams``). Every method that runs a model (loading
    included) runs on one thread (``memlab.compute``): a server's many threads would each start their own OpenMP
    team."""

    @on_compute_thread
    def __init__(self, world: World, device: str | None = None):
        self.world = world
        self.index = world.index()
        self.descriptor = descriptor_for_index(self.index)  # the world's verdict (index default)
        self._descriptors = {self.descriptor.name: self.descriptor}
        self.device = device
        self._gen = None
        self._caption_vecs = None
        self._captions = None  # the index's caption vectors (memlab.captions), False where it has none
        self._n_captions = None  # distinct captions (distinct_captions)
        self._lean = None  # a large index's item columns the training-set views read (_table)
        self._words = None  # the captions' posting lists (memlab.words), read at the app's start or first use
        self._ids = None  # item id -> row (item_row), built on the first lookup
        self._groups = None  # the near-duplicate groups table (duplicate_groups), computed once
        self._background: dict = {}
        self._step_times: dict = {}  # {images in a batch: seconds a step took here} (estimate_seconds)
        self._kept_rows: dict = {}  # the lesson's rows, kept for the next visitor (streams.compare_stream's keep)
        self.views = self._load_views()  # prebuilt keyword views, kept for the app's life
        self._asked: OrderedDict = OrderedDict()  # views computed on request, the KEPT_VIEWS latest used

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

    def possible(self, name: str | None = None) -> dict:
        """The "possible copy" band's lower edge (``TrainingIndex.possible``)."""
        return self.index.possible(name or self.descriptor.name)

    def descriptor_label(self, name: str | None = None) -> str:
        info = self.index.descriptor_info(name or self.descriptor.name)
        thr = info["threshold"]
        norm = info.get("score_norm")
        return (f"{info['name']} · {info['model']} · preset {info['preset']} · threshold "
                f"{thr['value']:.3f} ({thr['source']})" + (f" · score: {score_words(norm)}" if norm else "")
                + (f" · indexed: {info['indexed']}" if info.get("indexed") else ""))

    def score_axis(self, name: str | None = None) -> str:
        """What a chart's score axis shows: the cosine, or the normalized score (``memlab.scorenorm``)."""
        norm = self.index.descriptor_info(name or self.descriptor.name).get("score_norm")
        if not norm:
            return "similarity"
        return ("verified " if norm.get("verify") else "") + (
            f"normalized score (cosine less the mean of the {norm['k']} nearest other images'"
            + (f", plus {norm['verify']['weight']:g} x the images' detail correlation)" if norm.get("verify") else ")"))

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
            self._probes = check_probes(read_table(f, "the world's probes", dtype={"training_id": str}), f) if f \
                else pd.DataFrame(columns=["prompt", "group"])
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

    # ------------------------------------------------------------------- the world, for the page
    @property
    def name(self) -> str:
        return self.world.name

    @property
    def trained_on(self) -> str:
        return self.world.trained_on

    def template_threshold_note(self) -> str | None:
        """Why the world calls no template copy although it has a template threshold (``World``), or None."""
        return self.world.template_threshold_note()

    def alignment_info(self) -> dict | None:
        """How this world measures prompt alignment (``World.aligner``), or None."""
        a = self.world.aligner()
        return a.info() if a is not None else None

    @property
    def defaults(self) -> dict:
        """The world's sampling defaults (steps, guidance, ...)."""
        return self.world.defaults

    def model_name(self) -> str:
        """The model as the page names it: the folder's name for a world's own model, else its Hub id."""
        return Path(str(self.world.model)).name if self.world.path else str(self.world.model)

    def model_description(self) -> str:
        """The model in words: a Hub id at the commit the world was made with, or where its folder is (with the
        fingerprint the world was made with, ``pipeload``)."""
        w = self.world
        if not w.path:
            return str(w.model)
        if Path(str(w.model)).resolve().is_relative_to(Path(w.path).resolve()):
            return f"its own model, in the world's folder `{Path(str(w.model)).relative_to(w.path)}/`"
        rev, fp = w.manifest.get("model_revision"), w.manifest.get("model_fingerprint")
        which = f" at commit `{rev[:12]}`" if rev else f" (its files' fingerprint `{fp[:12]}`)" if fp else ""
        return (f"the local pipeline `{Path(str(w.model)).name}`" if Path(str(w.model)).exists() else str(w.model)) + which

    def served_folders(self) -> list[str]:
        """The folders whose files the app may serve (the world's, and its index's)."""
        w = self.world
        return sorted({str(p) for p in (w.path or w.index_path, w.index_path) if p is not None})

    def image_folders(self) -> list[str]:
        """The folders of the training images the app may serve (the index's image folder)."""
        root = self.index.image_root()
        return [str(root)] if root is not None and root.is_dir() else []

    def is_training_image(self, path) -> bool:
        """Whether ``path`` (resolved) is one of the files the index's item table names under its image folder:
        the app's file route serves those alone there, so an index whose image folder is another (an absolute
        ``image_root`` in a manifest from elsewhere, such as ``/``) hands out its training images, not the
        machine's other pictures. The names are read once (the item table's ``file`` column)."""
        root = self.index.image_root()
        if root is None:
            return False
        root = root.resolve()
        if not Path(path).is_relative_to(root):
            return False
        if getattr(self, "_image_files", None) is None:
            files = self.index.column("file")
            self._image_files = frozenset() if files is None else frozenset(
                os.path.normpath(str(f)) for f in files.dropna().astype(str))
        return os.path.normpath(Path(path).relative_to(root).as_posix()) in self._image_files

    def card(self) -> dict | None:
        """The world's card (``card.json``: how it was built, what was measured), if it has one."""
        if not hasattr(self, "_card"):  # read once: estimates and About read it
            f = self.world.file("card")
            self._card = check_card(read_json(f), f) if f else None
        return self._card

    def index_summary(self) -> dict:
        """How many training items the index holds and when it was built."""
        return {"items": int(self.index.manifest["item_count"]), "created": self.index.manifest["created"]}

    def descriptor_info(self, name: str | None = None) -> dict:
        """A descriptor's entry in the index (model, preset, dim, threshold, backgrounds)."""
        return self.index.descriptor_info(name or self.descriptor.name)

    def item(self, row: int) -> dict:
        """A training row's id, file, caption, duplicates and group."""
        return self.index.item(int(row))

    def item_group(self, row: int) -> int:
        """The near-duplicate group of a training row."""
        return int(self.index.item(int(row))["group"])

    def item_caption(self, row: int) -> str:
        return str(self.index.item(int(row))["caption"])

    def probe_row(self, prompt: str) -> int | None:
        """The row of a probe's own training image (its ``training_id``, or the built-in world's ``id``), if the
        prompt is a probe of this world and its image is in the index."""
        p = self.probe(prompt) or {}
        tid = p.get("training_id") if p.get("training_id") not in (None, "") else p.get("id")
        if tid in (None, ""):
            return None
        try:
            return self.item_row(str(int(tid)) if isinstance(tid, float) and float(tid).is_integer() else str(tid))
        except MemlabError:
            return None

    # ---------------------------------------------------------------------------- generate
    def check_prompt(self, prompt) -> tuple[str, str | None]:
        """The prompt as the pipeline will read it, and a warning if it is truncated (or a MemlabError)."""
        return check_prompt(prompt, self.generator.tokenizer)

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
        dup = next((g for g in ["verbatim", "memorized", *full, "template"] if (key == g).any()), None)
        uni = next((g for g in ["control", "unique"] if (key == g).any()), None)
        if dup is None or uni is None:
            return None
        name = lambda g: str(p[key == g]["group"].iloc[0]) if "label" in p else probe_group_name(g)  # noqa: E731
        plan = {"duplicated": str(p[key == dup]["prompt"].iloc[0]), "duplicated_group": name(dup),
                "unique": str(p[key == uni]["prompt"].iloc[0]), "unique_group": name(uni)}
        if "template" in p and (key == "template").any() and self.template_threshold() is not None:
            plan.update(template=str(p[key == "template"]["prompt"].iloc[0]), template_group=name("template"))
        return plan

    def template_threshold(self) -> dict | None:
        """The world's threshold for the masked score (a "template copy"), if it calibrated one (issue 32)."""
        from .local import current_threshold

        return current_threshold(self.world.manifest.get("template_threshold"))

    def probe_template(self, prompt: str) -> int | None:
        """The template a probe of the built-in world's template group names (None elsewhere)."""
        row = self.probe(prompt)
        return _template_number(None if row is None else row.get("template"))

    def item_template(self, row: int) -> int | None:
        """The template of training row ``row`` (worlds with planted templates; None elsewhere)."""
        return _template_number(self.index.value(int(row), "template"))

    def probe(self, prompt: str) -> dict | None:
        """The world's probe row for ``prompt`` (its label, training image, published figures), if any."""
        p = self.probes()
        if "prompt" not in p or p.empty:
            return None
        hit = p[p["prompt"].astype(str).str.strip() == str(prompt).strip()]
        return None if hit.empty else {k: (None if pd.isna(v) else v) for k, v in hit.iloc[0].to_dict().items()}

    @host_work(lambda self, prompt, seeds, settings=None: (min(4, len(seeds)) * 2, 1))  # a step forward and back
    @on_compute_thread
    def token_attribution(self, prompt: str, seeds: Sequence[int], settings: Settings | None = None) -> list[dict]:
        """Wen et al.'s per-token attribution of the prompt (first step, the first 4 seeds)."""
        gen = self.generator
        prompt, _ = check_prompt(prompt, gen.tokenizer)
        return gen.token_attribution(prompt, seeds=list(seeds)[:4], settings=settings or self.settings())

    @host_work(lambda self, *a, **kw: (1, 1))
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
        return open_rgb(p)

    def _table(self) -> pd.DataFrame:
        """The item table the training-set views read: a small index's whole table (shared with its row lookups),
        else only the columns they show, so a LAION-scale index's other metadata (URLs, sizes, scores) stays on
        disk."""
        from .index import SMALL_ITEMS

        if self.index.manifest["item_count"] <= SMALL_ITEMS:
            return self.index.items
        if self._lean is None:
            import pyarrow.parquet as pq

            f = self.index.path / self.index.manifest["metadata"]
            have = set(pq.read_schema(f).names)
            self._lean = pd.read_parquet(f, columns=[c for c in ("id", "caption", "duplicates", "group") if c in have])
        return self._lean

    def caption_words(self):
        """The captions' posting lists (``memlab.words``: the index's, checked, else built here once), or None past
        ``words.MAX_ITEMS`` items where the index has none: a search reads a few lists, not every caption."""
        if self._words is None:
            from .words import for_index

            self._words = for_index(self.index) or False
        return self._words or None

    def _words_needed(self):
        """``caption_words``, or the refusal of the views that need them."""
        from .words import MAX_ITEMS

        words = self.caption_words()
        if words is None:
            raise MemlabError(f"the training set's {self.index.manifest['item_count']:,} captions have no word index "
                              f"(its build keeps one up to {MAX_ITEMS:,} items): caption search and keyword views "
                              f"are off on it")
        return words

    def search_captions(self, query: str, limit: int = 48) -> pd.DataFrame:
        """Training items whose caption contains every word of the query (case-insensitive, whole words), in row
        order, one per near-duplicate group and caption."""
        from .words import caption_words

        words = caption_words(text(query, "the search", LIMITS["query_chars"], False))
        if not words:
            raise MemlabError("type a word to search the captions for")
        items, rows = self._table(), self._words_needed().rows_with_all(words)
        take = 4 * limit
        while True:  # the first `limit` distinct (group, caption) lie in a prefix of the rows: read only that
            hits = items.iloc[rows[:take]].drop_duplicates(subset=["group", "caption"])
            if len(hits) >= limit or take >= len(rows):
                break
            take *= 4
        hits = hits.head(limit)
        out = hits.assign(row=hits.index)[["row", "id", "caption", "duplicates", "group"]].reset_index(drop=True)
        out.attrs["captions"] = int(len(rows))  # how many captions hold every word (rows, duplicates included)
        return out

    def duplicate_groups(self, limit: int = 50) -> pd.DataFrame:
        """The largest near-duplicate groups: an id, the copies, the distinct captions on them (one: full
        duplication, memorized far more than partial, the same image under other captions: Somepalli et al. 2023)."""
        if self._groups is None:  # (the item table does not change while the app serves it)
            items = self._table()
            g = items[items["duplicates"] > 0].groupby("group").agg(
                id=("id", "first"), size=("id", "size"), captions=("caption", "nunique"), example=("caption", "first"))
            self._groups = g.sort_values("size", ascending=False, kind="stable").reset_index()
        return self._groups.head(limit).reset_index(drop=True)

    def group_members(self, group: int) -> pd.DataFrame:
        items = self._table()
        m = items[items["group"] == int(group)]
        return m.assign(row=m.index)[["row", "id", "caption", "duplicates", "group"]].reset_index(drop=True)

    def item_row(self, item_id) -> int:
        item_id = text(item_id, "the item id", LIMITS["query_chars"])
        if self._ids is None:  # a hash of the ids, once (comparing 2M ids per lookup took 85 ms: bench_words)
            ids = self._table()["id"].astype(str).to_numpy()
            self._ids = pd.Series(np.arange(len(ids)), index=ids)
            self._ids = self._ids[~self._ids.index.duplicated()]  # (the first row of a repeated id, as before)
        row = self._ids.get(str(item_id).strip())
        if row is None:
            raise MemlabError(f"no training item with id {item_id!r}")
        return int(row)

    # ---------------------------------------------------------------------------- text side
    def caption_vectors(self):
        """The index's caption vectors (``memlab.captions``: built offline, searched at any size), or None."""
        if self._captions is None:
            from .captions import CaptionVectors

            self._captions = CaptionVectors.load(self.index) or False
        return self._captions or None

    def _text_embedder(self):
        """CLIP text similarity is the cosine of *projected* text embeddings: the index's CLIP
        descriptor when it has one (the one its caption vectors were made with, where it keeps them), else the
        pipeline's text encoder (projected when it has a projection; SD v1's CLIPTextModel has none, so then its
        pooled output, and the label says so)."""
        kept = self.caption_vectors()
        clip = kept.entry["descriptor"] if kept else next(
            (n for n in self.index.descriptor_names if self.index.descriptor_info(n)["kind"] == "clip"), None)
        if clip is not None:
            d = self.get_descriptor(clip)
            return d.embed_text, f"CLIP text embedding of {d.model}, projected, cosine"
        gen = self.generator
        projected = hasattr(gen.pipe.text_encoder, "text_projection")
        return gen.text_embed, ("text encoder of the world's pipeline, " +
                                ("projected" if projected else "pooled output: it has no projection layer") + ", cosine")

    @host_work(lambda self, texts: (max(1, len(texts) // 64), 1))  # a text encoder: 64 texts about an image-step
    @on_compute_thread
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts as the caption search compares them (``_text_embedder``)."""
        return np.asarray(self._text_embedder()[0](list(texts)))

    def text_source(self) -> str:
        kept = self.caption_vectors()
        if kept:
            return f"{self._text_embedder()[1]}; {kept.words()}"
        n = self.distinct_captions()
        if n > CAPTION_SEARCH_MAX:
            return (f"not searched: the training set has {n:,} distinct captions, over the {CAPTION_SEARCH_MAX:,} "
                    f"the app embeds (`python -m index_builder captions --index ...` keeps their vectors in the "
                    f"index, searched at any size)")
        return self._text_embedder()[1]

    def distinct_captions(self) -> int:
        if self._n_captions is None:
            self._n_captions = int(self._table()["caption"].fillna("").astype(str).nunique())
        return self._n_captions

    @on_compute_thread
    def closest_captions(self, prompt: str, k: int = 5) -> pd.DataFrame:
        """The training captions nearest to a prompt by text embedding, with their similarity: from the index's
        caption vectors where it keeps them, else embedded here once; none (an empty table, ``text_source``
        says why) where neither holds, past ``CAPTION_SEARCH_MAX`` distinct captions."""
        columns = ["caption", "text similarity", "row", "id", "duplicates"]
        kept = self.caption_vectors()
        if kept:  # the k rows alone are read (a large index's item table is never loaded whole for this)
            rows, sims = kept.search(self.embed_texts([prompt])[0], k)
            found = [self.index.item(int(r)) for r in rows]
            return pd.DataFrame({"caption": [f["caption"] for f in found], "text similarity": np.round(sims, 4),
                                 "row": rows, "id": [f["id"] for f in found],
                                 "duplicates": [f["duplicates"] for f in found]}, columns=columns)
        if self.distinct_captions() > CAPTION_SEARCH_MAX:
            return pd.DataFrame(columns=columns)
        items = self._table()
        if self._caption_vecs is None:
            from .captions import distinct_rows

            first = distinct_rows(items["caption"])
            uniq = items["caption"].fillna("").astype(str).to_numpy()[first].tolist()
            self._caption_vecs = (first, uniq, self.embed_texts(uniq) if uniq else None)
        rows, caps, vecs = self._caption_vecs
        if vecs is None:
            return pd.DataFrame(columns=columns)
        sims = vecs @ self.embed_texts([prompt])[0]
        top = np.argsort(-sims)[:k]
        return pd.DataFrame({"caption": [caps[i] for i in top], "text similarity": np.round(sims[top], 4),
                             "row": rows[top], "id": items["id"].to_numpy()[rows[top]],
                             "duplicates": items["duplicates"].to_numpy()[rows[top]]}, columns=columns)

    # ------------------------------------------------------------------------------ keywords
    def _load_views(self) -> dict:
        """The prebuilt keyword views of the world and of its index, each under its holder's checksums."""
        from .keywords import load_views

        views = {}
        n = int(self.index.manifest["item_count"])
        holders = ([(self.world.path, set((self.world.manifest.get("files") or {})))] if self.world.path else []) \
            + [(self.index.path, set(self.index.manifest.get("files", {})))]
        for root, sealed in holders:
            if (root / "keywords").is_dir():
                views.update(load_views(root / "keywords", sealed, n))
        return views

    @property
    def keyword_names(self) -> list[str]:
        """The prebuilt keyword views as the tab lists them: the world's planted keywords (a hidden object comes
        with them, ``world.json``'s ``keywords``) first, then the rest alphabetically whatever their case (the
        tab opened on "Velmora", whose hidden-object share is 0, before "lighthouse")."""
        planted = [k for k in (self.world.manifest.get("keywords") or {}) if k in self.views]
        return planted + sorted((k for k in self.views if k not in planted), key=str.casefold)

    @on_compute_thread
    def keyword_view(self, keyword: str, threshold: float | None = None, objects: Sequence[str] = ()) -> dict:
        """A prebuilt view, or computed now for a new keyword and kept in memory among the ``KEPT_VIEWS`` latest
        used (a hosted app's visitors may type any number of words). A view that checked more objects serves a
        request for fewer (the objects change no cluster)."""
        from .keywords import keyword_view

        keyword = text(keyword, "the keyword", LIMITS["query_chars"], required=False)
        if not keyword:
            raise MemlabError("type or pick a keyword")
        if threshold is None:
            for kept in (self.views, self._asked):
                if keyword in kept and set(objects) <= set(kept[keyword].get("objects", {})):
                    if kept is self._asked:
                        self._asked.move_to_end(keyword)
                    return kept[keyword]
        v = keyword_view(self.index, keyword, threshold=threshold, objects=objects,
                         tokenizer=self.generator.tokenizer if self._gen is not None else None,
                         max_items=KEYWORD_MAX_ITEMS, table=self._table(), words=self._words_needed())
        if v["n_after"] == 0:
            raise MemlabError(f"no training caption contains {keyword!r}")
        if threshold is None:  # (one clustered at another cut is not the keyword's view for the next request)
            self._asked[keyword] = v
            self._asked.move_to_end(keyword)
            while len(self._asked) > KEPT_VIEWS:
                self._asked.popitem(last=False)
        return v

    def related_share(self, view: dict, related: str) -> dict:
        """How much of a keyword view's images are ``related``'s works (``memlab.keywords.related_share``)."""
        from .keywords import related_share

        related = text(related, "the related keyword", LIMITS["query_chars"], required=False)
        t = self._table()  # (the posting lists name the rows to read: the caption column is not converted whole)
        return related_share(view, t["caption"].to_numpy(), t["group"].to_numpy(), related, self._words_needed())

    # ------------------------------------------------------------------------------ export
    EXPORT_MATCHES = 5  # near-duplicate groups kept per seed in an export, each with its training image

    def export(self, state: RunState, path: Path) -> Path:
        """A zip a researcher can open offline (``memlab.export.write_export``)."""
        from .export import write_export

        return write_export(self, state, path, self.EXPORT_MATCHES)


def _template_number(t) -> int | None:
    """A ``template`` cell as the template's number: None where it is missing, NaN or -1 (no template)."""
    return int(t) if t is not None and t == t and int(t) >= 0 else None
