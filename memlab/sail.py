"""Sharpness of the probability landscape: Jeon et al. (ICML 2025), "Understanding and Mitigating
Memorization in Generative Models via Sharpness of Probability Landscapes" (the authors' code:
Dongjae0324/sharpness_memorization_diffusion, ``local_model/pipe.py``). A memorized prompt sits in a sharp
peak of the conditional density, so its Hessian amplifies the guidance direction more than the
unconditional one does.

- ``sharpness`` (detection, ``jeon``): at the first sampling step, on the starting noise x_T, the score
  difference ds = s(x, c) - s(x, empty) (s = -eps / sigma_t) multiplied by the Hessians of the log-density,
  ||H_c ds - H_u ds|| per sample (the authors' ``hvp_metric`` with one sampling step, ``hvp_sampling_num``
  1). The authors take the Hessian-vector product by forward-mode AD (``torch.func.jvp``); memlab takes the
  central difference of the scores along ds (a step of ``FD_STEP`` x ||x||), two more UNet calls that keep
  the fused attention kernels (forward-mode AD runs only on the math kernel, which holds the full attention
  matrix in memory; on the built-in world it took 3.4 times as long, ``benchmarks/bench_sharpness.py``),
  where the UNet runs in float32; a half-precision UNet takes the jvp, in chunks of seeds, as a difference
  would drown in its rounding. ``tests/test_sail.py`` holds both to the jvp in float32.
- ``sail_loss`` / ``sail_optimize`` (mitigation, ``sail``: Sharpness-Aware Initialization for Latent
  diffusion, the paper's Algorithm 2 as the authors' code computes it): the starting noise x is optimized
  with Adam (lr 0.05, at most 10 steps) on L(x) = ||eps(x + d, c) - eps(x + d, empty)|| + gamma ||x||,
  d = (eps(x, c) - eps(x, empty)) / ||eps(x, c) - eps(x, empty)|| (the gradient runs through d, as in their
  code; gamma 0.05, their SD v1 value), and a seed is kept once L <= the target (their ``l_thres``, 8.2 for
  SD v1; the built-in world calibrates its own, ``calibrate_sail_target``). A seed already under the target
  is left untouched, bit for bit. Where the authors draw a fresh seed and raise the target after three
  failures, memlab keeps each seed (results are compared on the same seeds) and records whether it reached
  the target.
"""
from __future__ import annotations

import numpy as np

FD_STEP = 1e-2  # the difference step, as a share of ||x||: within 0.64% of the jvp on the built-in world (docs)


