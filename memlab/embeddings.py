"""Embeddings on disk in the layout clip-retrieval and LAION publish: ``img_emb/img_emb_{i}.npy`` (float16 or
float32 rows) with ``metadata/metadata_{i}.parquet`` in the same row order. memlab reads theirs and writes its
own the same way, so either is the other's input.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import MemlabError
from .indexfiles import atomic_save, npsave


def parse_memory(text: str | int) -> int:
    """'2GB', '512MB', '1.5G' or a byte count -> bytes."""
    if isinstance(text, (int, np.integer)):
        return int(text)
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not m:
        raise MemlabError(f"cannot read memory size {text!r} (e.g. 2GB, 512MB)")
    return int(float(m[1]) * 1024 ** "bkmgt".index(m[2] or "b"))


def embedding_parts(src: str | Path) -> list[tuple[Path, Path | None, int, int]]:
    """(img_emb file, metadata file or None, rows, dim) per part, in part order."""
    src = Path(src)
    emb = sorted((src / "img_emb").glob("img_emb_*.npy"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
    if not emb:
        raise MemlabError(f"{src} holds no img_emb/img_emb_*.npy (the clip-retrieval / LAION embedding layout)")
    parts = []
    for p in emb:
        i = re.findall(r"\d+", p.stem)[-1]
        try:
            a = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise MemlabError(f"cannot read {p} as a .npy array: {e}") from None
        if a.ndim != 2 or a.dtype.kind != "f":
            raise MemlabError(f"{p} is {a.dtype} with shape {a.shape}: expected float rows")
        meta = src / "metadata" / f"metadata_{i}.parquet"
        parts.append((p, meta if meta.is_file() else None, int(a.shape[0]), int(a.shape[1])))
    dims = {d for *_, d in parts}
    if len(dims) != 1:
        raise MemlabError(f"{src}: embedding parts have different dimensions {sorted(dims)}")
    return parts


def read_metadata(parts) -> pd.DataFrame:
    """The parts' metadata in row order (id, caption, url, ...); rows without metadata get ids only."""
    frames, start = [], 0
    for _, meta, rows, _ in parts:
        if meta is not None:
            df = pd.read_parquet(meta)
            if len(df) != rows:
                raise MemlabError(f"{meta} has {len(df)} rows, its embeddings {rows}")
        else:
            df = pd.DataFrame(index=range(rows))
        frames.append(df.reset_index(drop=True))
        start += rows
    items = pd.concat(frames, ignore_index=True)
    if "id" not in items:
        items.insert(0, "id", np.arange(len(items)))
    for col, alt in (("caption", ("TEXT", "text")), ("url", ("URL",)), ("file", ("image_path",))):
        if col not in items:
            src = next((a for a in alt if a in items), None)
            items[col] = items[src].fillna("").astype(str) if src else ""
    return items


def write_embeddings(out: str | Path, vectors: np.ndarray, metadata: pd.DataFrame, part_rows: int = 1_000_000,
                     dtype=np.float16) -> Path:
    """Write vectors and metadata in the clip-retrieval layout (img_emb/img_emb_{i}.npy +
    metadata/metadata_{i}.parquet), so memlab's embeddings are theirs and theirs are memlab's input."""
    out = Path(out)
    (out / "img_emb").mkdir(parents=True, exist_ok=True)
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(range(0, len(vectors), part_rows)):
        atomic_save(out / "img_emb" / f"img_emb_{i}.npy",
                     lambda t, s=s: npsave(t, np.asarray(vectors[s:s + part_rows], dtype)))
        atomic_save(out / "metadata" / f"metadata_{i}.parquet",
                     lambda t, s=s: metadata.iloc[s:s + part_rows].to_parquet(t, index=False))
    return out
