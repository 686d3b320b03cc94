"""The blocks of an on-disk index build (``memlab.ondisk``): each a function over files that writes its own
result atomically, run in this process or as Ray tasks (``run_blocks``), and the exact re-scoring they share."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .indexfiles import atomic_save, faiss_module, read_faiss, savez


def drop_pages(v) -> None:
    """Let go of the pages of a memory-mapped array already read (they stay in the page cache, leave this
    process's resident memory)."""
    import mmap

    mm = getattr(v, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)


RERANK_ROWS = 4096  # candidate rows read between two page drops (each maps the 64 KB the kernel faults around it)


def rerank_exact(v: np.ndarray, q: np.ndarray, cand: np.ndarray, self_rows: np.ndarray | None, k: int,
                 batch_rows: int = RERANK_ROWS):
    """Re-score approximate candidates exactly from the (float16) vectors; drop each query's own row;
    return the top-k (ids, scores) sorted by score (-1 / -inf where fewer). The vectors are read for
    ``batch_rows`` candidates at a time and their pages let go: a random row of a memory-mapped file maps the
    pages around it too, so 256 queries x 64 candidates once held ~0.9 GB of file pages for a moment
    (an on-disk build's nprobe tuning at 2M rows)."""
    n, kk = cand.shape
    batch = max(1, batch_rows // max(1, kk))
    ids, sc = np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32)
    for s in range(0, n, batch):
        c = cand[s:s + batch]
        x = np.asarray(v[np.where(c >= 0, c, 0).ravel()], np.float32).reshape(len(c), kk, -1)
        score = np.einsum("nkd,nd->nk", x, q[s:s + batch])
        bad = c < 0
        if self_rows is not None:
            bad |= c == np.asarray(self_rows[s:s + batch])[:, None]
        score[bad] = -np.inf
        drop_pages(v)
        order = np.argsort(-score, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(score, order, 1)
        ids[s:s + batch, :order.shape[1]] = np.where(np.isfinite(top), np.take_along_axis(c, order, 1), -1)
        sc[s:s + batch, :order.shape[1]] = top
    return ids, sc


def add_block(trained: str, vectors: str, s: int, e: int, with_ids: bool, out: str) -> str:
    """One add block: rows ``s:e`` of the float16 vectors added to a copy of the trained index (under their
    row numbers when ``with_ids``), written atomically to ``out``. A Ray task or a plain call."""
    faiss = faiss_module()
    v = np.load(vectors, mmap_mode="r")
    idx = faiss.read_index(trained)
    x = np.asarray(v[s:e], np.float32)
    if with_ids:  # each vector under its row number (the merge keeps the ids it is given)
        idx.add_with_ids(x, np.arange(s, e, dtype=np.int64))
    else:
        idx.add(x)
    atomic_save(Path(out), lambda t: faiss.write_index(idx, str(t)))
    return out


def knn_block(index, vectors: str, rows: np.ndarray, kk: int, k: int, offset: int, nprobe: int | None,
              out: str) -> str:
    """One neighbour block: ``rows``' approximate top-``kk`` from ``index`` (an open index, or its file, which a
    Ray task opens from disk), ids shifted by ``offset``, re-scored exactly to the top ``k``; written to ``out``."""
    if isinstance(index, str):
        index = read_faiss(Path(index))
    if nprobe is not None:
        faiss_module().ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    v = np.load(vectors, mmap_mode="r")
    q = np.asarray(v[rows], np.float32)
    _, cand = index.search(q, kk)
    cand = np.where(cand >= 0, cand + offset, -1)
    ids, sc = rerank_exact(v, q, cand, rows, k)
    atomic_save(Path(out), lambda t: savez(t, ids=ids, scores=sc))
    return out


def run_blocks(fn, todo: list, ray_address: str | None, bar, desc: str, log=print) -> None:
    """Run ``fn(*args)`` for each block of ``todo``: in this process, or as Ray tasks (``ray_address``:
    ``local`` starts a Ray on this machine, ``auto`` or an address joins a cluster; the work folder must be
    on storage every node reads). Each block writes its own file atomically, so a task whose worker dies is
    retried (Ray's ``max_retries``) and a killed build resumes at the blocks still missing."""
    if not todo:
        return
    if ray_address is None:
        for args in bar(todo, desc=desc):
            fn(*args)
        return
    import ray

    if not ray.is_initialized():
        ray.init(address=None if ray_address == "local" else ray_address, include_dashboard=False,
                 log_to_driver=False)
    task = ray.remote(num_cpus=1, max_retries=5, retry_exceptions=False)(fn)
    pending = [task.remote(*args) for args in todo]
    log(f"[ondisk] {desc}: {len(pending)} blocks as Ray tasks on {len(ray.nodes())} node(s)")
    for _ in bar(range(len(pending)), desc=f"{desc} (ray)"):
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)