def _eps(gen, x, t, cond, uncond, sched=None):
    """[eps(x, empty); eps(x, c)] in one batched call, as float32 (epsilon- or v-prediction); ``sched`` is the
    sampling pipeline's scheduler (a head start's thread has its own)."""
    import torch

    sched = sched or gen.pipe.scheduler
    xin = sched.scale_model_input(torch.cat([x] * 2), t)
    out = gen.pipe.unet(xin.to(gen.pipe.unet.dtype), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    out = out.float()
    if sched.config.get("prediction_type", "epsilon") == "v_prediction":  # eps = sigma x_t + alpha v
        a = sched.alphas_cumprod[int(t)].to(out.device).float()
        out = (1 - a).sqrt() * xin.float() + a.sqrt() * out
    return out.chunk(2)


def sharpness(gen, lat0, t, cond, uncond, sched=None, diff=None):
    """Jeon et al.'s detection score per sample: ||H_c ds - H_u ds|| at the first step ([B], numpy). A float32
    UNet takes the central difference; a half-precision one, whose rounding a difference magnifies (a float16
    copy of the built-in world's UNet: up to 22% off at the shipped step), takes the authors' exact product
    (``exact_sharpness``)."""
    import torch

    if gen.pipe.unet.dtype != torch.float32:
        return exact_sharpness(gen, lat0, t, cond, uncond, sched)
    return difference_sharpness(gen, lat0, t, cond, uncond, sched, diff)


def difference_sharpness(gen, lat0, t, cond, uncond, sched=None, diff=None):
    """The score with the Hessian-vector product as the central difference of the scores along ds, a step of
    ``FD_STEP`` x ||x||: two UNet calls of the sampling's batch size, and a third for eps(x, c) - eps(x, empty)
    unless ``diff`` brings it (the first sampling step's, read from the same call)."""
    import torch

    sched = sched or gen.pipe.scheduler
    sigma = float((1 - sched.alphas_cumprod[int(t)]).sqrt())
    x = lat0.float()
    with torch.no_grad():
        if diff is None:
            e_u, e_c = _eps(gen, x, t, cond, uncond, sched)
            diff = e_c - e_u
        ds = -diff.float() / sigma
        n = ds.flatten(1).norm(dim=1).clamp_min(1e-12)
        h = (FD_STEP * x.flatten(1).norm(dim=1) / n).view(-1, *[1] * (x.dim() - 1))
        plus_u, plus_c = _eps(gen, x + h * ds, t, cond, uncond, sched)  # (two calls: a batch no larger
        minus_u, minus_c = _eps(gen, x - h * ds, t, cond, uncond, sched)  # than the sampling's own)
        hvp = -((plus_c - minus_c) - (plus_u - minus_u)) / (sigma * 2 * h)
    return hvp.flatten(1).norm(dim=1).cpu().numpy()


JVP_CHUNK = 2  # seeds per forward-mode pass: the math attention kernel holds each layer's whole attention matrix


def exact_sharpness(gen, lat0, t, cond, uncond, sched=None):
    """The same score with the Hessian-vector product taken as the authors take it, by forward-mode AD
    (``torch.func.jvp`` on the math attention kernel, the only one that supports it), ``JVP_CHUNK`` seeds at a
    time, in the UNet's own precision."""
    import torch
    from torch.func import jvp
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sched = sched or gen.pipe.scheduler
    alpha = float(sched.alphas_cumprod[int(t)])
    sigma = (1 - alpha) ** 0.5
    v_pred = sched.config.get("prediction_type", "epsilon") == "v_prediction"
    unet = gen.pipe.unet
    out = []
    for b in range(0, len(lat0), JVP_CHUNK):
        emb = torch.cat([uncond[b:b + JVP_CHUNK], cond[b:b + JVP_CHUNK]]).to(unet.dtype)
        x = sched.scale_model_input(lat0[b:b + JVP_CHUNK], t).to(unet.dtype)

        def score(z, emb=emb):
            z2 = torch.cat([z, z])
            pred = unet(z2, t, encoder_hidden_states=emb).sample
            return -(sigma * z2 + alpha ** 0.5 * pred if v_pred else pred) / sigma  # eps = sigma x_t + alpha v

        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            s_u, s_c = score(x).chunk(2)
            _, hv = jvp(score, (x,), (s_c - s_u,))
        h_u, h_c = hv.float().chunk(2)
        out.append((h_c - h_u).flatten(1).norm(dim=1).cpu())
    return torch.cat(out).numpy()


def sail_loss(gen, x, t, cond, uncond, gamma: float, sched=None):
    """The authors' SAIL loss per sample ([B], differentiable in ``x``)."""
    e_u, e_c = _eps(gen, x, t, cond, uncond, sched)
    diff = e_c - e_u
    d = diff / diff.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
    m_u, m_c = _eps(gen, x + d, t, cond, uncond, sched)
    return (m_c - m_u).flatten(1).norm(dim=1) + gamma * x.flatten(1).norm(dim=1)


def sail_target_for(gen, sail) -> float:
    """``target=`` if given, else the model's calibrated target."""
    from .errors import MemlabError

    if sail.params["target"] > 0:
        return float(sail.params["target"])
    if getattr(gen, "sail_target", None):
        return float(gen.sail_target)
    raise MemlabError("sail needs a target: this model has no calibrated sail_target; give sail:target=X "
                      "(Jeon et al.'s l_thres: 8.2 for Stable Diffusion v1 at gamma 0.05)")


def sail_optimize(gen, sail, lat0, t, cond, uncond, sched=None) -> tuple:
    """SAIL on the starting noise ``lat0`` ([B, C, h, w]): (the noise to sample from, per-seed state with the
    target, the loss before and after, whether it reached the target and the steps it took)."""
    import torch

    p = sail.params
    target = sail_target_for(gen, sail)
    gamma = float(p["gamma"])
    cond, uncond = cond.detach(), uncond.detach()
    x = lat0.detach().float().clone().requires_grad_(True)
    kept = x.detach().clone()
    opt = torch.optim.Adam([x], lr=float(p["lr"]))
    done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    steps = torch.zeros(len(x), dtype=torch.long, device=x.device)
    first = None
    with torch.enable_grad():
        for k in range(int(p["iters"]) + 1):
            loss = sail_loss(gen, x, t, cond, uncond, gamma, sched)
            first = loss.detach().cpu() if first is None else first
            newly = (loss.detach() <= target) & ~done  # (on the UNet's device, as the masks below)
            kept[newly] = x.detach()[newly]  # a seed is kept as it was when it reached the target
            steps[newly] = k
            done |= newly
            if bool(done.all()) or k == int(p["iters"]):
                break
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
            with torch.no_grad():
                x[done] = kept[done]
    out = torch.where(done.view(-1, *[1] * (x.dim() - 1)), kept, x.detach())
    with torch.no_grad():
        final = sail_loss(gen, out, t, cond, uncond, gamma, sched).cpu()
    steps[~done] = int(p["iters"])
    steps = steps.cpu()
    state = [{"sail_target": target, "sail_initial_loss": float(first[i]), "sail_final_loss": float(final[i]),
              "sail_reached": bool(final[i] <= target + 1e-6), "sail_steps": int(steps[i])} for i in range(len(x))]
    return out.to(lat0.dtype), state


def calibrate_sail_target(gen, prompts, seeds, settings, gamma: float = 0.05, fpr: float = 0.01) -> dict:
    """A SAIL target per model, by the rule of ``evaluate.calibrate_wen_target``: the value that keeps ``fpr``
    of the SAIL losses of non-memorized prompts' starting noise above it (so most of their seeds are left
    untouched, as the authors' l_thres leaves the noise of ordinary prompts)."""
    import torch

    h = w = gen.default_size()
    sched = gen.pipe.scheduler
    sched.set_timesteps(settings.steps, device=gen.device)
    t0 = sched.timesteps[0]
    lat = gen.initial_latents(seeds, h, w) * sched.init_noise_sigma
    losses = []
    for prompt in prompts:
        cond, uncond = gen.encode([prompt] * len(seeds))
        with torch.no_grad():
            losses.append(sail_loss(gen, lat.float(), t0, cond, uncond, gamma).cpu().numpy())
    value = float(np.quantile(np.concatenate(losses), 1.0 - fpr, method="higher"))
    return {"sail_target": value, "sail_target_source": (
        f"{1 - fpr:.0%} quantile of the SAIL loss (gamma {gamma}) on the starting noise of {len(prompts)} unique "
        f"probes x {len(seeds)} seeds at {settings.steps} steps: seeds below it are left untouched")}
