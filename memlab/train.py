"""The trainer: trains (from a named config) or fine-tunes (a diffusers folder or Hub id) a text-to-image
pipeline on an image+caption table, with the controls of Somepalli et al. 2023 (paper 000, DCR code):

- duplication: ``ddf`` (sampling weight of duplicated items) on a ``dup_share`` of the items, ``full``
  (same caption per copy) or ``partial`` (a different caption per draw, from ``alt_captions``);
- caption style: ``original`` / ``class`` ("An image of <class>", the ``class`` column) / ``fixed`` (one
  caption for all) / ``random`` (6 random CLIP tokens per distinct image, shared by its duplicate rows);
- text encoder frozen or trained;
- training-time mitigations, each with a probability per sample: multiple captions (``mc``), Gaussian
  noise on the text embedding (``gni``), caption replaced by 4 random tokens (``rand_caption``),
  2 random tokens inserted (``rand_tokens``), 2 caption words repeated (``word_rep``).

Readable top to bottom: config -> data -> (VAE when training from scratch) -> latents -> loop ->
checkpoints -> pipeline + loss log + run card. Each step draws its randomness from a generator seeded by
(seed, step), so a resumed run continues exactly where the checkpoint left it. A checkpoint records the settings
its weights depend on (the data by its checksum; ``recorded_settings``), and a run with others is refused it
(``check_resumable``; the descriptor's and the verification network's trainers do the same).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import MemlabError
from .mitigations import insert_words, random_clip_tokens


@dataclass
class TrainConfig:
    data: str = ""                  # CSV/parquet with file + caption columns
    images: str = ""                # folder the files are relative to (default: the table's folder)
    out: str = "runs/train"
    pipeline: str = "world"         # a config of memlab.pipelines (from scratch), or a folder / Hub id
    steps: int = 2500
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    seed: int = 0
    train_text_encoder: bool = True
    uncond_prob: float = 0.1        # caption dropout, so classifier-free guidance works
    vae_steps: int = 800            # only when training from scratch
    vae_lr: float = 1e-3
    ddf: int = 1
    dup_share: float = 0.0
    dup_mode: str = "full"          # full | partial
    caption_style: str = "original"  # original | class | fixed | random
    fixed_caption: str = "an image"
    mc: float = 0.0                 # probability: multiple captions (alt_captions)
    gni: float = 0.0                # probability: Gaussian noise on the text embedding
    gni_lam: float = 0.1
    rand_caption: float = 0.0       # probability: replace the caption by 4 random tokens
    rand_tokens: float = 0.0        # probability: insert 2 random tokens
    word_rep: float = 0.0           # probability: repeat 2 caption words
    checkpoint_every: int = 500
    log_every: int = 25
    save_dtype: str = "fp32"        # fp32 | fp16 (weights as stored)
    deterministic: bool = True      # on a CPU, without oneDNN kernels: a resumed run equals an uninterrupted one bit
    #                                 for bit with the same torch threads (another count sums in another order)
    #                                 (oneDNN's convolutions are not; with them 12 steps of the world's UNet
    #                                 took 12.3 s against 17.4 s without, on the 2-core machine)
    threads: int = 0                # torch threads (0: torch's default)
    device: str = "cpu"             # cpu | cuda | cuda:N: where the model trains (the randomness is drawn on
                                    # the CPU either way, so a run's batches, noise and captions are the same)
    stop_at: int = 0                # end this invocation after this step (0: run to the end); resume later

    def validate(self) -> "TrainConfig":
        if self.dup_mode not in ("full", "partial"):
            raise MemlabError("dup_mode must be full or partial")
        if self.caption_style not in ("original", "class", "fixed", "random"):
            raise MemlabError("caption_style must be original, class, fixed or random")
        for f in ("uncond_prob", "dup_share", "mc", "gni", "rand_caption", "rand_tokens", "word_rep"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise MemlabError(f"{f} is a probability in [0, 1]")
        if self.ddf < 1 or self.steps < 1 or self.batch_size < 1:
            raise MemlabError("ddf, steps and batch_size must be >= 1")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise MemlabError(f"device must be cpu or cuda (cuda:N), not {self.device!r}")
        return self


# ------------------------------------------------------------------------------------ data
def load_table(cfg: TrainConfig) -> tuple[pd.DataFrame, Path]:
    from .tables import read_table, require_columns

    path = Path(cfg.data)
    df = read_table(path, "training table")
    require_columns(df, path, ("file", "caption"))
    if cfg.caption_style == "class" and "class" not in df.columns:
        raise MemlabError("caption_style=class needs a 'class' column")
    if (cfg.dup_mode == "partial" and cfg.dup_share > 0 or cfg.mc > 0) and "alt_captions" not in df.columns:
        raise MemlabError("partial duplication and multiple captions need an 'alt_captions' column (lists)")
    root = Path(cfg.images) if cfg.images else path.parent
    missing = [f for f in df["file"].astype(str) if not (root / f).is_file()]
    if missing:
        raise MemlabError(f"{len(missing)} of the {len(df)} images {path} lists are missing under {root} "
                          f"(first: {missing[0]}); use --images for their folder")
    return df.reset_index(drop=True), root


def data_hash(df: pd.DataFrame, root: Path) -> str:
    h = hashlib.sha256(pd.util.hash_pandas_object(df[["file", "caption"]], index=False).values.tobytes())
    for f in sorted(set(df["file"])):
        h.update((root / f).read_bytes())
    return h.hexdigest()


def sampling_weights(n: int, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """DCR's duplication control: a dup_share of the items gets sampling weight ddf."""
    dup = np.zeros(n, bool)
    if cfg.dup_share > 0 and cfg.ddf > 1:
        k = int(round(cfg.dup_share * n))
        dup[np.random.default_rng(cfg.seed).choice(n, size=k, replace=False)] = True
    return np.where(dup, float(cfg.ddf), 1.0), dup


