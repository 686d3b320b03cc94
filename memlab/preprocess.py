"""Image preprocessing presets. The preset is part of the score (docs/methods.md, "Copy-detection
presets"): scores computed under different presets are not comparable, so every descriptor
names the preset it used.

| preset        | used by                          | recipe                                                   |
|---------------|----------------------------------|----------------------------------------------------------|
| official-320  | SSCD authors, NeMo               | Resize([320, 320]), ImageNet mean/std                    |
| official-288  | SSCD DISC evaluation             | short edge 288 (aspect kept), ImageNet mean/std          |
| dcr           | Somepalli et al. (DCR), Wen et al.| Resize(256) short edge, CenterCrop(224), Normalize(0.5)  |
| membench      | MemBench                         | Resize((288, 288)), ImageNet mean/std                    |

Below them, feeding a network (``network_batches``): PIL's transform on the CPU, the same steps on a GPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preset:
    name: str
    resize: int | tuple[int, int]  # int: short edge, aspect kept; tuple: (h, w) exactly
    crop: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    used_by: str

    @property
    def fixed_size(self) -> bool:
        """True when every image comes out the same size (batchable)."""
        return isinstance(self.resize, tuple) or self.crop is not None

    def transform(self):
        """The torchvision pipeline: PIL RGB image -> float tensor [3, H, W]."""
        from torchvision import transforms as T

        steps = [T.Resize(list(self.resize) if isinstance(self.resize, tuple) else self.resize,
                          interpolation=T.InterpolationMode.BILINEAR)]
        if self.crop is not None:
            steps.append(T.CenterCrop(self.crop))
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)

    def to_dict(self) -> dict:
        return {"name": self.name, "resize": self.resize, "crop": self.crop,
                "mean": list(self.mean), "std": list(self.std), "used_by": self.used_by}


PRESETS: dict[str, Preset] = {
    "official-320": Preset("official-320", (320, 320), None, IMAGENET_MEAN, IMAGENET_STD, "SSCD authors, NeMo"),
    "official-288": Preset("official-288", 288, None, IMAGENET_MEAN, IMAGENET_STD, "SSCD DISC evaluation"),
    "dcr": Preset("dcr", 256, 224, HALF, HALF, "Somepalli et al. (DCR repository), Wen et al."),
    "membench": Preset("membench", (288, 288), None, IMAGENET_MEAN, IMAGENET_STD, "MemBench"),
}


def get_preset(name: str) -> Preset:
    from .errors import MemlabError

    if name not in PRESETS:
        raise MemlabError(f"unknown preprocessing preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # Pillow's grey modes deeper than 8 bits


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode as 8-bit RGB, as a viewer shows it: alpha flattened onto white (as img2dataset mattes it), and
    greys deeper than 8 bits (a 16-bit PNG or TIFF scan) scaled to 8 bits, where Pillow's own ``convert``
    clips them (a 16-bit ramp would read almost white)."""
    if img.mode in HIGH_DEPTH:
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and a.size and a.max() > 255):
            a = a / 257.0  # 65535 -> 255
        elif img.mode == "F" and a.size and a.max() <= 1.0:
            a = a * 255.0  # floats in [0, 1]
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.split()[-1])
        return bg
    return img.convert("RGB")


def open_rgb(path) -> Image.Image:
    """An image file as a viewer shows it: turned as its EXIF orientation says, then ``to_rgb``. Every path
    that embeds, verifies or shows an image reads it this way, so a training image is compared as it was
    indexed."""
    with Image.open(path) as im:
        return as_viewed(im)


def as_viewed(im: Image.Image) -> Image.Image:
    """An opened image turned as its EXIF orientation says, then ``to_rgb``."""
    from PIL import ImageOps

    return to_rgb(ImageOps.exif_transpose(im))


# ---------------------------------------------------------------------------------- feeding a network
PREPARE_WORKERS = int(os.environ.get("MEMLAB_PREPARE_WORKERS", 0))  # 0: min(8, CPU count)
# where images are resized and normalized: "" on the network's device when it is a GPU, "cpu" always PIL on the CPU,
# "device" always the tensor path (on a CPU too): for comparisons (benchmarks/bench_embed.py) and tests
PREPARE_ON = os.environ.get("MEMLAB_PREPARE_ON", "")


