"""Building a training set's index from its sources (the library behind ``python -m index_builder`` and
``memlab world create``): a folder of images, a CSV/parquet listing image paths and captions, webdataset
shards (img2dataset's output, or any .tar of images with .txt/.json captions; their images are kept in the
index), or precomputed embeddings (``memlab.ondisk``). Corrupt or unreadable images are skipped, counted
and listed.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from .errors import MemlabError
from .indexfiles import atomic_save
from .paths import Skipped, inside, link_or_copy, member_name, out_folder
from .tables import read_table

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _log(m: str) -> None:
    print(m, file=sys.stderr)


def read_listing(images: Path, captions: str | None, file_col: str, caption_col: str, id_col: str,
                 skipped: Skipped | None = None) -> pd.DataFrame:
    """Items as a DataFrame with id, caption, file (+ the listing's other columns). A file a listing names
    that is absolute, has ``..`` or resolves outside ``images`` (a link out of it, too) is skipped and counted
    in ``skipped`` (``memlab.paths``): a listing never reads a file outside its folder. Without a listing,
    the folder's own image files, links included."""
    skipped = skipped if skipped is not None else Skipped()
    if captions is None:  # the folder's own files (a link in it is the folder owner's choice: followed)
        files = sorted(str(f.relative_to(images)) for f in images.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
        return pd.DataFrame({"id": range(len(files)), "caption": [""] * len(files), "file": files})
    path = Path(captions)
    df = read_table(path, "captions file")
    if file_col not in df.columns:
        raise MemlabError(f"{path} has no {file_col!r} column (columns: {', '.join(map(str, df.columns))}); "
                          f"use --file-column")
    if caption_col not in df.columns:
        raise MemlabError(f"{path} has no {caption_col!r} column; use --caption-column")
    out = df.rename(columns={file_col: "file", caption_col: "caption"})
    if id_col in df.columns and id_col not in ("file", "caption"):
        out = out.rename(columns={id_col: "id"})
    else:
        out.insert(0, "id", range(len(out)))
    out["file"] = out["file"].astype(str)
    out["caption"] = out["caption"].fillna("").astype(str)
    return _inside_only(out, images, skipped)


def _inside_only(items: pd.DataFrame, folder: Path, skipped: Skipped) -> pd.DataFrame:
    """The rows whose file lies inside ``folder``; the others counted in ``skipped``."""
    ok = []
    for f in items["file"]:
        name = str(f).replace("\\", "/")
        safe = member_name(name) is not None and inside(folder, folder / name)
        if not safe:
            skipped.add("path outside its folder (absolute, .. or a link out)", name[:160])
        ok.append(safe)
    return items[ok].reset_index(drop=True)

CHECK_THREADS = min(8, os.cpu_count() or 1)  # PIL decodes with the interpreter's lock released
CHECK_BLOCK = 4096  # files in flight at a time (a million futures at once would hold memory)


def _check_one(path: Path) -> str | None:
    """Why the image at ``path`` cannot be indexed, or None: it opens and decodes within memlab's caps."""
    from .match import check_image_file

    try:
        check_image_file(path)
        with Image.open(path) as im:
            im.load()
        return None
    except MemlabError as e:
        return str(e)[:160]
    except (FileNotFoundError, UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        return type(e).__name__ + ": " + str(e)[:120]


def check_images(images: Path, items: pd.DataFrame, progress, threads: int | None = None
                 ) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Keep the rows whose image opens and decodes within memlab's caps (bytes, pixels: the 40 MP cap on every
    path that decodes an image); return them and the (file, reason) skipped. The images are decoded on
    ``threads`` threads (``CHECK_THREADS``), in order."""
    from concurrent.futures import ThreadPoolExecutor

    files = list(items["file"])
    with ThreadPoolExecutor(max(1, threads or CHECK_THREADS)) as pool:
        def checked():
            for s in range(0, len(files), CHECK_BLOCK):
                yield from pool.map(lambda f: _check_one(images / f), files[s:s + CHECK_BLOCK])

        why = list(progress(checked(), desc="check images", total=len(files)))
    ok = [i for i, w in enumerate(why) if w is None]
    return items.iloc[ok].reset_index(drop=True), [(f, w) for f, w in zip(files, why) if w is not None]


def checked_images(images: Path, items: pd.DataFrame, progress, cache: Path
                   ) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """``check_images``, its answer kept in ``cache`` until the build ends: a build started again over the same
    listed files (names, sizes, modification times) does not decode them all again."""
    import json

    key = [str(Path(images).resolve()), files_digest(images, items["file"])]
    try:
        saved = json.loads(cache.read_text()) if cache.is_file() else {}
        skipped = [(str(f), str(why)) for f, why in saved["skipped"]] if saved.get("key") == key else None
    except (ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError):  # (another version's, or cut)
        skipped = None
    if skipped is not None:
        bad = {f for f, _ in skipped}
        ok = [i for i, f in enumerate(items["file"]) if f not in bad]
        return items.iloc[ok].reset_index(drop=True), skipped
    kept, skipped = check_images(images, items, progress)
    atomic_save(cache, lambda t: t.write_text(json.dumps({"key": key, "skipped": skipped})))
    return kept, skipped


def _no_bar(it, desc="", total=None):
    return it


def build_images(images, out, descriptors=("pixel",), *, captions: str | None = None, file_column: str = "file",
                 caption_column: str = "caption", id_column: str = "id", copy_images: bool = False,
                 factory: str | None = None, fpr: float = 0.01, calib_n: int = 500, origin_column: str | None = None,
                 batch_size: int = 64, weights: str | None = None, weights_sha256: str | None = None,
                 device: str | None = None, seed: int = 0, keywords: str | None = None, objects: str = "",
                 write_embeddings: str | None = None, source_note: dict | None = None, command: str | None = None,
                 skipped: Skipped | None = None, progress=None, log=_log, resume: dict | None = None) -> Path:
    """Index a folder of images (``captions``: a CSV/parquet listing them relative to it) with
    ``descriptors`` (``memlab.index.build_index``); returns the index folder. Every sample skipped on the way
    (``skipped``: the staging's, then this build's own) is counted by reason in the manifest's ``source``."""
    from .descriptors import create_descriptor
    from .index import build_index
    from .match import load_image

    progress = progress or _no_bar
    t0 = time.perf_counter()
    images = Path(images)
    if not images.is_dir():
        raise MemlabError(f"--images {images} is not a folder")
    names = [n.strip() for arg in (descriptors or ["pixel"]) for n in arg.split(",") if n.strip()]
    if not 0 < fpr < 0.5:
        raise MemlabError("--fpr must be between 0 and 0.5")
    out = out_folder(out)
    options = {k: v for k, v in (("weights", weights), ("weights_sha256", weights_sha256), ("device", device)) if v}
    descs = [create_descriptor(n, **options) for n in names]
    skipped = skipped if skipped is not None else Skipped()
    before = skipped.total
    items = read_listing(images, captions, file_column, caption_column, id_column, skipped)
    n_listed = len(items) + skipped.total - before
    if not n_listed:
        raise MemlabError(f"no images in {images} (looked for {', '.join(sorted(IMAGE_EXTS))})" if not captions
                          else f"{captions} lists no images")
    if items.empty or not items["file"].map(lambda f: (images / f).is_file()).any():
        raise MemlabError(f"none of the {n_listed} files {captions} lists exist under {images} "
                          f"(first: {items['file'].iloc[0] if len(items) else 'none inside it'})")
    check_cache = out.parent / f".{out.name}.check.json"
    items, unreadable = checked_images(images, items, progress, check_cache)
    for f, why in unreadable:
        skipped.add("unreadable image or over the caps", f"{f}: {why}"[:200])
        log(f"  skipped {f}: {why}")
    log(f"images: {n_listed} listed, {len(items)} readable, {skipped.total} skipped ({skipped.summary()})")
    if len(items) < 2:
        raise MemlabError("need at least two readable images to build an index")
    image_root = "images" if copy_images else str(images.resolve())
    source = {**(source_note or {"images": str(images.resolve()), "captions": captions}),
              "listed": n_listed, "skipped": [f for f, _ in unreadable], "skipped_samples": skipped.to_dict(),
              "command": command}
    build_index(out, items, lambda i: load_image(images / items["file"].iloc[i]), descs,
                factory=factory or "Flat", fpr=fpr, calib_n=calib_n, seed=seed, batch_size=batch_size,
                image_root=image_root, progress=progress, origin=origin_column, extra_manifest={"source": source},
                extra_files=(lambda tmp: _copy_images(tmp, images, items)) if copy_images else None,
                resume=resume or {"folder": str(images.resolve()), "files": files_digest(images, items["file"])})
    check_cache.unlink(missing_ok=True)
    if write_embeddings:
        export_embeddings(out, write_embeddings)
    if keywords:
        from .index import TrainingIndex
        from .keywords import write_views

        from .indexfiles import seal_files

        saved = write_views(TrainingIndex.load(out), out / "keywords",
                            [k.strip() for k in keywords.split(",") if k.strip()],
                            objects=[o.strip() for o in objects.split(",") if o.strip()], log=log)
        seal_files(out, [p.relative_to(out) for p in saved])  # the views join the index's checksums
    log(f"wrote {out} ({len(items)} items, descriptors {', '.join(names)}) in {time.perf_counter() - t0:.1f}s")
    return out


def stage_sources(specs: list[str], staging: Path, progress=None, skipped: Skipped | None = None) -> pd.DataFrame:
    """Gather training sources into one folder and one items table (id, file relative to ``staging``,
    caption, source, and what each source carries, e.g. url). A source is webdataset shards (a folder of
    .tar, a .tar, a glob or brace range), a folder of images, or a CSV/parquet listing images relative to
    its own folder with a caption column. Ids stay as given when they are unique across sources, else
    they are prefixed with the source's number. Samples skipped (unsafe names, damaged shards, ...) are counted
    in ``skipped``."""
    from .shards import shard_paths, unpack_shards

    skipped = skipped if skipped is not None else Skipped()
    frames = []
    for n, spec in enumerate(specs):
        p, sub = Path(spec), f"source{n}"
        if p.is_file() and p.suffix.lower() in (".csv", ".tsv", ".parquet"):
            items = read_listing(p.parent, str(p), "file", "caption", "id", skipped)
            _link_images(p.parent, staging / sub, items["file"])
        elif p.is_dir() and not any(p.glob("*.tar")):
            items = read_listing(p, None, "file", "caption", "id", skipped)
            if items.empty:
                raise MemlabError(f"training source {p}: no images and no .tar shards in it")
            _link_images(p, staging / sub, items["file"])
        else:
            items = unpack_shards(shard_paths(spec), staging / sub, progress, skipped)
        items["file"] = sub + "/" + items["file"].astype(str)
        items["source"] = str(spec)
        items["id"] = items["id"].astype(str)
        frames.append(items)
    items = pd.concat(frames, ignore_index=True)
    if len(frames) > 1 and items["id"].duplicated().any():
        items["id"] = [f"{i}:{x}" for i, f in enumerate(frames) for x in f["id"]]
    return items


def _link_images(src: Path, dst: Path, files) -> None:
    """Hard-link (else copy) each listed file into the staging folder (``read_listing`` kept only those inside
    ``src``; checked again here, so nothing is read or written outside the two folders)."""
    for f in files:
        if not (inside(src, src / f) and inside(dst, dst / f)):
            raise MemlabError(f"{f}: a path outside its folder reached the staging step")
        link_or_copy(src / f, dst / f)


def _copy_images(out: Path, images: Path, items: pd.DataFrame) -> None:
    for f in items["file"]:
        dst = out / "images" / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images / f, dst)


def build_sources(specs: list[str], out: str | Path, progress=None, **options) -> Path:
    """Index training sources (``stage_sources``) into ``out``, the images kept in the index: staged in a
    hidden folder beside ``out``, then built as ``build_images`` with the staged listing and
    ``copy_images``; ``options`` are ``build_images``'s (descriptors, calib_n, weights, ...)."""
    import tempfile

    out = out_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.sources-", dir=out.parent))
    try:
        skipped = Skipped()
        items = stage_sources(list(specs), staging, progress, skipped)
        listing = staging / "items.parquet"
        items.to_parquet(listing, index=False)
        given = []  # the files the specs name (a folder's, a shard range's or glob's), as they are now
        for spec in map(str, specs):
            p = Path(spec)
            if p.exists():
                given += [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
            else:
                from .shards import shard_paths

                given += shard_paths(spec)  # it names files that exist: it was staged from them just now
        resume = {"sources": [str(s) for s in specs], "given": files_digest("/", [f.resolve() for f in given]),
                  "staged": files_digest(staging, items["file"], times="linked")}  # staged anew each run
        return build_images(staging, out, captions=str(listing), copy_images=True, progress=progress,
                            source_note={"sources": [str(s) for s in specs]}, skipped=skipped, resume=resume,
                            **options)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_embeddings(embeddings, out, descriptor: str, *, max_memory="2GB", knn_k: int = 10,
                     knn_sample: int | None = None, seed: int = 0, fpr: float = 0.01, factory: str | None = None,
                     block_rows: int = 100_000, write_embeddings: str | None = None, command: str | None = None,
                     progress=None, log=_log, faiss_index: str | None = None, ray_address: str | None = None):
    """An on-disk index from precomputed embeddings (``memlab.ondisk``): streamed, resumable, its type
    chosen by ``max_memory``, background and groups from each item's nearest neighbours; with ``faiss_index``
    an index built elsewhere over them is adopted as it is (``OnDiskAdoption``). Returns the build."""
    from .adopt import OnDiskAdoption
    from .ondisk import OnDiskBuild, parse_memory

    if knn_k < 1 or (knn_sample is not None and knn_sample < 2):
        raise MemlabError("--knn-k must be at least 1 and --knn-sample at least 2")
    t0 = time.perf_counter()
    out = out_folder(out)
    if faiss_index:
        if factory:
            raise MemlabError("--factory builds an index; --faiss-index adopts one: give one of them")
        b = OnDiskAdoption(faiss_index, embeddings, out, descriptor, k=knn_k, sample=knn_sample, seed=seed,
                           fpr=fpr, block=block_rows, progress=progress, log=log, ray_address=ray_address)
    else:
        b = OnDiskBuild(embeddings, out, descriptor, parse_memory(max_memory), k=knn_k, sample=knn_sample,
                        seed=seed, fpr=fpr, factory=factory, block=block_rows, progress=progress, log=log,
                        ray_address=ray_address)
    b.run(extra_manifest={"command": command})
    if (Path(embeddings) / "text_emb").is_dir():  # clip-retrieval's text vectors, row for row: kept for caption search
        from .captions import build as build_captions
        from .descriptors import descriptor_class

        if getattr(descriptor_class(descriptor), "kind", None) == "clip":
            try:
                build_captions(out, text_emb=[embeddings], progress=progress, log=log)
            except MemlabError as e:  # the index stands; its caption search falls back to embedding or refusing
                log(f"warning: caption vectors not kept: {e}")
        else:
            log(f"{embeddings}/text_emb left out: caption vectors go with a CLIP descriptor, not {descriptor}")
    if write_embeddings:
        export_embeddings(out, write_embeddings)
    log(f"wrote {out} ({b.n} items, {b.d}-d {descriptor} vectors, {b.factory}) in {time.perf_counter() - t0:.1f}s")
    return b


def files_digest(root: Path, files, times: bool | str = True) -> str:
    """What identifies ``files`` (names under ``root``) as they are now: each one's name, size and modification
    time (``times="linked"``: only for a file hard-linked from elsewhere, whose time is its original's; a file
    unpacked anew has a new one; a missing file counts as missing). A build stopped and started again reuses its
    embedded batches, and its image check, only for files unchanged since."""
    import hashlib

    h = hashlib.sha256()
    for f in files:
        try:
            st = (Path(root) / f).stat()
        except OSError:
            h.update(f"{f}\0missing\n".encode())
            continue
        when = st.st_mtime_ns if times is True or (times == "linked" and st.st_nlink > 1) else ""
        h.update(f"{f}\0{st.st_size}\0{when}\n".encode())
    return h.hexdigest()


def export_embeddings(index_dir: Path, folder: str) -> None:
    """The index's vectors (float16) and items in the clip-retrieval layout, for other tools (and for
    ``--embeddings``)."""
    from .embeddings import write_embeddings
    from .index import TrainingIndex

    idx = TrainingIndex.load(index_dir)
    cols = [c for c in ("id", "caption", "url", "file") if c in idx.items]
    write_embeddings(out_folder(folder, "--write-embeddings"), idx.vectors(), idx.items[cols])
