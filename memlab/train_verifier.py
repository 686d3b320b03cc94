"""Train memlab's verification network (``memlab-verify``, ``memlab.pairnet``) on pairs of images.

Readable top to bottom: config -> pairs -> network -> loop -> checkpoints -> weights + card.

- **Pairs** (``.npz`` files, read without pickle): ``q`` and ``t`` (uint8 [n, 64, 64, 3]: a query and one of its
  candidates) and ``own`` (whether the candidate is the image the query copies). The shipped network's pairs
  are a model's copies of images it never trained on (another world drawn from the same spec: image-to-image at
  0.2-0.5, the VAE round trip, tinted, darkened and mirrored copies), each against its 5 best candidates by
  memlab-copy's normalized score, and each distinct training image against its 5 best other images (the
  background a threshold is set on): ``benchmarks/bench_learned_verify.py`` makes and caches them.
- **Objective**: binary cross-entropy on "copy or not", the copies weighted up to the non-copies' count; each
  pair mirrored together half the time, the query alone a quarter of the time (a mirrored copy is a copy), the
  query's colour channels scaled by 0.7-1.3 (a diffusion model's colour drift).
- **Schedule**: AdamW, one cycle (cosine warm-up over the first 30% of the steps from lr / 25, cosine down to
  lr / 25 / 1e4), batches of 128.
- **Resumable**: each epoch draws its order, augmentations and dropout from generators seeded by (seed, epoch);
  after each epoch the weights and the optimizer's moments are written (safetensors), so a killed training
  resumes at its last epoch to the same weights as an uninterrupted one. A checkpoint records what it was trained
  on (the settings and a checksum of the pairs): a run with other settings or other pairs into the same ``out``
  is refused rather than continued from it.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import MemlabError
from .pairnet import PairNetConfig, SIDE, build, save, stack


@dataclass
class VerifierTrainConfig:
    pairs: list = field(default_factory=list)  # .npz files of pairs (the module's docstring)
    out: str = "assets/memlab-verify"
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    stop_at: int = 0  # stop after this many epochs (0: all), to resume later

    def validate(self) -> "VerifierTrainConfig":
        if not self.pairs:
            raise MemlabError("train-verifier needs --pairs: one or more .npz files of pairs")
        if self.epochs < 1 or self.batch_size < 2 or not 0 < self.lr < 1 or self.weight_decay < 0:
            raise MemlabError("train-verifier takes epochs >= 1, batch_size >= 2, lr in (0, 1), weight_decay >= 0")
        return self


def load_pairs(paths) -> dict:
    """The pairs of every file, pooled: {"q", "t", "own"}; a file without them, or of other shapes, is one clear
    error."""
    parts = []
    for p in paths:
        try:
            with np.load(p, allow_pickle=False) as z:
                got = {k: z[k] for k in ("q", "t", "own")}
        except (OSError, ValueError, KeyError) as e:
            raise MemlabError(f"{p} is not a pairs file (.npz with q, t and own) ({e})") from None
        n = len(got["own"])
        for k in ("q", "t"):
            if got[k].dtype != np.uint8 or got[k].shape != (n, SIDE, SIDE, 3):
                raise MemlabError(f"{p}: {k} must be uint8 [n, {SIDE}, {SIDE}, 3] (got {got[k].dtype} {got[k].shape})")
        parts.append(got)
    return {k: np.concatenate([x[k] for x in parts]) for k in ("q", "t", "own")}


def lr_at(step: int, total: int, lr: float) -> float:
    """One cycle: cosine up from lr / 25 over the first 30% of the steps, cosine down to lr / 25 / 1e4."""
    low, end, up = lr / 25, lr / 25 / 1e4, max(1, int(0.3 * total))
    if step < up:
        return low + (lr - low) * (1 - math.cos(math.pi * step / up)) / 2
    return end + (lr - end) * (1 + math.cos(math.pi * (step - up) / max(1, total - up))) / 2


def augment(q, t, rng):
    """A batch's inputs: pairs mirrored together (half), the query alone mirrored (a quarter), the query's
    colour channels scaled by 0.7-1.3."""
    import torch

    q, t = q.copy(), t.copy()
    flip = rng.random(len(q)) < 0.5
    q[flip], t[flip] = q[flip][:, :, ::-1], t[flip][:, :, ::-1]
    alone = rng.random(len(q)) < 0.25
    q[alone] = q[alone][:, :, ::-1]
    x = stack(q, t)
    gain = torch.as_tensor(rng.uniform(0.7, 1.3, (len(q), 3, 1, 1)), dtype=torch.float32)
    x[:, :3] = ((x[:, :3] + 1) * gain - 1).clamp(-1, 1)
    x[:, 6:] = x[:, :3] - x[:, 3:6]
    return x


def pairs_checksum(pairs: dict) -> str:
    """The pooled pairs' sha256: a checkpoint names its training data by it."""
    h = hashlib.sha256()
    for k in ("q", "t", "own"):
        h.update(np.ascontiguousarray(pairs[k]).tobytes())
    return h.hexdigest()


