"""Prompt alignment: does a generation show what its prompt names? The price of a mitigation (papers
report it beside similarity, since a mitigation that ignores the prompt also "stops copying").

- ``ClipAlignment`` (a Stable Diffusion world): the cosine between open_clip's image and text embeddings
  of the generation and its prompt (CLIP score as NeMo's ``compute_prompt_alignment`` computes it, with
  ViT-B/32 OpenAI weights by default; any open_clip model or local file).
- ``SceneAlignment`` (the built-in world, which has no CLIP): a small classifier memlab trains on the
  world's own renders (``memlab.worldgen._scene``, seeds the world does not use, half of them through
  the world's VAE so it sees what the model's decoder makes) with four heads: the shapes present, the
  object colours present, the background colour and the background kind. A prompt in the world's caption
  grammar names objects (colour, shape) and a background; the alignment is the mean predicted
  probability of everything it names. Prompts outside the grammar (photos, lighthouses) get None.

Both are named by ``info()`` (method, model, what it measures) wherever a figure is shown.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import MemlabError
from .jsonfiles import read_object
from .weightfiles import load_module
from .worldgen import BACKGROUNDS, COLOURS, SHAPES, _scene, _small

COLOUR_LIST = list(COLOURS)
_OBJ = re.compile(r"^an? (\w+) (\w+)$")


def parse_scene_prompt(prompt: str) -> dict | None:
    """A world caption's named attributes ({shapes, colours, bg_colour, bg_kind}) or None when the prompt
    is not in the scene grammar ('a red circle and a blue star on a grey striped background[, by X]')."""
    text = prompt.strip().split(", by ")[0]
    if " on " not in text or not text.endswith(" background"):
        return None
    listing, bg = text.rsplit(" on ", 1)
    things = [t.strip() for t in re.split(r",| and ", listing) if t.strip()]
    shapes, colours = set(), set()
    for t in things:
        m = _OBJ.match(t)
        if not m or m[1] not in COLOURS or m[2] not in SHAPES:
            return None
        colours.add(m[1])
        shapes.add(m[2])
    words = bg[:-len(" background")].split()[1:]  # drop a / an
    if not words or words[0] not in COLOURS:
        return None
    kind = words[1] if len(words) > 1 else "plain"
    if kind not in BACKGROUNDS:
        return None
    return {"shapes": sorted(shapes), "colours": sorted(colours), "bg_colour": words[0], "bg_kind": kind}


def scene_labels(objs, bg) -> dict:
    """Targets of one render (``worldgen._scene``'s objects and background)."""
    return {"shapes": sorted({s for _, s in objs}), "colours": sorted({c for c, _ in objs}),
            "bg_colour": bg[0], "bg_kind": bg[1]}


@dataclass
class SceneNetConfig:
    width: int = 48
    size: int = 64
    renders: int = 16000
    vae_share: float = 0.5
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 1_000_003  # far from the world's scene seed
    held_out: int = 1000  # fresh renders the held-out accuracy is measured on


def _net(cfg: SceneNetConfig):
    import torch.nn as nn

    w = cfg.width

    def block(a, b):
        return nn.Sequential(nn.Conv2d(a, b, 3, 2, 1), nn.BatchNorm2d(b), nn.ReLU(),
                             nn.Conv2d(b, b, 3, 1, 1), nn.BatchNorm2d(b), nn.ReLU())

    trunk = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 4 * w),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    heads = nn.Linear(4 * w, len(SHAPES) + 2 * len(COLOUR_LIST) + len(BACKGROUNDS))
    return nn.Sequential(trunk, heads)


def _split(logits):
    n_s, n_c = len(SHAPES), len(COLOUR_LIST)
    return (logits[:, :n_s], logits[:, n_s:n_s + n_c], logits[:, n_s + n_c:n_s + 2 * n_c],
            logits[:, n_s + 2 * n_c:])