def prepare_workers(device: str) -> int:
    """Threads preparing images ahead of the network: on a GPU up to 8 (the CPU's cores are free for it); on the
    CPU none (1: each batch is prepared in turn, since the network's own threads hold the cores and a pool only
    takes turns with them: on the 2-core machine clip-b32 embedded at 0.86x the bare network's rate with a pool
    of two, 0.98x without, ``benchmarks/bench_embed.py``). ``MEMLAB_PREPARE_WORKERS`` overrides both."""
    if PREPARE_WORKERS:
        return PREPARE_WORKERS
    return 1 if str(device).startswith("cpu") else min(8, os.cpu_count() or 1)


def prepared_batches(images, prepare, step: int, workers: int | None = None):
    """Stacked tensors of ``prepare(image)``, ``step`` images at a time. Images are prepared by a thread
    pool one batch ahead of the network (PIL's resize and torch's conversions release the GIL); the order and
    the values are those of a plain loop. ``workers``: the pool's threads (1: no pool, each batch in turn)."""
    import concurrent.futures as cf

    import torch

    workers = workers or PREPARE_WORKERS or min(8, os.cpu_count() or 1)
    n = len(images)
    if workers <= 1 or n <= 1:
        for i in range(0, n, step):
            yield torch.stack([prepare(im) for im in images[i:i + step]])
        return
    with cf.ThreadPoolExecutor(workers) as pool:
        def submit(i):
            return [pool.submit(prepare, im) for im in images[i:i + step]] if i < n else None

        pending = submit(0)
        for i in range(0, n, step):
            ahead = submit(i + step)  # the next batch is prepared while this one runs
            yield torch.stack([f.result() for f in pending])
            pending = ahead


def device_transform(transform):
    """A torchvision ``Compose`` of Resize, CenterCrop, RGB conversion, ToTensor and Normalize (memlab's presets,
    open_clip's transforms) as one function of a batch of 8-bit pixels on any device, uint8 [n, H, W, 3 or 4] -> float
    [n, 3, h, w]; None when a step is one it does not know. The resize is torchvision's antialiased kernel, the
    filter PIL applies (bilinear; bicubic with a = -0.5), then rounded and clamped to 0..255 as PIL's 8-bit
    output is, pass by pass: the values are the PIL transform's within two grey levels (``tests/test_preprocess.py``).
    A fourth channel (``pixels``' RGBX) is dropped."""
    from torchvision import transforms as T
    from torchvision.transforms import functional as F

    steps = []
    for t in getattr(transform, "transforms", [transform]):
        kind = getattr(t, "__name__", None) or type(t).__name__  # a function by its name, else its class
        if isinstance(t, T.Resize):
            steps.append(lambda x, t=t: _resize_like_pil(x, t.size, t.interpolation, t.max_size))
        elif isinstance(t, T.CenterCrop):
            steps.append(lambda x, t=t: F.center_crop(x, t.size))
        elif isinstance(t, T.Normalize):
            steps.append(lambda x, t=t: F.normalize(x, t.mean, t.std))
        elif kind in ("ToTensor", "MaybeToTensor"):
            steps.append(lambda x: x / 255.0)
        elif kind in ("MaybeConvertMode", "_convert_to_rgb") and getattr(t, "mode", "RGB") in (None, "RGB"):
            continue  # the pixels are RGB already
        else:
            return None

    def apply(pixels):
        x = pixels[..., :3].permute(0, 3, 1, 2).float()
        for step in steps:
            x = step(x)
        return x

    return apply


def resized_size(h: int, w: int, size, max_size=None) -> tuple[int, int]:
    """(height, width) after torchvision's ``Resize(size, max_size=...)``: a pair is the size; one number is the
    short edge, the long edge scaled and truncated, then capped at ``max_size``."""
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    s = int(size[0] if isinstance(size, (list, tuple)) else size)
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = s, int(s * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), int(max_size)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def _resize_like_pil(x, size, interpolation, max_size=None):
    """PIL's resampling of 8-bit images on float tensors [n, c, H, W] holding 0..255: the same antialiased filter,
    horizontal pass first, each pass rounded half up and clamped to 8 bits as PIL stores it."""
    from torchvision.transforms import functional as F

    h, w = x.shape[-2:]
    oh, ow = resized_size(h, w, size, max_size)
    if ow != w:
        x = F.resize(x, [h, ow], interpolation, antialias=True).add_(0.5).floor_().clamp_(0, 255)
    if oh != h:
        x = F.resize(x, [oh, ow], interpolation, antialias=True).add_(0.5).floor_().clamp_(0, 255)
    return x


