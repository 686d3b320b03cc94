"""What a ``Lab`` shows of its training set: the item table, caption search (words and text embeddings), the
near-duplicate groups, and the keyword views (Memory Triggers; ``memlab.keywords``). ``TrainingSet`` is a part of
``Lab`` (``memlab.service``), on its world, index, generator and descriptors; it runs no UI code.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .compute import on_compute_thread
from .errors import MemlabError
from .gpu import host_work
from .limits import CAPTION_SEARCH_MAX, KEPT_VIEWS, KEYWORD_MAX_ITEMS, LIMITS, text


class TrainingSet:
    """The training-set and keyword views of a ``Lab``."""

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
