"""Generation over diffusers text-to-image pipelines: one image per seed, mitigations, and Wen et al.'s
memorization detection computed in the same pass.

- A seed gives the same image whatever the batch and the device: each image has its own CPU
  ``torch.Generator`` (REFERENCE.md, diffusers).
- Prompt-level mitigations change the text, embedding-level ones the 77 x d hidden states (passed back
  through ``prompt_embeds=``), ``wen`` optimizes the embedding at the first step.
- Detection (Wen et al., ICLR 2024): ||eps(x_t, c) - eps(x_t, empty)||_2 over the full latent, read
  from the guidance batch the pipeline computes anyway (first step by default, or the mean of the
  first n steps).
- One pipeline per process; calls are serialized by a lock (the scheduler holds step state).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .errors import MemlabError, ModelFileMissing
from .mitigations import Strategy, parse_strategy

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
SCHEDULERS = {"ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler",
              "dpm-solver": "DPMSolverMultistepScheduler"}
MAX_SEEDS = 1000
MAX_TOKENS = 77


@dataclass
class Settings:
    steps: int = 50
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    detect_steps: int = 1  # Wen et al.: the first step already separates memorized prompts

    def validate(self) -> "Settings":
        if not 1 <= int(self.steps) <= 1000:
            raise MemlabError(f"steps must be between 1 and 1000 (got {self.steps})")
        if not 0.0 <= float(self.guidance) <= 50.0:
            raise MemlabError(f"guidance must be between 0 and 50 (got {self.guidance})")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v is not None and (v < 8 or v > 2048 or v % 8):
                raise MemlabError(f"{name} must be a multiple of 8 between 8 and 2048 (got {v})")
        if not 1 <= self.detect_steps <= self.steps:
            raise MemlabError("detect_steps must be between 1 and steps")
        return self

    def to_dict(self) -> dict:
        return {"steps": self.steps, "guidance": self.guidance, "height": self.height,
                "width": self.width, "detect_steps": self.detect_steps}


@dataclass
class SeedImage:
    seed: int
    prompt: str
    effective_prompt: str
    strategy: dict
    image: object  # PIL.Image
    detection: float
    extra: dict = field(default_factory=dict)


def parse_seeds(spec: str | Sequence[int]) -> list[int]:
    """``"0-9"``, ``"1,5,7"``, ``"0-3,10"`` or a list -> seeds (each in [0, 2**32), at most 1,000)."""
    if isinstance(spec, str):
        seeds: list[int] = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            a, dash, b = part.partition("-")
            try:
                if dash and a:
                    lo, hi = int(a), int(b)
                    if hi < lo:
                        raise MemlabError(f"seed range {part!r} runs backwards")
                    if hi - lo + 1 > MAX_SEEDS:
                        raise MemlabError(f"seed range {part!r} has {hi - lo + 1} seeds; at most {MAX_SEEDS}")
                    seeds += range(lo, hi + 1)
                else:
                    seeds.append(int(part))
            except ValueError:
                raise MemlabError(f"cannot read seeds {spec!r}: use '0-9' or '1,2,3'") from None
    else:
        seeds = [int(s) for s in spec]
    if not seeds:
        raise MemlabError("no seeds given")
    if len(seeds) > MAX_SEEDS:
        raise MemlabError(f"{len(seeds)} seeds asked for; at most {MAX_SEEDS}")
    bad = [s for s in seeds if not 0 <= s < 2**32]
    if bad:
        raise MemlabError(f"seed {bad[0]} is out of range: seeds are integers in [0, 2**32)")
    if len(set(seeds)) != len(seeds):
        raise MemlabError("seeds repeat: each seed gives one image")
    return seeds


def check_prompt(prompt: str, tokenizer) -> tuple[str, str | None]:
    """Refuse an empty prompt; for one over 77 CLIP tokens return a warning saying where the text
    encoder stops reading (the pipeline truncates it there)."""
    if prompt is None or not str(prompt).strip():
        raise MemlabError("the prompt is empty")
    prompt = str(prompt).strip()
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    limit = MAX_TOKENS - 2
    if len(ids) <= limit:
        return prompt, None
    kept = tokenizer.decode(ids[:limit]).strip()
    tail = kept[-40:]
    return prompt, (f"prompt has {len(ids)} tokens; the text encoder reads {limit} (77 with start/end), "
                    f"so it is truncated after '...{tail}'")


class Generator:
    """Composes a diffusers text-to-image pipeline; owns nothing else (like a diffusers pipeline)."""

    def __init__(self, pipe, source: str = "", device: str | None = None):
        import torch

        self.pipe = pipe
        self.source = source
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.lock = threading.Lock()

    # ---------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, model: str | Path = DEFAULT_MODEL, device: str | None = None,
                        dtype: str | None = None, scheduler: str = "ddim", safety_checker: bool = False,
                        local_files_only: bool | None = None) -> "Generator":
        """Load a Hub id or a local diffusers folder; fp16 on CUDA, fp32 on CPU."""
        import torch
        from diffusers import StableDiffusionPipeline

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dt = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}.get(
            dtype or ("fp16" if device.startswith("cuda") else "fp32"))
        if dt is None:
            raise MemlabError(f"dtype must be fp16, bf16 or fp32 (got {dtype})")
        p = Path(str(model))
        is_local = p.exists()
        if is_local and not (p / "model_index.json").is_file():
            raise ModelFileMissing(f"{p} is not a diffusers pipeline folder (no model_index.json)")
        kw = {} if safety_checker else {"safety_checker": None, "requires_safety_checker": False}
        from .descriptors import offline

        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                str(model), dtype=dt, local_files_only=bool(local_files_only or offline() or is_local), **kw)
        except (OSError, ValueError, EnvironmentError) as e:
            raise ModelFileMissing(f"cannot load the pipeline {model}: {str(e).splitlines()[0][:300]}") from e
        gen = cls(pipe, str(model), device)
        gen.set_scheduler(scheduler)
        return gen

    def set_scheduler(self, name: str) -> None:
        import diffusers

        if name not in SCHEDULERS:
            raise MemlabError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
        cls = getattr(diffusers, SCHEDULERS[name])
        self.pipe.scheduler = cls.from_config(self.pipe.scheduler.config)
        self.scheduler_name = name

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    def default_size(self) -> int:
        return int(self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor)

    def info(self) -> dict:
        return {"model": self.source, "scheduler": self.scheduler_name, "device": self.device,
                "dtype": str(self.pipe.unet.dtype).replace("torch.", "")}

    # ----------------------------------------------------------------------------- pieces
    def encode(self, prompts: Sequence[str]):
        """(cond [B, 77, d], uncond [B, 77, d]) text hidden states, via the pipeline's encode_prompt."""
        import torch

        with torch.no_grad():
            cond, uncond = self.pipe.encode_prompt(list(prompts), self.device, 1, True, negative_prompt=None)
        return cond, uncond

    def text_embed(self, texts: Sequence[str], batch_size: int = 256):
        """Normalized pooled text embeddings from the pipeline's own text encoder (for SD v1 this is
        CLIP ViT-L/14's text tower): prompt-to-caption similarity, the Memory Triggers paper's
        "Text Similarity"."""
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                ids = self.tokenizer(list(texts[i:i + batch_size]), padding="max_length", truncation=True,
                                     max_length=MAX_TOKENS, return_tensors="pt").input_ids.to(self.device)
                pooled = self.pipe.text_encoder(ids).pooler_output.float()
                out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        import numpy as np

        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

    def initial_latents(self, seeds: Sequence[int], height: int, width: int):
        """The starting noise: one CPU generator per seed, so a seed is a seed on every device."""
        import torch

        c = self.pipe.unet.config.in_channels
        s = self.pipe.vae_scale_factor
        lat = [torch.randn((1, c, height // s, width // s), generator=torch.Generator("cpu").manual_seed(int(sd)),
                           dtype=torch.float32) for sd in seeds]
        return torch.cat(lat).to(self.device, self.pipe.unet.dtype)

    def noise_difference(self, latents, t, cond, uncond, grad: bool = False):
        """Wen et al.'s per-sample ||eps(x_t, c) - eps(x_t, empty)||_2 over the full latent."""
        import torch

        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            x = self.pipe.scheduler.scale_model_input(latents, t)
            e_c = self.pipe.unet(x, t, encoder_hidden_states=cond).sample
            e_u = self.pipe.unet(x, t, encoder_hidden_states=uncond).sample
            return (e_c.float() - e_u.float()).flatten(1).norm(dim=1)

    def token_attribution(self, prompt: str, seed: int = 0, settings: Settings | None = None) -> list[dict]:
        """Per-token attribution (Wen et al.): the L2 norm, per token, of the gradient of the first-step
        noise-difference norm with respect to that token's text-encoder hidden state."""
        settings = (settings or Settings()).validate()
        h = settings.height or self.default_size()
        w = settings.width or self.default_size()
        check_prompt(prompt, self.tokenizer)
        with self.lock:
            cond, uncond = self.encode([prompt])
            self.pipe.scheduler.set_timesteps(settings.steps, device=self.device)
            t = self.pipe.scheduler.timesteps[0]
            lat = self.initial_latents([seed], h, w) * self.pipe.scheduler.init_noise_sigma
            cond = cond.detach().clone().requires_grad_(True)
            self.noise_difference(lat, t, cond, uncond, grad=True).sum().backward()
            g = cond.grad[0].float().norm(dim=-1).cpu().numpy()
        ids = self.tokenizer(prompt, truncation=True, max_length=MAX_TOKENS).input_ids
        return [{"position": i, "token": self.tokenizer.decode([tid]), "id": int(tid), "attribution": float(g[i])}
                for i, tid in enumerate(ids)]

    def _wen_optimize(self, wen, lat, t, cond, uncond):
        """Wen et al.'s mitigation: AdamW on the prompt embedding at the first step until the noise
        norm falls below the target (absolute, or target_ratio x the initial norm)."""
        import torch

        p = wen.params
        emb = cond.detach().clone().float().requires_grad_(True)
        opt = torch.optim.AdamW([emb], lr=p["lr"])
        target = None
        for _ in range(int(p["iters"])):
            norms = self.noise_difference(lat, t, emb.to(cond.dtype), uncond, grad=True)
            if target is None:
                target = torch.full_like(norms, p["target"]) if p["target"] > 0 else norms.detach() * p["target_ratio"]
            if bool((norms <= target).all()):
                break
            opt.zero_grad()
            norms.sum().backward()
            opt.step()
        return emb.detach().to(cond.dtype)

    # ---------------------------------------------------------------------------- generate
    def generate(self, prompt: str, seeds: Sequence[int], strategy: Strategy | str = "none",
                 settings: Settings | None = None, batch_size: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 on_batch: Callable[[list[SeedImage]], None] | None = None) -> list[SeedImage]:
        """One image per seed. ``progress(done_steps, total_steps)`` is called after every step;
        ``on_batch`` gets each finished batch (for streaming)."""
        strategy = parse_strategy(strategy) if isinstance(strategy, str) else strategy
        settings = (settings or Settings()).validate()
        seeds = parse_seeds(seeds)
        prompt, _ = check_prompt(prompt, self.tokenizer)
        h = settings.height or self.default_size()
        w = settings.width or self.default_size()
        bs = batch_size or self.auto_batch_size(h, w)
        total = len(seeds) * settings.steps
        results: list[SeedImage] = []
        with self.lock:
            for b in range(0, len(seeds), bs):
                chunk = seeds[b:b + bs]

                def step_cb(i, before=len(results) * settings.steps, n=len(chunk)):
                    if progress:
                        progress(before + i * n, total)

                out = self._batch(prompt, chunk, strategy, settings, h, w, step_cb)
                results += out
                if on_batch:
                    on_batch(out)
        return results

    def auto_batch_size(self, h: int, w: int) -> int:
        import torch

        if not self.device.startswith("cuda"):
            return 8
        free, _ = torch.cuda.mem_get_info()
        per_image = 1.5e9 * (h * w) / (512 * 512)  # SD v1 fp16 at 512x512, with headroom
        return int(max(1, min(32, free // per_image)))

    def _batch(self, prompt, seeds, strategy, settings, h, w, step_cb):
        import torch

        pipe = self.pipe
        eff = [strategy.effective_prompt(prompt, s, self.tokenizer) for s in seeds]
        cond, uncond = self.encode(eff)
        parts = [strategy.apply_embeddings(cond[i:i + 1], uncond[i:i + 1], s) for i, s in enumerate(seeds)]
        cond = torch.cat([c for c, _ in parts])
        uncond = torch.cat([u for _, u in parts])
        latents = self.initial_latents(seeds, h, w)
        pipe.scheduler.set_timesteps(settings.steps, device=self.device)
        t0 = pipe.scheduler.timesteps[0]
        wen = strategy.optimizer()
        if wen is not None:
            cond = self._wen_optimize(wen, latents * pipe.scheduler.init_noise_sigma, t0, cond, uncond)

        cfg = settings.guidance > 1.0
        norms: list = []
        if not cfg:  # no guidance batch to read from: one extra pair of UNet calls per detect step
            norms.append(self.noise_difference(latents * pipe.scheduler.init_noise_sigma, t0, cond, uncond))

        def hook(module, args, kwargs, output):
            if cfg and len(norms) < settings.detect_steps:
                eps = output[0] if isinstance(output, tuple) else output.sample
                e_u, e_c = eps.float().chunk(2)
                norms.append((e_c - e_u).flatten(1).norm(dim=1))

        def on_step(p, i, t, kw):
            step_cb(i + 1)
            return kw

        handle = pipe.unet.register_forward_hook(hook, with_kwargs=True)
        try:
            gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
            with torch.no_grad():
                images = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=latents,
                              generator=gens, num_inference_steps=settings.steps,
                              guidance_scale=settings.guidance, height=h, width=w, output_type="pil",
                              callback_on_step_end=on_step).images
        finally:
            handle.remove()
        det = torch.stack(norms).mean(0).cpu().numpy()
        return [SeedImage(seed=int(s), prompt=prompt, effective_prompt=e, strategy=strategy.to_dict(),
                          image=im, detection=float(d)) for s, e, im, d in zip(seeds, eff, images, det)]
