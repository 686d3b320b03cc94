"""memlab-verify: a small network that looks at a query and a training image together and says whether the
query copies it (the verification stage of copy detection, issue 30: DISC 2021's entries re-score a descriptor's
candidates on the two images; SSCD's descriptor finds them). Its input is the two images at 64 x 64 and their
difference (9 channels); four strided blocks of two 3 x 3 convolutions with batch norm, average pooling, one
logit. ``probability`` is the better of the query and its mirror image (a mirrored copy is a copy).

The weights ship in ``assets/memlab-verify`` (``config.json``, ``model.safetensors``, ``train_card.json``), made by
``memlab.train_verifier`` from another model's copies of other worlds' images; ``memlab.verify`` adds
``weight`` x the probability to a candidate's normalized score. The model string names the weights by their
checksum, so an index calibrated with one network refuses another.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import MemlabError

SIDE = 64  # the network compares the two images at 64 x 64 pixels


@dataclass
class PairNetConfig:
    """The network as plain data (``config.json``)."""
    architecture: str = "memlab-pairnet"
    widths: list = field(default_factory=lambda: [32, 64, 96, 128])
    input_size: int = SIDE
    dropout: float = 0.2

    def validate(self) -> "PairNetConfig":
        w = self.widths
        if (self.architecture != "memlab-pairnet" or not isinstance(w, list) or not 1 <= len(w) <= 6
                or not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 1024 for x in w)
                or self.input_size != SIDE or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1):
            raise MemlabError(f"not a memlab-pairnet config (widths: 1-6 whole numbers in [1, 1024], input_size "
                              f"{SIDE}, dropout in [0, 1)): {asdict(self)!r:.160}")
        return self


def build(cfg: PairNetConfig):
    """The network ``cfg`` describes (a ``torch.nn.Sequential``; its parameter names are the weights file's)."""
    import torch.nn as nn

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                             nn.Conv2d(o, o, 3, 1, 1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))
    widths = [9] + list(cfg.widths)
    return nn.Sequential(*[block(a, b) for a, b in zip(widths, widths[1:])], nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(widths[-1], 1))


def pixels(image: Image.Image) -> np.ndarray:
    """An image as the network reads it: RGB at 64 x 64 ([64, 64, 3] uint8)."""
    return np.asarray(image.convert("RGB").resize((SIDE, SIDE), Image.BICUBIC), np.uint8)  # (PIL's default for RGB)


def stack(q, t):
    """The network's input [n, 9, 64, 64] from uint8 images [n, 64, 64, 3]: query, candidate, their difference,
    each in [-1, 1]."""
    import torch

    q = torch.tensor(np.ascontiguousarray(q)).permute(0, 3, 1, 2).float() / 127.5 - 1
    t = torch.tensor(np.ascontiguousarray(t)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return torch.cat([q, t, q - t], 1)


def probability(net, q, t, batch: int = 512) -> np.ndarray:
    """The network's probability that each query (uint8 [n, 64, 64, 3]) copies its candidate ([n, 64, 64, 3]),
    the better of the query as given and mirrored."""
    import torch

    q, t = np.asarray(q, np.uint8), np.asarray(t, np.uint8)
    out = []
    with torch.inference_mode():
        for s in range(0, len(q), batch):
            a, b = q[s:s + batch], t[s:s + batch]
            p = torch.sigmoid(net(stack(a, b))[:, 0])
            m = torch.sigmoid(net(stack(a[:, :, ::-1], b))[:, 0])
            out.append(torch.maximum(p, m).numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros(0)


def default_weights() -> Path:
    """The weights memlab trained and ships: $MEMLAB_VERIFY_WEIGHTS, else ``assets/memlab-verify``."""
    env = os.environ.get("MEMLAB_VERIFY_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "assets" / "memlab-verify"


def folder_of(name: str | None) -> Path:
    """A rule's ``network``: ``memlab-verify`` (the shipped weights, or $MEMLAB_VERIFY_WEIGHTS), or a folder of the
    same files (a rule read from an index names the shipped network only: ``scorenorm.check_verify``)."""
    return default_weights() if name in (None, "memlab-verify") else Path(name)


def model_id(folder: Path) -> str:
    """The weights' name in every score: the architecture and the file's checksum."""
    return "memlab-pairnet-" + hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:12]


@lru_cache(maxsize=4)
def _load(folder: str, mtime: float):
    from .weightfiles import load_module

    f = Path(folder)
    cfg_path = f / "config.json"
    try:
        cfg = PairNetConfig(**json.loads(cfg_path.read_text())).validate()
    except (OSError, ValueError, TypeError) as e:
        raise MemlabError(f"{cfg_path} is not a memlab-pairnet config ({e})") from None
    net = load_module(lambda: build(cfg), f / "model.safetensors", cfg_path)
    return net.eval(), model_id(f)


def load(name: str | None = None, expect: str | None = None):
    """(the network, its model string) of a rule's ``network``; with ``expect`` (the model string an index was
    calibrated with) other weights are one clear error."""
    folder = folder_of(name)
    if not (folder / "model.safetensors").is_file():
        raise MemlabError(f"no memlab-verify weights in {folder} (config.json and model.safetensors)")
    net, model = _load(str(folder.resolve()), (folder / "model.safetensors").stat().st_mtime)
    if expect and model != expect:
        raise MemlabError(f"this index was calibrated with the verification network {expect}; {folder} holds "
                          f"{model}: build the index again with these weights, or restore those")
    return net, model


def save(net, cfg: PairNetConfig, out: Path) -> str:
    """``config.json`` and ``model.safetensors`` in ``out``; returns the model string."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    return model_id(out)
