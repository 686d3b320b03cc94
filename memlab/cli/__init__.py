"""memlab's command line: one module per verb (``memlab/cli/<verb>.py``), each with
``add_arguments(parser)`` and ``run(args) -> int``. Errors meant for the user exit 2 with a message."""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import MemlabError

VERBS = {
    "match": ("memlab.cli.match", "match images against a training index"),
    "run": ("memlab.cli.run", "generate over seeds (with mitigations) and match against a world"),
    "train": ("memlab.cli.train", "train or fine-tune a text-to-image pipeline (duplication controls)"),
    "train-descriptor": ("memlab.cli.train_descriptor", "train memlab's own copy-detection descriptor"),
    "build-world": ("memlab.cli.build_world", "build the built-in world from nothing"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memlab", description="memlab: training-data "
                                     "memorization in text-to-image diffusion models")
    sub = parser.add_subparsers(dest="verb", required=True)
    modules = {}
    for verb, (modname, help_) in VERBS.items():
        mod = importlib.import_module(modname)
        p = sub.add_parser(verb, help=help_, description=(mod.__doc__ or help_).strip())
        mod.add_arguments(p)
        modules[verb] = mod
    args = parser.parse_args(argv)
    return guarded(modules[args.verb].run, args)


def guarded(fn, args) -> int:
    """Run a verb; user errors print one clear line and exit 2, never a traceback."""
    try:
        return int(fn(args) or 0)
    except MemlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
