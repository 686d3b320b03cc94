"""webdataset shards as a training source: img2dataset's output (``{00000..N}.tar`` with ``.jpg``/``.txt``/
``.json`` per sample) or any ``.tar`` of images with ``.txt`` or ``.json`` captions.

Read with ``webdataset`` (``shardshuffle=False``: shard and sample order are kept, so a source always
yields the same items in the same order). Images are unpacked to ``<shard>/<key>.<ext>`` under a folder
so that the index keeps them beside its vectors, like ``--copy-images``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import MemlabError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
JSON_FIELDS = ("url", "key", "status", "width", "height", "original_width", "original_height", "sha256")


def shard_paths(spec: str | Path) -> list[Path]:
    """The shards a spec names: a folder (its ``*.tar``), a file, a glob or a brace range
    (``shards/{00000..00003}.tar``)."""
    import glob

    from braceexpand import braceexpand

    p = Path(spec)
    if p.is_dir():
        found = sorted(p.glob("*.tar"))
        if not found:
            raise MemlabError(f"no .tar shards in {p}")
        return found
    found = [Path(f) for s in braceexpand(str(spec)) for f in (sorted(glob.glob(s)) or [s])]
    missing = [f for f in found if not f.is_file()]
    if missing:
        raise MemlabError(f"shard {missing[0]} does not exist" + (f" (and {len(missing) - 1} more)"
                                                                 if len(missing) > 1 else ""))
    return found


def samples(paths: list[Path]):
    """Each sample of the shards, in order: a dict of its files' bytes plus ``__key__`` and ``__url__``."""
    import webdataset as wds

    def reraise(e):
        raise MemlabError(f"cannot read shard: {' '.join(str(e).split())[:200]}") from e

    yield from wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False, handler=reraise)


def unpack_shards(paths: list[Path], folder: Path, progress=None):
    """Write each sample's image to ``folder/<shard>/<key>.<ext>``; return the items table (id, file,
    caption, url, shard, and img2dataset's per-sample fields) in shard order. Samples without an
    image (img2dataset keeps none for failed URLs; other tars may hold stray files) are skipped."""
    import pandas as pd

    bar = progress or (lambda it, **kw: it)
    rows = []
    for s in bar(samples(paths), desc="read shards"):
        ext = next((k for k in IMAGE_KEYS if k in s), None)
        if ext is None:
            continue
        shard = Path(s["__url__"]).stem
        meta = {}
        if "json" in s:
            try:
                meta = json.loads(s["json"])
            except (ValueError, UnicodeDecodeError):
                meta = {}
        caption = s["txt"].decode("utf-8", "replace") if "txt" in s else str(meta.get("caption") or "")
        rel = f"{shard}/{s['__key__']}.{ext}"
        (folder / shard).mkdir(parents=True, exist_ok=True)
        tmp = folder / (rel + ".part")
        tmp.write_bytes(s[ext])
        os.replace(tmp, folder / rel)
        row = {"id": str(meta.get("key") or s["__key__"]), "file": rel, "caption": caption.strip(),
               "url": str(meta.get("url") or ""), "shard": shard}
        row.update({f: meta[f] for f in JSON_FIELDS if f in meta and f not in ("url", "key")
                    and isinstance(meta[f], (str, int, float))})
        row.update({k: v for k, v in meta.items() if k.startswith("memlab_") and isinstance(v, (str, int, float))})
        rows.append(row)
    if not rows:
        raise MemlabError(f"the shards ({paths[0]}{' ...' if len(paths) > 1 else ''}) hold no images")
    return pd.DataFrame(rows)
