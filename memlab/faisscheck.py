"""FAISS files memlab did not just write, read safely. ``faiss.read_index`` trusts the sizes a file declares:
faiss's maintainers say index files are not meant to come from untrusted sources (facebookresearch/faiss#5400),
and here 72 of 372 crafted variants of an index whose lists are on disk (as memlab's large builds write them)
killed the process that read and searched them (SIGSEGV), and others asked for more than a 4 GiB cap before any
check ran (``benchmarks/bench_faiss_files.py``).
An index folder or an autofaiss ``.index`` can come from anywhere, so memlab reads such a file in three steps:

1. its header is checked here against what the manifest or the embeddings say (dimension and vector count);
2. it is read once in a child process (``python -m memlab.faisscheck``) under a memory cap, which also checks
   its inverted lists (their sizes add up to the vector count, every id is a row and each row is listed once)
   and searches every list once, so a crash or a runaway allocation ends the child, not the app;
3. only then is it read here. A file that passed is remembered by path, size and time (its ``.ivfdata``'s too)
   for the process's life.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from .childcheck import run_capped, set_cap
from .errors import IndexMismatchError
from .tables import one_line

__all__ = ["open_faiss", "read_header"]

CAP_BASE = 4 << 30  # the child's memory cap: 4 GiB plus twice the file (a full read holds the file once)
_checked: set = set()


def read_header(path: Path) -> tuple[int, int]:
    """An index file's dimension and vector count, as faiss's ``write_index_header`` writes them after the
    index's four-character type code (int32 d, int64 ntotal), read without faiss."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 16 or not all(32 < b < 127 for b in head[:4]):
        raise IndexMismatchError(f"{path} is not a FAISS index file (no index header)")
    return struct.unpack("<iq", head[4:16])


def _flag(path: Path, mmap: bool) -> int:
    import faiss

    if not mmap:
        return 0
    return faiss.IO_FLAG_ONDISK_SAME_DIR if path.with_suffix(".ivfdata").is_file() else faiss.IO_FLAG_MMAP


def _cap(path: Path) -> int:
    return CAP_BASE + 2 * path.stat().st_size


def _probe(path: Path, flag: int, d: int, ntotal: int) -> None:
    """Read and search ``path`` in a child process; a refusal, a crash or the memory cap is one error."""
    lists = path.with_suffix(".ivfdata")  # lists on disk are read by the full search too
    timeout = 120 + (path.stat().st_size + (lists.stat().st_size if lists.is_file() else 0)) / 20e6
    try:
        said, failed = run_capped("memlab.faisscheck", [path, flag, d, ntotal, _cap(path)], timeout, "FAISS")
    except subprocess.TimeoutExpired:
        raise IndexMismatchError(f"{path}: FAISS did not finish reading it in {timeout:.0f} s") from None
    if failed or not said.get("ok"):
        raise IndexMismatchError(f"{path} is not a FAISS index memlab can serve: {said.get('error') or failed}")


def open_faiss(path: str | Path, d: int, ntotal: int, mmap: bool = True):
    """The FAISS index in ``path`` (``mmap``: pages read on demand, lists on disk when an ``.ivfdata`` is
    beside it), after checking it holds ``ntotal`` vectors of ``d`` dimensions ranked by inner product and
    that reading and searching it ends well in a child process."""
    from .indexfiles import faiss_module

    path = Path(path)
    hd, hn = read_header(path)
    if (hd, hn) != (int(d), int(ntotal)):
        raise IndexMismatchError(f"{path} says it holds {hn} vectors of {hd} dimensions; expected {ntotal} of {d}")
    flag = _flag(path, mmap)
    key = (str(path.resolve()), flag) + tuple((st.st_size, st.st_mtime_ns) for st in (
        p.stat() for p in (path, path.with_suffix(".ivfdata")) if p.is_file()))  # the lists on disk too
    if key not in _checked:
        _probe(path, flag, int(d), int(ntotal))
        _checked.add(key)
    try:
        return faiss_module().read_index(str(path), flag)
    except RuntimeError as e:
        raise IndexMismatchError(f"{path} is not a FAISS index FAISS can read ({_said(e)})") from None


def _said(e: Exception) -> str:
    """faiss's message on one line without its source location: what failed."""
    return one_line(e, 1000).split("Error: ", 1)[-1][:200]


def _check(path: str, flag: int, d: int, ntotal: int) -> str | None:
    """The child's work: None when the file reads, lists each row once and answers a search of every list."""
    import faiss
    import numpy as np

    faiss.set_deserialization_loop_limit(max(1, os.path.getsize(path)))  # a loop per byte at most
    try:
        idx = faiss.read_index(path, flag)
    except RuntimeError as e:
        return f"FAISS refused it ({_said(e)})"
    except MemoryError:
        return f"reading it needs more than {_cap(Path(path)) / 2**30:.1f} GiB"
    if (idx.d, idx.ntotal) != (d, ntotal):
        return f"it holds {idx.ntotal} vectors of {idx.d} dimensions; expected {ntotal} of {d}"
    if idx.metric_type != faiss.METRIC_INNER_PRODUCT:
        return "it ranks by L2 distance; memlab's scores are inner products of normalized vectors"
    try:
        ivf = faiss.extract_index_ivf(idx)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        if ivf.quantizer.metric_type != faiss.METRIC_INNER_PRODUCT:  # the lists a query visits chosen by another rule
            return "its coarse quantizer ranks by L2 distance, the index by inner product"
        inv = ivf.invlists
        if inv is None or inv.nlist != ivf.nlist:
            return "its inverted lists do not match its quantizer"
        listed = np.zeros(ntotal, np.int64)
        for li in range(ivf.nlist):
            size = inv.list_size(li)
            if size == 0:
                continue
            if size < 0 or size > ntotal:
                return f"list {li} says it holds {size} vectors of {ntotal}"
            ptr = inv.get_ids(li)
            ids = faiss.rev_swig_ptr(ptr, size).copy()
            inv.release_ids(li, ptr)
            if ids.min() < 0 or ids.max() >= ntotal:
                return f"list {li} names a row outside 0 to {ntotal - 1}"
            np.add.at(listed, ids, 1)
        if not (listed == 1).all():
            return f"its lists name {int((listed == 0).sum())} rows never and {int((listed > 1).sum())} more than once"
        ivf.nprobe = ivf.nlist
    q = np.random.default_rng(0).standard_normal((2, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, rows = idx.search(q, min(10, max(ntotal, 1)))
    if ((rows < -1) | (rows >= ntotal)).any():
        return "a search returned a row outside the index"
    return None


if __name__ == "__main__":
    p, f, dd, nn, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    set_cap(limit)  # before faiss is imported
    err = _check(p, f, dd, nn)
    print(json.dumps({"ok": err is None, **({"error": err} if err else {})}))
    sys.exit(0 if err is None else 1)
