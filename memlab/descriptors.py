"""Copy-detection descriptors: one interface, a registry of named configs (like open_clip's).

A descriptor turns PIL images into float32 unit-norm rows; similarity is the dot product (cosine).
Every descriptor names its model, its preprocessing preset and, where one was published, its
replication threshold. Adding a descriptor is adding a config to ``DESCRIPTORS``.

- ``sscd``: SSCD (Pizzi et al. 2022), the official TorchScript files. Replication: cosine > 0.5
  (Somepalli et al. 2022); high confidence: cosine > 0.75 (~90% precision on DISC, SSCD authors).
- ``clip``: open_clip image (and text) embeddings, normalized. No published copy threshold.
- ``memlab-copy``: memlab's own copy-detection network (``memlab.copynet``), trained SSCD's way by
  ``python -m memlab train-descriptor`` on images memlab makes; weights shipped in
  ``assets/memlab-copy``, low-passed inputs and spatial verification (a row holds the trunk's last two
  feature maps beside the global descriptor, so the cosine compares layouts too); ``memlab-copy-global``
  is the same network's global descriptor alone. No published threshold: calibrated per index on
  distinct items.
- ``pixel``: mean-centred low-resolution pixels (Carlini et al. 2023 use pixel-space L2); weight-free,
  always available. With ``tiles > 1`` (``pixel-tiled``) each tile is centred and normalized on its own;
  the index searches by the mean tile cosine, and the verdict, the calibration and the reported score
  use the worst tile, ``tile_min`` (Carlini et al.'s tiled distance, as a similarity), so a matching
  background cannot hide a differing object; the mean is kept as ``tile_mean``.
"""
from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageFilter

from . import scorenorm
from .errors import MemlabError, ModelFileMissing
from .preprocess import get_preset, network_batches, to_rgb

SSCD_URL = "https://dl.fbaipublicfiles.com/sscd-copy-detection/{model}.torchscript.pt"

