"""The UNet's cross-attention, opened for the methods that read or change it (docs/methods.md):

- Ren et al. (ECCV 2024, renjie3/MemAttn): memorized prompts spread the cross-attention away from the
  beginning token; detection by the entropy of the attention over the 77 tokens at the first step;
  mitigation by multiplying the conditional branch's beginning-token logit by ``c1`` (1.25) and masking
  the summary (padding) tokens after the prompt's end token.
- Hintersdorf et al. (NeurIPS 2024, "Finding NeMo"): neurons of the cross-attention *value* layers
  (``attn2.to_v`` of the down blocks and the mid block) switched off at inference.
- Chen et al. (ICLR 2025, "Exploring Local Memorization in Diffusion Models via Bright Ending Attention"):
  at the last denoising step, memorized regions attend to the prompt's end token far more than the rest of
  the image (the "bright ending"); the end token's attention map, mean over heads and over the layers the
  authors' code reads (``end_token_layers``), locates the copied region.

``AttentionHub.of(unet)`` installs one processor per cross-attention layer and one hook per value layer,
once; both pass through untouched (the UNet's own processor, bit for bit) unless the calling thread has
opened a context (``hub.context(...)``), so a head start's second thread and other callers are unaffected.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np


@dataclass
class AttentionContext:
    """What one thread's UNet calls do to the cross-attention. ``lengths``: per row of the conditional
    batch, the prompt's token count with its start and end tokens (Ren's mask keeps those); ``cfg``: the
    batch is [uncond; cond] (else cond only); ``record``: keep the conditional rows' token distribution
    (mean over heads and pixels) per layer, in call order; ``blocked``: value layer -> neuron indices
    multiplied by ``block_scale`` (NeMo)."""

    bos_scale: float = 1.0
    mask_summary: bool = False
    lengths: list | None = None
    cfg: bool = True
    record: bool = False
    blocked: dict = field(default_factory=dict)
    block_scale: float = 0.0
    recorded: list = field(default_factory=list)
    calls: int = 0  # UNet cross-attention calls seen (recording stops after one UNet pass)
    end_map: bool = False  # keep the end token's attention map (switched on for the last step: Chen et al.)
    latent_hw: tuple | None = None  # the latents' height and width (each layer's map is resized to them)
    end_maps: list = field(default_factory=list)  # per layer call [B, h, w], conditional rows

    @property
    def modifies(self) -> bool:
        return self.bos_scale != 1.0 or self.mask_summary


class AttentionHub:
    """The processors and hooks of one UNet, with thread-local contexts."""

    def __init__(self, unet):
        self._local = threading.local()
        self.cross_layers: list[str] = []
        procs = dict(unet.attn_processors)
        for name, proc in procs.items():
            if name.endswith("attn2.processor"):
                procs[name] = _CrossAttention(proc, self, len(self.cross_layers))
                self.cross_layers.append(name[:-len(".processor")])
        unet.set_attn_processor(procs)
        self.end_layers = frozenset(end_token_layers(self.cross_layers))  # the bright ending's layers
        # value layers: every cross-attention's to_v (NeMo searches those of the down and mid blocks)
        modules = dict(unet.named_modules())
        for i, name in enumerate(self.cross_layers):
            modules[name].to_v.register_forward_hook(self._value_hook(i))
        self.value_modules = [modules[n].to_v for n in self.cross_layers]
        # the UNet's output, read or changed per thread (``on_output``): one hook for the UNet's life, since a hook
        # added or removed while a head start's other thread runs the UNet races torch's hook tables (a hook seen
        # before its with_kwargs flag was called without its output)
        unet.register_forward_hook(self._output_hook, with_kwargs=True)

    def value_layers(self, which: str = "down_mid") -> list[int]:
        """Indices (into ``cross_layers``) of NeMo's value layers: ``down_mid`` (the paper's: down blocks and
        mid block) or ``all``."""
        return [i for i, n in enumerate(self.cross_layers)
                if which == "all" or n.startswith(("down_blocks", "mid_block"))]

    _creating = threading.Lock()

    @classmethod
    def of(cls, unet) -> "AttentionHub":
        """The UNet's hub, made once: under a lock, since a head start's two threads ask at the same time (two
        hubs made side by side would each install processors, and one thread's context would go unseen)."""
        with cls._creating:
            hub = getattr(unet, "_memlab_attention", None)
            if hub is None:
                hub = cls(unet)
                unet._memlab_attention = hub
        return hub

    def active(self) -> AttentionContext | None:
        return getattr(self._local, "ctx", None)

    @contextmanager
    def context(self, ctx: AttentionContext | None):
        """Open ``ctx`` for the calling thread (None: pass through) until the block ends."""
        prev = self.active()
        self._local.ctx = ctx
        try:
            yield ctx
        finally:
            self._local.ctx = prev

    @contextmanager
    def on_output(self, fn):
        """Until the block ends, the calling thread's UNet calls hand their output to ``fn(module, args, kwargs,
        output)``, which returns None (unchanged) or the output to use."""
        prev = getattr(self._local, "on_output", None)
        self._local.on_output = fn
        try:
            yield
        finally:
            self._local.on_output = prev

    def _output_hook(self, module, args, kwargs, output):
        fn = getattr(self._local, "on_output", None)
        return None if fn is None else fn(module, args, kwargs, output)

    def _value_hook(self, layer: int):
        def hook(module, args, out):
            ctx = self.active()
            if ctx is None or not ctx.blocked.get(layer):
                return out
            out = out.clone()
            out[..., ctx.blocked[layer]] *= ctx.block_scale
            return out
        return hook

    def value_activations(self, text_states) -> list:
        """NeMo's activation of each value neuron for a prompt: |to_v(text states)| averaged over the 77
        tokens, per value layer ([B, d] each; independent of the timestep and the image)."""
        import torch

        with torch.no_grad(), self.context(None):
            return [m(text_states).abs().mean(dim=1).float().cpu() for m in self.value_modules]


class _CrossAttention:
    """A cross-attention processor that defers to the UNet's own one unless a context asks for more."""

    def __init__(self, inner, hub: AttentionHub, layer: int):
        self.inner = inner
        self.hub = hub
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        ctx = self.hub.active()
        end = ctx is not None and ctx.end_map and self.layer in self.hub.end_layers
        if ctx is None or encoder_hidden_states is None or not (ctx.modifies or ctx.record or end):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kw)
        if not ctx.modifies:
            out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kw)
            rec = ctx.record and ctx.calls < len(self.hub.cross_layers)
            if rec or end:
                probs = self._probs(attn, hidden_states, encoder_hidden_states, ctx)
                if rec:
                    self._record(ctx, probs)
                if end:
                    self._end(ctx, probs)
            ctx.calls += 1
            return out
        return self._explicit(attn, hidden_states, encoder_hidden_states, ctx, end)

    @staticmethod
    def _heads(attn, x, b):
        d = x.shape[-1] // attn.heads
        return x.view(b, -1, attn.heads, d).transpose(1, 2)

    def _logits(self, attn, hidden_states, encoder_hidden_states):
        b = hidden_states.shape[0]
        h = hidden_states
        if h.ndim == 4:
            h = h.view(b, h.shape[1], -1).transpose(1, 2)
        if attn.group_norm is not None:
            h = attn.group_norm(h.transpose(1, 2)).transpose(1, 2)
        e = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        q, k = self._heads(attn, attn.to_q(h), b), self._heads(attn, attn.to_k(e), b)
        return (q.float() @ k.float().transpose(-1, -2)) * attn.scale, e

    def _probs(self, attn, hidden_states, encoder_hidden_states, ctx):
        logits, _ = self._logits(attn, hidden_states, encoder_hidden_states)
        return self._adjust(logits, ctx).softmax(dim=-1)

    def _adjust(self, logits, ctx):
        """Ren et al.'s inference-time mitigation on the logits [B, heads, pixels, 77]."""
        import torch

        b = logits.shape[0]
        if ctx.mask_summary and ctx.lengths is not None:
            n = torch.as_tensor(ctx.lengths, device=logits.device)
            n = torch.cat([n, n]) if ctx.cfg and len(n) * 2 == b else n
            keep = torch.arange(logits.shape[-1], device=logits.device)[None, :] < n[:, None]
            logits = logits.masked_fill(~keep[:, None, None, :], float("-inf"))
        if ctx.bos_scale != 1.0:
            logits = logits.clone()
            rows = slice(b // 2, b) if ctx.cfg else slice(0, b)
            logits[rows, :, :, 0] = logits[rows, :, :, 0] * ctx.bos_scale
        return logits

    def _record(self, ctx, probs):
        b = probs.shape[0]
        rows = probs[b // 2:] if ctx.cfg else probs
        ctx.recorded.append(rows.mean(dim=(1, 2)).cpu())  # [B, 77]

    def _end(self, ctx, probs):
        """The end token's attention (mean over heads) of the conditional rows, as a map resized to the
        latents: [B, h, w] (Chen et al.'s bright ending, read at the last step). The end token of a row is the
        one after its prompt (``lengths``: the prompt's tokens with its start and end tokens)."""
        import torch
        import torch.nn.functional as F

        b = probs.shape[0]
        rows = (probs[b // 2:] if ctx.cfg else probs).float().mean(dim=1)  # [B, pixels, 77]
        end = torch.as_tensor([n - 1 for n in ctx.lengths], device=rows.device)
        m = rows[torch.arange(len(end), device=rows.device), :, end]  # [B, pixels]
        lh, lw = ctx.latent_hw
        f = round((lh * lw / m.shape[1]) ** 0.5)
        m = m.view(len(end), 1, lh // f, lw // f)
        ctx.end_maps.append(F.interpolate(m, size=(lh, lw), mode="bilinear", align_corners=False)[:, 0].cpu())

    def _explicit(self, attn, hidden_states, encoder_hidden_states, ctx, end: bool):
        residual = hidden_states
        b = hidden_states.shape[0]
        four = hidden_states.ndim == 4
        if four:
            _, c, hh, ww = hidden_states.shape
        logits, e = self._logits(attn, hidden_states, encoder_hidden_states)
        probs = self._adjust(logits, ctx).softmax(dim=-1)
        if ctx.record and ctx.calls < len(self.hub.cross_layers):
            self._record(ctx, probs)
        if end:
            self._end(ctx, probs)
        ctx.calls += 1
        v = self._heads(attn, attn.to_v(e), b)
        out = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(b, -1, attn.heads * v.shape[-1])
        out = attn.to_out[1](attn.to_out[0](out))
        if four:
            out = out.transpose(-1, -2).reshape(b, c, hh, ww)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def token_entropy(dist) -> np.ndarray:
    """Shannon entropy (nats) of token distributions [..., 77] (Ren et al.'s detection statistic)."""
    p = np.asarray(dist, np.float64)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)  # 0 log 0 = 0


def prompt_lengths(tokenizer, prompts, max_length: int = 77) -> list[int]:
    """Token count of each prompt with its start and end tokens (what Ren's mask keeps)."""
    return [min(len(tokenizer(p, truncation=True, max_length=max_length).input_ids), max_length) for p in prompts]


def end_token_layers(cross_layers: list[str]) -> list[int]:
    """The cross-attention layers whose end-token maps make the bright ending, as Chen et al.'s code reads them
    (chenchen-usyd/BE-PRSS, ``AttentionStore``: the down path's cross-attention at the latents' resolution, SD
    v1's down block 0 and its two layers at 64 x 64): the layers of the first down block that has cross-attention,
    the finest map on the down path (SDXL's down block 1; the built-in world's down block 1 at 8 x 8). Every
    layer where the down path has none. Indices into ``cross_layers`` (diffusers' layer names)."""
    down = [(int(n.split(".")[1]), i) for i, n in enumerate(cross_layers) if n.startswith("down_blocks.")]
    if not down:
        return list(range(len(cross_layers)))
    first = min(b for b, _ in down)
    return [i for b, i in down if b == first]


BRIGHT_ENDING_LAYERS = "the down path's finest cross-attention (Chen et al.'s code)"  # what a map is read from


def bright_ending(end_maps) -> np.ndarray:
    """Chen et al.'s bright-ending map per seed from the last step's end-token maps (one per layer of
    ``end_token_layers``, [B, h, w] each): their mean over layers, scaled so each seed's brightest position is 1:
    [B, h, w]."""
    m = np.stack([np.asarray(x, np.float64) for x in end_maps]).mean(0)
    top = m.reshape(len(m), -1).max(1)
    return m / np.where(top > 0, top, 1.0)[:, None, None]


def local_detection(diff_sq, mask) -> np.ndarray:
    """Chen et al.'s localized detection (their code's masked magnitude): the first step's noise difference
    d = eps(x, c) - eps(x, empty) times the bright-ending map m at each latent position, ||m d||_2 / mean(m),
    from d^2 summed over latent channels at each position (``diff_sq``, [B, h, w]) and m at the latents' size.
    The map's scale cancels; a map of ones gives Wen's ||d||; a region of share f alone, its part of ||d|| / f."""
    d = np.asarray(diff_sq, np.float64).reshape(len(diff_sq), -1)
    m = np.asarray(mask, np.float64).reshape(len(mask), -1)
    return np.sqrt((m * m * d).sum(1)) / np.maximum(m.mean(1), 1e-12)


def ren_entropy(recorded, n: int):
    """Ren et al.'s detection: the entropy of the conditional cross-attention over the 77 tokens (mean over
    heads and pixels) at the first step, averaged over the cross-attention layers: [B]."""
    if not recorded:
        return np.full(n, np.nan)
    return token_entropy(np.stack([r.numpy() for r in recorded])).mean(0)


def small_map(m, side: int = 16) -> list:
    """A map [h, w] averaged down to at most ``side`` x ``side`` (area means), as rows of 3-decimal floats."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(m, np.float32))[None, None]
    if max(x.shape[-2:]) > side:
        x = F.adaptive_avg_pool2d(x, (min(side, x.shape[-2]), min(side, x.shape[-1])))
    return [[round(float(v), 3) for v in row] for row in x[0, 0].numpy()]
