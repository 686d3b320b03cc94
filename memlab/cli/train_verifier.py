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

    for f in dataclasses.fields(VerifierTrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "pairs":
            p.add_argument(flag, nargs="+", required=True, help="the .npz files of pairs")
        else:
            typ = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, type=typ, default=f.default, help=f"(default {f.default!r})")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")


def run(args) -> int:
    from tqdm import tqdm

    from ..train_verifier import VerifierTrainConfig, train_verifier
    from . import out_folder

    out_folder(args.out)
    cfg = VerifierTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(VerifierTrainConfig)})
    t0 = time.perf_counter()
    out = train_verifier(cfg.validate(), resume=not args.no_resume, log=lambda m: print(m, file=sys.stderr),
                         progress=lambda it, **k: tqdm(it, file=sys.stderr, disable=None, leave=False, **k))
    took = time.perf_counter() - t0
    if out is None:
        print(f"stopped at epoch {cfg.stop_at} after {took / 60:.1f} min; run again to resume", file=sys.stderr)
    else:
        print(f"wrote {out} (config.json + model.safetensors) in {took / 60:.1f} min", file=sys.stderr)
    return 0