def make_caption(row, dup: bool, cfg: TrainConfig, rng: random.Random, tokenizer, item_tokens: dict) -> str:
    """The caption a sample is trained with, after caption style, duplication mode and mitigations."""
    alts = list(row["alt_captions"]) if "alt_captions" in row and row["alt_captions"] is not None else []
    if dup and cfg.dup_mode == "partial" and alts:
        cap = rng.choice(alts)
    elif cfg.mc > 0 and alts and rng.random() < cfg.mc:
        cap = rng.choice([row["caption"]] + alts)
    else:
        cap = row["caption"]
    if cfg.caption_style == "class":
        cap = f"An image of {row['class']}"  # DCR's class-caption template
    elif cfg.caption_style == "fixed":
        cap = cfg.fixed_caption
    elif cfg.caption_style == "random":
        # DCR: a random sequence of 6 tokens per *image*, shared by every duplicate row of that image
        key = str(row["file"]) if "file" in row else str(row.name)
        cap = item_tokens.setdefault(key, " ".join(random_clip_tokens(
            random.Random(cfg.seed * 1_000_003 + zlib.crc32(key.encode())), tokenizer, 6)))
    if cfg.rand_caption and rng.random() < cfg.rand_caption:
        cap = " ".join(random_clip_tokens(rng, tokenizer, 4))
    if cfg.rand_tokens and rng.random() < cfg.rand_tokens:
        cap = insert_words(cap, random_clip_tokens(rng, tokenizer, 2), rng)
    if cfg.word_rep and rng.random() < cfg.word_rep:
        words = [w for w in cap.split(" ") if w]
        if words:
            cap = insert_words(cap, [rng.choice(words) for _ in range(2)], rng)
    if cfg.uncond_prob and rng.random() < cfg.uncond_prob:
        cap = ""
    return cap


def image_tensor(files, root: Path, size: int):
    import torch
    from PIL import Image

    arr = np.stack([np.asarray(Image.open(root / f).convert("RGB").resize((size, size), Image.BICUBIC),
                               np.float32) for f in files])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


# ----------------------------------------------------------------------------- checkpoints
def save_optimizer(opt, path: Path) -> None:
    """AdamW state as safetensors (no pickle): exp_avg / exp_avg_sq / step per parameter index."""
    from safetensors.torch import save_file

    tensors = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            v = v.detach().cpu().clone()
            tensors[f"{i}.{k}"] = v.reshape(-1) if k == "step" else v
    save_file(tensors, str(path))


