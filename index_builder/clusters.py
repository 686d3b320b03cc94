"""Keyword views (Memory Triggers paper) for an existing world or index, without rebuilding it:
which training items sit behind a keyword, their clusters of nearly identical images with each
cluster's frequent caption words, and the co-occurrence of named objects.

    python -m index_builder clusters --world DIR --keywords "van gogh,astronaut" [--objects flag]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from memlab.cli import Parser, guarded
from memlab.errors import MemlabError


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m index_builder clusters", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--world", help="world folder (views go to WORLD/keywords)")
    where.add_argument("--index", help="index folder (views go to INDEX/keywords)")
    p.add_argument("--keywords", default=None, help="comma-separated keywords")
    p.add_argument("--keywords-file", default=None, help="file with one keyword per line")
    p.add_argument("--descriptor", default=None, help="descriptor to cluster on (default: the index's)")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine for 'nearly identical' (default: the descriptor's near-duplicate cut)")
    p.add_argument("--objects", default="", help="comma-separated object names for co-occurrence")
    p.add_argument("--label-column", default="objects", help="item column listing objects (comma-separated)")
    p.add_argument("--hide-keyword-words", action="store_true",
                   help="leave the keyword's own words out of the word tables (the paper's Table 1 lists them)")
    return p


def keywords_from(args) -> list[str]:
    kws = [k.strip() for k in (args.keywords or "").split(",") if k.strip()]
    if args.keywords_file:
        f = Path(args.keywords_file)
        if not f.is_file():
            raise MemlabError(f"keywords file {f} does not exist")
        kws += [line.strip() for line in f.read_text().splitlines() if line.strip()]
    if not kws:
        raise MemlabError("no keywords given (--keywords or --keywords-file)")
    return list(dict.fromkeys(kws))


def compute(args) -> int:
    from memlab.index import TrainingIndex
    from memlab.keywords import keyword_view, save_view
    from memlab.world import World

    if args.world and not (Path(args.world) / "world.json").is_file() and (Path(args.world) / "manifest.json").is_file():
        args.index, args.world = args.world, None  # an index folder given as --world: unambiguous, accept it
    if args.world:
        world = World.load(args.world)
        index, folder = world.index(), Path(args.world) / "keywords"
    else:
        index, folder = TrainingIndex.load(args.index), Path(args.index) / "keywords"
    if args.threshold is not None and not 0 < args.threshold <= 1:
        raise MemlabError("--threshold must be in (0, 1]")
    objects = [o.strip() for o in args.objects.split(",") if o.strip()]
    for kw in keywords_from(args):
        t0 = time.perf_counter()
        v = keyword_view(index, kw, args.descriptor, args.threshold, objects, args.label_column,
                         hide_keyword=getattr(args, "hide_keyword_words", False))
        p = save_view(folder, v)
        real = [c for c in v["clusters"] if not c["miscellaneous"]]
        print(f"{kw!r}: {v['n_before']} captions, {v['n_after']} within 77 tokens, {len(real)} clusters "
              f"(largest {real[0]['size'] if real else 0}), miscellaneous {v['miscellaneous_size']}"
              + "".join(f"; {o} (not named in the caption): {d['keyword_share']:.1%} of the keyword's distinct images vs "
                          f"{d['overall_share']:.1%} of all distinct images"
                        for o, d in v["objects"].items() if d["keyword_share"] is not None)
              + f" -> {p} ({time.perf_counter() - t0:.2f}s)", file=sys.stderr)
    if args.world:
        from memlab.world import seal_world

        seal_world(args.world)  # the new views join the world's checksums
    return 0


def main(argv=None) -> int:
    return guarded(compute, parser().parse_args(argv))
