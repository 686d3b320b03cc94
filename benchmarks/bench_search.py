"""FAISS flat inner-product search vs a plain numpy matmul top-k, on random unit vectors.

    python -m benchmarks.bench_search [--n 1000000] [--d 512] [--queries 16] [--k 10] [--repeat 3]

Prints both times (best of --repeat) and their ratio; checks that both return the same top-k.
"""
import argparse
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    import faiss

    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.n, a.d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((a.queries, a.d), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    t = time.perf_counter()
    index = faiss.IndexFlatIP(a.d)
    index.add(x)
    add_s = time.perf_counter() - t

    def numpy_topk():
        s = q @ x.T
        part = np.argpartition(-s, a.k, axis=1)[:, :a.k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1)
        return np.take_along_axis(part, order, 1)

    def best(fn):
        times, out = [], None
        for _ in range(a.repeat):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return min(times), out

    f_s, (_, f_ids) = best(lambda: index.search(q, a.k))
    n_s, n_ids = best(numpy_topk)
    # faiss switches to its BLAS kernel only from 20 queries on (distance_compute_blas_threshold)
    old = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 1
    b_s, (_, b_ids) = best(lambda: index.search(q, a.k))
    faiss.cvar.distance_compute_blas_threshold = old
    same = float((f_ids == n_ids).mean())
    print(f"n={a.n} d={a.d} queries={a.queries} k={a.k} threads={faiss.omp_get_max_threads()}")
    print(f"faiss IndexFlatIP add: {add_s:.3f}s")
    print(f"faiss flat search:  {f_s * 1000:.1f} ms")
    print(f"numpy matmul top-k: {n_s * 1000:.1f} ms")
    print(f"faiss flat search, BLAS kernel forced: {b_s * 1000:.1f} ms")
    print(f"ratio numpy/faiss:  {n_s / f_s:.2f}x   (same top-{a.k} ids: {same:.1%})")
    print(f"ratio numpy/faiss-BLAS: {n_s / b_s:.2f}x   (same top-{a.k} ids: {float((b_ids == n_ids).mean()):.1%})")


if __name__ == "__main__":
    main()