def load_optimizer(opt, path: Path) -> None:
    from safetensors.torch import load_file

    flat = load_file(str(path))
    sd = opt.state_dict()
    state = {}
    for key, v in flat.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v.reshape(()) if k == "step" else v
    sd["state"] = state
    opt.load_state_dict(sd)


# a training config's settings that say where a run writes and how fast it goes, never what it learns: a resumed run
# may change them
RUN_ONLY = ("out", "stop_at", "threads", "workers", "device", "checkpoint_every", "log_every", "save_dtype")


def recorded_settings(cfg, **inputs) -> dict:
    """What a checkpoint's weights depend on, as it records them: ``cfg``'s settings less ``RUN_ONLY``, with
    ``inputs`` (a checksum of the data, say) in place of the settings that name them."""
    got = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_ONLY}
    return json.loads(json.dumps({**got, **inputs}))


def check_resumable(ck: Path, recorded: dict | None, settings: dict) -> None:
    """A checkpoint is resumed only under the settings it was made with: one made otherwise is refused, since
    resuming it gives weights no uninterrupted run gives. One that records none (written before checkpoints did)
    is taken as it is."""
    if recorded is None:
        return
    other = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
    if other:
        raise MemlabError(f"{ck} was made with other {', '.join(other)}: it is not resumed from; give another --out, "
                          f"or start over with --no-resume")


def latest_checkpoint(out: Path) -> Path | None:
    cks = sorted((p for p in (out / "checkpoints").glob("step-*") if not p.name.endswith(".part")),
                 key=lambda p: int(p.name.split("-")[1]))
    return cks[-1] if cks else None


