"""Whose works (``memlab.keywords.related_share``) on a LAION-scale item table: every training row of the keyword's
clusters' near-duplicate groups read once, against a scan of the whole group column per cluster (the first draft,
kept below as the baseline). In the same run, on the same view: median seconds of each, the same counts.

The table: ``--n`` rows in near-duplicate groups of 1 to 20 rows; one caption in ten names the related keyword. The
view: ``--clusters`` clusters of 2 to 9 of those rows (the most a keyword view holds is ``KEYWORD_MAX_ITEMS``, 10,000
items); the related keyword's mask is computed once outside the timing (``keyword_mask``: the posting lists'
benchmark, ``bench_words``).

    python -m benchmarks.bench_related [--n 2000000] [--clusters 2000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import numpy as np

from memlab import keywords


def per_cluster_scan(view, group, named):
    """The baseline: each cluster's groups looked up in the whole group column."""
    out = []
    for c in view["clusters"]:
        rows = np.nonzero(np.isin(group, np.unique(group[c["rows"]])))[0]
        out.append((len(rows), int(named[rows].sum())))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--clusters", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 21, a.n)
    group = np.repeat(np.arange(len(sizes)), sizes)[:a.n]
    named = rng.random(a.n) < 0.1
    rows = rng.permutation(a.n)[:9 * a.clusters]
    cuts = np.cumsum(rng.integers(2, 10, a.clusters))
    view = {"n_after": int(cuts[-1]), "clusters": [
        {"rank": i + 1, "size": int(hi - lo), "miscellaneous": False, "rows": rows[lo:hi].tolist()}
        for i, (lo, hi) in enumerate(zip(np.r_[0, cuts[:-1]], cuts))]}
    print(f"[related] {a.n:,} rows in {group[-1] + 1:,} groups; a view of {a.clusters:,} clusters, "
          f"{view['n_after']:,} items", flush=True)
    times = {"read once (related_share)": [], "scan per cluster (baseline)": []}
    with mock.patch.object(keywords, "keyword_mask", lambda *a, **k: named):  # (the mask: outside the timing)
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            got = keywords.related_share(view, None, group, "van gogh")
            times["read once (related_share)"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            base = per_cluster_scan(view, group, named)
            times["scan per cluster (baseline)"].append(time.perf_counter() - t0)
    same = [(c["captions"], c["naming"]) for c in got["clusters"]] == base
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"  {k}: {v:.3f} s (median of {a.repeat})")
    print(f"  ratio: the scan takes {med['scan per cluster (baseline)'] / med['read once (related_share)']:.0f}x as "
          f"long; the same counts for every cluster: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
