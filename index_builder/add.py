"""Add new embeddings, or new webdataset shards, to an index built from embeddings, without rebuilding it.

    python -m index_builder add --index INDEX --embeddings NEW_EMB/
    python -m index_builder add --index INDEX --shards NEW_SHARDS/ [--ray-address auto] [--gpus 1]

``--embeddings``: the clip-retrieval / LAION layout (``img_emb/img_emb_{i}.npy`` + ``metadata/...``), made
with the index's descriptor. ``--shards``: webdataset shards, first embedded with the index's descriptor on
Ray Data (as ``index_builder embed``) into ``.INDEX.add-embeddings/`` beside the index, then added.
The index keeps its trained FAISS quantizer and codes and its rows; the new rows are appended, the
neighbours of old and new rows updated, and the groups, background and threshold recomputed over every
item (``memlab.ondisk_add.OnDiskAddition``). The index is replaced atomically, with a new manifest recording
the addition. A killed addition resumes where it stopped; a finished one is not done twice.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from memlab.cli import Parser, guarded
from memlab.errors import MemlabError


def parser():
    p = Parser(prog="python -m index_builder add", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="the index to add to (built with --embeddings)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--embeddings", help="new embeddings in the clip-retrieval layout")
    src.add_argument("--shards", help="new webdataset shards: a folder of .tar, a file, a glob or a range")
    p.add_argument("--weights", default=None, help="with --shards: the descriptor's weights (file or folder)")
    p.add_argument("--weights-sha256", default=None, help="with --shards: confirm a TorchScript file")
    p.add_argument("--ray-address", default=None, help="with --shards: a Ray cluster (default: local)")
    p.add_argument("--cpus", type=int, default=None, help="with --shards: CPUs of the local Ray (default: all)")
    p.add_argument("--gpus", type=float, default=0, help="with --shards: GPUs per embedding task")
    p.add_argument("--block-rows", type=int, default=100_000, help="rows per add and neighbour block")
    return p


def run(args) -> int:
    from memlab.ondisk_add import OnDiskAddition

    index = Path(args.index)
    if args.block_rows < 1:
        raise MemlabError("--block-rows must be at least 1")
    t0 = time.perf_counter()
    src, emb_work = args.embeddings, None
    if args.shards:
        from index_builder.embed import embed
        from memlab.shards import shard_paths
        from memlab.index import TrainingIndex

        name = TrainingIndex.load(index, verify=False).default_descriptor
        emb_work = index.parent.resolve() / f".{index.name}.add-embeddings"
        options = {k: v for k, v in (("weights", args.weights), ("weights_sha256", args.weights_sha256)) if v}
        embed(shard_paths(args.shards), emb_work, name, options, args.ray_address, args.cpus, args.gpus,
              log=lambda m: print(m, file=sys.stderr))
        src = emb_work
    bar = _progress()
    add = OnDiskAddition(index, src, progress=bar, log=lambda m: print(m, file=sys.stderr), block=args.block_rows)
    if add.done is not None:
        print(f"{args.embeddings or args.shards} was already added to {index} (at {add.done['at']}); nothing to do",
              file=sys.stderr)
    else:
        add.run(extra_manifest={"command": add.base.manifest.get("command")})
        print(f"added {add.n - add.n_base} items to {index} ({add.n} in all, {add.factory}) in "
              f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
        kept = add.base.manifest.get("captions")
        if kept:
            _captions_again(index, kept, Path(src))

    if emb_work is not None:
        shutil.rmtree(emb_work, ignore_errors=True)
    return 0


def _captions_again(index: Path, kept: dict, src: Path) -> None:
    """The index kept its captions' text vectors through the addition (for its old items): extended to the added
    items from the new embeddings' text_emb parts where they have them; else the command that extends them is
    named (it embeds the added captions alone)."""
    from memlab.captions import build

    how = (f"`python -m index_builder captions --index {index}` embeds the added captions alone with the index's "
           f"CLIP text tower, or reads them with --text-emb FOLDER (text_emb parts of the added rows)")
    if not (src / "text_emb").is_dir():
        print(f"{index} kept its captions' text vectors, which cover the old items only: {how}", file=sys.stderr)
        return
    try:
        build(index, text_emb=[src], progress=_progress(), log=lambda m: print(m, file=sys.stderr))
    except MemlabError as e:  # the addition stands; its captions wait for the command
        print(f"{index}: the caption vectors were not extended ({e}): {how}", file=sys.stderr)


def _progress():
    from tqdm.auto import tqdm

    return lambda it, desc="", total=None: tqdm(it, desc=desc, total=total, file=sys.stderr, disable=None)


def main(argv=None) -> int:
    return guarded(run, parser().parse_args(argv))
