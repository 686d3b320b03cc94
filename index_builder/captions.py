"""Keep the training captions' CLIP text vectors in an index, so that the app's "captions nearest by text" and
the caption of a prompt's nearest training caption work at any size (``memlab.captions``): one vector per
distinct caption, from the text tower of the index's CLIP descriptor, or from clip-retrieval's ``text_emb``
parts where the embeddings came with them (LAION publishes them beside ``img_emb``). Resumable: a stopped run
keeps its finished blocks. An index built with ``--embeddings`` from a folder that holds ``text_emb`` keeps
them already. An addition (``index_builder add``) keeps them for the old items and extends them from the new
embeddings' ``text_emb`` parts where it has them; else run this after it: it embeds (or reads, from ``--text-emb``
parts of the added rows alone) only the captions the addition brought.

    python -m index_builder captions --index DIR
    python -m index_builder captions --index DIR --text-emb laion_emb/ [--text-emb new_emb/ ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memlab.cli import Parser, guarded
from memlab.errors import MemlabError


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m index_builder captions", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="index folder (with a CLIP descriptor)")
    p.add_argument("--text-emb", action="append", default=[],
                   help="an embeddings folder whose text_emb/text_emb_{i}.npy parts hold the items' text vectors "
                        "(clip-retrieval's layout); repeat it for every folder the index was built and added from, "
                        "in order, or name only the added rows' folders after an addition (default: embed each "
                        "distinct caption the kept vectors lack)")
    p.add_argument("--block", type=int, default=8192, help="captions per block, each a resume point (default 8192)")
    p.add_argument("--max-memory", default="2GB",
                   help="memory budget that picks the FAISS index over more than 100,000 captions (default 2GB)")
    return p


def run(args) -> int:
    from tqdm.auto import tqdm

    from memlab.captions import build

    if args.block < 1:
        raise MemlabError("--block must be at least 1")
    if not (Path(args.index) / "manifest.json").is_file():
        raise MemlabError(f"{args.index} holds no index (no manifest.json)")
    build(args.index, text_emb=args.text_emb, block=args.block, max_memory=args.max_memory,
          progress=lambda it, desc="", total=None: tqdm(it, desc=desc, total=total, file=sys.stderr, disable=None),
          log=lambda m: print(m, file=sys.stderr))
    return 0


def main(argv=None) -> int:
    return guarded(run, parser().parse_args(argv))
