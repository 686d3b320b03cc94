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
    python -m index_builder captions --index INDEX   (the captions' CLIP text vectors, for caption search)
    python -m index_builder words --index INDEX   (an older index's caption words, for word search)
    (also: embed, add, agreement; `python -m index_builder VERB --help`)
"""
from __future__ import annotations

import argparse
import shlex
import sys

from memlab.cli import Parser, device, guarded
from memlab.errors import MemlabError
from memlab.sources import build_embeddings, build_images, build_sources, export_embeddings  # noqa: F401


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m index_builder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of training images")
    src.add_argument("--shards", help="webdataset shards: a folder of .tar, a file, a glob or a brace range")
    src.add_argument("--embeddings", help="precomputed embeddings in the clip-retrieval / LAION layout "
                                          "(img_emb/img_emb_{i}.npy + metadata/metadata_{i}.parquet); with one "
                                          "--descriptor naming what they are (e.g. clip)")
    p.add_argument("--faiss-index", default=None,
                   help="with --embeddings: adopt this FAISS index built over them elsewhere (clip-retrieval / "
                        "autofaiss IVF-PQ, ids = row order) instead of building one; its lists are not rebuilt")
    p.add_argument("--ray-address", default=None,
                   help="with --embeddings: run the add and neighbour blocks as Ray tasks: local (a Ray on this "
                        "machine), auto or a cluster address (the output's folder on storage every node reads)")
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
    p.add_argument("--device", default=None, type=device, help="cpu, cuda or cuda:N")
    p.add_argument("--copy-images", action="store_true", help="copy the images into the index folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keywords", default=None, help="comma-separated keywords: store their views in OUT/keywords")
    p.add_argument("--objects", default="", help="objects for the keyword views' co-occurrence")
    p.add_argument("--out", required=True, help="index directory to write (replaced atomically)")
    return p


IMAGE_OPTIONS = ("factory", "fpr", "calib_n", "origin_column", "batch_size", "weights", "weights_sha256", "device",
                 "seed", "keywords", "objects", "write_embeddings")


def build(args) -> int:
    """The verb: one of the three sources (``memlab.sources``), with this command line recorded."""
    from tqdm import tqdm

    def progress(it, desc="", total=None):
        return tqdm(it, desc=desc, total=total, file=sys.stderr, disable=None)

    command = args.command
    if (args.faiss_index or args.ray_address) and not args.embeddings:
        raise MemlabError("--faiss-index and --ray-address go with --embeddings")
    if args.embeddings:
        names = [n.strip() for arg in (args.descriptor or []) for n in arg.split(",") if n.strip()]
        if len(names) != 1:
            raise MemlabError("--embeddings needs exactly one --descriptor: the one the embeddings were made with "
                              "(e.g. clip for open_clip ViT-L-14 / openai), so queries are embedded the same way")
        if args.captions or args.copy_images:
            raise MemlabError("--captions and --copy-images go with --images; embeddings carry their metadata")
        build_embeddings(args.embeddings, args.out, names[0], max_memory=args.max_memory, knn_k=args.knn_k,
                         knn_sample=args.knn_sample, seed=args.seed, fpr=args.fpr, factory=args.factory,
                         block_rows=args.block_rows, write_embeddings=args.write_embeddings, command=command,
                         progress=progress, faiss_index=args.faiss_index, ray_address=args.ray_address)
        return 0
    options = {k: getattr(args, k) for k in IMAGE_OPTIONS}
    if args.shards:
        if args.captions:
            raise MemlabError("--captions goes with --images; shards carry their own captions")
        build_sources([args.shards], args.out, progress, descriptors=args.descriptor, command=command, **options)
        return 0
    build_images(args.images, args.out, args.descriptor, captions=args.captions, file_column=args.file_column,
                 caption_column=args.caption_column, id_column=args.id_column, copy_images=args.copy_images,
                 command=command, progress=progress, **options)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    args.command = "python -m index_builder " + shlex.join(argv)  # the arguments given, also when called from Python
    return guarded(build, args)
