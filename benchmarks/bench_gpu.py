"""GPU benchmarks, ready for a machine with a CUDA GPU; on a CPU they print why they skip.

1. Stable Diffusion v1.4 through memlab against the bare diffusers call: the same prompt, seeds, 512 px,
   50 DDIM steps, guidance 7.5, fp16, one batch; best of --repeat, interleaved; the ratio, and the
   seconds per image-step (the allowance ``memlab.gpu`` asks ZeroGPU for: MEMLAB_GPU_SECONDS_PER_STEP)
   beside the duration memlab would ask for the same work. The real weights when they are in the local
   Hugging Face cache (or --model), else SD v1.4's published architecture with random weights (the same
   compute; ``memlab.pipelines``).
2. SSCD's architecture (ResNet-50 trunk, GeM, 512-d projection; sscd_disc_mixup), images/s: memlab's
   descriptor on PIL images (its official preprocessing included) against the bare network on a ready
   batch. The official TorchScript when memlab's cache holds it, else the architecture with random weights.

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


def sscd_architecture(path: Path) -> Path:
    """sscd_disc_mixup's architecture (torchvision ResNet-50 trunk, GeM p=3, 2048->512 linear, L2 norm) with
    random weights, scripted like the official file."""
    import torch
    import torchvision

    class SSCDArch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            r = torchvision.models.resnet50(weights=None)
            self.trunk = torch.nn.Sequential(*list(r.children())[:-2])
            self.fc = torch.nn.Linear(2048, 512)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.trunk(x).clamp(min=1e-6).pow(3.0).mean(dim=(2, 3)).pow(1.0 / 3.0)
            return torch.nn.functional.normalize(self.fc(f), dim=1)

    torch.jit.script(SSCDArch().eval()).save(str(path))
    return path


def bench_sscd(a) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from memlab.descriptors import SSCDDescriptor, cache_dir
    from memlab.index import sha256

    weights, how, sha = cache_dir() / "sscd" / "sscd_disc_mixup.torchscript.pt", "official weights (cached)", None
    if not weights.is_file():  # no download in a benchmark: the architecture, confirmed by its own checksum
        weights = sscd_architecture(Path(tempfile.mkdtemp()) / "sscd_arch.torchscript.pt")
        how, sha = "the architecture with random weights (the official file is not cached)", sha256(weights)
    d = SSCDDescriptor(weights=str(weights), device="cuda", batch_size=a.batch, weights_sha256=sha)
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 255, (512, 512, 3), np.uint8)) for _ in range(a.images)]
    x = torch.randn(a.batch, 3, 320, 320, device="cuda")
    d.embed(ims[:a.batch])
    with torch.inference_mode():
        d.net(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(max(1, a.images // a.batch)):
            d.net(x)
        torch.cuda.synchronize()
        bare = max(1, a.images // a.batch) * a.batch / (time.perf_counter() - t)
    t = time.perf_counter()
    d.embed(ims)
    torch.cuda.synchronize()
    ours = len(ims) / (time.perf_counter() - t)
    print(f"[SSCD] {torch.cuda.get_device_name()} | sscd_disc_mixup, {how} | batch {a.batch}, 320 px")
    print(f"[SSCD] bare network {bare:.0f} images/s   memlab embed (PIL, official preprocessing) {ours:.0f} images/s"
          f"   ratio {bare / ours:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="Hub id or diffusers folder (default: cached SD v1.4, else its "
                                                  "architecture)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--images", type=int, default=512, help="images for the SSCD throughput")
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU here. These benchmarks time Stable Diffusion v1.4 at 512 px and 50 steps "
              "(minutes per image on a CPU) and SSCD's ResNet-50 at GPU batch sizes; run them on a GPU machine. "
              "CPU figures: benchmarks/bench_generate.py and benchmarks/bench_match.py.")
        return 0
    bench_sd(a)
    bench_sscd(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
