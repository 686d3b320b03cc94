"""Train memlab's copy-detection descriptor (``memlab-copy``) the way SSCD is trained (Pizzi et al. 2022).

Readable top to bottom: config -> image pool -> network -> loop -> checkpoints -> weights + card.

- **Images**: only what memlab makes or loads at build time: procedural scenes and lighthouses drawn by
  ``memlab.worldgen`` (seeds other than the built-in world's), and random crops of the public-domain
  photographs that scikit-image ships (single crops, at most one per photo in a batch, and collages of
  crops of different photos); optionally (``sibling_pairs``) pairs of distinct scenes drawn on the same
  background, put into a batch together as each other's negatives (distinct training images that share
  a pattern are what sets a world's 1% threshold; README: it did not raise recall). Never the shared paintings: they are the held-out test
  (``benchmarks/bench_copy_robustness.py``).
- **Objective**: two strongly augmented views of each image in a batch (``memlab.augment``);
  with ``decoder``, a share of the views starts from a real diffusion model's version of the image: its
  VAE round trip, and for a pipeline folder (the built-in world's model) also image-to-image redraws at
  strengths 0.2-0.5 of some pool scenes (never the world's training images): blur, colour drift and the
  UNet's own drift are what a copy by that model looks like;
  InfoNCE over the 2B views (temperature 0.05) plus the differential-entropy (KoLeo) regulariser
  -mean(log of each descriptor's distance to its nearest other descriptor) with weight 30, SSCD's values.
- **Resumable**: each step draws its images and augmentations from generators seeded by (seed, step);
  checkpoints (weights, optimizer, step) are safetensors + JSON, so a killed training resumes to the same
  weights as an uninterrupted one; a checkpoint made with other settings is refused (``train.check_resumable``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .copynet import CopyNet, CopyNetConfig, to_input
from .errors import MemlabError


@dataclass
class DescriptorTrainConfig:
    out: str = "runs/memlab-copy"
    steps: int = 1500
    batch_size: int = 96            # images per step (2 views each)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    temperature: float = 0.05       # InfoNCE (SSCD: 0.05)
    entropy_weight: float = 30.0    # differential-entropy regulariser (SSCD: 30)
    seed: int = 0
    n_scenes: int = 3000            # procedural scenes in the pool
    n_lighthouses: int = 300
    sibling_pairs: int = 0          # pairs of distinct scenes on the same background (hard negatives; README)
    sibling_share: float = 0.3      # share of a batch's scene slots filled with such pairs
    photo_share: float = 0.5        # share of each batch made from the scikit-image photos (crops, collages)
    crops_per_photo: int = 80       # fixed random crops per scikit-image photo
    decoder: str = ""               # a diffusers VAE (or pipeline folder with vae/): views start from its round trip
    decoder_share: float = 0.35     # chance that a view starts from the decoder's version of its image
    redraws: int = 1000             # with a pipeline as --decoder: pool images it redraws (img2img 0.2-0.5)
    widths: list[int] = field(default_factory=lambda: list(CopyNetConfig().widths))
    dim: int = 128
    input_size: int = 64
    checkpoint_every: int = 100
    log_every: int = 25
    colour_norm: str = ""           # the network normalizes its input's colours first (copynet.COLOUR_NORMS)
    colour_cast: float = 0.0        # chance that a view also gets a strong tint / darkening (augment.colour_cast)
    grayscale: float = 0.2          # chance that a view is grey (SSCD's 0.2; it teaches the network to drop colour)
    layout_weight: float = 0.0      # weight of the layout term: InfoNCE over the layout maps of aligned views
    layout_images: int = 64         # images per step in the layout term (two aligned views each)
    layout_temperature: float = 0.1
    layout_blur: float = 1.0        # the low-pass memlab-copy applies at query time, applied to the layout views
    layout_cast: float = 0.7        # each aligned view's chance of a strong colour cast
    layout_model_share: float = 0.5  # chance that the second aligned view is the model's version of the image
    init: str = ""                  # start from these weights (a memlab-copy folder of the same widths and dim)
    threads: int = 0                # torch threads (0: torch's default)
    device: str = "cpu"             # where the network trains and the decoder redraws ("cuda" on a GPU)
    workers: int = 0                # processes that draw each step's views ahead of the network (0: in line)
    stop_at: int = 0                # end this invocation after this step (0: run to the end); resume later

    def validate(self) -> "DescriptorTrainConfig":
        if self.steps < 1 or self.batch_size < 2:
            raise MemlabError("steps must be >= 1 and batch_size >= 2")
        if not all(0.0 <= x <= 1.0 for x in (self.photo_share, self.decoder_share, self.sibling_share,
                                              self.colour_cast, self.grayscale)):
            raise MemlabError("photo_share, decoder_share, sibling_share, colour_cast and grayscale are shares in [0, 1]")
        if not (0.0 <= self.layout_cast <= 1.0 and 0.0 <= self.layout_model_share <= 1.0):
            raise MemlabError("layout_cast and layout_model_share are shares in [0, 1]")
        if self.layout_weight < 0 or self.layout_images < 2 or self.layout_temperature <= 0:
            raise MemlabError("layout_weight must be >= 0, layout_images >= 2 and layout_temperature > 0")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise MemlabError(f"device must be cpu or cuda (cuda:N), not {self.device!r}")
        if self.workers < 0:
            raise MemlabError("workers must be >= 0 (0: the views are drawn in line)")
        if self.input_size < 16 or len(self.widths) < 2:
            raise MemlabError("input_size must be >= 16 and widths must list at least two layers")
        from .copynet import COLOUR_NORMS

        if self.colour_norm and self.colour_norm not in COLOUR_NORMS:
            raise MemlabError(f"colour_norm must be one of {', '.join(COLOUR_NORMS)} (got {self.colour_norm!r})")
        if self.init and not (Path(self.init) / "model.safetensors").is_file():
            raise MemlabError(f"--init {self.init}: no memlab-copy weights there (model.safetensors)")
        if self.decoder and not Path(self.decoder).exists():
            raise MemlabError(f"--decoder {self.decoder}: no diffusers VAE there (the folder does not exist)")
        return self

    def net_config(self) -> CopyNetConfig:
        return CopyNetConfig(widths=list(self.widths), dim=self.dim, input_size=self.input_size,
                             colour_norm=self.colour_norm)


# ------------------------------------------------------------------------------------- images
EXTRA_PHOTOS = ("retina", "text", "page", "cell", "horse")  # more scikit-image data that loads offline


def load_photos() -> dict:
    """The scikit-image photographs that load without a download (public domain), as RGB images."""
    import skimage.data
    from PIL import Image

    from .worldgen import PHOTOS

    out = {}
    for name in (*PHOTOS, *EXTRA_PHOTOS):
        try:
            arr = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - a photo that needs a download is simply not used
            continue
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        out[name] = Image.fromarray(arr).convert("RGB")
    return out


def make_pool(cfg: DescriptorTrainConfig, captions: bool = False):
    """Procedural scenes and lighthouses (fixed, deterministic from the seed), at 128 px (with their
    captions when asked), then ``sibling_pairs`` pairs of scenes that share a background but not their
    objects (consecutive, from index ``n_scenes + n_lighthouses``): distinct images a copy detector must
    keep apart, like the distinct training images that share a pattern and set its threshold."""
    from PIL import Image

    from .worldgen import _lighthouse, _scene, _scene_caption

    rng = random.Random(10_007 + cfg.seed)  # not the built-in world's seed
    pool, caps = [], []
    for _ in range(cfg.n_scenes):
        im, objs, bg, style = _scene(rng)
        pool.append(im.resize((128, 128), Image.LANCZOS))
        caps.append(_scene_caption(objs, bg, style))
    for _ in range(cfg.n_lighthouses):
        im, cap, _objs = _lighthouse(rng, rng.random() < 0.3)
        pool.append(im.resize((128, 128), Image.LANCZOS))
        caps.append(cap)
    for _ in range(cfg.sibling_pairs):
        seed = rng.randrange(2**31)
        for _ in range(2):
            im, objs, bg, style = _scene(random.Random(seed), objects_rng=random.Random(rng.randrange(2**31)))
            pool.append(im.resize((128, 128), Image.LANCZOS))
            caps.append(_scene_caption(objs, bg, style))
    return (pool, caps) if captions else pool


def make_photo_pool(photos: list, per_photo: int, seed: int) -> list[list]:
    """A fixed set of random crops per photo (so a real decoder's round trip can be computed once)."""
    rng = random.Random(20_011 + seed)
    return [[photo_crop(im, rng) for _ in range(per_photo)] for im in photos]


def decode_all(vae, images: list, progress=None, chunk: int = 64) -> list:
    """Each image after the decoder's round trip, at the decoder's resolution and back."""
    from .augment import vae_round_trip

    size = int(vae.config.sample_size)
    bar = progress or (lambda it, **kw: it)
    out = []
    for i in bar(range(0, len(images), chunk), desc="decoder round trips"):
        out += vae_round_trip(vae, images[i:i + chunk], size)
    return out


def photo_crop(im, rng: random.Random, out: int = 128):
    from PIL import Image

    side = min(im.size) * rng.uniform(0.25, 1.0)
    x, y = rng.uniform(0, im.size[0] - side), rng.uniform(0, im.size[1] - side)
    return im.crop((int(x), int(y), int(x + side), int(y + side))).resize((out, out), Image.LANCZOS)


def collage(photos: list, rng: random.Random):
    """2 or 4 crops of different photos side by side: endless distinct images with photo statistics."""
    from PIL import Image

    grid = rng.choice([(2, 1), (1, 2), (2, 2)])
    cw, ch = 128 // grid[0], 128 // grid[1]
    canvas = Image.new("RGB", (128, 128))
    for k, im in enumerate(rng.sample(photos, grid[0] * grid[1])):
        canvas.paste(photo_crop(im, rng, 128).resize((cw, ch), Image.LANCZOS), ((k % grid[0]) * cw, (k // grid[0]) * ch))
    return canvas


def batch_images(pool: list, photo_pool: list, photos: list, n: int, photo_share: float, rng: random.Random,
                 siblings_from: int | None = None, sibling_share: float = 0.0) -> list:
    """n distinct base images as (image, decoded image or None): pool items (without replacement), then
    photo-derived images: at most one crop per photo (two overlapping crops of one photo must not be each
    other's negatives) and collages of crops of different photos."""
    n_photo = sum(rng.random() < photo_share for _ in range(n)) if len(photos) >= 4 else 0
    n_crop = min(n_photo // 2, len(photos))
    crops = [rng.choice(photo_pool[k]) for k in rng.sample(range(len(photos)), n_crop)]
    plain = len(pool) if siblings_from is None else siblings_from
    n_pairs = min(int((n - n_photo) * sibling_share) // 2, (len(pool) - plain) // 2)
    pairs = [plain + 2 * k + j for k in rng.sample(range((len(pool) - plain) // 2), n_pairs) for j in (0, 1)]
    scenes = rng.sample(range(plain), n - n_photo - len(pairs)) + pairs
    return [pool[i] for i in scenes] + crops + \
           [(collage(photos, rng), None) for _ in range(n_photo - n_crop)]


def model_redraws(pipe, images: list, captions: list, n: int, seed: int, progress=None,
                  batch_size: int = 16) -> dict[int, object]:
    """Image-to-image redraws by a text-to-image pipeline (strength 0.2-0.5, its default 30 steps and
    guidance 5) of ``n`` pool images: {pool index: image at 128 px}. What a copy by that model looks like
    beyond its decoder's round trip: the UNet's own drift."""
    from PIL import Image

    from .modelcopies import model_copies

    rng = random.Random(30_029 + seed)
    chosen = sorted(rng.sample(range(len(images)), min(n, len(images))))
    by_strength = {s: chosen[k::4] for k, s in enumerate((0.2, 0.3, 0.4, 0.5))}
    out = {}
    for s, idx in by_strength.items():
        made = model_copies(pipe, [images[i] for i in idx], [captions[i] for i in idx], strengths=(s,),
                            vae=False, seed=seed, batch_size=batch_size, progress=progress)
        out.update({idx[j]: im.resize((128, 128), Image.BICUBIC) for j, _, im in made})
    return out


def load_decoder(path: str):
    """A diffusers AutoencoderKL from a VAE folder or a pipeline folder holding ``vae/`` (fp32, eval)."""
    import torch
    from diffusers import AutoencoderKL

    p = Path(path)
    folder = p / "vae" if (p / "vae" / "config.json").is_file() else p
    if not (folder / "config.json").is_file():
        raise MemlabError(f"--decoder {path}: no diffusers VAE there (config.json), nor a pipeline with vae/")
    return AutoencoderKL.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).eval()  # no pickle


# ------------------------------------------------------------------------------------- losses
def info_nce(z, temperature: float):
    """InfoNCE over 2B unit descriptors [z1; z2]: view i's positive is the other view of its image."""
    import torch

    n = z.shape[0] // 2
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return torch.nn.functional.cross_entropy(sim, target)


def layout_nce(net, first, second, temperature: float, blur: float):
    """The layout term: InfoNCE over each layout map (``CopyNet.layout_maps``, flattened and L2-normalized,
    as ``memlab-copy`` compares them) of two aligned views per image ([n, 3, h, w] each), averaged over the
    maps. A copy keeps its layout through colour drift; another image on the same background does not."""
    import torch

    from .copynet import low_pass

    x = torch.cat([first, second])
    if blur:
        x = low_pass(x, blur)
    maps = net.layout_maps(x)
    return sum(info_nce(torch.nn.functional.normalize(m.flatten(1), dim=1), temperature) for m in maps) / len(maps)


def entropy_regulariser(z, eps: float = 1e-8):
    """Differential-entropy (KoLeo) regulariser: -mean log distance to the nearest other descriptor."""
    import torch

    with torch.no_grad():
        dots = z @ z.T
        dots.fill_diagonal_(-2.0)
        nearest = dots.argmax(dim=1)
    return -torch.log((z - z[nearest]).norm(dim=1) + eps).mean()


# ------------------------------------------------------------------------------------- a step's views
_STEP_DATA: dict = {}  # what each step's views are drawn from; set before worker processes fork


def step_inputs(step: int):
    """A step's network inputs as uint8 tensors, drawn from a generator seeded by (seed, step) alone, so a
    worker process makes exactly what the loop would in line: (views [2B, 3, s, s], the layout term's aligned
    pairs (first, second) or None)."""
    from .augment import aligned_pair, augment, colour_cast

    cfg, pool, photo_pool, photos = (_STEP_DATA[k] for k in ("cfg", "pool", "photo_pool", "photos"))
    rng = random.Random(cfg.seed * 1_000_003 + step)
    base = batch_images(pool, photo_pool, photos, cfg.batch_size, cfg.photo_share, rng,
                        siblings_from=cfg.n_scenes + cfg.n_lighthouses, sibling_share=cfg.sibling_share)

    def view(im, dec):  # a view starts, now and then, from the model's version of the image
        if dec is not None and rng.random() < cfg.decoder_share:
            im = rng.choice(dec)
        v = augment(im, rng, cfg.input_size, cfg.grayscale)
        return colour_cast(v, rng) if cfg.colour_cast and rng.random() < cfg.colour_cast else v

    def u8(images):  # exact: every value is k / 255
        return to_input(images, cfg.input_size).mul_(255).round_().byte()
    views = u8([view(*b) for b in base] + [view(*b) for b in base])
    pairs = None
    if cfg.layout_weight:  # aligned views of a subset: the model's version against the image, half the time
        made = [aligned_pair(im, rng.choice(dec) if dec is not None and rng.random() < cfg.layout_model_share
                             else im, rng, cfg.input_size, cfg.layout_cast)
                for im, dec in (base[i] for i in rng.sample(range(len(base)), min(cfg.layout_images, len(base))))]
        pairs = (u8([a for a, _ in made]), u8([b for _, b in made]))
    return views, pairs


def use_pool(cfg: DescriptorTrainConfig, pool: list, photo_pool: list, photos: list) -> None:
    """What ``step_inputs`` draws from (worker processes forked after this see it): the pool and the photo
    crops as (image, the decoder's versions of it or None) pairs, and the photos for collages."""
    _STEP_DATA.update(cfg=cfg, pool=pool, photo_pool=photo_pool, photos=photos)


def _worker_init():
    import torch

    torch.set_num_threads(1)


def prefetched(steps: range, workers: int):
    """``step_inputs`` of each step in order; with ``workers``, made by that many forked processes, at most
    two per worker ahead of the loop."""
    if workers <= 0:
        yield from (step_inputs(s) for s in steps)
        return
    import collections
    import itertools
    import multiprocessing

    todo = iter(steps)
    with multiprocessing.get_context("fork").Pool(workers, initializer=_worker_init) as procs:
        ahead = collections.deque(procs.apply_async(step_inputs, (s,)) for s in itertools.islice(todo, 2 * workers))
        while ahead:
            made = ahead.popleft().get()
            nxt = next(todo, None)
            if nxt is not None:
                ahead.append(procs.apply_async(step_inputs, (nxt,)))
            yield made


# -------------------------------------------------------------------------------------- train
def train_descriptor(cfg: DescriptorTrainConfig, resume: bool = True, progress=None,
                     log=lambda m: print(m, file=sys.stderr)) -> Path | None:
    """Train; returns the folder holding ``config.json`` + ``model.safetensors`` (``cfg.out``), or None
    when ``stop_at`` ended this invocation early (a checkpoint is written)."""
    import torch
    from safetensors.torch import load_file, save_file

    from .train import check_resumable, latest_checkpoint, load_optimizer, recorded_settings, save_optimizer

    cfg.validate()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise MemlabError(f"--device {cfg.device}: no CUDA GPU is visible to torch")
    out = Path(cfg.out)
    settings = recorded_settings(cfg, **{k: str(Path(v).resolve()) if v and Path(v).exists() else v  # a folder
                                         for k, v in (("decoder", cfg.decoder), ("init", cfg.init))})  # by where it is
    ck = latest_checkpoint(out) if resume else None
    if ck is not None:  # refused before the pool and the decoder's redraws are made, not after
        state = json.loads((ck / "state.json").read_text())
        check_resumable(ck, state.get("settings"), settings)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bar = progress or (lambda it, **kw: it)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    # 1. images: a fixed pool of drawn scenes, and the photos to crop from; a real decoder, if given
    (pool, pool_caps), photos = make_pool(cfg, captions=True), list(load_photos().values())
    photo_pool = make_photo_pool(photos, cfg.crops_per_photo, cfg.seed)
    if cfg.decoder:  # the real decoder's round trip of every fixed image, computed once
        vae = load_decoder(cfg.decoder).to(cfg.device)
        flat = [im for crops in photo_pool for im in crops]
        dec = decode_all(vae, pool + flat, progress)
        redraws = {}
        if cfg.redraws and (Path(cfg.decoder) / "model_index.json").is_file():  # a whole pipeline: its redraws
            from .generate import Generator

            pipe = Generator.from_pretrained(cfg.decoder, device=cfg.device).pipe
            redraws = model_redraws(pipe, pool, pool_caps, cfg.redraws, cfg.seed, progress,
                                    batch_size=16 if cfg.device == "cpu" else 256)
        # a view's "decoded" version: the redraw where there is one (half the time), else the round trip
        pool = [(im, (redraws[i], dec[i]) if i in redraws else (dec[i],)) for i, im in enumerate(pool)]
        dec_flat = iter(dec[len(pool):])
        photo_pool = [[(im, (next(dec_flat),)) for im in crops] for crops in photo_pool]
    else:
        pool = [(im, None) for im in pool]
        photo_pool = [[(im, None) for im in crops] for crops in photo_pool]

    # 2. network and optimizer; resume from the latest checkpoint
    torch.manual_seed(cfg.seed)
    net = CopyNet(cfg.net_config()).to(cfg.device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step):  # linear warm-up, then cosine to 1%
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * p)))

    if cfg.init:  # fine-tuning: the network starts from trained weights (the optimizer starts afresh)
        net.load_state_dict(load_file(str(Path(cfg.init) / "model.safetensors")))
    start = 0
    if ck is not None:
        net.load_state_dict(load_file(str(ck / "model.safetensors")))
        load_optimizer(opt, ck / "optimizer.safetensors")
        start = state["step"]
        log(f"[train-descriptor] resuming from {ck.name}")
    log_path = out / "loss.csv"
    if start == 0:
        log_path.write_text("step,loss,info_nce,entropy,layout,lr,elapsed_s\n")
    running = []

    # 3. the loop
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    net.train()
    use_pool(cfg, pool, photo_pool, photos)
    steps = range(start, end)
    for step, (views, pairs) in zip(bar(steps, desc="train memlab-copy", initial=start, total=cfg.steps),
                                    prefetched(steps, cfg.workers)):
        z = torch.nn.functional.normalize(net.embed_raw(views.to(cfg.device).float().div_(255)), dim=1)
        l_nce = info_nce(z, cfg.temperature)
        l_ent = entropy_regulariser(z[:cfg.batch_size])
        loss = l_nce + cfg.entropy_weight * l_ent
        l_lay = torch.zeros(())
        if pairs is not None:
            first, second = (t.to(cfg.device).float().div_(255) for t in pairs)
            l_lay = layout_nce(net, first, second, cfg.layout_temperature, cfg.layout_blur)
            loss = loss + cfg.layout_weight * l_lay
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running.append((float(loss.detach()), float(l_nce.detach()), float(l_ent.detach()), float(l_lay.detach())))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            m = np.mean(running, axis=0)
            with open(log_path, "a") as f:
                f.write(f"{step + 1},{m[0]:.5f},{m[1]:.5f},{m[2]:.5f},{m[3]:.5f},{lr_at(step):.6g},"
                        f"{time.time() - t_start:.1f}\n")
            running = []
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 in (cfg.steps, end):
            ck = out / "checkpoints" / f"step-{step + 1}"
            ck.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(ck / "model.safetensors"))
            save_optimizer(opt, ck / "optimizer.safetensors")
            (ck / "state.json").write_text(json.dumps({"step": step + 1, "settings": settings}))
            for old in sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
                shutil.rmtree(old, ignore_errors=True)  # keep the last two

    if end < cfg.steps:
        return None  # stopped early on purpose: resume with the same config

    # 4. the weights (config.json + model.safetensors) and the training card
    net.cpu().eval()
    net.save_pretrained(out)
    _write_card(cfg, net, out, cfg.steps, start, time.time() - t_start, len(photos))
    return out


def _write_card(cfg: DescriptorTrainConfig, net, out: Path, steps: int, start: int, seconds: float,
                n_photos: int, **extra) -> None:
    """``train_card.json``: the config, the losses of the log's first and last row up to ``steps``, the pool."""
    import pandas as pd

    losses = pd.read_csv(out / "loss.csv")
    losses = losses[losses["step"] <= steps]
    card = {"config": dataclasses.asdict(cfg), "steps": steps, "resumed_from": start,
            "train_seconds_this_run": seconds,
            "first_loss": float(losses["loss"].iloc[0]) if len(losses) else None,
            "final_loss": float(losses["loss"].iloc[-1]) if len(losses) else None,
            "parameters": sum(p.numel() for p in net.parameters()),
            "decoder": cfg.decoder or None, "redraws": cfg.redraws if cfg.decoder else 0,
            "images": {"procedural_scenes": cfg.n_scenes, "lighthouses": cfg.n_lighthouses,
                       "same_background_pairs": cfg.sibling_pairs, "pair_share": cfg.sibling_share,
                       "scikit_image_photos": n_photos, "photo_share": cfg.photo_share},
            "recipe": "SSCD (Pizzi et al. 2022): InfoNCE over two augmented views + differential-entropy "
                      "regulariser; trunk, GeM (p=3), linear, L2 norm", **extra}
    (out / "train_card.json").write_text(json.dumps(card, indent=2))


def export_checkpoint(cfg: DescriptorTrainConfig, step: int = 0) -> Path:
    """The weights and training card of a checkpoint in ``cfg.out`` (``step``, default the latest): a run
    cut short, or a checkpoint chosen on validation copies. The card's ``steps`` is the checkpoint's, with
    ``planned_steps`` (the config's) and its seconds read from the loss log."""
    import pandas as pd
    from safetensors.torch import load_file

    from .train import latest_checkpoint

    out = Path(cfg.out)
    ck = out / "checkpoints" / f"step-{step}" if step else latest_checkpoint(out)
    if ck is None or not (ck / "model.safetensors").is_file():
        raise MemlabError(f"no checkpoint {'step-' + str(step) if step else ''} in {out / 'checkpoints'}")
    if not (out / "loss.csv").is_file():
        raise MemlabError(f"no loss log in {out} (loss.csv): not a train-descriptor run folder")
    done = json.loads((ck / "state.json").read_text())["step"]
    net = CopyNet(cfg.net_config())
    net.load_state_dict(load_file(str(ck / "model.safetensors")))
    net.eval().save_pretrained(out)
    log = pd.read_csv(out / "loss.csv")
    seconds = float(log.loc[log["step"] <= done, "elapsed_s"].max()) if (log["step"] <= done).any() else 0.0
    _write_card(cfg, net, out, done, 0, seconds, len(load_photos()), planned_steps=cfg.steps,
                exported_from=f"checkpoints/step-{done}")
    return out
