"""Keyword clusters and object co-occurrence (Memory Triggers paper; docs/methods.md, "Keyword clusters").

For a keyword: the training items whose caption contains it (case-insensitive, whole words, multi-word
keywords), minus captions longer than 77 CLIP tokens; clusters of nearly identical images among them
(CLIP image embeddings where the index has them, as the paper; connected components at the descriptor's
near-duplicate cut, unless a threshold is given), ordered by
size, with the images in no cluster gathered as the "miscellaneous" cluster and marked (the paper's omitted
"largest cluster of irrelevant images": ``OMITTED_RULE``); per cluster its
most frequent caption words, the keyword's own words included as in the paper's Table 1 ("van 3061,
gogh 3042, night 2841, starry 2806"; stop words left out, the keyword optionally); the sizes of the 30
largest clusters; and for named objects, the share of the keyword's distinct images that contain the
object while their captions do not name it ("even when the terms 'US' or 'flag' were not specified"),
against the same share over the whole training set; both over distinct images (one per near-duplicate
group). Object labels come from a label column, or CLIP zero-shot when available. And how much of a keyword's
images are another keyword's works ("almond + blossoming" in Van Gogh's clusters: ``related_share``).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from . import metrics
from .errors import MemlabError
from .jsonfiles import read_json

STOP_WORDS = set("""a an the and or of on in at by for with to from over under into onto this that these those
is are was were be been it its as his her their our your my photo image picture painting print art
poster canvas oil style background""".split())
MAX_TOKENS = 77


OMITTED_RULE = ("Memory Triggers omit \"the largest cluster, comprised of irrelevant images not closely related to "
                "others\": here, the images nearly identical to no other image of the keyword, pooled as the "
                "miscellaneous cluster, shown apart and never ranked (its size is given beside the ranked clusters)")


def keyword_parts(keyword: str) -> list[str]:
    """A keyword's parts: "almond + blossoming" is two, each a phrase that must be in the caption, in any order
    (Memory Triggers filter the captions "with 'almond' and 'blossoming'"); a keyword without "+" is one."""
    parts = [p.strip() for p in str(keyword).split("+")]
    parts = [p for p in parts if re.search(r"\w", p)]
    if not parts:
        raise MemlabError(f"keyword {keyword!r} has no word in it")
    return parts


def _phrase(part: str) -> str:
    return r"(?<!\w)" + r"\s+".join(map(re.escape, re.findall(r"\w+", part.lower()))) + r"(?!\w)"


def keyword_pattern(keyword: str) -> re.Pattern:
    """Whole-word, in a lower-cased caption; the words of a multi-word keyword may be split by any whitespace. Of
    a keyword of several parts ("almond + blossoming"), any part (``keyword_mask`` asks for every one)."""
    return re.compile("|".join(_phrase(p) for p in keyword_parts(keyword)))


def keyword_mask(captions: Sequence[str], keyword: str, words=None) -> np.ndarray:
    """Which captions hold the keyword (each of its parts' ``keyword_pattern`` in the lower-cased caption).
    ``words``: the captions' posting lists (``memlab.words.CaptionWords``), so that only the captions holding each
    of its words are read."""
    pats = [keyword_pattern(p) for p in keyword_parts(keyword)]

    def holds(c):
        c = str(c).lower()
        return all(p.search(c) for p in pats)
    if words is None:
        return np.array([holds(c) for c in captions], bool)
    mask = np.zeros(len(captions), bool)
    rows = words.rows_with_all(re.findall(r"\w+", keyword.lower()))
    mask[rows] = [holds(captions[i]) for i in rows]
    return mask


@lru_cache(maxsize=1)
def _clip_tokenizer():
    from .pipelines import clip_tokenizer

    return clip_tokenizer()  # (built once a process: a view per keyword built it again, ~1 s each)


def clip_token_lengths(captions: Sequence[str], tokenizer=None) -> np.ndarray:
    """Token count of each caption under the real CLIP tokenizer, start and end tokens included."""
    if tokenizer is None:
        tokenizer = _clip_tokenizer()
    ids = tokenizer([str(c) for c in captions], add_special_tokens=True, truncation=False).input_ids
    return np.array([len(x) for x in ids], np.int64)


def filter_keyword(captions: Sequence[str], keyword: str, tokenizer=None, words=None,
                   max_items: int | None = None) -> dict:
    """Rows whose caption holds the keyword, before and after dropping captions over 77 tokens. With
    ``max_items``, captions are tokenized in blocks only until more than that many are kept (``over``: True, and
    ``n_after``, ``n_too_long`` count the captions tokenized so far), so a common word costs no more than a rare
    one."""
    rows = np.nonzero(keyword_mask(captions, keyword, words))[0]
    block = len(rows) if max_items is None else max(1024, 2 * max_items)
    kept, too_long, over = [], 0, False
    for s in range(0, len(rows), max(block, 1)):
        r = rows[s:s + block]
        lengths = clip_token_lengths([captions[i] for i in r], tokenizer)
        kept.append(r[lengths <= MAX_TOKENS])
        too_long += int((lengths > MAX_TOKENS).sum())
        if max_items is not None and sum(map(len, kept)) > max_items:
            over = s + block < len(rows)
            break
    kept = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    return {"rows": kept, "n_before": int(len(rows)), "n_after": int(len(kept)), "n_too_long": too_long,
            "over": over}


def cluster(vectors: np.ndarray, threshold: float, min_size: int = 2):
    """Clusters of nearly identical items: connected components with cosine >= threshold. Components
    smaller than ``min_size`` are pooled as the miscellaneous cluster (label -1). Returns labels with
    clusters numbered by decreasing size (0 = largest)."""
    if len(vectors) == 0:
        return np.zeros(0, np.int64)
    comp, _ = metrics.near_duplicate_groups(vectors, threshold)
    ids, counts = np.unique(comp, return_counts=True)
    order = [i for i, c in sorted(zip(ids, counts), key=lambda t: (-t[1], t[0])) if c >= min_size]
    remap = {c: r for r, c in enumerate(order)}
    return np.array([remap.get(c, -1) for c in comp], np.int64)


def word_table(captions: Sequence[str], keyword: str = "", top: int = 8,
               hide_keyword: bool = False) -> list[tuple[str, int]]:
    """Most frequent caption words with counts, as the paper's Table 1: the keyword's own words are
    listed too (``hide_keyword`` leaves them out); stop words are left out. Each word counts once per
    caption (how many captions use it). The ``top`` most frequent, and every word as frequent as the last of
    them: a cut through a tie would drop words at random (alphabetically), the keyword itself among them. Of
    several captions, a word only one of them uses is not a frequent one and is left out."""
    drop = STOP_WORDS | (set(re.findall(r"\w+", keyword.lower())) if hide_keyword else set())
    c = Counter()
    for cap in captions:
        c.update({w for w in re.findall(r"[a-z][a-z']+", str(cap).lower()) if w not in drop})
    ranked = sorted(((w, n) for w, n in c.items() if n > 1 or len(captions) == 1),
                    key=lambda t: (-t[1], t[0]))  # ties alphabetical: the same in every process
    if len(ranked) <= top or top <= 0:
        return ranked[:max(top, 0)]
    last = ranked[top - 1][1]
    return [t for t in ranked if t[1] >= last]


def object_shares(has_object: np.ndarray, named: np.ndarray, group: np.ndarray, keyword_rows: np.ndarray) -> dict:
    """The hidden object (Memory Triggers): the share of the keyword's distinct images that contain the
    object while none of their captions names it, against the same share over the whole training set.

    ``has_object``, ``named`` (the row's caption names the object) and ``group`` (near-duplicate group)
    are per training row; every share is over distinct images (groups), the one denominator."""
    has, nm, g = np.asarray(has_object, bool), np.asarray(named, bool), np.asarray(group)

    def share(rows):
        if len(rows) == 0:
            return None, 0, 0
        df_g, inv = np.unique(g[rows], return_inverse=True)
        h = np.zeros(len(df_g), bool)
        n = np.zeros(len(df_g), bool)
        np.logical_or.at(h, inv, has[rows])
        np.logical_or.at(n, inv, nm[rows])
        hidden = h & ~n
        return float(hidden.mean()), int(hidden.sum()), int(len(df_g))

    k_share, k_count, k_images = share(np.asarray(keyword_rows, np.int64))
    o_share, o_count, o_images = share(np.arange(len(has)))
    return {"keyword_share": k_share, "keyword_count": k_count, "keyword_images": k_images,
            "overall_share": o_share, "overall_count": o_count, "overall_images": o_images,
            "counts": "distinct images (one per near-duplicate group) that contain the object and whose "
                      "captions do not name it"}


ZERO_SHOT_BLOCK = 262_144  # image vectors scored at a time (a LAION-scale float16 matrix is never upcast whole)


def object_labels(index, obj: str, column: str = "objects", clip=None, labels=False) -> tuple[np.ndarray, str]:
    """Which items contain ``obj``: from a label column (comma-separated; ``labels``: that column, or None where
    the index has none, if read already), else CLIP zero-shot (image-text cosine of "a photo of a {obj}" above the
    items' median by 3 MADs)."""
    labels = index.column(column) if labels is False else labels
    if labels is not None:
        has = labels.fillna("").astype(str).str.split(",").apply(lambda xs: obj in [x.strip() for x in xs])
        return has.to_numpy(bool), f"label column {column!r}"
    if clip is not None and clip.name in index.descriptor_names:
        t = np.asarray(clip.embed_text([f"a photo of a {obj}"])[0], np.float32)
        v = index.vectors(clip.name)
        s = np.concatenate([np.asarray(v[i:i + ZERO_SHOT_BLOCK], np.float32) @ t
                            for i in range(0, len(v), ZERO_SHOT_BLOCK)]) if len(v) else np.zeros(0, np.float32)
        med = np.median(s)
        mad = np.median(np.abs(s - med)) or 1e-6
        return s > med + 3 * mad, f"CLIP zero-shot ({clip.model}), median + 3 MAD"
    raise MemlabError(f"cannot tell which items contain {obj!r}: no {column!r} column and no CLIP descriptor")


def keyword_view(index, keyword: str, descriptor: str | None = None, threshold: float | None = None,
                 objects: Sequence[str] = (), label_column: str = "objects", tokenizer=None, top_words: int = 8,
                 representatives: int = 6, hide_keyword: bool = False, max_items: int | None = None,
                 table=None, words=None) -> dict:
    """Everything the keyword tab shows, as JSON-ready data. The images are clustered with CLIP image
    embeddings where the index has them (the paper's choice), else with the index's default descriptor;
    "nearly identical" is the descriptor's near-duplicate cut unless ``threshold`` is given. ``max_items``: a keyword
    in more captions is refused before any clustering (the clusters compare all pairs). ``table``: the item
    columns to read (caption and group; the index's whole item table unless given), ``words``: their posting
    lists (``memlab.words.CaptionWords``; else every caption is matched)."""
    clip_name = next((n for n in index.descriptor_names if index.descriptor_info(n).get("kind") == "clip"), None)
    name = descriptor or clip_name or index.default_descriptor
    why = ("given" if descriptor else "CLIP image embeddings, as the paper clusters" if clip_name
           else "the index's default descriptor (the index holds no CLIP embeddings, the paper's choice)")
    info = index.descriptor_info(name)
    if threshold is not None:
        thr, thr_source = float(threshold), "given"
    else:
        thr = float(info.get("duplicate_threshold") or info["threshold"]["value"])
        thr_source = "the descriptor's near-duplicate cut" if info.get("duplicate_threshold") else \
            "the descriptor's replication threshold (no near-duplicate cut recorded)"
    items = index.items if table is None else table
    captions = items["caption"].fillna("").astype(str).to_numpy()
    f = filter_keyword(captions, keyword, tokenizer, words, max_items)
    if max_items is not None and f["n_after"] > max_items:
        many = f"{f['n_before']:,} training captions (over {max_items:,} of them within 77 tokens)" if f["over"] \
            else f"{f['n_after']:,} training captions"
        raise MemlabError(f"{keyword!r} is in {many}; here at most {max_items:,} are "
                          f"clustered (all pairs are compared): try a rarer word, or prebuild the view "
                          f"(`memlab world create --keywords`)")
    rows = f["rows"]
    vecs = np.asarray(index.vectors(name))[rows]
    labels = cluster(vecs, thr)
    clusters = []
    for lab in sorted(set(labels.tolist()), key=lambda v: (v == -1, v)):
        members = rows[labels == lab]
        clusters.append({"rank": len(clusters) + 1, "size": int(len(members)), "miscellaneous": lab == -1,
                         "top_words": word_table([captions[i] for i in members], keyword, top_words,
                                                 hide_keyword),
                         "representatives": [int(r) for r in members[:representatives]],
                         "rows": [int(r) for r in members],
                         "distinct_images": int(items.iloc[members]["group"].nunique()) if len(members) else 0})
    real = [c for c in clusters if not c["miscellaneous"]]
    sizes = [c["size"] for c in real][:30]
    n = max(1, f["n_after"])
    clip = None
    labels = index.column(label_column) if objects else None  # (the one column read, once for every object)
    if objects and labels is None:  # no labels: CLIP zero-shot, if the index has CLIP
        clip_name = next((n for n in index.descriptor_names if index.descriptor_info(n)["kind"] == "clip"), None)
        if clip_name is not None:
            from .match import descriptor_for_index

            clip = descriptor_for_index(index, clip_name)
    view = {"keyword": keyword, "descriptor": {"name": name, "model": info["model"], "preset": info["preset"],
                                               "why": why},
            "omitted_rule": OMITTED_RULE,
            "cluster_threshold": thr, "cluster_threshold_source": thr_source, "n_before": f["n_before"], "n_after": f["n_after"],
            "n_too_long": f["n_too_long"], "clusters": clusters, "sizes_top30": sizes,
            "share_in_top": {f"top{k}": float(sum(sizes[:k]) / n) for k in (1, 3, 5)},
            "miscellaneous_size": next((c["size"] for c in clusters if c["miscellaneous"]), 0), "objects": {}}
    for obj in objects:
        has, source = object_labels(index, obj, label_column, clip, labels)
        named = keyword_mask(captions, obj, words)
        view["objects"][obj] = {**object_shares(has, named, items["group"].to_numpy(), rows), "source": source,
                                "named_in_captions": int(named[rows].sum()) if len(rows) else 0}
    return view


RELATED_RULE = ("a cluster is the related keyword's when at least half of the training captions of its images (every "
                "row of its members' near-duplicate groups, in the whole training set) name that keyword")


def related_share(view: dict, captions: Sequence[str], group: np.ndarray, related: str, words=None,
                  min_share: float = 0.5) -> dict:
    """How much of a keyword's images are another keyword's works (Memory Triggers, "almond" + "blossoming": the
    dominant clusters, Van Gogh's works, "account for around 52% of the entries with these two descriptive words";
    "sunflower" alone, 2%). A cluster is ``related``'s when at least ``min_share`` of the captions its images carry
    anywhere in the training set (``captions`` and near-duplicate ``group`` per training row) name it
    (``RELATED_RULE``), so an image captioned without the name here counts where its copies name it. The share is
    the keyword's items in those clusters over all its items (``n_after``, the paper's denominator); beside it, the
    share of the keyword's own captions that name ``related``. The miscellaneous images are no cluster of anyone's."""
    g = np.asarray(group)
    named = keyword_mask(captions, related, words)
    # every training row of the clusters' groups, read once (a LAION-scale table is not scanned per cluster): the
    # captions and those naming ``related``, per group
    member_groups = [np.unique(g[np.asarray(c["rows"], np.int64)]) for c in view["clusters"]]
    every = np.unique(np.concatenate(member_groups)) if member_groups else np.zeros(0, g.dtype)
    rows = np.nonzero(np.isin(g, every))[0]
    at = np.searchsorted(every, g[rows])
    per_group = np.bincount(at, minlength=len(every))
    naming_group = np.bincount(at, weights=named[rows], minlength=len(every))
    clusters = []
    for c, mg in zip(view["clusters"], member_groups):
        k = np.searchsorted(every, mg)
        n_caps, n_naming = int(per_group[k].sum()), int(round(naming_group[k].sum()))
        share = n_naming / n_caps if n_caps else 0.0
        clusters.append({"rank": 0 if c["miscellaneous"] else c["rank"], "size": c["size"], "captions": n_caps,
                         "naming": n_naming, "share": share,
                         "related": bool(not c["miscellaneous"] and n_caps and share >= min_share)})
    n = int(view["n_after"])
    items = sum(c["size"] for c in clusters if c["related"])
    own = np.concatenate([np.asarray(c["rows"], np.int64) for c in view["clusters"]] or [np.zeros(0, np.int64)])
    return {"keyword": related, "rule": RELATED_RULE if min_share == 0.5 else RELATED_RULE.replace(
                "at least half", f"at least {min_share:.0%}"),
            "clusters": clusters, "related_ranks": [c["rank"] for c in clusters if c["related"]],
            "items": int(items), "share": items / n if n else None,
            "captions_naming": int(named[own].sum()), "captions_share": float(named[own].mean()) if len(own) else None}


def slug(keyword: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", keyword.lower()).strip("-") or "keyword"


def save_view(folder: Path, view: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{slug(view['keyword'])}.json"
    tmp = p.with_suffix(".json.part")
    tmp.write_text(json.dumps(view, indent=1))
    tmp.replace(p)
    return p


def load_views(folder: Path, sealed: set[str] | None = None, n_items: int | None = None) -> dict[str, dict]:
    """The keyword views in ``folder``, each checked (``memlab.validate.check_view``). ``sealed``: the
    checksummed files of the world or index that holds the folder, relative to ``folder.parent``: a view
    outside them is refused (a view dropped into the folder by hand is not shown as the world's)."""
    from .validate import check_view

    out = {}
    for p in sorted(Path(folder).glob("*.json")):
        if sealed is not None and f"{Path(folder).name}/{p.name}" not in sealed:
            raise MemlabError(f"{p} is not among the checksummed files of {Path(folder).parent}; write views with "
                              f"`python -m index_builder clusters` (it records their checksums)")
        v = check_view(read_json(p), p, n_items)
        out[v["keyword"]] = v
    return out


def write_views(index, folder: Path, keywords: Sequence[str], descriptor: str | None = None,
                threshold: float | None = None, objects: Sequence[str] = (), label_column: str = "objects",
                hide_keyword: bool = False, log=print, related: str = "") -> list[Path]:
    """Compute and save each keyword's view (``keyword_view``) into ``folder``, one summary line each; with
    ``related``, whose works its clusters are (``related_share``, kept as the view's ``related``)."""
    import time

    from .words import for_index

    saved, words = [], for_index(index) if len(keywords) else None
    for kw in keywords:
        t0 = time.perf_counter()
        v = keyword_view(index, kw, descriptor, threshold, list(objects), label_column, hide_keyword=hide_keyword,
                         words=words)
        if related.strip():
            v["related"] = related_share(v, index.items["caption"].fillna("").astype(str).to_numpy(),
                                         index.items["group"].to_numpy(), related, words)
        p = save_view(folder, v)
        saved.append(p)
        real = [c for c in v["clusters"] if not c["miscellaneous"]]
        log(f"{kw!r}: {v['n_before']} captions, {v['n_after']} within 77 tokens, {len(real)} clusters "
            f"(largest {real[0]['size'] if real else 0}), miscellaneous {v['miscellaneous_size']}"
            + "".join(f"; {o} (not named in the caption): {d['keyword_share']:.1%} of the keyword's distinct images "
                      f"vs {d['overall_share']:.1%} of all distinct images"
                      for o, d in v["objects"].items() if d["keyword_share"] is not None)
            + (f"; in the clusters of {related!r}'s works: {v['related']['share']:.1%} of its items "
               f"({v['related']['items']} of {v['n_after']}; clusters {v['related']['related_ranks']}), "
               f"{v['related']['captions_share']:.1%} of its captions name it"
               if "related" in v and v["related"]["share"] is not None else "")
            + f" -> {p} ({time.perf_counter() - t0:.2f}s)")
    return saved


def ranked_cluster(view: dict, rank: int) -> dict:
    """A keyword view's cluster of rank ``rank`` (1: the largest), or with 0 its miscellaneous images, which are
    no cluster and never ranked (Memory Triggers omit "the largest cluster, comprised of irrelevant images")."""
    real = [c for c in view["clusters"] if not c["miscellaneous"]]
    misc = next((c for c in view["clusters"] if c["miscellaneous"]), None)
    if rank == 0 and misc is not None:
        return misc
    if not 1 <= rank <= len(real):
        raise MemlabError(f"no cluster of rank {rank} for {view['keyword']!r}: it has {len(real)} cluster"
                          f"{'' if len(real) == 1 else 's'}" + (f"; its {misc['size']} miscellaneous images (nearly "
                                                               f"identical to no other) are rank 0" if misc else ""))
    return real[rank - 1]
