"""Caption search at scale from the index's kept caption vectors (``memlab.captions``) against the exact answer.

An on-disk index is built from synthetic embeddings in clip-retrieval's layout with ``text_emb`` parts beside
``img_emb`` (768-d, as LAION's ViT-L/14 embeddings; 40 topics x 50 sub-topics; one caption in ten repeats an
earlier one, with its text vector), through ``index_builder --embeddings ... --descriptor clip``, which keeps the
caption vectors. Then, in the same run:

- the caption vectors' build alone (``captions.build`` again, from the parts), and its disk;
- ``CaptionVectors.search`` (the app's path: the FAISS index, re-scored exactly from float16) for queries that are
  text vectors near a caption (a caption's vector plus noise, cosine about 0.9), median of single queries after a
  warm-up pass, against exact search over the same vectors held as float32 in memory (one BLAS matrix-vector
  product), with recall@1 and recall@5 against that exact answer.

    python -m benchmarks.bench_captions [--n 200000] [--queries 300] [--work DIR]

Also prints the time ``TrainingIndex.load`` takes to check every file's checksum (the caption files among them).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def vectors(n: int, d: int, rng) -> np.ndarray:
    """Unit vectors around 2,000 sub-topics of 40 topics (a sub-topic's items at a cosine of about 0.8)."""
    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    topics = unit(rng.standard_normal((40, d)).astype(np.float32))
    subs = unit(topics[rng.integers(0, 40, 2000)] + 0.8 * unit(rng.standard_normal((2000, d)).astype(np.float32)))
    return unit(subs[rng.integers(0, 2000, n)] + 0.5 * unit(rng.standard_normal((n, d)).astype(np.float32)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--work", default=None)
    a = ap.parse_args(argv)
    from index_builder.build import main as build_main
    from memlab.captions import CaptionVectors, build
    from memlab.embeddings import write_embeddings
    from memlab.index import TrainingIndex

    rng = np.random.default_rng(0)
    d, part = 768, 50_000
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-captions-"))
    src = work / "emb"
    text = vectors(a.n, d, rng)
    repeat = rng.random(a.n) < 0.1
    first = np.where(repeat, rng.integers(0, np.maximum(np.arange(a.n), 1)), np.arange(a.n))
    while not (first[first] == first).all():  # a repeat of a repeat points at the first
        first = first[first]
    text = text[first]
    caps = pd.DataFrame({"caption": [f"caption {i}" for i in first]})
    if not (src / "text_emb").is_dir():
        write_embeddings(src, vectors(a.n, d, rng), caps, part_rows=part)
        (src / "text_emb").mkdir()
        for i, s in enumerate(range(0, a.n, part)):
            np.save(src / "text_emb" / f"text_emb_{i}.npy", text[s:s + part].astype(np.float16))
    if not (work / "idx" / "manifest.json").is_file():  # a second run with --work measures the same index again
        t = time.perf_counter()
        assert build_main(["--embeddings", str(src), "--descriptor", "clip", "--out", str(work / "idx")]) == 0
        print(f"index with caption vectors built: {time.perf_counter() - t:.1f} s in all")
    t = time.perf_counter()
    entry = build(work / "idx", text_emb=[src], log=lambda m: None)
    took = time.perf_counter() - t
    disk = sum((work / "idx" / f).stat().st_size for f in entry["files"].values())
    print(f"caption vectors alone: {entry['count']:,} distinct of {a.n:,} rows, {entry['factory']}, "
          f"{took:.1f} s, {disk / 2**20:.0f} MB on disk")
    t = time.perf_counter()
    kept = CaptionVectors.load(TrainingIndex.load(work / "idx"))
    print(f"index load, every checksum checked: {time.perf_counter() - t:.2f} s")
    exact = np.asarray(kept.vectors, np.float32)  # the baseline: the same vectors in memory
    picks = rng.choice(entry["count"], a.queries, replace=False)
    noise = rng.standard_normal((a.queries, d)).astype(np.float32)
    q = exact[picks] + 0.5 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for x in q[:20]:
        kept.search(x, 5)  # warm-up: the index's pages into memory
    ours, base, found, truth = [], [], [], []
    for x in q:  # the two in separate passes, so neither evicts the other's data from the caches
        t = time.perf_counter()
        found.append(kept.search(x, 5)[0])
        ours.append(time.perf_counter() - t)
    for x in q:
        t = time.perf_counter()
        s = exact @ x
        top = np.argpartition(-s, 5)[:5]
        truth.append(kept.rows[top[np.argsort(-s[top])]])
        base.append(time.perf_counter() - t)
    hit1 = sum(f[0] == t[0] for f, t in zip(found, truth))
    hit5 = sum(len(set(f) & set(t)) / 5 for f, t in zip(found, truth))
    mo, mb = statistics.median(ours), statistics.median(base)
    print(f"query (median of {a.queries}): kept vectors {mo * 1e3:.2f} ms, exact float32 in memory {mb * 1e3:.2f} ms "
          f"({mb / mo:.1f}x); recall@1 {hit1 / a.queries:.3f}, recall@5 {hit5 / a.queries:.3f} against the exact "
          f"answer; the exact baseline holds {exact.nbytes / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
