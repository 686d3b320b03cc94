"""Finding NeMo (Hintersdorf et al., NeurIPS 2024; ml-research/localizing_memorization_in_diffusion_models),
memlab's own implementation of the authors' procedure:

- **statistics** of non-memorized prompts: per value neuron of every cross-attention value layer, the
  mean and standard deviation of its activation |to_v(text states)| averaged over the 77 tokens; and the
  SSIM threshold: the mean + 1 std of the per-seed maximum pairwise SSIM of their noise differences
  (NeMo's 0.428 on SD v1.4);
- a prompt counts as memorized when some seed's noise difference has a pairwise SSIM above the threshold
  with another seed (else no neuron is blocked);
- **initial selection**, in the value layers of the down blocks and the mid block (``layers=down_mid``, the
  paper's; ``layers=all`` adds the up blocks): neurons whose activation is more than theta standard
  deviations from the mean, plus the k largest activations, theta from 5 down by 0.25 (to 1) and k up by
  1 per round, until the noise differences with those neurons off have an SSIM at most the *selection*
  threshold against the unblocked ones of the same seeds;
- **refinement**: layer by layer, then neuron by neuron, a neuron stays blocked only if unblocking it
  brings the SSIM back above the threshold;
- at inference the neurons are multiplied by ``scale`` (0) on both halves of the guidance batch.

The noise difference is NeMo's: no guidance, the conditional prediction at the second step minus the
latents there, min-max scaled per channel. SSIM is single-scale with a Gaussian window (NeMo uses
multi-scale SSIM, which needs latents of 160 px and more; the thresholds are calibrated per world).
NeMo uses one threshold for both tests. memlab calibrates the selection threshold on its own: the
mean + 1 std of the same-seed SSIM between the noise differences of two different non-memorized
prompts (how alike two unrelated prompts' differences are when they share the starting noise). On the
built-in world's 16x16 latents the starting noise dominates a same-seed comparison (two unrelated prompts
score about 0.5, and switching every value neuron off leaves about 0.6), so the across-seed threshold
(about 0.28) could never be reached there (docs/methods.md).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


from .attention import AttentionContext, AttentionHub
from .errors import MemlabError
from .jsonfiles import read_object
from .weightfiles import read_tensors
from .validate import Checker

STATS_FILE = "statistics.safetensors"
INFO_FILE = "statistics.json"


def ssim(a, b, window: int = 11, sigma: float = 1.5):
    """Per-sample SSIM (Wang et al. 2004) of [N, C, H, W] tensors in [0, 1] with a Gaussian window
    (``window`` clipped to the image), averaged over channels and positions: [N]."""
    import torch
    import torch.nn.functional as F

    a, b = a.float(), b.float()
    n, c, h, w = a.shape
    size = min(window, h, w)
    size -= 1 - size % 2
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(c, 1, size, size).to(a.device)

    def blur(t):
        return F.conv2d(t, k, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    va, vb = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    return s.flatten(1).mean(1)


def max_pairwise_ssim(diffs):
    """Per sample, its highest SSIM with any other sample (NeMo's memorization test): [N]."""
    import torch

    n = len(diffs)
    i, j = torch.triu_indices(n, n, 1)
    s = ssim(diffs[i], diffs[j])
    best = torch.full((n,), -1.0)
    for a, b, v in zip(i.tolist(), j.tolist(), s.tolist()):
        best[a], best[b] = max(best[a], v), max(best[b], v)
    return best


@dataclass
class NeMoStats:
    mean: list  # per cross-attention value layer (``AttentionHub.cross_layers``), [d] tensors
    std: list
    ssim_threshold: float  # the memorization test (across seeds)
    info: dict
    selection_threshold: float | None = None  # the selection test (same seed); None: ``ssim_threshold``

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({**{f"mean_{i}": m.contiguous() for i, m in enumerate(self.mean)},
                   **{f"std_{i}": s.contiguous() for i, s in enumerate(self.std)}}, str(folder / STATS_FILE))
        (folder / INFO_FILE).write_text(json.dumps({**self.info, "ssim_threshold": self.ssim_threshold,
                                                    "selection_threshold": self.selection_threshold}, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "NeMoStats":
        folder = Path(folder)
        if not (folder / STATS_FILE).is_file() or not (folder / INFO_FILE).is_file():
            raise MemlabError(f"{folder} holds no NeMo statistics ({STATS_FILE}, {INFO_FILE})")
        t = read_tensors(folder / STATS_FILE)
        info = read_object(folder / INFO_FILE)
        n = len([k for k in t if k.startswith("mean_")])
        want = {f"{s}_{i}" for i in range(n) for s in ("mean", "std")}
        if not n or set(t) != want or any(t[f"mean_{i}"].ndim != 1 or t[f"mean_{i}"].shape != t[f"std_{i}"].shape
                                          for i in range(n)):
            raise MemlabError(f"{folder / STATS_FILE} must hold mean_0 ... mean_N and std_0 ... std_N, one vector "
                              f"of one length each per layer (holds {', '.join(sorted(t)[:6]) or 'no tensor'})")
        c = Checker(folder / INFO_FILE)
        sel = c.get(info, "selection_threshold", float, "selection_threshold", optional=True)
        return cls([t[f"mean_{i}"] for i in range(n)], [t[f"std_{i}"] for i in range(n)],
                   float(c.get(info, "ssim_threshold", float, "ssim_threshold")), info, None if sel is None else float(sel))


def stats_current(folder: str | Path, steps: int) -> bool:
    """Whether ``folder`` holds NeMo statistics computed at ``steps`` sampling steps (a builder resumed with
    other steps computes them again: the noise differences are read on that schedule)."""
    folder = Path(folder)
    if not (folder / STATS_FILE).is_file() or not (folder / INFO_FILE).is_file():
        return False
    try:
        return read_object(folder / INFO_FILE).get("steps") == steps
    except MemlabError:  # a torn file: compute again
        return False


def noise_diffs(gen, prompt: str, seeds, steps: int, blocked: dict | None = None, scale: float = 0.0, cond=None):
    """NeMo's noise difference per seed: no guidance, eps(x_t1, c) - x_t1 at the second step of a
    ``steps``-step schedule, min-max scaled per channel: [n_seeds, C, h, w] in [0, 1]. ``cond``: the prompt's
    text embedding for each seed, when the caller has it (blocking acts in the UNet, not the text encoder)."""
    import torch

    hub = AttentionHub.of(gen.pipe.unet)
    sched = type(gen.pipe.scheduler).from_config(gen.pipe.scheduler.config)
    sched.set_timesteps(steps, device=gen.device)
    size = gen.default_size()
    lat = gen.initial_latents(seeds, size, size) * sched.init_noise_sigma
    if cond is None:
        cond, _ = gen.encode([prompt] * len(seeds))
    ctx = AttentionContext(blocked=blocked or {}, block_scale=scale, cfg=False) if blocked else None
    with torch.no_grad(), hub.context(ctx):
        for i, t in enumerate(sched.timesteps[:2]):
            eps = gen.pipe.unet(sched.scale_model_input(lat, t), t, encoder_hidden_states=cond).sample
            if i == 1 or len(sched.timesteps) == 1:
                break
            lat = sched.step(eps, t, lat).prev_sample
    d = (eps - lat).float()
    lo, hi = d.amin(dim=(2, 3), keepdim=True), d.amax(dim=(2, 3), keepdim=True)
    return ((d - lo) / (hi - lo).clamp_min(1e-12)).cpu()


def compute_stats(gen, prompts, seeds, steps: int, source: str = "") -> NeMoStats:
    """Statistics of non-memorized ``prompts`` (activations; SSIM threshold = mean + 1 std of the per-seed
    maximum pairwise SSIM of their noise differences over ``seeds``)."""
    import torch

    hub = AttentionHub.of(gen.pipe.unet)
    acts = [[] for _ in hub.cross_layers]
    peaks, diffs = [], []
    for p in prompts:
        cond, _ = gen.encode([p])
        for i, a in enumerate(hub.value_activations(cond)):
            acts[i].append(a)
        diffs.append(noise_diffs(gen, p, seeds, steps))
        peaks.append(max_pairwise_ssim(diffs[-1]))
    same = torch.cat([ssim(a, b) for a, b in zip(diffs, diffs[1:])]) if len(diffs) > 1 else None
    acts = [torch.cat(a) for a in acts]
    peaks = torch.cat(peaks)
    thr = float(peaks.mean() + peaks.std())
    sel = float(same.mean() + same.std()) if same is not None else None
    info = {"layers": hub.cross_layers, "prompts": len(prompts), "seeds": list(seeds), "steps": steps,
            "source": source, "definition": "NeMo: per value neuron, mean and std of |to_v(text)| averaged "
            "over tokens; SSIM threshold = mean + 1 std of the per-seed maximum pairwise SSIM of the "
            "second-step noise differences (no guidance); selection threshold = mean + 1 std of the same-seed "
            "SSIM between consecutive prompts' noise differences"}
    return NeMoStats([a.mean(0) for a in acts], [a.std(0) for a in acts], thr, info, sel)


def _select(acts, stats: NeMoStats, theta: float, k: int, layers: list[int]) -> dict:
    out = {}
    for i in layers:
        a = acts[i]
        z = (a - stats.mean[i]).abs() / stats.std[i].clamp_min(1e-8)
        idx = set((z > theta).nonzero().flatten().tolist())
        if k:
            idx |= set(a.abs().topk(min(k, a.numel())).indices.tolist())
        if idx:
            out[i] = sorted(idx)
    return out


def find_neurons(gen, prompt: str, stats: NeMoStats, params: dict, steps: int) -> tuple[dict, dict]:
    """NeMo's memorization neurons of ``prompt``: ({value layer: [neuron, ...]}, what the search saw)."""
    hub = AttentionHub.of(gen.pipe.unet)
    if len(stats.mean) != len(hub.cross_layers) or any(
            m.numel() != v.out_features for m, v in zip(stats.mean, hub.value_modules)):
        raise MemlabError("the NeMo statistics were computed on another UNet (value layers differ)")
    thr = float(params.get("ssim") or stats.ssim_threshold)
    sel_thr = float(params.get("ssim") or stats.selection_threshold or stats.ssim_threshold)
    layers = hub.value_layers(params.get("layers", "down_mid"))
    seeds = [int(params["seed"]) + i for i in range(int(params["samples"]))]
    scale = float(params["scale"])
    vanilla = noise_diffs(gen, prompt, seeds, steps)
    look = max_pairwise_ssim(vanilla) > thr
    info = {"ssim_threshold": thr, "selection_threshold": sel_thr, "memorized": bool(look.any()), "seeds": seeds}
    if not look.any():
        return {}, {**info, "neurons": 0}
    vanilla = vanilla[look]
    seeds = [s for s, keep in zip(seeds, look.tolist()) if keep]

    per_seed, _ = gen.encode([prompt] * len(seeds))  # encoded once: every trial below blocks other neurons
    cond, _ = gen.encode([prompt])

    def sim(blocked):
        return float(ssim(vanilla, noise_diffs(gen, prompt, seeds, steps, blocked, scale, per_seed)).max())

    acts = [a[0] for a in hub.value_activations(cond)]
    theta, k, s, rounds = float(params["theta"]), int(params["k"]), 1.0, 0
    refine_thr = sel_thr
    while True:
        blocked = _select(acts, stats, theta, k, layers)
        s = sim(blocked)
        rounds += 1
        if s <= sel_thr:
            break
        if theta > params["min_theta"]:
            theta = max(params["min_theta"], theta - params["theta_step"])
        k += 1
        if theta <= params["min_theta"] or k >= 1280:  # the authors' stop: refine against what was reached
            refine_thr = s
            break
    info.update(initial_neurons=sum(map(len, blocked.values())), initial_ssim=s, theta=theta, k=k, rounds=rounds)
    if params.get("refine", "on") == "on":
        for layer in sorted(blocked, reverse=True):  # 1) layers whose neurons do not matter
            trial = {i: v for i, v in blocked.items() if i != layer}
            if sim(trial) < refine_thr:
                blocked = trial
        for layer in sorted(blocked, reverse=True):  # 2) single neurons
            for n in list(blocked[layer]):
                trial = {**blocked, layer: [x for x in blocked[layer] if x != n]}
                if sim(trial) < refine_thr:
                    blocked = {i: v for i, v in trial.items() if v}
                    if layer not in blocked:
                        break
    info.update(neurons=sum(map(len, blocked.values())), refined_ssim=sim(blocked) if blocked else None,
                layers={hub.cross_layers[i]: v for i, v in blocked.items()})
    return blocked, info
