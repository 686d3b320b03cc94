"""Copies made by a world's own model: the ground truth of "the model copies" for a copy detector.

Synthetic distortions (``memlab.distort``) say how a descriptor survives edits; what a diffusion model
returns when it reproduces a training image is different: blur, colour drift, lost detail. So the index
of a world with a pipeline can also be scored on copies its model makes of held-out training images:

- ``img2img@s``: image-to-image from the training image and its caption at strength s (0.2 to 0.5:
  the model redraws the last s of the denoising trajectory);
- ``vae``: the VAE round trip (encode, decode), the decoder's own loss of detail;
- ``tint@s``, ``dark@s``, ``mirror@s`` (``photometric``): the strength-s copies with a random per-channel
  gain of 0.7-1.3, darkened to 50-70%, mirrored: the colour casts and darkening of the world's own copies
  seen in its generations (issue 30), and a mirror image, are copies too.
"""
from __future__ import annotations

from typing import Sequence

STRENGTHS = (0.2, 0.3, 0.4, 0.5)


def model_copies(pipe, images: Sequence, captions: Sequence[str], strengths=STRENGTHS, steps: int = 30,
                 guidance: float = 5.0, seed: int = 0, vae: bool = True, batch_size: int = 16,
                 progress=None) -> list[tuple[int, str, object]]:
    """(input index, kind, PIL image) for every input image and kind; seeded per image."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    i2i = StableDiffusionImg2ImgPipeline(**{k: v for k, v in pipe.components.items()
                                            if k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler",
                                                     "safety_checker", "feature_extractor", "image_encoder")},
                                         requires_safety_checker=False)
    i2i.set_progress_bar_config(disable=True)
    size = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
    ims = [im.convert("RGB").resize((size, size), Image.BICUBIC) for im in images]
    out = []
    jobs = [(s, i) for s in strengths for i in range(0, len(ims), batch_size)]
    bar = progress or (lambda it, **kw: it)
    for s, i in bar(jobs, desc="model copies (img2img)"):
        chunk = ims[i:i + batch_size]
        gens = [torch.Generator("cpu").manual_seed(seed * 100_003 + i + j) for j in range(len(chunk))]
        res = i2i(prompt=list(captions[i:i + batch_size]), image=chunk, strength=s, num_inference_steps=steps,
                  guidance_scale=guidance, generator=gens, output_type="pil").images
        out += [(i + j, f"img2img@{s}", im) for j, im in enumerate(res)]
    if vae:
        out += [(i, "vae", im) for i, im in enumerate(vae_round_trip(pipe, ims, batch_size))]
    return out


def vae_round_trip(pipe, images: Sequence, batch_size: int = 16) -> list:
    """Each image as the pipeline's VAE returns it (encode to the latent mean, decode): the decoder's own loss of
    detail and colour, which every generation of the pipeline passes through. Images are resized to the pipeline's
    resolution first."""
    import numpy as np
    import torch
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image

    size = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
    proc = VaeImageProcessor(vae_scale_factor=pipe.vae_scale_factor)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            chunk = [im.convert("RGB").resize((size, size), Image.BICUBIC) for im in images[i:i + batch_size]]
            x = proc.preprocess(chunk).to(pipe.vae.device, pipe.vae.dtype)
            rec = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample
            dec = proc.postprocess(rec.float(), output_type="np")
            out += [Image.fromarray((np.clip(a, 0, 1) * 255).round().astype("uint8")) for a in dec]
    return out


def photometric(images: Sequence, seed: int) -> dict[str, list]:
    """{"tint", "dark", "mirror": the images with a random per-channel gain of 0.7-1.3, darkened by a factor of
    0.5-0.7, mirrored left to right}, drawn from ``seed``."""
    import random

    import numpy as np
    from PIL import Image, ImageOps

    rng = random.Random(seed)
    out: dict[str, list] = {"tint": [], "dark": [], "mirror": []}

    def img(a):
        return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))
    for im in images:
        a = np.asarray(im.convert("RGB"), np.float32)
        out["tint"].append(img(a * np.array([rng.uniform(0.7, 1.3) for _ in range(3)], np.float32)))
        out["dark"].append(img(a * rng.uniform(0.5, 0.7)))
        out["mirror"].append(ImageOps.mirror(im))
    return out
