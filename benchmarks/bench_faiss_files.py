"""What a crafted FAISS file does to the process that reads it: faiss's own ``read_index`` against memlab's
``faisscheck.open_faiss`` (the header checked, a trial read and search in a child under a memory cap, the lists
checked, then the read), on the same files in the same run.

Five small inner-product indices over 2,000 normalized 32-d vectors (Flat, IVF16 Flat, PQ8 and SQ8 codes, and
SQ8 with its lists on disk as memlab's large builds write them). Each is written, then rewritten once per
mutation: a field of the index's header, of its quantizer's header and of its inverted lists' header and list
sizes set to a hostile value (2^31, 10^7, 2^40, 0, -1 or 3, as an int64; the index header's fields also as an
int32). Each mutated file is read in a fresh process (so a crash ends that process, not this one) whose memory is
capped as ``faisscheck`` caps its child (4 GiB plus twice the file), then searched with every list probed.
Outcomes: read (and whether its top-1 answers for 50 stored vectors are the original's), refused (faiss's
RuntimeError or memlab's error, which a caller catches), out of memory at the cap, the process killed by a signal,
or another exception (``other``, each named below its row). Then, the cost of the checks:
an IVF-SQ8 index over --cost-n vectors of --cost-d (default 200,000 x 64; about 4 sqrt(n) lists) opened, and one
query answered, both ways, median of --repeat.

``--cold`` drops the page cache before each timed open (Linux, as root), so both read the file from the disk.

    python -m benchmarks.bench_faiss_files [--work DIR] [--per-kind N] [--repeat 3] [--cost-n N --cost-d D] [--cold]
"""
import argparse
import collections
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N, D = 2000, 32
KINDS = ["Flat", "IVF16,Flat", "IVF16,PQ8", "IVF16,SQ8", "IVF16,SQ8 on disk"]
VALUES = [2**31, 10**7, 2**40, 0, -1, 3]


def vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_kind(kind: str, folder: Path, x: np.ndarray) -> Path:
    import faiss

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "index.faiss"
    factory = kind.replace(" on disk", "")
    idx = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    idx.train(x)
    if not kind.endswith("on disk"):
        idx.add(x)
        faiss.write_index(idx, str(path))
        return path
    from faiss.contrib.ondisk import merge_ondisk

    faiss.write_index(idx, str(folder / "trained.faiss"))
    blocks = []
    for b, s in enumerate(range(0, len(x), 1000)):
        part = faiss.read_index(str(folder / "trained.faiss"))
        part.add_with_ids(x[s:s + 1000], np.arange(s, s + 1000))
        faiss.write_index(part, str(folder / f"block{b}.faiss"))
        blocks.append(str(folder / f"block{b}.faiss"))
    merged = faiss.read_index(str(folder / "trained.faiss"))
    merge_ondisk(merged, blocks, str(folder / "index.ivfdata"))
    faiss.write_index(merged, str(path))
    return path


def mutations(data: bytes, per_kind: int | None, seed: int) -> list[tuple[int, int, int]]:
    """(offset, width, value): the index header's d and ntotal and what follows, the quantizer's header, the
    inverted lists' header and the first list sizes."""
    offs = [(o, w) for o in range(4, 64, 4) for w in (4, 8)]
    inner = data.find(b"IxF", 4)
    if inner > 0:
        offs += [(o, 8) for o in range(inner + 4, inner + 36, 4)]
    lists = max(data.find(b"ilar"), data.find(b"ilod"))
    if lists > 0:
        offs += [(o, 8) for o in range(lists + 4, lists + 4 + 8 * 24, 8)]
    out = [(o, w, v) for o, w in offs for v in VALUES if o + w <= len(data)]
    if per_kind and per_kind < len(out):
        out = random.Random(seed).sample(out, per_kind)
    return out


