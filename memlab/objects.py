"""Does a generated image feature the keyword's hidden object? (Memory Triggers counts the *generated* images
that feature the object, e.g. the US flag in "astronaut" generations, not their training matches.)

The built-in world's keyword is "lighthouse" and its hidden object a small flag no caption names
(``memlab.worldgen._lighthouse``). ``train_object_classifier`` trains a small binary classifier on fresh
lighthouse renders (seeds the world does not use, half with the flag, a share through the world's VAE so it
sees what the model's decoder makes) and measures it on held-out renders; the card states that accuracy beside
every share it reports.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .alignment import fit, held_out_card, training_renders
from .jsonfiles import read_object
from .weightfiles import load_module
from .worldgen import HIDDEN_OBJECT, _lighthouse, _small


@dataclass
class ObjectNetConfig:
    width: int = 24
    renders: int = 4000
    vae_share: float = 0.5
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 2_000_003  # far from the world's seeds and the alignment classifier's
    held_out: int = 600


def renders(n: int, seed: int):
    """``n`` fresh lighthouses as the world draws them, every other one with the flag: (images, has_flag)."""
    ims, ys = [], []
    for i in range(n):
        flag = i % 2 == 0
        im, _, objects = _lighthouse(random.Random(seed + i), flag)
        ims.append(_small(im))
        ys.append(HIDDEN_OBJECT in objects)
    return ims, np.array(ys, bool)


def _net(cfg: ObjectNetConfig):
    import torch.nn as nn

    w = cfg.width

    def block(a, b):
        return nn.Sequential(nn.Conv2d(a, b, 3, 2, 1), nn.BatchNorm2d(b), nn.ReLU(),
                             nn.Conv2d(b, b, 3, 1, 1), nn.BatchNorm2d(b), nn.ReLU())
    return nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(4 * w, 1))


def _tensor(images):
    import torch

    arr = np.stack([np.asarray(im.convert("RGB").resize((64, 64)), np.float32) / 255.0 for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) * 2 - 1


class ObjectClassifier:
    """The hidden object's classifier (``config.json`` + ``model.safetensors`` + ``card.json``)."""

    def __init__(self, net, cfg: ObjectNetConfig, card: dict | None = None, obj: str = HIDDEN_OBJECT):
        self.net, self.cfg, self.card, self.object = net.eval(), cfg, card or {}, obj
        self.keywords: list[str] = []  # the prompts it judges hold one of these (none: every prompt)

    def probabilities(self, images) -> np.ndarray:
        import torch

        with torch.no_grad():
            return torch.sigmoid(self.net(_tensor(images))[:, 0]).numpy()

    def features(self, images) -> np.ndarray:
        """Whether each image features the object (probability above 0.5)."""
        return self.probabilities(images) > 0.5

    def info(self) -> dict:
        return {"object": self.object, "method": "a classifier trained on the world's own lighthouse renders",
                "held_out": self.card.get("held_out"), **({"keywords": self.keywords} if self.keywords else {})}

    def applies(self, prompt: str) -> bool:
        """Whether it judges a prompt's generations: those of a prompt holding one of its ``keywords`` (Memory
        Triggers count the flag in the generations of "astronaut" prompts; on other scenes a classifier trained on
        lighthouses says nothing: it found the flag in 8 of 8 generations of a prompt of shapes)."""
        from .keywords import keyword_mask

        return not self.keywords or any(keyword_mask([prompt], k)[0] for k in self.keywords)

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({**asdict(self.cfg), "object": self.object}, indent=2))
        (folder / "card.json").write_text(json.dumps(self.card, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ObjectClassifier":
        folder = Path(folder)
        cfg = read_object(folder / "config.json")
        obj = cfg.pop("object", HIDDEN_OBJECT)
        cfg = ObjectNetConfig(**{k: v for k, v in cfg.items() if k in ObjectNetConfig.__dataclass_fields__})
        net = load_module(lambda: _net(cfg), folder / "model.safetensors", folder / "config.json")
        card = read_object(folder / "card.json") if (folder / "card.json").is_file() else {}
        return cls(net, cfg, card, obj)


def accuracy(model: ObjectClassifier, images, has) -> dict:
    """Held-out accuracy, and the rates on each side (flag found when there, when not)."""
    p = model.features(images)
    has = np.asarray(has, bool)
    return {"n": int(len(has)), "accuracy": float(np.mean(p == has)), "true_positive_rate": float(p[has].mean()),
            "false_positive_rate": float(p[~has].mean())}


def train_object_classifier(cfg: ObjectNetConfig = ObjectNetConfig(), vae=None, progress=None,
                            log=print) -> ObjectClassifier:
    """Train on ``cfg.renders`` fresh lighthouses (a ``vae_share`` through ``vae``'s round trip), then measure
    on ``cfg.held_out`` others (both ways). Deterministic for a seed on a CPU."""
    import torch
    import torch.nn.functional as F

    ims, ys = training_renders(renders, cfg, vae, progress)
    x, y = _tensor(ims), torch.from_numpy(ys.astype(np.float32))
    net = _net(cfg)

    def batch_loss(i, g):
        xb = x[i].flip(-1) if torch.rand(1, generator=g).item() < 0.5 else x[i]  # a flag left or right
        return F.binary_cross_entropy_with_logits(net(xb)[:, 0], y[i])

    fit(net, len(x), batch_loss, cfg, lambda e, loss: log(f"[objects] epoch {e}/{cfg.epochs} loss {loss:.4f}"))
    model = ObjectClassifier(net, cfg)
    model.card = held_out_card(model, renders, accuracy, cfg, vae)
    return model