def _tensor(images):
    import torch

    arr = np.stack([np.asarray(im.convert("RGB").resize((64, 64)), np.float32) / 255.0 for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) * 2 - 1


def _targets(labels):
    import torch

    n = len(labels)
    shapes, cols = torch.zeros(n, len(SHAPES)), torch.zeros(n, len(COLOUR_LIST))
    for i, lab in enumerate(labels):
        for s in lab["shapes"]:
            shapes[i, SHAPES.index(s)] = 1
        for c in lab["colours"]:
            cols[i, COLOUR_LIST.index(c)] = 1
    bgc = torch.tensor([COLOUR_LIST.index(lab["bg_colour"]) for lab in labels])
    bgk = torch.tensor([BACKGROUNDS.index(lab["bg_kind"]) for lab in labels])
    return shapes, cols, bgc, bgk


def renders(n: int, seed: int):
    """``n`` fresh scenes drawn as the world draws them (seeds ``seed``..): (images, labels)."""
    ims, labs = [], []
    for i in range(n):
        im, objs, bg, _ = _scene(random.Random(seed + i))
        ims.append(_small(im))
        labs.append(scene_labels(objs, bg))
    return ims, labs


class SceneAlignment:
    """The built-in world's alignment classifier (``config.json`` + ``model.safetensors`` + ``card.json``)."""

    method = "scene-classifier"

    def __init__(self, net, cfg: SceneNetConfig, card: dict | None = None, source: str = ""):
        self.net, self.cfg, self.card, self.source = net.eval(), cfg, card or {}, source

    def probabilities(self, images) -> list[dict]:
        import torch

        with torch.no_grad():
            s, c, bc, bk = _split(self.net(_tensor(images)))
            s, c = torch.sigmoid(s), torch.sigmoid(c)
            bc, bk = bc.softmax(-1), bk.softmax(-1)
        return [{"shapes": dict(zip(SHAPES, s[i].tolist())), "colours": dict(zip(COLOUR_LIST, c[i].tolist())),
                 "bg_colour": dict(zip(COLOUR_LIST, bc[i].tolist())), "bg_kind": dict(zip(BACKGROUNDS, bk[i].tolist()))}
                for i in range(len(images))]

    def score(self, images, prompt: str) -> list[float | None]:
        """Mean predicted probability of each attribute the prompt names, per image (None: not a scene prompt)."""
        want = parse_scene_prompt(prompt)
        if want is None:
            return [None] * len(images)
        out = []
        for p in self.probabilities(images):
            named = ([p["shapes"][s] for s in want["shapes"]] + [p["colours"][c] for c in want["colours"]]
                     + [p["bg_colour"][want["bg_colour"]], p["bg_kind"][want["bg_kind"]]])
            out.append(float(np.mean(named)))
        return out

    def info(self) -> dict:
        return {"method": self.method, "model": self.source or "memlab scene classifier",
                "measures": "mean predicted probability of the shapes, object colours, background colour and "
                            "kind the prompt names (classifier trained on the world's own renders)",
                "held_out": self.card.get("held_out")}

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"method": self.method, **asdict(self.cfg)}, indent=2))
        (folder / "card.json").write_text(json.dumps(self.card, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "SceneAlignment":
        folder = Path(folder)
        if not (folder / "model.safetensors").is_file():
            raise MemlabError(f"{folder} holds no alignment classifier (model.safetensors)")
        conf = read_object(folder / "config.json")
        cfg = SceneNetConfig(**{k: v for k, v in conf.items() if k in SceneNetConfig.__dataclass_fields__})
        net = load_module(lambda: _net(cfg), folder / "model.safetensors", folder / "config.json")
        card = read_object(folder / "card.json") if (folder / "card.json").is_file() else {}
        return cls(net, cfg, card, source=f"{folder.name}/model.safetensors")


def head_accuracy(model: SceneAlignment, images, labels) -> dict:
    """Per head on labelled images: for the multi-label heads (shapes, object colours) the exact-set accuracy
    (every label right at 0.5), the per-label accuracy and the mean per-label ROC AUC; for the others top-1."""
    from .metrics import roc_auc

    probs = model.probabilities(images)
    out = {"n": len(images)}
    for head in ("shapes", "colours"):
        names = list(probs[0][head])
        p = np.array([[q[head][k] for k in names] for q in probs])
        y = np.array([[k in lab[head] for k in names] for lab in labels])
        aucs = [roc_auc(p[y[:, j], j], p[~y[:, j], j]) for j in range(len(names)) if y[:, j].any() and (~y[:, j]).any()]
        out[head] = {"exact_set": float(np.mean(((p > 0.5) == y).all(1))), "per_label": float(np.mean((p > 0.5) == y)),
                     "mean_auc": float(np.mean(aucs))}
    for head in ("bg_colour", "bg_kind"):
        out[head] = float(np.mean([max(q[head], key=q[head].get) == lab[head] for q, lab in zip(probs, labels)]))
    return out


def training_renders(make, cfg, vae=None, progress=None):
    """``cfg.renders`` fresh renders from ``make(n, seed)`` (images, labels), the first ``cfg.vae_share`` of them
    through ``vae``'s round trip (what the model's decoder makes); torch seeded with ``cfg.seed``."""
    import torch

    torch.manual_seed(cfg.seed)
    ims, labels = make(cfg.renders, cfg.seed)
    if vae is not None and cfg.vae_share > 0:
        from .train_descriptor import decode_all

        k = int(len(ims) * cfg.vae_share)
        ims[:k] = decode_all(vae, ims[:k], progress=progress)
    return ims, labels


def held_out_card(model, make, measure, cfg, vae=None) -> dict:
    """``measure(model, images, labels)`` on ``cfg.held_out`` renders the training never saw, as drawn and
    (with ``vae``) through the decoder: the classifier's card."""
    ims, labels = make(cfg.held_out, cfg.seed + cfg.renders)
    card = {"held_out": {"renders": measure(model, ims, labels)}}
    if vae is not None:
        from .train_descriptor import decode_all

        card["held_out"]["renders_through_vae"] = measure(model, decode_all(vae, ims), labels)
    return card


def fit(net, n: int, batch_loss, cfg, log) -> None:
    """A small classifier's training loop, read top to bottom: AdamW with a one-cycle schedule over ``cfg.epochs``
    epochs of ``n`` examples in seeded random batches; ``batch_loss(rows, generator)`` augments and scores a
    batch (its random draws from the same generator, so a run is repeatable); ``log(epoch, mean loss)``."""
    import torch

    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * ((n + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps)
    g = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        net.train()
        order = torch.randperm(n, generator=g)
        total = 0.0
        for b in range(0, n, cfg.batch_size):
            i = order[b:b + cfg.batch_size]
            loss = batch_loss(i, g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(i)
        log(epoch + 1, total / n)


def train_scene_alignment(cfg: SceneNetConfig = SceneNetConfig(), vae=None, progress=None,
                          log=print) -> SceneAlignment:
    """Train the classifier on ``cfg.renders`` fresh renders (a ``vae_share`` of them through ``vae``'s round
    trip), then measure it on 1,000 held-out renders (both ways). Deterministic for a seed on a CPU."""
    import torch
    import torch.nn.functional as F

    ims, labs = training_renders(renders, cfg, vae, progress)
    x, (ts, tc, tbc, tbk) = _tensor(ims), _targets(labs)
    net = _net(cfg)

    def batch_loss(i, g):
        xb = x[i]
        if torch.rand(1, generator=g).item() < 0.5:
            xb = xb.flip(-1)  # the labels do not depend on left and right, nor on up and down
        if torch.rand(1, generator=g).item() < 0.5:
            xb = xb.flip(-2)
        s, c, bc, bk = _split(net(xb))
        return (F.binary_cross_entropy_with_logits(s, ts[i]) + F.binary_cross_entropy_with_logits(c, tc[i])
                + F.cross_entropy(bc, tbc[i]) + F.cross_entropy(bk, tbk[i]))

    fit(net, len(x), batch_loss, cfg, lambda e, loss: log(f"[alignment] epoch {e}/{cfg.epochs} loss {loss:.4f}"))
    model = SceneAlignment(net, cfg)
    model.card = held_out_card(model, renders, head_accuracy, cfg, vae)
    return model


class ClipAlignment:
    """CLIP score: cosine of open_clip's image and prompt embeddings (NeMo: ViT-B/32, OpenAI weights)."""

    method = "clip-score"

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = "openai", device=None, descriptor=None):
        from .descriptors import create_descriptor

        self.clip = descriptor or create_descriptor("clip", model=model, pretrained=pretrained, device=device)

    def score(self, images, prompt: str) -> list[float]:
        im = self.clip.embed(images)
        t = self.clip.embed_text([prompt])[0]
        return [float(v) for v in im @ t]

    def info(self) -> dict:
        return {"method": self.method, "model": f"open_clip {self.clip.model} ({self.clip.pretrained})",
                "measures": "cosine of the image and prompt embeddings"}
