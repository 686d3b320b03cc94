"""What a parquet table built to decode to gigabytes does to the process that reads it: pandas' ``read_parquet``
(what memlab called before) against memlab's ``tables.read_table`` (``childcheck.check_parquet``: the table decoded
first in a child under a memory cap, refused past 100 times the file plus 256 MiB, then read), on the same files in
the same run; and what the check costs on tables that are what they say.

Crafted (each a caption column repeating one string, compressed with zstd, no Arrow schema kept, as a listing or an
index's item table from elsewhere could be): dictionary-encoded 2,000,000 x 1,000 and 4,000,000 x 1,000 characters,
plainly encoded 1,000,000 x 2,000, and one value of 1,500 MiB. Honest: the built-in world's item table, the LAION
caption sample in ../shared/data (when present), and an index-like item table of --rows rows (ids, captions drawn
from that sample or made up, urls, group and duplicate counts) written by pandas.

Each read runs in a fresh process whose data is capped at --cap GiB (so a runaway read ends there, not the
machine); printed: the outcome (read, refused with memlab's error, out of memory at the cap, killed), the reading
process's peak resident memory (its VmHWM), its check child's (``ru_maxrss``, which counts the reading process's
memory when the child started, so at most), and the wall time, median of --repeat for the honest tables.

    python -m benchmarks.bench_parquet_files [--work DIR] [--rows 2000000] [--repeat 3] [--cap 12]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LAION = ROOT.parent / "shared" / "data" / "laion-captions" / "laion_sample_10000.parquet"

READ = r"""
import json, resource, sys, time
cap = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.getrlimit(resource.RLIMIT_DATA)[1]))
t = time.perf_counter()
out = {}
try:
    if sys.argv[2] == "pandas":
        import pandas as pd
        df = pd.read_parquet(sys.argv[1])
    else:
        from memlab.childcheck import check_parquet
        from memlab.tables import read_table
        check_parquet(sys.argv[1], "table")  # what read_table calls first, timed apart (then remembered)
        out["check_s"] = time.perf_counter() - t
        df = read_table(sys.argv[1], "table")
    out["outcome"], out["rows"] = "read", len(df)
except MemoryError:
    out["outcome"] = "out of memory"
except Exception as e:
    from memlab.errors import MemlabError
    out["outcome"] = "refused" if isinstance(e, MemlabError) else "other: " + type(e).__name__
    out["said"] = " ".join(str(e).split())[-160:]