def _cast(pipe, dtype) -> None:
    """``pipe.to(dtype)`` without diffusers' warning for each model that its modules "should be kept in float32: []"
    (it warns when the list is empty too)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        pipe.to(dtype)
    finally:
        diffusers_logging.set_verbosity(level)


# ------------------------------------------------------------------------------------ train
def train(cfg: TrainConfig, resume: bool = True, progress=None, command: str | None = None) -> Path:
    """Train; returns the folder of the final pipeline (``out/pipeline``), or None when ``stop_at``
    ended this invocation early (a checkpoint is written there). ``command``: the command line that asked for
    it (the run card's; ``memlab train`` passes its own arguments). With ``cfg.deterministic`` on a CPU, oneDNN
    is off for the run (its kernels gave a resumed run other low bits than an uninterrupted one)."""
    import torch

    exact = cfg.deterministic and not cfg.device.startswith("cuda")
    with warnings.catch_warnings():  # (setting the flags warns of Intel GPUs' TF32, which no run here uses)
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        with torch.backends.mkldnn.flags(enabled=not exact):
            return _train(cfg, resume, progress, command)


def _train(cfg: TrainConfig, resume: bool, progress, command: str | None = None) -> Path:
    import torch
    from diffusers import DDPMScheduler
    from safetensors.torch import load_file, save_file

    from .pipelines import PIPELINE_CONFIGS, make_pipeline

    cfg.validate()
    scratch = cfg.pipeline in PIPELINE_CONFIGS
    if not scratch and "/" not in cfg.pipeline and not Path(cfg.pipeline).exists():  # said before any work
        raise MemlabError(f"--pipeline {cfg.pipeline!r} is neither a config ({', '.join(sorted(PIPELINE_CONFIGS))}), "
                          "a diffusers folder, nor a Hub id (owner/name)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise MemlabError(f"--device {cfg.device}: no CUDA GPU is visible to torch")
    dev = torch.device(cfg.device)
    bar = progress or (lambda it, **kw: it)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    df, root = load_table(cfg)
    dhash = data_hash(df, root)
    settings = recorded_settings(cfg, data=dhash, images="")  # the data by its checksum, not where it lies
    ck = latest_checkpoint(out) if resume else None
    if ck is not None:  # refused before the VAE and the latents are made, not after
        state = json.loads((ck / "state.json").read_text())
        check_resumable(ck, state.get("settings"), settings)

    # 1. the pipeline: a fresh one from a named config, or a pretrained one to fine-tune
    if scratch:
        pipe = make_pipeline(cfg.pipeline, seed=cfg.seed)
    else:
        # trained in fp32 whatever the folder stores (a pipeline saved in fp16, as the built-in world's, would
        # otherwise load its text encoder in fp16 beside an fp32 UNet)
        from .pipeload import load_pipeline

        pipe = load_pipeline(cfg.pipeline, torch.float32, safety_checker=None, requires_safety_checker=False)
    pipe.to(dev)
    unet, text, vae, tok = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
    size = int(vae.config.sample_size) if scratch else int(unet.config.sample_size * pipe.vae_scale_factor)
    files = sorted(set(df["file"]))
    file_row = {f: i for i, f in enumerate(files)}

    # 2. a VAE of its own when training from scratch (L1 reconstruction + a small KL term)
    vae_dir = out / "vae"
    if scratch and (vae_dir / "config.json").is_file() and resume:
        # the trained weights into the VAE built from the same config (from_pretrained would record its
        # folder in the config, and a resumed run would save a different pipeline from an uninterrupted one)
        vae.load_state_dict(load_file(vae_dir / "diffusion_pytorch_model.safetensors"))
        vae.register_to_config(scaling_factor=json.loads((vae_dir / "config.json").read_text())["scaling_factor"])
        print(f"[train] VAE of {vae_dir} (trained before), scaling factor {vae.config.scaling_factor!r}", file=sys.stderr)
    elif scratch:
        images = image_tensor(files, root, size)
        vopt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
        vae.train()
        loss = torch.tensor(float("nan"))
        for step in bar(range(cfg.vae_steps), desc="train VAE"):
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            x = images[torch.randint(0, len(images), (min(cfg.batch_size, len(images)),), generator=g)].to(dev)
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(dev)
            rec = vae.decode(z).sample
            loss = (rec - x).abs().mean() + 1e-6 * post.kl().mean()
            vopt.zero_grad()
            loss.backward()
            vopt.step()
        vae.eval()
        rec_l1 = float(loss.detach())
        with torch.no_grad():
            std = torch.cat([vae.encode(images[i:i + 64].to(dev)).latent_dist.mean
                             for i in range(0, len(images), 64)]).std()
        vae.register_to_config(scaling_factor=float(1.0 / std))
        tmp = vae_dir.with_name(vae_dir.name + ".tmp")  # saved whole, then renamed: never half a VAE
        shutil.rmtree(tmp, ignore_errors=True)
        vae.save_pretrained(tmp)
        shutil.rmtree(vae_dir, ignore_errors=True)
        os.replace(tmp, vae_dir)
        (out / "vae_loss.txt").write_text(f"final VAE loss (L1 + KL) {rec_l1:.4f}\n")
        print(f"[train] VAE trained: final loss {rec_l1:.4f}, scaling factor {vae.config.scaling_factor!r} "
              f"({torch.get_num_threads()} torch threads)", file=sys.stderr)  # (other threads, other low bits)
    pipe.vae = vae
    vae.requires_grad_(False)

    # 3. latents of every distinct image, once (posterior mean and std, sampled per step)
    images = image_tensor(files, root, size)
    with torch.no_grad():
        dists = [vae.encode(images[i:i + 64].to(dev)).latent_dist for i in range(0, len(images), 64)]
    lat_mean = torch.cat([d.mean for d in dists])
    lat_std = torch.cat([d.std for d in dists])
    scale = float(vae.config.scaling_factor)
    del images

    # 4. optimizer, schedule, resume
    unet.train()
    text.train(cfg.train_text_encoder)
    text.requires_grad_(cfg.train_text_encoder)
    params = list(unet.parameters()) + (list(text.parameters()) if cfg.train_text_encoder else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)

    def lr_at(step):  # linear warm-up, then cosine to 10%
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    weights, dup = sampling_weights(len(df), cfg)
    wt = torch.tensor(weights / weights.sum())
    start = 0
    if ck is not None:
        unet.load_state_dict(load_file(str(ck / "unet.safetensors"), device=str(dev)))
        text.load_state_dict(load_file(str(ck / "text_encoder.safetensors"), device=str(dev)))
        load_optimizer(opt, ck / "optimizer.safetensors")
        start = state["step"]
    log_path = out / "loss.csv"
    if start == 0:
        log_path.write_text("step,loss,lr,elapsed_s\n")
    item_tokens: dict = {}
    running = []

    # 5. the loop
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    for step in bar(range(start, end), desc="train UNet", initial=start, total=cfg.steps):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 10_000_000 + step)
        rng = random.Random(cfg.seed * 1_000_003 + step)
        idx = torch.multinomial(wt, cfg.batch_size, replacement=True, generator=g)
        rows = [df.iloc[int(i)] for i in idx]
        captions = [make_caption(r, bool(dup[int(i)]), cfg, rng, tok, item_tokens) for r, i in zip(rows, idx)]
        fi = torch.tensor([file_row[r["file"]] for r in rows], device=dev)
        latents = (lat_mean[fi] + lat_std[fi] * torch.randn(lat_mean[fi].shape, generator=g).to(dev)) * scale
        noise = torch.randn(latents.shape, generator=g).to(dev)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=g).to(dev)
        noisy = noise_sched.add_noise(latents, noise, t)
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(dev)
        with torch.set_grad_enabled(cfg.train_text_encoder):
            emb = text(ids)[0]
        if cfg.gni:
            mask = (torch.rand(len(idx), generator=g) < cfg.gni).float()[:, None, None].to(dev)
            emb = emb + mask * cfg.gni_lam * torch.randn(emb.shape, generator=g).to(dev)
        pred = unet(noisy, t, encoder_hidden_states=emb).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            with open(log_path, "a") as f:
                f.write(f"{step + 1},{np.mean(running):.5f},{lr_at(step):.6g},{time.time() - t_start:.1f}\n")
            running = []
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 in (cfg.steps, end):
            ck = out / "checkpoints" / f"step-{step + 1}"
            part = ck.with_name(ck.name + ".part")  # written whole, then renamed: a kill leaves no half checkpoint
            shutil.rmtree(part, ignore_errors=True)
            part.mkdir(parents=True)
            save_file({k: v.contiguous().cpu() for k, v in unet.state_dict().items()}, str(part / "unet.safetensors"))
            save_file({k: v.contiguous().cpu() for k, v in text.state_dict().items()},
                      str(part / "text_encoder.safetensors"))
            save_optimizer(opt, part / "optimizer.safetensors")
            (part / "state.json").write_text(json.dumps({"step": step + 1, "settings": settings}))
            shutil.rmtree(ck, ignore_errors=True)
            os.replace(part, ck)

    if end < cfg.steps:
        return None  # stopped early on purpose: resume with the same config

    # 6. the pipeline, the loss log, the run card
    unet.eval()
    text.eval()
    final = out / "pipeline"
    pipe.to("cpu")
    if cfg.save_dtype == "fp16":
        _cast(pipe, torch.float16)
    backend = getattr(tok, "backend_tokenizer", None)  # a fast tokenizer saves its last call's padding and
    if backend is not None:  # truncation: none, so a run resumed at its last checkpoint (no call) saves the same
        backend.no_truncation()
        backend.no_padding()
    pipe.save_pretrained(final, safe_serialization=True)
    if cfg.save_dtype == "fp16":
        _cast(pipe, torch.float32)
    losses = pd.read_csv(log_path)
    card = {"config": dataclasses.asdict(cfg), "data_hash": dhash, "items": len(df), "distinct_images": len(files),
            "duplicated_items": int(dup.sum()), "seed": cfg.seed, "steps": cfg.steps, "resumed_from": start,
            "final_loss": float(losses["loss"].iloc[-1]) if len(losses) else None,
            "first_loss": float(losses["loss"].iloc[0]) if len(losses) else None,
            "train_seconds": time.time() - t_start,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "text_encoder_parameters": sum(p.numel() for p in text.parameters())}
    (out / "run_card.json").write_text(json.dumps(card, indent=2))
    return final
