"""Keep the caption words (``memlab.words``: each word's item rows) in an index built before memlab's builds wrote
them, so that the app loads them at start instead of building them there (about 10 s a million captions on a
2-core machine). Builds and additions write them themselves.

    python -m index_builder words --index DIR
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from memlab.cli import Parser, guarded
from memlab.errors import MemlabError


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m index_builder words", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="index folder")
    return p


def compute(args) -> int:
    from tqdm.auto import tqdm

    from memlab.index import TrainingIndex
    from memlab.indexfiles import MANIFEST, atomic_save, sha256
    from memlab.words import CHUNK, MAX_ITEMS, CaptionWords, caption_blocks

    folder = Path(args.index)
    if not (folder / MANIFEST).is_file():
        raise MemlabError(f"{folder} holds no index (no {MANIFEST})")
    index = TrainingIndex.load(folder)  # (every file checked)
    n = int(index.manifest["item_count"])
    if n > MAX_ITEMS:
        raise MemlabError(f"{folder} holds {n:,} items; caption words are built in memory up to {MAX_ITEMS:,}")
    blocks = tqdm(caption_blocks(folder / index.manifest["metadata"]), desc="caption words",
                  total=-(-n // CHUNK), file=sys.stderr, disable=None)
    entry = CaptionWords.build(blocks).save(folder)  # (files outside the manifest until it names them)
    m = json.loads((folder / MANIFEST).read_text())
    m["words"] = entry
    m.setdefault("files", {}).update({f: sha256(folder / f) for f in entry["files"].values()})
    atomic_save(folder / MANIFEST, lambda t: t.write_text(json.dumps(m, indent=2)))
    print(f"wrote the caption words of {folder}: {entry['words']:,} words, {entry['postings']:,} postings",
          file=sys.stderr)
    return 0


def main(argv=None) -> int:
    return guarded(compute, parser().parse_args(argv))