TRIAL = r"""
import json, os, resource, sys
import numpy as np
mode, path, d, n, expect = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cap = (4 << 30) + 2 * os.path.getsize(path)
resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
import faiss
x = np.load(sys.argv[6])
def done(outcome, idx=None, why=None):
    same = None
    if idx is not None:
        _, rows = idx.search(x[:50], 1)
        same = rows[:, 0].tolist() == json.loads(expect)
    print(json.dumps({"outcome": outcome, "same": same, "why": why}))
    sys.exit(0)
try:
    if mode == "faiss":
        flag = faiss.IO_FLAG_ONDISK_SAME_DIR if os.path.exists(path[:-6] + ".ivfdata") else faiss.IO_FLAG_MMAP
        idx = faiss.read_index(path, flag)
    else:
        from memlab.errors import MemlabError
        from memlab.faisscheck import open_faiss
        try:
            idx = open_faiss(path, d, n)
        except MemlabError as e:
            done("refused", why=str(e).replace(path, "the file"))
    try:
        ivf = faiss.extract_index_ivf(idx)
        ivf.nprobe = ivf.nlist
    except RuntimeError:
        pass
    idx.search(x[:2], 10)
    done("read", idx)
except RuntimeError:
    done("refused")
except MemoryError:
    done("out of memory")
except Exception as e:  # what a caller that catches faiss's RuntimeError would not catch
    done("uncaught " + type(e).__name__)
"""


def trial(mode: str, path: Path, expect: list, xfile: Path) -> tuple[str, bool | None, str | None]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    try:
        r = subprocess.run([sys.executable, "-c", TRIAL, mode, str(path), str(D), str(N), json.dumps(expect),
                            str(xfile)], capture_output=True, text=True, env=env, timeout=300)
    except subprocess.TimeoutExpired:
        return "timed out", None, None
    if r.returncode < 0:
        return f"killed by {signal.Signals(-r.returncode).name}", None, None
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = " ".join(r.stderr.split())[-80:]
        return ("out of memory" if "MemoryError" in r.stderr or "bad_alloc" in r.stderr
                else f"died (exit {r.returncode}: {tail})"), None, None
    got = json.loads(lines[-1])
    return got["outcome"], got["same"], got["why"]


def sweep(work: Path, per_kind: int | None, kinds: list | None = None) -> None:
    import faiss

    x = vectors(N, D)
    xfile = work / "x.npy"
    np.save(xfile, x)
    print(f"{N:,} vectors of {D} dimensions; each mutated file read in a fresh process capped at 4 GiB + 2x the "
          f"file, with every list searched")
    print(f"{'index':<20} {'files':>5}  {'reader':<7} {'read, same':>10} {'read, other':>11} {'refused':>7} "
          f"{'out of memory':>13} {'killed':>6} {'other':>5}")
    for k, kind in enumerate(KINDS):
        if kinds and kind not in kinds:
            continue
        folder = work / f"kind{k}"
        path = write_kind(kind, folder, x)
        base = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR if kind.endswith("disk") else 0)
        expect = base.search(x[:50], 1)[1][:, 0].tolist()
        del base
        data = path.read_bytes()
        muts = mutations(data, per_kind, seed=k)
        counts = {"faiss": collections.Counter(), "memlab": collections.Counter()}
        examples = collections.defaultdict(list)
        stricter = collections.Counter()  # why memlab refused a file faiss reads with the same answers

        def one(i_m):
            i, (o, w, v) = i_m
            f = folder / f"m{i:04d}.faiss"
            b = bytearray(data)
            b[o:o + w] = struct.pack("<i", max(min(v, 2**31 - 1), -2**31)) if w == 4 else struct.pack("<q", v)
            f.write_bytes(bytes(b))
            if kind.endswith("disk"):
                os.symlink(folder / "index.ivfdata", f.with_suffix(".ivfdata"))
            got = {m: trial(m, f, expect, xfile) for m in ("faiss", "memlab")}
            f.unlink()
            f.with_suffix(".ivfdata").unlink(missing_ok=True)
            return (o, w, v), got

        with ThreadPoolExecutor(2) as pool:
            for (o, w, v), got in pool.map(one, enumerate(muts)):
                if got["faiss"][:2] == ("read", True) and got["memlab"][0] == "refused":
                    stricter[re.sub(r"(?<![A-Za-z])-?\d+", "N", got["memlab"][2] or "")] += 1
                for m, (outcome, same, _) in got.items():
                    key = ("killed" if outcome.startswith("killed") else outcome if outcome != "read"
                           else "read, same" if same else "read, other")
                    counts[m][key] += 1
                    if outcome not in ("read", "refused") or (m == "memlab" and outcome == "read" and not same):
                        examples[m].append(f"{key if outcome == 'read' else outcome} at offset {o} int{w * 8}={v}")
        for m in ("faiss", "memlab"):
            c = counts[m]
            known = ("read, same", "read, other", "refused", "out of memory", "killed")
            other = sum(v for kk, v in c.items() if kk not in known)
            print(f"{kind if m == 'faiss' else '':<20} {len(muts) if m == 'faiss' else '':>5}  {m:<7} "
                  f"{c['read, same']:>10} {c['read, other']:>11} {c['refused']:>7} {c['out of memory']:>13} "
                  f"{c['killed']:>6} {other:>5}")
        for m, ex in examples.items():
            print(f"    {m}: {'; '.join(ex[:20])}{f' (and {len(ex) - 20} more)' if len(ex) > 20 else ''}")
        if stricter:
            print(f"    memlab refused {sum(stricter.values())} file(s) faiss read with the same answers: "
                  + "; ".join(f"{n} x {why}" for why, n in stricter.most_common()))


