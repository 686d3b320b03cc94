"""Image preprocessing presets. The preset is part of the score (docs/methods.md, "Copy-detection
descriptors"): scores computed under different presets are not comparable, so every descriptor
names the preset it used.

| preset        | used by                          | recipe                                                   |
|---------------|----------------------------------|----------------------------------------------------------|
| official-320  | SSCD authors, NeMo               | Resize([320, 320]), ImageNet mean/std                    |
| official-288  | SSCD DISC evaluation             | short edge 288 (aspect kept), ImageNet mean/std          |
| dcr           | Somepalli et al. (DCR), Wen et al.| Resize(256) short edge, CenterCrop(224), Normalize(0.5)  |
| membench      | MemBench                         | Resize((288, 288)), ImageNet mean/std                    |
"""
from __future__ import annotations

from dataclasses import dataclass

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


def to_rgb(img: Image.Image) -> Image.Image:
    """Flatten alpha onto white and convert any mode to RGB."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.split()[-1])
        return bg
    return img.convert("RGB")
