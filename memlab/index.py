"""A training set's index on disk: the retrieval half of a world.

Layout of an index directory (it describes itself):

    manifest.json            descriptors (model, preset, dim, threshold and how it was obtained,
                             background statistics), item count, sha256 of every file, creation time
    items.parquet            id, caption, file, group (near-duplicate group), duplicates, extra columns
    <descriptor>.faiss       the FAISS index (inner product), for approximate factories ("IVF256,SQ8", ...);
                             "Flat" (exact, the default) stores none: its index is the vectors, added to
                             a FAISS IndexFlatIP at load (the file would repeat every vector)
    <descriptor>.npy         the exact vectors (re-ranking, background statistics)
    <descriptor>.background.npy   each item's similarity to its nearest other item (DCR background)

Writes are atomic (built in a hidden sibling folder, then renamed into place); loading checks every
file against the manifest and refuses an index that does not match it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from . import metrics, scorenorm
from .agreement import _agreement_calibration, agreement_of, agreement_words, set_agreement  # noqa: F401
from .calibration import calibration_rows, descriptor_entry, embed_copies
from .descriptors import Descriptor
from .distort import distort
from .verify import verify_resolved
from .childcheck import check_parquets, trust
from .errors import IndexMismatchError, MemlabError
from .jsonfiles import read_json
from .faisscheck import open_faiss
from .indexfiles import (FORMAT, ITEMS, MANIFEST, VERSION, atomic_dir, atomic_save, faiss_module, json_default,
                         load_array, make_faiss_index, recover_swap, savez, sha256)
from .paths import inside
from .preprocess import open_rgb
from .validate import check_manifest
from .words import write as write_words

__all__ = ["FORMAT", "ITEMS", "MANIFEST", "VERSION", "TrainingIndex", "build_index", "sha256"]

def build_index(out: str | Path, items: pd.DataFrame, load_image: Callable[[int], object],
                descriptors: Sequence[Descriptor], *, factory: str = "Flat", fpr: float = 0.01,
                calib_n: int = 500, seed: int = 0, batch_size: int = 64, image_root: str | None = None,
                extra_manifest: dict | None = None, progress: Callable | None = None,
                extra_files: Callable[[Path], None] | None = None,
                ground_truth: dict[str, tuple[Sequence[int], Sequence]] | None = None,
                origin: str | None = None, indexed: tuple[Callable[[int], object], str] | None = None,
                resume: dict | None = None) -> Path:
    """Embed every item with every descriptor and write an index directory atomically.

    ``items`` needs columns id, caption, file; ``load_image(i)`` returns row i's PIL image.
    Near-duplicate groups come from the first descriptor (rows of the same ``file`` are always one
    group). Thresholds (``metrics.threshold_rule``): a descriptor's published threshold when it has one,
    else calibrated here over *distinct* items, one row per near-duplicate group: synthetic copies
    (``memlab.distort``) of up to ``calib_n`` of them are scored against their originals, and the threshold
    keeps ``fpr`` of the background of distinct items (each group's row against the nearest row of another
    group). The manifest keeps both backgrounds (all rows, and distinct items). ``ground_truth`` maps a
    name to (original rows, copy images), e.g. the world's own image-to-image copies: each descriptor's
    recall on them at its threshold is recorded. ``origin`` names a column whose equal non-empty values
    mark rows cut from one source image (crops of one photograph): for calibration they count as one
    distinct image. ``extra_files(folder)`` may write more into the index folder before it is sealed
    (top-level files are checksummed). ``indexed``: (``image(i)``, its words): the vectors (and the distinct images
    as queries in the background) come from that rendering, e.g. a world's VAE round trip, which its generations
    pass through (``modelcopies.vae_round_trip``); the images kept stay the originals; each entry names it.
    """
    if len(items) == 0:
        raise MemlabError("no items to index")
    if not descriptors:
        raise MemlabError("no descriptor given")
    items = items.reset_index(drop=True).copy()
    bar = progress or (lambda it, **kw: it)
    as_indexed = indexed[0] if indexed else load_image
    # with ``resume`` (what identifies the images beyond the items table: their files' sizes and times), each
    # batch's vectors wait beside the output until the index is written, so a stopped build resumes
    work = Path(out).parent / f".{Path(out).name}.embed" if resume is not None else None
    job = {"items": _items_digest(items), "batch_size": batch_size, "indexed": indexed[1] if indexed else None,
           "descriptors": [d.info() for d in descriptors], "images": resume} if work is not None else None
    vectors = _embed_items(len(items), as_indexed, descriptors, batch_size, bar, work, job)
    primary = descriptors[0]
    group, distinct, reps = _group_items(items, vectors[primary.name], primary, origin)
    calib_rows = calibration_rows(distinct, reps, ground_truth, calib_n, seed)
    specs = {d.name: d.score_norm and {**d.score_norm, "verify": d.score_norm.get("verify") if image_root else None}
             for d in descriptors}  # verification reads the training images at query time: only where they are kept
    specs = {n: s and {**s, "verify": verify_resolved(s["verify"])} for n, s in specs.items()}
    # score normalization and verification look at the calibration copies again: distort them once, keep them
    copy_images = [distort(load_image(int(r))) for r in calib_rows] if any(specs.values()) else None
    copies = embed_copies(calib_rows, load_image, descriptors, batch_size, bar, copy_images)
    truth = {gname: (np.asarray(rows, np.int64), {d.name: d.embed(list(ims)) for d in descriptors})
             for gname, (rows, ims) in (ground_truth or {}).items()}
    items["distinct"] = distinct  # the image a row shows (origin-merged): what score normalization leaves out
    truth_images = {g: ims for g, (_, ims) in (ground_truth or {}).items()}
    sides = {d.name: scorenorm.calibration_sides(d, specs[d.name], reps, as_indexed, copy_images, truth_images)
             for d in descriptors if specs[d.name]}
    with atomic_dir(Path(out)) as tmp:
        entries = {}
        for d in descriptors:
            entries[d.name] = descriptor_entry(d, vectors[d.name], reps, group, distinct, copies[d.name], calib_rows,
                                                truth, fpr, origin, factory, sides.get(d.name), specs[d.name],
                                                (load_image, truth_images, copy_images, indexed and indexed[0]),
                                                indexed[1] if indexed else None)
            _write_descriptor_files(tmp, d.name, vectors[d.name], entries[d.name], factory)
        agreement = None if image_root is None else _agreement_calibration(  # only where matches have images
            vectors[primary.name], distinct, reps, load_image, calib_n, seed, fpr, primary.name)
        items.to_parquet(tmp / ITEMS, index=False)
        trust(tmp / ITEMS)
        words = write_words(tmp, items["caption"] if "caption" in items else [""] * len(items), len(items), print)
        if extra_files is not None:
            extra_files(tmp)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        dups = items["duplicates"].to_numpy()
        manifest = {
            "format": FORMAT, "version": VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "item_count": len(items), "default_descriptor": primary.name, "descriptors": entries,
            "metadata": ITEMS, "image_root": image_root,
            "duplicates": {"descriptor": primary.name, "threshold": primary.duplicate_threshold,
                           "items_with_duplicates": int((dups > 0).sum()), "groups": int(group.max() + 1),
                           "largest": int(dups.max() + 1)},
            "files": {f: sha256(tmp / f) for f in files},
            "agreement": agreement, "words": words,
            **(extra_manifest or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=json_default))
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    return Path(out)


def _items_digest(items: pd.DataFrame) -> str:
    """What identifies an item table's rows (their values, in order)."""
    rows = pd.util.hash_pandas_object(items.astype(str), index=False).to_numpy()
    return hashlib.sha256(rows.tobytes() + ",".join(map(str, items.columns)).encode()).hexdigest()


