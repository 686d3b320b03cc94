"""Fetch the training images a URL listing names into webdataset shards, with img2dataset.

    python -m index_builder download --urls FILE --out SHARDS [--image-size 512] [--processes 2]

FILE: NeMo's CSV (``Caption;URL;...``), Wen's JSONL (caption, url, index), a parquet/CSV with url and
caption columns (LAION's ``URL``/``TEXT``), or text with one URL a line. Each distinct URL is fetched once.

Resumable: img2dataset writes a ``_stats.json`` per finished shard and skips those shards on the next run
(the listing is written to ``SHARDS/_fetch/urls.parquet`` once, so the shards stay the same). Every URL's
outcome is recorded: ``SHARDS/_fetch/report.json`` counts them by reason (http 404, unreachable host,
timeout, not an image, ...) and ``SHARDS/_fetch/failures.csv`` lists each failed URL with its reason; a
failure is never fatal.

What is kept: a JPEG no larger than ``--image-size`` keeps its original bytes (img2dataset's
``skip_reencode`` with ``resize_only_if_bigger``); every other image (a PNG, a WebP, ...) is re-encoded as JPEG
by img2dataset even when it is not resized (tests/test_hostile.py checks both), and a larger one is resized
to that side keeping its aspect ratio.

What is reached (``memlab.safefetch``): http(s) URLs only, after every redirect; loopback, private,
link-local and multicast addresses are refused (``--allow-private-addresses`` for a local mirror); each URL
has ``--deadline`` seconds in all (``--timeout`` bounds each socket read) and a body of at most
``--max-bytes``; each refusal is recorded with its reason.
"""
from __future__ import annotations

import os
import sys

from memlab.cli import Parser, guarded, out_folder
from memlab.errors import MemlabError
from memlab.fetch import FETCH, fetch, reason, report, summary, url_table  # noqa: F401 - this verb's library
from memlab.safefetch import add_policy_arguments


def parser():
    import argparse

    p = Parser(prog="python -m index_builder download", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--urls", required=True, help="URL listing: NeMo CSV, Wen JSONL, parquet/CSV, or text")
    p.add_argument("--out", required=True, help="folder for the webdataset shards and the report")
    p.add_argument("--image-size", type=int, default=512, help="longest side kept (larger images are resized)")
    p.add_argument("--processes", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--threads", type=int, default=32, help="download threads per process")
    p.add_argument("--timeout", type=float, default=10, help="seconds per URL")
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    add_policy_arguments(p)
    return p


def run(args) -> int:
    from memlab.prompts import read_prompt_list

    out = out_folder(args.out)
    for name in ("image_size", "processes", "threads", "shard_size"):
        if getattr(args, name) < 1:
            raise MemlabError(f"--{name.replace('_', '-')} must be at least 1")
    if not args.timeout > 0 or args.retries < 0:
        raise MemlabError("--timeout must be positive and --retries at least 0")
    if not args.deadline > 0 or args.max_bytes < 1:
        raise MemlabError("--deadline must be positive and --max-bytes at least 1")
    urls = url_table(read_prompt_list(args.urls))
    rep = fetch(urls, out, image_size=args.image_size, processes=args.processes, threads=args.threads,
                timeout=args.timeout, retries=args.retries, shard_size=args.shard_size,
                allow_private_addresses=args.allow_private_addresses, deadline=args.deadline, max_bytes=args.max_bytes)
    print(summary(rep, out), file=sys.stderr)
    return 0


def main(argv=None) -> int:
    return guarded(run, parser().parse_args(argv))
