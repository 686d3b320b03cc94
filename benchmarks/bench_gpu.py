"""Generation on a GPU, ready for a machine with a CUDA GPU; on a CPU it prints why it skips.

Stable Diffusion v1.4 through memlab against the bare diffusers call: the same prompt, seeds, 512 px,
50 DDIM steps, guidance 7.5, fp16, one batch; best of --repeat, interleaved; the ratio, and the
seconds per image-step (the allowance ``memlab.gpu`` asks ZeroGPU for: MEMLAB_GPU_SECONDS_PER_STEP)
beside the duration memlab would ask for the same work. The real weights when they are in the local
Hugging Face cache (or --model), else SD v1.4's published architecture with random weights (the same
compute; ``memlab.pipelines``). The descriptors' embedding rates on a GPU (SSCD, CLIP):
``benchmarks/bench_embed.py --device cuda``.

    python -m benchmarks.bench_gpu [--model CompVis/stable-diffusion-v1-4] [--seeds 4] [--repeat 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SD14 = "CompVis/stable-diffusion-v1-4"


def sd_source(model: str | None) -> tuple[str, str]:
    """(model to load, how it was chosen): --model, the cached SD v1.4, or its architecture."""
    if model:
        return model, "given"
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(SD14, "model_index.json"), str):
            return SD14, "real weights from the local Hugging Face cache"
    except ImportError:
        pass
    from memlab.pipelines import make_pipeline

    tmp = Path(tempfile.mkdtemp()) / "sd-v1-4-arch"
    make_pipeline("sd-v1-4").save_pretrained(tmp)
    return str(tmp), "SD v1.4's architecture with random weights (the real ones are not cached)"


def bench_sd(a) -> None:
    import torch

    from memlab import gpu
    from memlab.generate import Generator, Settings

    model, how = sd_source(a.model)
    gen = Generator.from_pretrained(model, device="cuda", dtype="fp16", scheduler="ddim")
    seeds, size, steps, guidance = list(range(a.seeds)), 512, 50, 7.5
    st = Settings(steps=steps, guidance=guidance, height=size, width=size)
    prompt = "The No Limits Business Woman Podcast"  # NeMo's first verbatim-memorized prompt

    def bare():
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        gen.pipe([prompt] * len(seeds), generator=gens, num_inference_steps=steps, guidance_scale=guidance,
                 height=size, width=size, output_type="pil")

    def ours():
        gen.generate(prompt, seeds, "none", st, batch_size=len(seeds))

    bare(), ours()
    tb, tm = [], []
    def timed(fn) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t

    for _ in range(a.repeat):
        tb.append(timed(bare))
        tm.append(timed(ours))
    b, m = min(tb), min(tm)
    per = m / (len(seeds) * steps)
    print(f"[SD] {torch.cuda.get_device_name()} | {model} ({how}) | fp16, {size}x{size}, {steps} DDIM steps, "
          f"guidance {guidance}, {len(seeds)} seeds in one batch, best of {a.repeat}")
    print(f"[SD] bare diffusers {b:.2f}s   memlab generate {m:.2f}s   ratio {m / b:.3f}")
    print(f"[SD] measured {per:.4f} s per image-step (memlab); memlab.gpu's allowance is "
          f"{gpu.SECONDS_PER_IMAGE_STEP} s + {gpu.CALL_OVERHEAD_S:g} s per call: for 2 seeds x 50 steps it asks "
          f"{gpu.duration(2, 50)} s, the work measured here takes {per * 2 * steps:.1f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="Hub id or diffusers folder (default: cached SD v1.4, else its "
                                                  "architecture)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU here. This times Stable Diffusion v1.4 at 512 px and 50 steps (minutes per "
              "image on a CPU); run it on a GPU machine. CPU figures: benchmarks/bench_generate.py.")
        return 0
    bench_sd(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
