"""memlab's generation step against the bare diffusers pipeline call (same prompt, seeds, steps,
guidance, batch), measured in one run, plus the split of a whole ``run_prompt`` (load / generate /
embed / search / metrics).

    python -m benchmarks.bench_generate                      # the built-in world (CPU)
    python -m benchmarks.bench_generate --arch tiny           # a tiny pipeline built from configs
    python -m benchmarks.bench_generate --arch sd-v1-4 --device cuda --dtype fp16 --size 512 --steps 50
        # Stable Diffusion v1.4's published architecture with random weights (its compute; no download)
"""
import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=None, help="world folder (default: the built-in world)")
    ap.add_argument("--arch", default=None, help="build a pipeline from a memlab.pipelines config instead")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="fp16 / fp32 (default: fp16 on CUDA, fp32 on CPU)")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--prompt", default="a red circle and a blue star on a white background")
    a = ap.parse_args()
    import torch

    from memlab.generate import Generator, Settings
    from memlab.world import World

    t0 = time.perf_counter()
    world = None
    if a.arch:
        from memlab.pipelines import make_pipeline

        tmp = Path(tempfile.mkdtemp()) / "pipe"
        make_pipeline(a.arch).save_pretrained(tmp)
        gen = Generator.from_pretrained(tmp, device=a.device, dtype=a.dtype)
        steps, guidance = a.steps or 50, a.guidance if a.guidance is not None else 7.5
    else:
        world = World.load(a.world)
        gen = Generator.from_pretrained(world.model, device=a.device, dtype=a.dtype)
        steps = a.steps or int(world.defaults["steps"])
        guidance = a.guidance if a.guidance is not None else float(world.defaults["guidance"])
    load_s = time.perf_counter() - t0
    size = a.size or gen.default_size()
    seeds = list(range(a.seeds))
    st = Settings(steps=steps, guidance=guidance, height=size, width=size)
    pipe = gen.pipe
    sync = torch.cuda.synchronize if gen.device.startswith("cuda") else (lambda: None)

    def bare():
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        return pipe([a.prompt] * len(seeds), generator=gens, num_inference_steps=steps, guidance_scale=guidance,
                    height=size, width=size, output_type="pil").images

    def ours():
        return gen.generate(a.prompt, seeds, "none", st, batch_size=len(seeds))

    bare(), ours()  # warm-up
    tb, tm = [], []
    def timed(fn) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    for _ in range(a.repeat):  # interleaved, so drift hits both alike
        tb.append(timed(bare))
        tm.append(timed(ours))
    b, m = min(tb), min(tm)
    print(f"device {gen.device} dtype {gen.info()['dtype']} | {a.arch or gen.source} | {size}x{size}, "
          f"{steps} steps, guidance {guidance}, {len(seeds)} seeds in one batch; best of {a.repeat}")
    print(f"bare diffusers call: {b:.3f}s   memlab generate (+ detection, per-seed prompts): {m:.3f}s   "
          f"ratio {m / b:.3f}")
    if world is not None:
        from memlab.match import descriptor_for_index
        from memlab.runner import run_prompt

        t = time.perf_counter()
        index = world.index()
        desc = descriptor_for_index(index)
        idx_s = time.perf_counter() - t
        t = time.perf_counter()
        recs = run_prompt(gen, index, desc, a.prompt, seeds, ["none"], st, out_dir=None)
        total = time.perf_counter() - t
        s = recs[-1]
        tm_ = s["timing"]
        print(f"run_prompt, {len(seeds)} seeds: {total:.2f}s = generate {tm_['generate_s']:.2f}s + embed "
              f"{tm_['embed_s']:.3f}s + search {tm_['search_s']:.3f}s + metrics {tm_['metrics_s']:.4f}s "
              f"(load: pipeline {load_s:.2f}s, index {idx_s:.2f}s); replication {s['replication_rate']:.0%}")


if __name__ == "__main__":
    main()
