"""The uploads' partial-copy threshold of an index built before the agreement share compared the images' detail
(issue 32; docs/methods.md, "Local memorization"): its training items against their nearest item of another
distinct image, at 1% false positives, written into the index's manifest (its files are unchanged). An index
whose threshold was calibrated on another agreement gives uploads no ``template copy`` verdict until then.

    python -m index_builder agreement --index DIR [--calib-n 500] [--fpr 0.01]

A world with a model calibrates it on its own generations instead: ``build-world --refresh --no-eval`` (the
built-in world) or ``world create`` run again (a world made from a list; its other stages are kept).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memlab.cli import Parser, guarded
from memlab.errors import MemlabError


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m index_builder agreement", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="index folder")
    p.add_argument("--calib-n", type=int, default=500, help="distinct training items compared (default 500)")
    p.add_argument("--fpr", type=float, default=0.01, help="false-positive rate of the threshold (default 0.01)")
    return p


def compute(args) -> int:
    from memlab.index import calibrate_agreement

    if not 0 < args.fpr < 1 or args.calib_n < 1:
        raise MemlabError("--fpr must be in (0, 1) and --calib-n at least 1")
    folder = Path(args.index)
    if not (folder / "manifest.json").is_file():
        raise MemlabError(f"{folder} holds no index (no manifest.json)")
    cal = calibrate_agreement(folder, calib_n=args.calib_n, fpr=args.fpr)
    if cal is None:
        raise MemlabError(f"{folder} keeps no training images (or a single distinct one): there is nothing to "
                          f"calibrate the agreement on")
    print(f"agreement threshold {cal['threshold']:.3f} ({cal['source']})", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    return guarded(compute, parser().parse_args(argv))
