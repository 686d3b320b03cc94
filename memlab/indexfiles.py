"""The files an index is made of, and the helpers every builder writes them with: the format's names,
checksums, atomic folders and files, FAISS reading and writing. Imported by ``index`` (the exact build and
loading), ``ondisk`` (the build from embeddings), ``descriptors`` (the trust list's checksums) and ``world``;
it imports none of them.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from .errors import MemlabError, one_line

FORMAT = "memlab-index"
VERSION = 1
MANIFEST = "manifest.json"
ITEMS = "items.parquet"


def sha256(path: Path) -> str:
    """A file's sha256, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_array(path: str | Path, error: type[MemlabError] = MemlabError, mmap: bool = False) -> np.ndarray:
    """An index's .npy file (which may come from elsewhere), or one ``error`` naming it: a damaged or foreign file,
    objects (never unpickled), or a header declaring more than the file holds (numpy's ``ValueError``)."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as e:  # (numpy's words for objects advise loading them unsafely: not repeated)
        why = "it holds Python objects, which memlab never unpickles" if "pickle" in str(e) else one_line(e)
        raise error(f"cannot read {path} as a .npy array: {why}") from None


def recover_swap(out: Path) -> None:
    """Finish a replacement (``atomic_dir``) killed between its two renames: ``out`` is missing, the old
    version was moved aside (``.out.old-*``), so the new one beside it (``.out.tmp-*``) is complete."""
    out = Path(out)
    olds = list(out.parent.glob(f".{out.name}.old-*"))
    if out.exists() or not olds:
        return
    new = sorted(out.parent.glob(f".{out.name}.tmp-*"), key=lambda p: p.stat().st_mtime)
    if new:
        new[-1].rename(out)
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out: Path):
    """Yield a hidden temporary folder beside ``out``; on success it replaces ``out`` by rename."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_swap(out)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by a build that was killed: start over
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def atomic_save(path: Path, write) -> None:
    """``write(tmp)`` to ``path.part``, then rename it to ``path`` (a killed write leaves no half file; one that
    fails leaves no part file either)."""
    tmp = path.with_name(path.name + ".part")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def savez(path: Path, **arrays) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def npsave(path: Path, a: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, a)


def json_default(o):
    """numpy scalars and arrays in a manifest, as plain JSON numbers and lists."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def faiss_module():
    """FAISS, set up as memlab searches with it."""
    import faiss

    # faiss uses its BLAS kernel only from 20 queries on; below that its scalar loop was 3.9x
    # slower on 1M x 512 (benchmarks/bench_search.py), so use BLAS always.
    faiss.cvar.distance_compute_blas_threshold = 1
    return faiss


def new_faiss_index(d: int, factory: str):
    """An empty inner-product index from faiss's factory. An IVF-PQ index skips faiss's polysemous training:
    it only renumbers the PQ centroids so that Hamming distances between codes can pre-filter a search
    (``polysemous_ht``), which memlab never sets, and is most of IVF-PQ's training time; the centroids (in
    another order), distances and answers are the same."""
    faiss = faiss_module()
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise MemlabError(f"bad FAISS index factory string {factory!r}: {e}") from e
    if not index.is_trained:
        try:
            faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
        except (RuntimeError, AttributeError):  # not IVF, or IVF without PQ codes
            pass
    return index


def make_faiss_index(vectors: np.ndarray, factory: str = "Flat"):
    """Inner-product FAISS index from a factory string ("Flat", "IVF64,Flat", "IVF256,SQ8", ...)."""
    index = new_faiss_index(vectors.shape[1], factory)
    if not index.is_trained:
        index.train(np.ascontiguousarray(vectors, np.float32))
    index.add(np.ascontiguousarray(vectors, np.float32))
    return index


def read_faiss(path: Path):
    """A FAISS index for serving without loading it: inverted lists on disk (``.ivfdata`` beside it, from
    ``merge_ondisk``; found in the index's own folder whatever name it was written with) or the whole
    file memory-mapped."""
    faiss = faiss_module()
    path = Path(path)
    if path.with_suffix(".ivfdata").is_file():
        return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP)


def seal_files(index_dir: Path, rels) -> None:
    """Add the checksums of files written into an index folder after its build (its keyword views) to its
    manifest (rewritten atomically), so a load checks them like the rest."""
    import json

    index_dir = Path(index_dir)
    mpath = index_dir / MANIFEST
    m = json.loads(mpath.read_text())
    m.setdefault("files", {}).update({str(r): sha256(index_dir / r) for r in rels})
    atomic_save(mpath, lambda t: t.write_text(json.dumps(m, indent=2)))