def _pixels_of(im):
    """An image's 8-bit pixels, [H, W, 4] (RGBX, Pillow's own layout for RGB) read through the Arrow C interface
    without a copy where Pillow offers it (11.2+; a few microseconds), else [H, W, 3] by ``np.asarray``, which
    copies through ``tobytes`` holding the GIL (about 0.1 ms for 256 x 256, time the GPU's feeding thread
    waits for when the network runs in Python)."""
    im = im if im.mode == "RGB" else to_rgb(im)
    if hasattr(im, "__arrow_c_array__"):
        try:
            import pyarrow as pa

            flat = np.frombuffer(pa.array(im).buffers()[-1], np.uint8)
            if flat.size == im.width * im.height * 4:
                return flat.reshape(im.height, im.width, 4)
        except Exception:  # noqa: BLE001 - an image Pillow keeps in several blocks (large), an older pyarrow
            pass
    return np.asarray(im)


def pixels(images, pin: bool = False):
    """8-bit RGB pixels of PIL images: one uint8 [n, H, W, C] tensor (C = 4 with an unused fourth channel, as
    Pillow stores RGB, or 3; in pinned memory with ``pin``, so it can travel to the GPU while the GPU works) when
    they share a size, else a list of [H, W, C] tensors."""
    import torch

    _quiet_read_only()
    arrays = [_pixels_of(im) for im in images]
    if len({a.shape[:2] for a in arrays}) == 1:
        c = min(a.shape[2] for a in arrays)
        shape = (len(arrays), *arrays[0].shape[:2], c)
        try:
            out = torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
        except RuntimeError:  # no pinned memory here (a CUDA that is not this process's to pin with): pageable
            out = torch.empty(shape, dtype=torch.uint8)
        # one copy for the batch, without the GIL throughout: a copy per image hands the GIL back and forth
        # with the thread that runs the network in Python (open_clip), which then waits for it
        return torch.stack([torch.from_numpy(a[..., :c]) for a in arrays], out=out)
    return [torch.from_numpy(np.array(a[..., :3])) for a in arrays]


_QUIET: list = []


def _quiet_read_only() -> None:
    """torch warns, once per process, that an array it wraps is read-only (Pillow exports its memory through
    Arrow read-only; memlab only reads it): that once, silenced, here."""
    if not _QUIET:
        import warnings

        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = np.zeros(1, np.uint8)
            a.flags.writeable = False
            torch.from_numpy(a)
        _QUIET.append(True)


def _on_device(pix, apply, device):
    if isinstance(pix, list):
        import torch

        return torch.cat([_on_device(p[None], apply, device) for p in pix])
    try:
        return apply(pix.to(device, non_blocking=True))
    except RuntimeError:  # a downscale past what the device's antialiasing kernel takes: the same steps here
        return apply(pix).to(device)


def network_batches(images, transform, step: int, device: str, workers: int | None = None):
    """The network's input on ``device``, ``step`` images at a time, in order: ``transform(image)`` stacked.
    On a GPU the images travel as 8-bit pixels, copied into pinned memory by two threads two batches ahead, and
    are resized and normalized on the GPU (``device_transform``); PIL's resize on the CPU fed SSCD on an H100 at
    a quarter of the network's rate (issue 34). On the CPU, for a transform ``device_transform`` does not know,
    or with ``MEMLAB_PREPARE_ON=cpu``: PIL's transform on ``prepared_batches``. Every image's tensor is the
    transform's within two grey levels either way."""
    import concurrent.futures as cf

    gpu = not str(device).startswith("cpu")
    apply = device_transform(transform) if PREPARE_ON == "device" or (gpu and PREPARE_ON != "cpu") else None
    if apply is None:
        for x in prepared_batches(images, lambda im: transform(to_rgb(im)), step, workers or prepare_workers(device)):
            yield x.to(device)
        return
    pin = str(device).startswith("cuda")
    starts = list(range(0, len(images), step))
    workers = workers or min(2, prepare_workers(device))  # a batch's pixels take a thread a fraction of its GPU time
    _quiet_read_only()  # here, before the threads
    with cf.ThreadPoolExecutor(workers) as pool:
        pending = [pool.submit(pixels, images[i:i + step], pin) for i in starts[:workers]]
        for k in range(len(starts)):
            if k + workers < len(starts):
                i = starts[k + workers]
                pending.append(pool.submit(pixels, images[i:i + step], pin))
            yield _on_device(pending[k].result(), apply, device)
            pending[k] = None
