"""Training sets at scale: a memlab index built from precomputed embeddings without holding them in
memory, with approximate neighbours re-ranked exactly, and the background and near-duplicate groups
computed from each item's k nearest neighbours instead of the n x n product.

Input: the layout clip-retrieval and LAION publish (``img_emb/img_emb_{i}.npy``, float16 or float32
rows, with ``metadata/metadata_{i}.parquet`` in the same row order), the same layout memlab writes
(``write_embeddings``). Only the descriptor's name and dimension are needed to build; queries need weights.

Stages (``python -m index_builder --embeddings DIR --descriptor clip --max-memory 2GB --out INDEX``), each
written to a work folder beside the output and skipped when done, so a killed build resumes and ends in
the same files as an uninterrupted one:
1. ``vectors.f16.npy``: every row, L2-normalized, as float16 (memory-mapped; part by part);
2. ``trained.faiss``: the index chosen for the memory budget (``choose_factory``: Flat when the float32
   vectors fit in half the budget, else IVF with SQ8 codes, else IVF-PQ), trained on a seeded sample;
3. ``blocks/{b}.faiss``: the vectors added block by block to copies of the trained index, then merged;
4. ``knn/{b}.npz``: each item's k nearest neighbours (approximate search for ``rerank`` candidates,
   re-scored exactly from the float16 vectors), for all items or a stated random sample;
5. the index folder (atomic): the FAISS file (memory-mapped when served), float16 vectors, backgrounds,
   items with near-duplicate groups (connected components of the kNN graph at the descriptor's duplicate
   cut), manifest with every file's checksum and how the neighbours were computed.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from . import metrics
from .descriptors import DESCRIPTORS, create_descriptor, descriptor_class
from .embeddings import (embedding_parts, metadata_batches, metadata_schema, parse_memory, read_metadata,
                         write_embeddings, write_items)
from .errors import MemlabError
from .words import caption_blocks, write as write_words
from .blocks import drop_pages as _drop, rerank_exact, run_blocks
from .blocks import add_block, knn_block  # noqa: F401 - the block tasks, importable from here as before
from .indexfiles import (FORMAT, ITEMS, MANIFEST, VERSION, atomic_dir, atomic_save, faiss_module, read_faiss, savez,
                         new_faiss_index, sha256)

__all__ = ["OnDiskBuild", "choose_factory", "embedding_parts", "parse_memory", "read_metadata",
           "write_embeddings", "rerank_exact", "groups_from_neighbours", "distinct_background", "read_faiss"]

BLOCK = 100_000  # rows per add / kNN block
EXACT_MAX = 100_000  # up to here an exact (Flat) index: its kNN pass (n queries over n) stays short


def choose_factory(n: int, d: int, max_memory: int) -> str:
    """The FAISS index for n x d vectors under a memory budget: exact Flat for small sets (at most
    ``EXACT_MAX`` items whose float32 vectors fit in half the budget), else IVF (about 4 sqrt(n) lists under 1M, 16k-65k above) with SQ8 codes (d bytes
    a vector) when they fit in 60% of it, else PQ codes."""
    if n <= EXACT_MAX and 4 * n * d <= max_memory // 2:
        return "Flat"
    nlist = 2 ** int(round(math.log2(max(16, 4 * math.sqrt(n))))) if n <= 10_000_000 else 65536
    if n * (d + 8) <= 0.6 * max_memory:
        return f"IVF{nlist},SQ8"
    m = max(x for x in (8, 16, 32, 48, 64) if d % x == 0 and n * (x + 8) <= 0.6 * max_memory) \
        if any(d % x == 0 and n * (x + 8) <= 0.6 * max_memory for x in (8, 16, 32, 48, 64)) else None
    if m is None:
        raise MemlabError(f"{n} x {d} vectors do not fit a {max_memory / 2**30:.1f} GB budget even as PQ8 codes")
    return f"IVF{nlist},PQ{m}"


def _peak_mb() -> float | None:
    """This process's peak resident memory so far (Linux), in MiB."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class OnDiskBuild:
    """The resumable build of one descriptor's on-disk index from embedding parts."""

    def __init__(self, src, out, descriptor: str, max_memory: int, k: int = 10, rerank: int = 16, nprobe: int = 8,
                 sample: int | None = None, seed: int = 0, duplicate_threshold: float | None = None,
                 fpr: float = 0.01, threshold: float | None = None, factory: str | None = None,
                 block: int = BLOCK, progress=None, log=print, ray_address: str | None = None):
        self.src, self.out = Path(src), Path(out)
        self.ray_address = ray_address  # the add and neighbour blocks as Ray tasks (``run_blocks``)
        self.work = self.out.parent.resolve() / f".{self.out.name}.build"
        self.name, self.max_memory, self.k, self.rerank, self.nprobe = descriptor, max_memory, k, rerank, nprobe
        self.sample, self.seed, self.fpr, self.threshold = sample, seed, fpr, threshold
        self.parts = embedding_parts(src)
        self.n, self.d = sum(p[2] for p in self.parts), self.parts[0][3]
        want = descriptor_dim(descriptor)
        if want is not None and want != self.d:
            raise MemlabError(f"{self.parts[0][0]} holds {self.d}-d vectors, but {descriptor} makes {want}-d ones: "
                              f"these are not {descriptor} embeddings (name the descriptor that made them)")
        self.factory = factory or choose_factory(self.n, self.d, max_memory)
        self.dup = duplicate_threshold
        self.block = int(block)
        self.bar = progress or (lambda it, **kw: it)
        self.log = log
        self.first = 0  # the first row this run adds to the index (an addition starts after the base's rows)
        self.normalized: set[int] = set()  # parts already L2-normalized float16 (a base index's vectors)

    # 1. vectors ------------------------------------------------------------------------------
    def vectors(self) -> np.ndarray:
        self.work.mkdir(parents=True, exist_ok=True)
        f, state = self.work / "vectors.f16.npy", self.work / "vectors.json"
        done = json.loads(state.read_text()) if state.is_file() else {"parts": 0}
        if done.get("n") not in (None, self.n):
            raise MemlabError(f"{self.work} holds a build of other embeddings; remove it")
        if not f.is_file():
            m = np.lib.format.open_memmap(f, mode="w+", dtype=np.float16, shape=(self.n, self.d))
            m.flush()
            del m
        offset = np.load(f, mmap_mode="r").offset  # the .npy header's size
        start = sum(p[2] for p in self.parts[:done["parts"]])
        with open(f, "r+b") as fh:  # written with plain writes: no writable mapping grows resident memory
            for i, (p, _, rows, _) in enumerate(self.bar(self.parts, desc="vectors"), 0):
                if i < done["parts"]:
                    continue
                a = np.load(p, mmap_mode="r")
                for s in range(0, rows, self.block):
                    if i in self.normalized:  # copied as they are (renormalizing would change their bits)
                        x = np.asarray(a[s:s + self.block], np.float16)
                    else:
                        x = np.asarray(a[s:s + self.block], np.float32)
                        norms = np.linalg.norm(x, axis=1, keepdims=True)
                        check_rows(x, norms, p, s)
                        x /= norms
                    fh.seek(offset + (start + s) * self.d * 2)
                    fh.write(x.astype(np.float16).tobytes())
                    _drop(a)
                fh.flush()
                os.fsync(fh.fileno())
                start += rows
                atomic_save(state, lambda t, i=i: t.write_text(json.dumps({"parts": i + 1, "n": self.n})))
        return np.load(f, mmap_mode="r")

    # 2-3. the FAISS index -------------------------------------------------------------------
    def index(self, v: np.ndarray):
        faiss = faiss_module()
        final = self.work / f"{self.name}.faiss"
        if final.is_file():
            return read_faiss(final)
        trained = self.work / "trained.faiss"
        if not trained.is_file() and self.first:
            atomic_save(trained, lambda t: faiss.write_index(self.base_trained(), str(t)))
        if not trained.is_file():
            idx = new_faiss_index(self.d, self.factory)
            if not idx.is_trained:
                ivf = faiss.extract_index_ivf(idx)
                m = min(self.n, 40 * ivf.nlist)  # 30-256 a list is FAISS's advice; 40 keeps k-means short
                rows = np.sort(np.random.default_rng(self.seed).choice(self.n, size=m, replace=False))
                self.log(f"[ondisk] training {self.factory} on {m} of {self.n} vectors")
                ivf.cp.seed, ivf.cp.niter = self.seed, 10
                sample = np.empty((m, self.d), np.float32)
                for s in range(0, m, 8192):  # sorted rows, read in chunks, their pages let go
                    sample[s:s + 8192] = v[rows[s:s + 8192]]
                    _drop(v)
                idx.train(sample)
                del sample
            atomic_save(trained, lambda t, idx=idx: faiss.write_index(idx, str(t)))
        blocks = self.work / "blocks"
        blocks.mkdir(exist_ok=True)
        nb = -(-(self.n - self.first) // self.block)
        todo = [(str(trained), str(self.work / "vectors.f16.npy"), self.first + b * self.block,
                 min(self.first + (b + 1) * self.block, self.n), self.factory != "Flat", str(blocks / f"{b:05d}.faiss"))
                for b in range(nb) if not (blocks / f"{b:05d}.faiss").is_file()]
        run_blocks(add_block, todo, self.ray_address, self.bar, f"add {self.factory}", self.log)
        idx = faiss.read_index(str(trained))
        base = self.base_index() if self.first else None
        if self.factory == "Flat":  # small by construction: merged in memory
            if base is not None:
                idx.add(base.reconstruct_n(0, base.ntotal))
                del base
            for b in range(nb):
                part = faiss.read_index(str(blocks / f"{b:05d}.faiss"))
                idx.add(part.reconstruct_n(0, part.ntotal))
                del part
        else:  # merged on disk: the inverted lists go to a memory-mapped .ivfdata file beside the index
            parts = [faiss.read_index(str(blocks / f"{b:05d}.faiss"), faiss.IO_FLAG_MMAP) for b in range(nb)]
            lists = faiss.InvertedListsPtrVector()
            for part in ([base] if base is not None else []) + parts:  # the base's rows keep their ids
                lists.push_back(faiss.extract_index_ivf(part).invlists)
            ivf = faiss.extract_index_ivf(idx)
            ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(self.work / f"{self.name}.ivfdata"))
            # as faiss.contrib.ondisk.merge_ondisk, but the blocks are released after (it keeps them mapped)
            idx.ntotal = ivf.ntotal = ondisk.merge_from_multiple(lists.data(), lists.size(), False)
            # the index records the lists' file by its bare name (read_faiss finds it beside the index,
            # wherever the index folder is): no path of this machine in the file, no change of folder
            ondisk.filename = f"{self.name}.ivfdata"
            ivf.replace_invlists(ondisk, True)
            ondisk.this.disown()
            del lists, parts, base
            atomic_save(final, lambda t, idx=idx: faiss.write_index(idx, str(t)))
            del idx, ivf
            shutil.rmtree(blocks, ignore_errors=True)
            return read_faiss(final)
        atomic_save(final, lambda t, idx=idx: faiss.write_index(idx, str(t)))
        del idx
        shutil.rmtree(blocks, ignore_errors=True)
        return read_faiss(final)

    # 4. neighbours ------------------------------------------------------------------------------
    def query_rows(self) -> np.ndarray:
        """The rows whose neighbours are computed: every row, or a seeded random sample (``sample``)."""
        if not self.sample or self.sample >= self.n:
            return np.arange(self.n)
        return np.sort(np.random.default_rng(self.seed + 1).choice(self.n, size=self.sample, replace=False))

    def sample_note(self) -> str:
        return f"seed {self.seed + 1}"

    def knn_pass(self, v: np.ndarray, index, rows: np.ndarray, name: str, offset: int = 0, assemble: bool = True):
        """Each of ``rows``' k nearest rows of ``index`` (ids shifted by ``offset``), approximate candidates
        re-scored exactly from the float16 vectors; written block by block under ``knn/{name}``, so a
        killed pass resumes at its first missing block. ``assemble``: return them whole (else the caller reads
        the block files, ``knn/{name}{b:05d}.npz``, one at a time)."""
        if "IVF" in self.factory:
            faiss_module().ParameterSpace().set_index_parameter(index, "nprobe", self.nprobe)
        knn = self.work / "knn"
        knn.mkdir(exist_ok=True)
        kk = min(index.ntotal, max(self.k, self.rerank) + 1)
        nb = -(-len(rows) // self.block)
        source = index if self.ray_address is None else str(self._index_file(index))
        todo = [(source, str(self.work / "vectors.f16.npy"), rows[b * self.block:(b + 1) * self.block], kk, self.k,
                 offset, self.nprobe if "IVF" in self.factory else None, str(knn / f"{name}{b:05d}.npz"))
                for b in range(nb) if not (knn / f"{name}{b:05d}.npz").is_file()]
        run_blocks(knn_block, todo, self.ray_address, self.bar,
                   f"neighbours ({name})" if name else "neighbours", self.log)
        if not assemble:
            return None
        ids, scores = np.empty((len(rows), self.k), np.int64), np.empty((len(rows), self.k), np.float32)
        for b in range(nb):  # filled block by block (no list of blocks beside the whole)
            with np.load(knn / f"{name}{b:05d}.npz") as z:
                ids[b * self.block:(b + 1) * self.block], scores[b * self.block:(b + 1) * self.block] = z["ids"], z["scores"]
        return ids, scores

    def _index_file(self, index) -> Path:
        """The file a Ray task opens for ``index`` (the built one; an addition's base has its own)."""
        return self.work / f"{self.name}.faiss"

    def neighbours(self, v: np.ndarray, index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows queried, their k nearest other rows, exact scores), sorted by score."""
        rows = self.query_rows()
        return (rows, *self.knn_pass(v, index, rows, ""))

    def calibrate_nprobe(self, v, index, rows, ids, scores, threshold: float, sample: int = 1000,
                         target: float = 0.99, rerank: int = 64) -> dict | None:
        """The IVF lists a served query visits: the smallest nprobe (1, 2, 4, ... up to the default 16) at
        which a search with an item's vector, its candidates re-scored exactly as ``TrainingIndex.search``
        does, finds an item as close as its nearest other item, for ``target`` of a seeded sample of the
        items whose nearest other item scores above the verdict threshold (copies in the descriptor's sense;
        the pairs come from the kNN pass). Tuning an index to a recall target, as autofaiss does."""
        if "IVF" not in self.factory:
            return None
        from .index import TrainingIndex

        default = max(TrainingIndex.nprobe, self.nprobe)  # an adopted index's own probing, if larger
        pairs = np.flatnonzero((ids[:, 0] >= 0) & (scores[:, 0] >= threshold))
        note = {"target_recall": target, "default": default, "rerank": rerank, "over": "items whose nearest other "
                "item scores above the verdict threshold, queried with their own vector: one as close re-scored"}
        if len(pairs) < 20:
            return {**note, "nprobe": default, "pairs": int(len(pairs)), "why": "too few pairs: the default"}
        pick = np.sort(np.random.default_rng(self.seed + 3).choice(pairs, size=min(sample, len(pairs)),
                                                                   replace=False))
        q = np.asarray(v[rows[pick]], np.float32)
        _drop(v)
        faiss, recall, p = faiss_module(), {}, 1
        while True:
            faiss.ParameterSpace().set_index_parameter(index, "nprobe", p)
            cand = index.search(q, min(rerank, index.ntotal))[1]
            _, sc = rerank_exact(v, q, cand, rows[pick], 1)
            recall[p] = float(np.mean(sc[:, 0] >= scores[pick, 0] - 1e-4))
            if recall[p] >= target or p >= default:
                break
            p *= 2
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", self.nprobe)
        return {**note, "nprobe": p, "pairs": int(len(pairs)), "sampled": int(len(pick)), "seed": self.seed + 3,
                "recall_by_nprobe": recall}

    # 5. the index folder -----------------------------------------------------------------------
    def metadata(self):
        """(schema, row-group batches) of the items' metadata, streamed (``embeddings.metadata_batches``)."""
        schema = metadata_schema([m for _, m, _, _ in self.parts])
        return schema, metadata_batches([(m, r) for _, m, r, _ in self.parts], schema)

    def provenance(self, seconds: dict) -> dict:
        """The manifest's record of where the items came from and what this run took."""
        return {"created": _created(self.work), "source": {"embeddings": str(self.src), "parts": len(self.parts)},
                "build_seconds": {**seconds, "note": "this run's stages (a resumed build skips those already done)"}}

    def run(self, extra_manifest: dict | None = None) -> Path:
        import time

        t, peak = [time.perf_counter()], {}
        v = self.vectors()
        t.append(time.perf_counter())
        peak["after_vectors"] = _peak_mb()
        index = self.index(v)
        t.append(time.perf_counter())
        peak["after_index"] = _peak_mb()
        rows, ids, scores = self.neighbours(v, index)
        del index  # the lists' pages the searches mapped in leave before the groups' work (reopened for nprobe)
        t.append(time.perf_counter())
        peak["after_neighbours"] = _peak_mb()
        dup = self.dup if self.dup is not None else float(
            getattr(descriptor_class(self.name), "duplicate_threshold", None) or 0.95)
        group, dups = groups_from_neighbours(self.n, rows, ids, scores, dup)
        bg = np.full(self.n, np.nan, np.float32)
        bg[rows] = scores[:, 0]
        bgd = np.full(self.n, np.nan, np.float32)
        bgd[rows] = distinct_background(group, rows, ids, scores)
        reps = metrics.group_representatives(group)
        sampled = bg[np.isfinite(bg)]
        finite = bgd[np.isin(np.arange(self.n), reps) & np.isfinite(bgd)]
        cls = descriptor_class(self.name)
        thr = metrics.threshold_rule(finite, None, self.fpr, given=self.threshold,
                                     published=getattr(cls, "published_threshold", None),
                                     published_high=getattr(cls, "published_high", None),
                                     citation=getattr(cls, "threshold_source", None))
        representative = np.zeros(self.n, bool)
        representative[reps] = True
        served = self.calibrate_nprobe(v, read_faiss(self.work / f"{self.name}.faiss"), rows, ids, scores, thr["value"])
        with atomic_dir(self.out) as tmp:
            shutil.copyfile(self.work / f"{self.name}.faiss", tmp / f"{self.name}.faiss")
            if (self.work / f"{self.name}.ivfdata").is_file():
                shutil.copyfile(self.work / f"{self.name}.ivfdata", tmp / f"{self.name}.ivfdata")
            shutil.copyfile(self.work / "vectors.f16.npy", tmp / f"{self.name}.f16.npy")
            np.save(tmp / f"{self.name}.background.npy", bg)
            np.save(tmp / f"{self.name}.background_distinct.npy", bgd)
            savez(tmp / f"{self.name}.knn.npz", rows=rows, ids=ids, scores=scores)  # what an addition updates
            schema, batches = self.metadata()
            write_items(tmp / ITEMS, batches, schema, {"group": group, "duplicates": dups,
                                                       "representative": representative})
            neighbours = {"k": self.k, "rerank": self.rerank, "nprobe": self.nprobe, "seed": self.seed,
                          "queried": "all items" if len(rows) == self.n else f"a random sample of {len(rows)} items "
                          f"({self.sample_note()}); the others' backgrounds are NaN",
                          "how": f"approximate top-{max(self.k, self.rerank)} from the index, re-scored exactly with "
                                 f"the float16 vectors"}
            entry = {**descriptor_identity(self.name), "dim": self.d,
                     "factory": self.factory, "threshold": thr, "duplicate_threshold": dup,
                     **({"serve_nprobe": served} if served else {}),
                     "background": {**metrics.dataset_similarity(sampled, thr["value"]), **metrics.percentiles(sampled),
                                    "over": "every queried item vs its nearest other item", "neighbours": neighbours},
                     "background_distinct": {**metrics.dataset_similarity(finite, thr["value"]),
                                             **metrics.percentiles(finite),
                                             "over": "one item per near-duplicate group vs the nearest item of "
                                                     "another group among its k neighbours"},
                     "files": {"index": f"{self.name}.faiss", "vectors": f"{self.name}.f16.npy",
                               "background": f"{self.name}.background.npy",
                               "background_distinct": f"{self.name}.background_distinct.npy",
                               "knn": f"{self.name}.knn.npz"}}
            words = write_words(tmp, caption_blocks(tmp / ITEMS), self.n, self.log)
            files = sorted(p.name for p in tmp.iterdir() if p.is_file())
            seconds = {"vectors": t[1] - t[0], "index": t[2] - t[1],
                       "neighbours_and_groups": t[3] - t[2] + time.perf_counter() - t[3], "peak_rss_mb": peak}
            manifest = {"format": FORMAT, "version": VERSION, **self.provenance(seconds),
                        "item_count": self.n, "default_descriptor": self.name, "descriptors": {self.name: entry},
                        "metadata": ITEMS, "image_root": None, "serve": {"mmap": True}, "words": words,
                        "duplicates": {"descriptor": self.name, "threshold": dup,
                                       "items_with_duplicates": int((dups > 0).sum()), "groups": int(group.max() + 1),
                                       "largest": int(dups.max() + 1),
                                       "from": f"the kNN graph (k={self.k}), not the n x n product"},
                        "files": {f: sha256(tmp / f) for f in files}, **(extra_manifest or {})}
            kept = self.carry(tmp)
            manifest["files"].update(kept.pop("files", {}))
            manifest.update(kept)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float))
        shutil.rmtree(self.work, ignore_errors=True)
        return self.out

    def carry(self, tmp: Path) -> dict:
        """Files an addition keeps from its base into the new index folder ``tmp``, as manifest entries (with their
        checksums under ``files``); a build keeps none."""
        return {}


