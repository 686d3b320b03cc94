"""Embedding at the network's speed (issue 34): memlab's ``embed`` of decoded images (PIL in, normalized vectors
out) against the bare network on the same batch already preprocessed and on the device (the ceiling), images
per second, measured in the same run, for each place the images can be prepared:

- ``auto``: memlab's default. On a GPU the images travel as 8-bit pixels and are resized and normalized on
  the GPU (``memlab.preprocess.network_batches``); on the CPU, PIL's transform, one batch at a time.
- ``cpu``: PIL's transform on a thread pool one batch ahead (memlab's GPU path before issue 34's fix).
- ``device``: the tensor path on any device (on a CPU, for comparison).

On a GPU it also prints how far the two paths' network inputs are apart (grey levels) and the lowest cosine
between their vectors.

    python -m benchmarks.bench_embed [--descriptors clip-b32,sscd] [--n 256] [--batch 32] [--device cpu|cuda]
        [--prepare auto,cpu]

``clip-b32`` and ``clip-l14`` run open_clip's ViT-B/32 and ViT-L/14 (QuickGELU, memlab's ``clip``) with random
weights, ``sscd`` sscd_disc_mixup's architecture with random weights unless ``--weights`` names the official
TorchScript file (no download; the rate does not depend on the weights).
"""
import argparse
import tempfile
import time
from pathlib import Path


def _rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


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


def _descriptor(name: str, a):
    """(descriptor, its PIL transform, the bare network: batch on the device -> vectors, what it runs)."""
    from memlab.descriptors import create_descriptor

    kw = {"device": a.device, "batch_size": a.batch}
    if name in ("clip-b32", "clip-l14"):
        model = {"clip-b32": "ViT-B-32", "clip-l14": "ViT-L-14-quickgelu"}[name]
        d = create_descriptor("clip", model=model, pretrained=None, **kw)
        return d, d._tf, lambda x: d.net.encode_image(x, normalize=True), f"open_clip {model}, random weights"
    if name == "sscd":
        from memlab.index import sha256

        if a.weights:
            weights, how, sha = a.weights, "weights given", None
        else:
            weights = sscd_architecture(Path(tempfile.mkdtemp()) / "sscd_arch.torchscript.pt")
            how, sha = "sscd_disc_mixup's architecture, random weights", sha256(weights)
        d = create_descriptor("sscd", weights=str(weights), weights_sha256=sha, **kw)
        return d, d._preset.transform(), d.net, f"{how}, preset official-320"
    d = create_descriptor(name, **kw)
    tf = getattr(d, "_tf", None) or getattr(d, "transform", None)
    module = getattr(d, "net", None) or getattr(d, "model", None)
    return (d, tf, module, name) if tf is not None and module is not None else (d, None, None, name)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--descriptors", default="clip-b32,memlab-copy-global")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=256, help="the decoded images' side")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prepare", default=None, help="comma list of auto, cpu, device (default: auto, and cpu on "
                                                    "a GPU)")
    ap.add_argument("--weights", default=None, help="sscd: the official TorchScript file")
    a = ap.parse_args()
    import numpy as np
    import torch
    from PIL import Image

    import memlab.preprocess as pre

    gpu = a.device.startswith("cuda")
    modes = (a.prepare or ("auto,cpu" if gpu else "auto")).split(",")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (a.size, a.size, 3), dtype=np.uint8)) for _ in range(a.n)]
    where = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"{a.n} decoded {a.size}x{a.size} images, batch {a.batch}, {where}; best of {a.repeats}")
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    for name in a.descriptors.split(","):
        d, tf, net, how = _descriptor(name, a)
        if tf is None:
            print(f"{name}: no separable transform and network; skipped")
            continue
        pre.PREPARE_ON = ""
        batches = [torch.stack([tf(pre.to_rgb(im)) for im in images[i:i + a.batch]]).to(a.device)
                   for i in range(0, a.n, a.batch)]

        def bare():
            with torch.inference_mode():
                for x in batches:
                    net(x)
            sync()

        bare()  # warm up
        r_bare = _rate(bare, a.n, a.repeats)
        line, vecs = [f"{name:<10} bare network {r_bare:8.1f} img/s"], {}
        for mode in modes:
            pre.PREPARE_ON = "" if mode == "auto" else mode

            def full():
                vecs[mode] = d.embed(images)
                sync()

            full()  # warm up
            r = _rate(full, a.n, a.repeats)
            line.append(f"memlab embed [{mode}] {r:8.1f} img/s, ratio {r / r_bare:.2f}")
        pre.PREPARE_ON = ""
        print("   ".join(line) + f"   ({how})")
        if len(vecs) > 1:
            (m0, v0), *rest = vecs.items()
            for m, v in rest:
                print(f"{'':<10} [{m}] against [{m0}]: lowest cosine between an image's two vectors "
                      f"{float(np.min(np.sum(v * v0, axis=1))):.6f}")
        if gpu:
            pre.PREPARE_ON = "device"
            x_dev = next(pre.network_batches(images[:a.batch], tf, a.batch, a.device))
            pre.PREPARE_ON = ""
            std = torch.tensor(tf.transforms[-1].std, device=a.device)[:, None, None]
            lv = ((x_dev - batches[0]).abs() * std * 255)
            print(f"{'':<10} the GPU's network input against PIL's: at most {float(lv.max()):.2f} grey levels apart, "
                  f"{float((lv > 0.5).float().mean()) * 100:.3f}% of values a level or more")


if __name__ == "__main__":
    main()
