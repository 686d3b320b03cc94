"""Generation over diffusers text-to-image pipelines: one image per seed, mitigations, and Wen et al.'s
memorization detection computed in the same pass.

- A seed gives the same image whatever the batch and the device: each image has its own CPU
  ``torch.Generator`` (docs/methods.md, diffusers).
- Prompt-level mitigations change the text, embedding-level ones the 77 x d hidden states (passed back
  through ``prompt_embeds=``), ``wen`` optimizes the embedding at the first step.
- Detection (Wen et al., ICLR 2024): ||eps(x_t, c) - eps(x_t, empty)||_2 over the full latent, from
  the *clean* conditional and unconditional branches of the effective prompt: read from the guidance
  batch the pipeline computes anyway (first step by default, or the mean of the first n steps) when no
  embedding mitigation is on; with one (``gni``, ``wen``) or with guidance <= 1 (no unconditional
  pass in the pipeline) it is computed by one extra batched UNet call at the first step on the clean
  embeddings, so the score of a seed is the same under ``none``, ``gni`` and ``wen``.
- One pipeline per process; calls are serialized by a lock (the scheduler holds step state); a head
  start's second batch runs beside the first with a scheduler of its own.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .errors import MemlabError
from .mitigations import JainGuidance, Strategy, parse_strategy

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


MAX_PROMPT_CHARS = 10_000  # far past what a text encoder reads; refused beyond, so tokenizing stays cheap


def check_prompt(prompt: str, tokenizer) -> tuple[str, str | None]:
    """Refuse an empty prompt; for one over 77 CLIP tokens return a warning saying where the text
    encoder stops reading (the pipeline truncates it there)."""
    if prompt is None or not str(prompt).strip():
        raise MemlabError("the prompt is empty")
    if not isinstance(prompt, (str, int, float)) or isinstance(prompt, bool):
        raise MemlabError(f"the prompt must be text (got {type(prompt).__name__})")
    prompt = str(prompt).strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise MemlabError(f"the prompt is {len(prompt):,} characters long; at most {MAX_PROMPT_CHARS:,} "
                          f"(and the text encoder reads only its first {MAX_TOKENS} tokens)")
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
        self._text_lock = threading.Lock()  # a head start's two threads share the tokenizer
        self.wen_target: float | None = None  # the model's calibrated absolute target for ``wen``
        self.sail_target: float | None = None  # and for ``sail`` (``memlab.sail``)
        self.nemo_stats = None  # NeMo's statistics of non-memorized prompts (``memlab.nemo.NeMoStats``)
        self.template_threshold: dict | None = None  # the world's masked-similarity threshold ("template copy")
        self.identity = {"revision": None, "fingerprint": None}  # what was loaded (``pipeload.identity``)
        self._nemo_cache: dict = {}

    # ---------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, model: str | Path = DEFAULT_MODEL, device: str | None = None,
                        dtype: str | None = None, scheduler: str = "ddim", safety_checker: bool = False,
                        local_files_only: bool | None = None, revision: str | None = None) -> "Generator":
        """Load a Hub id (at ``revision``, default its main branch) or a local diffusers folder; fp16 on CUDA, fp32
        on CPU. ``identity`` names what was loaded: the Hub commit, or the local folder's fingerprint."""
        import torch

        from .pipeload import identity, load_pipeline, locate

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dt = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}.get(
            dtype or ("fp16" if device.startswith("cuda") else "fp32"))
        if dt is None:
            raise MemlabError(f"dtype must be fp16, bf16 or fp32 (got {dtype})")
        kw = {} if safety_checker else {"safety_checker": None, "requires_safety_checker": False}
        src = locate(model, revision, local_files_only)
        pipe = load_pipeline(model, dt, source=src, **kw)
        gen = cls(pipe, str(model), device)
        gen.identity = identity(src)
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
        """The model as records name it: as given, its Hub commit or fingerprint, and how it ran."""
        from .records import software

        return {"model": self.source, **self.identity, "scheduler": self.scheduler_name, "device": self.device,
                "dtype": str(self.pipe.unet.dtype).replace("torch.", ""), "software": dict(software())}

    # ----------------------------------------------------------------------------- pieces
    def encode(self, prompts: Sequence[str]):
        """(cond [B, 77, d], uncond [B, 77, d]) text hidden states, via the pipeline's encode_prompt."""
        import torch

        with torch.no_grad():
            cond, uncond = self.pipe.encode_prompt(list(prompts), self.device, 1, True, negative_prompt=None)
        return cond, uncond

    def text_embed(self, texts: Sequence[str], batch_size: int = 256):
        """Normalized text embeddings from the pipeline's own text encoder: projected when it has a
        projection layer, else (SD v1's CLIPTextModel: CLIP ViT-L/14's text tower without its
        projection) the pooled output. Prompt-to-caption similarity, the Memory Triggers paper's
        "Text Similarity"; ``Lab`` prefers an index's CLIP descriptor, whose embeddings are projected."""
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                ids = self.tokenizer(list(texts[i:i + batch_size]), padding="max_length", truncation=True,
                                     max_length=MAX_TOKENS, return_tensors="pt").input_ids.to(self.device)
                res = self.pipe.text_encoder(ids)
                # projected when the encoder has a projection (CLIPTextModelWithProjection), else pooled
                pooled = (res.text_embeds if hasattr(res, "text_embeds") else res.pooler_output).float()
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

    def token_attribution(self, prompt: str, seeds: Sequence[int] = (0, 1, 2, 3), settings: Settings | None = None,
                          steps: int = 1) -> list[dict]:
        """Per-token attribution (Wen et al.'s token significance): the L2 norm, per token, of the gradient
        of the noise-difference norm ||eps(x_t, c) - eps(x_t, empty)|| with respect to that token's input
        embedding (the text encoder's token embedding; the gradient runs through the encoder, so a word is
        credited for its effect on every hidden state after it), averaged over the first ``steps``
        sampling steps and over ``seeds`` (the trajectory follows classifier-free guidance, as in
        generation)."""
        import torch

        settings = (settings or Settings()).validate()
        h = settings.height or self.default_size()
        w = settings.width or self.default_size()
        check_prompt(prompt, self.tokenizer)
        seeds = parse_seeds(list(seeds))
        steps = max(1, min(int(steps), settings.steps))
        te = self.pipe.text_encoder
        ids = self.tokenizer([prompt] * len(seeds), padding="max_length", max_length=MAX_TOKENS, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        with self.lock:
            _, uncond = self.encode([prompt] * len(seeds))
            sched = self.pipe.scheduler
            sched.set_timesteps(settings.steps, device=self.device)
            lat = self.initial_latents(seeds, h, w) * sched.init_noise_sigma
            total = torch.zeros(ids.shape[1])
            for t in sched.timesteps[:steps]:
                seen = {}

                def keep(module, args, out):
                    out.retain_grad()
                    seen["emb"] = out
                handle = te.get_input_embeddings().register_forward_hook(keep)
                try:
                    with torch.enable_grad():
                        cond = te(ids)[0]
                        self.noise_difference(lat, t, cond, uncond, grad=True).sum().backward()
                finally:
                    handle.remove()
                total += seen["emb"].grad.float().norm(dim=-1).sum(0).cpu()
                with torch.no_grad():  # one guided sampling step to the next x_t
                    cond = cond.detach()
                    x = sched.scale_model_input(torch.cat([lat] * 2), t)
                    e_u, e_c = self.pipe.unet(x, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
                    lat = sched.step(e_u + settings.guidance * (e_c - e_u), t, lat).prev_sample
            te.zero_grad(set_to_none=True)
            g = (total / (steps * len(seeds))).numpy()
        n = len(self.tokenizer(prompt, truncation=True, max_length=MAX_TOKENS).input_ids)
        return [{"position": i, "token": self.tokenizer.decode([int(tid)]), "id": int(tid),
                 "attribution": float(g[i])} for i, tid in enumerate(ids[0][:n].tolist())]

    def clean_detection(self, latents0, t, cond, uncond, spatial: bool = False, keep: list | None = None):
        """Wen et al.'s score from one batched UNet call on [uncond; cond], laid out as the pipeline's
        own guidance batch (so it equals the value read from the pipeline's first step). ``spatial``: also
        the squared difference summed over channels at each latent position ([B, h, w]); ``keep`` receives
        the difference itself (Jeon et al.'s sharpness starts from it)."""
        import torch

        with torch.no_grad():
            x = self.pipe.scheduler.scale_model_input(torch.cat([latents0] * 2), t)
            eps = self.pipe.unet(x, t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            e_u, e_c = eps.float().chunk(2)
            norms = (e_c - e_u).flatten(1).norm(dim=1)
            if keep is not None:
                keep.append(e_c - e_u)
            return (norms, (e_c - e_u).pow(2).sum(1).cpu()) if spatial else norms

    def wen_target_for(self, wen) -> tuple[str, float]:
        """("absolute", value) from ``target=`` or the model's calibrated target, or ("relative", r)."""
        p = wen.params
        if p["target_ratio"] > 0:
            return "relative", float(p["target_ratio"])
        if p["target"] > 0:
            return "absolute", float(p["target"])
        if self.wen_target:
            return "absolute", float(self.wen_target)
        raise MemlabError("wen needs a target: this model has no calibrated wen_target; give wen:target=X "
                          "(Wen et al.'s absolute target_loss) or wen:target_ratio=r (relative to the initial norm)")

    def _wen_optimize(self, wen, lat, t, cond, uncond, state: dict | None = None):
        """Wen et al.'s mitigation: AdamW on the prompt embedding at the first step, per sample, until its
        noise norm falls below the target; a sample already below it is left untouched (bit for bit);
        the start token's gradient is zeroed as in Wen's code. ``state`` receives, per sample, the target,
        the norm the optimized embedding gives and whether it reached the target."""
        import torch

        p = wen.params
        kind, value = self.wen_target_for(wen)
        emb = cond.detach().clone().float().requires_grad_(True)
        frozen = emb.detach().clone()
        opt = torch.optim.AdamW([emb], lr=p["lr"])
        target = None
        done = None
        for _ in range(int(p["iters"])):
            norms = self.noise_difference(lat, t, emb.to(cond.dtype), uncond, grad=True)
            if target is None:
                target = torch.full_like(norms, value) if kind == "absolute" else norms.detach() * value
            below = (norms <= target).detach()
            if done is None:
                done = below.clone()
            else:  # a sample that reached its target keeps the embedding it reached it with
                newly = below & ~done
                frozen[newly] = emb.detach()[newly]
                done |= below
            if bool(done.all()):
                break
            opt.zero_grad()
            norms.sum().backward()
            emb.grad[:, 0] = 0  # the start token's embedding is not optimized
            opt.step()
            with torch.no_grad():
                emb[done] = frozen[done]
                emb[:, 0] = frozen[:, 0]  # nor decayed by AdamW's weight decay
        out = emb.detach().to(cond.dtype)
        if state is not None:
            final = self.noise_difference(lat, t, out, uncond).float().cpu()
            state.update(target=target.cpu().tolist(), final_norm=final.tolist(),
                         reached=(final <= target.cpu() + 1e-6).tolist())
        return out

    # ---------------------------------------------------------------------------- generate
    def generate(self, prompt: str, seeds: Sequence[int], strategy: Strategy | str = "none",
                 settings: Settings | None = None, batch_size: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 on_batch: Callable[[list[SeedImage]], None] | None = None, head: int = 0) -> list[SeedImage]:
        """One image per seed. ``progress(done_steps, total_steps)`` is called after every step;
        ``on_batch`` gets each finished batch (for streaming). ``head``: the first batch's first ``head``
        seeds are a batch of their own, started beside the rest where that is free (``head_start``)."""
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
            from .mitigations import NeMo

            if strategy.find(NeMo) is not None:  # NeMo's search, once, before a head start's two threads
                self.nemo_neurons(prompt, strategy.find(NeMo), settings)
            for b in range(0, len(seeds), bs):
                chunk = seeds[b:b + bs]

                def done_steps(k, before=len(results) * settings.steps):
                    if progress:
                        progress(before + k, total)

                if b == 0 and self.head_start_ok(len(chunk), head):
                    from .headstart import head_start

                    out = head_start(self, prompt, chunk, head, strategy, settings, h, w, done_steps, on_batch)
                else:
                    out = self._batch(prompt, chunk, strategy, settings, h, w, lambda i, n=len(chunk): done_steps(i * n))
                    if on_batch:
                        on_batch(out)
                results += out
        return results

    def head_start_ok(self, n: int, head: int) -> bool:
        """Whether a head start of ``head`` seeds in a batch of ``n`` runs beside the rest (``memlab.headstart``)."""
        from .headstart import head_start_ok

        return head_start_ok(self, n, head)

    def auto_batch_size(self, h: int, w: int) -> int:
        import torch

        if not self.device.startswith("cuda"):
            return 8
        free, _ = torch.cuda.mem_get_info()
        per_image = 1.5e9 * (h * w) / (512 * 512)  # SD v1 fp16 at 512x512, with headroom
        return int(max(1, min(32, free // per_image)))

    def _batch(self, prompt, seeds, strategy, settings, h, w, step_cb, pipe=None):
        """One batch through ``pipe`` (default the generator's); ``step_cb(i)`` after step i (from 1).
        (``scale_model_input`` of the first step, below, is the same for every registered scheduler.)"""
        import torch

        from .attention import (AttentionContext, AttentionHub, bright_ending, local_detection, prompt_lengths,
                                ren_entropy, small_map)
        from .mitigations import Jain, NeMo, Ren, Sail
        from .sail import sail_optimize, sharpness

        pipe = pipe or self.pipe
        hub = AttentionHub.of(pipe.unet)  # (the UNet is shared with a head start's thread: its hooks are per thread)
        with self._text_lock:
            eff = [strategy.effective_prompt(prompt, s, self.tokenizer) for s in seeds]
            cond, uncond = self.encode(eff)
            lengths = prompt_lengths(self.tokenizer, eff)
        clean_cond, clean_uncond = cond, uncond
        parts = [strategy.apply_embeddings(cond[i:i + 1], uncond[i:i + 1], s) for i, s in enumerate(seeds)]
        cond = torch.cat([c for c, _ in parts])
        uncond = torch.cat([u for _, u in parts])
        latents = self.initial_latents(seeds, h, w)
        pipe.scheduler.set_timesteps(settings.steps, device=self.device)
        t0 = pipe.scheduler.timesteps[0]
        wen = strategy.optimizer()
        lat0 = latents * pipe.scheduler.init_noise_sigma
        wen_state: dict = {}
        if wen is not None:
            cond = self._wen_optimize(wen, lat0, t0, cond, uncond, wen_state)
        sail_state = None
        if strategy.find(Sail) is not None:  # the starting noise, optimized (detection still reads lat0)
            lat_s, sail_state = sail_optimize(self, strategy.find(Sail), lat0, t0, cond, uncond,
                                               pipe.scheduler)
            latents = lat_s / pipe.scheduler.init_noise_sigma

        cfg = settings.guidance > 1.0
        ren, nemo, jain = strategy.find(Ren), strategy.find(NeMo), strategy.find(Jain)
        if jain is not None and not cfg:
            raise MemlabError("jain changes classifier-free guidance: it needs a guidance above 1")
        blocked = self.nemo_neurons(prompt, nemo, settings)[0] if nemo is not None else {}
        changed = strategy.changes_first_pass
        norms: list = []
        diff_map: list = []  # the first step's squared noise difference per latent position (localized detection)
        first_diff: list = []  # and the difference itself (the sharpness's starting point)
        clean_ctx = AttentionContext(record=True)
        if changed or not cfg:  # the clean branches at the first step, one extra batched call
            with hub.context(clean_ctx):
                n0, m0 = self.clean_detection(lat0, t0, clean_cond, clean_uncond, spatial=True, keep=first_diff)
                norms.append(n0)
                diff_map.append(m0)
        read_from_pass = cfg and not changed
        ctx = AttentionContext(bos_scale=float(ren.params["c1"]) if ren else 1.0,
                               mask_summary=bool(ren and ren.params["mask"] == "on"), lengths=lengths, cfg=cfg,
                               record=read_from_pass, blocked=blocked,
                               block_scale=float(nemo.params["scale"]) if nemo else 0.0,
                               end_map=settings.steps == 1, latent_hw=tuple(latents.shape[-2:]))
        guide = JainGuidance(jain, settings.guidance, len(seeds)) if jain is not None else None

        def hook(module, args, kwargs, output):
            wants = read_from_pass and len(norms) < settings.detect_steps
            if not wants and guide is None:
                return None
            eps = output[0] if isinstance(output, tuple) else output.sample
            e_u, e_c = eps.float().chunk(2)
            diff = (e_c - e_u).flatten(1).norm(dim=1)
            if wants:
                if not norms:
                    diff_map.append((e_c - e_u).pow(2).sum(1).cpu())
                    first_diff.append(e_c - e_u)
                norms.append(diff)
            if guide is None:
                return None
            t = args[1] if len(args) > 1 else kwargs.get("timestep")
            ratio = guide.ratio(int(t), diff)
            if ratio is None:
                return None
            u, c = eps.chunk(2)
            eps = torch.cat([u, u + ratio.to(eps.dtype).view(-1, 1, 1, 1) * (c - u)])
            return (eps, *output[1:]) if isinstance(output, tuple) else type(output)(sample=eps)

        def on_step(p, i, t, kw):
            ctx.end_map = i + 2 == settings.steps  # the next step is the last: keep its end-token maps
            step_cb(i + 1)
            return kw

        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        with torch.no_grad(), hub.context(ctx), hub.on_output(hook):
            images = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=latents,
                          generator=gens, num_inference_steps=settings.steps,
                          guidance_scale=settings.guidance, height=h, width=w, output_type="pil",
                          callback_on_step_end=on_step).images
        det = torch.stack(norms).mean(0).cpu().numpy()
        ren_score = ren_entropy((ctx if read_from_pass else clean_ctx).recorded, len(seeds))
        aniso = self.anisotropy(lat0, clean_cond, clean_uncond, pipe.scheduler)
        sharp = sharpness(self, lat0, t0, clean_cond, clean_uncond, pipe.scheduler, first_diff[0] if first_diff else None)
        be = bright_ending(ctx.end_maps) if ctx.end_maps else None
        local = local_detection(diff_map[0].numpy(), be) if be is not None and diff_map else None
        out = []
        for i, (s, e, im, d) in enumerate(zip(seeds, eff, images, det)):
            dets = {"wen": float(d), "ren": float(ren_score[i]),
                    "asthana": float(ASTHANA_GAMMA[0] * d + ASTHANA_GAMMA[1] * aniso[i]),
                    "asthana_cosine": float(aniso[i]), "jeon": float(sharp[i])}
            if local is not None:
                dets["bright_ending"] = float(local[i])
            extra = {"detections": dets}
            if be is not None:  # the bright-ending map, at most 16 x 16, for records and the overlay
                extra["bright_ending_map"] = small_map(be[i])
            if guide is not None:
                extra["jain_transition_step"] = guide.transition_step(i)
            if nemo is not None:
                extra["nemo_neurons"] = sum(map(len, blocked.values()))
            if sail_state:
                extra.update(sail_state[i])
            if wen_state:  # Wen's score after the optimization, and whether the seed reached its target
                extra.update(wen_target=wen_state["target"][i], wen_final_norm=wen_state["final_norm"][i],
                             wen_reached=bool(wen_state["reached"][i]))
            out.append(SeedImage(seed=int(s), prompt=prompt, effective_prompt=e, strategy=strategy.to_dict(),
                                 image=im, detection=float(d), extra=extra))
        return out

    def anisotropy(self, lat0, cond, uncond, scheduler=None):
        """Asthana and Belagiannis (ICLR 2026): on the starting noise, at the third-to-last timestep of the
        schedule (low noise), the cosine over the latent channels between the unconditional prediction and
        the guidance vector eps(x, c) - eps(x, empty), averaged over positions: [B] (one extra UNet pass)."""
        import torch

        sched = scheduler or self.pipe.scheduler
        t = sched.timesteps[-3] if len(sched.timesteps) >= 3 else sched.timesteps[-1]
        with torch.no_grad():
            x = sched.scale_model_input(torch.cat([lat0] * 2), t)
            e_u, e_c = self.pipe.unet(x, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.float().chunk(2)
            cos = torch.nn.functional.cosine_similarity(e_u, e_c - e_u, dim=1)
        return cos.flatten(1).mean(1).cpu().numpy()

    def nemo_neurons(self, prompt: str, nemo, settings: Settings) -> tuple[dict, dict]:
        """NeMo's neurons for ``prompt`` (searched once per prompt, settings and steps; ``memlab.nemo``)."""
        from .nemo import find_neurons

        if self.nemo_stats is None:
            raise MemlabError("nemo needs statistics of non-memorized prompts for this model: a world built by "
                              "`memlab build-world` or `memlab world create` has them (its nemo/ folder)")
        key = (prompt, nemo.spec(), settings.steps)
        if key not in self._nemo_cache:
            self._nemo_cache[key] = find_neurons(self, prompt, self.nemo_stats, nemo.params, settings.steps)
        return self._nemo_cache[key]


ASTHANA_GAMMA = (1.0, 2.0)  # the authors' weights for SD v1 (norm, cosine): detect_eval.py