out["s"] = time.perf_counter() - t
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")]  # this process's own peak (ru_maxrss
out["rss"] = int(hwm[0].split()[1]) * 1024 if hwm else float("nan")  # keeps the parent's across exec)
out["child_rss"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps(out))
"""


def repeated(path: Path, rows: int, length: int, dictionary: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    one = "x" * length
    col = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array([one])) if dictionary \
        else pa.array([one] * rows, pa.large_string() if rows * length >= 2**31 else pa.string())
    pq.write_table(pa.table({"caption": col}), path, compression="zstd", use_dictionary=dictionary,
                   store_schema=False)


def index_like(path: Path, rows: int) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    if LAION.is_file():
        pool = pd.read_parquet(LAION, columns=["TEXT"])["TEXT"].fillna("").astype(str).to_numpy()
    else:
        words = np.array("a photo of the red blue old new house dog cat painting poster print card".split())
        pool = np.array([" ".join(rng.choice(words, 8)) for _ in range(10000)])
    pd.DataFrame({"id": [f"laion-{i:09d}" for i in range(rows)], "caption": pool[rng.integers(0, len(pool), rows)],
                  "url": [f"https://images.example.org/{i:09d}.jpg" for i in range(rows)],
                  "group": rng.integers(0, rows, rows), "duplicates": rng.integers(0, 3, rows)}).to_parquet(path,
                                                                                                              index=False)


def read(path: Path, how: str, cap: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", READ, str(path), how, str(cap)], capture_output=True, text=True, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    return {"outcome": f"killed ({r.returncode})" if r.returncode < 0 else f"exit {r.returncode}", "s": float("nan"),
            "rss": float("nan"), "child_rss": float("nan")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows of the index-like item table")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cap", type=float, default=12, help="GiB of data each reading process may map")
    a = ap.parse_args(argv)
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_parquet_"))
    work.mkdir(parents=True, exist_ok=True)
    cap = int(a.cap * 2**30)
    crafted = [("dictionary, 2,000,000 x 1,000 characters", "2_000_000, 1000, True", 2e9),
               ("dictionary, 4,000,000 x 1,000 characters", "4_000_000, 1000, True", 4e9),
               ("plain, 1,000,000 x 2,000 characters", "1_000_000, 2000, False", 2e9),
               ("plain, one value of 1,500 MiB", f"1, {1500 << 20}, False", 1500 * 2**20)]
    honest = [("the built-in world's item table", ROOT / "assets" / "world" / "index" / "items.parquet"),
              ("LAION caption sample (../shared/data)", LAION),
              (f"index-like item table, {a.rows:,} rows", None)]
    print(f"cap per reading process {a.cap:g} GiB; work {work}")
    print("| table | file | decodes to | pandas.read_parquet | memlab read_table | memlab check child |")
    print("|---|---|---|---|---|---|")
    for i, (name, spec, decoded) in enumerate(crafted):
        p = work / f"crafted{i}.parquet"
        if not p.is_file():  # written in a child, so that this process stays small
            subprocess.run([sys.executable, "-c", f"from benchmarks.bench_parquet_files import repeated; from pathlib "
                            f"import Path; repeated(Path({str(p)!r}), {spec})"], check=True, cwd=ROOT)
        row = [read(p, how, cap) for how in ("pandas", "memlab")]
        print(f"| {name} | {p.stat().st_size:,} B | {decoded / 1e9:.2f} GB | " + " | ".join(
            f"{r['outcome']}, peak {r['rss'] / 2**20:,.0f} MiB, {r['s']:.2f} s" for r in row)
            + f" | peak {row[1]['child_rss'] / 2**20:,.0f} MiB |", flush=True)
        if row[1].get("said"):
            print(f"|   memlab said: ...{row[1]['said']} |||||")
    for name, p in honest:
        if p is None:
            p = work / "index_like.parquet"
            if not p.is_file():
                index_like(p, a.rows)
        if not p.is_file():
            print(f"| {name} | absent, skipped |||||")
            continue
        decoded = json.loads(subprocess.run([sys.executable, "-c", "import pyarrow.parquet as pq, sys; "
                                             "print(pq.read_table(sys.argv[1]).nbytes)", str(p)], check=True,
                                            capture_output=True, text=True).stdout)
        runs = {"pandas": [], "memlab": []}
        for _ in range(a.repeat):  # interleaved: this machine's speed drifts
            for how in runs:
                runs[how].append(read(p, how, cap))
        med = {how: float(np.median([r["s"] for r in rs])) for how, rs in runs.items()}
        check = float(np.median([r.get("check_s", np.nan) for r in runs["memlab"]]))
        print(f"| {name} | {p.stat().st_size:,} B | {decoded / 1e6:,.1f} MB ({decoded / p.stat().st_size:.1f}x) | "
              + " | ".join(f"{rs[0]['outcome']}, peak {max(r['rss'] for r in rs) / 2**20:,.0f} MiB, {med[how]:.2f} s"
                           for how, rs in runs.items())
              + f" (x{med['memlab'] / med['pandas']:.2f}; the check {check:.2f} s) | peak {max(r['child_rss'] for r in runs['memlab']) / 2**20:,.0f}"
              f" MiB |", flush=True)
    print(f"(done {time.strftime('%H:%M:%S')})")


if __name__ == "__main__":
    main()
