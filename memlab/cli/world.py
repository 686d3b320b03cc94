"""Worlds from published prompt lists.

    python -m memlab world create --model CompVis/stable-diffusion-v1-4 \\
        --prompts nemo_memorized_laion_prompts.csv --controls nemo_unmemorized_laion_prompts.csv \\
        --descriptor sscd,clip --out worlds/sd14-nemo

fetches the training images the prompts name (img2dataset into webdataset shards; failures are counted
and listed, never fatal), indexes them with any further --training source, and writes the world: its
probes (labels: known memorized verbatim / template, control; the list's published SSCD figures), keyword
views over the training captions, and world.json with the model's sampling defaults. Run the same command
again to resume: fetched shards are not fetched again and an unchanged index is not rebuilt.
"""
from __future__ import annotations

import os
import sys

from . import device


def add_arguments(p):
    from ..safefetch import add_policy_arguments

    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("create", help="a world from a prompt list (fetch, index, probes, keyword views)",
                       description=__doc__.strip(), formatter_class=p.formatter_class)
    c.add_argument("--model", required=True, help="the pipeline: Hugging Face Hub id or local diffusers folder")
    c.add_argument("--revision", default=None,
                   help="the Hub id's branch, tag or commit (default: main); world.json records the commit")
    c.add_argument("--prompts", required=True,
                   help="prompt list: NeMo CSV, Wen JSONL, MemAttn text, or parquet/CSV with caption (+ url)")
    c.add_argument("--controls", default=None, help="a list of unmemorized control prompts (same formats)")
    c.add_argument("--training", action="append", default=[],
                   help="a further training source, repeatable: webdataset shards, an image folder or a listing")
    c.add_argument("--descriptor", default="sscd,clip",
                   help="index descriptors, comma-separated; the first gives the verdict (default sscd,clip)")
    c.add_argument("--weights", default=None, help="weights for the first descriptor (e.g. the SSCD TorchScript)")
    c.add_argument("--keywords", default=None,
                   help="comma-separated keywords for the keyword views (default: the 5 commonest caption words)")
    c.add_argument("--name", default=None, help="the world's name (default: the folder's)")
    c.add_argument("--image-size", type=int, default=512, help="longest side of fetched images kept")
    c.add_argument("--processes", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    c.add_argument("--threads", type=int, default=32)
    c.add_argument("--timeout", type=float, default=10, help="seconds per URL")
    c.add_argument("--retries", type=int, default=1)
    add_policy_arguments(c)
    c.add_argument("--calib-n", type=int, default=500, help="items copied to calibrate a descriptor's threshold")
    c.add_argument("--device", default=None, type=device, help="cpu, cuda or cuda:N (default: cuda when available)")
    c.add_argument("--nemo-seeds", type=int, default=10,
                   help="seeds per control prompt for NeMo's statistics (0: none; they need --controls)")
    c.add_argument("--probe-seeds", type=int, default=4,  # createworld.PROBE_SEEDS
                   help="seeds per verbatim and template probe, each scored by the global and the masked verdict "
                        "(probe_scores.csv; 0: none; it needs --controls for the template threshold)")
    c.add_argument("--steps", type=int, default=50, help="the world's sampling steps (SD v1.x's 50 DDIM steps), which "
                                                       "NeMo's statistics, the template threshold and the probe "
                                                       "table are measured at")
    c.add_argument("--guidance", type=float, default=7.5, help="the world's guidance scale (SD v1.x's 7.5)")
    c.add_argument("--out", required=True, help="world folder to write")


def run(args) -> int:
    from tqdm import tqdm

    from ..createworld import create_world
    from ..errors import MemlabError
    from . import out_folder

    out = out_folder(args.out)
    for name in ("image_size", "processes", "threads", "calib_n", "steps"):
        if getattr(args, name) < 1:
            raise MemlabError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("nemo_seeds", "probe_seeds"):
        if getattr(args, name) < 0:
            raise MemlabError(f"--{name.replace('_', '-')} must be at least 0")
    from ..generate import Settings

    Settings(steps=args.steps, guidance=args.guidance).validate()  # before any fetch: the run's own ranges
    descriptors = [d.strip() for d in args.descriptor.split(",") if d.strip()]
    if not descriptors:
        raise MemlabError("--descriptor names no descriptor")
    from ..descriptors import DESCRIPTORS

    unknown = [d for d in descriptors if d not in DESCRIPTORS]
    if unknown:
        raise MemlabError(f"unknown descriptor {unknown[0]!r}; known: {', '.join(DESCRIPTORS)}")
    index_options = {"calib_n": args.calib_n, "weights": args.weights, "device": args.device,
                     "command": args.command}
    keywords = [k.strip() for k in args.keywords.split(",") if k.strip()] if args.keywords is not None else None

    def progress(it, desc="", total=None):
        return tqdm(it, desc=desc, total=total, file=sys.stderr, disable=None)

    create_world(args.model, args.prompts, out, controls=args.controls, training=args.training,
                 descriptors=descriptors, name=args.name, keywords=keywords, image_size=args.image_size,
                 processes=args.processes, threads=args.threads, timeout=args.timeout, retries=args.retries,
                 fetch_policy={"allow_private_addresses": args.allow_private_addresses, "deadline": args.deadline,
                               "max_bytes": args.max_bytes},
                 index_options=index_options, progress=progress, log=lambda m: print(m, file=sys.stderr),
                 nemo_seeds=args.nemo_seeds, probe_seeds=args.probe_seeds, device=args.device,
                 steps=args.steps, guidance=args.guidance, revision=args.revision,
                 command=args.command)  # every option, as the card's built_with
    return 0
