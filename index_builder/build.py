"""Build a training-set index from a folder of images, from a CSV/parquet listing image paths
(relative to --images) and captions, or from webdataset shards (img2dataset's output, or any .tar of
images with .txt/.json captions; their images are kept in the index). Corrupt or unreadable images are
skipped, counted and listed.

    python -m index_builder --images DIR [--captions FILE.csv|.parquet] --descriptor pixel --out INDEX
    python -m index_builder --shards SHARDS/ --descriptor sscd,clip --out INDEX
    python -m index_builder download --urls nemo.csv --out SHARDS/  (fetch with img2dataset)
    python -m index_builder --embeddings laion_emb/ --descriptor clip --max-memory 2GB --out INDEX
        (precomputed embeddings in the clip-retrieval / LAION layout: an on-disk index, memlab.ondisk)
    python -m index_builder clusters --world DIR --keywords "van gogh,astronaut"   (keyword views)
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from memlab.cli import Parser, guarded, out_folder
from memlab.errors import MemlabError
from memlab.tables import read_table

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m index_builder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of training images")
    src.add_argument("--shards", help="webdataset shards: a folder of .tar, a file, a glob or a brace range")
    src.add_argument("--embeddings", help="precomputed embeddings in the clip-retrieval / LAION layout "
                                          "(img_emb/img_emb_{i}.npy + metadata/metadata_{i}.parquet); with one "
                                          "--descriptor naming what they are (e.g. clip)")
    p.add_argument("--max-memory", default="2GB",
                   help="with --embeddings: the build's memory budget, which picks the index type (default 2GB)")
    p.add_argument("--knn-k", type=int, default=10, help="with --embeddings: neighbours per item for the "
                                                        "background and near-duplicate groups")
    p.add_argument("--knn-sample", type=int, default=None,
                   help="with --embeddings: compute neighbours for a random sample of this many items (default all)")
    p.add_argument("--block-rows", type=int, default=100_000,
                   help="with --embeddings: rows per add and neighbour block (each block is a resume point)")
    p.add_argument("--write-embeddings", default=None,
                   help="also write the index's vectors and items in the clip-retrieval layout to this folder")
    p.add_argument("--captions", default=None, help="CSV or parquet listing images and captions")
    p.add_argument("--file-column", default="file", help="column with image paths relative to --images")
    p.add_argument("--caption-column", default="caption", help="column with captions")
    p.add_argument("--id-column", default="id", help="column with item ids (default: row number)")
    p.add_argument("--descriptor", action="append", default=None,
                   help="descriptor name, repeatable or comma-separated (default: pixel); the first is "
                        "the index's default and defines near-duplicate groups")
    p.add_argument("--factory", default=None, help="FAISS index factory string (default: Flat = exact; with "
                                                   "--embeddings chosen by --max-memory)")
    p.add_argument("--fpr", type=float, default=0.01,
                   help="background false-positive rate for calibrated thresholds (default 0.01)")
    p.add_argument("--calib-n", type=int, default=500, help="items copied for calibration (default 500)")
    p.add_argument("--origin-column", default=None,
                   help="column whose equal values mark rows cut from one source image (e.g. crops of one "
                        "photo): calibration counts them as one distinct image")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--weights", default=None, help="model weights file or folder (SSCD TorchScript)")
    p.add_argument("--weights-sha256", default=None,
                   help="confirm the sha256 of a TorchScript file memlab did not download itself")
    p.add_argument("--device", default=None, help="cpu or cuda")
    p.add_argument("--copy-images", action="store_true", help="copy the images into the index folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keywords", default=None, help="comma-separated keywords: store their views in OUT/keywords")
    p.add_argument("--objects", default="", help="objects for the keyword views' co-occurrence")
    p.add_argument("--out", required=True, help="index directory to write (replaced atomically)")
    return p


def read_listing(images: Path, captions: str | None, file_col: str, caption_col: str, id_col: str) -> pd.DataFrame:
    """Items as a DataFrame with id, caption, file (+ the listing's other columns)."""
    if captions is None:
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
    return out


def check_images(images: Path, items: pd.DataFrame, progress) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Keep the rows whose image opens and decodes within memlab's caps (bytes, pixels); return them and
    the (file, reason) skipped."""
    from memlab.match import check_image_file

    ok, skipped = [], []
    for i, f in progress(list(enumerate(items["file"])), desc="check images"):
        try:
            check_image_file(images / f)
            with Image.open(images / f) as im:
                im.load()
            ok.append(i)
        except MemlabError as e:
            skipped.append((f, str(e)[:160]))
        except (FileNotFoundError, UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            skipped.append((f, type(e).__name__ + ": " + str(e)[:120]))
    return items.iloc[ok].reset_index(drop=True), skipped


def build(args) -> int:
    from tqdm import tqdm

    from memlab.descriptors import create_descriptor
    from memlab.index import build_index
    from memlab.match import load_image

    def progress(it, desc="", total=None):
        return tqdm(it, desc=desc, total=total, file=sys.stderr, disable=None)

    t0 = time.perf_counter()
    if args.embeddings:
        return build_from_embeddings(args, progress)
    if args.shards:
        if args.captions:
            raise MemlabError("--captions goes with --images; shards carry their own captions")
        return build_sources([args.shards], args.out, _passthrough(args), progress)
    images = Path(args.images)
    if not images.is_dir():
        raise MemlabError(f"--images {images} is not a folder")
    names = [n.strip() for arg in (args.descriptor or ["pixel"]) for n in arg.split(",") if n.strip()]
    if not 0 < args.fpr < 0.5:
        raise MemlabError("--fpr must be between 0 and 0.5")
    out = out_folder(args.out)
    descriptors = [create_descriptor(n, **({"weights": args.weights} if args.weights else {}),
                                     **({"weights_sha256": args.weights_sha256} if args.weights_sha256 else {}),
                                     **({"device": args.device} if args.device else {})) for n in names]
    items = read_listing(images, args.captions, args.file_column, args.caption_column, args.id_column)
    n_listed = len(items)
    if not n_listed:
        raise MemlabError(f"no images in {images} (looked for {', '.join(sorted(IMAGE_EXTS))})" if not args.captions
                          else f"{args.captions} lists no images")
    exist = items["file"].map(lambda f: (images / f).is_file())
    if not exist.any():
        raise MemlabError(f"none of the {n_listed} files {args.captions} lists exist under {images} "
                          f"(first: {items['file'].iloc[0]})")
    items, skipped = check_images(images, items, progress)
    print(f"images: {n_listed} listed, {len(items)} readable, {len(skipped)} skipped", file=sys.stderr)
    for f, why in skipped:
        print(f"  skipped {f}: {why}", file=sys.stderr)
    if len(items) < 2:
        raise MemlabError("need at least two readable images to build an index")
    image_root = "images" if args.copy_images else str(images.resolve())
    build_index(out, items, lambda i: load_image(images / items["file"].iloc[i]), descriptors,
                factory=args.factory or "Flat", fpr=args.fpr, calib_n=args.calib_n, seed=args.seed,
                batch_size=args.batch_size, image_root=image_root, progress=progress, origin=args.origin_column,
                extra_manifest={"source": {**(getattr(args, "source_note", None) or
                                              {"images": str(images.resolve()), "captions": args.captions}),
                                           "listed": n_listed, "skipped": [f for f, _ in skipped],
                                           "command": "python -m index_builder " + " ".join(sys.argv[1:])}},
                extra_files=(lambda tmp: _copy_images(tmp, images, items)) if args.copy_images else None)
    if args.write_embeddings:
        export_embeddings(out, args.write_embeddings)
    if args.keywords:
        from index_builder.clusters import compute

        compute(argparse.Namespace(world=None, index=str(out), keywords=args.keywords, keywords_file=None,
                                   descriptor=None, threshold=None, objects=args.objects, label_column="objects"))
    print(f"wrote {out} ({len(items)} items, descriptors {', '.join(names)}) in "
          f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


def stage_sources(specs: list[str], staging: Path, progress=None) -> pd.DataFrame:
    """Gather training sources into one folder and one items table (id, file relative to ``staging``,
    caption, source, and what each source carries, e.g. url). A source is webdataset shards (a folder of
    .tar, a .tar, a glob or brace range), a folder of images, or a CSV/parquet listing images relative to
    its own folder with a caption column. Ids stay as given when they are unique across sources, else
    they are prefixed with the source's number."""
    from index_builder.shards import shard_paths, unpack_shards

    frames = []
    for n, spec in enumerate(specs):
        p, sub = Path(spec), f"source{n}"
        if p.is_file() and p.suffix.lower() in (".csv", ".tsv", ".parquet"):
            items = read_listing(p.parent, str(p), "file", "caption", "id")
            _link_images(p.parent, staging / sub, items["file"])
        elif p.is_dir() and not any(p.glob("*.tar")):
            items = read_listing(p, None, "file", "caption", "id")
            if items.empty:
                raise MemlabError(f"training source {p}: no images and no .tar shards in it")
            _link_images(p, staging / sub, items["file"])
        else:
            items = unpack_shards(shard_paths(spec), staging / sub, progress)
        items["file"] = sub + "/" + items["file"].astype(str)
        items["source"] = str(spec)
        items["id"] = items["id"].astype(str)
        frames.append(items)
    items = pd.concat(frames, ignore_index=True)
    if len(frames) > 1 and items["id"].duplicated().any():
        items["id"] = [f"{i}:{x}" for i, f in enumerate(frames) for x in f["id"]]
    return items


def _link_images(src: Path, dst: Path, files) -> None:
    for f in files:
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src / f, dst / f)
        except OSError:
            shutil.copyfile(src / f, dst / f)


