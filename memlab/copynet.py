"""memlab's own copy-detection network: the architecture of SSCD (Pizzi et al. 2022) at laptop scale.

A convolutional trunk, GeM pooling (p = 3), a linear projection and L2 normalization, so that the
similarity of two images is the dot product of their descriptors (cosine), as with SSCD. The
network is trained by ``memlab.train_descriptor`` (InfoNCE over two augmented views + the
differential-entropy regulariser) on images memlab makes or loads at build time.

A trained network is a folder (diffusers-style ``save_pretrained`` / ``from_pretrained``):

    config.json          CopyNetConfig as plain data (widths, dim, input size, normalization)
    model.safetensors    the weights (never a pickle)

The same class loads a bigger one (wider trunk, larger input) trained elsewhere: only the config
changes. ``flip_average`` sums the descriptors of the image and its mirror image before normalizing,
so a horizontally flipped copy has exactly the descriptor of its original; ``crop_average`` sums over
centre crops too (e.g. [1.0, 0.8]), so a border-cropped copy shares a view with its original.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ModelFileMissing
from .jsonfiles import read_object
from .weightfiles import load_module

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class CopyNetConfig:
    """Plain data that rebuilds the network. ``widths``: channels of the stem and of each stage
    (each stage halves the resolution, two 3x3 convolutions with a residual connection)."""

    widths: list[int] = field(default_factory=lambda: [24, 32, 64, 128, 192])
    dim: int = 128
    input_size: int = 64
    gem_p: float = 3.0
    flip_average: bool = True
    crop_average: list = field(default_factory=lambda: [1.0, 0.8])  # centre crops (fractions of the side) summed
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    colour_norm: str = ""  # the input's colours normalized first (``normalize_colour``: one of COLOUR_NORMS)

    @classmethod
    def from_dict(cls, d: dict) -> "CopyNetConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}


class Block(nn.Module):
    """Two 3x3 convolutions with batch norm, the first strided, and a 1x1 strided shortcut."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))

class CopyNet(nn.Module):
    """Trunk -> GeM (p) -> linear -> L2 norm, as SSCD's ``Model`` (trunk, GeM, projection)."""

    def __init__(self, config: CopyNetConfig):
        super().__init__()
        self.config = config
        w = list(config.widths)
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 3, padding=1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU())
        self.stages = nn.Sequential(*[Block(a, b) for a, b in zip(w[:-1], w[1:])])
        self.proj = nn.Linear(w[-1], config.dim)
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1))

    def normalize(self, x):
        """x: [n, 3, H, W] in [0, 1] -> the network's input: colours normalized (``config.colour_norm``), then
        the per-channel mean and standard deviation."""
        if self.config.colour_norm:
            x = normalize_colour(x, self.config.colour_norm, self.config.mean, self.config.std)
        return (x - self.mean) / self.std

    def trunk(self, x):
        """x: [n, 3, H, W] in [0, 1] -> the last stage's feature map [n, C, H / 2^stages, W / 2^stages]."""
        return self.stages(self.stem(self.normalize(x)))

    def feature_maps(self, x) -> list:
        """x: [n, 3, H, W] in [0, 1] -> every stage's feature map, coarsest last."""
        h, maps = self.stem(self.normalize(x)), []
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        return maps

    def layout_maps(self, x, n: int = 2) -> list:
        """x: [n, 3, H, W] in [0, 1] -> the last ``n`` stages' maps, each average-pooled to the last one's grid:
        the layout ``memlab-copy`` checks beside its global descriptor (and ``train-descriptor --layout-weight``
        trains)."""
        maps = self.feature_maps(x)[-n:]
        side = maps[-1].shape[-1]
        return [torch.nn.functional.adaptive_avg_pool2d(m.float(), side) for m in maps]

    def embed_raw(self, x):
        """x: [n, 3, H, W] in [0, 1] -> unnormalized projection [n, dim]."""
        h = self.trunk(x)
        p = self.config.gem_p
        h = h.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)  # GeM pooling
        return self.proj(h)

    def forward(self, x):
        size = x.shape[-1]
        z = 0
        for frac in self.config.crop_average:
            v = x
            if frac < 1.0:  # centre crop, resized back to the input size
                m = int(round(size * (1 - frac) / 2))
                v = torch.nn.functional.interpolate(x[..., m:size - m, m:size - m], size=(size, size),
                                                    mode="bilinear", antialias=True, align_corners=False)
            z = z + self.embed_raw(v)
            if self.config.flip_average:
                z = z + self.embed_raw(torch.flip(v, dims=[3]))
        return torch.nn.functional.normalize(z, dim=1)

    # -- diffusers-style persistence ----------------------------------------------------
    def save_pretrained(self, folder) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(folder / WEIGHTS))
        (folder / CONFIG).write_text(json.dumps({"architecture": "memlab-copynet", **self.config.to_dict()},
                                                indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder, device: str = "cpu") -> "CopyNet":
        folder = Path(folder)
        if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
            raise ModelFileMissing(f"{folder} holds no memlab copy descriptor ({CONFIG} + {WEIGHTS}); "
                                   f"train one with `python -m memlab train-descriptor --out {folder}`")
        cfg = read_object(folder / CONFIG)
        net = load_module(lambda: cls(CopyNetConfig.from_dict(cfg)), folder / WEIGHTS, folder / CONFIG)
        return net.to(device).eval()


def load_copynet(folder, device: str = "cpu"):
    return CopyNet.from_pretrained(folder, device=device)


def to_input(images, size: int):
    """PIL images -> float tensor [n, 3, size, size] in [0, 1] (square resize, like SSCD's official-320)."""
    import torch
    from PIL import Image

    from .preprocess import to_rgb

    arr = np.stack([np.asarray(to_rgb(im).resize((size, size), Image.BILINEAR), np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).div_(255.0)


COLOUR_NORMS = ("standardize", "grey-world", "brightness")


def normalize_colour(x, mode: str, mean, std, eps: float = 0.02):
    """Colour normalization of each image ([n, 3, h, w] in [0, 1]) before a descriptor sees it:

    - ``standardize``: each channel moved to ``mean`` and ``std`` (per channel): invariant to any gain and
      offset per channel;
    - ``grey-world``: each channel scaled so its mean is ``mean`` (grey-world white balance): invariant to a
      gain per channel (a colour cast, darkening);
    - ``brightness``: the whole image scaled so its mean is the mean of ``mean``: invariant to darkening.

    ``eps`` keeps a flat or black channel from being blown up into noise."""
    import torch

    ref_m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if mode == "standardize":
        ref_s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + eps) * ref_s + ref_m
    if mode == "grey-world":
        return x * ref_m / (x.mean(dim=(2, 3), keepdim=True) + eps)
    if mode == "brightness":
        return x * ref_m.mean() / (x.mean(dim=(1, 2, 3), keepdim=True) + eps)
    raise ValueError(f"colour normalization {mode!r}: not one of {COLOUR_NORMS}")


def low_pass(x, sigma: float):
    """A Gaussian blur of standard deviation ``sigma`` pixels (separable, reflected edges) on [n, c, h, w]."""
    import torch

    r = max(1, int(np.ceil(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(x.shape[1], 1, 1, 1)
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (r, r, 0, 0), mode="reflect"), k, groups=x.shape[1])
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, r, r), mode="reflect"),
                                      k.transpose(2, 3), groups=x.shape[1])
