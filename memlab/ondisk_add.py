"""Adding new embedding parts to an on-disk index (``python -m index_builder add``): the base's trained
quantizer and codes are kept, the new rows encoded with it and appended, and the groups, background and
threshold recomputed over every item; resumable like ``memlab.ondisk.OnDiskBuild``, whose stages it reuses."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .blocks import drop_pages as _drop
from .embeddings import embedding_parts, metadata_batches, metadata_schema
from .errors import IndexMismatchError, MemlabError, one_line
from .faisscheck import open_faiss
from .paths import link_or_copy
from .indexfiles import faiss_module
from .ondisk import BLOCK, OnDiskBuild, _created, _parts_signature

__all__ = ["OnDiskAddition"]


class OnDiskAddition(OnDiskBuild):
    """New embedding parts added to an index built by ``OnDiskBuild`` (or added to before), without
    retraining it or re-adding its rows: the base's float16 vectors are copied and the new ones appended,
    the new vectors are encoded with the base's trained index and its inverted lists merged with the new
    ones on disk, the new rows' neighbours are searched over all rows, and the base rows' stored neighbours
    are updated with their nearest new rows (searched in an index of the new rows alone). Groups, the
    background and the threshold are then recomputed over every item. The result replaces the index
    (atomically); the work folder ``.INDEX.add`` makes a killed addition resume to the same files."""

    def __init__(self, index, src, progress=None, log=print, block: int = BLOCK):
        from .index import TrainingIndex

        self.base = TrainingIndex.load(index)
        m = self.base.manifest
        name = m["default_descriptor"]
        entry = m["descriptors"][name]
        if entry.get("files", {}).get("knn") is None:
            raise MemlabError(f"{index} was not built from embeddings by this version of memlab (it keeps no "
                              f"neighbour lists to update); rebuild it with `python -m index_builder --embeddings`")
        nb = entry["background"]["neighbours"]
        new = embedding_parts(src)
        if new[0][3] != entry["dim"]:
            raise MemlabError(f"{src} holds {new[0][3]}-d vectors; {index} holds {entry['dim']}-d {name} vectors")
        base_f16 = self.base.path / entry["files"]["vectors"]
        self.n_base = int(m["item_count"])
        super().__init__(src, index, name, max_memory=1 << 62, k=nb["k"], rerank=nb["rerank"], nprobe=nb["nprobe"],
                         seed=nb.get("seed", 0), duplicate_threshold=entry["duplicate_threshold"],
                         factory=entry["factory"], block=block, progress=progress, log=log)
        self.threshold = entry["threshold"]["value"] if entry["threshold"]["source"] == "given" else None
        self.fpr = entry["threshold"].get("fpr") if entry["threshold"]["source"] == "calibrated" else 0.01
        self.new_parts = new
        self.parts = [(base_f16, None, self.n_base, entry["dim"])] + new
        self.normalized = {0}
        self.n = sum(p[2] for p in self.parts)
        self.first = self.n_base
        self.work = self.out.parent.resolve() / f".{self.out.name}.add"
        self.signature = _parts_signature(src, new)
        self.done = next((a for a in m.get("additions", []) if a.get("signature") == self.signature), None)
        if self.done is not None:  # finished before (a rerun, or killed after the swap): nothing left to do
            shutil.rmtree(self.work, ignore_errors=True)

    def base_trained(self):
        """The base's index with its lists emptied: the trained quantizer and codec, no vectors."""
        faiss = faiss_module()
        if self.factory == "Flat":
            return faiss.IndexFlatIP(self.d)
        idx = open_faiss(self.base.path / f"{self.name}.faiss", self.d, self.n_base)
        ivf = faiss.extract_index_ivf(idx)
        empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
        ivf.replace_invlists(empty, True)
        empty.this.disown()
        idx.ntotal = ivf.ntotal = 0
        return idx

    def base_index(self):
        """The base's index as it is served (its lists read from disk)."""
        return open_faiss(self.base.path / f"{self.name}.faiss", self.d, self.n_base, mmap=self.factory != "Flat")

    def base_rows(self) -> np.ndarray:
        """The base rows whose neighbour lists the base keeps (read once, checked: ``base_knn``)."""
        if getattr(self, "_base_rows", None) is None:
            self._base_rows = base_knn(self.base.path / f"{self.name}.knn.npz", "rows", self.n_base, self.k)
        return self._base_rows

    def query_rows(self) -> np.ndarray:
        """The base's queried rows, and the new rows (all of them, or the same fraction, seeded)."""
        base_rows = self.base_rows()
        new = np.arange(self.n_base, self.n)
        if len(base_rows) < self.n_base:
            m = round(len(new) * len(base_rows) / self.n_base)
            new = np.sort(np.random.default_rng(self.seed + 2 + self.n_base).choice(new, size=m, replace=False))
        return np.concatenate([base_rows, new])

    def sample_note(self) -> str:
        return f"the base's sample, and the added rows at its fraction (seed {self.seed + 2 + self.n_base})"

    def neighbours(self, v: np.ndarray, index):
        faiss = faiss_module()
        rows = self.query_rows()
        base_rows = self.base_rows()
        new_rows = rows[len(base_rows):]
        # the base rows' nearest new rows, searched in an index of the new rows alone (same codec); first, so
        # the whole index's lists are not yet read in while this pass reads the vectors
        only = faiss.read_index(str(self.work / "trained.faiss"))
        for s in range(self.first, self.n, self.block):  # ids 0.. (shifted by ``first`` in the pass)
            only.add(np.asarray(v[s:min(s + self.block, self.n)], np.float32))
            _drop(v)
        self.knn_pass(v, only, base_rows, "base", offset=self.first, assemble=False)
        del only
        ids_new, sc_new = self.knn_pass(v, index, new_rows, "new")
        ids, scores = np.empty((len(rows), self.k), np.int64), np.empty((len(rows), self.k), np.float32)
        ids[len(base_rows):], scores[len(base_rows):] = ids_new, sc_new
        del ids_new, sc_new
        knn = self.base.path / f"{self.name}.knn.npz"  # read into place, one array at a time
        ids[:len(base_rows)] = base_knn(knn, "ids", self.n_base, self.k, len(base_rows))
        scores[:len(base_rows)] = base_knn(knn, "scores", self.n_base, self.k, len(base_rows))
        for b, s in enumerate(range(0, len(base_rows), self.block)):  # each base row: its best k of old and new,
            e = min(s + self.block, len(base_rows))                    # one block of new neighbours at a time
            with np.load(self.work / "knn" / f"base{b:05d}.npz") as z:
                ids_all = np.concatenate([ids[s:e], z["ids"]], axis=1)
                sc_all = np.concatenate([scores[s:e], z["scores"]], axis=1)
            order = np.argsort(-sc_all, axis=1, kind="stable")[:, :self.k]
            ids[s:e] = np.take_along_axis(ids_all, order, 1)
            scores[s:e] = np.take_along_axis(sc_all, order, 1)
        return rows, ids, scores

    def metadata(self):
        """The base's items (row group by row group, without their group columns) and then the new parts'
        metadata; new ids must not repeat the base's (only the id columns are read to check)."""
        import pyarrow.parquet as pq

        base_items = self.base.path / self.base.manifest["metadata"]
        derived = ("group", "duplicates", "representative")
        schema = metadata_schema([base_items] + [m for _, m, _, _ in self.new_parts])
        for c in derived:
            if c in schema.names:
                schema = schema.remove(schema.get_field_index(c))
        base_ids = pq.read_table(base_items, columns=["id"])["id"].to_numpy(zero_copy_only=False)
        new_ids = [pq.read_table(m, columns=["id"])["id"].to_numpy(zero_copy_only=False)
                   for _, m, _, _ in self.new_parts if m is not None and "id" in pq.read_schema(m).names]
        new_ids = np.concatenate(new_ids) if new_ids else np.arange(self.n_base, self.n)
        if base_ids.dtype != new_ids.dtype:
            base_ids, new_ids = base_ids.astype(str), new_ids.astype(str)
        clash = np.intersect1d(base_ids, new_ids)
        if len(clash):
            raise MemlabError(f"{len(clash)} ids of {self.src} are already in the index (e.g. "
                              f"{sorted(map(str, clash))[:3]}); ids must stay unique")
        del base_ids, new_ids
        sources = [(base_items, self.n_base)] + [(m, r) for _, m, r, _ in self.new_parts]
        return schema, metadata_batches(sources, schema, drop=derived)

    def carry(self, tmp: Path) -> dict:
        """The base's caption vectors (``memlab.captions``), hard-linked into the new folder with their entry, which
        still names the base's item count: ``captions.build`` then embeds only the added captions."""
        entry = self.base.manifest.get("captions")
        if not isinstance(entry, dict):
            return {}
        for rel in entry["files"].values():
            link_or_copy(self.base.path / rel, tmp / rel)
        return {"captions": entry, "files": {rel: self.base.manifest["files"][rel] for rel in entry["files"].values()}}

    def provenance(self, seconds: dict) -> dict:
        m = self.base.manifest
        add = {"embeddings": str(self.src), "parts": len(self.new_parts), "rows": self.n - self.n_base,
               "signature": self.signature, "at": _created(self.work), "seconds": seconds}
        return {"created": m["created"], "source": m["source"], "additions": m.get("additions", []) + [add],
                "build_seconds": m["build_seconds"]}


