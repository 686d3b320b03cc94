"""Training sets at scale (issue 13): an on-disk index from precomputed embeddings, on a synthetic set
shaped like real embeddings (clustered: 2,000 topics x 20 sub-topics at cosine 0.8 to their topic, each
point at cosine 0.85 to its sub-topic; not uniform noise) with planted near-copies, in the clip-retrieval layout.

Prints, each phase in its own process (peak resident memory is that process's):
- the build under a memory budget (vectors, FAISS index, k-nearest-neighbour background and groups):
  seconds per stage and peak RSS;
- serving: recall@1 of fresh copies of the planted originals against the exact answer, median
  latency of a single query (approximate + exact re-rank) against exact search over the same vectors
  measured in the same run, and RSS after loading and querying;
- on a 50,000-item set: the kNN background and groups against today's exact n x n computation.

    python -m benchmarks.bench_scale --n 2000000 --d 512 --planted 1000 --max-memory 2GB
    python -m benchmarks.bench_scale --n 200000 --agree-n 20000        # a quick look
    python -m benchmarks.bench_scale ... --phase add --add-parts 2       # adding parts to an index of the others
    python -m benchmarks.bench_scale --sizes 250000,1000000,2000000     # the cost model: fits and extrapolation
Resumable: the synthetic set and the build's stages are kept in --work.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]



def name_for(d: int) -> str:
    """The descriptor the synthetic embeddings stand in for: CLIP ViT-B/32 (512-d, LAION-400M's) or ViT-L/14
    (768-d, LAION-2B's); another width is named by no registered descriptor (the build checks the width)."""
    return {512: "clip-b32", 768: "clip"}.get(d, f"emb{d}")

def synthetic(n: int, d: int, planted: int, seed: int = 0, part: int = 200_000):
    """Yield (start, float32 rows) of a clustered set; the last ``planted`` rows are near-copies (cosine
    about 0.98) of ``planted`` earlier rows, returned by ``planted_sources``."""
    rng = np.random.default_rng(seed)
    topics = _unit(rng.standard_normal((2000, d)).astype(np.float32))
    subs = _unit(np.repeat(topics, 20, 0) + 0.75 * rng.standard_normal((40000, d)).astype(np.float32) / np.sqrt(d))
    for s in range(0, n - planted, part):
        m = min(part, n - planted - s)
        r = np.random.default_rng(seed + 1 + s // part)
        lab = r.integers(0, len(subs), m)
        yield s, _unit(subs[lab] + 0.62 * r.standard_normal((m, d)).astype(np.float32) / np.sqrt(d))
    yield n - planted, None  # the copies are written by the caller from the sources


def planted_sources(n: int, planted: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed + 99).choice(n - planted, planted, replace=False))


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def noisy(x, amount, seed):
    r = np.random.default_rng(seed)
    return _unit(x + amount * r.standard_normal(x.shape).astype(np.float32) / np.sqrt(x.shape[1]))


def make_set(work: Path, n: int, d: int, planted: int) -> Path:
    import pandas as pd

    emb = work / f"emb-{n}x{d}"
    if (emb / "done").is_file():
        return emb
    (emb / "img_emb").mkdir(parents=True, exist_ok=True)
    (emb / "metadata").mkdir(parents=True, exist_ok=True)
    src = planted_sources(n, planted)
    keep = {}
    i = 0
    for s, x in synthetic(n, d, planted):
        if x is None:  # the planted copies, from their sources' rows
            x = noisy(np.stack([keep[r] for r in src]), 0.15, 7)
        else:
            for r in src[(src >= s) & (src < s + len(x))]:
                keep[int(r)] = x[r - s].copy()  # (a view would keep the whole part alive)
        np.save(emb / "img_emb" / f"img_emb_{i}.npy", x.astype(np.float16))
        rows = np.arange(s, s + len(x))
        pd.DataFrame({"id": rows, "caption": [f"synthetic item {r}" for r in rows],
                      "url": [f"https://example.org/{r}.jpg" for r in rows]}).to_parquet(
            emb / "metadata" / f"metadata_{i}.parquet", index=False)
        i += 1
    np.save(emb / "originals.npy", np.stack([keep[r] for r in src]))
    np.save(emb / "sources.npy", src)
    (emb / "done").write_text("ok")
    return emb


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemorySampler:
    """Peaks of this process's resident memory split as the kernel counts it, sampled every ``every`` s on a
    thread: anonymous memory (what the process needs) and file pages of its mappings (the memory-mapped
    vectors, index lists and blocks: the page cache's, dropped under memory pressure). ``peak_rss_mb`` (VmHWM)
    counts both."""

    def __init__(self, every: float = 0.02):
        import threading

        self.peak = {"RssAnon": 0.0, "RssFile": 0.0}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._t.start()

    def _run(self, every):
        while not self._stop.is_set():
            for line in open("/proc/self/status"):
                key = line.split(":")[0]
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(line.split()[1]) / 1024)
            self._stop.wait(every)

    def stop(self) -> dict:
        self._stop.set()
        self._t.join()
        return {"peak_anon_mb": self.peak["RssAnon"], "peak_file_mb": self.peak["RssFile"]}


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def phase_gen(a) -> dict:
    t = time.perf_counter()
    emb = make_set(Path(a.work), a.n, a.d, a.planted)
    return {"set": str(emb), "seconds": time.perf_counter() - t,
            "bytes": sum(p.stat().st_size for p in (emb / "img_emb").glob("*.npy"))}


def phase_build(a) -> dict:
    from memlab.ondisk import OnDiskBuild, parse_memory

    emb = Path(a.work) / f"emb-{a.n}x{a.d}"  # made by the gen phase, in its own process
    out = Path(a.work) / f"index-{a.n}x{a.d}"
    t0 = time.perf_counter()
    mem = MemorySampler()
    b = OnDiskBuild(emb, out, name_for(a.d), parse_memory(a.max_memory), log=lambda m: print(m, file=sys.stderr))
    b.run()
    m = json.loads((out / "manifest.json").read_text())
    return {"build_s": time.perf_counter() - t0, "stages_s": m.get("build_seconds"), "peak_rss_mb": peak_mb(),
            **mem.stop(),
            "factory": m["descriptors"][name_for(a.d)]["factory"], "groups": m["duplicates"]}


def phase_serve(a) -> dict:
    from memlab.index import TrainingIndex

    emb, out = Path(a.work) / f"emb-{a.n}x{a.d}", Path(a.work) / f"index-{a.n}x{a.d}"
    t0 = time.perf_counter()
    idx = TrainingIndex.load(out, verify=False)
    load_s = time.perf_counter() - t0
    originals, src = np.load(emb / "originals.npy"), np.load(emb / "sources.npy")
    # a generation that copies a training image: a fresh near-copy of it (float32: numpy 2 would otherwise
    # promote to float64 and the exact baseline would convert every vector per query)
    q = np.ascontiguousarray(noisy(originals, 0.2, 11), np.float32)
    v = idx.vectors()
    served = idx.served_nprobe()

    def single_queries(nprobe):
        idx.nprobe = nprobe
        idx._faiss.clear()
        lat, top = [], []
        for i in range(len(q)):
            t = time.perf_counter()
            _, rows = idx.search(q[i:i + 1], k=1)
            lat.append(time.perf_counter() - t)
            top.append(int(rows[0, 0]))
        return lat, top

    single_queries(16)  # warm-up, not timed: the lists and vectors the queries touch are in the page cache, as
    sweep = {}           # the exact baseline's vectors are in memory (a cold first pass measured the disk)
    for p in (1, 2, 4, 8, 16):
        lat_p, top_p = single_queries(p)
        sweep[p] = (lat_p, top_p)
    lat, approx = sweep[served] if served in sweep else single_queries(served)
    del idx.nprobe
    idx._faiss.clear()
    rss_after = rss_mb()
    # exact answers for all queries, over the same float16 vectors (chunked), and single-query latency
    best, arg = np.full(len(q), -np.inf, np.float32), np.zeros(len(q), np.int64)
    for s in range(0, len(v), 200_000):
        sim = np.asarray(v[s:s + 200_000], np.float32) @ q.T
        j = sim.argmax(0)
        better = sim[j, np.arange(len(q))] > best
        best[better], arg[better] = sim[j, np.arange(len(q))][better], j[better] + s
    exact_lat = []
    for i in range(5):
        t = time.perf_counter()
        top = -np.inf
        for s in range(0, len(v), 200_000):
            top = max(top, float((np.asarray(v[s:s + 200_000], np.float32) @ q[i]).max()))
        exact_lat.append(time.perf_counter() - t)
    # the stronger baseline: exact search over float32 vectors held in memory (one BLAS matrix-vector product)
    vf = np.empty(v.shape, np.float32)
    for s in range(0, len(v), 200_000):
        vf[s:s + 200_000] = v[s:s + 200_000]
    f32_lat = []
    for i in range(20):
        t = time.perf_counter()
        int((vf @ q[i]).argmax())
        f32_lat.append(time.perf_counter() - t)
    del vf
    recall = float(np.mean(np.array(approx) == arg))
    by_nprobe = {p: {"median_query_ms": 1000 * float(np.median(lt)), "recall_at_1_vs_exact": float(np.mean(
        np.array(tp) == arg)), "speedup_vs_exact_f32": float(np.median(f32_lat) / np.median(lt))}
        for p, (lt, tp) in sweep.items()}
    own = float(np.mean(np.isin(arg, np.concatenate([src, np.arange(a.n - a.planted, a.n)]))))
    return {"load_s": load_s, "served_nprobe": served, "by_nprobe": by_nprobe, "recall_at_1_vs_exact": recall, "exact_top1_is_planted_pair": own,
            "median_query_ms": 1000 * float(np.median(lat)), "median_exact_query_ms": 1000 * float(np.median(exact_lat)),
            "speedup": float(np.median(exact_lat) / np.median(lat)),
            "median_exact_f32_in_memory_ms": 1000 * float(np.median(f32_lat)),
            "speedup_vs_exact_f32": float(np.median(f32_lat) / np.median(lat)), "rss_after_queries_mb": rss_after,
            "peak_rss_mb": peak_mb(), "queries": len(q)}


def phase_agree(a) -> dict:
    import pandas as pd

    from memlab import metrics
    from memlab.index import TrainingIndex
    from memlab.ondisk import OnDiskBuild

    n = a.agree_n
    emb = make_set(Path(a.work), n, a.d, max(10, a.planted * n // a.n))
    out = Path(a.work) / f"index-{n}x{a.d}"
    t = time.perf_counter()
    # the index type the large build uses (IVF with SQ8 codes), its lists scaled to this set
    factory = json.loads((Path(a.work) / f"index-{a.n}x{a.d}" / "manifest.json").read_text())["descriptors"][name_for(a.d)]["factory"]
    from memlab.ondisk import choose_factory

    factory = choose_factory(n, a.d, 2 * n * a.d) if "IVF" in factory else factory
    OnDiskBuild(emb, out, name_for(a.d), 2 * n * a.d, factory=factory, log=lambda m: None).run()
    knn_s = time.perf_counter() - t
    idx = TrainingIndex.load(out)
    v = np.asarray(idx.vectors(), np.float32)
    info = idx.descriptor_info()
    t = time.perf_counter()
    bg = metrics.background(v)
    g, _ = metrics.near_duplicate_groups(v, info["duplicate_threshold"])
    exact_s = time.perf_counter() - t
    ours = idx.background()
    gi = idx.items["group"].to_numpy()
    same = bool(pd.Series(g).groupby(gi).nunique().max() == 1 and pd.Series(gi).groupby(g).nunique().max() == 1)
    return {"n": n, "factory": info["factory"], "knn_build_s": knn_s, "exact_background_and_groups_s": exact_s,
            "background_within_0.01": float(np.mean(np.abs(ours - bg) <= 0.01)),
            "max_background_diff": float(np.nanmax(np.abs(ours - bg))), "same_groups": same,
            "groups_with_duplicates": int((np.bincount(g) > 1).sum())}


def phase_add(a) -> dict:
    """The last ``--add-parts`` parts added to an index of the others, against the index built from all parts (the build
    phase's): time and peak memory of the addition, groups, background and recall of the planted copies
    (all in the last part) through the index that was added to. Its peak memory is read when the addition ends,
    as the build phase reads the build's (the checks, which load both indices, are reported apart)."""
    import pandas as pd

    from memlab.index import TrainingIndex
    from memlab.ondisk import parse_memory
    from memlab.ondisk_add import OnDiskAddition

    work = Path(a.work)
    emb, full = work / f"emb-{a.n}x{a.d}", work / f"index-{a.n}x{a.d}"
    parts = sorted((emb / "img_emb").glob("img_emb_*.npy"), key=lambda p: int(p.stem.split("_")[-1]))
    base_emb, new_emb = work / f"emb-{a.n}x{a.d}-base", work / f"emb-{a.n}x{a.d}-new"
    for folder, chosen in ((base_emb, parts[:-a.add_parts]), (new_emb, parts[-a.add_parts:])):
        for sub in ("img_emb", "metadata"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(chosen):
            j = p.stem.split("_")[-1]
            for sub, src in (("img_emb", p), ("metadata", emb / "metadata" / f"metadata_{j}.parquet")):
                dst = folder / sub / (f"img_emb_{i}.npy" if sub == "img_emb" else f"metadata_{i}.parquet")
                if not dst.exists():
                    dst.symlink_to(src)
    factory = json.loads((full / "manifest.json").read_text())["descriptors"][name_for(a.d)]["factory"]
    base, out = work / f"index-{a.n}x{a.d}-base", work / f"index-{a.n}x{a.d}-added"
    t = time.perf_counter()
    if not (base / "manifest.json").is_file():  # the base index, built in its own process (its peak memory apart)
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                        "from memlab.ondisk import OnDiskBuild; "
                        "OnDiskBuild(sys.argv[2], sys.argv[3], sys.argv[6], int(sys.argv[4]), factory=sys.argv[5], "
                        "log=lambda m: None).run()", str(ROOT), str(base_emb), str(base),
                        str(parse_memory(a.max_memory)), factory, name_for(a.d)], check=True)
    base_s = time.perf_counter() - t
    if not (out / "manifest.json").is_file() or not json.loads((out / "manifest.json").read_text()).get("additions"):
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(base, out)  # the addition replaces its index: add to a copy, keep the base for reruns
    t = time.perf_counter()
    mem = MemorySampler()
    add = OnDiskAddition(out, new_emb, log=lambda m: None)
    if add.done is None:
        add.run()
    add_s = time.perf_counter() - t
    add_mem = mem.stop()
    add_peak = peak_mb()  # the addition's own peak, read as the build phase reads its own: before the checks below
    ref, got = TrainingIndex.load(full, verify=False), TrainingIndex.load(out, verify=False)
    bg_r, bg_g = ref.background(), got.background()
    gr, gg = ref.items["group"].to_numpy(), got.items["group"].to_numpy()
    same = bool(pd.Series(gr).groupby(gg).nunique().max() == 1 and pd.Series(gg).groupby(gr).nunique().max() == 1)
    src = np.load(emb / "sources.npy")
    top = got.search(np.asarray(got.vectors()[a.n - a.planted:], np.float32), k=2)[1]  # the copies' rows
    added = sum(int(np.load(p, mmap_mode="r").shape[0]) for p in parts[-a.add_parts:])
    return {"base_rows": a.n - added, "added_rows": added, "factory": factory,
            "base_build_s": base_s, "add_s": add_s, "add_stages_s": json.loads((out / "manifest.json").read_text())
            ["additions"][-1]["seconds"], "peak_rss_mb": add_peak, "peak_rss_with_checks_mb": peak_mb(), **add_mem,
            "same_groups_as_full_build": same,
            "background_within_0.01_of_full_build": float(np.mean(np.abs(bg_r - bg_g) <= 0.01)),
            "planted_copies_find_their_source_at_top2": float(np.mean((top == src[:, None]).any(1))),
            "items": int(got.manifest["item_count"])}


STAGES = ("vectors", "index", "neighbours_and_groups")
PARALLEL = ("index", "neighbours_and_groups")  # the add and neighbour blocks Ray runs (--ray-address)


def fit_costs(rows: list[dict]) -> dict:
    """Per stage, seconds = fixed + per_item x n, least squares over the measured sizes."""
    n = np.array([r["n"] for r in rows], np.float64)
    out = {}
    for st in STAGES:
        y = np.array([r["stages_s"][st] for r in rows], np.float64)
        per, fixed = np.polyfit(n, y, 1) if len(n) > 1 else (y[0] / n[0], 0.0)
        out[st] = {"per_item_us": 1e6 * float(per), "fixed_s": float(fixed)}
    return out


def extrapolate(fit: dict, n: int, machines: int) -> float:
    """Hours for ``n`` items on ``machines`` machines from the fits: the vectors stage (one pass over the
    parts) on one machine, the add and neighbour stages divided among the machines."""
    s = 0.0
    for st, f in fit.items():
        t = f["fixed_s"] + f["per_item_us"] * 1e-6 * n
        s += t / machines if st in PARALLEL else t
    return s / 3600


def sizes(a, base) -> int:
    """``--sizes``: gen, build and serve at each size; per stage the seconds and peak memory, the fitted per-item
    cost, and the extrapolation to 12M and 2B on 1, 8 and 64 machines."""
    rows = []
    for n in [int(x) for x in a.sizes.split(",")]:
        cmd = base[:base.index("--n") + 1] + [str(n)] + base[base.index("--n") + 2:]
        res = {"n": n}
        for phase in ("gen", "build", "serve"):
            r = subprocess.run(cmd + ["--phase", phase], capture_output=True, text=True)
            if r.returncode:
                print(r.stderr[-3000:], file=sys.stderr)
                return r.returncode
            res[phase] = json.loads(r.stdout.strip().splitlines()[-1])
        st = res["build"]["stages_s"]
        res["stages_s"] = {k: st[k] for k in STAGES}
        rows.append(res)
        sv = res["serve"]
        b = res["build"]
        print(f"n={n:>9,}  " + "  ".join(f"{k} {st[k]:7.1f}s" for k in STAGES)
              + f"  peak RSS {b['peak_rss_mb']:.0f} MB (anonymous {b.get('peak_anon_mb', float('nan')):.0f} MB, "
                f"file pages {b.get('peak_file_mb', float('nan')):.0f} MB)  factory {b['factory']}", flush=True)
        print(f"             query (served nprobe {sv['served_nprobe']}) {sv['median_query_ms']:.2f} ms (recall@1 {sv['recall_at_1_vs_exact']:.3f}) vs exact "
              f"float32 in memory {sv['median_exact_f32_in_memory_ms']:.2f} ms = x{sv['speedup_vs_exact_f32']:.1f}; "
              f"vs exact over the float16 file {sv['median_exact_query_ms']:.1f} ms = x{sv['speedup']:.0f}", flush=True)
        print("             by nprobe: " + "; ".join(f"{p}: {r['median_query_ms']:.2f} ms recall {r['recall_at_1_vs_exact']:.3f}"
                                                     f" x{r['speedup_vs_exact_f32']:.1f}" for p, r in sv["by_nprobe"].items()))
    fit = fit_costs(rows)
    print("fitted cost per stage: " + "; ".join(f"{k} {v['per_item_us']:.1f} us/item + {v['fixed_s']:.1f} s"
                                                for k, v in fit.items()))
    for n in (12_000_000, 2_000_000_000):
        print(f"extrapolated build of {n:,} items: " + ", ".join(
            f"{m} machine{'s' if m > 1 else ''} {extrapolate(fit, n, m):.1f} h" for m in (1, 8, 64))
            + " (the vectors stage on one machine; add and neighbour blocks divided among them)")
    print(json.dumps({"sizes": rows, "fit": fit}, default=float))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--planted", type=int, default=1000)
    ap.add_argument("--max-memory", default="2GB")
    ap.add_argument("--agree-n", type=int, default=50_000)
    ap.add_argument("--work", default="/tmp/memlab-scale")
    ap.add_argument("--phase", default=None, choices=["gen", "build", "serve", "agree", "add"])
    ap.add_argument("--add", action="store_true", help="also the add phase: the last parts added to an index of "
                                                        "the others, against the full build")
    ap.add_argument("--add-parts", type=int, default=2, help="parts the add phase adds (the last part holds the "
                                                              "planted copies; the others 200,000 rows each)")
    ap.add_argument("--sizes", default=None, help="comma-separated sizes: build and serve each, fit the per-item "
                                                  "cost of each stage and extrapolate (e.g. 250000,1000000,2000000)")
    a = ap.parse_args()
    if a.phase:
        print(json.dumps({"gen": phase_gen, "build": phase_build, "serve": phase_serve, "agree": phase_agree,
                          "add": phase_add}[a.phase](a)))
        return 0
    Path(a.work).mkdir(parents=True, exist_ok=True)
    base = [sys.executable, __file__, "--n", str(a.n), "--d", str(a.d), "--planted", str(a.planted),
            "--max-memory", a.max_memory, "--agree-n", str(a.agree_n), "--work", a.work, "--add-parts", str(a.add_parts)]
    if a.sizes:
        return sizes(a, base)
    for phase in ("gen", "build", "serve", "agree") + (("add",) if a.add else ()):
        r = subprocess.run(base + ["--phase", phase], capture_output=True, text=True)
        if r.returncode:
            print(r.stderr[-3000:], file=sys.stderr)
            return r.returncode
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"[{phase}] " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
