"""Training an IVF-PQ index as memlab does (``indexfiles.new_faiss_index``: no polysemous training) against
faiss's factory defaults (polysemous training on), on the same seeded sample of clustered unit vectors.

For each factory: both training times (best of --repeat), their ratio, and a check that both indices, filled
with the same vectors, return the same ids and distances for the same queries (polysemous training only
renumbers the PQ centroids).

    python -m benchmarks.bench_pq_training [--n 60000] [--repeat 2] [--factories 32:IVF256,PQ8 64:IVF1024,PQ16]
"""
import argparse
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=60_000, help="vectors added (the sample trained on: 40 a list)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--factories", nargs="+", default=["32:IVF256,PQ8", "64:IVF1024,PQ16"],
                    help="dimension:factory")
    a = ap.parse_args()
    import faiss

    from memlab.indexfiles import new_faiss_index
    from tests.helpers import clustered

    for spec in a.factories:
        d, factory = spec.split(":", 1)
        d = int(d)
        x = clustered(a.n, d, planted=0)
        probe = faiss.index_factory(d, factory)
        m = min(a.n, 40 * faiss.extract_index_ivf(probe).nlist)  # as memlab.ondisk samples
        sample = x[np.random.default_rng(1).choice(a.n, m, replace=False)]
        times, built = {"memlab": [], "faiss default": []}, {}
        for _ in range(a.repeat):
            for name, make in (("memlab", lambda: new_faiss_index(d, factory)),
                               ("faiss default", lambda: faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT))):
                idx = make()
                t = time.perf_counter()
                idx.train(sample)
                times[name].append(time.perf_counter() - t)
                built[name] = idx
        q = x[:500] + 0.05 * np.random.default_rng(2).standard_normal((500, d)).astype(np.float32) / np.sqrt(d)
        answers = []
        for idx in built.values():
            idx.add(x)
            faiss.extract_index_ivf(idx).nprobe = 8
            answers.append(idx.search(q, 10))
        same = np.array_equal(answers[0][1], answers[1][1]) and np.array_equal(answers[0][0], answers[1][0])
        ours, theirs = min(times["memlab"]), min(times["faiss default"])
        print(f"{factory} (d={d}, trained on {m} of {a.n}): memlab {ours:.2f}s, faiss default {theirs:.2f}s "
              f"-> {theirs / ours:.1f}x faster; the same top-10 ids and distances for 500 queries: {same}")


if __name__ == "__main__":
    main()