def _checkpoint(work: Path, net, opt, epoch: int, losses: list, settings: dict) -> None:
    """The epoch's weights and optimizer state (safetensors), then its JSON: the JSON is written last, so a
    checkpoint it names is whole."""
    from safetensors.torch import save_file

    from .train import save_optimizer

    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(work / "model.safetensors.tmp"))
    save_optimizer(opt, work / "optimizer.safetensors.tmp")
    (work / "checkpoint.json.tmp").write_text(json.dumps({"epoch": epoch, "losses": losses, "settings": settings}))
    for name in ("model.safetensors", "optimizer.safetensors", "checkpoint.json"):
        (work / f"{name}.tmp").replace(work / name)


def _resume(work: Path, net, opt, settings: dict) -> tuple[int, list]:
    from .train import check_resumable, load_optimizer
    from .weightfiles import read_tensors

    if not (work / "checkpoint.json").is_file():
        return 0, []
    info = json.loads((work / "checkpoint.json").read_text())
    if "settings" not in info:
        raise MemlabError(f"{work} holds a checkpoint of an older layout: start over with --no-resume")
    check_resumable(work, info["settings"], settings)
    net.load_state_dict(read_tensors(work / "model.safetensors"))
    load_optimizer(opt, work / "optimizer.safetensors")
    return int(info["epoch"]), list(info["losses"])


def train_verifier(cfg: VerifierTrainConfig, resume: bool = True, progress=None, log=print) -> Path | None:
    """Train, write ``out`` (config.json, model.safetensors, train_card.json, loss.csv); None when stopped at
    ``stop_at`` (run again to resume)."""
    import torch
    import torch.nn.functional as F

    cfg.validate()
    out = Path(cfg.out)
    work = out.parent / f".{out.name}.train"
    work.mkdir(parents=True, exist_ok=True)
    p = load_pairs(cfg.pairs)
    y = p["own"].astype(np.float32)
    if not 0 < y.sum() < len(y):
        raise MemlabError("the pairs need both copies and non-copies")
    torch.manual_seed(cfg.seed)
    net_cfg = PairNetConfig()
    net = build(net_cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    from .train import recorded_settings

    settings = recorded_settings(cfg, pairs=pairs_checksum(p))  # the pairs by their checksum, not their files
    start, losses = _resume(work, net, opt, settings) if resume else (0, [])
    n, bs = len(y), cfg.batch_size
    per_epoch = (n + bs - 1) // bs
    total = cfg.epochs * per_epoch
    pos_weight = torch.tensor((1 - y.mean()) / y.mean())
    t0 = time.time()
    bar = progress or (lambda it, **kw: it)
    for epoch in range(start, cfg.epochs):
        if cfg.stop_at and epoch >= cfg.stop_at:
            return None
        net.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout's draws: a resumed epoch draws the same
        tot = 0.0
        for i, b in enumerate(bar(np.array_split(rng.permutation(n), per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}")):
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch * per_epoch + i, total, cfg.lr)
            loss = F.binary_cross_entropy_with_logits(net(augment(p["q"][b], p["t"][b], rng))[:, 0],
                                                      torch.as_tensor(y[b]), pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(b)
        losses.append(tot / n)
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {tot / n:.4f}")
        _checkpoint(work, net, opt, epoch + 1, losses, settings)
    model = save(net.eval(), net_cfg, out)
    (out / "loss.csv").write_text("epoch,loss\n" + "".join(f"{i + 1},{v:.6f}\n" for i, v in enumerate(losses)))
    card = {"config": {**asdict(cfg), "pairs": [Path(x).name for x in cfg.pairs]}, "model": model,
            "pairs": int(n), "copies": int(y.sum()), "epochs": cfg.epochs, "resumed_from": start,
            "train_seconds_this_run": time.time() - t0, "final_loss": losses[-1],
            "parameters": int(sum(x.numel() for x in net.parameters())),
            "recipe": "a pair network (query, candidate, difference) trained on copy / not-copy pairs with binary "
                      "cross-entropy; memlab.train_verifier"}
    (out / "train_card.json").write_text(json.dumps(card, indent=2))
    return out
