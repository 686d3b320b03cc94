"""Prompt variants of a keyword cluster (Memory Triggers, Case Study 1; docs/methods.md, "Prompt variants").

For the keywords of a cluster of nearly identical training images the paper writes five captions (``VARIANTS``),
generates each over many seeds, and reports the share of the generations similar to the cluster's training images
and each caption's CLIP text similarity to the closest training caption. On Stable Diffusion it finds that the
copying follows the keywords, not the caption ("even with 'starry' and 'night' separated"; without "van gogh"
the style stays). The paper had ChatGPT write the captions and set each cluster's image threshold by hand. memlab
fills them from fixed templates around the keyword and the cluster's most frequent caption
(``default_variants``; every one can be replaced), runs that caption too as the reference the variants are read
against, and counts a generation as the cluster's when its top-1 training match is one of the cluster's images
(its near-duplicate groups), and as a copy of it when that match is also ``replicated`` at the index's
calibrated threshold (``variant_figures``).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

from . import metrics
from .errors import MemlabError
from .keywords import STOP_WORDS, keyword_parts, keyword_pattern, ranked_cluster

VARIANTS = {  # kind -> the paper's words for it (and memlab's reference row first)
    "caption": "the cluster's own most frequent training caption, as is (memlab's reference, not one of the paper's)",
    "keywords": "a caption composed solely of the keywords",
    "short": "a short relevant caption that includes the keywords",
    "long": "a long relevant caption that includes the keywords",
    "irrelevant": "an irrelevant caption that includes the keywords",
    "without": "a long caption excluding the main keyword",
}
_CONNECTORS = re.compile(r"(?:[\s,;:.\-]|\b(?:by|of|in the style of|after|from|with|and)\b)+$", re.IGNORECASE)


def _cluster(view: dict, rank: int) -> dict:
    c = ranked_cluster(view, rank)
    if c["miscellaneous"]:
        raise MemlabError(f"rank 0 of {view['keyword']!r} is its miscellaneous images, nearly identical to no "
                          f"other: prompt variants are written for a cluster (rank 1 or more)")
    return c


def cluster_caption(view: dict, rank: int, caption_of) -> str:
    """The most frequent caption among a cluster's images (ties: the first met); ``caption_of(row)``: an item's
    caption (``Lab.item_caption``). The miscellaneous images (rank 0) are no cluster: refused."""
    c = _cluster(view, rank)
    counts = Counter(str(caption_of(r)) for r in c["rows"])
    return counts.most_common(1)[0][0]


def subject(caption: str, keyword: str) -> str:
    """The caption without the keyword and what joined it to the rest ("..., by Velmora" -> "..."), its case kept."""
    s = re.compile(keyword_pattern(keyword).pattern, re.IGNORECASE).sub(" ", caption)
    s = re.sub(r"\s+([,;.])", r"\1", re.sub(r"\s+", " ", s)).strip()
    s = _CONNECTORS.sub("", s)
    return re.sub(r"^(?:[\s,;:.\-]|\b(?:by|of|after|with|and)\b)+", "", s, flags=re.IGNORECASE).strip()


def content_words(text: str) -> list[str]:
    """The caption's words in order, stop words left out and each once."""
    out: list[str] = []
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        if w not in STOP_WORDS and w not in out and len(w) > 1:
            out.append(w)
    return out