# Named configs. "kind" picks the class; the rest are its keyword arguments.
DESCRIPTORS: dict[str, dict] = {
    "sscd": {"kind": "sscd", "model": "sscd_disc_mixup", "preset": "official-320"},
    "sscd-large": {"kind": "sscd", "model": "sscd_disc_large", "preset": "official-320"},
    "sscd-dcr": {"kind": "sscd", "model": "sscd_disc_large", "preset": "dcr"},
    "sscd-membench": {"kind": "sscd", "model": "sscd_disc_large", "preset": "membench"},
    "clip": {"kind": "clip", "model": "ViT-L-14-quickgelu", "pretrained": "openai"},
    "clip-b32": {"kind": "clip", "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
    "memlab-copy": {"kind": "learned", "weights": None, "layout": True, "blur": 1.0, "score_norm": scorenorm.DEFAULT},
    "memlab-copy-global": {"kind": "learned", "weights": None},
    "pixel": {"kind": "pixel", "size": 16, "tiles": 1},
    "pixel-tiled": {"kind": "pixel", "size": 32, "tiles": 4},
}


def register_descriptor(name: str, config: dict) -> None:
    """Add (or replace) a named descriptor config; ``config['kind']`` must be a known kind."""
    if config.get("kind") not in _KINDS:
        raise MemlabError(f"descriptor kind must be one of {sorted(_KINDS)}")
    DESCRIPTORS[name] = dict(config)


def list_descriptors() -> list[str]:
    return sorted(DESCRIPTORS)


def descriptor_class(name: str) -> type | None:
    """The class a registered descriptor is built with (its class-level published threshold, duplicate cut,
    ...), without building it; None for a name that is not registered."""
    return _KINDS.get(DESCRIPTORS.get(name, {}).get("kind"))


def create_descriptor(name: str, **overrides) -> "Descriptor":
    """Build a descriptor from its registered config; keyword overrides replace config values
    (an override of None is ignored unless the config itself names that key)."""
    if name not in DESCRIPTORS:
        raise MemlabError(f"unknown descriptor {name!r}; known: {', '.join(list_descriptors())}")
    base = DESCRIPTORS[name]
    cfg = {**base, **{k: v for k, v in overrides.items() if v is not None or k in base}}
    kind, norm = cfg.pop("kind"), scorenorm.check(cfg.pop("score_norm", None))
    import inspect

    accepted = inspect.signature(_KINDS[kind]).parameters
    unknown = [k for k in cfg if k not in accepted]
    if unknown:
        raise MemlabError(f"descriptor {name!r} ({kind}) takes no option(s) {', '.join(unknown)}")
    d = _KINDS[kind](name=name, **cfg)
    d.score_norm = norm  # how the index scores its verdict (``memlab.scorenorm``): at build and at query time
    return d


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


class Descriptor:
    """Interface: ``name``, ``kind``, ``model``, ``preset``, ``dim``, ``embed(images) -> [n, d]``."""

    kind = "base"
    name: str
    model: str
    preset: str
    dim: int
    published_threshold: float | None = None
    published_high: float | None = None
    threshold_source: str | None = None
    threshold_carried_over: bool = False  # a published threshold used outside the setting it was published for
    duplicate_threshold: float = 0.95  # near-duplicate groups (connected components above it)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    verdict = "cosine"  # the score a verdict (and calibration) uses; see ``verdict_scores``
    score_norm: dict | None = None  # ``memlab.scorenorm``'s rule, where the verdict's score is normalized

    def secondary_scores(self, query: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """Extra per-pair scores computed at re-rank time (query [d], items [k, d])."""
        return {}

    def verdict_scores(self, query: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The verdict's score of a query [d] against items [k, d]: the cosine, unless the descriptor
        defines another (``pixel-tiled``: the worst tile)."""
        return np.asarray(items, np.float32) @ np.asarray(query, np.float32)

    def config(self) -> dict:
        """The keyword arguments that rebuild this descriptor with ``create_descriptor``."""
        return {}

    def info(self) -> dict:
        return {"name": self.name, "kind": self.kind, "config": self.config(), "model": self.model, "preset": self.preset,
                "verdict": self.verdict,
                "dim": self.dim, "published_threshold": self.published_threshold,
                "published_high": self.published_high, "threshold_source": self.threshold_source,
                "duplicate_threshold": self.duplicate_threshold}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r}, preset={self.preset!r})"


# --------------------------------------------------------------------------------------- pixel
class PixelDescriptor(Descriptor):
    """Mean-centred low-resolution RGB pixels, L2-normalized (per tile when ``tiles > 1``).

    The image is slightly blurred (Gaussian, a quarter of an output cell) and area-resized to
    ``size`` x ``size``; with ``tiles = g`` it is cut into g x g tiles, each centred on its mean
    (over all channels, so colour casts still count) and normalized, and the tiles are concatenated
    / g, so the dot product is the mean tile cosine. A flat tile (RMS below one grey level) becomes
    the constant unit vector: two flat tiles match, a flat and a textured tile score 0.
    """

    kind = "pixel"

    def __init__(self, name: str = "pixel", size: int = 16, tiles: int = 1):
        if size < 2 or size % tiles:
            raise MemlabError(f"pixel descriptor: size {size} must be >= 2 and divisible by tiles {tiles}")
        self.name, self.size, self.tiles = name, int(size), int(tiles)
        self.model = f"pixels-{size}x{size}" + (f"-tiles{tiles}x{tiles}" if tiles > 1 else "")
        self.preset = f"blur-area-resize-{size}-mean-centred"
        self.dim = size * size * 3
        self.duplicate_threshold = 0.97
        # Carlini et al.'s tiled distance: a pair is as close as its worst tile, so a matching background
        # cannot hide a differing object
        self.verdict = "tile_min" if tiles > 1 else "cosine"

    def _one(self, img: Image.Image) -> np.ndarray:
        img = to_rgb(img)
        radius = 0.25 * max(img.size) / self.size
        if radius >= 0.5:
            img = img.filter(ImageFilter.GaussianBlur(radius))
        a = np.asarray(img.resize((self.size, self.size), Image.BOX), dtype=np.float32) / 255.0
        t, g = self.size // self.tiles, self.tiles
        tiles = a.reshape(g, t, g, t, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, t * t * 3)
        tiles = tiles - tiles.mean(axis=1, keepdims=True)
        rms = np.sqrt((tiles ** 2).mean(axis=1, keepdims=True))
        unit = tiles / np.maximum(np.linalg.norm(tiles, axis=1, keepdims=True), 1e-12)
        const = np.full_like(tiles, 1.0 / np.sqrt(tiles.shape[1]))
        unit = np.where(rms < 1.0 / 255.0, const, unit)
        return (unit.reshape(-1) / g).astype(np.float32)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._one(im) for im in images])

    def config(self):
        return {"size": self.size, "tiles": self.tiles}

    def secondary_scores(self, query, items):
        if self.tiles == 1:
            return {}
        # the verdict is the worst tile; the mean tile cosine is the secondary number
        return {"tile_mean": np.asarray(items, np.float32) @ np.asarray(query, np.float32)}

    def verdict_scores(self, query, items):
        if self.tiles == 1:
            return super().verdict_scores(query, items)
        n = self.tiles * self.tiles
        q = np.asarray(query, np.float32).reshape(n, -1) * self.tiles
        t = np.asarray(items, np.float32).reshape(len(items), n, -1) * self.tiles
        return np.einsum("td,ktd->kt", q, t).min(axis=1)


# ---------------------------------------------------------------------------------------- torch
def _device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cache_dir() -> Path:
    """Where downloaded weights live: $MEMLAB_CACHE, else ~/.cache/memlab."""
    return Path(os.environ.get("MEMLAB_CACHE", Path.home() / ".cache" / "memlab"))


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("MEMLAB_OFFLINE", "HF_HUB_OFFLINE"))


def resolve_sscd_weights(model: str, weights: str | os.PathLike | None = None) -> Path:
    """Find ``<model>.torchscript.pt``: an explicit file or folder, else the cache, else download
    it once from the official URL (when online). Offline and absent: a clear error."""
    fname = f"{model}.torchscript.pt"
    if weights is not None:
        p = Path(weights)
        if p.is_dir():
            p = p / fname
        if not p.is_file():
            raise ModelFileMissing(f"SSCD weights not found at {p}. Download {SSCD_URL.format(model=model)} "
                                   f"and place it there.")
        return p
    target = cache_dir() / "sscd" / fname
    if target.is_file():
        return target
    url = SSCD_URL.format(model=model)
    if offline():
        raise ModelFileMissing(f"SSCD weights {fname} are not in the cache and downloads are off. "
                               f"Download {url} and place it at {target} (or pass its path).")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        tmp.replace(target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ModelFileMissing(f"could not download {url} ({e}). Place {fname} at {target} "
                               f"(or pass its path).") from e
    _record_trusted(target, source=url)
    return target


# TorchScript runs code when loaded, so memlab loads a TorchScript file only when it fetched it itself from
# the official URL (its sha256 is then recorded in the cache's trust list) or when the user confirms the
# file's sha256 (``weights_sha256=`` / ``--weights-sha256``, or $MEMLAB_TRUST_SHA256, comma-separated). The
# SSCD authors publish no checksums, so a file copied in by hand is refused until confirmed.
TRUST_FILE = "trusted-torchscript.json"


def _trust_list() -> dict:
    import json

    f = cache_dir() / TRUST_FILE
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except (ValueError, RecursionError):
        return {}


def _record_trusted(path: Path, source: str) -> None:
    import json

    from .indexfiles import sha256

    trusted = _trust_list()
    trusted[sha256(path)] = {"file": Path(path).name, "source": source}
    f = cache_dir() / TRUST_FILE
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(trusted, indent=2))
    tmp.replace(f)


def check_torchscript_trusted(path: Path, confirmed: str | None = None) -> str:
    """The file's sha256 if memlab downloaded it from the official URL or the user confirmed it; else a
    MemlabError that names the file and its checksum and says how to confirm it."""
    from .indexfiles import sha256

    digest = sha256(path)
    confirms = {c.strip().lower() for c in (confirmed or "").split(",") + os.environ.get(
        "MEMLAB_TRUST_SHA256", "").split(",") if c.strip()}
    if digest in confirms or digest in _trust_list():
        return digest
    if confirmed:
        raise MemlabError(f"{path} has sha256 {digest}, not the checksum you confirmed ({confirmed}); not loaded")
    raise MemlabError(f"refusing to load TorchScript {path}: a TorchScript file runs code, and memlab did not "
                      f"download this one from the official URL. If you trust it, confirm its sha256 "
                      f"{digest} (--weights-sha256 {digest}, or MEMLAB_TRUST_SHA256={digest})")


class SSCDDescriptor(Descriptor):
    """SSCD TorchScript model (trunk, GeM p=3, linear, L2 norm): outputs are unit vectors."""

    kind = "sscd"
    published_threshold = 0.5
    published_high = 0.75
    threshold_source = ("published: replication at SSCD cosine > 0.5 (Somepalli et al. 2022, DCR); "
                        "high confidence > 0.75 (~90% precision on DISC, Pizzi et al. 2022)")
    duplicate_threshold = 0.75

    def __init__(self, name="sscd", model="sscd_disc_mixup", preset="official-320", weights=None,
                 device=None, batch_size=32, weights_sha256=None):
        self.name, self.model, self.preset = name, model, preset
        if (model, preset) != ("sscd_disc_mixup", "official-320"):
            # 0.5 / 0.75 were published for disc_mixup at its official preprocessing: elsewhere they are
            # carried over (DCR and MemBench use 0.5 with disc_large), and say so
            self.threshold_carried_over = True
            self.threshold_source = (f"carried over: 0.5 / 0.75 were published for sscd_disc_mixup at the official "
                                     f"preprocessing (Somepalli et al. 2022; Pizzi et al. 2022); {model} with preset "
                                     f"{preset} uses them as DCR / MemBench did, uncalibrated for this model")
        self._preset = get_preset(preset)
        self.weights = resolve_sscd_weights(model, weights)
        check_torchscript_trusted(self.weights, weights_sha256)
        self.device = _device(device)
        self.batch_size = int(batch_size)
        import torch

        self.net = torch.jit.load(str(self.weights), map_location=self.device).eval()
        self.dim = int(self.embed([Image.new("RGB", (64, 64))]).shape[1])

    def config(self):
        return {"model": self.model, "preset": self.preset}

    def embed(self, images):
        import torch

        step = self.batch_size if self._preset.fixed_size else 1
        out = []
        with torch.inference_mode():  # outputs stay on the device until the end: no wait between batches
            for x in network_batches(images, self._preset.transform(), step, self.device):
                out.append(self.net(x).float())
        if not out:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        return l2_normalize(torch.cat(out).cpu().numpy())


class CLIPDescriptor(Descriptor):
    """open_clip image/text embeddings, normalized (``normalize=True``). For OpenAI weights the
    QuickGELU activation is forced (docs/methods.md: the plain name gives subtly wrong vectors)."""

    kind = "clip"
    duplicate_threshold = 0.94  # clip-retrieval's near-duplicate cut

    def __init__(self, name="clip", model="ViT-L-14-quickgelu", pretrained="openai", device=None,
                 batch_size=32, cache_dir=None):
        from pickle import UnpicklingError

        import open_clip
        import torch

        self.name, self.model, self.pretrained = name, model, pretrained
        self.device = _device(device)
        self.batch_size = int(batch_size)
        force_qg = pretrained == "openai" and "quickgelu" not in model.lower()
        try:
            self.net, _, self._tf = open_clip.create_model_and_transforms(
                model, pretrained=pretrained, force_quick_gelu=force_qg, device=self.device,
                cache_dir=cache_dir)
        except UnpicklingError as e:  # torch's advice (weights_only=False) would run the file's code
            raise ModelFileMissing(f"open_clip could not load {model} / {pretrained}: not a checkpoint of tensors "
                                   f"alone (memlab reads checkpoints with weights_only, and never otherwise)") from e
        except (RuntimeError, OSError, ValueError) as e:
            raise ModelFileMissing(f"open_clip could not load {model} / {pretrained}: "
                                   f"{str(e).splitlines()[0][:300]}") from e
        self.net.eval()
        self.tokenizer = open_clip.get_tokenizer(model)
        self.preset = f"open_clip:{model}"
        with torch.inference_mode():
            self.dim = int(self.embed_text(["a"]).shape[1])

    def config(self):
        return {"model": self.model, "pretrained": self.pretrained}

    def embed(self, images):
        import torch

        out = []
        with torch.inference_mode():
            for x in network_batches(images, self._tf, self.batch_size, self.device):
                out.append(self.net.encode_image(x, normalize=True).float())
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, self.dim), np.float32)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tok = self.tokenizer(list(texts)).to(self.device)
            return self.net.encode_text(tok, normalize=True).float().cpu().numpy()


def default_copynet_weights() -> Path:
    """The weights memlab trained and ships: $MEMLAB_COPY_WEIGHTS, else ``assets/memlab-copy``."""
    env = os.environ.get("MEMLAB_COPY_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "assets" / "memlab-copy"


class LearnedCopyDescriptor(Descriptor):
    """memlab's own copy detector (``memlab.copynet``): trunk, GeM, linear, L2 norm, trained SSCD's way.

    ``weights`` is a folder with ``config.json`` + ``model.safetensors`` (default: the shipped
    ``assets/memlab-copy``); a bigger network trained elsewhere loads the same way. The model string
    names the weights by their checksum, so an index refuses queries from different weights.

    ``layout=True`` (``memlab-copy``) adds spatial verification, as copy-detection systems check global
    candidates with local evidence: a row is [global descriptor, the trunk's last two feature maps (the
    finer one average-pooled to the coarser one's grid), each flattened and L2-normalized] / sqrt(3), so
    its cosine, the search's score and the verdict, is the mean of the global and the two layout
    cosines (a one-stage trunk has one map). GeM pooling forgets where things are: two distinct scenes
    on the same background pattern pool alike, while a copy keeps its layout through the blur and colour
    drift of a diffusion decoder.
    The layout is not mirror-invariant: a mirrored copy keeps its global third. The global and layout
    cosines stay in each match as ``global`` and ``layout``. Options for a mirrored copy: ``mirror`` (a row
    also holds its mirror image's layout; the verdict takes the better orientation) or ``fold`` (each map summed
    with its mirror image's and both mirrored: one vector, the same for an image and its mirror image).

    ``blur`` (pixels, at the network's input size) low-passes every image before the network, query and
    training image alike: a diffusion model's copy loses fine detail the training image has, so the
    comparison is made without it (memlab-copy: 1 px at 64 x 64, chosen on the model copies of items
    other than those the world's card reports: ``benchmarks/bench_model_copies.py --seed``).
    """

    kind = "learned"
    duplicate_threshold = 0.95

    def __init__(self, name="memlab-copy", weights=None, device=None, batch_size=64, layout: bool = False,
                 blur: float = 0.0, colour_norm: str | None = None, mirror: bool = False, fold: bool = False):
        import hashlib

        from .copynet import load_copynet

        folder = Path(weights) if weights is not None else default_copynet_weights()
        self.name, self.weights, self.layout, self.blur = name, folder, bool(layout), float(blur)
        from .copynet import COLOUR_NORMS

        self.mirror, self.fold = bool(mirror), bool(fold)
        if self.mirror and self.fold:
            raise MemlabError("mirror and fold are two answers to a mirrored copy: choose one")
        if colour_norm and colour_norm not in COLOUR_NORMS:
            raise MemlabError(f"colour_norm must be one of {', '.join(COLOUR_NORMS)} (got {colour_norm!r})")
        if self.blur < 0:
            raise MemlabError(f"blur must be >= 0 pixels, got {blur}")
        self.device = _device(device)
        self.batch_size = int(batch_size)
        self.net = load_copynet(folder, device=self.device)
        cfg = self.net.config
        if colour_norm is not None:  # None: as the weights were trained (their config.json)
            cfg.colour_norm = str(colour_norm)
        self.colour_norm = cfg.colour_norm
        digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:12]
        self.model = f"memlab-copynet-{cfg.dim}d-{digest}"
        crops = [c for c in cfg.crop_average if c < 1.0]
        self.preset = (f"resize-{cfg.input_size}x{cfg.input_size}" + (f"-blur-{self.blur:g}" if self.blur else "")
                       + (f"-colour-{self.colour_norm}" if self.colour_norm else "") + "-imagenet-norm" + ("-flip-avg" if cfg.flip_average else "")
                       + (f"-crop-avg-{'-'.join(f'{c:g}' for c in crops)}" if crops else ""))
        self.dim = int(cfg.dim)
        if self.layout:  # the last two stages' maps (one, for a one-stage trunk), on the last one's grid
            side = cfg.input_size // 2 ** (len(cfg.widths) - 1)
            self.map_shapes = [(int(c), side, side) for c in cfg.widths[1:][-2:]]
            self.preset += ("+layout-" + "+".join("{}x{}x{}".format(*m) for m in self.map_shapes)
                            + ("-and-mirrored" if self.mirror else "") + ("-mirror-folded" if self.fold else ""))
            self.dim += sum(int(np.prod(m)) for m in self.map_shapes) * (2 if self.mirror else 1)
            if self.mirror:
                self.verdict = "layout-or-mirrored"

    def config(self):
        # the shipped weights are named by None, so an index built with them works from any checkout
        default = self.weights.resolve() == default_copynet_weights().resolve()
        return {"weights": None if default else str(self.weights), "layout": self.layout, "blur": self.blur,
                "colour_norm": self.colour_norm, "mirror": self.mirror, "fold": self.fold}

    def embed(self, images):
        import torch

        from .copynet import low_pass, to_input

        size = self.net.config.input_size
        unit = torch.nn.functional.normalize
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = to_input(list(images[i:i + self.batch_size]), size).to(self.device)
                if self.blur:
                    x = low_pass(x, self.blur)
                g = self.net(x).float()
                if self.layout:
                    maps = self.net.layout_maps(x, len(self.map_shapes))  # the finer map pooled to the last grid
                    if self.mirror or self.fold:
                        flipped = self.net.layout_maps(torch.flip(x, dims=[3]), len(self.map_shapes))
                    if self.mirror:  # the mirror image's layout beside the image's own
                        maps += flipped
                    elif self.fold:  # the layout folded about the vertical axis: the same for the mirror image
                        maps = [m + f + torch.flip(m + f, dims=[3]) for m, f in zip(maps, flipped)]
                    parts = [unit(m.flatten(1), dim=1) for m in maps]
                    g = torch.cat([g, *parts], dim=1) / np.sqrt(1.0 + len(parts))
                out.append(g.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def _split(self, v: np.ndarray) -> list[np.ndarray]:
        """Rows [global, layout maps..., (mirrored layout maps...)] -> their unit parts."""
        shapes = list(self.map_shapes) * (2 if self.mirror else 1)
        v = np.asarray(v, np.float32) * np.float32(np.sqrt(1.0 + len(shapes)))
        cuts = np.cumsum([self.net.config.dim] + [int(np.prod(m)) for m in shapes])[:-1]
        return np.split(v, cuts, axis=-1)

    def _parts(self, query, items) -> tuple[np.ndarray, np.ndarray]:
        """(global cosine, layout cosine) of a query [d] against items [k, d]; with ``mirror`` the layout
        cosine is the better of the query's layout against the item's and against the item's mirror image's."""
        q, t = self._split(query), self._split(items)
        m = len(self.map_shapes)
        same = np.mean([t[1 + j] @ q[1 + j] for j in range(m)], axis=0)
        if not self.mirror:
            return t[0] @ q[0], same
        return t[0] @ q[0], np.maximum(same, np.mean([t[1 + m + j] @ q[1 + j] for j in range(m)], axis=0))

    def secondary_scores(self, query, items):
        if not self.layout:
            return {}
        g, lay = self._parts(query, items)
        return {"global": g, "layout": lay}

    def verdict_scores(self, query, items):
        """The cosine; with ``mirror``, the mean of the global and the two layout cosines where each layout is
        compared with the item's own or, if better, its mirror image's (a mirrored copy is a copy)."""
        if not (self.layout and self.mirror):
            return super().verdict_scores(query, items)
        g, lay = self._parts(query, items)
        m = len(self.map_shapes)
        return ((g + m * lay) / (1.0 + m)).astype(np.float32)


_KINDS: dict[str, Callable[..., Descriptor]] = {
    "pixel": PixelDescriptor, "sscd": SSCDDescriptor, "clip": CLIPDescriptor, "learned": LearnedCopyDescriptor}


# ------------------------------------------------------------------------------ split product
def split_product_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Split-product similarity (Somepalli et al. 2022) for token features, library-only (memlab's
    match results do not use it: its descriptors give one vector per image).

    a: [Na, T, D], b: [Nb, T, D]. Each image's features are cut into its T chunks (tokens), each chunk
    L2-normalized on its own; the similarity is the max over chunk index t of the cosine of the two images'
    t-th chunks: an image against itself scores exactly 1, and an object copied into one token of another
    image scores high although the global cosine of the two images, averaged over every token, stays low.
    A chunk of zeros scores 0. Returns [Na, Nb].
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise MemlabError(f"split product needs [N, T, D] arrays of the same T, D; got {a.shape}, {b.shape}")

    def unit(x):
        n = np.linalg.norm(x, axis=-1, keepdims=True)
        return x / np.where(n > 0, n, 1.0)
    return np.einsum("itd,jtd->ijt", unit(a), unit(b)).max(axis=-1)
