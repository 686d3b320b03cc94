"""Embeddings on disk in the layout clip-retrieval and LAION publish: ``img_emb/img_emb_{i}.npy`` (float16 or
float32 rows) with ``metadata/metadata_{i}.parquet`` in the same row order. memlab reads theirs and writes its
own the same way, so either is the other's input.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .childcheck import check_parquet, trust
from .errors import MemlabError
from .indexfiles import atomic_save, load_array, npsave


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
        a = load_array(p, mmap=True)
        if a.ndim != 2 or a.dtype.kind != "f":
            raise MemlabError(f"{p} is {a.dtype} with shape {a.shape}: expected float rows")
        meta = src / "metadata" / f"metadata_{i}.parquet"
        if meta.is_file():
            check_parquet(meta, "embedding metadata")
        parts.append((p, meta if meta.is_file() else None, int(a.shape[0]), int(a.shape[1])))
    dims = {d for *_, d in parts}
    if len(dims) != 1:
        raise MemlabError(f"{src}: embedding parts have different dimensions {sorted(dims)}")
    return parts


ALIASES = (("caption", ("TEXT", "text")), ("url", ("URL",)), ("file", ("image_path",)))
ROW_GROUP = 65536  # rows per row group of the items table memlab writes


def metadata_schema(files):
    """The union of the metadata files' columns (read from their footers only): ``id`` first (row numbers,
    int64, where no file has one), then caption, url and file (strings, filled from their clip-retrieval
    aliases), then every other column; a column whose type differs between files is read as strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types: dict = {}
    for f in files:
        if f is None:
            continue
        for fld in pq.read_schema(f):
            if fld.name.startswith("__index_level"):
                continue
            prev = types.setdefault(fld.name, fld.type)
            if prev != fld.type:
                types[fld.name] = pa.float64() if pa.types.is_integer(prev) and pa.types.is_floating(fld.type) or \
                    pa.types.is_floating(prev) and pa.types.is_integer(fld.type) else pa.string()
    for c, _ in ALIASES:  # always strings (a part whose captions are all missing has a null-typed column)
        types.pop(c, None)
    head = [("id", types.pop("id", pa.int64()))] + [(c, pa.string()) for c, _ in ALIASES]
    return pa.schema(head + list(types.items()))


def _conform(t, schema, start: int):
    """One row group's table in ``schema``'s columns (``start``: its first row's number in the whole)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n, cols = t.num_rows, []
    alias = dict(ALIASES)
    for f in schema:
        if f.name in alias:  # caption, url, file: strings, a missing value "" (LAION has rows without a caption)
            src = next((a for a in (f.name, *alias[f.name]) if a in t.column_names), None)
            c = pc.fill_null(pc.cast(t[src], pa.string()), "") if src else pa.array([""] * n, pa.string())
        elif f.name in t.column_names:
            c = t[f.name]
        elif f.name == "id":
            c = pa.array(np.arange(start, start + n, dtype=np.int64))
        else:
            c = pa.nulls(n, f.type)
        cols.append(c if c.type == f.type else pc.cast(c, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def metadata_batches(sources, schema, drop=()):
    """The metadata of ``sources`` ((parquet file or None, rows), in row order) one row group at a time, in
    ``schema``; a file whose row count is not its embeddings' is refused before anything is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = []
    for f, rows in sources:
        pf = pq.ParquetFile(f) if f is not None else None
        if pf is not None and pf.metadata.num_rows != rows:
            raise MemlabError(f"{f} has {pf.metadata.num_rows} rows, its embeddings {rows}")
        files.append((pf, rows))
    start = 0
    for pf, rows in files:
        if pf is None:
            for s in range(0, rows, ROW_GROUP):
                m = min(ROW_GROUP, rows - s)
                yield _conform(pa.table({"__rows": pa.nulls(m)}), schema, start + s)
        else:
            s = 0
            for g in range(pf.num_row_groups):
                t = pf.read_row_group(g)
                t = t.drop_columns([c for c in drop if c in t.column_names])
                yield _conform(t, schema, start + s)
                s += t.num_rows
        start += rows


def write_items(path, batches, schema, columns: dict) -> int:
    """The items table written row group by row group: each batch of metadata with its slice of ``columns``
    (whole-index arrays: group, duplicates, representative) appended; never the whole table in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {k: np.asarray(v) for k, v in columns.items()}
    full = pa.schema(list(schema) + [pa.field(k, pa.from_numpy_dtype(v.dtype)) for k, v in arrays.items()])
    s = 0
    with pq.ParquetWriter(str(path), full) as w:
        for t in batches:
            m = t.num_rows
            for k, v in arrays.items():
                t = t.append_column(k, pa.array(v[s:s + m]))
            w.write_table(t, row_group_size=ROW_GROUP)
            s += m
    trust(path)
    return s


def read_metadata(parts) -> pd.DataFrame:
    """The parts' metadata in row order (id, caption, url, ...), whole, as a DataFrame (small sets; the
    build streams it with ``metadata_batches``); rows without metadata get row numbers as ids."""
    import pyarrow as pa

    schema = metadata_schema([m for _, m, _, _ in parts])
    return pa.concat_tables(list(metadata_batches([(m, r) for _, m, r, _ in parts], schema))).to_pandas()


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
        trust(out / "metadata" / f"metadata_{i}.parquet")
    return out
