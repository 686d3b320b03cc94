"""Train memlab's verification network (``memlab-verify``: ``memlab.pairnet``, ``memlab.train_verifier``) on
pairs of images (``.npz``: q, t, own; ``benchmarks/bench_learned_verify.py`` makes them). Progress bar, a
checkpoint each epoch (safetensors), resume, loss log, a training card; prints the wall time.

    python -m memlab train-verifier --pairs A.npz B.npz --out assets/memlab-verify
"""
from __future__ import annotations

import dataclasses
import sys
import time


def add_arguments(p):
    from ..train_verifier import VerifierTrainConfig

    from . import config_arguments

    config_arguments(p, VerifierTrainConfig, skip=("pairs",))
    p.add_argument("--pairs", nargs="+", required=True, help="the .npz files of pairs")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")


def run(args) -> int:
    from tqdm import tqdm

    from ..train_verifier import VerifierTrainConfig, train_verifier
    from . import out_folder, trained

    out_folder(args.out)
    cfg = VerifierTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(VerifierTrainConfig)})
    t0 = time.perf_counter()
    out = train_verifier(cfg.validate(), resume=not args.no_resume, log=lambda m: print(m, file=sys.stderr),
                         progress=lambda it, **k: tqdm(it, file=sys.stderr, disable=None, leave=False, **k))
    return trained(out, time.perf_counter() - t0, f"epoch {cfg.stop_at}")