def _embed_items(n: int, load_image, descriptors, batch_size: int, bar, work: Path | None = None,
                 job: dict | None = None) -> dict[str, np.ndarray]:
    """Every item's vector under every descriptor; each image is loaded once, for all of them. With ``work``,
    each batch's vectors are kept there as a file (``job``: what they are made of), so a stopped build resumes
    at the batches it lacks."""
    sig = json.dumps(job, sort_keys=True, default=str)
    if work is not None and work.is_dir() and (
            not (work / "job.json").is_file() or (work / "job.json").read_text() != sig):
        shutil.rmtree(work)  # another build's batches
    chunks: dict[str, list] = {d.name: [] for d in descriptors}
    names = ", ".join(d.name for d in descriptors)
    for s in bar(range(0, n, batch_size), desc=f"embed {names}", total=-(-n // batch_size)):
        kept = work / f"{s:010d}.npz" if work is not None else None
        if kept is not None and kept.is_file():
            with np.load(kept, allow_pickle=False) as z:
                out = {d.name: z[d.name] for d in descriptors}
        else:
            ims = [load_image(i) for i in range(s, min(s + batch_size, n))]
            out = {d.name: d.embed(ims) for d in descriptors}
            if kept is not None:
                work.mkdir(parents=True, exist_ok=True)
                (work / "job.json").write_text(sig)
                atomic_save(kept, lambda t, out=out: savez(t, **out))
        for d in descriptors:
            chunks[d.name].append(out[d.name])
    return {k: np.ascontiguousarray(np.concatenate(v), np.float32) for k, v in chunks.items()}


def _group_items(items: pd.DataFrame, v: np.ndarray, primary: Descriptor, origin: str | None):
    """Near-duplicate groups (written into ``items``: group, duplicates, representative); returns (group,
    distinct images' groups (``origin``'s rows merged), one representative row per distinct image)."""
    same_file = pd.factorize(items["file"].astype(str))[0] if "file" in items else None
    group, dups = metrics.near_duplicate_groups(v, primary.duplicate_threshold, same=same_file)
    items["group"] = group
    items["duplicates"] = dups
    if origin is not None and origin not in items.columns:
        raise MemlabError(f"origin column {origin!r} is not in the item table")
    distinct = metrics.merge_groups(group, items[origin].tolist()) if origin else group
    reps = metrics.group_representatives(distinct)  # one row per distinct image
    items["representative"] = False
    items.loc[reps, "representative"] = True
    return group, distinct, reps


def calibrate_agreement(path, calib_n: int = 500, seed: int = 0, fpr: float = 0.01,
                        origin: str = "origin") -> dict | None:
    """Add the agreement threshold (``_agreement_calibration``) to an index built before it, from its stored
    vectors, groups (merged by the ``origin`` column where the items have one) and images; the manifest is
    rewritten atomically (its files are unchanged). Returns the calibration (None: the index keeps no images)."""

    idx = TrainingIndex.load(path)
    if idx.image_root is None:
        return None
    items, name = idx.items, idx.default_descriptor
    group = items["group"].to_numpy()
    distinct = metrics.merge_groups(group, items[origin].fillna("").tolist()) if origin in items else group
    reps = np.flatnonzero(items["representative"].to_numpy())

    def load(row):
        return open_rgb(idx.image_path(row))
    cal = _agreement_calibration(np.asarray(idx.vectors(name), np.float32), distinct, reps, load, calib_n, seed,
                                 fpr, name)
    idx.close()
    return set_agreement(path, cal)


def _write_descriptor_files(tmp: Path, name: str, v: np.ndarray, entry: dict, factory: str) -> None:
    """A descriptor's vectors, backgrounds and (for an approximate factory) FAISS file."""
    bg, bg_distinct, *nb = entry.pop("_arrays")
    if factory != "Flat":  # an exact index is the vectors themselves: built from them at load
        faiss_module().write_index(make_faiss_index(v, factory), str(tmp / f"{name}.faiss"))
    np.save(tmp / f"{name}.npy", v)
    np.save(tmp / f"{name}.background.npy", bg)
    np.save(tmp / f"{name}.background_distinct.npy", bg_distinct)
    for f, a in zip(("neighbours", "neighbour_ids"), nb):  # a two-sided score normalization's (scorenorm.neighbours)
        np.save(tmp / f"{name}.{f}.npy", a)


SMALL_ITEMS = 200_000  # up to here the item table is read whole on first lookup; above, row group by row group


class TrainingIndex:
    """A loaded index directory. ``search`` returns exact scores (re-ranked when approximate)."""

    nprobe = 16  # IVF lists visited per query (candidates are re-ranked exactly) where the build chose none

    def __init__(self, path: Path, manifest: dict, items: pd.DataFrame | None = None):
        self.path, self.manifest, self._items = path, manifest, items
        self._faiss: dict = {}
        self._possible: dict = {}
        self._vectors: dict = {}
        self._rowgroups = None
        self._fds: dict = {}
        self._identity: dict | None = None

    @property
    def identity(self) -> dict:
        """What names this index in a result (``match.descriptor_summary``): the sha256 of its manifest, which holds
        every file's checksum, the thresholds and the build's time, with its rows and that time."""
        if self._identity is None:
            f = Path(self.path) / MANIFEST if self.path is not None else None
            self._identity = {"sha256": sha256(f) if f is not None and f.is_file() else None,
                              "items": int(self.manifest.get("item_count", 0)), "built": self.manifest.get("created")}
        return self._identity

    def close(self) -> None:
        """Release the open files (row reads, memory-mapped vectors and lists); the index reopens them on
        the next use. Also on leaving ``with TrainingIndex.load(...) as idx:``."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._faiss.clear()
        self._vectors.clear()

    def __enter__(self) -> "TrainingIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: os may be gone
            pass

    @property
    def items(self) -> pd.DataFrame:
        """The item table (read whole on first use; ``item(row)`` alone reads only the row's row group)."""
        if self._items is None:
            self._items = pd.read_parquet(self.path / self.manifest["metadata"])
        return self._items

    def column(self, name: str) -> pd.Series | None:
        """One column of the item table (read alone from its parquet, unless the table is in memory), or None."""
        if self._items is not None:
            return self._items[name] if name in self._items.columns else None
        import pyarrow.parquet as pq

        f = self.path / self.manifest["metadata"]
        return pq.read_table(f, columns=[name]).column(0).to_pandas() if name in pq.read_schema(f).names else None

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "TrainingIndex":
        path = Path(path)
        recover_swap(path)
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise MemlabError(f"{path} is not a memlab index (no {MANIFEST}); build one with "
                              f"`python -m index_builder`")
        manifest = read_json(mpath, IndexMismatchError)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise IndexMismatchError(f"{mpath}: format is {got!r}, expected {FORMAT!r}")
        check_manifest(manifest, path)
        for f, digest in manifest.get("files", {}).items():
            p = path / f
            if not p.is_file():
                raise IndexMismatchError(f"index {path}: file {f} listed in the manifest is missing")
            if verify and sha256(p) != digest:
                raise IndexMismatchError(f"index {path}: {f} does not match its manifest checksum "
                                         f"(modified or corrupt); rebuild the index")
        import pyarrow.parquet as pq

        tables = {path / manifest["metadata"]: "item table"}  # and its caption words': one child for both
        if isinstance(manifest.get("words"), dict):
            tables[path / manifest["words"]["files"]["vocab"]] = "caption words"
        check_parquets(tables, IndexMismatchError)
        try:
            meta = pq.ParquetFile(path / manifest["metadata"])
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise IndexMismatchError(f"index {path}: {manifest['metadata']} is not a readable parquet file "
                                     f"({' '.join(str(e).split())[:120]})") from None
        rows = meta.metadata.num_rows
        n = manifest["item_count"]
        if rows != n:
            raise IndexMismatchError(f"index {path}: metadata has {rows} rows, manifest says {n}")
        _check_item_columns(meta.schema_arrow, path / manifest["metadata"])
        self = cls(path, manifest)
        for name, info in manifest["descriptors"].items():
            f = path / info["files"]["vectors"]
            shape = self.vectors(name).shape
            if len(shape) != 2 or (verify and shape[0] != n):
                raise IndexMismatchError(f"index {path}: {name} vectors do not have {n} rows")
            if info.get("dim") is not None and shape[1] != info["dim"]:
                raise IndexMismatchError(f"index {path}: {f.name} holds {shape[1]}-d vectors, the manifest's "
                                         f"descriptors.{name}.dim says {info['dim']}")
            if verify:
                _finite_rows(self.vectors(name), f)
                self.background(name), self.background(name, distinct=True)  # (each checked as it is read)
            if verify and info["files"].get("index") is not None:
                self.faiss_index(name)  # a damaged FAISS file is refused here, not at the first search
        return self

    # -- descriptors ------------------------------------------------------------------------
    @property
    def descriptor_names(self) -> list[str]:
        return list(self.manifest["descriptors"])

    @property
    def default_descriptor(self) -> str:
        return self.manifest["default_descriptor"]

    def descriptor_info(self, name: str | None = None) -> dict:
        name = name or self.default_descriptor
        if name not in self.manifest["descriptors"]:
            raise MemlabError(f"index {self.path} has no {name!r} descriptor; it was built with "
                              f"{', '.join(self.descriptor_names)}")
        return self.manifest["descriptors"][name]

    def threshold(self, name: str | None = None) -> dict:
        return self.descriptor_info(name)["threshold"]

    def possible(self, name: str | None = None) -> dict:
        """The "possible copy" band's lower edge (``metrics.possible_threshold``) with its source: stored at
        build, else computed from the stored background of distinct images (indices built before it)."""
        name = name or self.default_descriptor
        thr = self.threshold(name)
        if isinstance(thr.get("possible"), dict):
            return thr["possible"]
        if name not in self._possible:
            value = metrics.possible_threshold(self.background(name, distinct=True), thr["value"])
            self._possible[name] = {"value": value, "fpr": metrics.POSSIBLE_FPR,
                                    "source": f"{metrics.POSSIBLE_FPR:.0%} of distinct training images score above "
                                              f"it against their nearest other distinct image"}
        return self._possible[name]

    def check_descriptor(self, descriptor: Descriptor) -> None:
        """Refuse a query descriptor whose model, preset or dim differs from the one indexed."""
        info = self.descriptor_info(descriptor.name)
        for key in ("model", "preset", "dim"):
            if info[key] != getattr(descriptor, key):
                raise MemlabError(f"index {self.path} was built with {descriptor.name} {key}="
                                  f"{info[key]!r}, but the query descriptor has {getattr(descriptor, key)!r}")

    # -- arrays ------------------------------------------------------------------------------
    def vectors(self, name: str | None = None) -> np.ndarray:
        name = name or self.default_descriptor
        if name not in self._vectors:
            f = self.descriptor_info(name)["files"]["vectors"]
            self._vectors[name] = load_array(self.path / f, IndexMismatchError, mmap=True)
        return self._vectors[name]

    def neighbours(self, name: str | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """A two-sided rule's distinct images' nearest others, read and checked once (or None where none kept)."""
        info, key = self.descriptor_info(name), ("neighbours", name or self.default_descriptor)
        if key not in self._vectors and "neighbours" in info["files"]:  # cached beside the vectors, closed with them
            self._vectors[key] = scorenorm.load_neighbours(self.path, info, self.distinct_of(np.arange(len(self.items))))
        return self._vectors.get(key)

    def rows(self, ids: np.ndarray, name: str | None = None) -> np.ndarray:
        """Some rows of the vectors. An on-disk index reads them with ``pread``: through a mapping, each
        random row would map its neighbours' pages too (the kernel's fault-around), and a few thousand
        queries would hold the whole file in this process's resident memory."""
        v = self.vectors(name)
        if not self.manifest.get("serve", {}).get("mmap"):
            return np.asarray(v[ids])
        width = v.shape[1] * v.dtype.itemsize
        key = name or self.default_descriptor
        if key not in self._fds:
            self._fds[key] = os.open(self.path / self.descriptor_info(key)["files"]["vectors"], os.O_RDONLY)
        fd = self._fds[key]
        buf = b"".join(os.pread(fd, width, v.offset + int(r) * width) for r in ids)
        return np.frombuffer(buf, v.dtype).reshape(len(ids), v.shape[1])

    def background(self, name: str | None = None, distinct: bool = False) -> np.ndarray:
        """Each row's similarity to its nearest other row; ``distinct``: one row per near-duplicate
        group against the nearest row of another group (indices built before it fall back to all rows)."""
        files = self.descriptor_info(name)["files"]
        f = self.path / ((files.get("background_distinct") if distinct else None) or files["background"])
        bg = load_array(f, IndexMismatchError)
        if bg.ndim != 1 or bg.dtype.kind != "f" or len(bg) > int(self.manifest["item_count"]):
            raise IndexMismatchError(f"index {self.path}: {f.name} must hold one score per training row at most "
                                     f"(got {bg.dtype} of shape {bg.shape})")
        return bg

    def faiss_index(self, name: str | None = None):
        name = name or self.default_descriptor
        if name not in self._faiss:
            f = self.descriptor_info(name)["files"]["index"]
            if f is None:  # "Flat": the exact index is its vectors (indices before this stored a copy)
                index = make_faiss_index(np.asarray(self.vectors(name)), "Flat")
            else:  # checked first (faisscheck: its errors name the file); large on-disk indices: pages read on demand
                index = open_faiss(self.path / f, self.vectors(name).shape[1], int(self.manifest["item_count"]),
                                   mmap=bool(self.manifest.get("serve", {}).get("mmap")))
            if "IVF" in self.descriptor_info(name)["factory"]:
                faiss_module().ParameterSpace().set_index_parameter(index, "nprobe", self.served_nprobe(name))
            self._faiss[name] = index
        return self._faiss[name]

    def served_nprobe(self, name: str | None = None) -> int:
        """The IVF lists a query visits: set on this object (``idx.nprobe = 4``), else the build's calibrated
        choice (``serve_nprobe`` in the manifest: the smallest meeting its recall target), else 16."""
        if "nprobe" in self.__dict__:
            return int(self.nprobe)
        return int(self.descriptor_info(name).get("serve_nprobe", {}).get("nprobe", TrainingIndex.nprobe))

    def search(self, queries: np.ndarray, k: int = 5, name: str | None = None, rerank: int = 64):
        """Top-k items per query: (scores [n, k], rows [n, k]). Approximate indices are searched
        for ``max(k, rerank)`` candidates which are re-scored with the exact vectors. Where fewer than k
        items are found (an IVF index's probed lists can hold fewer), the row is -1 and the score -inf:
        callers drop them (``match.match_vectors``)."""
        name = name or self.default_descriptor
        q = np.ascontiguousarray(queries, np.float32)
        n = int(self.manifest["item_count"])
        k = max(1, min(int(k), n))
        exact = self.descriptor_info(name)["factory"] == "Flat"
        kk = k if exact else min(max(k, rerank), n)
        scores, rows = self.faiss_index(name).search(q, kk)
        if not exact:  # unfilled places stay -1 / -inf: FAISS's "no result" is never an item
            new_s, new_r = np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
            for i in range(len(q)):
                cand = rows[i][rows[i] >= 0]
                s = self.rows(cand, name).astype(np.float32) @ q[i]
                order = np.argsort(-s)[:k]
                new_s[i, :len(order)], new_r[i, :len(order)] = s[order], cand[order]
            scores, rows = new_s, new_r
        return scores, rows

    # -- items -------------------------------------------------------------------------------
    def image_root(self) -> Path | None:
        """The folder of the training images (None when the index keeps none)."""
        root = self.manifest.get("image_root")
        if root is None:
            return None
        root = Path(root)
        return root if root.is_absolute() else self.path / root

    def image_path(self, row: int) -> Path | None:
        """A training image's file; None when the index keeps no images or the item's file would lie outside
        the image folder (an item table naming ``../`` paths is not followed)."""
        root = self.image_root()
        if root is None:
            return None
        p = root / str(self._row(row)["file"])
        return p if inside(root, p) else None

    def _row(self, row: int) -> pd.Series:
        """One item's metadata: from the loaded table, else from the parquet row group that holds it."""
        if self._items is not None:
            return self._items.iloc[int(row)]
        import pyarrow.parquet as pq

        f = pq.ParquetFile(self.path / self.manifest["metadata"])
        if self._rowgroups is None:
            self._rowgroups = np.cumsum([0] + [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)])
        g = int(np.searchsorted(self._rowgroups, int(row), side="right") - 1)
        return f.read_row_group(g).slice(int(row) - int(self._rowgroups[g]), 1).to_pandas().iloc[0]

    def distinct_of(self, rows) -> np.ndarray:
        """The distinct image of each row (near-duplicate groups, rows of one source merged, as calibrated;
        an index built before the ``distinct`` column: its groups)."""
        items = self.items
        if getattr(self, "_distinct_of", None) is None or self._distinct_of[0] is not items:  # one column read
            self._distinct_of = (items, items["distinct" if "distinct" in items.columns else "group"].to_numpy())
        return self._distinct_of[1][np.asarray(rows, np.int64)]

    def groups_of(self, rows) -> list[int]:
        """The near-duplicate group of each row (from the loaded table's column when it is loaded)."""
        if self._items is None and self.manifest["item_count"] <= SMALL_ITEMS:
            self.items
        if self._items is not None:
            if getattr(self, "_group_col", None) is None or self._group_of is not self._items:
                self._group_of, self._group_col = self._items, self._items["group"].to_numpy()
            return self._group_col[np.asarray(rows, np.int64)].tolist()
        return [self.item(int(r))["group"] for r in rows]

    def item(self, row: int) -> dict:
        if self._items is None and self.manifest["item_count"] <= SMALL_ITEMS:
            self.items  # a small table is read whole once: a row-group read per match costs ~2.5 ms
        if self._items is not None:  # the loaded table, read through its columns as arrays (a pandas row
            if getattr(self, "_cols_of", None) is not self._items:  # lookup a match costs ~1 ms; the app makes
                n = len(self._items)                                  # 50 a seed)
                self._cols_of = self._items
                self._cols = {k: (self._items[k].to_numpy() if k in self._items else np.array([""] * n, object))
                              for k in ("id", "file", "caption", "duplicates", "group")}
            c, i = self._cols, int(row)
            return {"id": _py(c["id"][i]), "file": str(c["file"][i]), "caption": str(c["caption"][i]),
                    "duplicates": int(c["duplicates"][i]), "group": int(c["group"][i])}
        r = self._row(row)
        return {"id": _py(r["id"]), "file": str(r["file"]), "caption": str(r.get("caption", "")),
                "duplicates": int(r["duplicates"]), "group": int(r["group"])}

    def value(self, row: int, column: str, default=None):
        """One cell of the items table, ``column`` of ``row`` (``item`` returns only the fields every match
        shows): from the loaded table, else the parquet row group that holds it; ``default`` where the table
        has no such column."""
        if self._items is None and self.manifest["item_count"] <= SMALL_ITEMS:
            self.items
        if self._items is not None:
            return _py(self._items[column].iat[int(row)]) if column in self._items.columns else default
        r = self._row(row)
        return _py(r[column]) if column in r.index else default


def _py(x):
    return x.item() if hasattr(x, "item") else x


_EXPONENT = {2: (np.uint16, 0x7C00), 4: (np.uint32, 0x7F800000), 8: (np.uint64, 0x7FF0000000000000)}


def _finite_rows(v: np.ndarray, f: Path, block: int = 1 << 16) -> None:
    """Refuse vectors holding a row that is not finite, naming the file and row (such a row scores NaN against
    every query: search returns nothing for it, and a query finds no item). Read in blocks: one pass over the
    file, as its checksum is; a value is NaN or infinite where its exponent bits are all set (read as integers:
    ``np.isfinite`` converts an on-disk index's float16 vectors first)."""
    kind, mask = _EXPONENT[v.dtype.itemsize] if v.dtype.kind == "f" and v.dtype.itemsize in _EXPONENT else (None, 0)
    for s in range(0, len(v), block):
        b = np.asarray(v[s:s + block])
        bad = ((b.view(kind) & mask) == mask).any(axis=1) if kind else ~np.isfinite(b).all(axis=1)
        if bad.any():
            raise IndexMismatchError(f"index {f.parent}: {f.name}, row {s + int(np.argmax(bad))}: not a finite vector "
                                     f"(NaN or infinity)")


def _check_item_columns(schema, file: Path) -> None:
    """The item table's columns memlab reads, of types it can use (group and duplicates whole numbers, file
    and caption text)."""
    import pyarrow as pa

    kinds = {"group": pa.types.is_integer, "duplicates": pa.types.is_integer,
             "file": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t),
             "caption": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)}
    for col, ok in kinds.items():
        i = schema.get_field_index(col)
        if i >= 0 and not ok(schema.field(i).type):
            raise IndexMismatchError(f"{file}: column {col!r} is {schema.field(i).type}, which memlab cannot use")