def default_variants(keyword: str, caption: str) -> dict[str, str]:
    """The cluster's caption and the paper's five captions (``VARIANTS``) from fixed templates around ``keyword``
    and the cluster's caption: the paper's kinds, not its (ChatGPT's) wording. The keywords are the keyword and the caption's first content words
    (``subject``, ``content_words``); "short" is the caption's first phrase with the keyword; "long" the whole
    caption, described at length; "irrelevant" puts the keywords in an unrelated scene; "without" is "long" with
    the keyword's words taken out."""
    kw = " ".join(keyword_parts(keyword))  # "almond + blossoming": its words, as a caption would hold them
    words = content_words(subject(caption, keyword))[:6] or ["picture"]
    first = re.split(r",|;|\s(?:and|on|with|in)\s", caption, maxsplit=1)[0].strip()
    short = first if keyword_pattern(keyword).search(first.lower()) else f"{first} by {kw}"
    tail = "shown whole, in fine detail, with soft even light and a calm, balanced composition"
    long_ = f"a detailed picture of {caption.strip()}, {tail}"
    if not keyword_pattern(keyword).search(caption.lower()):
        long_ += f", {kw}"
    without = f"a detailed picture of {subject(caption, keyword) or 'it'}, {tail}"
    half = max(1, len(words) // 2)
    return {
        "caption": caption.strip(),
        "keywords": " ".join([kw] + words),
        "short": short,
        "long": long_,
        "irrelevant": f"a dog asleep on a sofa in a quiet room, {' '.join(words[:half])} on a cushion beside it, "
                      f"{' '.join(words[half:]) or words[0]} on the wall, {kw}",
        "without": without,
    }


def cluster_groups(view: dict, rank: int, groups_of) -> set[int]:
    """The near-duplicate groups of a cluster's images (``groups_of(rows)``: their groups,
    ``TrainingIndex.groups_of``)."""
    return {int(g) for g in groups_of(_cluster(view, rank)["rows"])}


def keyword_groups(view: dict, groups_of) -> set[int]:
    """The groups of every image whose caption holds the keyword (its clusters and its miscellaneous images)."""
    return {int(g) for g in groups_of([r for c in view["clusters"] for r in c["rows"]])}


def variant_figures(seed_records: Sequence[dict], groups: set[int], keyword: set[int] | None = None) -> dict:
    """One variant's figures from its seed records (``run``'s: ``matches`` best first, each with its ``group``, and
    ``replicated``): the seeds whose top-1 match is one of the cluster's images (``in_cluster``), those that are
    also replicated (``copies``: the paper's "generations similar to the original images", at the calibrated
    threshold instead of one set by hand), the seeds replicated from any training image, and, with ``keyword``
    (``keyword_groups``), those whose top-1 match is any image of the keyword (``in_keyword``: the copying may
    follow the word to another of its clusters); each a Wilson interval (``metrics.rate_interval``) with its k of
    n."""
    top = [int(r["matches"][0]["group"]) if r["matches"] else None for r in seed_records]
    inside = [g in groups for g in top]
    rep = [bool(r["replicated"]) for r in seed_records]
    out = {"in_cluster": metrics.rate_interval(inside),
           "copies": metrics.rate_interval([a and b for a, b in zip(inside, rep)]),
           "replicated": metrics.rate_interval(rep)}
    if keyword is not None:
        out["in_keyword"] = metrics.rate_interval([g in keyword for g in top])
    return out | {"seeds": [int(r["seed"]) for r in seed_records]}


def check_variants(prompts: dict) -> dict[str, str]:
    """Variants as given, in ``VARIANTS``' order: known kinds, each a non-empty prompt (empty ones are left out);
    refused otherwise."""
    unknown = [k for k in prompts if k not in VARIANTS]
    if unknown:
        raise MemlabError(f"unknown prompt variant {unknown[0]!r}: the kinds are {', '.join(VARIANTS)}")
    out = {k: str(prompts[k] or "").strip() for k in VARIANTS if k in prompts}
    out = {k: p for k, p in out.items() if p}
    if not out:
        raise MemlabError("no prompt variant to run: give at least one prompt")
    return out


def closest_caption(lab, prompt: str) -> dict | None:
    """The training caption nearest to ``prompt`` by text embedding (``Lab.closest_captions``: the paper's "cosine
    similarity between the given prompt and the closest text in the training dataset"), with what embedded them;
    None where the index's captions are not searched (``Lab.text_source`` says why)."""
    t = lab.closest_captions(prompt, 1)
    if not len(t):
        return None
    return {"caption": str(t["caption"].iloc[0]), "text_similarity": float(t["text similarity"].iloc[0]),
            "row": int(t["row"].iloc[0]), "embedding": lab.text_source()}


def stream_variants(lab, view: dict, rank: int, prompts: dict, seeds: Sequence[int], settings=None,
                    descriptor: str | None = None, stop=None, progress=None):
    """Each variant generated and matched on the same seeds, as the app streams a batch
    (``Lab.stream_generation``: a GPU host's calls, Stop), yielding the finished variants after each one: per
    variant ``kind``, ``definition``, ``prompt`` (as run: a prompt past the text encoder's length is cut, and
    ``warning`` says so), ``figures`` (``variant_figures``), ``closest_caption``, ``records`` and ``images``.
    ``progress(i, n, kind, seeds_done)`` is called before each variant and as its seeds are matched."""
    prompts = check_variants(prompts)
    groups = cluster_groups(view, rank, lab.index.groups_of)
    words = keyword_groups(view, lab.index.groups_of)
    done = []
    for i, (kind, prompt) in enumerate(prompts.items()):
        if stop is not None and stop.is_set():
            break
        if progress is not None:
            progress(i, len(prompts), kind, 0)
        state = None
        for state in lab.stream_generation(prompt, list(seeds), "none", settings, descriptor=descriptor, stop=stop,
                                           progress=None if progress is None else
                                           (lambda d, t, i=i, kind=kind: progress(i, len(prompts), kind, d))):
            pass
        if state is None or not state.records or not state.finished:
            break  # stopped in this variant: the finished variants stand
        done.append({"kind": kind, "definition": VARIANTS[kind], "prompt": state.prompt, "warning": state.warning,
                     "figures": variant_figures(state.records, groups, words),
                     "closest_caption": closest_caption(lab, state.prompt),
                     "records": state.records, "images": state.images})
        yield list(done)


def image_name(kind: str, seed: int) -> str:
    return f"{kind}-s{int(seed)}.png"


def study_record(view: dict, rank: int, results: Sequence[dict], threshold: dict, descriptor: str, seeds,
                 settings, image_dir: str = "images", asked: int | None = None) -> dict:
    """A study as one JSON object (``memlab variants``' output, the page's export): the keyword, the cluster, the
    descriptor (as run's records name it, with its index) and threshold a copy is counted at, the model (its
    commit or fingerprint and the software versions), the seeds and settings, what each count means, and per variant
    its prompt, figures, closest caption, seed records (verdict, score, top-1 match) and image names (under
    ``image_dir``); ``partial`` where fewer variants finished than the ``asked``."""
    c = ranked_cluster(view, rank)
    first = next((r["records"][0] for r in results if r["records"]), {})
    obj = {"keyword": view["keyword"], "rank": rank, "cluster_size": c["size"],
           "cluster_rows": [int(r) for r in c["rows"]], "descriptor_words": descriptor,
           "descriptor": first.get("descriptor"), "model": first.get("model"),
           "threshold": {"value": threshold["value"], "source": threshold.get("source")},
           "seeds": [int(x) for x in seeds], "settings": settings.to_dict(),
           "counts": {"in_cluster": "seeds whose top-1 training match is one of the cluster's images",
                      "copies": "those also replicated at the threshold (the verdict)",
                      "replicated": "seeds replicated from any training image",
                      "in_keyword": "seeds whose top-1 match's near-duplicate group holds an image whose caption "
                                    "holds the keyword"},
           "source": "Memory Triggers, Case Study 1: five captions per cluster; memlab's templates, not ChatGPT's",
           "variants": []}
    for r in results:
        v = {k: r.get(k) for k in ("kind", "definition", "prompt", "warning", "figures", "closest_caption")}
        v["seed_records"] = [{k: rec[k] for k in ("seed", "verdict", "score", "replicated")}
                             | {"top1": {k: rec["matches"][0][k] for k in ("row", "group", "caption", "score")}}
                             for rec in r["records"]]
        v["images"] = [f"{image_dir}/{image_name(r['kind'], rec['seed'])}" for rec in r["records"]]
        obj["variants"].append(v)
    if asked is not None and len(results) < asked:
        obj["partial"] = {"variants_done": len(results), "variants_asked": asked}
    return obj
