"""An index built elsewhere, served as it is (issue 34): clip-retrieval / autofaiss write an IVF-PQ ``.index``
over the LAION embeddings in their row order; memlab checks it against the embeddings and adopts it without
rebuilding its lists (``python -m index_builder --embeddings DIR --faiss-index FILE``)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from .errors import IndexMismatchError, MemlabError
from .faisscheck import open_faiss
from .indexfiles import faiss_module, read_faiss, sha256
from .ondisk import OnDiskBuild


class OnDiskAdoption(OnDiskBuild):
    """An index built elsewhere (clip-retrieval / autofaiss: an IVF-PQ ``.index`` over the embeddings in their
    row order) served as it is: its lists are not rebuilt. Checked against the embeddings first (count,
    dimension, and for a seeded sample of rows that the index finds each row's own vector among its nearest
    ones, as it does when the ids are the embeddings' row numbers); then memlab's float16 vectors, the
    neighbours (through the adopted index, re-scored exactly), background, groups and manifest as a build."""

    SAMPLE = 64  # rows whose own id must come back from a search with their vector

    def __init__(self, faiss_index, src, out, descriptor: str, nprobe: int | None = None, **kw):
        super().__init__(src, out, descriptor, max_memory=2**62, **kw)
        self.adopted = Path(faiss_index)
        if not self.adopted.is_file():
            raise MemlabError(f"{self.adopted}: no such FAISS index file")
        faiss = faiss_module()
        try:  # checked against the embeddings (count, dimension, inner product) before it is read here
            idx = open_faiss(self.adopted, self.d, self.n)
        except IndexMismatchError as e:
            raise MemlabError(f"{e} (an index of these embeddings is needed, by inner product as autofaiss builds "
                              f"for CLIP)") from None
        try:
            ivf = faiss.extract_index_ivf(idx)
            self.factory = f"IVF{ivf.nlist},{type(idx).__name__} (adopted)"
            self.nprobe = nprobe or max(self.nprobe, min(ivf.nlist, 64))
        except RuntimeError:
            self.factory = f"{type(idx).__name__} (adopted)"
        self.checks: dict = {}
        del idx

    def index(self, v: np.ndarray):
        faiss = faiss_module()
        final = self.work / f"{self.name}.faiss"
        if not final.is_file():
            idx = open_faiss(self.adopted, self.d, self.n)
            if "IVF" in self.factory:
                faiss.ParameterSpace().set_index_parameter(idx, "nprobe", self.nprobe)
            rows = np.sort(np.random.default_rng(self.seed + 2).choice(self.n, size=min(self.SAMPLE, self.n),
                                                                        replace=False))
            _, got = idx.search(np.asarray(v[rows], np.float32), min(10, self.n))
            found = float(np.mean([r in g for r, g in zip(rows, got)]))
            self.checks = {"rows_sampled": len(rows), "own_id_in_top10": found, "seed": self.seed + 2,
                           "nprobe": self.nprobe}
            if found < 0.9:
                raise MemlabError(f"{self.adopted} does not index these embeddings in their row order: a search "
                                  f"with {len(rows)} of their rows finds the row itself in the top 10 for "
                                  f"{found:.0%} (ids must be the embeddings' row numbers)")
            del idx
            shutil.copyfile(self.adopted, self.work / ".adopted.tmp")
            os.replace(self.work / ".adopted.tmp", final)
        return read_faiss(final)

    def provenance(self, seconds: dict) -> dict:
        return {**super().provenance(seconds),
                "adopted": {"file": self.adopted.name, "sha256": sha256(self.adopted), "checks": self.checks,
                            "lists": "as built elsewhere (not rebuilt)"}}
