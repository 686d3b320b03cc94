"""webdataset shards as a training source: img2dataset's output (``{00000..N}.tar`` with ``.jpg``/``.txt``/
``.json`` per sample) or any ``.tar`` of images with ``.txt`` or ``.json`` captions.

Samples are grouped by webdataset's rule from the tars' members, read in order (a source always yields the
same items in the same order) with ``tarfile``, so that every member a shard holds is either read or listed
with the reason it was not (links, damage, unsafe names). Images are unpacked to ``<shard>/<name>.<ext>``
under a folder so that the index keeps them beside its vectors, like ``--copy-images``.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

from .errors import MemlabError
from .jsonfiles import parse_json
from .match import MAX_IMAGE_BYTES
from .paths import Skipped, inside, member_name

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


def _members(path: Path, skipped: Skipped, max_member_bytes: int):
    """A tar's regular files as webdataset's file samples (``fname``, ``data``, ``__url__``), read with
    ``tarfile``: link and special members are skipped and listed (webdataset drops them unlisted), members
    over the byte cap are skipped unread, and a truncated or corrupt tar ends its stream with what it held
    before the damage (the sample cut there is counted lost)."""
    import tarfile

    try:
        tf = tarfile.open(path, "r|*")
    except (tarfile.TarError, OSError, EOFError) as e:
        skipped.add("unreadable tar", f"{path.name}: {' '.join(str(e).split())[:80]}")
        return
    with tf:
        try:
            for m in tf:
                if m.isdir():
                    continue
                if not m.isreg():
                    skipped.add("link or special member", f"{path.name}:{m.name}")
                    continue
                if m.size > max_member_bytes:
                    skipped.add(f"member over {max_member_bytes // 2**20} MiB", f"{path.name}:{m.name}")
                    continue
                f = tf.extractfile(m)
                yield {"fname": m.name, "data": f.read(), "__url__": str(path)}
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            skipped.add("truncated tar (the sample it cut, lost)", f"{path.name}: {' '.join(str(e).split())[:80]}")


def samples(paths: list[Path], skipped: Skipped | None = None, max_member_bytes: int = MAX_IMAGE_BYTES):
    """Each sample of the shards, in order: a dict of its files' bytes plus ``__key__`` and ``__url__``, grouped
    by webdataset's rule (a file's key is its name up to the first dot of its base name). A bad sample or a
    damaged shard is skipped and counted in ``skipped``; it never stops the others."""
    from webdataset.tariterators import group_by_keys

    skipped = skipped if skipped is not None else Skipped()

    def duplicate(e: Exception) -> bool:
        skipped.add("duplicate member in a sample", " ".join(str(e.args[0]).split())[:120])
        return True  # keep going

    for p in paths:
        yield from group_by_keys(_members(Path(p), skipped, max_member_bytes), handler=duplicate)


def sample_text(s: dict) -> tuple[dict, str]:
    """A sample's metadata (its ``.json``, or {} when missing or malformed) and caption (``.txt``, else the
    metadata's)."""
    meta = {}
    if "json" in s:
        try:
            meta = parse_json(s["json"], "a sample's metadata")
        except MemlabError:  # malformed, not UTF-8, an int too long, nested too deeply: left out
            meta = {}
    meta = meta if isinstance(meta, dict) else {}
    caption = s["txt"].decode("utf-8", "replace") if "txt" in s else str(meta.get("caption") or "")
    return meta, caption


def unpack_shards(paths: list[Path], folder: Path, progress=None, skipped: Skipped | None = None):
    """Write each sample's image to ``folder/<shard>/<name>.<ext>`` (``memlab.paths.member_name``: a key with
    ``..`` or an absolute key is refused, folders are kept in the name); return the items table (id, file,
    caption, url, shard, and img2dataset's per-sample fields) in shard order. Samples without an image
    (img2dataset keeps none for failed URLs; other tars may hold stray files), with a refused name or a
    key already seen are skipped and counted in ``skipped``."""
    import pandas as pd

    skipped = skipped if skipped is not None else Skipped()
    bar = progress or (lambda it, **kw: it)
    rows, seen = [], set()
    for s in bar(samples(paths, skipped), desc="read shards"):
        where = f"{Path(s['__url__']).name}:{s['__key__']}"
        ext = next((k for k in IMAGE_KEYS if k in s), None)
        if ext is None:
            skipped.add("no image in the sample", where)
            continue
        shard, name = member_name(Path(s["__url__"]).stem), member_name(s["__key__"])
        if name is None or shard is None:
            skipped.add("unsafe member name (absolute or ..)", where[:160])
            continue
        rel = f"{shard}/{name}.{ext}"
        if rel in seen:
            skipped.add("duplicate key", where[:160])
            continue
        target = folder / rel
        if not inside(folder, target.parent):  # (cannot happen after member_name; the rule, checked anyway)
            skipped.add("unsafe member name (absolute or ..)", where[:160])
            continue
        seen.add(rel)
        meta, caption = sample_text(s)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(s[ext])
        os.replace(tmp, target)
        row = {"id": str(meta.get("key") or s["__key__"]), "file": rel, "caption": caption.strip(),
               "url": str(meta.get("url") or ""), "shard": shard}
        row.update({f: meta[f] for f in JSON_FIELDS if f in meta and f not in ("url", "key")
                    and isinstance(meta[f], (str, int, float))})
        row.update({k: v for k, v in meta.items() if k.startswith("memlab_") and isinstance(v, (str, int, float))})
        rows.append(row)
    if not rows:
        raise MemlabError(f"the shards ({paths[0]}{' ...' if len(paths) > 1 else ''}) hold no images"
                          + (f" ({skipped.total} samples skipped: {skipped.summary()})" if skipped.total else ""))
    return pd.DataFrame(rows)