def build_sources(specs: list[str], out: str | Path, extra_args: list[str] = (), progress=None) -> int:
    """Index training sources (``stage_sources``) into ``out``, the images kept in the index: staged in a
    hidden folder beside ``out``, then built as ``--images STAGING --captions ITEMS --copy-images``."""
    import tempfile

    out = out_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.sources-", dir=out.parent))
    try:
        items = stage_sources(list(specs), staging, progress)
        listing = staging / "items.parquet"
        items.to_parquet(listing, index=False)
        args = parser().parse_args(["--images", str(staging), "--captions", str(listing), "--copy-images",
                                    "--out", str(out), *extra_args])
        args.source_note = {"sources": [str(s) for s in specs]}
        return build(args)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_from_embeddings(args, progress) -> int:
    """An on-disk index from precomputed embeddings (``memlab.ondisk``): streamed, resumable, its type
    chosen by --max-memory, background and groups from each item's nearest neighbours."""
    from memlab.ondisk import OnDiskBuild, parse_memory

    names = [n.strip() for arg in (args.descriptor or []) for n in arg.split(",") if n.strip()]
    if len(names) != 1:
        raise MemlabError("--embeddings needs exactly one --descriptor: the one the embeddings were made with "
                          "(e.g. clip for open_clip ViT-L-14 / openai), so queries are embedded the same way")
    if args.captions or args.copy_images:
        raise MemlabError("--captions and --copy-images go with --images; embeddings carry their metadata")
    if args.knn_k < 1 or (args.knn_sample is not None and args.knn_sample < 2):
        raise MemlabError("--knn-k must be at least 1 and --knn-sample at least 2")
    t0 = time.perf_counter()
    out = out_folder(args.out)
    b = OnDiskBuild(args.embeddings, out, names[0], parse_memory(args.max_memory), k=args.knn_k,
                    sample=args.knn_sample, seed=args.seed, fpr=args.fpr,
                    factory=args.factory, block=args.block_rows,
                    progress=progress, log=lambda m: print(m, file=sys.stderr))
    b.run(extra_manifest={"command": "python -m index_builder " + " ".join(sys.argv[1:])})
    if args.write_embeddings:
        export_embeddings(out, args.write_embeddings)
    print(f"wrote {out} ({b.n} items, {b.d}-d {names[0]} vectors, {b.factory}) in {time.perf_counter() - t0:.1f}s",
          file=sys.stderr)
    return 0


def export_embeddings(index_dir: Path, folder: str) -> None:
    """The index's vectors (float16) and items in the clip-retrieval layout, for other tools (and for
    ``--embeddings``)."""
    from memlab.index import TrainingIndex
    from memlab.ondisk import write_embeddings

    idx = TrainingIndex.load(index_dir)
    cols = [c for c in ("id", "caption", "url", "file") if c in idx.items]
    write_embeddings(out_folder(folder, "--write-embeddings"), idx.vectors(), idx.items[cols])


def _passthrough(args) -> list[str]:
    """build's options (other than the source and --out) as command-line arguments."""
    skip = {"images", "shards", "captions", "file_column", "caption_column", "id_column", "copy_images", "out",
            "source_note", "embeddings", "max_memory", "block_rows", "knn_k", "knn_sample", "write_embeddings"}
    out = []
    for k, v in vars(args).items():
        if k in skip or v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        out += [flag] if v is True else [flag, ",".join(v) if isinstance(v, list) else str(v)]
    return out


def _copy_images(out: Path, images: Path, items: pd.DataFrame) -> None:
    for f in items["file"]:
        dst = out / "images" / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images / f, dst)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return guarded(build, args)