def drop_page_cache() -> None:
    """Linux, as root: the page cache emptied, so the next read of a file comes from the disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def cost(work: Path, repeat: int, n: int, d: int, cold: bool = False) -> None:
    import faiss

    from memlab import faisscheck

    lists = 1 << max(4, round(np.log2(4 * np.sqrt(n))))  # about 4 sqrt(n), as memlab's builds choose
    factory = f"IVF{lists},SQ8"
    path = work / f"big{n}x{d}.faiss"
    q = vectors(1, d, seed=2)
    if not path.is_file():
        idx = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        idx.train(vectors(min(n, 40 * lists), d, seed=1))
        for s in range(0, n, 100_000):
            idx.add(vectors(min(100_000, n - s), d, seed=10 + s))
        faiss.write_index(idx, str(path))
        del idx
    times = {"faiss.read_index": [], "faisscheck.open_faiss": []}
    for _ in range(repeat):
        for name in times:
            faisscheck._checked.clear()
            if cold:
                drop_page_cache()
            t = time.perf_counter()
            ix = (faiss.read_index(str(path), faiss.IO_FLAG_MMAP) if name == "faiss.read_index"
                  else faisscheck.open_faiss(path, d, n))
            ix.search(q, 10)
            times[name].append(time.perf_counter() - t)
    base = float(np.median(times["faiss.read_index"]))
    print(f"\nopening {factory} over {n:,} x {d} ({path.stat().st_size / 1e6:.1f} MB, memory-mapped) and one "
          f"query, median of {repeat}, " + ("the page cache dropped before each (from the disk):" if cold else
                                             "the file in the page cache:"))
    for name, t in times.items():
        print(f"  {name:<22} {np.median(t) * 1e3:8.1f} ms")
    print(f"  the checks add {(np.median(times['faisscheck.open_faiss']) - base) * 1e3:.0f} ms, once per file "
          f"and process")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--per-kind", type=int, default=None, help="mutations a kind, sampled (default: all)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cost-n", type=int, default=200_000, help="vectors in the index the cost is timed on (0: not timed)")
    ap.add_argument("--cost-d", type=int, default=64)
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each timed open (Linux, root)")
    ap.add_argument("--kinds", default=None, help=f"semicolon-separated, among: {'; '.join(KINDS)} (default: all)")
    a = ap.parse_args(argv)
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_faiss_"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.time()
    if not a.skip_sweep:
        sweep(work, a.per_kind, [k.strip() for k in a.kinds.split(";")] if a.kinds else None)
    if a.cost_n:
        cost(work, a.repeat, a.cost_n, a.cost_d, a.cold)
    print(f"\n{time.time() - t:.0f} s in all")


if __name__ == "__main__":
    main()
