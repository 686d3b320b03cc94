"""Train (from a named pipeline config) or fine-tune (a diffusers folder or Hub id) a text-to-image
pipeline on an image+caption table, with the duplication, caption and training-time mitigation
controls of Somepalli et al. 2023. Progress bar, checkpoints (safetensors), resume, loss log, run card.

    python -m memlab train --data set/train.parquet --pipeline world --steps 2500 --out runs/world
"""
from __future__ import annotations

import dataclasses
import sys


def add_arguments(p):
    from ..train import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default,
                           metavar="BOOL", help=f"(default {f.default})")
        else:
            typ = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, type=typ, default=f.default, help=f"(default {f.default!r})")
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")


def run(args) -> int:
    from tqdm import tqdm

    from ..train import TrainConfig, train
    from . import out_folder

    out_folder(args.out)

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    out = train(cfg, resume=not args.no_resume, command=args.command,
                progress=lambda it, **kw: tqdm(it, file=sys.stderr, disable=None, **kw))
    print(f"wrote {out}", file=sys.stderr)
    return 0
