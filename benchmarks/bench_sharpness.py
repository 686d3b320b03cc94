"""Jeon et al.'s sharpness (``memlab.sail.sharpness``): memlab's central difference against the exact
Hessian-vector product the authors take by forward-mode AD (``torch.func.jvp``, which needs the math attention
kernel), on a world's probes at the first sampling step: the largest relative difference and the seconds of
each, per batch of seeds, with the ratio measured in the same run; and what the detector adds to a generation
(the same generation timed with it and without it, interleaved).

    python -m benchmarks.bench_sharpness [--world assets/world] [--per-group 2] [--seeds 8] [--steps FD,...] [--half]
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main():
    import pandas as pd

    from memlab import sail
    from memlab.world import World

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=None)
    ap.add_argument("--per-group", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--steps", default="0.1,0.03,0.01,0.001", help="difference steps, as shares of ||x||")
    ap.add_argument("--repeat", type=int, default=5, help="generations timed each way")
    ap.add_argument("--half", action="store_true", help="also a float16 and a bfloat16 copy of the UNet, each way")
    a = ap.parse_args()
    world = World.load(a.world)
    gen = world.generator()
    probes = pd.read_csv(world.file("probes"))
    settings = world.defaults
    sched = gen.pipe.scheduler
    sched.set_timesteps(int(settings.get("steps", 30)))
    t0 = sched.timesteps[0]
    size = gen.default_size()
    lat = gen.initial_latents(list(range(a.seeds)), size, size) * sched.init_noise_sigma
    steps = [float(s) for s in a.steps.split(",")]
    err = {s: [] for s in steps}
    secs = {s: [] for s in steps}
    secs_exact, by_group, conds, exact_refs = [], {}, [], []
    for group, df in probes.groupby("group"):
        for prompt in df["prompt"].head(a.per_group):
            cond, uncond = gen.encode([prompt] * a.seeds)
            t = time.perf_counter()
            ref = sail.exact_sharpness(gen, lat, t0, cond, uncond)
            secs_exact.append(time.perf_counter() - t)
            conds.append((cond, uncond))
            exact_refs.append(ref)
            by_group.setdefault(group, []).append(float(ref.mean()))
            for s in steps:
                sail.FD_STEP = s
                t = time.perf_counter()
                fd = sail.sharpness(gen, lat, t0, cond, uncond)
                secs[s].append(time.perf_counter() - t)
                err[s].append(float(np.max(np.abs(fd - ref) / ref)))
    print(f"world {world.path}: {sum(len(v) for v in by_group.values())} probes x {a.seeds} seeds, first step "
          f"of {int(settings.get('steps', 30))}")
    print(f"exact (jvp, math attention): median {np.median(secs_exact):.3f} s per batch")
    for s in steps:
        print(f"central difference, step {s:g} x ||x||: largest relative difference {max(err[s]):.4%} "
              f"(median over probes {np.median(err[s]):.4%}); median {np.median(secs[s]):.3f} s per batch, "
              f"{np.median(secs_exact) / np.median(secs[s]):.1f}x faster")
    if a.half:  # the UNet in half precision, as a GPU runs Stable Diffusion: each way against float32's exact product
        import torch

        refs = [(c, u, r) for (c, u), r in zip(conds, exact_refs)]
        unet32 = gen.pipe.unet
        for dtype in (torch.float16, torch.bfloat16):
            gen.pipe.unet = type(unet32).from_config(unet32.config)
            gen.pipe.unet.load_state_dict(unet32.state_dict())
            gen.pipe.unet.to(dtype)
            try:
                for s in steps:
                    sail.FD_STEP = s
                    e = [np.max(np.abs(sail.difference_sharpness(gen, lat.to(dtype), t0, c.to(dtype), u.to(dtype))
                                       - r) / r) for c, u, r in refs]
                    print(f"{dtype}: central difference, step {s:g}: largest relative difference {max(e):.2%} "
                          f"(median {np.median(e):.2%})")
                e = [np.max(np.abs(sail.exact_sharpness(gen, lat.to(dtype), t0, c.to(dtype), u.to(dtype)) - r) / r)
                     for c, u, r in refs]
                print(f"{dtype}: exact product in that precision (shipped): largest relative difference {max(e):.2%} "
                      f"(median {np.median(e):.2%})")
            finally:
                gen.pipe.unet = unet32
        sail.FD_STEP = 1e-2
    prompt = probes["prompt"].iloc[0]
    from memlab.generate import Settings

    st = Settings(steps=int(settings.get("steps", 30)), guidance=float(settings.get("guidance", 5.0)))
    sail.FD_STEP = 1e-2  # as shipped
    shipped = sail.sharpness
    with_it, without = [], []
    for _ in range(a.repeat):  # interleaved, so both see the same machine
        for timed, fn in ((with_it, shipped), (without, lambda gen, lat, *rest, **kw: np.zeros(len(lat)))):
            sail.sharpness = fn  # (the generator imports it from the module at each batch)
            t = time.perf_counter()
            gen.generate(prompt, list(range(a.seeds)), "none", st)
            timed.append(time.perf_counter() - t)
    sail.sharpness = shipped
    print(f"a generation of {a.seeds} seeds ({st.steps} steps, every other detector, matching aside), median of "
          f"{a.repeat}: {np.median(with_it):.3f} s with the sharpness, {np.median(without):.3f} s without "
          f"({np.median(with_it) / np.median(without):.3f}x)")
    for g, v in sorted(by_group.items()):
        print(f"  {g}: mean sharpness {np.mean(v):.4f}")


if __name__ == "__main__":
    main()
