"""The Training set and Keyword tabs' caption lookups on a LAION-scale item table: posting lists
(``memlab.words``) against a scan of every caption per request (the code before them, kept below as the baseline).

The table: ``--n`` rows whose captions are LAION's (the 10,000-row sample in ``../shared/data``, else a synthetic
grammar) each with two words appended from a Zipf-distributed vocabulary of a million made-up words, so that the
vocabulary grows with the rows as LAION's does; one row in ten repeats an earlier row's caption in its group. In the
same run, for the same queries:

- caption search (``Lab.search_captions``: every word of the query, first 48 distinct group and caption pairs),
  for common, middling and rare words and word pairs: median seconds per query, both ways, and the same answers;
- a keyword's rows (``keywords.keyword_mask``), both ways, the same rows;
- an item's row by id (``Lab.item_row``) and the near-duplicate groups table (``Lab.duplicate_groups``);
- the posting lists' build (once, when the index is built), their memory (rows and vocabulary), and their files'
  write, size and load (what the app does at start); and their build from an item table on disk, as the app does at
  start for an index built before them.

    python -m benchmarks.bench_words [--n 2000000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from tests.helpers import SHARED_DATA

QUERIES = {"common": ["the", "of", "for"], "middling": ["painting", "dog", "wedding"],
           "rare": ["w123456", "gogh", "tavern"], "pairs": ["black white", "van gogh", "oil painting"]}


def table(n: int, rng) -> pd.DataFrame:
    f = SHARED_DATA / "laion-captions" / "laion_sample_10000.parquet"
    if f.is_file():
        base = pd.read_parquet(f)["TEXT"].fillna("").astype(str).to_numpy()
    else:
        print("(../shared/data absent: captions from a synthetic grammar)")
        nouns = "dog cat painting wedding dress shirt house car tree river portrait van gogh black white".split()
        base = np.array([f"the {a} of {b} and {c} for sale" for a, b, c in rng.choice(nouns, (10_000, 3))], object)
    extra = np.minimum(rng.zipf(1.2, (n, 2)), 1_000_000)
    caps = np.array([f"{base[i % len(base)]} w{a} w{b}" for i, (a, b) in zip(range(n), extra)], object)
    group = np.arange(n)
    rep = rng.random(n) < 0.1
    first = rng.integers(0, np.maximum(np.arange(n), 1))
    caps[rep] = caps[first[rep]]
    group[rep] = group[first[rep]]
    dups = pd.Series(group).map(pd.Series(group).value_counts()).to_numpy() - 1
    return pd.DataFrame({"id": [f"laion-{i:08d}" for i in range(n)], "caption": caps, "duplicates": dups,
                         "group": group})


# ------------------------------------------------------------------ the code before posting lists (the baseline)
def search_before(items: pd.DataFrame, query: str, limit: int = 48) -> pd.DataFrame:
    words = re.findall(r"\w+", query.lower())
    caps = items["caption"].fillna("").astype(str).str.lower()
    mask = np.ones(len(items), bool)
    for w in words:
        mask &= caps.str.contains(rf"\b{re.escape(w)}\b", regex=True).to_numpy()
    hits = items[mask].drop_duplicates(subset=["group", "caption"]).head(limit)
    return hits.assign(row=hits.index)[["row", "id", "caption", "duplicates", "group"]].reset_index(drop=True)


def keyword_mask_before(captions, keyword: str) -> np.ndarray:
    words = re.findall(r"\w+", keyword.lower())
    pat = re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?!\w)", re.IGNORECASE)
    return np.array([bool(pat.search(str(c))) for c in captions], bool)


def item_row_before(items: pd.DataFrame, item_id: str) -> int:
    return int(np.nonzero(items["id"].astype(str).to_numpy() == item_id)[0][0])


def groups_before(items: pd.DataFrame, limit: int = 50) -> pd.DataFrame:
    g = items[items["duplicates"] > 0].groupby("group").agg(id=("id", "first"), size=("id", "size"),
                                                            example=("caption", "first"))
    return g.sort_values("size", ascending=False).head(limit).reset_index()


def timed(fn, repeat: int):
    out, ts = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return out, statistics.median(ts)


def rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    from memlab.keywords import keyword_mask
    from memlab.service import Lab
    from memlab.words import CaptionWords, for_index

    t0 = time.perf_counter()
    items = table(a.n, np.random.default_rng(0))
    print(f"{a.n:,} rows, {items['caption'].nunique():,} distinct captions, made in {time.perf_counter() - t0:.1f} s; "
          f"peak memory so far {rss_mb():,.0f} MB")
    t0 = time.perf_counter()
    words = CaptionWords.build(items["caption"])
    build = time.perf_counter() - t0
    mem = (words.rows.nbytes + words.starts.nbytes) / 2**20
    vocab = sum(sys.getsizeof(k) for k in words.vocab) / 2**20 + sys.getsizeof(words.vocab) / 2**20
    print(f"posting lists built in {build:.1f} s (once, by the index build; in memory for an index built before "
          f"them): {len(words.vocab):,} words, {len(words.rows):,} postings; {mem:,.0f} MB of arrays + {vocab:,.0f} MB "
          f"of vocabulary; peak memory {rss_mb():,.0f} MB")
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        entry = words.save(Path(d))
        saved = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in Path(d).iterdir()) / 2**20
        t0 = time.perf_counter()
        loaded = CaptionWords.load(Path(d), entry, a.n)
        print(f"written beside the items in {saved:.2f} s ({disk:,.0f} MB on disk); loaded and checked by the app in "
              f"{time.perf_counter() - t0:.2f} s ({'the same lists' if np.array_equal(loaded.rows, words.rows) and loaded.vocab == words.vocab else 'LISTS DIFFER'})")
        del loaded
        items[["id", "caption"]].to_parquet(Path(d) / "items.parquet", index=False, row_group_size=100_000)
        older = SimpleNamespace(manifest={"item_count": a.n, "metadata": "items.parquet"}, path=Path(d))
        t0 = time.perf_counter()
        again = for_index(older)  # an index built before the lists: what the app does at its start
        print(f"an index without them (its item table read row group by row group): built at the app's start in "
              f"{time.perf_counter() - t0:.1f} s ({'the same lists' if np.array_equal(again.rows, words.rows) and again.vocab == words.vocab else 'LISTS DIFFER'})")
        del again
    lab = SimpleNamespace(_table=lambda: items, _words_needed=lambda: words, _ids=None, _groups=None)
    print(f"caption search, median of {a.repeat} per query (s): before | posting lists | ratio | hits")
    per_kind = {}
    for kind, qs in QUERIES.items():
        for q in qs:
            old, t_old = timed(lambda: search_before(items, q), a.repeat)
            new, t_new = timed(lambda: Lab.search_captions(lab, q), a.repeat)
            assert old.equals(new), q
            per_kind.setdefault(kind, []).append((t_old, t_new))
            print(f"  {kind:9s} {q!r:16s} {t_old:8.3f} | {t_new:8.4f} | {t_old / t_new:8.0f}x | {len(new)}")
    for kind, ts in per_kind.items():
        o, n = statistics.median(t for t, _ in ts), statistics.median(t for _, t in ts)
        print(f"  {kind}: median {o:.3f} s against {n:.4f} s ({o / n:.0f}x)")
    caps = items["caption"].to_numpy()
    print("keyword rows (s): before | posting lists | ratio | rows")
    for kw in ["painting", "van gogh", "wedding dress", "the"]:
        old, t_old = timed(lambda: keyword_mask_before(caps, kw), 1)
        new, t_new = timed(lambda: keyword_mask(caps, kw, words), a.repeat)
        same = "same rows" if (old == new).all() else f"{int((old != new).sum())} rows differ"
        print(f"  {kw!r:16s} {t_old:8.3f} | {t_new:8.4f} | {t_old / t_new:6.0f}x | {int(new.sum()):,} ({same})")
    ids = [f"laion-{r:08d}" for r in np.random.default_rng(2).integers(0, a.n, 20)]
    _, t_old = timed(lambda: [item_row_before(items, i) for i in ids[:5]], 1)
    Lab.item_row(lab, ids[0])  # builds the hash of the ids once
    _, t_new = timed(lambda: [Lab.item_row(lab, i) for i in ids], a.repeat)
    assert [Lab.item_row(lab, i) for i in ids] == [item_row_before(items, i) for i in ids]
    print(f"item row by id: {t_old / 5 * 1000:.1f} ms against {t_new / len(ids) * 1000:.3f} ms a lookup "
          f"({t_old / 5 / (t_new / len(ids)):.0f}x)")
    old, t_old = timed(lambda: groups_before(items), a.repeat)
    Lab.duplicate_groups(lab)
    new, t_new = timed(lambda: Lab.duplicate_groups(lab), a.repeat)
    print(f"near-duplicate groups: {t_old:.3f} s against {t_new * 1000:.3f} ms a request (computed once: "
          f"{old['size'].tolist() == new['size'].tolist() and 'the same sizes' or 'sizes differ'})")


if __name__ == "__main__":
    main()
