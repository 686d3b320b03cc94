"""Does a frozen, contrastively pretrained text encoder give the world's model a bright ending (issue 32)?

Stable Diffusion reads its prompt through a frozen CLIP text encoder, whose end token carries the sentence:
CLIP's contrastive loss is read there. The built-in world's text encoder is trained with its UNet from nothing,
on the diffusion loss alone, so nothing asks its end token to summarize the prompt. This script:
1. trains the world's text encoder CLIP's way (symmetric InfoNCE against a small image tower, learned temperature,
   the text read at the end token) on another world's scenes (``WorldSpec(seed=1)``: it never sees the world's
   training set), and prints its text-to-image retrieval on the world's own distinct images;
2. trains a fresh UNet of the world's config with that encoder frozen, as SD's was, on the world's training set
   with the world's own VAE and the build's settings (``memlab.train``, ``train_text_encoder`` False);
3. prints ``bench_bright_ending`` for the world's model and for the new one (whether the new model memorizes:
   ``memlab run --model OUT/train/pipeline --index WORLD/index``).
Each stage resumes (the UNet's training from its checkpoints). ``--objects-last`` rewords every scene caption of
both training sets, and the probes, so the objects come last (``bench_bright_ending.objects_last``): the world's
captions name the background last, and a causal text encoder's end token follows the last words most.

    python -m benchmarks.bench_frozen_text --out runs/frozen_text [--world assets/world] [--steps 2500]
        [--objects-last]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def image_tower(dim: int):
    """A small conv net, 64 x 64 RGB to ``dim`` (CLIP's image side, at the world's scale)."""
    import torch.nn as nn

    def block(i, o):
        return [nn.Conv2d(i, o, 3, stride=2, padding=1), nn.GroupNorm(8, o), nn.SiLU()]
    return nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), *block(128, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, dim))


def pretrain_text_encoder(data: Path, out: Path, steps: int, batch: int = 128, seed: int = 0, log=print):
    """CLIP's contrastive pretraining of a fresh ``world`` text encoder on an image+caption table (``data``):
    each step a batch of distinct images with one of their captions, the symmetric InfoNCE of their embeddings
    (the text's at its end token through a linear projection), temperature learned from 0.07."""
    import numpy as np
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from memlab.pipelines import make_pipeline
    from memlab.train import image_tensor

    rows = pd.read_parquet(data)
    captions = rows.groupby("file")["caption"].agg(list).to_dict()
    files = sorted(captions)
    images = image_tensor(files, data.parent, 64)
    pipe = make_pipeline("world", seed=seed)
    text, tok = pipe.text_encoder, pipe.tokenizer
    dim = text.config.hidden_size
    torch.manual_seed(seed)
    tower, proj = image_tower(dim), torch.nn.Linear(dim, dim, bias=False)
    logit_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
    params = list(text.parameters()) + list(tower.parameters()) + list(proj.parameters()) + [logit_scale]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    rng = np.random.default_rng(seed)
    text.train()
    t0 = time.time()
    for step in range(steps):
        pick = rng.choice(len(files), size=min(batch, len(files)), replace=False)
        caps = [captions[files[i]][rng.integers(len(captions[files[i]]))] for i in pick]
        ids = tok(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        t = F.normalize(proj(text(ids).pooler_output), dim=-1)
        v = F.normalize(tower(images[torch.as_tensor(pick)]), dim=-1)
        logits = logit_scale.exp().clamp(max=100) * t @ v.T
        target = torch.arange(len(pick))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"  step {step}: loss {loss.item():.3f}, temperature {1 / logit_scale.exp().item():.3f}")
    text.eval()
    out.mkdir(parents=True, exist_ok=True)
    text.save_pretrained(out / "text_encoder")
    from safetensors.torch import save_file

    save_file({**{f"tower.{k}": v for k, v in tower.state_dict().items()},
               **{f"proj.{k}": v for k, v in proj.state_dict().items()}}, out / "towers.safetensors")
    (out / "pretrain.json").write_text(json.dumps({"steps": steps, "batch": batch, "final_loss": loss.item(),
                                                   "seconds": time.time() - t0}))


def retrieval(out: Path, data: Path) -> float:
    """Text-to-image top-1 over the distinct images of a table: each image's first caption against every image."""
    import pandas as pd
    import torch
    import torch.nn.functional as F
    from transformers import CLIPTextModel

    from memlab.pipelines import clip_tokenizer
    from memlab.train import image_tensor

    rows = pd.read_parquet(data).drop_duplicates("file")
    text = CLIPTextModel.from_pretrained(out / "text_encoder").eval()
    dim = text.config.hidden_size
    tower, proj = image_tower(dim), torch.nn.Linear(dim, dim, bias=False)
    from safetensors.torch import load_file

    state = load_file(out / "towers.safetensors")
    tower.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("tower.")})
    proj.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("proj.")})
    tower.eval()
    with torch.no_grad():
        ids = clip_tokenizer()(rows["caption"].tolist(), padding="max_length", max_length=77, truncation=True,
                               return_tensors="pt").input_ids
        t = F.normalize(proj(text(ids).pooler_output), dim=-1)
        v = F.normalize(tower(image_tensor(rows["file"].tolist(), data.parent, 64)), dim=-1)
    return float(((t @ v.T).argmax(1) == torch.arange(len(rows))).float().mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--world", default=str(ROOT / "assets" / "world"))
    ap.add_argument("--steps", type=int, default=2500, help="UNet training steps (the world's: 2500)")
    ap.add_argument("--text-steps", type=int, default=1500, help="contrastive pretraining steps")
    ap.add_argument("--seeds", default="10-13")
    ap.add_argument("--objects-last", action="store_true", help="scene captions and probes with the objects last")
    a = ap.parse_args(argv)
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from tqdm import tqdm

    from benchmarks import bench_bright_ending
    from memlab.buildworld import _Stages, _training_set
    from memlab.pipelines import make_pipeline
    from memlab.train import TrainConfig, data_hash, train
    from memlab.worldgen import WorldSpec

    out, world = Path(a.out), Path(a.world)
    st = _Stages(out, print)
    other = _training_set(WorldSpec(seed=1), out / "pretrain_data", st)
    rows = _training_set(WorldSpec(seed=0), out / "world_data", st)
    card = json.loads((world / "card.json").read_text())
    if card["train"].get("data_hash") != data_hash(rows, out / "world_data"):
        raise SystemExit("the regenerated training set differs from the one the world's model was trained on")
    table = "train.parquet"
    if a.objects_last:  # the same rows, each scene caption reworded
        import pandas as pd

        table = "train_objects_last.parquet"
        for d in ("pretrain_data", "world_data"):
            t = pd.read_parquet(out / d / "train.parquet")
            t["caption"] = t["caption"].map(bench_bright_ending.objects_last)
            t.to_parquet(out / d / table)
        print(f"   captions with the objects last, e.g. {bench_bright_ending.objects_last(rows['caption'].iloc[0])!r}")
    if not (out / "text" / "pretrain.json").is_file():
        print(f"1. the text encoder, CLIP's way, on another world's {other['file'].nunique()} images")
        pretrain_text_encoder(out / "pretrain_data" / table, out / "text", a.text_steps)
    print(f"   text-to-image top-1 on the world's {rows['file'].nunique()} distinct images (never seen): "
          f"{retrieval(out / 'text', out / 'world_data' / table):.1%} (chance "
          f"{1 / rows['file'].nunique():.2%})")
    init = out / "init"
    if not (init / "model_index.json").is_file():
        from transformers import CLIPTextModel

        shipped = StableDiffusionPipeline.from_pretrained(world / "model", safety_checker=None,
                                                          requires_safety_checker=False)
        fresh = make_pipeline("world", seed=0)
        pipe = StableDiffusionPipeline(vae=AutoencoderKL.from_pretrained(world / "model" / "vae",
                                                                         torch_dtype=torch.float32),
                                       text_encoder=CLIPTextModel.from_pretrained(out / "text" / "text_encoder"),
                                       tokenizer=shipped.tokenizer, unet=fresh.unet, scheduler=shipped.scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(init)
    print("2. a fresh UNet with that text encoder frozen, on the world's training set")
    t0 = time.time()
    cfg = TrainConfig(data=str(out / "world_data" / table), out=str(out / "train"), pipeline=str(init),
                      steps=a.steps, batch_size=32, seed=0, save_dtype="fp16", deterministic=False,
                      train_text_encoder=False)
    model = train(cfg, progress=lambda it, **kw: tqdm(it, mininterval=30, **kw))
    print(f"   trained in {time.time() - t0:.0f}s (0 if it was there)")
    print("3. the bright ending, the world's model then the new one")
    bench_bright_ending.main(["--world", str(world), "--seeds", a.seeds])
    bench_bright_ending.main(["--world", str(world), "--seeds", a.seeds, "--model", str(model)]
                             + (["--objects-last"] if a.objects_last else []))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