def _parts_signature(src, parts) -> str:
    """What identifies a set of embedding parts: their names, sizes and metadata sizes."""
    import hashlib

    h = hashlib.sha256()
    for emb, meta, rows, d in parts:
        h.update(f"{emb.name}:{emb.stat().st_size}:{rows}:{d}:{meta.stat().st_size if meta else 0};".encode())
    return h.hexdigest()[:16]


def _created(work: Path) -> str:
    """The build's start time (kept in the work folder, so a resumed build writes the same manifest)."""
    import datetime as dt

    f = work / "created.txt"
    if not f.is_file():
        atomic_save(f, lambda t: t.write_text(dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")))
    return f.read_text()


def groups_from_neighbours(n: int, rows, ids, scores, threshold: float):
    """Connected components of the graph with an edge from each queried row to each neighbour scoring
    >= threshold (``metrics.near_duplicate_groups`` on the kNN graph); (group [n], duplicates [n])."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    r = np.repeat(rows, ids.shape[1])
    c, s = ids.ravel(), scores.ravel()
    keep = (c >= 0) & (s >= threshold)
    g = coo_matrix((np.ones(keep.sum(), np.int8), (r[keep], c[keep])), shape=(n, n))
    _, labels = connected_components(g, directed=False)
    # number groups by their first row, as metrics.near_duplicate_groups does
    _, first = np.unique(labels, return_index=True)
    remap = np.empty(labels.max() + 1, np.int64)
    remap[labels[np.sort(first)]] = np.arange(len(first))
    group = remap[labels]
    sizes = np.bincount(group)
    return group, sizes[group] - 1


def distinct_background(group, rows, ids, scores) -> np.ndarray:
    """Each queried row's best score to a neighbour of another group (NaN when all k are its group)."""
    other = (ids >= 0) & (group[np.maximum(ids, 0)] != group[rows][:, None])
    s = np.where(other, scores, -np.inf).max(axis=1)
    return np.where(np.isfinite(s), s, np.nan).astype(np.float32)


def descriptor_identity(name: str) -> dict:
    """What a query descriptor must match (name, kind, model, preset, verdict), known without weights:
    from the registered config, or from the descriptor itself when it needs none (pixel, memlab-copy)."""
    cfg = DESCRIPTORS.get(name)
    if cfg is None:
        return {"name": name, "kind": "embeddings", "model": name, "preset": "precomputed", "verdict": "cosine"}
    if cfg["kind"] in ("pixel", "learned"):
        d = create_descriptor(name)
        return {k: v for k, v in d.info().items() if k != "dim"} | {"verdict": d.verdict}
    preset = cfg.get("preset") or f"open_clip:{cfg['model']}"
    return {"name": name, "kind": cfg["kind"], "config": {k: v for k, v in cfg.items() if k != "kind"},
            "model": cfg["model"], "preset": preset, "verdict": "cosine"}


def check_rows(x: np.ndarray, norms: np.ndarray, part: Path, start: int) -> None:
    """Refuse a block of embeddings holding a row that is not finite or is all zeros, naming its file and row
    (such a row has no direction: it would match nothing, or everything, and a zero background sets the
    threshold to 0)."""
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise MemlabError(f"{part}, row {start + int(np.argmax(bad))}: not a finite vector (NaN or infinity)")
    zero = norms[:, 0] == 0
    if zero.any():
        raise MemlabError(f"{part}, row {start + int(np.argmax(zero))}: an all-zero vector")


def descriptor_dim(name: str) -> int | None:
    """The width of a registered descriptor's vectors, known without its weights; None when unknown."""
    cfg = DESCRIPTORS.get(name)
    if cfg is None:
        return None
    if cfg["kind"] in ("pixel", "learned"):
        return int(create_descriptor(name).dim)
    if cfg["kind"] == "sscd":
        return {"sscd_disc_mixup": 512, "sscd_disc_large": 1024}.get(cfg["model"])
    try:  # open_clip's packaged config, read without importing open_clip (seconds of torch and torchvision)
        f = Path(find_spec("open_clip").origin).parent / "model_configs" / f"{cfg['model']}.json"
        if not f.is_file():
            import open_clip
            return int(open_clip.get_model_config(cfg["model"])["embed_dim"])
        return int(json.loads(f.read_text())["embed_dim"])
    except Exception:  # noqa: BLE001 - an unknown config: no check
        return None
