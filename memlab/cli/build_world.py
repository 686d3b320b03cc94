"""Build the built-in world from nothing: generate its training set (procedural scenes, lighthouses,
scikit-image photo crops; planted duplication), train its model with memlab's trainer, index the
training set (memlab-copy, memlab-copy-global and pixel descriptors, thresholds calibrated on distinct
items, recall on the model's own image-to-image and VAE copies), write probes and a world card with
the measured memorization. Stages resume when interrupted.

    python -m memlab build-world --out assets/world [--train-device cuda]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from . import device


def add_arguments(p):
    p.add_argument("--out", required=True, help="world folder to write (e.g. assets/world)")
    p.add_argument("--seed", type=int, default=0, help="training-set and training seed")
    p.add_argument("--steps", type=int, default=2500, help="UNet training steps")
    p.add_argument("--vae-steps", type=int, default=800, help="VAE training steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-device", default="cpu", type=device, help="where the model trains: cpu or cuda (the rest of the "
                                                         "build runs on the CPU)")
    p.add_argument("--eval-seeds", type=int, default=10, help="seeds per probe for the card's figures and NeMo's "
                                                               "statistics; per prompt for the template threshold "
                                                               "(at most 4)")
    p.add_argument("--sample-steps", type=int, default=None,
                   help="the world's sampling steps (default 30), which every generation the build measures uses")
    p.add_argument("--no-eval", action="store_true",
                   help="skip measuring (the card then has no figures; with --refresh: the card is kept as it is)")
    p.add_argument("--small", action="store_true", help="a small training set and alignment classifier (for tests)")
    p.add_argument("--reuse-model", action="store_true",
                   help="keep the model already in OUT/model (its training set must regenerate to the same hash) "
                        "and rebuild the index, keyword views, probes and card")
    p.add_argument("--refresh", action="store_true",
                   help="keep the model, index and keyword views already in OUT; add what is missing (NeMo's "
                        "statistics, the alignment classifier), calibrate again the thresholds whose definition "
                        "changed, and measure the card again")
    p.add_argument("--descriptor", action="append", default=None,
                   help="index descriptors, the first is the world's verdict (default: memlab-copy, memlab-copy-global, "
                        "pixel)")
    p.add_argument("--ground-truth-items", type=int, default=96,
                   help="held-out items the world's model copies to measure recall on model copies (0: none)")
    p.add_argument("--views-model", default=None,
                   help="the pipeline folder memlab-copy took its decoder views from: its copies of the same items "
                        "are scored too, against the world's model that gave the descriptor none")
    p.add_argument("--verify", choices=["detail", "memlab-verify"], default="detail",
                   help="the verdict's verification stage: the images' detail correlation (the built-in world's, "
                        "memlab-copy's own default) or that plus memlab-verify's probability of a copy (tried for "
                        "issue 30, not the shipped world's: docs/verdict-research.md)")
    p.add_argument("--decoded-index", action="store_true",
                   help="index each training image as the world's VAE returns it, threshold at 0.5%% of that "
                        "background (tried for issue 30, not the shipped world's: docs/descriptor-research.md)")


def run(args) -> int:
    from tqdm import tqdm

    from ..buildworld import WORLD_DESCRIPTORS, build_world
    from ..errors import MemlabError
    from ..worldgen import WorldSpec
    from . import out_folder

    out_folder(args.out)
    for flag in ("steps", "vae_steps", "batch_size", "eval_seeds", "sample_steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise MemlabError(f"--{flag.replace('_', '-')} must be at least 1 (got {getattr(args, flag)})")

    spec = WorldSpec(seed=args.seed)
    alignment = objects = None
    if args.small:
        from ..alignment import SceneNetConfig

        spec = WorldSpec(seed=args.seed, n_scenes=24, crops_per_photo=1, n_lighthouses=10, ddf_high=4,
                         ddf_low=2, per_group=2, n_templates=2, template_ddf=4)
        alignment = SceneNetConfig(width=8, renders=100, epochs=1, held_out=50)
        from ..objects import ObjectNetConfig

        objects = ObjectNetConfig(width=8, renders=100, epochs=1, held_out=50)
    build_world(args.out, spec, train_steps=args.steps, vae_steps=args.vae_steps, batch_size=args.batch_size,
                evaluate=not args.no_eval, eval_seeds=args.eval_seeds, reuse_model=args.reuse_model,
                descriptors=[n.strip() for a in (args.descriptor or [",".join(WORLD_DESCRIPTORS)]) for n in a.split(",")
                             if n.strip()],
                ground_truth_items=args.ground_truth_items, train_device=args.train_device, refresh=args.refresh,
                alignment=alignment, objects=objects, views_model=args.views_model, sample_steps=args.sample_steps,
                decoded_index=args.decoded_index, verify=args.verify,
                command=args.command,  # every option, as the card's built_with
                progress=lambda it, **kw: tqdm(it, file=sys.stderr, disable=None, **kw))
    print(f"wrote {args.out}", file=sys.stderr)
    card = json.loads((Path(args.out) / "card.json").read_text())
    if card.get("measured"):  # what the build keeps of the card's bounds, in the terminal (About this world shows it too)
        from ..cardreport import check_lines

        print("\n".join(check_lines(card["measured"])), file=sys.stderr)
    return 0
