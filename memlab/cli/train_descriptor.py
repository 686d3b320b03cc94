"""Train memlab's own copy-detection descriptor (``memlab-copy``) from nothing, SSCD's way: InfoNCE over
two strongly augmented views plus the differential-entropy regulariser, on procedural scenes and
scikit-image photo crops that memlab makes or loads itself. Progress bar, checkpoints (safetensors),
resume, loss log, a training card; prints the wall time.

    python -m memlab train-descriptor --out assets/memlab-copy
"""
from __future__ import annotations

import dataclasses
import sys
import time


def add_arguments(p):
    from ..train_descriptor import DescriptorTrainConfig

    from . import config_arguments

    config_arguments(p, DescriptorTrainConfig, skip=("widths",))
    p.add_argument("--widths", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="channels of the stem and each stage, comma-separated "
                        f"(default {','.join(map(str, DescriptorTrainConfig().widths))})")
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p.add_argument("--export-checkpoint", type=int, default=None, metavar="STEP",
                   help="do not train: write the weights and card of checkpoint STEP in --out (0: the latest), "
                        "for a run cut short or a checkpoint chosen on validation copies")


def run(args) -> int:
    from tqdm import tqdm

    from ..train_descriptor import DescriptorTrainConfig, train_descriptor
    from . import out_folder

    if args.out is not None:
        out_folder(args.out)

    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(DescriptorTrainConfig)
          if getattr(args, f.name) is not None}
    cfg = DescriptorTrainConfig(**kw).validate()
    if args.export_checkpoint is not None:
        from ..train_descriptor import export_checkpoint

        print(f"wrote {export_checkpoint(cfg, args.export_checkpoint)} (config.json + model.safetensors)",
              file=sys.stderr)
        return 0
    t0 = time.perf_counter()
    out = train_descriptor(cfg, resume=not args.no_resume,
                           progress=lambda it, **k: tqdm(it, file=sys.stderr, disable=None, **k))
    from . import trained

    return trained(out, time.perf_counter() - t0, f"step {cfg.stop_at}")
