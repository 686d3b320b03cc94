"""Keyword views (Memory Triggers paper) for an existing world or index, without rebuilding it:
which training items sit behind a keyword, their clusters of nearly identical images with each
cluster's frequent caption words, the co-occurrence of named objects, and whose works they are.

    python -m index_builder clusters --world DIR --keywords "van gogh,astronaut" [--objects flag]
    python -m index_builder clusters --world DIR --keywords "almond + blossoming,sunflower" --related "van gogh"
"""
from __future__ import annotations

import argparse
import sys
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
    p.add_argument("--related", default="",
                   help="whose works: the share of each keyword's items in the clusters of this keyword's works "
                        "(Memory Triggers' 52%% of 'almond + blossoming' in Van Gogh's clusters), kept in each view")
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
    from memlab.keywords import write_views
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
    saved = write_views(index, folder, keywords_from(args), args.descriptor, args.threshold, objects,
                        args.label_column, hide_keyword=getattr(args, "hide_keyword_words", False),
                        log=lambda m: print(m, file=sys.stderr), related=getattr(args, "related", ""))
    if not args.world:
        from memlab.indexfiles import seal_files

        seal_files(args.index, [p.relative_to(Path(args.index)) for p in saved])  # the views join its checksums
    if args.world:
        from memlab.world import seal_world

        seal_world(args.world)  # the new views join the world's checksums
    return 0


def main(argv=None) -> int:
    return guarded(compute, parser().parse_args(argv))
