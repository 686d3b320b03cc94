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

    from . import config_arguments

    config_arguments(p, TrainConfig)
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
