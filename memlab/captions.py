"""The training captions' text vectors, kept in the index (``captions/``), so that the captions nearest a prompt
by CLIP text similarity (the cosine of projected text embeddings, Radford et al. 2021) are found at any size.
clip-retrieval keeps text embeddings beside the image embeddings in the same way (``text_emb/text_emb_{i}.npy``,
row for row with ``img_emb``), and LAION publishes them; memlab reads those, or embeds the captions itself
with the text tower of the index's CLIP descriptor, which is what a query is embedded with.

One vector per distinct caption (its first row), unit norm, float16; searched through a FAISS index chosen
by size as the image index is (exact ``Flat`` up to ``ondisk.EXACT_MAX``, else IVF with SQ8 codes), whose
candidates are re-scored exactly from the float16 vectors. Embedding is resumable: each block of captions
is a file in a work folder beside the index until the vectors are written.

    python -m index_builder captions --index DIR [--text-emb EMB_DIR ...]
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import MemlabError
from .faisscheck import open_faiss
from .indexfiles import MANIFEST, atomic_save, faiss_module, load_array, new_faiss_index, npsave, sha256

FOLDER = "captions"
BLOCK = 8192  # captions per embedded block (each block is a resume point)
NPROBE = 16  # IVF lists a caption search visits (its candidates are re-scored exactly)
FILES = {"vectors": f"{FOLDER}/text.f16.npy", "rows": f"{FOLDER}/rows.npy", "index": f"{FOLDER}/text.faiss"}


def distinct_rows(captions) -> np.ndarray:
    """The first row of each distinct, non-empty caption, in row order."""
    caps = pd.Series(captions).fillna("").astype(str)
    first = ~caps.duplicated() & (caps.str.strip() != "")
    return np.flatnonzero(first.to_numpy())


def clip_descriptor(index) -> str:
    """The index's CLIP descriptor (queries' text is embedded with its text tower), or an error."""
    names = [n for n in index.descriptor_names if index.descriptor_info(n).get("kind") == "clip"]
    if not names:
        raise MemlabError(f"index {index.path} has no CLIP descriptor ({', '.join(index.descriptor_names)}): caption "
                          f"vectors are CLIP text embeddings, comparable with a prompt embedded by the same model; "
                          f"build the index with --descriptor clip (or another CLIP config)")
    return names[0]


def text_emb_rows(folders, n: int, d: int):
    """A row reader over ``text_emb/text_emb_{i}.npy`` parts (clip-retrieval's layout) of ``folders`` in order,
    which together must hold ``n`` rows of ``d`` floats (the index's items, as built and added)."""
    from .embeddings import embedding_parts

    parts = []
    for folder in folders:
        folder = Path(folder)
        if not (folder / "text_emb").is_dir():
            raise MemlabError(f"{folder} holds no text_emb/ folder (clip-retrieval's text embeddings)")
        for p, *_ in embedding_parts(folder):
            t = p.parent.parent / "text_emb" / p.name.replace("img_emb", "text_emb")
            if not t.is_file():
                raise MemlabError(f"{folder}: {p.name} has no text_emb/{t.name} beside it")
            a = load_array(t, mmap=True)
            if a.ndim != 2 or a.dtype.kind != "f" or a.shape[1] != d:
                raise MemlabError(f"{t} is {a.dtype} with shape {a.shape}: expected float rows of {d} (the "
                                  f"CLIP descriptor's dimension)")
            parts.append(a)
    sizes = np.array([len(a) for a in parts], np.int64)
    if int(sizes.sum()) != n:
        raise MemlabError(f"the text_emb parts hold {int(sizes.sum()):,} rows, the index {n:,} items: give every "
                          f"embeddings folder the index was built and added from, in that order")
    starts = np.concatenate([[0], np.cumsum(sizes)])

    def read(rows: np.ndarray) -> np.ndarray:
        part = np.searchsorted(starts, rows, side="right") - 1
        out = np.empty((len(rows), d), np.float32)
        for p in np.unique(part):
            sel = part == p
            out[sel] = parts[p][rows[sel] - starts[p]]
        return out

    return read


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise MemlabError("a caption vector is zero or not finite")
    return x / norms


def _parts_rows(folders) -> int:
    from .embeddings import embedding_parts

    return sum(int(r) for f in folders for _, _, r, _ in embedding_parts(Path(f)))


def _extends(idx, name: str, rows: np.ndarray, text_emb) -> int:
    """The item count the index's caption vectors cover, where they were kept before an addition
    (``ondisk_add.OnDiskAddition.carry``) and can be extended to the added items: the same descriptor, the same first
    rows of the captions they cover, and ``text_emb`` parts (if given) holding the added rows alone; else 0."""
    prev, n = idx.manifest.get("captions"), int(idx.manifest["item_count"])
    if not isinstance(prev, dict) or prev.get("descriptor") != name or not 0 < int(prev.get("items", 0)) < n:
        return 0
    base = int(prev["items"])
    if text_emb and _parts_rows(text_emb) != n - base:
        return 0  # parts of every item: built anew from them
    old = np.load(idx.path / prev["files"]["rows"], allow_pickle=False)
    return base if np.array_equal(old, rows[rows < base]) else 0


def build(index_dir, *, text_emb=(), block: int = BLOCK, max_memory="2GB", progress=None, log=print,
          embed=None) -> dict:
    """Write the index's caption vectors (``captions/``) and their manifest entry; returns the entry.
    ``text_emb``: embeddings folders whose ``text_emb`` parts hold the items' text vectors (else each distinct
    caption is embedded with the index's CLIP descriptor, or ``embed``, a function of a list of captions).
    Where the index kept its vectors through an addition (``index_builder add``), only the captions new to it are
    embedded (or read from ``text_emb`` parts of the added rows alone) and appended: the vectors and rows a build
    anew gives, with the FAISS index's trained lists kept."""
    from .index import TrainingIndex
    from .ondisk import EXACT_MAX, choose_factory, parse_memory

    index_dir = Path(index_dir)
    idx = TrainingIndex.load(index_dir)
    name = clip_descriptor(idx)
    info = idx.descriptor_info(name)
    caps = idx.column("caption")
    rows = distinct_rows(caps) if caps is not None else np.zeros(0, np.int64)
    if not len(rows):
        raise MemlabError(f"index {index_dir} has no caption to embed")
    n, d = len(rows), int(info.get("dim") or idx.vectors(name).shape[1])
    base = _extends(idx, name, rows, text_emb)
    prev = idx.manifest["captions"] if base else None
    new = rows[rows >= base]  # the rows embedded here (every distinct caption's, unless extending)
    if text_emb:
        read = text_emb_rows(text_emb, int(idx.manifest["item_count"]) - base, d)
        source = "the text_emb parts of " + ", ".join(Path(f).name for f in text_emb) + " (clip-retrieval's layout)"
    else:
        if embed is None and len(new):
            from .match import descriptor_for_index

            embed = descriptor_for_index(idx, name).embed_text
        source = f"embedded by memlab with the text tower of {info.get('model')}"
    if prev:
        source = f"{prev['source']}; from row {base:,}, {source}"
    work = index_dir.parent / f".{index_dir.name}.captions"
    job = {"items": idx.manifest["files"].get(idx.manifest["metadata"]), "rows": n, "d": d, "source": source,
           "block": int(block), "base": base}
    if work.is_dir() and (not (work / "job.json").is_file() or json.loads((work / "job.json").read_text()) != job):
        shutil.rmtree(work)  # another job's blocks
    work.mkdir(exist_ok=True)
    (work / "job.json").write_text(json.dumps(job))
    starts = range(0, len(new), block)
    bar = progress(starts, desc="caption vectors", total=len(starts)) if progress else starts
    for s in bar:
        f = work / f"block_{s // block:06d}.npy"
        if f.is_file():
            continue  # done before a stop
        r = new[s:s + block]
        v = read(r - base) if text_emb else np.asarray(embed(caps.iloc[r].astype(str).tolist()), np.float32)
        if v.shape != (len(r), d):
            raise MemlabError(f"caption vectors came out {v.shape}, expected {(len(r), d)}")
        atomic_save(f, lambda t, v=_unit(v): npsave(t, v.astype(np.float16)))
    factory = "Flat" if n <= EXACT_MAX else choose_factory(n, d, parse_memory(max_memory))
    tmp = index_dir / f".{FOLDER}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    vec = np.lib.format.open_memmap(tmp / "text.f16.npy", mode="w+", dtype=np.float16, shape=(n, d))
    kept = n - len(new)
    if kept:
        old = np.load(index_dir / prev["files"]["vectors"], mmap_mode="r", allow_pickle=False)
        if old.shape != (kept, d):
            raise MemlabError(f"index {index_dir}: its kept caption vectors are {old.shape}, expected {(kept, d)}")
        for s in range(0, kept, block):
            vec[s:min(s + block, kept)] = old[s:s + block]
    for s in starts:
        vec[kept + s:kept + s + block] = np.load(work / f"block_{s // block:06d}.npy")
    vec.flush()
    np.save(tmp / "rows.npy", rows.astype(np.int64))
    if kept and prev["factory"] == factory:  # the trained lists kept, as an addition keeps the image index's
        index = open_faiss(index_dir / prev["files"]["index"], d, kept, mmap=False)
        added = range(kept, n, block)
    else:
        index, added = new_faiss_index(d, factory), range(0, n, block)
        if not index.is_trained:
            sample = np.sort(np.random.default_rng(0).choice(n, min(n, 40 * _lists(factory)), replace=False))
            index.train(np.ascontiguousarray(vec[sample], np.float32))
    for s in added:
        index.add(np.ascontiguousarray(vec[s:min(s + block, n)], np.float32))
    faiss_module().write_index(index, str(tmp / "text.faiss"))
    del vec, index
    shutil.rmtree(index_dir / FOLDER, ignore_errors=True)
    tmp.rename(index_dir / FOLDER)
    entry = {"descriptor": name, "model": info.get("model"), "count": n, "items": int(idx.manifest["item_count"]),
             "dim": d, "factory": factory, "nprobe": NPROBE, "source": source,
             "distinct": "one vector per distinct non-empty caption, at its first row", "files": dict(FILES),
             **({"text_emb": (prev or {}).get("text_emb", []) + [str(Path(f).resolve()) for f in text_emb]}
                if text_emb else {})}
    m = json.loads((index_dir / MANIFEST).read_text())
    m["captions"] = entry
    m.setdefault("files", {}).update({f: sha256(index_dir / f) for f in FILES.values()})
    atomic_save(index_dir / MANIFEST, lambda t: t.write_text(json.dumps(m, indent=2)))
    shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {index_dir / FOLDER}: {n:,} distinct captions, {d}-d, {factory} ({source}"
        + (f"; the {kept:,} kept, {len(new):,} added" if kept else "") + ")")
    return entry


def _lists(factory: str) -> int:
    import re

    m = re.match(r"IVF(\d+)", factory)
    return int(m[1]) if m else 1


class CaptionVectors:
    """An index's caption vectors (``captions/``), searched by a query's text vector."""

    def __init__(self, path: Path, entry: dict):
        self.path, self.entry = Path(path), entry
        self.vectors = load_array(self.path / entry["files"]["vectors"], mmap=True)
        self.rows = load_array(self.path / entry["files"]["rows"])
        self.index = open_faiss(self.path / entry["files"]["index"], self.vectors.shape[1], int(entry["count"]))
        if hasattr(self.index, "nprobe"):
            self.index.nprobe = int(entry.get("nprobe", NPROBE))
        n = int(entry.get("items", 0))
        if self.rows.ndim != 1 or self.rows.dtype.kind not in "iu" or (len(self.rows) and (
                self.rows.min() < 0 or self.rows.max() >= n)):
            raise MemlabError(f"index {self.path}: its caption rows are not item rows (0 to {n - 1})")
        if self.vectors.ndim != 2 or self.vectors.shape[1] != entry.get("dim") or self.index.d != entry.get("dim"):
            raise MemlabError(f"index {self.path}: its caption vectors are not {entry.get('dim')}-d")
        if len(self.rows) != len(self.vectors) or self.index.ntotal != len(self.rows):
            raise MemlabError(f"index {self.path}: its caption vectors, rows and FAISS index disagree in length")

    @classmethod
    def load(cls, index) -> "CaptionVectors | None":
        """The loaded index's caption vectors (its files were checked against the manifest at load); None where
        it has none, or where they cover other items than it holds now (an addition since: build them again)."""
        entry = index.manifest.get("captions")
        if not isinstance(entry, dict) or entry.get("items") != index.manifest.get("item_count"):
            return None
        return cls(index.path, entry)

    def words(self) -> str:
        e = self.entry
        how = "exact" if e["factory"] == "Flat" else f"{e['factory']}, {e['nprobe']} lists visited, re-scored exactly"
        return f"the index's caption vectors: {e['count']:,} distinct captions ({how}; {e['source']})"

    def search(self, q: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """(item rows, cosines) of the ``k`` captions nearest the unit text vector ``q``, best first."""
        q = _unit(np.asarray(q, np.float32).reshape(1, -1))
        kk = min(len(self.rows), k if self.entry["factory"] == "Flat" else max(4 * k, 32))
        _, cand = self.index.search(q, kk)
        cand = cand[0][cand[0] >= 0]
        sims = np.asarray(self.vectors[np.sort(cand)], np.float32) @ q[0]
        cand = np.sort(cand)
        top = np.argsort(-sims, kind="stable")[:k]
        return self.rows[cand[top]], sims[top]