KNN = ("rows", "ids", "scores")


def base_knn(path: Path, name: str, n_base: int, k: int, queried: int | None = None) -> np.ndarray:
    """One array of the neighbour lists an index keeps for additions (``rows`` queried, their ``ids`` and
    ``scores``, as ``np.savez`` stores them), checked before use, since the index may come from elsewhere: the
    archive holds these three uncompressed (a compressed member can decode to far more than the file), the rows
    are distinct base rows in order, and each row's ``k`` neighbours are base rows (or -1) with scores that are
    numbers (-inf beside a -1). Anything else is one ``IndexMismatchError`` naming the file."""
    import zipfile

    def bad(why: str) -> IndexMismatchError:
        return IndexMismatchError(f"{path}: {why}; rebuild the index with `python -m index_builder --embeddings`")

    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename: i for i in zf.infolist()}
    except (zipfile.BadZipFile, OSError) as e:
        raise bad(f"not a readable .npz archive ({one_line(e)})") from None
    if sorted(members) != sorted(f"{a}.npy" for a in KNN):
        raise bad(f"it holds {sorted(members)}, not the arrays {', '.join(KNN)}")
    packed = [m for m, i in members.items() if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise bad(f"its {', '.join(sorted(packed))} {'is' if len(packed) == 1 else 'are'} compressed (np.savez stores "
                  f"arrays as they are)")
    try:
        with np.load(path, allow_pickle=False) as z:
            a = z[name]
    except (ValueError, OSError, MemoryError, EOFError) as e:
        raise bad(f"its {name} array is not readable ({one_line(e)})") from None
    if name == "rows":
        if a.ndim != 1 or a.dtype.kind not in "iu" or len(a) > n_base or len(a) and (
                a[0] < 0 or a[-1] >= n_base or (np.diff(a) <= 0).any()):
            raise bad(f"its rows are not distinct base rows (0 to {n_base - 1}) in increasing order")
        return a
    if a.shape != (queried, k):
        raise bad(f"its {name} are {a.shape}, not {queried} rows of {k} neighbours")
    if name == "ids" and (a.dtype.kind not in "iu" or (a < -1).any() or (a >= n_base).any()):
        raise bad(f"its ids name rows outside 0 to {n_base - 1}")
    if name == "scores" and (a.dtype.kind != "f" or np.isnan(a).any() or (a == np.inf).any()):
        raise bad("its scores are not all numbers")
    return a
